"""`gpt2kit finetune` on the shared training loop: killed anywhere, it resumes bitwise; bad data is one line.

Instruction tuning with LoRA adapters (the most state a fine-tune carries: adapters, frozen base,
template, packed data order) is killed at seeded random moments and inside a checkpoint write, then
continued with the same command (``--resume auto``); the end state must be the uninterrupted run's.
"""

from __future__ import annotations

import json
import random
import re
import signal
from pathlib import Path

import pytest
import torch
from reliability_harness import HOOKS, SEED, check_after_kill, final_state

from gpt2kit.checkpoint import save_checkpoint
from gpt2kit.cli import main
from gpt2kit.model import GPT, GPTConfig

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

KILLS = 4
WORDS = "the cat dog sat ran over under big small red blue house tree river stone".split()


def alpaca(n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        w = r.choice(WORDS)
        out.append({"instruction": "Repeat the word.", "input": w, "output": w} if i % 2 else
                   {"instruction": f"Say {w}.", "output": w})
    return out


@pytest.fixture(scope="module")
def ft(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ft")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny"))
    save_checkpoint(d / "base.pt", {"model_config": model.config.to_dict(), "model": model.state_dict()})
    for name, n, seed in (("train.jsonl", 48, 1), ("val.jsonl", 8, 2)):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in alpaca(n, seed)))
    return d


def sft_argv(ft: Path, run: Path, *extra) -> list:
    return ["finetune", "sft", "--checkpoint", ft / "base.pt", "--train", ft / "train.jsonl", "--val",
            ft / "val.jsonl", "--out", run, "--resume", "auto", "--batch-size", "8", "--lr", "3e-3",
            "--max-length", "64", "--epochs", "1", "--evals-per-epoch", "3", "--lora-rank", "2", "--keep-last", "2",
            "--samples", "1", "--sample-tokens", "4", "--log-every", "1", "--no-progress", "--no-tensorboard",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def reference(forkserver, ft, tmp_path_factory) -> tuple[dict, float]:
    run = tmp_path_factory.mktemp("ft-ref") / "run"
    r = forkserver.run(sft_argv(ft, run), hooks=HOOKS)
    assert r.returncode == 0, r.log
    state = final_state(run)
    assert any("lora_B" in k for k in state["final checkpoint"]["model"]), "the run must train LoRA adapters"
    state["results.json"] = json.loads((run / "results.json").read_text())["val_loss"]
    return state, r.seconds


def assert_same(run: Path, ref: dict, context: str) -> None:
    got = final_state(run)
    got["results.json"] = json.loads((run / "results.json").read_text())["val_loss"]
    for key in ref:
        assert got[key] == ref[key], f"{context}: {key} differs from the uninterrupted run (seed {SEED})"


def test_sft_killed_at_random_points_resumes_bitwise(forkserver, ft, reference, rng, tmp_path):
    ref, seconds = reference
    chain, run = 0, tmp_path / "run0"
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts < 5 * KILLS, f"(seed {SEED}) could not kill a run {KILLS} times"
        r = forkserver.run(sft_argv(ft, run), hooks=HOOKS, signal_after=rng.uniform(0.05, 1.0) * seconds)
        if not r.signalled:
            assert r.returncode == 0, r.log
            assert_same(run, ref, f"chain {chain} finished between kills")
            chain += 1
            run = tmp_path / f"run{chain}"
            continue
        assert r.returncode == -signal.SIGKILL, r.log
        kills += 1
        check_after_kill(run)
    r = forkserver.run(sft_argv(ft, run), hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert_same(run, ref, f"after {KILLS} kills")


def test_sft_killed_while_writing_a_checkpoint_resumes_bitwise(forkserver, ft, reference, tmp_path):
    ref, _ = reference
    run = tmp_path / "run"
    hook = {"kill_in_save": {"match": "step_", "nth": 2, "fraction": 0.5}}
    r = forkserver.run(sft_argv(ft, run), hooks={**HOOKS, **hook})
    assert r.returncode == -signal.SIGKILL, f"the hook did not fire: {r.log}"
    assert check_after_kill(run) == 1  # the half-written file is only a temporary one
    r = forkserver.run(sft_argv(ft, run), hooks=HOOKS)
    assert r.returncode == 0, r.log
    assert_same(run, ref, "killed while writing the second checkpoint")


BAD_SFT_DATA = {
    "invalid JSON line": (b'{"instruction": "a", "output": "b"}\n{"instruction": \n', r"train\.jsonl:2"),
    "non-UTF-8 bytes": (b'{"instruction": "caf\xe9", "output": "b"}\n', r"train\.jsonl(:1)?: .*UTF-8"),
    "output is a number": (b'{"instruction": "a", "output": 5}\n', r"train\.jsonl:1: .*output"),
    "a list, not a record": (b'["instruction", "output"]\n', r"train\.jsonl:1"),
    "empty file": (b"", r"train\.jsonl"),
    "huge key, no output": (b'{"instruction": "a", "' + b"k" * 2_000_000 + b'": 1}\n', r"train\.jsonl:1"),
}


@pytest.mark.parametrize("case", list(BAD_SFT_DATA))
def test_bad_instruction_data_is_one_clear_error(ft, tmp_path, capsys, case):
    content, pattern = BAD_SFT_DATA[case]
    data = tmp_path / "train.jsonl"
    data.write_bytes(content)
    argv = [str(a) for a in sft_argv(ft, tmp_path / "run")]
    argv[argv.index("--train") + 1] = str(data)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err[:2000]
    assert len(lines[0]) < 1000, f"an error line of {len(lines[0])} characters"
    assert re.search(pattern, lines[0]), lines[0]
