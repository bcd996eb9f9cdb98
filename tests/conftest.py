"""Shared fixtures: tiny models only, so the whole suite runs on a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The slow tier: whole training/fine-tuning runs, subprocesses, torchrun and the crash suite. `make test-fast`
# (pytest -m "not slow") runs the rest, the unit tests, for the edit-run loop; `make test` runs everything.
SLOW = (
    "reliability/", "train/test_train_loop.py", "train/test_train_cli.py", "eval/test_eval_cli.py",
    "eval/test_eval_distributed.py", "finetune/test_classify.py", "finetune/test_sft.py", "cli/",
    "data/test_data_cli.py",
)


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    for item in items:
        rel = Path(item.fspath).relative_to(root).as_posix()
        if any(rel.startswith(prefix) for prefix in SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def tiny_config():
    """A 2-layer, 32-dim GPT-2 config with the real vocabulary."""
    from gpt2kit import GPTConfig

    return GPTConfig.from_preset("tiny")


@pytest.fixture
def hf_tiny_dir(tmp_path):
    """A randomly initialised transformers GPT-2 (2 layers, 32 dims) saved as a Hugging Face directory."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path / "hf_tiny"
    model.save_pretrained(d)
    return d
