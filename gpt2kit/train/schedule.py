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


def lr_factor(step: int, cfg: LoopConfig) -> float:
    """The schedule at optimizer step ``step`` (0-based) as a fraction of the peak lr: linear warmup, then the decay
    shape to min_lr_ratio (wsd: constant, then linear over the last decay_fraction of schedule_steps)."""
    low = cfg.schedule.min_lr_ratio
    if step < cfg.schedule.warmup_steps:
        return (step + 1) / cfg.schedule.warmup_steps
    if cfg.schedule.lr_schedule == "constant":
        return 1.0
    if step >= cfg.cadence.schedule_steps:
        return low
    start = cfg.schedule.warmup_steps  # where the decay starts
    if cfg.schedule.lr_schedule == "wsd":
        # counted back from the end, so the stable stretch of a longer schedule starts the same way
        steps = cfg.cadence.schedule_steps
        start = max(start, steps - round(cfg.schedule.decay_fraction * steps))
        if step < start:
            return 1.0
    decay = cfg.cadence.schedule_steps - start
    ratio = 1.0 if decay == 0 else (step - start) / decay  # 0 -> 1
    if cfg.schedule.lr_schedule in ("linear", "wsd"):
        coeff = 1.0 - ratio
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return low + coeff * (1.0 - low)


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Learning rate (of --lr) for optimizer step ``step`` (0-based): ``cfg.optim.lr * lr_factor(step, cfg)``."""
    return cfg.optim.lr * lr_factor(step, cfg)


def muon_momentum_at(step: int, cfg: LoopConfig) -> float:
    """Muon's momentum for optimizer step ``step``: a linear ramp from 0.85 over the warmup steps, then constant."""
    n = cfg.optim.muon_momentum_warmup_steps
    if n == 0 or step >= n:
        return cfg.optim.muon_momentum
    return MUON_MOMENTUM_START + (cfg.optim.muon_momentum - MUON_MOMENTUM_START) * step / n
