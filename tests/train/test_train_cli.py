"""``gpt2kit train``/``plot`` end to end: a 3-step run, SIGTERM, bad input, and two gloo ranks under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from train_settings import TINY_FLAGS, losses

from gpt2kit.cli import main

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_three_step_run_then_plot_and_load(data_dir, tmp_path, capsys):
    from gpt2kit.checkpoint import load_model

    run = tmp_path / "run"
    rc = main(["train", "--preset", "demo-cpu", "--data", str(data_dir), "--out", str(run), "--max-steps", "3",
               *TINY_FLAGS, "--export-hf"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "done: step 3" in out and "val loss" in out and "val bpb" in out
    assert "MFU vs measured CPU float32 matmul peak" in out
    recs = _metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    for key in ("step", "loss", "lr", "tokens_per_s", "grad_norm", "mfu"):
        assert key in recs[0]
    assert "val_loss" in recs[-1]
    cfg = json.loads((run / "train_config.json").read_text())
    assert cfg["preset"] == "demo-cpu" and cfg["n_layer"] == 2 and cfg["max_steps"] == 3
    loaded = load_model(run)
    assert loaded.config.n_layer == 2 and loaded.checkpoint["step"] == 3
    assert load_model(run / "hf-final").config.n_embd == 32  # --export-hf wrote a Hugging Face directory
    assert main(["plot", str(run)]) == 0
    assert (run / "loss.png").stat().st_size > 1000 and (run / "lr.png").stat().st_size > 1000


def test_print_config_shows_preset_with_overrides(capsys):
    assert main(["train", "--preset", "gpt2-124m", "--out", "x", "--lr", "3e-4", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["lr"] == 3e-4 and cfg["total_batch_tokens"] == 524288 and cfg["warmup_steps"] == 715
    assert cfg["schedule_steps"] == 19073 and cfg["padded_vocab_size"] == 50304 and cfg["dtype"] == "bfloat16"
    assert cfg["compile"] is True and (cfg["beta1"], cfg["beta2"], cfg["eps"]) == (0.9, 0.95, 1e-8)


def test_required_flags_exist():
    from gpt2kit.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--preset", "--data", "--out", "--max-steps", "--resume", "--seed", "--device", "--dtype",
                 "--compile", "--no-compile", "--n-layer", "--n-head", "--n-embd", "--block-size", "--batch-size",
                 "--total-batch-tokens", "--lr", "--log-every", "--eval-every", "--save-every", "--schedule-steps"):
        assert flag in text, flag


@pytest.mark.parametrize("extra, message", [
    (["--total-batch-tokens", "1000"], "--total-batch-tokens 1000 is not divisible by batch_size"),
    (["--n-embd", "33"], "--n-embd (33) must be divisible by --n-head (2)"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--warmup-steps", "100"], "--warmup-steps (100) must be <= --schedule-steps (50)"),
    (["--resume", "/nonexistent/ckpt.pt"], "--resume /nonexistent/ckpt.pt: no such checkpoint"),
    (["--optimizer", "muon", "--parallel", "fsdp"], "FSDP shards them — use --parallel ddp or --optimizer adamw"),
    (["--lr-schedule", "wsd", "--decay-fraction", "1.5"], "--decay-fraction must be in (0, 1]"),
])
def test_bad_settings_are_one_line_errors(data_dir, tmp_path, capsys, extra, message):
    rc = main(["train", "--preset", "demo-cpu", "--data", str(data_dir), "--out", str(tmp_path / "r"),
               "--max-steps", "2", *TINY_FLAGS, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_is_named_and_no_preset_means_the_defaults(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "--data: required" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r"), "--n-layer", "6", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["preset"] is None and cfg["n_layer"] == 6 and cfg["n_embd"] == 768
    assert main(["train", "--preset", "demo-cpu", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "no")]) == 2
    assert "no such data directory" in capsys.readouterr().err


def _cli(*args):
    return [sys.executable, "-m", "gpt2kit", *args]


def test_sigterm_saves_and_exits_zero_then_resumes(data_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "demo-cpu", "--data", str(data_dir), "--out", str(run), *TINY_FLAGS,
            "--schedule-steps", "5000", "--max-steps", "5000", "--save-every", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not (
            (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "received SIGTERM" in out and "interrupted at step" in out
    from gpt2kit.checkpoint import list_step_checkpoints, read_checkpoint

    ckpts = list_step_checkpoints(run)
    assert len(ckpts) == 1
    step = read_checkpoint(ckpts[0])["step"]
    assert 3 <= step < 5000 and _metrics(run)[-1]["step"] == step
    # continue with the saved settings and a nearer stop
    assert main(["train", "--out", str(run), "--resume", "auto", "--max-steps", str(step + 2)]) == 0
    assert [r["step"] for r in _metrics(run)][-3:] == [step, step + 1, step + 2]


@pytest.mark.parametrize("parallel, optimizer", [("ddp", "adamw"), ("fsdp", "adamw"), ("ddp", "muon")])
def test_two_gloo_ranks_follow_the_single_process_trajectory(data_dir, tmp_path, parallel, optimizer):
    # one process: micro-batch 4 with 2 accumulation steps; two ranks: micro-batch 4 each, no accumulation
    common = ["train", "--preset", "demo-cpu", "--data", str(data_dir), *TINY_FLAGS, "--max-steps", "4",
              "--total-batch-tokens", "256", "--eval-every", "2", "--save-every", "2", "--optimizer", optimizer]
    single = tmp_path / "single"
    assert main([*common, "--out", str(single)]) == 0
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gpt2kit",
           *common, "--out", str(ddp), "--parallel", parallel, "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2 x cpu | grad accum 1" in proc.stdout
    a, b = _metrics(single), _metrics(ddp)
    # Muon orthogonalizes in bfloat16 where the CPU has it natively, which magnifies the last-bit differences between
    # summing gradients over micro-steps and all-reducing them over ranks; AdamW's update does not
    tol = dict(abs=1e-5) if optimizer == "adamw" else dict(rel=1e-4)
    assert losses(b) == pytest.approx(losses(a), **tol)
    assert losses(b, "val_loss") == pytest.approx(losses(a, "val_loss"), **tol)
    assert len(losses(a)) == 4
    from gpt2kit.checkpoint import list_step_checkpoints, read_checkpoint

    ckpt = read_checkpoint(list_step_checkpoints(ddp)[-1])
    assert ckpt["optimizer_format"] == ("fqn" if parallel == "fsdp" else "index") and ckpt["world_size"] == 2
    # resuming the two-rank run continues it
    proc = subprocess.run([*cmd[:-6], "--out", str(ddp), "--parallel", parallel, "--device", "cpu",
                           "--resume", "auto", "--max-steps", "5"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in _metrics(ddp)] == [1, 2, 3, 4, 5]
