"""gpt2kit: a from-scratch GPT-2 toolkit — prepare, pretrain, resume, evaluate, generate, export, fine-tune.

The names below load on first use (PEP 562), so ``import gpt2kit`` (and the CLI's start-up) does not import
torch::

    from gpt2kit import generate, get_tokenizer, load_model

    model = load_model("gpt2").model          # a HF name or directory, a gpt2kit checkpoint or run directory
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gpt2kit.errors import UserError
from gpt2kit.version import __version__

_LAZY = {
    "GPT": "gpt2kit.model.gpt",
    "GPTConfig": "gpt2kit.model.config",
    "MODEL_PRESETS": "gpt2kit.model.config",
    "load_model": "gpt2kit.checkpoint",
    "generate": "gpt2kit.generation",
    "get_tokenizer": "gpt2kit.tokenizer",
    "load_tokenizer": "gpt2kit.tokenizer",
    "quantize": "gpt2kit.quantization",
}

if TYPE_CHECKING:
    from gpt2kit.checkpoint import load_model
    from gpt2kit.generation import generate
    from gpt2kit.model.config import MODEL_PRESETS, GPTConfig
    from gpt2kit.model.gpt import GPT
    from gpt2kit.quantization import quantize
    from gpt2kit.tokenizer import get_tokenizer, load_tokenizer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpt2kit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "GPT", "GPTConfig", "MODEL_PRESETS", "UserError", "generate", "get_tokenizer", "load_model", "load_tokenizer",
    "quantize",
    "__version__",
]
