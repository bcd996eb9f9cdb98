"""``make gpu-check``: run every CUDA path of gpt2kit once and measure it, inside 8 minutes on one H100/H200.

For a machine with an NVIDIA GPU, no internet, and a Python that already has torch (CUDA), transformers,
tiktoken, safetensors, numpy, tqdm and pytest (nothing else is needed). The steps, in order, each inside its
own time budget (seconds, the BUDGETS table):

  tests     GPT2KIT_TEST_DEVICE=cuda pytest -m device tests/gpu: parity with transformers in float32 and bf16,
            cached = uncached generation, training steps against a float64 CPU reference, bitwise resume,
            compile on/off, HellaSwag and generation after compile, a CUDA checkpoint loading on the CPU
  prepare   the built-in State of the Union corpus into OUT/data (what the next steps train on)
  ddp       torchrun --nproc_per_node=1 gpt2kit train --parallel ddp (NCCL), then a resume
  fsdp      the same with --parallel fsdp
  train     benchmarks/train.py: gpt2-124m at T=1024, bf16, compile, fused AdamW, the largest micro-batch that
            fits (64, 32, 16, 8), tokens/s and MFU; transformers' GPT2LMHeadModel in the same run
  generate  benchmarks/generate.py: batch 1 and 16, bf16; transformers' generate in the same run
  demo      the demo-cpu preset trained for 28 s on the GPU (SIGTERM then saves), then its validation loss
  float16   gpt2kit train --dtype float16 (autocast + GradScaler), then a resume: finite losses, the loss
            scale logged and saved, the resumed run's steps continuing
  oom       gpt2-124m at micro-batch 1024 x T=1024 (more than the GPU holds) with --total-batch-tokens of one
            such micro-batch: the out-of-memory back-off must split it and finish the steps
  autobatch gpt2-124m, bf16, --batch-size auto with --total-batch-tokens 131072 (128 x T=1024): the micro-batch
            the probe picked, its line, the accumulation, and the seconds per step after it

OUT (default gpu-results/, or GPU_OUT) gets gpu_check.json, every figure so far, rewritten atomically after each
step, so a time limit leaves the finished steps behind; gpu_check.log, everything printed; and the steps' run
directories. The targets (bf16 MFU >= 50%, training >= 1.3x transformers' tokens/s, batch-1 generation >= 2x
transformers' generate) are printed beside the figures as met or not met.

The dry run (--dry-run, or GPT2KIT_TEST_DEVICE=cpu) runs every step on the CPU at tiny sizes (gloo instead of
NCCL, seconds instead of 60 s); tests/test_gpu_check.py runs it in CI, so that the first GPU run meets
only GPU problems.

    make gpu-check GPU_PYTHON=python3                       # on the GPU machine
    GPT2KIT_TEST_DEVICE=cpu python benchmarks/gpu_check.py  # the dry run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # gpt2kit from this checkout, also without PYTHONPATH

import torch  # noqa: E402

from gpt2kit.io import atomic_write_text  # noqa: E402

TOTAL_BUDGET_S = 470
"""The whole check on a GPU: 8 minutes less a margin for start-up and the summary."""
BUDGETS = {"tests": 115, "prepare": 20, "ddp": 40, "fsdp": 40, "train": 95, "generate": 40, "demo": 40,
           "float16": 25, "oom": 35, "autobatch": 20}
"""Seconds each step may take on a GPU (they add up to TOTAL_BUDGET_S); a step past its budget is stopped. The
float16 and oom budgets are estimates, not yet measured on a GPU; they run last, so an overrun loses only them."""
DRY_BUDGET_S = 300
"""Each step's limit in the dry run (a loaded 2-core CI machine)."""
DEMO_TRAIN_S = 28.0
"""Seconds the demo trains on the GPU before SIGTERM stops it (it saves a checkpoint and exits 0)."""

TARGETS = {
    "train_mfu": (0.50, "gpt2-124m bf16 MFU at T=1024"),
    "train_vs_transformers": (1.3, "training tokens/s vs transformers"),
    "generate_b1_vs_transformers": (2.0, "generation tokens/s at batch 1 vs transformers' generate"),
}
"""figure: (at least, what it is); from issue 14, measured on one H100/H200."""

# the dry run's model: the GPU tier's TINY_SHAPE (tests/gpu/gpu_tier_settings.py), so torch.compile's on-disk
# cache from the compile tests serves the dry run's compiles too
TINY_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "2"]


class Check:
    """The run: where results go, how to log, and the subprocess runner with time limits."""

    def __init__(self, out: Path, dry: bool, python: str) -> None:
        self.out, self.dry, self.python = out, dry, python
        self.device = "cpu" if dry else "cuda"
        self.data = out / "data"
        """The prepared corpus the training steps use."""
        self.partial: dict[str, Any] = {}
        """Figures a step got before it failed (kept in the results)."""
        self.t0 = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "gpu_check.log", "w", encoding="utf-8")
        self.results: dict[str, Any] = {
            "mode": "dry-run" if dry else "gpu",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(0) if not dry else "cpu",
            "torch": str(torch.__version__), "cuda": torch.version.cuda, "python": sys.version.split()[0],
            "budget_s": None if dry else TOTAL_BUDGET_S, "steps": {}, "targets": {},
        }

    def say(self, msg: str) -> None:
        """Print and log one line."""
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def save(self) -> None:
        """Rewrite gpu_check.json with everything so far (atomically: a kill leaves the previous version)."""
        atomic_write_text(self.out / "gpu_check.json", json.dumps(self.results, indent=1, default=str) + "\n")

    def budget(self, step: str) -> float:
        """Seconds ``step`` may still use: its own budget, cut to what is left of the total."""
        if self.dry:
            return DRY_BUDGET_S
        return max(1.0, min(BUDGETS[step], TOTAL_BUDGET_S - (time.monotonic() - self.t0)))

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a step's subprocess: this checkout first on PYTHONPATH, unbuffered output."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep), "PYTHONUNBUFFERED": "1", "GPT2KIT_TEST_DEVICE": self.device}
        if self.dry:
            env.setdefault("OMP_NUM_THREADS", "2")
        env.update(extra)
        return env

    def run(self, step: str, cmd: list[str], timeout: float, *, env: dict[str, str] | None = None,
            on_line: Callable[[str, subprocess.Popen], None] | None = None) -> tuple[int | None, list[str]]:
        """Run ``cmd`` in its own process group, logging its output; (exit code or None on time-out, lines)."""
        self.say(f"{step}: $ {' '.join(cmd)}")
        lines: list[str] = []
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)

        def pump() -> None:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                self.log_file.write(f"[{time.monotonic() - self.t0:6.1f}s]   {step}| {line}\n")
                self.log_file.flush()
                if on_line is not None:
                    on_line(line, proc)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.say(f"{step}: over its {timeout:.0f} s budget; stopping it")
            _kill_group(proc)
            rc = None
        reader.join(timeout=10)
        return rc, lines


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (torchrun's workers too), then SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class StepFailed(Exception):
    """A step ran but its result is wrong; the message says what."""


def _tail(lines: list[str], n: int = 15) -> str:
    return "\n".join(lines[-n:])


def _need(rc: int | None, lines: list[str], what: str) -> None:
    if rc is None:
        raise StepFailed(f"{what}: stopped at its time budget; last output:\n{_tail(lines)}")
    if rc != 0:
        raise StepFailed(f"{what}: exit code {rc}; last output:\n{_tail(lines)}")


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# ------------------------------------------------------------------------------------------------- steps

def step_tests(c: Check) -> dict[str, Any]:
    """The GPU tier of the test suite on this device."""
    cmd = [c.python, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "device", "tests/gpu"]
    if c.dry:
        # the CPU suite runs the whole tier already; the dry run proves the invocation and the parsing
        cmd += ["-k", "logits_match_transformers and float32"]
    rc, lines = c.run("tests", cmd, c.budget("tests"))
    outcome = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")
    results: dict[str, str] = {}
    for line in lines:
        m = outcome.match(line)
        if m:
            results[m.group(1)] = m.group(2)
    counts = {k.lower(): sum(1 for v in results.values() if v == k) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    figures = {**counts, "failures": sorted(t for t, v in results.items() if v in ("FAILED", "ERROR"))}
    if rc is None:
        raise StepFailed(f"pytest stopped at its time budget after {len(results)} tests: {figures}")
    if rc != 0 or counts["failed"] or counts["error"] or not counts["passed"]:
        summary = [x for x in lines if x.startswith(("FAILED", "ERROR", "E "))][:20]
        raise StepFailed(f"pytest exit code {rc}: {figures}\n" + "\n".join(summary or lines[-15:]))
    return figures


def step_prepare(c: Check) -> dict[str, Any]:
    """The corpus the training steps use: builtin:sotu on a GPU, a slice of Moby-Dick in the dry run."""
    data = c.out / "data"
    if c.dry:
        from gpt2kit.data.builtin import builtin_text

        text = builtin_text("moby-dick")[50_000:350_000]
        src = c.out / "slice.jsonl"
        k = len(text) // 60
        atomic_write_text(src, "".join(json.dumps({"text": text[i * k:(i + 1) * k]}) + "\n" for i in range(60)))
        sources = [str(src), "--val-fraction", "0.1", "--workers", "1"]
    else:
        sources = ["builtin:sotu"]
    rc, lines = c.run("prepare", [c.python, "-m", "gpt2kit", "prepare", *sources, "--out", str(data), "--overwrite",
                                  "--no-progress"], c.budget("prepare"))
    _need(rc, lines, "gpt2kit prepare")
    manifest = json.loads((data / "manifest.json").read_text())
    return {"data": str(data), "train_tokens": manifest["splits"]["train"]["tokens"],
            "val_tokens": manifest["splits"].get("val", {}).get("tokens", 0)}


def _torchrun_step(c: Check, parallel: str) -> dict[str, Any]:
    """A few steps of `gpt2kit train` under torchrun --nproc_per_node=1, then a resume of that run."""
    run_dir = c.out / f"torchrun_{parallel}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a new run, also when OUT holds an earlier check's
    # float32 in the dry run: a bf16 run on a CPU first times bf16 matmuls for its MFU peak (slow where emulated)
    shape = [*TINY_FLAGS, "--dtype", "float32"] if c.dry else []
    # AdamW: demo-cpu trains with Muon, which FSDP refuses (it would orthogonalize shards, not whole matrices)
    # on the GPU a second launch resumes the run (FSDP loads its sharded optimizer state); the CPU suite already
    # resumes two-rank gloo runs, so the dry run launches once
    steps = (3, None) if c.dry else (10, 15)
    base = [c.python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "gpt2kit", "train",
            "--preset", "demo-cpu", "--optimizer", "adamw", "--data", str(c.data), "--out", str(run_dir), *shape,
            "--device", c.device, "--parallel", parallel, "--eval-every", str(steps[0]), "--save-every", str(steps[0]),
            "--keep-last", "1",
            "--eval-batches", "2", "--samples", "1", "--sample-tokens", "8", "--log-every", "1", "--no-progress",
            "--no-tensorboard"]
    # NCCL prints its version when it starts a communicator: the sign that the group really runs on NCCL
    env = c.env(NCCL_DEBUG="VERSION")
    deadline = time.monotonic() + c.budget(parallel)
    started = time.monotonic()
    rc, lines = c.run(parallel, [*base, "--max-steps", str(steps[0])], deadline - time.monotonic(), env=env)
    _need(rc, lines, f"torchrun --parallel {parallel}")
    lines2: list[str] = []
    if steps[1] is not None:
        rc2, lines2 = c.run(parallel, [*base, "--resume", "auto", "--max-steps", str(steps[1])],
                            max(1.0, deadline - time.monotonic()), env=env)
        _need(rc2, lines2, f"torchrun --parallel {parallel} --resume auto")
    last_step = steps[1] or steps[0]
    from gpt2kit.checkpoint import list_step_checkpoints, read_checkpoint

    records = _metrics(run_dir)
    losses = [r["loss"] for r in records if "loss" in r]
    ckpt = read_checkpoint(list_step_checkpoints(run_dir)[-1])
    want_format = "fqn" if parallel == "fsdp" else "index"
    figures = {
        "steps": [r["step"] for r in records], "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "val_loss": [r["val_loss"] for r in records if r.get("val_loss") is not None],
        "tokens_per_s_last": records[-1].get("tokens_per_s") if records else None,
        "optimizer_format": ckpt.get("optimizer_format"), "world_size": ckpt.get("world_size"),
        "nccl_version_line": next((x.strip() for x in lines + lines2 if "NCCL version" in x), None),
        "seconds": round(time.monotonic() - started, 1),
    }
    if figures["steps"] != list(range(1, last_step + 1)):
        raise StepFailed(f"metrics.jsonl steps {figures['steps']}, expected 1..{last_step}")
    if not all(_finite(x) for x in losses) or not figures["val_loss"]:
        raise StepFailed(f"losses {losses}, val losses {figures['val_loss']}: not all finite, or no evaluation")
    if figures["optimizer_format"] != want_format:
        # "fqn" is what an FSDP-sharded run saves: anything else means the model was not sharded/wrapped
        raise StepFailed(f"checkpoint optimizer_format {figures['optimizer_format']!r}, expected {want_format!r}")
    if not any(f"world 1 x {c.device}" in x for x in lines):
        raise StepFailed(f"no 'world 1 x {c.device}' line: the run did not train on {c.device}")
    return figures


def step_train(c: Check) -> dict[str, Any]:
    """benchmarks/train.py with the biggest micro-batch that fits, transformers beside it."""
    path = c.out / "train_bench.json"
    if c.dry:
        # float32 here: the compile tests compiled this exact graph, so the dry run finds it in the cache
        size = [*TINY_FLAGS[:-2], "--dtype", "float32", "--batch-search", "2,1", "--steps", "1", "--warmup", "1",
                "--rounds", "1"]
    else:
        size = ["--preset", "gpt2-124m", "--dtype", "bfloat16", "--batch-search", "64,32,16,8", "--steps", "5",
                "--warmup", "3", "--rounds", "3"]
    rc, lines = c.run("train", [c.python, "benchmarks/train.py", *size, "--compile", "--device", c.device,
                                "--json", str(path)], c.budget("train"))
    report = json.loads(path.read_text()) if path.is_file() else {}
    figures = {
        "batch_size": report.get("batch_size"), "batch_search": report.get("batch_search"),
        "block_size": report.get("block_size"), "dtype": report.get("dtype"),
        "tokens_per_s": report.get("models", {}).get("gpt2kit", {}).get("tokens_per_s"),
        "mfu": report.get("mfu"), "peak_source": report.get("peak_source"),
        "transformers_tokens_per_s": report.get("models", {}).get("transformers", {}).get("tokens_per_s"),
        "transformers_batch_size": report.get("transformers_batch_size"),
        "ratio_vs_transformers": report.get("ratio_vs_transformers"),
        "loop_tokens_per_s": report.get("loop", {}).get("tokens_per_s"), "loop_mfu": report.get("loop", {}).get("mfu"),
    }
    c.partial = figures  # kept when the step fails after the JSON was written
    _need(rc, lines, "benchmarks/train.py")
    if not _finite(figures["tokens_per_s"]) or not _finite(figures["ratio_vs_transformers"]):
        raise StepFailed(f"benchmarks/train.py wrote no tokens/s or transformers ratio: {figures}")
    if not c.dry and not _finite(figures["mfu"]):
        raise StepFailed(f"no MFU: {figures['peak_source']} (add the GPU to gpt2kit/train/metrics.py GPU_PEAK_FLOPS)")
    if "loop" not in report:
        raise StepFailed("the run of gpt2kit's training loop reported nothing")
    return figures


def step_generate(c: Check) -> dict[str, Any]:
    """benchmarks/generate.py at batch 1 and 16 in bf16, transformers beside it."""
    path = c.out / "generate_bench.json"
    if c.dry:
        size = ["--preset", "tiny", "--batch-sizes", "1,2", "--prompt-tokens", "4", "--new-tokens", "4",
                "--repeats", "1"]
    else:
        size = ["--preset", "gpt2", "--batch-sizes", "1,16", "--prompt-tokens", "16", "--new-tokens", "128",
                "--repeats", "3"]
    rc, lines = c.run("generate", [c.python, "benchmarks/generate.py", *size, "--dtypes", "bfloat16", "--device",
                                   c.device, "--json", str(path)], c.budget("generate"))
    report = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    figures: dict[str, Any] = {"copy_bandwidth_gbs": report.get("copy_bandwidth_gbs")}
    for r in report["runs"]:
        b = r["batch_size"]
        figures[f"b{b}_tokens_per_s"] = r["gpt2kit_tokens_per_s"]
        figures[f"b{b}_transformers_tokens_per_s"] = r["transformers_tokens_per_s"]
        figures[f"b{b}_ratio_vs_transformers"] = r["ratio_vs_transformers"]
    figures["b1_weights_gbs"] = next((r["weights_gbs"] for r in report["runs"] if r["batch_size"] == 1), None)
    c.partial = figures
    _need(rc, lines, "benchmarks/generate.py")
    if len(report["runs"]) != 2 or not all(_finite(r["ratio_vs_transformers"]) for r in report["runs"]):
        raise StepFailed(f"benchmarks/generate.py did not measure both batch sizes against transformers: {figures}")
    return figures


def step_demo(c: Check) -> dict[str, Any]:
    """The demo-cpu preset trained for DEMO_TRAIN_S on the device (SIGTERM then), then its validation loss."""
    run_dir = c.out / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    train_s = 3.0 if c.dry else DEMO_TRAIN_S
    deadline = time.monotonic() + c.budget("demo")
    timers: list[threading.Timer] = []

    def on_line(line: str, proc: subprocess.Popen) -> None:
        # the loop's start line: from here it trains, and its SIGTERM handler is installed
        if not timers and f" x {c.device}" in line and line.startswith("world "):
            timers.append(threading.Timer(train_s, lambda: proc.poll() is None and proc.send_signal(signal.SIGTERM)))
            timers[0].daemon = True
            timers[0].start()

    dtype = ["--dtype", "float32"] if c.dry else []  # see _torchrun_step
    rc, lines = c.run("demo", [c.python, "-m", "gpt2kit", "train", "--preset", "demo-cpu", "--data", str(c.data),
                               "--out", str(run_dir), "--device", c.device, *dtype, "--no-progress",
                               "--no-tensorboard"],
                      deadline - time.monotonic(), on_line=on_line)
    for t in timers:
        t.cancel()  # it finished the schedule first
    _need(rc, lines, "gpt2kit train --preset demo-cpu")
    records = _metrics(run_dir)
    last = records[-1] if records else {}
    figures: dict[str, Any] = {
        "steps": last.get("step"), "train_seconds": last.get("time_s"), "train_loss": last.get("loss"),
        "tokens_per_s": last.get("tokens_per_s"), "stopped_by_sigterm": any("received SIGTERM" in x for x in lines),
        "val_loss_curve": [[r["step"], r["val_loss"]] for r in records if r.get("val_loss") is not None],
    }
    if last.get("val_loss") is not None:
        figures["val_loss"] = last["val_loss"]  # it finished the schedule within the time: its final evaluation
    else:
        from gpt2kit.checkpoint import list_step_checkpoints

        ckpt = list_step_checkpoints(run_dir)[-1]  # the checkpoint SIGTERM saved (the run dir's best may be older)
        result = c.out / "demo_eval_loss.json"
        rc, ev = c.run("demo", [c.python, "-m", "gpt2kit", "eval", "loss", "--checkpoint", str(ckpt), "--data",
                                str(c.data), "--split", "val", "--device", c.device, "--out", str(result),
                                *(["--limit", "2"] if c.dry else [])],
                       max(1.0, deadline - time.monotonic()))
        _need(rc, ev, "gpt2kit eval loss")
        figures["val_loss"] = json.loads(result.read_text())["loss"]
        figures["val_loss_checkpoint"] = str(ckpt)
    if not _finite(figures["val_loss"]) or not figures["steps"]:
        raise StepFailed(f"no finite validation loss after training: {figures}")
    return figures


def step_float16(c: Check) -> dict[str, Any]:
    """`gpt2kit train --dtype float16` (loss scaler), then a resume of that run."""
    from gpt2kit.checkpoint import list_step_checkpoints, read_checkpoint

    run_dir = c.out / "float16"
    shutil.rmtree(run_dir, ignore_errors=True)
    steps = (3, 5) if c.dry else (10, 15)
    base = [c.python, "-m", "gpt2kit", "train", "--preset", "demo-cpu", "--data", str(c.data), "--out", str(run_dir),
            *(TINY_FLAGS if c.dry else []), "--device", c.device, "--dtype", "float16", "--eval-every", "0",
            "--save-every", str(steps[0]), "--keep-last", "1", "--eval-batches", "2", "--samples", "0",
            "--log-every", "1", "--no-progress", "--no-tensorboard"]
    deadline = time.monotonic() + c.budget("float16")
    rc, lines = c.run("float16", [*base, "--max-steps", str(steps[0])], deadline - time.monotonic())
    _need(rc, lines, "gpt2kit train --dtype float16")
    rc, lines2 = c.run("float16", [*base, "--resume", "auto", "--max-steps", str(steps[1])],
                       max(1.0, deadline - time.monotonic()))
    _need(rc, lines2, "gpt2kit train --dtype float16 --resume auto")
    records = _metrics(run_dir)
    scaler = read_checkpoint(list_step_checkpoints(run_dir)[-1]).get("grad_scaler") or {}
    figures = {
        "steps": [r["step"] for r in records], "losses": [r.get("loss") for r in records],
        "loss_scale": [r.get("loss_scale") for r in records], "skipped_steps": records[-1].get("skipped_steps", 0)
        if records else None, "saved_scale": scaler.get("scale"),
        "tokens_per_s_last": records[-1].get("tokens_per_s") if records else None,
    }
    if figures["steps"] != list(range(1, steps[1] + 1)):
        raise StepFailed(f"metrics.jsonl steps {figures['steps']}, expected 1..{steps[1]}")
    if not all(_finite(x) for x in figures["losses"]) or not all(_finite(x) for x in figures["loss_scale"]):
        raise StepFailed(f"losses {figures['losses']}, loss scales {figures['loss_scale']}: not all finite")
    if not _finite(figures["saved_scale"]) or not any("float16 (loss scaling)" in x for x in lines):
        raise StepFailed(f"no loss scaler in the checkpoint ({scaler}) or no float16 header line")
    return figures


def step_oom(c: Check) -> dict[str, Any]:
    """A micro-batch larger than the GPU holds: the out-of-memory back-off splits it and the steps finish."""
    from gpt2kit.checkpoint import list_step_checkpoints, read_checkpoint

    run_dir = c.out / "oom"
    shutil.rmtree(run_dir, ignore_errors=True)
    # the dry run's micro-batch fits: it rehearses the flags and the figures, not the back-off
    B, T = (2, 16) if c.dry else (1024, 1024)
    size = [*TINY_FLAGS[:-2], "--dtype", "float32"] if c.dry else ["--preset", "gpt2", "--dtype", "bfloat16",
                                                                    "--no-compile", "--block-size", str(T)]
    rc, lines = c.run("oom", [c.python, "-m", "gpt2kit", "train", *size, "--data", str(c.data), "--out", str(run_dir),
                              "--device", c.device, "--batch-size", str(B), "--total-batch-tokens", str(B * T),
                              "--max-steps", "2", "--warmup-steps", "1", "--eval-every", "0", "--eval-batches", "1",
                              "--samples", "0", "--hellaswag-every", "0", "--log-every", "1", "--no-progress",
                              "--no-tensorboard"],
                      c.budget("oom"))
    _need(rc, lines, "gpt2kit train at a micro-batch that does not fit")
    records = _metrics(run_dir)
    ckpt = read_checkpoint(list_step_checkpoints(run_dir)[-1])
    backoffs = [x.strip() for x in lines if "redoing the step with micro-batch" in x]
    figures = {"micro_batch": B, "backoffs": backoffs, "grad_accum_steps": ckpt.get("grad_accum_steps"),
               "steps": [r["step"] for r in records], "losses": [r.get("loss") for r in records],
               "tokens_per_s_last": records[-1].get("tokens_per_s") if records else None}
    if figures["steps"] != [1, 2] or not all(_finite(x) for x in figures["losses"]):
        raise StepFailed(f"steps {figures['steps']}, losses {figures['losses']}: expected 2 finite steps")
    if not c.dry and (not backoffs or figures["grad_accum_steps"] < 2):
        raise StepFailed(f"micro-batch {B} x {T} fitted (no out-of-memory back-off): the check tested nothing")
    return figures


def step_autobatch(c: Check) -> dict[str, Any]:
    """`gpt2kit train --batch-size auto`: what the probe picked (it must divide the global batch) and the step time."""
    from gpt2kit.checkpoint import list_step_checkpoints, read_checkpoint

    run_dir = c.out / "autobatch"
    shutil.rmtree(run_dir, ignore_errors=True)
    T, sequences = (16, 4) if c.dry else (1024, 128)
    size = [*TINY_FLAGS[:-2], "--dtype", "float32"] if c.dry else ["--preset", "gpt2", "--dtype", "bfloat16",
                                                                    "--no-compile", "--block-size", str(T)]
    rc, lines = c.run("autobatch", [c.python, "-m", "gpt2kit", "train", *size, "--data", str(c.data), "--out",
                                    str(run_dir), "--device", c.device, "--batch-size", "auto", "--total-batch-tokens",
                                    str(sequences * T), "--max-steps", "3", "--warmup-steps", "1", "--eval-every", "0",
                                    "--eval-batches", "1", "--samples", "0", "--hellaswag-every", "0", "--log-every",
                                    "1", "--no-progress", "--no-tensorboard"],
                      c.budget("autobatch"))
    _need(rc, lines, "gpt2kit train --batch-size auto")
    records = _metrics(run_dir)
    ckpt = read_checkpoint(list_step_checkpoints(run_dir)[-1])
    chose = [x.strip() for x in lines if x.strip().startswith("--batch-size auto:")]
    times = [r.get("time_s") for r in records]
    figures = {"line": chose[0] if chose else None, "batch_size": ckpt.get("config", {}).get("batch_size"),
               "grad_accum_steps": ckpt.get("grad_accum_steps"), "steps": [r["step"] for r in records],
               "step_s_last": round(times[-1] - times[-2], 3) if len(times) >= 2 else None,
               "tokens_per_s_last": records[-1].get("tokens_per_s") if records else None}
    b, a = figures["batch_size"], figures["grad_accum_steps"]
    if len(chose) != 1 or not isinstance(b, int) or not isinstance(a, int) or b * a != sequences:
        raise StepFailed(f"--batch-size auto: no single choice line, or micro-batch x accumulation != {sequences}: "
                         f"{figures}")
    if figures["steps"] != [1, 2, 3]:
        raise StepFailed(f"steps {figures['steps']}: expected 1..3")
    return figures


STEPS: list[tuple[str, Callable[[Check], dict[str, Any]]]] = [
    ("tests", step_tests), ("prepare", step_prepare), ("ddp", lambda c: _torchrun_step(c, "ddp")),
    ("fsdp", lambda c: _torchrun_step(c, "fsdp")), ("train", step_train), ("generate", step_generate),
    ("demo", step_demo), ("float16", step_float16), ("oom", step_oom), ("autobatch", step_autobatch),
]
NEEDS_DATA = ("ddp", "fsdp", "demo", "float16", "oom", "autobatch")


def evaluate_targets(steps: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target beside its figure: met, not met, or not measured."""
    figures = {
        "train_mfu": steps.get("train", {}).get("mfu"),
        "train_vs_transformers": steps.get("train", {}).get("ratio_vs_transformers"),
        "generate_b1_vs_transformers": steps.get("generate", {}).get("b1_ratio_vs_transformers"),
    }
    out = {}
    for key, (goal, what) in TARGETS.items():
        value = figures[key]
        verdict = "not measured" if not _finite(value) else ("met" if value >= goal else "not met")
        out[key] = {"what": what, "target": goal, "value": value, "verdict": verdict}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the steps, write OUT/gpu_check.json after each, print the figures beside the targets."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("GPU_OUT", "gpu-results"), help="results folder (GPU_OUT)")
    ap.add_argument("--dry-run", action="store_true",
                    help="every step on the CPU at tiny sizes (also when GPT2KIT_TEST_DEVICE=cpu)")
    ap.add_argument("--steps", default=",".join(name for name, _ in STEPS),
                    help="comma-separated subset of: " + ", ".join(name for name, _ in STEPS))
    ap.add_argument("--python", default=sys.executable, help="interpreter for the steps (default: this one)")
    args = ap.parse_args(argv)
    dry = args.dry_run or os.environ.get("GPT2KIT_TEST_DEVICE", "").lower() == "cpu"
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in dict(STEPS)]
    if unknown:
        print(f"error: --steps {','.join(unknown)}: unknown; choose from {', '.join(n for n, _ in STEPS)}",
              file=sys.stderr)
        return 2
    if not dry and not torch.cuda.is_available():
        print(f"error: {args.python} has torch {torch.__version__} without a usable CUDA device; run this on a "
              "GPU machine (make gpu-check GPU_PYTHON=python3), or --dry-run to rehearse every step on the CPU",
              file=sys.stderr)
        return 2
    c = Check(Path(args.out), dry, args.python)
    c.say(f"gpu-check ({c.results['mode']}) on {c.results['device']}, torch {torch.__version__}, "
          f"results in {c.out / 'gpu_check.json'}")
    if any(s in wanted for s in NEEDS_DATA) and not (c.data / "manifest.json").is_file():
        wanted.append("prepare")  # the training steps need the corpus
    failed = False
    for name, fn in STEPS:
        if name not in wanted:
            continue
        c.partial = {}  # a failing step leaves what it measured here
        started = time.monotonic()
        c.say(f"--- {name} (budget {c.budget(name):.0f} s)")
        try:
            figures, status, error = fn(c), "ok", None
        except StepFailed as e:
            figures, status, error = c.partial, "failed", str(e)
        except Exception as e:  # a bug in this script or a crash in-process: keep going with the next step
            figures, status, error = c.partial, "error", f"{type(e).__name__}: {e}"
        seconds = round(time.monotonic() - started, 1)
        c.results["steps"][name] = {"status": status, "seconds": seconds, **figures,
                                    **({"error": error} if error else {})}
        c.results["targets"] = evaluate_targets(c.results["steps"])
        c.save()
        c.say(f"{name}: {status} in {seconds} s: " + json.dumps(figures, default=str)[:400])
        if error:
            c.say(f"{name}: {error}")
            failed = True
    c.results["seconds"] = round(time.monotonic() - c.t0, 1)
    c.save()
    c.say("--- summary")
    for name, r in c.results["steps"].items():
        c.say(f"{name:9s} {r['status']:7s} {r['seconds']:6.1f} s")
    for t in c.results["targets"].values():
        value = t["value"]
        shown = "-" if not _finite(value) else (f"{value:.1%}" if t["target"] < 1 else f"{value:.2f}x")
        goal = f">= {t['target']:.0%}" if t["target"] < 1 else f">= {t['target']}x"
        c.say(f"target {t['what']}: {shown} ({goal}): {t['verdict']}" + (" (dry run: CPU, tiny model)" if dry else ""))
    c.say(f"done in {c.results['seconds']} s; figures in {c.out / 'gpu_check.json'}, log in {c.out / 'gpu_check.log'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
