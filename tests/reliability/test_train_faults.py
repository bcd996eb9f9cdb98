"""Training under faults: SIGTERM/SIGINT, a disk that fills up while checkpointing, NaN loss or gradients,
settings out of range, and checkpoints that must not be resumed (code inside, another model size).
"""

from __future__ import annotations

import errno
import math
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from reliability_harness import (
    HOOKS,
    MAX_STEPS,
    assert_same_state,
    check_after_kill,
    final_state,
    train_argv,
    training_state,
)

from gpt2kit.checkpoint import list_step_checkpoints, load_model, read_checkpoint
from gpt2kit.cli import main

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

LONG = ("--max-steps", "100000")  # a run that only a signal ends
RESULT_KEYS = ("final checkpoint", "metrics.jsonl", "samples.jsonl")


def assert_same_training(run: Path, ref: dict, context: str) -> None:
    """Weights, optimizer, data position, RNG and every step's loss equal the reference, bit for bit.

    A stop signal at an evaluation step skips that evaluation (to stop at once) and the resumed run
    does not redo it, so validation records may lack that step; everything training depends on is equal.
    """
    got, want = training_state(final_state(run)), training_state(ref)
    for key in want:
        assert got[key] == want[key], f"{context}: {key} differs from the uninterrupted run"


def logged_steps(run: Path) -> int:
    """Steps recorded in metrics.jsonl so far (0 when it does not exist yet)."""
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------------------------------------- graceful stop


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_exits_zero_and_resume_matches_the_uninterrupted_run(
        forkserver, train_data, train_reference, rng, tmp_path, sig):
    ref, _ = train_reference
    run = tmp_path / "run"
    sent: list[float] = []
    r = forkserver.run(train_argv(train_data, run, *LONG), hooks=HOOKS, sig=sig, group=False,
                       signal_when=lambda pid: logged_steps(run) >= 3,  # inside the training loop
                       signal_after=rng.uniform(0.0, 0.3), before_signal=lambda pid: sent.append(time.perf_counter()))
    stop_seconds = time.perf_counter() - sent[0]
    assert r.signalled and r.returncode == 0, r.log
    # a step of this model takes milliseconds; the bound only catches a stop that hangs or waits for the end
    assert stop_seconds < 30, f"{signal.Signals(sig).name}: took {stop_seconds:.1f}s to save and exit"
    name = signal.Signals(sig).name
    m = re.search(rf"received {name}: saved (\S+) at step (\d+); continue with --resume auto", r.log)
    assert m, r.log
    step = int(m.group(2))
    assert 3 <= step < 100000 and Path(m.group(1)) == list_step_checkpoints(run)[-1]
    assert read_checkpoint(m.group(1))["step"] == step
    assert f"interrupted at step {step}" in r.log
    # the saved state is the uninterrupted run's: continuing to MAX_STEPS ends bitwise at the reference
    if step < MAX_STEPS:
        r = forkserver.run(train_argv(train_data, run), hooks=HOOKS)
        assert r.returncode == 0, r.log
        assert f"resumed from {m.group(1)} at step {step}" in r.log
        assert_same_training(run, ref, f"{name} at step {step}")


def test_second_ctrl_c_stops_at_once_and_leaves_nothing_half_written(forkserver, train_data, train_reference,
                                                                      tmp_path):
    ref, _ = train_reference
    run = tmp_path / "run"

    def double(pid: int) -> None:
        import os

        os.kill(pid, signal.SIGINT)
        time.sleep(0.002)  # the second Ctrl-C lands while the first one's checkpoint may be being written

    r = forkserver.run(train_argv(train_data, run, *LONG), hooks=HOOKS, sig=signal.SIGINT, group=False,
                       signal_when=lambda pid: logged_steps(run) >= 3, signal_after=0.0, before_signal=double)
    assert r.returncode in (0, 130), r.log
    assert "Traceback" not in r.log
    check_after_kill(run)
    r = forkserver.run(train_argv(train_data, run), hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert_same_training(run, ref, "after a double Ctrl-C")


# ---------------------------------------------------------------------------------------------- full disk


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint_and_says_so(forkserver, train_data,
                                                                                   train_reference, tmp_path):
    ref, _ = train_reference
    run = tmp_path / "run"
    r = forkserver.run(train_argv(train_data, run, "--max-steps", "4"), hooks=HOOKS)
    assert r.returncode == 0, r.log
    previous = list_step_checkpoints(run)[-1]
    before = previous.read_bytes()
    size = previous.stat().st_size
    # the next checkpoint cannot be written past half its size: the disk is full
    r = forkserver.run(train_argv(train_data, run), hooks={**HOOKS, "fsize_limit": size // 2})
    assert r.returncode != 0, r.log
    lines = [ln for ln in r.log.splitlines() if "error" in ln.lower()]
    assert "Traceback" not in r.log, r.log
    assert len(lines) == 1, r.log
    assert "step_00000006.pt" in lines[0] and str(previous) in lines[0], lines[0]
    assert re.search(r"too large|no space|full", lines[0], re.I), lines[0]
    assert previous.read_bytes() == before, "the previous checkpoint was touched"
    assert list_step_checkpoints(run)[-1] == previous
    assert check_after_kill(run) == 0, "a partial checkpoint was left behind"
    load_model(run)
    # space freed: the same command continues and ends bitwise where the uninterrupted run ends
    r = forkserver.run(train_argv(train_data, run), hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert_same_state(run, ref, "after a full disk", RESULT_KEYS)


def test_enospc_from_the_checkpoint_writer_in_process(train_data, tmp_path, capsys, monkeypatch):
    """The same with the errno a full filesystem gives, raised after half the bytes reached the file."""
    import gpt2kit.train.loop as loop

    monkeypatch.setattr(loop, "peak_flops", lambda *a, **k: (None, "not measured"))
    run = tmp_path / "run"
    argv = [str(a) for a in train_argv(train_data, run)]
    assert main([*argv, "--max-steps", "2"]) == 0
    previous = list_step_checkpoints(run)[-1]
    before = previous.read_bytes()
    real_save = torch.save

    def full_disk_save(obj, f, *a, **kw):
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full_disk_save)
    capsys.readouterr()
    rc = main([*argv, "--max-steps", "4"])
    err = capsys.readouterr().err
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(previous) in lines[0], err
    assert previous.read_bytes() == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted([previous.name, "best.json"])


# ---------------------------------------------------------------------------------------------- NaN


def _all_finite(ckpt: dict) -> bool:
    def walk(x):
        if isinstance(x, torch.Tensor):
            return not x.is_floating_point() or bool(torch.isfinite(x).all())
        if isinstance(x, dict):
            return all(walk(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return all(walk(v) for v in x)
        return not (isinstance(x, float) and math.isnan(x))
    return walk(ckpt["model"]) and walk(ckpt["optimizer"])


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nan_stops_the_run_at_that_step_without_a_poisoned_checkpoint(forkserver, train_data, train_reference,
                                                                       tmp_path, where):
    ref, _ = train_reference
    run = tmp_path / "run"
    r = forkserver.run(train_argv(train_data, run), hooks={**HOOKS, "nan": {"step": 5, "where": where}})
    assert r.returncode == 2, r.log
    errors = [ln for ln in r.log.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "Traceback" not in r.log, r.log
    what = "loss nan" if where == "loss" else "gradient norm nan"
    assert f"step 5: {what}" in errors[0], errors[0]
    assert "step_00000004.pt" in errors[0], errors[0]  # names the last good checkpoint
    steps = [read_checkpoint(p) for p in list_step_checkpoints(run)]
    assert max(c["step"] for c in steps) == 4, "a checkpoint was written at or after the NaN step"
    assert all(_all_finite(c) for c in steps)
    # the NaN was transient: resuming from the last good checkpoint ends at the reference
    r = forkserver.run(train_argv(train_data, run), hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert_same_state(run, ref, f"NaN {where} at step 5, then resumed", RESULT_KEYS)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nan_with_on_nan_skip_skips_exactly_that_update(forkserver, train_data, tmp_path, where):
    run = tmp_path / "run"
    r = forkserver.run(train_argv(train_data, run, "--on-nan", "skip"),
                       hooks={**HOOKS, "nan": {"step": 5, "where": where}})
    assert r.returncode == 0, r.log
    assert re.search(r"step 5: .*nan; update skipped", r.log), r.log
    final = read_checkpoint(list_step_checkpoints(run)[-1])
    assert final["step"] == MAX_STEPS and final["skipped_steps"] == 1
    assert all(_all_finite(read_checkpoint(p)) for p in list_step_checkpoints(run))
    # AdamW counts the updates it applied: one fewer than the steps
    counts = {float(s["step"]) for s in final["optimizer"]["state"].values()}
    assert counts == {MAX_STEPS - 1.0}
    rec = next(m for m in final["metrics"] if m["step"] == 5)
    assert rec["skipped_steps"] == 1
    if where == "loss":
        assert rec["loss"] is None  # logged as null: not finite
    else:
        assert rec["grad_norm"] is None and rec["loss"] is not None


def test_repeated_nan_with_skip_stops_after_max_skipped_steps(forkserver, train_data, tmp_path):
    run = tmp_path / "run"
    r = forkserver.run(train_argv(train_data, run, "--on-nan", "skip", "--max-skipped-steps", "2"),
                       hooks={**HOOKS, "nan": {"step": 5, "where": "loss", "count": 100}})
    assert r.returncode == 2, r.log
    assert re.search(r"step 7: loss nan after 3 consecutive skipped steps", r.log), r.log
    steps = [read_checkpoint(p) for p in list_step_checkpoints(run)]
    assert all(_all_finite(c) for c in steps)
    # step 6 was saved (its update skipped, the weights of step 4): no NaN reached it
    assert max(c["step"] for c in steps) == 6


# ---------------------------------------------------------------------------------------------- bad settings


BAD_SETTINGS = [
    (["--lr", "-0.001"], r"--lr"),
    (["--lr", "nan"], r"--lr"),
    (["--batch-size", "0"], r"--batch-size"),
    (["--max-steps", "-5"], r"--max-steps"),
    (["--warmup-steps", "-1"], r"--warmup-steps"),
    (["--schedule-steps", "0"], r"--schedule-steps"),
    (["--min-lr-ratio", "2"], r"--min-lr-ratio"),
    (["--beta2", "1.5"], r"--beta2"),
    (["--grad-clip", "-1"], r"--grad-clip"),
    (["--eval-batches", "0"], r"--eval-batches"),
    (["--keep-last", "0"], r"--keep-last"),
    (["--save-every", "0"], r"--save-every"),
    (["--dropout", "1.5"], r"dropout"),
    (["--n-embd", "30", "--n-head", "4"], r"n_embd|--n-embd|n-head"),
    (["--block-size", "0"], r"block.size"),
    (["--padded-vocab-size", "100"], r"padded.vocab.size"),
    (["--total-batch-tokens", "100"], r"--total-batch-tokens"),
    (["--block-size", "4096"], r"block.size|tokens"),  # more than the validation split holds
]


@pytest.mark.parametrize("extra,pattern", BAD_SETTINGS, ids=[" ".join(e) for e, _ in BAD_SETTINGS])
def test_settings_out_of_range_are_one_line_errors(train_data, tmp_path, capsys, extra, pattern):
    capsys.readouterr()
    try:
        rc = main([str(a) for a in train_argv(train_data, tmp_path / "run", *extra)])
    except SystemExit as e:  # a value the flag's own type refuses (--batch-size 0: not an integer >= 1 nor auto)
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and ": error: " in lines[0], err
    assert re.search(pattern, lines[0]), lines[0]
    assert not list_step_checkpoints(tmp_path / "run")


# ---------------------------------------------------------------------------------------------- resume refusals


def _trained_run(forkserver, train_data, run: Path, *extra: str) -> None:
    r = forkserver.run(train_argv(train_data, run, "--max-steps", "2", *extra), hooks=HOOKS)
    assert r.returncode == 0, r.log


def test_resume_of_a_checkpoint_with_code_is_refused_and_the_code_never_runs(forkserver, train_data, tmp_path):
    run = tmp_path / "run"
    _trained_run(forkserver, train_data, run)
    marker = tmp_path / "marker"

    class RunsCode:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('code ran')",))

    good = list_step_checkpoints(run)[-1]
    ckpt = torch.load(good, weights_only=True)
    torch.save({**ckpt, "step": 3, "loader": RunsCode()}, run / "checkpoints" / "step_00000003.pt")
    r = forkserver.run(train_argv(train_data, run), hooks=HOOKS)
    assert r.returncode == 2, r.log
    assert "refused to load" in r.log and "step_00000003.pt" in r.log and "Traceback" not in r.log
    assert not marker.exists(), "resuming executed code from the checkpoint"


def test_resume_with_another_model_size_is_one_clear_error(forkserver, train_data, tmp_path):
    run = tmp_path / "run"
    _trained_run(forkserver, train_data, run)
    r = forkserver.run(train_argv(train_data, run, "--n-layer", "4"), hooks=HOOKS)
    assert r.returncode == 2, r.log
    errors = [ln for ln in r.log.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "n_layer=2" in errors[0] and "n_layer=4" in errors[0], r.log


def test_a_new_run_never_overwrites_the_checkpoints_of_an_earlier_one(forkserver, train_data, tmp_path):
    run = tmp_path / "run"
    _trained_run(forkserver, train_data, run)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    argv = [a for a in train_argv(train_data, run, "--lr", "3e-3") if a not in ("--resume", "auto")]
    r = forkserver.run(argv, hooks=HOOKS)
    assert r.returncode == 2, r.log
    assert "--resume" in r.log and str(run) in r.log
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
