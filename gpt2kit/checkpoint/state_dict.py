"""Weights between a live model and a checkpoint: the one place that strips wrapper prefixes and unties
``lm_head.weight``, and the one checked load.

``torch.compile``, DDP and FSDP wrap the module and prefix its state-dict keys; a checkpoint stores the plain
names, so a run saved compiled under DDP loads into a bare ``GPT`` and the other way round.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt2kit.errors import UserError
from gpt2kit.model.gpt import GPT

TIED = "lm_head.weight"
"""Tied to ``transformer.wte.weight``: saved once, under that name, and re-tied on load."""
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def strip_wrapper_prefixes(sd: dict[str, Any]) -> dict[str, Any]:
    """Remove ``torch.compile``/DDP/FSDP wrapper prefixes from state-dict keys."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
                # wrappers can also sit inside the key path (e.g. FSDP-wrapped blocks)
                if f".{p}" in k:
                    k, changed = k.replace(f".{p}", "."), True
        out[k] = v
    return out


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under ``torch.compile`` and DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with wrapper prefixes removed and the tied ``lm_head.weight`` left out."""
    sd = strip_wrapper_prefixes(unwrap_model(model).state_dict())
    sd.pop(TIED, None)
    return sd


def load_state_dict_checked(model: GPT, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load weights into ``model``; missing, unexpected or mis-shaped keys give one clear UserError."""
    sd = strip_wrapper_prefixes(dict(sd))
    sd.setdefault(TIED, sd.get("transformer.wte.weight"))
    own = model.state_dict()
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    if missing or unexpected:
        raise UserError(
            f"{source}: weights do not match the model config "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UserError(
                f"{source}: tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}; "
                "was it saved from a different model size?"
            )
    model.load_state_dict(sd)
