"""Optimizer construction: one function, :func:`build_optimizer`, that the loop calls once per run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from gpt2kit.train.config import LoopConfig

ParamGroups = Callable[[nn.Module, float], list[dict[str, Any]]]
"""(model, weight_decay) -> optimizer param groups; a group may carry ``lr_scale`` (a factor on the scheduled lr)."""


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on 2-D parameters (matmul weights, embeddings), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def default_fused_adamw(device: torch.device) -> bool:
    """Whether AdamW runs its fused kernel by default: on CUDA and CPU (torch >= 2.4 has both), where it measured
    faster (benchmarks/RESULTS.md). The update is the same formula with another rounding order, so results match
    up to rounding, not bitwise over long runs."""
    return device.type in ("cuda", "cpu")


def build_optimizer(model: nn.Module, cfg: "LoopConfig", device: torch.device,
                    param_groups: ParamGroups = decay_param_groups) -> torch.optim.Optimizer:
    """AdamW over ``param_groups(model, cfg.weight_decay)`` with the config's betas and eps (fused by default)."""
    groups = param_groups(model, cfg.weight_decay)
    fused = cfg.fused_adamw if cfg.fused_adamw is not None else default_fused_adamw(device)
    kw: dict[str, Any] = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if fused:
        kw["fused"] = True
    return torch.optim.AdamW(groups, **kw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every group's lr to ``lr`` times its ``lr_scale`` (1 when absent); returns ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
