"""The sample and export commands end to end, through the real entry point."""

import subprocess
import sys

import pytest
import torch

from gpt2kit import generate, load_model
from gpt2kit.cli import main

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def _gpt2kit(*args):
    return subprocess.run([sys.executable, "-m", "gpt2kit", *args], capture_output=True, text=True, timeout=120)


def test_sample_streams_and_is_seeded(hf_tiny_dir, capsys):
    argv = ["sample", "--checkpoint", str(hf_tiny_dir), "--prompt", "Hello", "--max-new-tokens", "8",
            "--num-samples", "2", "--seed", "3", "--top-k", "20", "--no-stop"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.count("--- sample") == 2 and first.count("Hello") == 2
    assert main(argv) == 0
    assert capsys.readouterr().out == first


def test_sample_greedy_matches_library(hf_tiny_dir, capsys):
    from gpt2kit import get_tokenizer

    tok = get_tokenizer()
    assert main(["sample", "--checkpoint", str(hf_tiny_dir), "--prompt", "The sea", "--max-new-tokens", "6",
                 "--temperature", "0", "--no-stop"]) == 0
    out = capsys.readouterr().out
    model = load_model(str(hf_tiny_dir)).model
    ids = generate(model, torch.tensor([tok.encode("The sea")]), 6, temperature=0)[0].tolist()
    assert out == tok.decode(ids) + "\n"


def test_export_cli_round_trip(hf_tiny_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "exp"
    assert main(["export", "--checkpoint", str(hf_tiny_dir), "--out", str(out)]) == 0
    a = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Call me Ishmael. Some years ago—never mind how long precisely—having little money, 42 ✓."
    from gpt2kit import get_tokenizer

    assert hf_tok.encode(text) == get_tokenizer().encode(text)
    assert hf_tok.eos_token_id == 50256
    b = transformers.GPT2LMHeadModel.from_pretrained(hf_tiny_dir).eval()
    idx = torch.randint(0, 50257, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(a(idx).logits, b(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sample", "--checkpoint", "/no/such/dir.pt"], "no such checkpoint"),
        (["sample", "--checkpoint", "{tmp}", "--prompt", ""], "--prompt is empty"),
        (["sample", "--checkpoint", "{tmp}", "--top-p", "2"], "--top-p"),
        (["export", "--checkpoint", "{tmp}/missing_run", "--out", "{tmp}/o"], "no such checkpoint"),
    ],
)
def test_user_errors_are_one_line(args, needle, hf_tiny_dir, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) if a != "{tmp}" else str(hf_tiny_dir) for a in args]
    r = _gpt2kit(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_help_for_every_command():
    r = _gpt2kit("--help")
    assert r.returncode == 0 and "sample" in r.stdout and "export" in r.stdout
    for cmd in ("sample", "export"):
        r = _gpt2kit(cmd, "--help")
        assert r.returncode == 0 and "--checkpoint" in r.stdout
