"""Packed-weight CPU decoding: nn.Linear layers run from packed weight copies while generating.

A hardware trick kept at the edge: :func:`gpt2kit.generation.generate` enters :func:`packed_cpu_linears` around
its decode loop (``packed=False`` or ``GPT2KIT_PACKED_DECODE=0`` turns it off); the model never knows. It is
on only where it is the faster form (benchmarks/generate.py compares): CPU decoding of float32 with several
threads, and bfloat16 where oneDNN runs it. Which packed form a step uses depends on its rows: float32 steps of
one row read input-dimension slabs through ``bmm``, steps of 2..:data:`PACKED_MAX_ROWS` rows (a batch, a
serving step, a short prefill) oneDNN's prepacked weights, as bfloat16 does at every row count.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn as nn

from gpt2kit.device import native_bf16

PACKED_MAX_ROWS = 16
"""Decoding steps of at most this many rows (batch x new positions) use the packed weights."""

# nn.Linear -> {form: (weight version, data pointer, packed weight)}; form is the slab count, or 0 for oneDNN's
_PACKED: weakref.WeakKeyDictionary[nn.Linear, dict[int, tuple]] = weakref.WeakKeyDictionary()


def _packed(linear: nn.Linear, parts: int) -> torch.Tensor:
    """``linear``'s weight in a packed form, cached until the weight changes (its version counter or storage moves).

    ``parts`` > 0 (float32): transposed and cut along the input dimension into (parts, chunk, out) with
    parts * chunk >= in, the extra input rows zero. ``parts`` == 0: oneDNN's blocked layout for small batches
    (an opaque mkldnn tensor; bfloat16 laid out for one row, float32 for a few rows).
    """
    w = linear.weight
    key = (w._version, w.data_ptr())
    forms = _PACKED.setdefault(linear, {})
    hit = forms.get(parts)
    if hit is not None and hit[:2] == key:
        return hit[2]
    if parts == 0:
        wp = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1 if w.dtype == torch.bfloat16 else PACKED_MAX_ROWS)
    else:
        out_f, in_f = w.shape
        chunk = -(-in_f // parts)  # input rows per part; the last part is zero-padded when in does not divide
        wp = nn.functional.pad(w.detach().t(), (0, 0, 0, parts * chunk - in_f))  # (n * chunk, out)
        wp = wp.reshape(parts, chunk, out_f).contiguous()  # (n, chunk, out)
    forms[parts] = (*key, wp)
    return wp


@contextlib.contextmanager
def packed_cpu_linears(model: nn.Module) -> Iterator[bool]:
    """Run ``model``'s CPU linear layers from packed weight copies while decoding; yields whether it did.

    Decoding a token reads every weight once, so it is bound by memory bandwidth, and torch's CPU
    matrix-vector products leave much of it unused:

    - float32, one row: nn.Linear's (out, in) product runs on one thread. Cutting the transposed
      weight along the input dimension into one (chunk, out) slab per thread, multiplying each slab by its
      slice of the input with one ``bmm`` and adding the partial products spreads the reads over every core.
    - float32, 2..PACKED_MAX_ROWS rows: the slab ``bmm`` is slow there (4 rows cost nearly what 16 do) and
      oneDNN's prepacked weights (``torch.ops.mkldnn``, as torch.compile's CPU backend uses) are the fastest.
    - bfloat16: oneDNN's prepacked weights read faster than the plain layout.

    Figures in benchmarks/RESULTS.md. Each packed form in use costs one more set of the linear weights in
    memory (float32 decoding of one row and of several rows: two), made on first use, kept while the model
    lives, and remade when a weight changes. Inputs of more than :data:`PACKED_MAX_ROWS` rows (prefill),
    autocast and anything that needs gradients take the ordinary path.
    """
    parts = torch.get_num_threads()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    dtypes = {m.weight.dtype for m in linears}
    onednn = torch.backends.mkldnn.is_available()
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
            # float32 rows > 1 and bfloat16 read oneDNN's layout, float32 single rows the slabs
            wp = _packed(m, 0 if onednn and (rows > 1 or x.dtype == torch.bfloat16) else parts)
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
