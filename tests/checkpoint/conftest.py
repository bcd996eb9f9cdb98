"""Fixtures of the checkpoint package's unit tests: a model small enough that writing it takes milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from gpt2kit.checkpoint import model_state_dict, save_checkpoint, step_checkpoint_path
from gpt2kit.model import GPT, GPTConfig


@pytest.fixture
def small_model() -> GPT:
    """One 8-wide layer over a 64-token vocabulary (gpt2kit checkpoints take any vocabulary)."""
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=8)).eval()


@pytest.fixture
def write_step(small_model) -> Callable[..., Path]:
    """``write_step(run_dir, step, **extra)``: a trainer-like step checkpoint of ``small_model`` in ``run_dir``."""

    def write(run_dir: Path, step: int, **extra: Any) -> Path:
        path = step_checkpoint_path(run_dir, step)
        save_checkpoint(path, {"model_config": small_model.config.to_dict(), "model": model_state_dict(small_model),
                               "optimizer": {"state": {}, "param_groups": []}, "step": step, "config": {}, **extra})
        return path

    return write
