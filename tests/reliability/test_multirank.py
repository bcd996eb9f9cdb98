"""Training on several ranks under the faults long multi-GPU runs meet, with real ``torchrun`` launchers and gloo
ranks on loopback: two launchers as two nodes, rank 0 SIGKILLed inside each window of a checkpoint save under DDP
and under FSDP (one launcher restarting through all of them), a rank SIGKILLed without restarts, a rank that
hangs, SIGTERM to every rank as Slurm sends it before a preemption, a 4-rank checkpoint continued on 2 ranks and a
2-rank one on one process. Two in-process tests check how a restarted group agrees on store keys no earlier round
wrote.

The runs are shared: two uninterrupted 2-rank runs (DDP, FSDP) are the bitwise references and keep every
checkpoint they write; two 4-rank runs (one of them on two launchers) are resumed on 2 ranks. Most launchers
fork their ranks warm (:mod:`warm_torchrun`); the two tests whose rank dies or hangs for good use plain torchrun.
A 2-layer, 32-wide model on 16-token windows; every wait is bounded and a launcher that overstays is killed with
all its ranks. tests/reliability/repeat_rank_kill.py repeats the rank-kill restart many times (docs/reliability.md
has its figures).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from multirank_harness import (
    MR_FLAGS,
    Launch,
    free_port,
    logged_steps,
    resumes,
    torchrun_argv,
    train_args,
    wait_until,
)
from reliability_harness import HOOKS, MAX_STEPS, assert_same_state, final_state, training_state

from gpt2kit.checkpoint import list_step_checkpoints, read_checkpoint
from gpt2kit.distributed import _fresh_round
from gpt2kit.errors import UserError

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

LAUNCH_TIMEOUT = 300  # seconds; a tiny run takes 10-60 s here, depending on how busy the machine is
FOUR_RANKS = ["--batch-size", "2", "--eval-batches", "4", "--max-steps", "4", "--eval-every", "2"]
"""4 ranks x 2 windows: the same global batch (and validation windows) as 2 ranks x 4, for 4 steps."""
PARALLEL = ["ddp", "fsdp"]


def _wait_all(launches: list[Launch]) -> None:
    for launch in launches:
        assert launch.wait(LAUNCH_TIMEOUT) == 0, launch.log[-4000:]


@pytest.fixture(scope="module")
def references(train_data, warm_launchers, tmp_path_factory) -> dict[str, dict]:
    """Uninterrupted 2-rank runs under DDP and FSDP, side by side: ``run``, ``state`` (:func:`final_state`),
    ``log`` and ``kept`` (a directory holding every checkpoint the run wrote, pruned or not)."""
    root = tmp_path_factory.mktemp("mr-ref")
    refs, launches = {}, []
    for parallel in PARALLEL:
        run, kept = root / parallel, root / f"{parallel}-kept"
        kept.mkdir()
        launches.append(Launch(torchrun_argv(2, train_args(train_data, run, [*MR_FLAGS, "--parallel", parallel])),
                               run.with_suffix(".log"), hooks={"all": {**HOOKS, "keep_checkpoints": str(kept)}},
                               server=warm_launchers))
        refs[parallel] = {"run": run, "kept": kept}
    _wait_all(launches)
    for parallel, launch in zip(PARALLEL, launches):
        state = final_state(refs[parallel]["run"])
        assert state["final checkpoint"]["step"] == MAX_STEPS and state["final checkpoint"]["world_size"] == 2
        refs[parallel].update(state=state, log=launch.log)
    return refs


@pytest.fixture(scope="module")
def four_ranks(train_data, warm_launchers, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """4-rank runs of 4 steps, side by side: DDP on two launchers of 2 ranks each (c10d rendezvous, the README's
    multi-node command) and FSDP on one; (run directory, log) by --parallel."""
    root = tmp_path_factory.mktemp("mr-four")
    endpoint = f"127.0.0.1:{free_port()}"
    ddp = [Launch(torchrun_argv(2, train_args(train_data, root / "ddp", [*MR_FLAGS, *FOUR_RANKS]), nnodes=2,
                                node_rank=i, endpoint=endpoint), root / f"ddp-node{i}.log", server=warm_launchers)
           for i in range(2)]
    fsdp_flags = [*MR_FLAGS, *FOUR_RANKS, "--parallel", "fsdp"]
    fsdp = Launch(torchrun_argv(4, train_args(train_data, root / "fsdp", fsdp_flags)), root / "fsdp.log",
                  server=warm_launchers)
    _wait_all([*ddp, fsdp])
    return {"ddp": (root / "ddp", "".join(node.log for node in ddp)), "fsdp": (root / "fsdp", fsdp.log)}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def losses(records: list[dict], key: str = "loss") -> list[float]:
    """The ``key`` values of metrics records, in step order."""
    return [r[key] for r in sorted(records, key=lambda r: r["step"]) if r.get(key) is not None]


def _assert_continues(got: list[dict], want: list[dict]) -> None:
    """``got`` (a resumed run's metrics) has every step, and the losses, validation losses and learning rates of
    ``want`` (an uninterrupted run with the same global batch)."""
    assert [m["step"] for m in got] == list(range(1, MAX_STEPS + 1))
    assert losses(got) == pytest.approx(losses(want), abs=1e-5)
    val = {m["step"]: m["val_loss"] for m in want if m.get("val_loss") is not None}
    assert {m["step"]: m["val_loss"] for m in got if m["step"] in val} == pytest.approx(val, abs=1e-5)
    assert [m["lr"] for m in got] == [m["lr"] for m in want]


def test_two_launchers_as_two_nodes_train_like_one_process(forkserver, train_data, four_ranks, tmp_path):
    # the README's multi-node command, 2 ranks per "node"; one process accumulates the same global batch
    run, log = four_ranks["ddp"]
    single = tmp_path / "single"
    r = forkserver.run(train_args(train_data, single, [*MR_FLAGS, *FOUR_RANKS, "--total-batch-tokens", "128"]),
                       hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert "grad accum 4" in r.log
    assert "world 4 x cpu | grad accum 1" in log
    a, b = _metrics(single), _metrics(run)
    assert len(losses(a)) == 4 and len(losses(a, "val_loss")) == 2
    assert losses(b) == pytest.approx(losses(a), abs=1e-5)
    assert losses(b, "val_loss") == pytest.approx(losses(a, "val_loss"), abs=1e-5)
    assert read_checkpoint(list_step_checkpoints(run)[-1])["world_size"] == 4


def test_fsdp_trains_like_ddp(references):
    ddp, fsdp = (references[p]["state"]["metrics.jsonl"] for p in PARALLEL)
    assert losses(fsdp) == pytest.approx(losses(ddp), abs=1e-5)
    assert losses(fsdp, "val_loss") == pytest.approx(losses(ddp, "val_loss"), abs=1e-5)
    assert references["fsdp"]["state"]["final checkpoint"]["optimizer_format"] == "fqn"


WINDOWS = {  # rank 0's fault in each round of one launcher; the last round runs clean
    "rank0": {"kill_in_save": {"match": "step_00000004", "nth": 1, "fraction": 0.5}},  # half written
    "round1.rank0": {"kill_at_replace": {"match": "step_00000006.pt", "nth": 1, "when": "before"}},  # not renamed
    "round2.rank0": {"kill_at_replace": {"match": "step_00000008.pt", "nth": 1, "when": "after"}},  # no best.json
}
RESUMED_FROM = ["step_00000002.pt", "step_00000004.pt", "step_00000008.pt"]
"""The last complete checkpoint after each of the three kills."""
GATHER = {"round3.rank1": {"kill_in_gather": {"nth": 1}}}
"""FSDP only: rank 1 killed while every rank gathers the full state of step 10 (rank 0 inside the collective)."""


@pytest.mark.parametrize("parallel", PARALLEL)
def test_rank0_killed_in_each_window_of_a_save_restarts_from_the_last_complete_checkpoint_bitwise(
        train_data, warm_launchers, references, tmp_path, parallel):
    # rank 0 writes the checkpoints while the others wait (under FSDP after every rank gathered the full state):
    # killed inside a save, it must leave nothing that resume picks up but cannot load. Before the round keys
    # fix the restarted ranks also read the dead ranks' addresses from the round before (3 of 4 restarts
    # failed); repeat_rank_kill.py kills either rank at random steps
    run = tmp_path / "run"
    hooks, resumed = ({**WINDOWS, **GATHER}, [*RESUMED_FROM, "step_00000008.pt"]) if parallel == "fsdp" \
        else (WINDOWS, RESUMED_FROM)
    launch = Launch(torchrun_argv(2, train_args(train_data, run, [*MR_FLAGS, "--parallel", parallel]),
                                  max_restarts=len(resumed)), tmp_path / "run.log", hooks=hooks, server=warm_launchers)
    assert launch.wait(LAUNCH_TIMEOUT) == 0, launch.log[-4000:]
    assert resumes(launch.log) == resumed, launch.log[-4000:]
    assert_same_state(run, references[parallel]["state"], f"{parallel}, killed in {list(hooks.values())}")


@pytest.mark.parametrize("parallel", PARALLEL)
def test_a_four_rank_checkpoint_resumes_on_two_ranks_like_an_uninterrupted_two_rank_run(
        train_data, warm_launchers, four_ranks, references, tmp_path, parallel):
    # the loader's position counts windows of the one global order, so 2 ranks of 4 windows read exactly the
    # windows 4 ranks of 2 would have read; the rank RNG streams cannot all continue, and dropout is off
    run = tmp_path / "run"
    shutil.copytree(four_ranks[parallel][0], run)
    launch = Launch(torchrun_argv(2, train_args(train_data, run, [*MR_FLAGS, "--parallel", parallel])),
                    tmp_path / "run.log", server=warm_launchers)
    assert launch.wait(LAUNCH_TIMEOUT) == 0, launch.log[-4000:]
    assert resumes(launch.log) == ["step_00000004.pt"] and "world 2 x cpu | grad accum 1" in launch.log, launch.log
    want = references[parallel]["state"]
    _assert_continues(_metrics(run), want["metrics.jsonl"])
    got, ref = read_checkpoint(list_step_checkpoints(run)[-1]), want["final checkpoint"]
    assert got["world_size"] == 2 and got["step"] == ref["step"] and got["tokens_seen"] == ref["tokens_seen"]
    assert {k: got["loader"][k] for k in ("position", "micro_step", "seed", "data_id")} == \
        {k: ref["loader"][k] for k in ("position", "micro_step", "seed", "data_id")}


@pytest.mark.parametrize("parallel", PARALLEL)
def test_a_two_rank_checkpoint_resumes_on_one_process_with_the_same_data_order_and_schedule(
        forkserver, train_data, references, tmp_path, parallel):
    # one process accumulating two micro-batches per step reads exactly the windows the two ranks would have read
    run = tmp_path / "run"
    step6 = references[parallel]["kept"] / "step_00000006.pt"
    r = forkserver.run(["train", *MR_FLAGS, "--total-batch-tokens", "128", "--device", "cpu", "--data", train_data,
                        "--out", run, "--resume", step6], hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert f"resumed from {step6} at step 6" in r.log and "world 1 x cpu | grad accum 2" in r.log, r.log
    _assert_continues(_metrics(run), references[parallel]["state"]["metrics.jsonl"])


def test_a_killed_rank_without_restarts_stops_every_rank_with_a_line_naming_it(train_data, tmp_path):
    run = tmp_path / "run"
    launch = Launch(torchrun_argv(2, train_args(train_data, run, [*MR_FLAGS, "--max-steps", "100000"]), warm=False),
                    tmp_path / "run.log")
    wait_until(lambda: logged_steps(run) >= 3 and (0, 1) in launch.rank_pids(), 120, "step 3", launch)
    pids = launch.rank_pids()
    killed = time.perf_counter()
    os.kill(pids[(0, 1)], signal.SIGKILL)
    rc = launch.wait(LAUNCH_TIMEOUT)
    took = time.perf_counter() - killed
    assert rc != 0
    assert not launch.rank_pids(), "a rank outlived the launcher"
    errors = [ln for ln in launch.log.splitlines() if "gpt2kit train: error:" in ln]
    assert len(errors) == 1, launch.log[-4000:]
    assert "rank 0: a collective with the other ranks failed: rank 1 stopped answering" in errors[0], errors[0]
    assert "relaunch with --resume auto" in errors[0]
    # torchrun's grace period for the survivors is 30 s; the bound only catches a rank that waits for ever
    assert took < 60, f"took {took:.0f}s to stop after rank 1 was killed"


def test_a_stuck_rank_ends_the_job_after_the_dist_timeout(train_data, tmp_path):
    run = tmp_path / "run"
    timeout = 5
    launch = Launch(torchrun_argv(2, train_args(train_data, run, [*MR_FLAGS, "--max-steps", "100000",
                                                                  "--dist-timeout", str(timeout)]), warm=False),
                    tmp_path / "run.log")
    wait_until(lambda: logged_steps(run) >= 3 and (0, 1) in launch.rank_pids(), 120, "step 3", launch)
    stuck = launch.rank_pids()[(0, 1)]
    os.kill(stuck, signal.SIGSTOP)  # alive, holding its sockets open, answering nothing: a hung rank
    stopped = time.perf_counter()
    try:
        wait_until(lambda: "gpt2kit train: error:" in launch.log, 120, "rank 0's error line", launch)
        took = time.perf_counter() - stopped
    finally:
        os.kill(stuck, signal.SIGCONT)  # let torchrun's SIGTERM reach it
    assert launch.wait(LAUNCH_TIMEOUT) != 0
    line = next(ln for ln in launch.log.splitlines() if "gpt2kit train: error:" in ln)
    assert "rank 0: a collective with the other ranks failed: rank 1 stopped answering" in line, line
    assert f"--dist-timeout {timeout}s" in line
    # the collective gives up after --dist-timeout, then the survivors wait PROBE_SECONDS (5) for each other
    assert timeout <= took < timeout + 5 + 30, f"rank 0 gave up {took:.0f}s after rank 1 hung"


def test_sigterm_to_every_rank_saves_once_exits_zero_and_a_relaunch_continues_bitwise(
        train_data, warm_launchers, references, tmp_path):
    run = tmp_path / "run"
    launch = Launch(torchrun_argv(2, train_args(train_data, run, [*MR_FLAGS, "--max-steps", "100000"])),
                    tmp_path / "run.log", server=warm_launchers)
    wait_until(lambda: logged_steps(run) >= 3 and len(launch.rank_pids()) == 2, 120, "step 3", launch)
    before = list_step_checkpoints(run)
    for pid in launch.rank_pids().values():  # as Slurm's --signal=TERM@120 reaches every task
        os.kill(pid, signal.SIGTERM)
    assert launch.wait(LAUNCH_TIMEOUT) == 0, launch.log[-4000:]
    m = re.search(r"received SIGTERM: saved (\S+) at step (\d+); continue with --resume auto", launch.log)
    assert m, launch.log[-4000:]
    step = int(m.group(2))
    assert f"interrupted at step {step}" in launch.log
    # both ranks got the signal: they stop at one step, save it and train no further (a periodic save may precede)
    assert _metrics(run)[-1]["step"] == step
    last = list_step_checkpoints(run)[-1]
    assert last.name == Path(m.group(1)).name and last not in before and read_checkpoint(last)["step"] == step
    if step < MAX_STEPS:
        relaunch = Launch(torchrun_argv(2, train_args(train_data, run, MR_FLAGS)), tmp_path / "relaunch.log",
                          server=warm_launchers)
        assert relaunch.wait(LAUNCH_TIMEOUT) == 0, relaunch.log[-4000:]
        assert f"resumed from {m.group(1)} at step {step}" in relaunch.log
        got, want = training_state(final_state(run)), training_state(references["ddp"]["state"])
        for key in want:
            assert got[key] == want[key], f"SIGTERM at step {step}: {key} differs from the uninterrupted run"


# ---------------------------------------------------------------------------------------------- in one process


def _rounds(port: int, world_size: int, delays: dict[int, float]) -> dict[int, int]:
    """Every rank's :func:`_fresh_round` answer, ranks joining after ``delays`` seconds (threads, own clients)."""
    got: dict[int, int] = {}

    def rank(r: int) -> None:
        time.sleep(delays.get(r, 0.0))
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=datetime.timedelta(seconds=20))
        got[r] = _fresh_round(store, r, world_size, 20)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got


def test_each_restart_round_agrees_on_a_number_no_earlier_round_used():
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=20))
    seen = []
    # the race that broke restarts: the other ranks of a new round start before or after rank 0, while the
    # store still holds the keys (tokens, addresses) every rank of the rounds before wrote
    for delays in ({}, {0: 0.3}, {1: 0.3, 2: 0.1}, {0: 0.2, 2: 0.4}):
        got = _rounds(server.port, 3, delays)
        assert sorted(got) == [0, 1, 2] and len(set(got.values())) == 1, (delays, got)
        seen.append(got[0])
    assert len(set(seen)) == len(seen), f"a round reused an earlier round's number: {seen}"


def test_a_rank_that_never_joins_is_named_after_the_timeout():
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=5))
    with pytest.raises(UserError, match=r"rank 0: rank 1 did not join within --dist-timeout 0.5s"):
        _fresh_round(server, 0, 2, 0.5)
