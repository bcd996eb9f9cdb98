"""What the training loop does when a step goes wrong: a NaN/inf loss or gradient norm (:class:`NanPolicy`), a
float16 step whose gradients overflowed the loss scale, and running out of memory."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch

from gpt2kit.errors import UserError
from gpt2kit.train.checkpointer import Checkpointer
from gpt2kit.train.config import LoopConfig
from gpt2kit.train.state import RunState
from gpt2kit.train.task import TrainTask


class TrainingDiverged(UserError):
    """The loss or gradient norm became NaN/inf."""


class NanPolicy:
    """``--on-nan``: a step whose loss or gradient norm is not finite stops the run, or (``skip``) loses its update,
    until more than ``--max-skipped-steps`` in a row do."""

    def __init__(self, cfg: LoopConfig, checkpointer: Checkpointer, say: Callable[[str], None]) -> None:
        self.cfg, self.checkpointer, self.say = cfg, checkpointer, say
        self.consecutive_bad = 0

    def allows_update(self, loss: float, grad_norm: float, state: RunState,
                      scaler: torch.amp.GradScaler | None = None) -> bool:
        """True for a finite step; False for one to skip (counted in ``state``); raises TrainingDiverged to stop."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive_bad = 0
            return True
        if scaler is not None and scaler.is_enabled() and math.isfinite(loss):
            return self._loss_scale_overflow(grad_norm, scaler, state)
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        self.consecutive_bad += 1
        if self.cfg.nan.on_nan == "stop" or self.consecutive_bad > self.cfg.nan.max_skipped_steps:
            why = ("" if self.cfg.nan.on_nan == "stop"
                   else f" after {self.consecutive_bad} consecutive skipped steps (--max-skipped-steps)")
            raise TrainingDiverged(
                f"step {state.step + 1}: {what}{why}; stopped without saving ({self.checkpointer.last_good()}). "
                "Lower --lr, raise --warmup-steps or use --dtype float32; --on-nan skip skips such steps instead"
            )
        state.skipped_steps += 1
        self.say(f"step {state.step + 1}: {what}; update skipped (--on-nan skip, {state.skipped_steps} skipped so far)")
        return False

    def _loss_scale_overflow(self, grad_norm: float, scaler: torch.amp.GradScaler, state: RunState) -> bool:
        """A float16 step whose scaled gradients overflowed: the scaler skips it and halves the scale (not a NaN
        failure, and no message: the first steps of a float16 run find the scale this way); a scale that falls
        below MIN_LOSS_SCALE means the gradients overflow at any scale, so the run stops."""
        state.skipped_steps += 1
        scale = scaler.get_scale() * scaler.get_backoff_factor()
        if scale < MIN_LOSS_SCALE:
            raise TrainingDiverged(
                f"step {state.step + 1}: gradient norm {grad_norm} in float16 with the loss scale down to {scale:.1e}; "
                f"stopped without saving ({self.checkpointer.last_good()}). Lower --lr or use --dtype bfloat16 "
                "or float32"
            )
        return False


MIN_LOSS_SCALE = 1e-4
"""The float16 loss scale below which gradients are taken to overflow at every scale (fairseq's rule)."""


@contextlib.contextmanager
def out_of_memory_message(device: torch.device, cfg: LoopConfig, task: TrainTask) -> Iterator[None]:
    """Turn an out-of-memory error into one sentence naming the flags to change."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of memory on {device} with micro-batch --batch-size {cfg.runtime.batch_size}: "
            f"{task.oom_hint}; or use --parallel fsdp on several GPUs, --dtype bfloat16, --compile"
        ) from None
