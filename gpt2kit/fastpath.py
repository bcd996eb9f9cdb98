"""The CPU decode fast path: nn.Linear layers run from packed weight copies while generating.

A hardware trick kept at the edge: :func:`gpt2kit.generation.generate` enters :func:`packed_cpu_linears` around
its decode loop (``packed=False`` or ``GPT2KIT_PACKED_DECODE=0`` turns it off); the model never knows. It is
on only where it measured faster: CPU decoding of float32 with several threads, and bfloat16 where oneDNN runs
it (benchmarks/RESULTS.md has the figures).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import torch
import torch.nn as nn

from gpt2kit.device import native_bf16

PACKED_MAX_ROWS = 16
"""Decoding steps of at most this many rows (batch x new positions) use the packed weights."""

# nn.Linear -> (weight version, data pointer, parts, packed weight: see _packed)
_PACKED: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()


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

    - float32: nn.Linear's (out, in) product runs on one thread. Cutting the transposed
      weight along the input dimension into one (chunk, out) slab per thread, multiplying each slab by its
      slice of the input with one ``bmm`` and adding the partial products spreads the reads over every core.
    - bfloat16: oneDNN's prepacked weights (``torch.ops.mkldnn``, as torch.compile's CPU backend uses) read
      faster than the plain layout.

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
             or dtypes == {torch.bfloat16} and native_bf16("cpu"))
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
