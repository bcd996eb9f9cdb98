"""``make gpu-check`` rehearsed on the CPU: the dry run of benchmarks/gpu_check.py runs every step at tiny sizes
(gloo instead of NCCL, seconds instead of a minute), so the first GPU run meets only GPU problems."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

ROOT = Path(__file__).resolve().parent.parent


def _bench(name: str):
    """A benchmarks/ script imported as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_reports_every_step_ok(tmp_path):
    out = tmp_path / "gpu-results"
    env = {**os.environ, "GPT2KIT_TEST_DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    results = json.loads((out / "gpu_check.json").read_text())
    steps = results["steps"]
    failed = {k: v.get("error") for k, v in steps.items() if v["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:], proc.stderr[-2000:])
    assert results["mode"] == "dry-run"
    assert list(steps) == ["tests", "prepare", "ddp", "fsdp", "train", "generate", "demo", "float16", "oom",
                           "autobatch"]
    assert steps["tests"]["passed"] >= 1 and steps["tests"]["failed"] == 0 and steps["tests"]["error"] == 0
    assert steps["prepare"]["train_tokens"] > 10_000 and steps["prepare"]["val_tokens"] > 0
    for name, fmt in (("ddp", "index"), ("fsdp", "fqn")):  # fqn: the model really was sharded with fully_shard
        assert steps[name]["steps"] == [1, 2, 3] and steps[name]["optimizer_format"] == fmt
        assert steps[name]["world_size"] == 1 and math.isfinite(steps[name]["loss_last"])
    train = steps["train"]
    assert train["batch_size"] == 2 and train["batch_search"] == {"2": "ok"}
    assert train["tokens_per_s"] > 0 and train["ratio_vs_transformers"] > 0 and train["loop_tokens_per_s"] > 0
    assert 0 < train["mfu"] and "measured CPU" in train["peak_source"]
    gen = steps["generate"]
    assert gen["b1_ratio_vs_transformers"] > 0 and gen["b2_tokens_per_s"] > 0
    demo = steps["demo"]
    assert demo["stopped_by_sigterm"] and demo["steps"] >= 1 and math.isfinite(demo["val_loss"])
    fp16 = steps["float16"]
    assert fp16["steps"] == [1, 2, 3, 4, 5] and all(s > 0 for s in fp16["loss_scale"]) and fp16["saved_scale"] > 0
    oom = steps["oom"]
    assert oom["steps"] == [1, 2] and oom["backoffs"] == [] and oom["grad_accum_steps"] == 1  # it fits on a CPU
    auto = steps["autobatch"]  # the CPU's budget holds the tiny model's whole global batch in one micro-batch
    assert auto["batch_size"] * auto["grad_accum_steps"] == 4 and auto["line"].startswith("--batch-size auto:")
    assert auto["steps"] == [1, 2, 3] and auto["step_s_last"] > 0
    assert set(results["targets"]) == {"train_mfu", "train_vs_transformers", "generate_b1_vs_transformers"}
    assert all(t["verdict"] in ("met", "not met") for t in results["targets"].values())
    log = (out / "gpu_check.log").read_text()
    assert "--- summary" in log and "target training tokens/s vs transformers" in log


def test_batch_search_takes_the_largest_that_fits():
    train = _bench("train")
    seen = []

    def attempt(B):
        seen.append(B)
        if B > 16:
            raise torch.OutOfMemoryError(f"CUDA out of memory at micro-batch {B}")
        return f"steps at {B}"

    assert train.find_batch_size([64, 32, 16, 8], attempt) == (
        16, "steps at 16", {"64": "out of memory", "32": "out of memory", "16": "ok"})
    assert seen == [64, 32, 16]
    assert train.find_batch_size([64, 32], attempt)[0] is None


def test_targets_are_met_not_met_or_not_measured():
    check = _bench("gpu_check")
    t = check.evaluate_targets({"train": {"mfu": 0.52, "ratio_vs_transformers": 1.1},
                                "generate": {"b1_ratio_vs_transformers": None}})
    assert t["train_mfu"]["verdict"] == "met" and t["train_vs_transformers"]["verdict"] == "not met"
    assert t["generate_b1_vs_transformers"]["verdict"] == "not measured"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_without_cuda_it_says_what_to_do(tmp_path, monkeypatch, capsys):
    # main() in this process (the script's exit code is main's return value): both refusals come before any
    # step, and a new interpreter would only add the seconds of importing torch twice
    check = _bench("gpu_check")
    monkeypatch.delenv("GPT2KIT_TEST_DEVICE", raising=False)
    assert check.main(["--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "without a usable CUDA device" in lines[0] and "--dry-run" in lines[0]
    assert check.main(["--dry-run", "--steps", "tests,gpus"]) == 2
    assert "--steps gpus: unknown" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before writing anything
