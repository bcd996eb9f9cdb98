"""LoRA settings: which Linear layers of each block get adapters, their rank, scale and dropout.

Plain data, apart from :mod:`gpt2kit.model.lora` (which imports torch), so the fine-tuning flags can be
built without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TARGET_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
"""Every Linear layer of a block that LoRA can adapt (names relative to the block)."""

TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "all": TARGET_LAYERS,
    "attn": ("attn.c_attn", "attn.c_proj"),
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
    "c_attn": ("attn.c_attn",),
    "c_fc": ("mlp.c_fc",),
    "c_proj": ("attn.c_proj", "mlp.c_proj"),
    **{name: (name,) for name in TARGET_LAYERS},
}
"""What each ``--lora-targets`` word selects."""


def parse_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """The block-relative layer names selected by ``targets`` (comma-separated words or a list), in block order."""
    words = [w.strip() for w in (targets.split(",") if isinstance(targets, str) else targets) if w.strip()]
    if not words:
        raise ValueError(f"--lora-targets is empty; choose from: {', '.join(TARGET_ALIASES)}")
    chosen: set[str] = set()
    for w in words:
        if w not in TARGET_ALIASES:
            raise ValueError(f"--lora-targets: unknown target {w!r}; choose from: {', '.join(TARGET_ALIASES)}")
        chosen.update(TARGET_ALIASES[w])
    return tuple(name for name in TARGET_LAYERS if name in chosen)


@dataclass
class LoRAConfig:
    """Where LoRA adapters go and how large they are."""

    rank: int = 8
    """Rank r of each adapter (A is r x in, B is out x r)."""
    alpha: float = 16.0
    """Scale numerator: the adapter's output is multiplied by alpha / rank."""
    targets: tuple[str, ...] = TARGET_LAYERS
    """Block-relative Linear layers to adapt (see :data:`TARGET_LAYERS`)."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training."""
    blocks: tuple[int, ...] | None = None
    """Indices of the blocks that get adapters (None: every block)."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"--lora-rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"--lora-alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        self.targets = parse_targets(self.targets)
        if self.blocks is not None:
            self.blocks = tuple(int(b) for b in self.blocks)

    @property
    def scaling(self) -> float:
        """alpha / rank, the factor on the adapter's output."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints."""
        return {"rank": self.rank, "alpha": float(self.alpha), "targets": list(self.targets),
                "dropout": float(self.dropout), "blocks": None if self.blocks is None else list(self.blocks)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoRAConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(rank=int(d["rank"]), alpha=float(d["alpha"]), targets=tuple(d["targets"]),
                   dropout=float(d.get("dropout", 0.0)), blocks=None if d.get("blocks") is None else tuple(d["blocks"]))
