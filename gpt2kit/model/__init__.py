"""The GPT-2 model, its configuration and Hugging Face weight conversion.

``GPT`` and ``KVCache`` load on first use (PEP 562): the config alone (``gpt2kit.model.config``, what the CLI's
flags are built from) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gpt2kit.model.config import MODEL_PRESETS, GPTConfig

if TYPE_CHECKING:
    from gpt2kit.model.gpt import GPT, KVCache


def __getattr__(name: str) -> Any:
    if name in ("GPT", "KVCache"):
        value = getattr(importlib.import_module("gpt2kit.model.gpt"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpt2kit.model' has no attribute {name!r}")


__all__ = ["GPT", "GPTConfig", "KVCache", "MODEL_PRESETS"]
