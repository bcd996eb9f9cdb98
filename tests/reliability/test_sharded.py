"""``--checkpoint-format sharded`` (torch.distributed.checkpoint) under faults, with real ``torchrun`` launchers of
gloo ranks on the CPU: a rank killed inside a sharded save, the restarted group resuming bitwise (DDP and FSDP),
a 2-rank sharded checkpoint continued by one process (which then writes sharded checkpoints alone), and sample
and export reading one in a process of their own. One in-process test: a ``.metadata`` that would run code.

The four launchers (an uninterrupted full-format reference and a faulted sharded run, for DDP and for FSDP) start
together and run side by side, so the module costs about two launches of wall time.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from multirank_harness import MR_FLAGS, Launch, torchrun_argv, train_args
from reliability_harness import HOOKS, MAX_STEPS

from gpt2kit.checkpoint import (
    is_sharded,
    list_step_checkpoints,
    load_model,
    read_checkpoint,
    write_sharded_meta,
)
from gpt2kit.errors import UserError

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

LAUNCH_TIMEOUT = 420  # seconds, for two pairs of launchers sharing the machine
SHARDED = ["--checkpoint-format", "sharded"]
FAULTS = {
    # rank 0 dies after every rank wrote step 6's shards and rank 0 its metadata, before the rename
    "ddp": {"rank0": {"kill_at_replace": {"match": "step_00000006.dcp", "nth": 1, "when": "before"}}},
    # rank 1 dies in the middle of writing its part of step 6 while rank 0 writes its own
    "fsdp": {"rank1": {"kill_in_dcp_write": {"match": "step_00000006.dcp", "nth": 5}}},
}


@pytest.fixture(scope="module")
def runs(train_data, tmp_path_factory) -> dict[str, dict[str, Path | str]]:
    """For ddp and fsdp: an uninterrupted 2-rank full-format run, and a sharded one killed inside its step-6
    save and restarted once by torchrun (``--max-restarts 1``); all four launched at once."""
    root = tmp_path_factory.mktemp("sharded")
    launches = {}
    for parallel in ("ddp", "fsdp"):
        flags = [*MR_FLAGS, "--parallel", parallel]
        ref, run = root / f"{parallel}-ref", root / f"{parallel}-sharded"
        launches[parallel, "ref"] = (ref, Launch(torchrun_argv(2, train_args(train_data, ref, flags)),
                                                 ref.with_suffix(".log")))
        launches[parallel, "run"] = (run, Launch(torchrun_argv(2, train_args(train_data, run, [*flags, *SHARDED]),
                                                               max_restarts=1), run.with_suffix(".log"),
                                                 hooks=FAULTS[parallel]))
    try:
        for (parallel, which), (_, launch) in launches.items():
            assert launch.wait(LAUNCH_TIMEOUT) == 0, f"{parallel} {which}:\n" + launch.log[-4000:]
    finally:
        for _, launch in launches.values():
            if launch.proc.poll() is None:
                launch.kill()
    return {p: {"ref": launches[p, "ref"][0], "run": launches[p, "run"][0], "log": launches[p, "run"][1].log}
            for p in ("ddp", "fsdp")}


def _metrics(run: Path) -> list[tuple]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"], r.get("val_loss")) for r in records]


def _same_tensors(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b), what
    for k in a:
        if isinstance(a[k], dict):
            _same_tensors(a[k], b[k], f"{what} {k}")
        else:
            assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_rank_killed_inside_a_sharded_save_restarts_from_the_last_complete_one_bitwise(runs, parallel):
    ref, run, log = runs[parallel]["ref"], runs[parallel]["run"], runs[parallel]["log"]
    assert "resumed from" in log and "checkpoints/step_00000004.dcp at step 4" in log, log[-4000:]
    # the half-written step 6 was never taken for a checkpoint, and the restarted run removed its directory
    names = [p.name for p in list_step_checkpoints(run)]
    assert names == ["step_00000010.dcp", "step_00000012.dcp"], names
    assert not [p.name for p in (run / "checkpoints").iterdir() if ".tmp." in p.name]
    assert _metrics(run) == _metrics(ref)  # every step's loss, grad norm and val loss, bit for bit
    best, best_ref = (json.loads((d / "checkpoints" / "best.json").read_text()) for d in (run, ref))
    assert (best["step"], best["val_loss"], best["file"]) == (best_ref["step"], best_ref["val_loss"],
                                                              best_ref["file"].replace(".pt", ".dcp"))
    got = read_checkpoint(list_step_checkpoints(run)[-1], optimizer=True)
    want = read_checkpoint(list_step_checkpoints(ref)[-1])
    for key in ("step", "loader", "world_size", "tokens_seen", "model_config", "skipped_steps"):
        assert got[key] == want[key], key
    assert got["config"]["checkpoint_format"] == "sharded" and got["world_size"] == 2
    _same_tensors(got["model"], want["model"], "weights")
    if want["optimizer_format"] == "fqn":
        _same_tensors(got["optimizer"]["state"], want["optimizer"]["state"], "optimizer")
    else:  # DDP's full format keys the state by index; both list the parameters in one order
        names = [n for g in got["optimizer"]["param_groups"] for n in g["params"]]
        index = [i for g in want["optimizer"]["param_groups"] for i in g["params"]]
        _same_tensors({n: got["optimizer"]["state"][n] for n in names},
                      {n: want["optimizer"]["state"][i] for n, i in zip(names, index)}, "optimizer")
    assert [r["torch"].tolist() for r in got["rng"]] == [r["torch"].tolist() for r in want["rng"]]


def test_a_two_rank_sharded_checkpoint_continues_in_one_process_and_sample_and_export_read_it(
        forkserver, runs, train_data, tmp_path):
    ref, run = runs["fsdp"]["ref"], runs["fsdp"]["run"]
    one = tmp_path / "one"
    start = run / "checkpoints" / "step_00000010.dcp"
    # one process, two micro-batches per step: the global batch of the two ranks; it saves sharded alone
    r = forkserver.run(["train", *MR_FLAGS, "--device", "cpu", "--data", train_data, "--out", one,
                        "--resume", start, "--total-batch-tokens", "128"], hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert "world 1 x cpu | grad accum 2" in r.log and f"resumed from {start} at step 10" in r.log
    want = {s: loss for s, loss, *_ in _metrics(ref)}
    got = {s: loss for s, loss, *_ in _metrics(one)}
    assert [got[s] for s in (11, 12)] == pytest.approx([want[s] for s in (11, 12)], abs=1e-5)
    last = list_step_checkpoints(one)[-1]
    assert last.name == f"step_{MAX_STEPS:08d}.dcp" and is_sharded(last)
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "meta.pt"]
    # sample and export, each a process of its own with no process group, consolidate the 2-rank checkpoint
    weights = load_model(run).model.state_dict()
    assert torch.equal(weights["transformer.wte.weight"],
                       read_checkpoint(list_step_checkpoints(ref)[-1])["model"]["transformer.wte.weight"])
    r = forkserver.run(["sample", "--checkpoint", run, "--prompt", "the whale", "--max-new-tokens", "4",
                        "--device", "cpu", "--seed", "1"], hooks=HOOKS)
    assert r.returncode == 0 and "step_00000012.dcp: the best by validation loss" in r.log, r.log
    r = forkserver.run(["export", "--checkpoint", run, "--out", tmp_path / "hf"], hooks=HOOKS)
    assert r.returncode == 0, r.log
    exported = load_model(tmp_path / "hf").model.state_dict()
    assert sorted(exported) == sorted(weights)
    for k, v in exported.items():  # the embedding's padding rows (50257 -> 50304) are cropped in HF format
        assert torch.equal(v, weights[k][tuple(slice(0, n) for n in v.shape)]), k


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_sharded_checkpoint_whose_metadata_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002.dcp"
    ckpt.mkdir(parents=True)
    write_sharded_meta(ckpt, {"model_config": {}, "step": 2})
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(UserError, match=r"step_00000002.dcp: refused (posix|os)\.system in \.metadata"):
        load_model(tmp_path / "run")
    assert not (tmp_path / "PWNED").exists()
