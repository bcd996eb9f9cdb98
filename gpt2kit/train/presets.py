"""Training presets: functions returning a :class:`~gpt2kit.train.config.TrainConfig`.

``gpt2``, ``gpt2-muon``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl`` and ``demo-cpu`` (``gpt2-124m`` is
another name for ``gpt2``, ``gpt2-124m-muon`` for ``gpt2-muon``). Each takes its model from the model preset of
the same name (:data:`~gpt2kit.model.config.MODEL_PRESETS`; ``gpt2-muon`` trains ``gpt2``). A preset is a
table of flat settings, the same names as the flags, so a flag overrides it field by field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpt2kit.errors import UserError
from gpt2kit.model.config import MODEL_PRESET_ALIASES
from gpt2kit.train.config import TrainConfig, pretraining_model


def _gpt2_recipe(preset: str, model: str | None = None, **kw: Any) -> TrainConfig:
    """The GPT-2/GPT-3 small recipe as in build-nanogpt: 0.5M-token batches, 10B tokens, bf16, compile; the model
    is the model preset ``model`` (default: the one of the same name)."""
    base = dict(
        preset=preset, out=f"runs/{preset}", model=pretraining_model(model or preset),
        batch_size=64, total_batch_tokens=524_288, lr=6e-4, min_lr_ratio=0.1, warmup_steps=715,
        schedule_steps=19_073, lr_schedule="cosine", weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
        grad_clip=1.0, dtype="bfloat16", compile=True, tf32=True, fused_adamw=None,
        log_every=10, eval_every=250, eval_batches=20, save_every=1000, hellaswag_every=250,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def gpt2() -> TrainConfig:
    """GPT-2 124M on 10B tokens: 19,073 steps of 524,288 tokens, max lr 6e-4, 715 warmup steps (build-nanogpt)."""
    return _gpt2_recipe("gpt2")


def gpt2_medium() -> TrainConfig:
    """GPT-2 medium (350M) on 10B tokens: GPT-3 Medium's lr 3e-4 and 0.5M-token batches."""
    return _gpt2_recipe("gpt2-medium", batch_size=32, lr=3e-4)


def gpt2_large() -> TrainConfig:
    """GPT-2 large (774M) on 10B tokens: GPT-3 Large's lr 2.5e-4 and 0.5M-token batches."""
    return _gpt2_recipe("gpt2-large", batch_size=16, lr=2.5e-4)


def gpt2_xl() -> TrainConfig:
    """GPT-2 XL (1.5B) on 10B tokens: GPT-3 XL's lr 2e-4 and 1M-token batches (9,537 steps, 358 warmup)."""
    return _gpt2_recipe("gpt2-xl", batch_size=8, lr=2e-4, total_batch_tokens=1_048_576, schedule_steps=9_537,
                        warmup_steps=358)


def gpt2_muon() -> TrainConfig:
    """GPT-2 124M with Muon (lr 0.02, momentum 0.95 ramped from 0.85 over 300 steps) for the blocks' matrices,
    AdamW (lr 6e-4) for the rest, and the WSD schedule (decay over the last 30%): the settings that did best in
    benchmarks/optimizers.py on CPU-sized models (see benchmarks/RESULTS.md)."""
    return _gpt2_recipe("gpt2-muon", model="gpt2", optimizer="muon", muon_lr=0.02, muon_momentum=0.95,
                        muon_momentum_warmup_steps=300, muon_weight_decay=0.0, muon_adjust_lr_fn="original",
                        lr_schedule="wsd", decay_fraction=0.3)


def demo_cpu() -> TrainConfig:
    """The README demo: a small GPT-2 sized to train on a laptop CPU in minutes: Muon (lr 0.02) for the blocks'
    matrices, AdamW (lr 3e-3) for the rest, WSD schedule (benchmarks/optimizers.py; see benchmarks/RESULTS.md)."""
    return TrainConfig.from_dict(dict(
        preset="demo-cpu", out="runs/demo", model=pretraining_model("demo-cpu"), batch_size=8,
        total_batch_tokens=None, lr=3e-3, min_lr_ratio=0.1, warmup_steps=30, schedule_steps=1600,
        optimizer="muon", muon_lr=0.02, lr_schedule="wsd", decay_fraction=0.3, weight_decay=0.1, beta1=0.9,
        beta2=0.95, grad_clip=1.0, dtype="auto",
        compile=False, log_every=10, eval_every=200, eval_batches=20, save_every=400, keep_last=2, samples=2,
        sample_tokens=48, sample_prompt="The",
    ))


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "gpt2": gpt2,
    "gpt2-muon": gpt2_muon,
    "gpt2-medium": gpt2_medium,
    "gpt2-large": gpt2_large,
    "gpt2-xl": gpt2_xl,
    "demo-cpu": demo_cpu,
}
"""Training presets by name: the same names as the model presets they train."""

PRESET_ALIASES: dict[str, str] = {
    **{k: v for k, v in MODEL_PRESET_ALIASES.items() if v in PRESETS},
    **{f"{k}-muon": f"{v}-muon" for k, v in MODEL_PRESET_ALIASES.items() if f"{v}-muon" in PRESETS},
}
"""Other names a preset answers to (``gpt2-124m`` -> ``gpt2``, ``gpt2-124m-muon`` -> ``gpt2-muon``)."""


def get_preset(name: str) -> TrainConfig:
    """The preset ``name``; a UserError naming --preset and the choices when unknown."""
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        raise UserError(f"--preset {name!r} is unknown; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
