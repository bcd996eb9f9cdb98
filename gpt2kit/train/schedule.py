"""The learning-rate schedule: one function, :func:`lr_at`, that the loop asks once per optimizer step."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpt2kit.train.config import LoopConfig


def lr_at(step: int, cfg: "LoopConfig") -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then the decay shape to min_lr_ratio."""
    lr, min_lr = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return lr
    if step >= cfg.schedule_steps:
        return min_lr
    decay = cfg.schedule_steps - cfg.warmup_steps
    ratio = 1.0 if decay == 0 else (step - cfg.warmup_steps) / decay  # 0 -> 1
    if cfg.lr_schedule == "linear":
        coeff = 1.0 - ratio
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (lr - min_lr)
