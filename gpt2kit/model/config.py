"""GPT-2 model configuration and its presets.

Presets are plain functions in a small table (``MODEL_PRESETS``); a command-line flag overrides a
preset field. ``GPTConfig`` validates itself so an impossible model fails at construction with a
message naming the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GPT2_VOCAB_SIZE = 50257

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "padded_vocab_size", "bias")
"""GPTConfig fields that fix the weights' shapes: a resumed run must match them."""

# transformers.GPT2Config options whose other values change the architecture gpt2kit implements
_HF_FIXED_OPTIONS: dict[str, bool] = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}


@dataclass
class GPTConfig:
    """Shape and regularisation of a GPT-2 model."""

    block_size: int = 1024
    """Context length T: the most positions the model can attend over."""
    vocab_size: int = GPT2_VOCAB_SIZE
    """Real vocabulary size V (GPT-2 BPE: 50257)."""
    padded_vocab_size: int | None = None
    """Embedding rows allocated (e.g. 50304, a multiple of 64, for faster matmuls); ids >= vocab_size are never
    sampled."""
    n_layer: int = 12
    """Number of transformer blocks L."""
    n_head: int = 12
    """Attention heads per block nh."""
    n_embd: int = 768
    """Residual stream width C; must be divisible by n_head."""
    dropout: float = 0.0
    """Dropout probability on attention weights and residual branches (0 for pretraining, as GPT-2 124M
    reproductions)."""
    bias: bool = True
    """Biases in Linear and LayerNorm layers (GPT-2 has them)."""
    layer_norm_epsilon: float = 1e-5
    """LayerNorm epsilon (GPT-2: 1e-5)."""

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"allowed n_head values for n_embd={self.n_embd}: "
                f"{[h for h in range(1, min(self.n_embd, 64) + 1) if self.n_embd % h == 0]}"
            )
        if self.padded_vocab_size is None:
            self.padded_vocab_size = self.vocab_size
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(
                f"GPTConfig.padded_vocab_size ({self.padded_vocab_size}) must be >= vocab_size ({self.vocab_size})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_epsilon <= 0:
            raise ValueError(f"GPTConfig.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")

    @property
    def head_size(self) -> int:
        """Channels per attention head hs = C / nh."""
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON and checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_hf(cls, hf: Any, dropout: float | None = None) -> GPTConfig:
        """The GPTConfig of a ``transformers.GPT2Config`` (or its ``to_dict()``); options gpt2kit lacks are refused.

        Missing dict keys take GPT2Config's defaults. ``dropout``, when given, replaces the config's
        ``resid_pdrop``/``embd_pdrop``/``attn_pdrop`` (which must otherwise be equal: gpt2kit has one dropout).
        """
        d = hf.to_dict() if hasattr(hf, "to_dict") else hf
        if not isinstance(d, dict):
            raise ValueError(f"GPTConfig.from_hf needs a transformers.GPT2Config or its dict, got {type(hf).__name__}")
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"model_type is {d['model_type']!r}; gpt2kit builds only GPT-2 ('gpt2') models")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation_function {act!r} is not supported; GPT-2 uses 'gelu_new' (tanh GELU)")
        n_embd = d.get("n_embd", 768)
        if d.get("n_inner") not in (None, 4 * n_embd):
            raise ValueError(f"n_inner {d['n_inner']} is not supported; gpt2kit's MLP is 4 * n_embd wide "
                             "(n_inner=None)")
        for option, gpt2_value in _HF_FIXED_OPTIONS.items():
            if d.get(option, gpt2_value) != gpt2_value:
                raise ValueError(f"{option}={d[option]!r} is not supported; gpt2kit's GPT-2 has "
                                 f"{option}={gpt2_value!r}")
        if dropout is None:
            pdrops = {k: d.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
            if len(set(pdrops.values())) > 1:
                raise ValueError(f"{pdrops} differ; gpt2kit has one dropout for all three: set them equal")
            dropout = pdrops["resid_pdrop"]
        return cls(
            block_size=d.get("n_positions", d.get("n_ctx", 1024)),
            vocab_size=d.get("vocab_size", GPT2_VOCAB_SIZE),
            n_layer=d.get("n_layer", 12),
            n_head=d.get("n_head", 12),
            n_embd=n_embd,
            dropout=dropout,
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
        )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset with fields overridden (``None`` overrides are ignored)."""
        name = MODEL_PRESET_ALIASES.get(name, name)
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {name!r}; allowed: {', '.join(MODEL_PRESETS)}")
        cfg = MODEL_PRESETS[name]()
        fields = cfg.to_dict()
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(fields)


def gpt2() -> GPTConfig:
    """GPT-2 small, 124M parameters."""
    return GPTConfig(n_layer=12, n_head=12, n_embd=768)


def gpt2_medium() -> GPTConfig:
    """GPT-2 medium, 350M parameters."""
    return GPTConfig(n_layer=24, n_head=16, n_embd=1024)


def gpt2_large() -> GPTConfig:
    """GPT-2 large, 774M parameters."""
    return GPTConfig(n_layer=36, n_head=20, n_embd=1280)


def gpt2_xl() -> GPTConfig:
    """GPT-2 XL, 1558M parameters."""
    return GPTConfig(n_layer=48, n_head=25, n_embd=1600)


def demo_cpu() -> GPTConfig:
    """The README demo's model: 4 layers, 96 wide, 128-token context (about 10M parameters, most in the embedding)."""
    return GPTConfig(n_layer=4, n_head=4, n_embd=96, block_size=128)


def tiny() -> GPTConfig:
    """A 2-layer, 32-wide model for tests (GPT-2 vocabulary, 64-token context)."""
    return GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)


def small_test() -> GPTConfig:
    """A 4-layer, 128-wide model for quick CPU experiments."""
    return GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=256)


MODEL_PRESETS: dict[str, Callable[[], GPTConfig]] = {
    "gpt2": gpt2,
    "gpt2-medium": gpt2_medium,
    "gpt2-large": gpt2_large,
    "gpt2-xl": gpt2_xl,
    "demo-cpu": demo_cpu,
    "tiny": tiny,
    "small": small_test,
}
"""Model presets by name; the training presets of the same names (gpt2kit.train.presets.PRESETS) train these."""

MODEL_PRESET_ALIASES: dict[str, str] = {"gpt2-124m": "gpt2"}
"""Other names a preset answers to."""
