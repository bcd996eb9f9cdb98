"""``--batch-size auto``: the largest micro-batch that fits the device's memory and divides the global batch.

The candidates are the divisors of the micro-batch that ``--total-batch-tokens`` allows with accumulation 1
(every one keeps the global batch whole), tried from small to large. Where the device counts its peak allocation
(CUDA) each candidate runs one forward/backward on the real model and its measured peak is kept; elsewhere (CPU,
MPS) :func:`estimate_bytes` gives it. The pick is the largest candidate whose bytes stay within SAFETY of
:func:`gpt2kit.device.memory_budget`. The probe restores the random streams and drops the gradients it made, and
changes no weight, so the run is bitwise the run of a hand-picked micro-batch of that size.

Memory formula (bytes; P parameters, L layers, C width, H heads, T block, V vocabulary, B micro-batch, k bytes
per activation element: 2 under bfloat16/float16 autocast, else 4)::

    fixed(P)      = 16 P  (float32 weights 4 + gradients 4 + AdamW m and v 8)  [+ 2 P for autocast weight copies]
    activations   = B T L k (17 C + 2.5 H T)   (Korthikanti et al. 2022, sbh(34 + 5 a s / h) at k = 2)
    logits        = B T V 8                   (float32 logits and their gradient)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gpt2kit.device import autocast, memory_budget, peak_memory_meter, release_cached_memory
from gpt2kit.train.guards import is_out_of_memory
from gpt2kit.train.state import rng_state, set_rng_state

SAFETY = 0.85
"""The share of the memory budget the chosen micro-batch may fill: room for fragmentation, the evaluator's
batches and the allocator's own blocks."""

MAX_WITHOUT_TOTAL = 512
"""The largest micro-batch tried when the run has no --total-batch-tokens (accumulation is then 1)."""


def estimate_bytes(n_params: int, n_layer: int, n_embd: int, n_head: int, block_size: int, vocab: int,
                   batch_size: int, half: bool = False) -> int:
    """The module docstring's memory formula for one training step at micro-batch ``batch_size``."""
    k = 2 if half else 4
    fixed = 16 * n_params + (2 * n_params if half else 0)
    tokens = batch_size * block_size
    acts = tokens * n_layer * k * (17 * n_embd + 2.5 * n_head * block_size)
    return int(fixed + acts + tokens * vocab * 8)


def candidates(total_batch_tokens: int | None, block_size: int, world_size: int) -> list[int]:
    """Micro-batches that keep the global batch whole, ascending (the largest has accumulation 1)."""
    if total_batch_tokens is None:
        top = MAX_WITHOUT_TOTAL
        return [b for b in (2 ** i for i in range(10)) if b <= top]
    top = total_batch_tokens // (block_size * world_size)
    return [b for b in range(1, top + 1) if top % b == 0 and total_batch_tokens % (b * block_size * world_size) == 0]


def choose(sizes: list[int], bytes_at: Callable[[int], int | None], budget: int) -> tuple[int, int | None]:
    """The largest of ``sizes`` whose ``bytes_at`` (None: ran out of memory) is within SAFETY * ``budget``; tried
    ascending, stopping at the first that does not fit. Returns (size, its bytes); (sizes[0], None) when none fits."""
    best: tuple[int, int | None] = (sizes[0], None)
    for b in sizes:
        used = bytes_at(b)
        if used is None or used > SAFETY * budget:
            break
        best = (b, used)
    return best


def measured_bytes(model: torch.nn.Module, block_size: int, device: torch.device,
                   autocast_dtype: torch.dtype | None, peak: Callable[[], int],
                   reset: Callable[[], Any] | None = None) -> Callable[[int], int | None]:
    """``bytes_at`` for :func:`choose` from one real forward/backward of ``model`` at each size: ``peak()`` after
    it (``reset()`` before it), None on out-of-memory. Zeros for the tokens, so no random numbers are drawn."""

    def bytes_at(b: int) -> int | None:
        (reset or _nothing)()
        idx = torch.zeros(b, block_size, dtype=torch.long, device=device)
        try:
            with autocast(device, autocast_dtype):
                _, loss = model(idx, idx)
            loss.backward()
            return int(peak())
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            return None
        finally:
            model.zero_grad(set_to_none=True)
            release_cached_memory(device.type)

    return bytes_at


def auto_batch_size(model: Any, cfg: Any, world_size: int, device: torch.device,
                    autocast_dtype: torch.dtype | None, budget: tuple[int, str] | None = None,
                    peak: Callable[[], int] | None = None) -> tuple[int, str]:
    """The micro-batch for ``--batch-size auto`` and the one line saying what was chosen and why.

    ``budget`` and ``peak`` replace :func:`gpt2kit.device.memory_budget` and the device's peak counter (tests)."""

    g = cfg.model
    total = cfg.cadence.total_batch_tokens
    sizes = candidates(total, g.block_size, world_size)
    limit, source = budget or memory_budget(device.type)
    reset: Callable[[], Any] = _nothing
    if peak is None:
        meter = peak_memory_meter(device.type)
        if meter is not None:
            peak, reset = meter, lambda: peak_memory_meter(device.type)
    if peak is not None:
        state, training = rng_state(), model.training
        model.to(device)
        model.train()
        try:
            b, used = choose(sizes, measured_bytes(model, g.block_size, device, autocast_dtype, peak, reset), limit)
        finally:
            set_rng_state(state)
            model.train(training)
        how = "measured peak"
    else:
        n = model.num_params() if hasattr(model, "num_params") else sum(p.numel() for p in model.parameters())
        vocab = g.padded_vocab_size or g.vocab_size
        b, used = choose(sizes, lambda s: estimate_bytes(n, g.n_layer, g.n_embd, g.n_head, g.block_size, vocab, s,
                                                        autocast_dtype is not None), limit)
        how = "estimated (memory formula in gpt2kit/train/autobatch.py)"
    accum = total // (b * g.block_size * world_size) if total else 1
    fits = (f"{how} {used / 2**30:.2f} GiB" if used is not None
            else "even micro-batch 1 exceeds it; trying 1, out-of-memory back-off stays on")
    line = (f"--batch-size auto: {b} (x {accum} accumulation = --total-batch-tokens {total}; {fits} within "
            f"{SAFETY:.0%} of {limit / 2**30:.2f} GiB: {source}; candidates {', '.join(map(str, sizes))})")
    return b, line


def _nothing() -> None:
    return None
