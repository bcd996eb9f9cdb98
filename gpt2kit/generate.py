"""Text generation with a preallocated KV cache: greedy, temperature, top-k and top-p sampling.

Shape letters as in :mod:`gpt2kit.model.gpt` (B batch, T prompt length, V vocab).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterator

import torch
import torch.nn as nn

from gpt2kit.model.gpt import GPT

PACKED_MAX_ROWS = 16
"""Decoding steps of at most this many rows (batch x new positions) use the packed weights."""

# nn.Linear -> (weight version, data pointer, parts, packed weight: see _packed)
_PACKED: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()


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
    logits = logits.float() / temperature  # (B, V)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the top token always stays)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def _bf16_packing_available() -> bool:
    """oneDNN's prepacked linear (what torch.compile's CPU backend uses) is present and runs bfloat16 here."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _packed(linear: nn.Linear, parts: int) -> torch.Tensor:
    """``linear``'s weight in the packed form for its dtype, cached until the weight changes (its version counter
    or storage moves).

    float32: transposed and cut along the input dimension into (parts, chunk, out) with parts * chunk >= in,
    the extra input rows zero. bfloat16: oneDNN's blocked layout for small batches (an opaque mkldnn tensor).
    """
    w = linear.weight
    key = (w._version, w.data_ptr(), parts)
    hit = _PACKED.get(linear)
    if hit is not None and hit[:3] == key:
        return hit[3]
    if w.dtype == torch.bfloat16:
        wp = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1)
    else:
        out_f, in_f = w.shape
        chunk = -(-in_f // parts)  # input rows per part; the last part is zero-padded when in does not divide
        wp = nn.functional.pad(w.detach().t(), (0, 0, 0, parts * chunk - in_f))  # (n * chunk, out)
        wp = wp.reshape(parts, chunk, out_f).contiguous()  # (n, chunk, out)
    _PACKED[linear] = (*key, wp)
    return wp


@contextlib.contextmanager
def packed_cpu_linears(model: nn.Module) -> Iterator[bool]:
    """Run ``model``'s CPU linear layers from packed weight copies while decoding; yields whether it did.

    Decoding a token reads every weight once, so it is bound by memory bandwidth, and torch's CPU
    matrix-vector products leave much of it unused:

    - float32: nn.Linear's (out, in) product runs on one thread (about 13 GB/s here). Cutting the transposed
      weight along the input dimension into one (chunk, out) slab per thread, multiplying each slab by its
      slice of the input with one ``bmm`` and adding the partial products spreads the reads over every core
      (about 27 GB/s over the gpt2 weights on 2 cores).
    - bfloat16: oneDNN's prepacked weights (``torch.ops.mkldnn``, as torch.compile's CPU backend uses) read
      about 1.7x faster than the plain layout.

    Figures in benchmarks/RESULTS.md. The copies cost one more set of the linear weights in memory, kept while
    the model lives, and are remade when a weight changes. Inputs of more than :data:`PACKED_MAX_ROWS` rows
    (prefill), autocast and anything that needs gradients take the ordinary path.
    """
    parts = torch.get_num_threads()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    dtypes = {m.weight.dtype for m in linears}
    usable = (
        bool(linears)
        and not hasattr(model, "_orig_mod")  # not under torch.compile
        and all(m.weight.device.type == "cpu" for m in linears)
        and (dtypes == {torch.float32} and parts > 1
             or dtypes == {torch.bfloat16} and _bf16_packing_available())
    )
    if not usable:
        yield False
        return
    patched = []
    for m in linears:

        def forward(x: torch.Tensor, m: nn.Linear = m) -> torch.Tensor:
            in_f = x.size(-1)
            rows = x.numel() // in_f
            if (rows > PACKED_MAX_ROWS or torch.is_autocast_enabled("cpu")
                    or (torch.is_grad_enabled() and m.weight.requires_grad) or x.dtype != m.weight.dtype):
                return nn.functional.linear(x, m.weight, m.bias)
            wp = _packed(m, parts)
            x2 = x.reshape(rows, in_f)
            if wp.is_mkldnn:
                y = torch.ops.mkldnn._linear_pointwise(x2, wp, m.bias, "none", [], "")  # (rows, out)
            else:  # wp (n, chunk, out)
                if parts * wp.size(1) != in_f:
                    x2 = nn.functional.pad(x2, (0, parts * wp.size(1) - in_f))  # (rows, n * chunk)
                xk = x2.view(rows, parts, wp.size(1)).transpose(0, 1)  # (n, rows, chunk)
                y = torch.bmm(xk, wp).sum(0)  # (rows, out): the parts' partial products added
                if m.bias is not None:
                    y += m.bias
            return y.view(*x.shape[:-1], m.out_features)  # (..., out)

        m.forward = forward  # an instance attribute: removed below, the class's forward is untouched
        patched.append(m)
    try:
        yield True
    finally:
        for m in patched:
            del m.forward


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
    packed: bool = True,
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
    - ``packed``: decoding on a CPU reads the weights through :func:`packed_cpu_linears` (faster; costs a
      second copy of the linear weights).
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
    if packed:
        stack.enter_context(packed_cpu_linears(model))
    try:
        for step in range(max_new_tokens):
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
