"""Fixtures of the GPU tier: a tiny prepared corpus, a tiny HellaSwag file, tiny training settings.

One shape for every model here (1 layer, 32 wide, 16-token windows, micro-batch 2), so the compiled kernels
that torch.compile caches on disk serve every compile test and the gpu-check dry run.
"""

from __future__ import annotations

import json

import pytest
import torch
from gpu_tier_settings import TINY_SHAPE

HELLASWAG = [
    ("The whale rose from the sea and", ["dived again.", "ate the ship's cat.", "sang.", "flew to the moon."]),
    ("Ishmael walked along the harbour, then he", ["sat down.", "found an inn.", "swam to Nantucket.", "slept."]),
]


@pytest.fixture(autouse=True)
def _restore_tf32():
    """The trainer sets the process-wide TF32 flags on CUDA (--tf32, on by default); a later test comparing
    float32 results at 1e-4 must not inherit them."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """About 5k GPT-2 tokens of Moby-Dick (the package's built-in corpus) in 20 documents, 10% validation."""
    from gpt2kit.data.builtin import builtin_text
    from gpt2kit.data.prepare import prepare

    text = builtin_text("moby-dick")[30_000:50_000]
    root = tmp_path_factory.mktemp("gpu_tier_data")
    src = root / "docs.jsonl"
    n = 20
    k = len(text) // n
    src.write_text("".join(json.dumps({"text": text[i * k:(i + 1) * k]}) + "\n" for i in range(n)))
    prepare([str(src)], root / "prepared", val_fraction=0.1, workers=1, progress=False)
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_hellaswag(tmp_path_factory):
    """Two examples in HellaSwag's official jsonl format."""
    path = tmp_path_factory.mktemp("gpu_tier_hellaswag") / "hellaswag_val.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, (ctx, endings) in enumerate(HELLASWAG):
            f.write(json.dumps({"ind": i, "activity_label": "Test", "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                                "endings": endings, "source_id": f"test~{i}", "split": "val",
                                "split_type": "indomain", "label": i % 4}) + "\n")
    return path


@pytest.fixture
def tiny_train_cfg(tiny_data, tmp_path):
    """A factory: the demo-cpu preset shrunk to TINY_SHAPE, writing into tmp_path/NAME, with overrides."""
    from gpt2kit.train.presets import get_preset
    from gpt2kit.train.resolve import apply_overrides

    def make(name: str, **overrides):
        fields = {**TINY_SHAPE, "optimizer": "adamw", "lr_schedule": "cosine", "data": str(tiny_data),
                  "out": str(tmp_path / name), "dtype": "float32",
                  "warmup_steps": 1, "schedule_steps": 20, "lr": 1e-3, "eval_batches": 2, "samples": 0,
                  "progress": False, "tensorboard": False, "log_every": 1, "eval_every": 0, "save_every": 1000,
                  **overrides}
        return apply_overrides(get_preset("demo-cpu"), fields)

    return make
