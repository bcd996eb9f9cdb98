"""LoRA: low-rank adapters on a GPT's Linear layers, applied from outside the pure model.

A LoRA layer computes ``y = x W^T + b + (alpha / r) * dropout(x) A^T B^T`` with the pretrained ``W`` and
``b`` frozen and only ``A`` (r, in) and ``B`` (out, r) trained (Hu et al., 2021). ``B`` starts at zero, so a
freshly adapted model computes exactly what the original did.

:class:`LoRALinear` *is* an ``nn.Linear`` (same ``weight``/``bias`` parameter names) with two extra
parameters, so an adapted model's state dict is the plain model's keys plus ``*.lora_A``/``*.lora_B``.
That keeps the one checkpoint loader working unchanged: a LoRA checkpoint is merged back into plain
weights with :func:`merge_lora_state_dict` (what :func:`gpt2kit.checkpoint.load_model` does), or an
adapted module is turned back into plain ``nn.Linear`` layers with :func:`merge_lora`.

Targets name Linear layers inside each block: ``attn.c_attn`` (q, k, v), ``attn.c_proj``, ``mlp.c_fc``,
``mlp.c_proj``. Shorthands: ``c_attn``, ``c_fc``, ``c_proj`` (both projections), ``attn``, ``mlp``, ``all``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2kit.model.lora_config import TARGET_ALIASES, TARGET_LAYERS, LoRAConfig, parse_targets

__all__ = [
    "TARGET_ALIASES", "TARGET_LAYERS", "LoRAConfig", "LoRALinear", "apply_lora", "is_lora_key", "lora_parameters",
    "merge_lora", "merge_lora_state_dict", "parse_targets",
]


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a trainable low-rank update; ``weight`` and ``bias`` keep their names and are frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        # nn.Linear.__init__ would allocate and initialise a second weight only to throw it away
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), shared with ``base``
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank = rank
        self.scaling = alpha / rank
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))  # (out, r)
        self.lora_dropout = nn.Dropout(dropout)
        # A as nn.Linear's default init (and the LoRA paper's), B zero: the update starts at exactly zero
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if getattr(base, "residual_projection", False):
            self.residual_projection = True

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to ``weight``: (alpha / r) * B A, shape (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)  # (..., out)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return base + update * self.scaling

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` whose weight is ``weight + delta_weight()``."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        if getattr(self, "residual_projection", False):
            out.residual_projection = True
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, scaling={self.scaling:g}"


def _blocks(model: nn.Module) -> nn.ModuleList:
    try:
        return model.transformer.h  # type: ignore[union-attr]
    except AttributeError:
        raise ValueError("LoRA needs a gpt2kit GPT (model.transformer.h holds its blocks)") from None


def _get(module: nn.Module, dotted: str) -> tuple[nn.Module, str, nn.Module]:
    parent_name, _, leaf = dotted.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    return parent, leaf, getattr(parent, leaf)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Replace the targeted Linear layers of ``model``'s blocks with :class:`LoRALinear` (in place).

    Freezes every parameter of ``model`` except the adapters; a caller that also trains other parameters
    (a classification head) turns their ``requires_grad`` back on. Returns the adapted layer names.
    """
    blocks = _blocks(model)
    wanted = range(len(blocks)) if config.blocks is None else config.blocks
    for i in wanted:
        if not 0 <= i < len(blocks):
            raise ValueError(f"LoRA block index {i} is out of range for a {len(blocks)}-block model")
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for i in wanted:
        for target in config.targets:
            parent, leaf, layer = _get(blocks[i], target)
            if isinstance(layer, LoRALinear):
                raise ValueError(f"transformer.h.{i}.{target} already has a LoRA adapter")
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"transformer.h.{i}.{target} is a {type(layer).__name__}, not a Linear layer")
            setattr(parent, leaf, LoRALinear(layer, config.rank, config.alpha, config.dropout))
            names.append(f"transformer.h.{i}.{target}")
    return names


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every :class:`LoRALinear` of ``model`` into a plain ``nn.Linear`` (in place); returns ``model``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, leaf, _ = _get(model, name)
            setattr(parent, leaf, module.to_linear())
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (``lora_A``, ``lora_B``) of ``model``."""
    return [p for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))]


def is_lora_key(key: str) -> bool:
    """Whether a state-dict key is an adapter tensor."""
    return key.endswith((".lora_A", ".lora_B"))


def merge_lora_state_dict(sd: dict[str, torch.Tensor], config: LoRAConfig, source: str = "checkpoint"
                          ) -> dict[str, torch.Tensor]:
    """A plain state dict: every ``X.weight`` with adapters ``X.lora_A``/``X.lora_B`` becomes ``W + (alpha/r) B A``.

    The adapter keys are dropped; all other tensors are returned unchanged. Arithmetic is in float32
    and the result is cast back to the weight's dtype.
    """
    out = {k: v for k, v in sd.items() if not is_lora_key(k)}
    for key in sd:
        if not key.endswith(".lora_A"):
            continue
        prefix = key[: -len(".lora_A")]
        a, b = sd[key], sd.get(prefix + ".lora_B")
        w = out.get(prefix + ".weight")
        if b is None or w is None:
            raise ValueError(f"{source}: LoRA adapter {prefix} is incomplete (needs .weight, .lora_A and .lora_B)")
        if tuple(a.shape) != (config.rank, w.shape[1]) or tuple(b.shape) != (w.shape[0], config.rank):
            raise ValueError(
                f"{source}: LoRA adapter {prefix} has A {tuple(a.shape)} and B {tuple(b.shape)}, "
                f"which do not fit weight {tuple(w.shape)} at rank {config.rank}"
            )
        delta = (b.float() @ a.float()) * config.scaling  # (out, in)
        out[prefix + ".weight"] = (w.float() + delta).to(w.dtype)
    stray = [k for k in sd if k.endswith(".lora_B") and k[: -len(".lora_B")] + ".lora_A" not in sd]
    if stray:
        raise ValueError(f"{source}: LoRA adapter {stray[0]} has no matching lora_A")
    return out
