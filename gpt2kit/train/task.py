"""What a training job hands the loop (:class:`TrainTask`), what callbacks get (:class:`EvalContext`) and what
the loop returns (:class:`TrainResult`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn as nn

from gpt2kit.distributed import DistEnv
from gpt2kit.train.optim import ParamGroups, decay_param_groups

if TYPE_CHECKING:
    from gpt2kit.train.config import LoopConfig


class BatchSource(Protocol):
    """Where training batches come from (e.g. :class:`gpt2kit.data.loader.TokenLoader`)."""

    def next_batch(self) -> Any:
        """The next micro-batch for this rank (tensors, tuples/dicts of tensors)."""

    def state_dict(self) -> dict:
        """Position in the data as plain data (the same on every rank)."""

    def load_state_dict(self, state: dict) -> None:
        """Continue at exactly the micro-batch after the saved one."""


@dataclass
class EvalContext:
    """What an ``evaluate``/``sample`` callback gets."""

    model: nn.Module
    """The model to call for forward passes (compiled and/or FSDP-sharded; not DDP-wrapped). Every rank calls it."""
    raw_model: nn.Module
    """``TrainTask.model`` itself, not compiled or wrapped (for generation and attributes such as ``config``)."""
    step: int
    """Optimizer steps done."""
    env: DistEnv
    autocast_dtype: torch.dtype | None
    """bfloat16 when the run computes in bf16, else None."""
    config: LoopConfig

    @property
    def device(self) -> torch.device:
        """This rank's device."""
        return self.env.device


def lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Next-token cross-entropy of an ``(inputs, targets)`` batch, (B, T) each."""
    x, y = batch
    _, loss = model(x, y)
    return loss


def default_batch_tokens(batch: Any) -> int:
    """Tokens in a batch: the element count of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    if isinstance(batch, dict):
        batch = list(batch.values())
    return default_batch_tokens(batch[0])


@dataclass
class TrainTask:
    """A training job for :func:`gpt2kit.train.loop.train` (see that module's docstring)."""

    model: nn.Module
    """The pure model on CPU: its weights are what checkpoints hold; the loop moves, compiles and wraps it."""
    model_config: dict[str, Any]
    train_data: BatchSource
    grad_accum_steps: int = 1
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = lm_loss
    evaluate: Callable[[EvalContext], dict[str, float]] | None = None
    sample: Callable[[EvalContext], list[str]] | None = None
    param_groups: ParamGroups = decay_param_groups
    batch_tokens: Callable[[Any], int] = default_batch_tokens
    flops_per_token: float | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)
    train_module: Callable[[nn.Module], nn.Module] | None = None
    """Builds the module the loop compiles/wraps and calls from ``model`` (e.g. FusedLossGPT); default: the model."""
    oom_hint: str = "lower --batch-size (gradient accumulation keeps the global batch the same)"
    """Appended to the out-of-memory message: which flags to lower."""
    settings: dict[str, Any] | None = None
    """The job's resolved settings, flat as its flags: RUN/train_config.json and every checkpoint's ``config``
    (default: the loop config's own, ``cfg.to_dict()``)."""


@dataclass
class TrainResult:
    """How a :func:`gpt2kit.train.loop.train` call ended."""

    step: int
    """Optimizer steps done."""
    loss: float | None
    """Training loss of the last step run (None when no step ran)."""
    val_loss: float | None
    """The last validation loss measured."""
    best_val_loss: float | None
    checkpoint: Path | None
    """The last checkpoint written (or resumed from)."""
    interrupted: bool
    """Stopped by SIGTERM/SIGINT after saving."""
    metrics: list[dict[str, Any]]
    """Every record logged so far (resumed records included)."""
