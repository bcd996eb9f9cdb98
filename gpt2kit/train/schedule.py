"""The per-step schedule: :func:`lr_at` (the learning rate the loop asks for once per optimizer step), the shape
behind it as a fraction of the peak (:func:`lr_factor`, which Muon's groups share), and Muon's momentum ramp
(:func:`muon_momentum_at`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpt2kit.train.config import LoopConfig

MUON_MOMENTUM_START = 0.85
"""Muon's momentum at step 0 when --muon-momentum-warmup-steps > 0 (modded-nanogpt's ramp starts here)."""


def lr_factor(step: int, cfg: "LoopConfig") -> float:
    """The schedule at optimizer step ``step`` (0-based) as a fraction of the peak lr: linear warmup, then the decay
    shape to min_lr_ratio (wsd: constant, then linear over the last decay_fraction of schedule_steps)."""
    low = cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    if step >= cfg.schedule_steps:
        return low
    start = cfg.warmup_steps  # where the decay starts
    if cfg.lr_schedule == "wsd":
        # counted back from the end, so the stable stretch of a longer schedule starts the same way
        start = max(start, cfg.schedule_steps - round(cfg.decay_fraction * cfg.schedule_steps))
        if step < start:
            return 1.0
    decay = cfg.schedule_steps - start
    ratio = 1.0 if decay == 0 else (step - start) / decay  # 0 -> 1
    if cfg.lr_schedule in ("linear", "wsd"):
        coeff = 1.0 - ratio
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return low + coeff * (1.0 - low)


def lr_at(step: int, cfg: "LoopConfig") -> float:
    """Learning rate (of --lr) for optimizer step ``step`` (0-based): ``cfg.lr * lr_factor(step, cfg)``."""
    return cfg.lr * lr_factor(step, cfg)


def muon_momentum_at(step: int, cfg: "LoopConfig") -> float:
    """Muon's momentum for optimizer step ``step``: a linear ramp from 0.85 over the warmup steps, then constant."""
    n = cfg.muon_momentum_warmup_steps
    if n == 0 or step >= n:
        return cfg.muon_momentum
    return MUON_MOMENTUM_START + (cfg.muon_momentum - MUON_MOMENTUM_START) * step / n
