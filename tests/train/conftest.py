"""Fixtures for the training tests: one small prepared data directory and tiny-model settings."""

from __future__ import annotations

import json

import pytest
from train_settings import TINY


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """About 16k GPT-2 tokens of Moby-Dick (from the package's built-in corpus) in 40 documents, 10% validation."""
    from gpt2kit.data.builtin import builtin_text
    from gpt2kit.data.prepare import prepare

    text = builtin_text("moby-dick")[20_000:80_000]
    root = tmp_path_factory.mktemp("train_data")
    src = root / "docs.jsonl"
    n = 40
    k = len(text) // n
    src.write_text("".join(json.dumps({"text": text[i * k:(i + 1) * k]}) + "\n" for i in range(n)))
    out = root / "prepared"
    prepare([str(src)], out, val_fraction=0.1, workers=1, progress=False)
    return out


@pytest.fixture
def tiny_cfg(data_dir, tmp_path):
    """A factory: the demo-cpu preset shrunk to a tiny model, writing into a fresh run dir, with overrides
    (AdamW and cosine unless overridden: what these tests check is the loop, not the preset's optimizer)."""
    from gpt2kit.train.presets import get_preset
    from gpt2kit.train.resolve import apply_overrides

    def make(**overrides):
        fields = {**TINY, "optimizer": "adamw", "lr_schedule": "cosine", "data": str(data_dir),
                  "out": str(tmp_path / "run"), **overrides}
        return apply_overrides(get_preset("demo-cpu"), fields)

    return make
