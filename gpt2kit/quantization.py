"""Int8 CPU inference: a GPT's linear layers, the tied output projection included, run from int8 weights.

:func:`quantize` swaps every ``nn.Linear`` of a model for an :class:`Int8Linear`; everything that calls the
model (``gpt2kit.generate``, the serve engine, ``eval loss``, ``sample``) runs it unchanged. The scheme is
weight int8 per output channel (symmetric: one float scale per row) with the activations quantized to uint8
on the fly, one scale and zero point per call, through fbgemm/oneDNN's dynamic quantized linear
(``torch.ops.quantized.linear_dynamic``). It is chosen over weight-only int8 (``torch._weight_int8pack_mm``)
because it is the faster of the two on x86 CPUs: benchmarks/RESULTS.md has both.

The token embedding ``wte`` stays float (an embedding lookup reads one row per token); its tied twin
``lm_head``, the largest matrix, is quantized, so the int8 model holds both.

The module is ``quantization``, not ``quantize``: a submodule of that name would hide the function
``gpt2kit.quantize`` (as :mod:`gpt2kit.generation` explains for ``generate``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from gpt2kit.errors import UserError

SCHEMES = ("int8",)
"""What :func:`quantize` (and ``--quantize``) offers."""


def _quantized_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` (out, in) as a per-output-channel symmetric qint8 tensor: row i is round(w_i / s_i), s_i = max|w_i|/127."""
    w = w.detach().float().contiguous()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()  # (out,)
    zero = torch.zeros(w.size(0), dtype=torch.long)
    with warnings.catch_warnings():  # torch flags its quantized tensor types for removal; the kernels take no other
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)


class Int8Linear(nn.Module):
    """An ``nn.Linear`` for inference from int8 weights (per output channel) and dynamically quantized inputs.

    The weights live in the CPU backend's prepacked form, not as parameters: the layer cannot be trained and
    its state is not in ``state_dict``. Inputs of any float dtype are computed in float32 and the output is
    returned in the input's dtype.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
        self._packed = torch.ops.quantized.linear_prepack(_quantized_weight(linear.weight), bias)
        self.weight_bytes = self.out_features * self.in_features + 4 * self.out_features  # int8 rows, fp32 scales
        if bias is not None:
            self.weight_bytes += 4 * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, so that the pairwise u8 x s8 sums of AVX2 kernels cannot saturate int16
        y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed, True)  # (..., out)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer multiplies by, for tests and comparisons."""
        qw, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qw.dequantize()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights: parameters and buffers (shared ones once) plus the int8 layers' packed weights."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total + sum(m.weight_bytes for m in model.modules() if isinstance(m, Int8Linear))


def quantize(model: nn.Module, scheme: str = "int8") -> nn.Module:
    """Replace ``model``'s linear layers with :class:`Int8Linear` (in place) and return the model, in eval mode.

    CPU only; the model is for inference from then on. Raises :class:`UserError` for a scheme other than
    ``int8``, a model on another device, or linear layers that are not plain ``nn.Linear`` (LoRA adapters:
    merge them first).
    """
    if scheme not in SCHEMES:
        raise UserError(f"--quantize {scheme}: not offered; use --quantize {' or '.join(SCHEMES)}")
    devices = {t.device.type for t in model.parameters()}
    if devices - {"cpu"}:
        raise UserError(f"--quantize {scheme} runs on CPU only (the model is on {', '.join(sorted(devices))}); "
                        "use --device cpu")
    odd = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.Linear) and type(m) is not nn.Linear})
    if odd:
        raise UserError(f"--quantize {scheme}: the model has {', '.join(odd)} layers; merge the adapters into plain "
                        "weights first (gpt2kit.model.lora.merge_lora)")
    targets = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(m))
    return model.eval()


def quantize_and_describe(model: nn.Module, scheme: str = "int8") -> str:
    """:func:`quantize` ``model`` in place; returns the line that says what it did (weights' MB before and after)."""
    before = weight_bytes(model)
    quantize(model, scheme)
    return f"quantized to {scheme}: weights {before / 1e6:.1f} MB -> {weight_bytes(model) / 1e6:.1f} MB"
