"""What the training loop does when a step goes wrong: a NaN/inf loss or gradient norm (:class:`NanPolicy`), a
float16 step whose gradients overflowed the loss scale, and running out of memory (:class:`OutOfMemoryBackoff`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from gpt2kit.device import release_cached_memory
from gpt2kit.errors import UserError
from gpt2kit.train.checkpointer import Checkpointer
from gpt2kit.train.config import LoopConfig
from gpt2kit.train.state import RunState, rng_state, set_rng_state
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
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise UserError(out_of_memory_sentence(device, cfg.runtime.batch_size, cfg, task)) from None


def out_of_memory_sentence(device: torch.device, micro_batch: int, cfg: LoopConfig, task: TrainTask) -> str:
    """What ran out of memory where, and the flags that need less of it."""
    split = ", split after each out-of-memory error" if micro_batch != cfg.runtime.batch_size else ""
    return (f"out of memory on {device} at micro-batch {micro_batch} (--batch-size {cfg.runtime.batch_size}{split}): "
            f"{task.oom_hint}; or use --parallel fsdp on several GPUs, --dtype bfloat16, --compile")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device or host allocation failure (CUDA raises OutOfMemoryError; MPS and the CPU
    allocator raise a RuntimeError that says so)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def smaller_micro_batch(micro_batch: int) -> int:
    """The micro-batch to retry with: half, or for an odd size its largest divisor below it (the global batch
    must still split into whole micro-batches)."""
    return max(d for d in range(1, micro_batch // 2 + 1) if micro_batch % d == 0)


class OutOfMemoryBackoff:
    """An out-of-memory error in a step (one process): free the step's tensors, split each micro-batch in two
    (doubling accumulation, so the global batch and the trajectory stay), rewind the data and random streams to
    the step's start and redo it. At micro-batch 1 ``save`` writes the checkpoint of the step's start and the run
    stops with one sentence. Several ranks cannot all rewind in step, and a batch source without ``set_layout``
    cannot re-split: those stop at once (one rank cannot save alone)."""

    def __init__(self, cfg: LoopConfig, task: TrainTask, env: Any, say: Callable[[str], None],
                 save: Callable[[], Any]) -> None:
        self.cfg, self.task, self.env, self.say, self.save = cfg, task, env, say, save

    def run(self, step: Callable[[], Any], optimizer: torch.optim.Optimizer) -> Any:
        """``step()``, redone with smaller micro-batches while it runs out of memory."""
        data = self.task.train_data
        start = (data.state_dict(), rng_state())
        while True:
            try:
                return step()
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not is_out_of_memory(e):
                    raise
            # out of the except block: the failed step's frames, and the tensors they hold, are released
            optimizer.zero_grad(set_to_none=True)
            release_cached_memory(self.env.device.type)
            data.load_state_dict(start[0])
            set_rng_state(start[1])
            B = getattr(data, "micro_batch_size", self.cfg.runtime.batch_size)
            if self.env.world_size > 1 or not hasattr(data, "set_layout"):
                raise UserError(out_of_memory_sentence(self.env.device, B, self.cfg, self.task))
            if B == 1:
                path = self.save()
                raise UserError(out_of_memory_sentence(self.env.device, B, self.cfg, self.task)
                                + f"; saved {path}, continue with --resume auto")
            self._split(B)

    def _split(self, B: int) -> None:
        b, A = smaller_micro_batch(B), self.task.grad_accum_steps
        self.task.grad_accum_steps = A * (B // b)
        self.task.train_data.set_layout(b, self.task.grad_accum_steps)
        self.say(f"out of memory on {self.env.device} at micro-batch {B}: redoing the step with micro-batch {b} x "
                 f"{self.task.grad_accum_steps} accumulation steps (the same global batch)")
