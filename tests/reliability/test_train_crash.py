"""`gpt2kit train` killed anywhere and resumed with `--resume auto` ends bitwise where a run never killed ends.

Kill points: SIGKILL at seeded random moments of the run (steps, evaluations, checkpoint writes), and
deterministic hooks at the windows timing rarely reaches (half a checkpoint written, a checkpoint
complete but not yet renamed, renamed but best.json not yet updated). After every kill, every file
under a checkpoint's final name must load, and the resumed run must end in exactly the reference state:
weights, optimizer moments, step, data position, RNG streams, best validation loss and the logged
losses, checkpoints kept and best.json.
"""

from __future__ import annotations

import signal

import pytest
from reliability_harness import HOOKS, MAX_STEPS, SEED, assert_same_state, check_after_kill, train_argv

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

KILLS = 10


def test_sigkill_at_random_points_then_resume_auto_is_bitwise_identical(forkserver, train_data, train_reference, rng,
                                                                       tmp_path):
    ref, ref_seconds = train_reference
    chain = 0
    run = tmp_path / "run0"
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts < 4 * KILLS, f"(seed {SEED}) could not kill a run {KILLS} times"
        r = forkserver.run(train_argv(train_data, run), hooks=HOOKS,
                           signal_after=rng.uniform(0.05, 1.0) * ref_seconds)
        if not r.signalled:
            assert r.returncode == 0, r.log
            assert_same_state(run, ref, f"chain {chain} finished between kills")
            chain += 1
            run = tmp_path / f"run{chain}"
            continue
        assert r.returncode == -signal.SIGKILL, r.log
        kills += 1
        check_after_kill(run)  # the windows inside a checkpoint write have their own deterministic test below
    r = forkserver.run(train_argv(train_data, run), hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert_same_state(run, ref, f"after {KILLS} kills")


@pytest.mark.parametrize("hook", [
    {"kill_in_save": {"match": "step_00000004", "nth": 1, "fraction": 0.5}},  # half a checkpoint on disk
    {"kill_in_save": {"match": "step_", "nth": 1, "fraction": 0.0}},  # the very first checkpoint, empty file
    {"kill_at_replace": {"match": "step_00000006.pt", "nth": 1, "when": "before"}},  # complete, fsynced, not renamed
    {"kill_at_replace": {"match": "step_00000008.pt", "nth": 1, "when": "after"}},  # a new best, best.json not updated
    {"kill_at_replace": {"match": f"step_{MAX_STEPS:08d}.pt", "nth": 1, "when": "after"}},  # the last (and best)
    {"kill_at_replace": {"match": "best.json", "nth": 2, "when": "before"}},
    {"kill_at_replace": {"match": "train_config.json", "nth": 1, "when": "before"}},  # before any step
], ids=["half-written", "empty-first", "before-rename", "new-best-before-best.json", "last-before-best.json",
        "best.json-before-rename", "config-before-rename"])
def test_sigkill_in_each_checkpoint_window_then_resume_auto_is_bitwise_identical(forkserver, train_data,
                                                                                 train_reference, tmp_path, hook):
    ref, _ = train_reference
    run = tmp_path / "run"
    r = forkserver.run(train_argv(train_data, run), hooks={**HOOKS, **hook})
    assert r.returncode == -signal.SIGKILL, f"the hook did not fire: {r.log}"
    check_after_kill(run)
    r = forkserver.run(train_argv(train_data, run), hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert_same_state(run, ref, f"killed at {hook}")
