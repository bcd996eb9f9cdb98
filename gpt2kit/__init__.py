"""gpt2kit: a from-scratch GPT-2 toolkit — prepare, pretrain, resume, evaluate, generate, export, fine-tune.

The public names are loaded on first use (PEP 562): ``import gpt2kit`` and the command line's ``--help``
and ``prepare`` never import torch, which alone takes seconds to load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gpt2kit.errors import UserError

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads these on first use
    from gpt2kit.model import GPT, MODEL_PRESETS, GPTConfig
    from gpt2kit.tokenizer import get_tokenizer

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "MODEL_PRESETS", "UserError", "get_tokenizer", "__version__"]

_LAZY = {"GPT": "gpt2kit.model", "GPTConfig": "gpt2kit.model", "MODEL_PRESETS": "gpt2kit.model",
         "get_tokenizer": "gpt2kit.tokenizer"}


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpt2kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """Module attributes plus the lazily loaded public names."""
    return sorted(set(globals()) | set(__all__))
