"""Text generation with a preallocated KV cache: greedy, temperature, top-k and top-p sampling.

Shape letters as in :mod:`gpt2kit.model.gpt` (B batch, T prompt length, V vocab).

The module is ``generation``, not ``generate``: importing a submodule binds its name on the package, which
would hide the function ``gpt2kit.generate`` behind the module of the same name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch

from gpt2kit.model.gpt import GPT
from gpt2kit.packed_decode import packed_cpu_linears

PACKED_ENV = "GPT2KIT_PACKED_DECODE"
"""Set to 0 to decode through nn.Linear's own products (the packed CPU fast path off) where ``packed`` is not given."""


def packed_by_default() -> bool:
    """Whether decoding uses the packed CPU fast path when the caller does not say: yes unless the environment
    sets ``GPT2KIT_PACKED_DECODE`` to 0/false/no/off."""
    return os.environ.get(PACKED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


MIN_TEMPERATURE = 1e-30
"""Smaller temperatures sample as this one: dividing float32 logits by less could overflow them to inf, whose
softmax is NaN. Down here the distribution is the argmax's up to exact ties."""


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token id (B,) from last-position logits (B, V).

    Greedy (argmax) when ``temperature == 0`` or ``top_k == 1``; otherwise softmax sampling after
    temperature scaling, top-k truncation and nucleus (top-p) truncation, in that order.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / max(temperature, MIN_TEMPERATURE)  # (B, V)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the top token always stays)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop_sorted[:, 0] = False  # also where top_p is below float32's smallest number and compares as 0
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def _padded_attn_mask(key_valid: torch.Tensor, T: int, pos: int) -> torch.Tensor:
    """Boolean (B, 1, T, L) mask for queries at [pos, pos+T) over keys [0, L) with L = pos + T.

    A query sees causal keys that are not padding; every query also sees itself, so a padding
    query never has an all-masked row (which would produce NaN in attention).
    """
    L = pos + T
    q_pos = torch.arange(pos, L, device=key_valid.device)[:, None]  # (T, 1)
    k_pos = torch.arange(L, device=key_valid.device)[None, :]  # (1, L)
    causal = k_pos <= q_pos  # (T, L)
    mask = causal[None] & key_valid[:, None, :L]  # (B, T, L)
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None]  # (B, 1, T, L)


@torch.inference_mode()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    use_cache: bool = True,
    packed: bool | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Continue the prompts ``idx`` (B, T) by up to ``max_new_tokens`` tokens; returns (B, T + n).

    - ``seed`` or ``generator`` make sampling reproducible.
    - ``eos_id``: a row stops after producing it; stopped rows are filled with ``eos_id`` and the
      loop ends early once every row has stopped.
    - ``attention_mask`` (B, T), 1 for real tokens and 0 for left padding, lets prompts of different
      lengths share a batch.
    - Prompts longer than the context are cropped to the last ``block_size`` tokens; once prompt
      plus output fill the context, every step recomputes the last ``block_size`` tokens (a sliding
      window), exactly as generation without a cache would.
    - ``packed``: decoding on a CPU reads the weights through :func:`gpt2kit.packed_decode.packed_cpu_linears`
      (costs a second copy of the linear weights; other devices are unaffected).
      None (the default): on unless the environment sets ``GPT2KIT_PACKED_DECODE=0``.
    - ``on_token`` is called with each step's new tokens (B,), for streaming.
    """
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"prompt must be a (batch, length) tensor with length >= 1, got shape {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if generator is None and seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    block_size = model.config.block_size
    B = idx.size(0)
    if attention_mask is None:
        key_valid = torch.ones_like(idx, dtype=torch.bool)
        padded = False
    else:
        key_valid = attention_mask.to(device=idx.device, dtype=torch.bool)
        padded = not bool(key_valid.all())
    out = idx
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)

    def positions_for(valid: torch.Tensor) -> torch.Tensor:
        return (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T): left padding shares position 0

    def forward_window(window: torch.Tensor, valid: torch.Tensor, cache, pos: int) -> torch.Tensor:
        T = window.size(1)
        if not padded:
            logits, _ = model(window, cache=cache, pos=pos, last_only=True)
            return logits[:, -1, :]
        all_pos = positions_for(valid)  # (B, pos+T)
        mask = _padded_attn_mask(valid, T, pos)
        logits, _ = model(window, cache=cache, pos=pos, positions=all_pos[:, pos:pos + T],
                          attn_mask=mask, last_only=True)
        return logits[:, -1, :]

    cache = None
    cache_len = 0
    stack = contextlib.ExitStack()
    if packed is None:
        packed = packed_by_default()
    if packed:
        stack.enter_context(packed_cpu_linears(model))
    try:
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache_len < block_size:
                # the cache holds every token but the newest one: feed just that
                logits = forward_window(out[:, -1:], key_valid, cache, cache_len)
                cache_len += 1
            else:
                window = out[:, -block_size:]
                valid = key_valid[:, -block_size:]
                if use_cache and out.size(1) < block_size:
                    # first step: prefill; later steps reuse the cache until the context is full
                    cache = model.make_cache(B, block_size)
                    logits = forward_window(window, valid, cache, 0)
                    cache_len = window.size(1)
                else:
                    logits = forward_window(window, valid, None, 0)
            next_id = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
            out = torch.cat([out, next_id[:, None]], dim=1)
            key_valid = torch.cat([key_valid, torch.ones_like(next_id[:, None], dtype=torch.bool)], dim=1)
            if on_token is not None:
                on_token(next_id)
            if eos_id is not None:
                finished |= next_id == eos_id
                if bool(finished.all()):
                    break
    finally:
        stack.close()
        model.train(was_training)
    return out
