"""``--quantize int8`` on sample, chat, serve and eval: the one line it prints, and unknown schemes refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from gpt2kit.checkpoint import model_state_dict, save_checkpoint
from gpt2kit.cli import build_parser, main
from gpt2kit.model import GPT

QUANTIZED = "quantized to int8: weights "


@pytest.fixture
def ckpt(tmp_path, tiny_config):
    """A tiny gpt2kit checkpoint file."""
    torch.manual_seed(0)
    model = GPT(tiny_config)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, {"model_config": tiny_config.to_dict(), "model": model_state_dict(model), "step": 1})
    return path


def test_sample_int8_says_what_it_did(ckpt, capsys):
    assert main(["sample", "--checkpoint", str(ckpt), "--prompt", "Hello", "--max-new-tokens", "5",
                 "--temperature", "0", "--no-stop", "--device", "cpu", "--quantize", "int8"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Hello")
    line = next(ln for ln in out.err.splitlines() if QUANTIZED in ln)
    assert line.startswith("sample: quantized to int8: weights ") and line.endswith(" MB")


def test_eval_loss_int8_close_to_float32(ckpt, tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text("Call me Ishmael. Some years ago, never mind how long precisely, I went to sea. " * 4)
    argv = ["eval", "loss", "--checkpoint", str(ckpt), "--data", str(text), "--device", "cpu", "--json",
            "--out", str(tmp_path / "r.json")]
    assert main(argv) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main(argv + ["--quantize", "int8"]) == 0
    out = capsys.readouterr()
    rec = json.loads(out.out)
    assert "eval: quantized to int8" in out.err
    assert rec["settings"]["quantize"] == "int8" and ref["settings"]["quantize"] is None
    assert rec["model"]["params"] == ref["model"]["params"]
    assert rec["loss"] == pytest.approx(ref["loss"], rel=0.01)


@pytest.mark.parametrize("command", [["sample"], ["chat"], ["serve"], ["eval", "loss", "--data", "x"]])
def test_every_command_takes_the_flag_and_refuses_int4(command, capsys):
    parser = build_parser()
    args = parser.parse_args([*command, "--checkpoint", "c", "--quantize", "int8"])
    assert args.quantize == "int8"
    with pytest.raises(SystemExit) as e:
        main([*command, "--checkpoint", "c", "--quantize", "int4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--quantize" in err and "invalid choice: 'int4'" in err and "int8" in err


def test_chat_int8_reads_stdin(ckpt):
    r = subprocess.run([sys.executable, "-m", "gpt2kit", "chat", "--checkpoint", str(ckpt), "--device", "cpu",
                        "--quantize", "int8", "--max-new-tokens", "4", "--temperature", "0"],
                       input="Hello\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "chat: quantized to int8: weights " in r.stderr
