"""The whole pipeline on a tiny model: every stage, the report, the run directory as a model, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2kit.cli import main

pytestmark = pytest.mark.slow

TINY = ("--n-layer 1 --n-head 2 --n-embd 32 --block-size 32 --batch-size 4 --eval-every 4 --eval-batches 2 "
        "--samples 0 --save-every 2 --no-progress")
SFT = "--batch-size 4 --no-progress --samples 0"


def _texts(tmp_path: Path) -> tuple[Path, Path]:
    text = tmp_path / "story.txt"
    words = "the whale swam over the grey sea while the sailors sang of home and of the long voyage".split()
    text.write_text("\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(60)).capitalize() + "."
                                for i in range(80)))
    sft = tmp_path / "chat.jsonl"
    with sft.open("w") as f:
        for i in range(24):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                                             {"role": "assistant", "content": f"{i} + 1 is {i + 1}."}]}) + "\n")
    return text, sft


def _argv(text: Path, sft: Path, run: Path, *extra: str) -> list[str]:
    return ["pipeline", str(text), "--out", str(run), "--pretrain-steps", "8", "--sft", str(sft), "--sft-epochs", "1",
            "--pretrain-args", TINY, "--sft-args", SFT, "--prepare-args", "--workers 1 --no-progress", *extra]


def _hellaswag(path: Path) -> Path:
    """Six rows in HellaSwag's own jsonl format."""
    with path.open("w") as f:
        for i in range(6):
            ctx = f"The sailors number {i} sang"
            row = {"ind": i, "activity_label": "Sailing", "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                   "endings": [" of home.", " a song.", " loudly.", " on the deck."], "source_id": f"t~{i}",
                   "split": "val", "split_type": "indomain", "label": i % 4}
            f.write(json.dumps(row) + "\n")
    return path


def test_pipeline_end_to_end(tmp_path, capsys):
    text, sft = _texts(tmp_path)
    run = tmp_path / "run"
    hs = _hellaswag(tmp_path / "hs.jsonl")
    assert main(_argv(text, sft, run, "--eval", f"hellaswag={hs}", "--export", "hf,gguf")) == 0
    out = capsys.readouterr().out
    for i, stage in enumerate(("tokenizer", "prepare", "pretrain", "sft", "eval", "export", "report"), 1):
        assert f"[{i}/7] {stage}" in out
    record = json.loads((run / "pipeline.json").read_text())
    assert record["final"] == "sft" and record["size"] == "cpu"
    assert all(record["stages"][s]["status"] == "done" for s in record["stages"])
    assert record["stages"]["pretrain"]["step"] == 8
    figures = record["stages"]["eval"]["figures"]
    assert figures["tuned"]["val"]["bits_per_byte"] > 0 and figures["pretrained"]["hellaswag"]["n"] == 6
    assert len(record["stages"]["eval"]["answers"]) == 3 and len(record["stages"]["eval"]["samples"]) == 3
    report = (run / "report.md").read_text()
    for part in ("## Hardware", "## Stages", "| pretrain | done |", "report/pretrain/loss.png",
                 "validation bits per byte", "hellaswag acc_norm (n=6)", "## Chat answers of the tuned model",
                 f"gpt2kit chat --checkpoint {run}"):
        assert part in report, part
    assert (run / "report" / "pretrain" / "loss.png").stat().st_size > 0
    assert (run / "export" / "hf" / "model.safetensors").exists() and (run / "export" / "model.gguf").exists()

    from gpt2kit.checkpoint import load_model

    loaded = load_model(run)  # the run directory is the tuned model
    assert "/sft/checkpoints/" in loaded.source and loaded.checkpoint["finetune"]["task"] == "sft"
    assert main(["sample", "--checkpoint", str(run), "--instruction", "What is 3 + 1?", "--max-new-tokens", "4"]) == 0

    # again: nothing is redone
    assert main(_argv(text, sft, run, "--eval", f"hellaswag={hs}", "--export", "hf,gguf")) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier") == 7 and "[3/7] pretrain: done earlier" in out
    # another --export redoes the export and the report only
    assert main(_argv(text, sft, run, "--eval", f"hellaswag={hs}", "--export", "hf")) == 0
    out = capsys.readouterr().out
    assert "export, report will run again" in out and "[5/7] eval: done earlier" in out and "[6/7] export\n" in out


def test_pipeline_with_a_trained_vocabulary(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    text, sft = _texts(tmp_path)
    run = tmp_path / "run"
    hs = _hellaswag(tmp_path / "hs.jsonl")
    argv = _argv(text, sft, run, "--tokenizer", "train", "--vocab-size", "300", "--eval", f"hellaswag={hs}",
                 "--export", "hf,gguf")
    # a 300-token vocabulary learned from the story spells the chat turns in short tokens: a longer context
    argv[argv.index(TINY)] = TINY.replace("--block-size 32", "--block-size 96")
    assert main(argv) == 0
    out = capsys.readouterr().out
    record = json.loads((run / "pipeline.json").read_text())
    tok_info = record["stages"]["tokenizer"]
    assert tok_info["vocab_size"] <= 300 and tok_info["tokenizer"].startswith("bpe-")
    assert f"tokenizer: {tok_info['tokenizer']}" in out and "vocabulary trained on SOURCE" in out
    assert json.loads((run / "data" / "manifest.json").read_text())["tokenizer"] == tok_info["tokenizer"]
    assert record["stages"]["pretrain"]["model"]["vocab_size"] == tok_info["vocab_size"]
    assert record["stages"]["eval"]["figures"]["tuned"]["val"]["bits_per_byte"] > 0
    assert record["stages"]["eval"]["figures"]["pretrained"]["hellaswag"]["n"] == 6
    assert f"- tokenizer: `{tok_info['tokenizer']}`" in (run / "report.md").read_text()

    from gpt2kit.checkpoint import load_model

    loaded = load_model(run)  # the tuned model carries the pipeline's tokenizer
    assert loaded.tokenizer.name == tok_info["tokenizer"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(run / "export" / "hf")
    assert hf_tok("What is 3 + 1?")["input_ids"] == loaded.tokenizer.encode("What is 3 + 1?")
    assert main(["sample", "--checkpoint", str(run), "--instruction", "What is 3 + 1?", "--max-new-tokens", "4"]) == 0


def test_killed_pipeline_resumes_in_the_stage_it_stopped(tmp_path):
    text, sft = _texts(tmp_path)
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "gpt2kit", *_argv(text, sft, run, "--export", "hf")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = run / "pretrain" / "checkpoints" / "step_00000002.pt"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((run / "pipeline.json").read_text())
    assert state["stages"]["prepare"]["status"] == "done" and state["stages"]["pretrain"]["status"] == "running"

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[2/7] prepare: done earlier" in done.stdout
    assert "resum" in done.stdout.lower()
    state = json.loads((run / "pipeline.json").read_text())
    assert state["stages"]["pretrain"]["attempts"] == 2 and state["stages"]["pretrain"]["step"] == 8
    assert all(s["status"] == "done" for s in state["stages"].values())
    steps = [json.loads(line)["step"] for line in (run / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8], steps  # continued from its checkpoint: each step logged once


def test_two_gloo_ranks_run_the_pipeline(tmp_path):
    text, sft = _texts(tmp_path)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gpt2kit",
           *_argv(text, sft, run, "--export", "hf", "--device", "cpu")]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "size cpu" in done.stdout and "on 2 x cpu" in done.stdout  # CPU ranks: the cpu size, not node
    assert done.stdout.count("[4/7] sft") == 1  # rank 0 speaks for both
    state = json.loads((run / "pipeline.json").read_text())
    assert all(s["status"] == "done" for s in state["stages"].values()) and state["final"] == "sft"
    assert (run / "report.md").exists() and (run / "export" / "hf" / "model.safetensors").exists()
