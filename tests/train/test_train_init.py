"""``gpt2kit train --init-from``, ``--epochs``, ``--export-hf``, ``--config`` and the run directory's lock."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_settings import TINY, TINY_FLAGS

from gpt2kit.checkpoint import load_model, model_state_dict
from gpt2kit.cli import main
from gpt2kit.data.loader import TokenLoader
from gpt2kit.train.pretrain import initial_model, resolve_train_config, run_pretraining


def _new_run(data, out, init_from, **flags):
    """A tiny new run's config starting from ``init_from``, one step, logged."""
    overrides = {**TINY, "data": str(data), "out": str(out), "init_from": str(init_from), "dropout": 0.0,
                 "max_steps": 1, **flags}
    cfg, point = resolve_train_config(None, overrides, log=lambda msg: None)
    assert point is None
    return cfg


def _first_batch_loss(model, cfg) -> float:
    """The source model's loss on the batch the run's first step trains on."""
    loader = TokenLoader(cfg.pretrain.data, "train", block_size=cfg.model.block_size,
                         micro_batch_size=cfg.runtime.batch_size,
                         grad_accum_steps=1, rank=0, world_size=1, seed=cfg.run.seed)
    x, y = loader.next_batch()
    with torch.no_grad():
        return float(model.eval()(x, y)[1])


def _step_zero_matches_source(cfg, source_spec, tmp_path):
    source = load_model(source_spec)
    sd, src = model_state_dict(initial_model(cfg)), model_state_dict(source.model)
    T = cfg.model.block_size
    for k, v in sd.items():
        want = src[k][:T] if k == "transformer.wpe.weight" else src[k]  # the position table cropped to T
        assert torch.equal(v, want), k
    expected = _first_batch_loss(source.model, cfg)
    result = run_pretraining(cfg, log=lambda msg: None)
    assert result.step == 1
    first = json.loads((tmp_path / cfg.run.out).joinpath("metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(expected, abs=1e-5)
    saved = json.loads((tmp_path / cfg.run.out).joinpath("train_config.json").read_text())
    assert saved["init_from"] == str(source_spec)


def test_init_from_a_hugging_face_dir_crops_block_size_and_starts_at_its_loss(hf_tiny_dir, data_dir, tmp_path):
    cfg = _new_run(data_dir, tmp_path / "run", hf_tiny_dir)  # the HF model has 64 positions; TINY asks for 32
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size) == (2, 32, 32)
    assert cfg.model.padded_vocab_size == 50257  # the source's embedding rows, not the pretraining padding
    _step_zero_matches_source(cfg, hf_tiny_dir, tmp_path)


def test_continue_pretraining_a_run_dir_on_new_text(tiny_cfg, data_dir, tmp_path):
    from gpt2kit.data.prepare import prepare

    first = tiny_cfg(max_steps=2, out=str(tmp_path / "first"))
    run_pretraining(first, log=lambda msg: None)
    new_text = tmp_path / "new.txt"
    new_text.write_text("Call me Ishmael. " * 400 + "The whale, the sea. " * 400)
    prepare([str(new_text)], tmp_path / "new", workers=1, progress=False)
    cfg = _new_run(tmp_path / "new", tmp_path / "second", tmp_path / "first")
    _step_zero_matches_source(cfg, tmp_path / "first", tmp_path)


@pytest.mark.slow  # a whole run or a transformers comparison
def test_epochs_set_the_schedule_and_export_hf_writes_final_and_best(tmp_path, capsys):
    from gpt2kit.data.builtin import builtin_text
    from gpt2kit.data.prepare import prepare

    transformers = pytest.importorskip("transformers")
    # a short text file, as a user's own (the 50k-vocab output layer makes every training token cost)
    (tmp_path / "mine.txt").write_text(builtin_text("moby-dick")[20_000:28_000])
    data_dir = tmp_path / "data"
    prepare([str(tmp_path / "mine.txt")], data_dir, workers=1, progress=False)
    run = tmp_path / "run"
    flags = [f for i, f in enumerate(TINY_FLAGS) if "--schedule-steps" not in TINY_FLAGS[max(0, i - 1):i + 1]]
    rc = main(["train", "--preset", "demo-cpu", "--data", str(data_dir), "--out", str(run), *flags,
               "--batch-size", "16", "--epochs", "2", "--eval-every", "0", "--export-hf"])
    assert rc == 0
    train_tokens = json.loads((data_dir / "manifest.json").read_text())["splits"]["train"]["tokens"]
    steps = math.ceil(2 * train_tokens / (16 * 32))
    assert f"-> {steps} steps" in capsys.readouterr().out
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == steps
    for name in ("hf-final", "hf-best"):
        model = transformers.GPT2LMHeadModel.from_pretrained(run / name)
        assert model.config.n_layer == 2
    assert not [p for p in run.iterdir() if p.name.startswith(".hf-")]  # no temporary directories left


def test_config_file_reads_back_print_config_and_flags_override_it(tmp_path, capsys):
    argv = ["train", "--preset", "demo-cpu", "--out", str(tmp_path / "run"), *TINY_FLAGS, "--print-config"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    (tmp_path / "cfg.json").write_text(printed)
    assert main(["train", "--config", str(tmp_path / "cfg.json"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(printed)
    assert main(["train", "--config", str(tmp_path / "cfg.json"), "--lr", "0.01", "--print-config"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["lr"] == 0.01 and again["n_embd"] == 32


def test_max_steps_without_a_schedule_is_the_schedule(tmp_path, capsys):
    assert main(["train", "--preset", "demo-cpu", "--out", str(tmp_path), "--max-steps", "150",
                 "--print-config"]) == 0
    out = capsys.readouterr()
    cfg = json.loads(out.out)  # JSON alone on stdout; what --max-steps did is said on stderr
    assert "--max-steps 150: the learning-rate schedule is 150 steps long" in out.err
    assert cfg["schedule_steps"] == 150 and cfg["max_steps"] == 150 and cfg["warmup_steps"] == 30


def test_resume_auto_on_an_empty_dir_says_it_starts_a_new_run(tmp_path, capsys):
    assert main(["train", "--preset", "demo-cpu", "--out", str(tmp_path / "runs" / "dmeo"), "--resume", "auto",
                 "--print-config"]) == 0
    out = capsys.readouterr()
    assert f"no checkpoint in {tmp_path / 'runs' / 'dmeo'}; starting a new run there" in out.err
    json.loads(out.out)  # stdout holds the config alone


def test_a_second_train_into_a_run_dir_in_use_is_refused_naming_the_holder(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom gpt2kit.io import dir_lock\n"
         f"with dir_lock({str(out)!r}, 'train'):\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    argv = ["train", "--preset", "demo-cpu", "--data", str(data_dir), "--out", str(out), *TINY_FLAGS,
            "--max-steps", "1"]
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(argv) == 2
        assert f"in use by `gpt2kit train` (PID {holder.pid})" in capsys.readouterr().err
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops a killed holder's lock
        holder.wait()
    assert main(argv) == 0


@pytest.mark.slow  # a whole run or a transformers comparison
def test_ctrl_c_says_at_once_that_it_stops_after_this_step(data_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "demo-cpu", "--data", str(data_dir), "--out", str(run), *TINY_FLAGS,
            "--schedule-steps", "5000", "--max-steps", "5000", "--save-every", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gpt2kit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(600):
            if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 2:
                break
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.index("stopping after this step (Ctrl-C again to abort)") < out.index("received SIGINT")
