"""One resumable stream of shuffled epochs over N items, dealt out to the ranks in micro-batches.

Letters: N items, B micro-batch size, A gradient-accumulation steps, W world size (number of ranks),
G = B * A * W items per optimizer step.

The stream is endless: epoch e is a permutation of the N items drawn by ``numpy.random.default_rng([seed, e])``
(0..N-1 in order when unshuffled), and epoch e+1 follows it directly, so every item is visited once per epoch
and nothing is dropped at an epoch's end. The global batch of an optimizer step is the next G positions of the
stream whatever B, A and W split it: rank r at micro-step m takes the B positions starting at
``position + (m*W + r)*B``. The state (the stream position of the current step and the micro-steps already taken
in it) is the same on every rank, and B, A and W may change between optimizer steps (not inside one).

Pretraining streams token windows (:class:`gpt2kit.data.loader.TokenLoader`), fine-tuning streams examples or
packed rows (:class:`gpt2kit.finetune.batching.EpochBatches`); both wrap an :class:`EpochStream` and add what their
items are and which data a saved position belongs to.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpt2kit.errors import UserError

STATE_VERSION = 2
"""format_version of the loader states that hold :meth:`EpochStream.state_dict`'s keys (1: before they did)."""

__all__ = ["EpochStream", "STATE_VERSION", "check_layout"]


def check_layout(rank: int, world_size: int, **sizes: int) -> None:
    """ValueError unless ``world_size`` and every named size is an integer >= 1 and 0 <= ``rank`` < ``world_size``."""
    for name, value in (*sizes.items(), ("world_size", world_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")


class EpochStream:
    """Which items rank ``rank`` takes next, epoch after shuffled epoch; every rank must pass the same seed, B, A, W."""

    def __init__(self, num_items: int, micro_batch_size: int, *, seed: int, shuffle: bool = True,
                 grad_accum_steps: int = 1, rank: int = 0, world_size: int = 1) -> None:
        check_layout(rank, world_size, num_items=num_items, micro_batch_size=micro_batch_size,
                     grad_accum_steps=grad_accum_steps)
        self.num_items = num_items
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.rank = rank
        self.world_size = world_size
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.position = 0  # stream position of the first item of the current optimizer step
        self.micro_step = 0  # micro-steps of the current optimizer step already taken
        self._orders: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        """G: items per optimizer step over all ranks."""
        return self.micro_batch_size * self.grad_accum_steps * self.world_size

    @property
    def consumed(self) -> int:
        """Stream positions handed out so far over all ranks (at micro-step granularity)."""
        return self.position + self.micro_step * self.world_size * self.micro_batch_size

    @property
    def epoch(self) -> int:
        """Completed passes over the items (the epoch the next micro-batch starts in, 0-based)."""
        return self.consumed // self.num_items

    def order(self, epoch: int) -> np.ndarray:
        """Item ids in the order epoch ``epoch`` visits them."""
        order = self._orders.get(epoch)
        if order is None:
            # int32 halves the memory of a large corpus's window order; the permutation is the same for any dtype
            ids = np.arange(self.num_items, dtype=np.int32 if self.num_items < 2**31 else np.int64)
            order = np.random.default_rng([self.seed, epoch]).permutation(ids) if self.shuffle else ids
            # a step can straddle two epochs; older orders are never needed again
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
        return order

    def items_at(self, positions: np.ndarray) -> np.ndarray:
        """The item ids at the stream positions ``positions`` (int64 array, same shape)."""
        epochs, index = np.divmod(positions, self.num_items)
        out = np.empty_like(positions)
        for e in np.unique(epochs).tolist():
            sel = epochs == e
            out[sel] = self.order(e)[index[sel]]
        return out

    def next_items(self) -> np.ndarray:
        """This rank's next micro-batch: B item ids, int64 (B,)."""
        B, W = self.micro_batch_size, self.world_size
        first = self.position + (self.micro_step * W + self.rank) * B
        items = self.items_at(np.arange(first, first + B, dtype=np.int64))  # (B,)
        self.micro_step += 1
        if self.micro_step == self.grad_accum_steps:
            self.position += self.global_batch
            self.micro_step = 0
        return items

    def set_layout(self, micro_batch_size: int, grad_accum_steps: int) -> None:
        """Split each optimizer step into other micro-batches, at a step boundary; the global batch must stay."""
        check_layout(self.rank, self.world_size, micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps)
        now = (self.micro_batch_size, self.grad_accum_steps)
        if self.micro_step != 0 or micro_batch_size * grad_accum_steps != now[0] * now[1]:
            raise ValueError(f"set_layout({micro_batch_size}, {grad_accum_steps}) at micro-step {self.micro_step} "
                             f"of {now[0]} x {now[1]}: only between steps, with the same global batch")
        self.micro_batch_size, self.grad_accum_steps = micro_batch_size, grad_accum_steps

    def state_dict(self) -> dict[str, Any]:
        """The stream position and what it depends on: plain ints and bools, identical on every rank."""
        return {
            "num_items": self.num_items, "seed": self.seed, "shuffle": self.shuffle,
            "position": self.position, "micro_step": self.micro_step,
            "micro_batch_size": self.micro_batch_size, "grad_accum_steps": self.grad_accum_steps,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at exactly the micro-batch after the saved one; the seed and shuffle setting come from ``state``.

        The caller checks first that ``state`` belongs to the same data; mid-step, B, A and W must match.
        """
        if state["num_items"] != self.num_items:
            raise UserError(f"the checkpoint's data position is for {state['num_items']} items, this data has "
                            f"{self.num_items}; resume with the data the run was started with")
        layout = (self.micro_batch_size, self.grad_accum_steps, self.world_size)
        saved = (state["micro_batch_size"], state["grad_accum_steps"], state["world_size"])
        if state["micro_step"] != 0 and layout != saved:
            raise UserError(
                "the checkpoint was saved in the middle of an optimizer step with (micro batch, grad accum, "
                f"world size) = {saved}; resume with the same values, not {layout}"
            )
        self.seed = int(state["seed"])
        self.shuffle = bool(state["shuffle"])
        self._orders = {}
        self.position = int(state["position"])
        self.micro_step = int(state["micro_step"])
