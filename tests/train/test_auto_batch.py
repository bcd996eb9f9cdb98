"""``--batch-size auto``: the flag's type, the memory budget per device (fakes on CPU), the candidates and the
choice, a probe that leaves weights and random streams alone, and runs that follow the hand-picked micro-batch."""

from __future__ import annotations

import argparse
import json
import types

import pytest
import torch
from train_settings import TINY_FLAGS, losses

from gpt2kit.cli.flags import integer_or
from gpt2kit.device import memory_budget, peak_memory_meter
from gpt2kit.train.autobatch import SAFETY, auto_batch_size, candidates, choose, estimate_bytes, measured_bytes
from gpt2kit.train.config import RunSettings, RuntimeSettings

GiB = 2**30


def test_flag_takes_a_positive_integer_or_auto():
    parse = integer_or("auto")
    assert parse("auto") == "auto" and parse("AUTO") == "auto" and parse("8") == 8
    for bad in ("big", "0", "-2", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a positive integer or 'auto'"):
            parse(bad)
    assert RuntimeSettings(batch_size="auto").batch_size == "auto"
    with pytest.raises(ValueError, match="--batch-size must be a positive integer or 'auto', got 'big'"):
        RuntimeSettings(batch_size="big")


def test_bad_batch_size_on_the_command_line_is_one_line(capsys):
    from gpt2kit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--out", "x", "--batch-size", "big", "--print-config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "--batch-size: 'big' is not a positive integer or 'auto'" in err[-1]
    assert main(["train", "--out", "x", "--batch-size", "auto", "--print-config"]) == 0
    assert '"batch_size": "auto"' in capsys.readouterr().out


def test_cpu_memory_budget_is_half_the_available_host_memory(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *a, **kw):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       33554432 kB\nMemAvailable:    8388608 kB\n")
    monkeypatch.setattr(builtins, "__import__", no_psutil)  # /proc/meminfo's figure (psutil's where installed)
    limit, why = memory_budget("cpu", meminfo=str(meminfo))
    assert limit == 4 * GiB and "50% of the host's 8.0 GiB available memory" in why
    assert memory_budget("cpu", meminfo=str(tmp_path / "none"))[0] == 2 * GiB  # unknown: 4 GiB assumed
    assert peak_memory_meter("cpu") is None  # no peak counter: the formula decides


def test_candidates_divide_the_global_batch_and_choose_keeps_the_margin():
    assert candidates(8 * 32, 32, 1) == [1, 2, 4, 8]
    assert candidates(12 * 32, 32, 1) == [1, 2, 3, 4, 6, 12]
    assert candidates(8 * 32, 32, 2) == [1, 2, 4]
    assert candidates(None, 32, 1)[-1] == 512
    assert choose([1, 2, 4, 8], lambda b: b * 10, budget=100) == (8, 80)
    assert choose([1, 2, 4, 8], lambda b: b * 30, budget=100) == (2, 60)  # 120 > 85% of 100
    assert choose([1, 2, 4, 8], lambda b: None if b > 2 else b, budget=100) == (2, 2)  # OOM at 4 stops the probe
    assert choose([1, 2], lambda b: 10**9, budget=100) == (1, None)
    # the formula grows with the micro-batch and counts 16 bytes a parameter before any activation
    assert estimate_bytes(10, 1, 8, 1, 4, 16, 0) == 160
    assert estimate_bytes(10, 1, 8, 1, 4, 16, 2) > estimate_bytes(10, 1, 8, 1, 4, 16, 1)


def test_measured_probe_leaves_weights_rng_and_gradients_alone():
    from gpt2kit.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64, dropout=0.1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bytes_at = measured_bytes(model, 8, torch.device("cpu"), None, peak=lambda: 123)
    assert bytes_at(2) == 123  # a real forward/backward (its dropout draws; auto_batch_size restores the streams)
    assert all(p.grad is None for p in model.parameters())
    rng = torch.get_rng_state()
    cfg = types.SimpleNamespace(model=model.config, cadence=types.SimpleNamespace(total_batch_tokens=4 * 8))
    b, line = auto_batch_size(model, cfg, 1, torch.device("cpu"), None, budget=(1000, "a fake budget"),
                              peak=lambda: 50 * 2 + 700)  # 800 <= 850: every candidate fits
    assert b == 4 and line.startswith("--batch-size auto: 4 (x 1 accumulation") and "measured peak" in line
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def _budget_picking(b_fit, b_over, tiny_model):
    """A fake memory budget under which the formula fits ``b_fit`` sequences but not ``b_over``."""
    lo = estimate_bytes(*tiny_model, b_fit)
    hi = estimate_bytes(*tiny_model, b_over)
    return int((lo + hi) / 2 / SAFETY)


@pytest.mark.slow
def test_auto_run_matches_hand_picked_and_resume_keeps_the_size(tiny_cfg, tmp_path, monkeypatch, capsys):
    from gpt2kit.checkpoint import read_checkpoint
    from gpt2kit.cli import main
    from gpt2kit.model import GPT
    from gpt2kit.train import autobatch
    from gpt2kit.train.pretrain import run_pretraining

    common = dict(total_batch_tokens=8 * 32, max_steps=4, save_every=2)
    hand = run_pretraining(tiny_cfg(out=str(tmp_path / "hand"), batch_size=4, **common))
    capsys.readouterr()
    n = GPT(tiny_cfg(batch_size=4).model).num_params()
    budget = _budget_picking(4, 8, (n, 2, 32, 2, 32, 50304))
    monkeypatch.setattr(autobatch, "memory_budget", lambda device_type: (budget, "a fake budget"))
    auto = run_pretraining(tiny_cfg(out=str(tmp_path / "auto"), batch_size="auto", **common))
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.startswith("--batch-size auto:")]
    assert len(line) == 1 and line[0].startswith("--batch-size auto: 4 (x 2 accumulation = --total-batch-tokens 256")
    assert "a fake budget" in line[0] and "estimated" in line[0]
    assert losses(auto.metrics) == losses(hand.metrics)  # bitwise: the probe changed nothing
    saved = read_checkpoint(auto.checkpoint)
    assert saved["config"]["batch_size"] == 4 and saved["grad_accum_steps"] == 2
    assert json.loads((tmp_path / "auto" / "train_config.json").read_text())["batch_size"] == 4
    # resuming (with a budget that would now pick 8) continues at the recorded 4, and prints no probe line
    monkeypatch.setattr(autobatch, "memory_budget", lambda device_type: (10**12, "a huge budget"))
    assert main(["train", "--out", str(tmp_path / "auto"), "--resume", "auto", "--max-steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "--batch-size auto" not in out and "4 x 32 x 2 accum" in out


@pytest.mark.slow
def test_cli_auto_prints_the_choice(data_dir, tmp_path, monkeypatch, capsys):
    from gpt2kit.cli import main
    from gpt2kit.train import autobatch

    monkeypatch.setattr(autobatch, "memory_budget", lambda device_type: (10**12, "a huge budget"))
    flags = list(TINY_FLAGS)
    flags[flags.index("--batch-size") + 1] = "auto"
    assert main(["train", "--preset", "demo-cpu", "--data", str(data_dir), "--out", str(tmp_path / "r"),
                 "--max-steps", "1", "--total-batch-tokens", "256", *flags]) == 0
    assert "--batch-size auto: 8 (x 1 accumulation = --total-batch-tokens 256" in capsys.readouterr().out


def test_finetune_refuses_auto_with_one_line():
    from gpt2kit.finetune.config import SFTConfig
    from gpt2kit.settings import replace_flat

    cfg = SFTConfig(run=RunSettings(out="x"))
    with pytest.raises(ValueError, match="--batch-size auto: gpt2kit train only"):
        replace_flat(cfg, batch_size="auto")
    assert replace_flat(cfg, batch_size=3).runtime.batch_size == 3
