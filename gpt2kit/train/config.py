"""Training configuration: typed dataclasses, presets as functions, and command-line flags made from them.

- :class:`LoopConfig` holds what every training job needs (optimizer, schedule, batch, precision, logging,
  evaluation and checkpoint cadence, run directory, resume). Fine-tuning configs subclass it.
- :class:`TrainConfig` adds the model shape and the pretraining data.
- Presets (``gpt2-124m``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``demo-cpu``) are functions in
  :data:`PRESETS` returning a :class:`TrainConfig`.
- :func:`add_config_arguments` turns every field into a flag (``n_layer`` -> ``--n-layer``) whose help is the
  field's docstring; :func:`overrides_from_args` returns only the flags the user gave, so they override a preset
  or a resumed run's saved config and nothing else.

A field's docstring is the string literal right after it in the class body (read with :mod:`ast`, once).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from gpt2kit.errors import UserError


@dataclass
class LoopConfig:
    """Everything the training loop needs that is not the model or the data."""

    out: str = "runs/gpt2kit"
    """Run directory: checkpoints/, metrics.jsonl, train_config.json and TensorBoard logs go here."""
    resume: str | None = None
    """'auto' continues from the run directory's latest checkpoint (starts fresh when there is none);
    a checkpoint file or run directory resumes from it."""
    seed: int = 1337
    """Random seed for weights, data order and dropout."""
    device: str = "auto"
    """cpu, cuda, cuda:N, mps, or auto (under torchrun each rank uses cuda:LOCAL_RANK)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute precision: bfloat16 runs matmuls under torch.autocast (weights and optimizer stay float32)."""
    compile: bool = False
    """torch.compile the model (needs a C++ compiler on CPU; the first steps are slow while it compiles)."""
    tf32: bool = True
    """Allow TF32 matmuls on NVIDIA GPUs (float32 runs only; no effect on CPU)."""
    fused_adamw: bool | None = None
    """Fused AdamW kernel; default: on for CUDA and CPU, off elsewhere."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism under torchrun: ddp (a full model per device) or fsdp (fully_shard: parameters,
    gradients and optimizer state sharded)."""
    batch_size: int = 8
    """Micro-batch: sequences per device per forward/backward."""
    total_batch_tokens: int | None = None
    """Global batch per optimizer step in tokens; gradient accumulation = this / (batch_size * block_size *
    world_size). Default: one micro-batch per device."""
    max_steps: int | None = None
    """Stop after this optimizer step (default: the end of the learning-rate schedule); does not change the schedule."""
    schedule_steps: int = 1000
    """Length of the learning-rate schedule in optimizer steps (warmup + decay to min_lr_ratio * lr)."""
    warmup_steps: int = 100
    """Linear warmup from lr/warmup_steps to lr over this many steps."""
    lr: float = 6e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay shape after warmup."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to 2-D parameters (matmul weights, embeddings) only."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    log_every: int = 10
    """Write a metrics.jsonl line (and TensorBoard scalars) every this many steps."""
    eval_every: int = 250
    """Evaluate (validation loss, HellaSwag, samples) every this many steps and at the end (0: only at the end)."""
    eval_batches: int = 20
    """Validation batches of batch_size sequences per evaluation, over all ranks (fixed, the same every time)."""
    save_every: int = 1000
    """Save a checkpoint every this many steps (and at the end, on SIGTERM/SIGINT, and when validation loss
    improves)."""
    keep_last: int = 3
    """Keep this many most recent step checkpoints, plus the best by validation loss."""
    save_best: bool = True
    """Also save a checkpoint whenever validation loss reaches a new best."""
    on_nan: Literal["stop", "skip"] = "stop"
    """On a NaN/inf loss or gradient norm: stop (keeping the last good checkpoint) or skip that step's update."""
    max_skipped_steps: int = 10
    """With --on-nan skip, stop after this many consecutive skipped steps."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    tensorboard: bool = True
    """Also log scalars to RUN/tensorboard when the tensorboard package is installed."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the flag when a value is out of range."""
        _positive(self, "batch_size", "schedule_steps", "log_every", "eval_batches", "save_every", "keep_last",
                  "max_skipped_steps")
        _nonneg(self, "warmup_steps", "eval_every", "weight_decay", "grad_clip")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"--max-steps must be >= 0, got {self.max_steps}")
        if self.total_batch_tokens is not None and self.total_batch_tokens <= 0:
            raise ValueError(f"--total-batch-tokens must be > 0, got {self.total_batch_tokens}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"--eps must be > 0, got {self.eps}")
        if self.warmup_steps > self.schedule_steps:
            raise ValueError(
                f"--warmup-steps ({self.warmup_steps}) must be <= --schedule-steps ({self.schedule_steps})"
            )
        _check_choices(self)

    @property
    def last_step(self) -> int:
        """The step the run stops after: max_steps, else schedule_steps."""
        return self.schedule_steps if self.max_steps is None else self.max_steps

    def grad_accum_steps(self, sequence_tokens: int, world_size: int) -> int:
        """Micro-steps per optimizer step so that the global batch is ``total_batch_tokens``.

        ``sequence_tokens`` is the length of one training sequence (block_size for pretraining).
        """
        per_round = self.batch_size * sequence_tokens * world_size  # tokens of one micro-step on every device
        if self.total_batch_tokens is None:
            return 1
        if self.total_batch_tokens % per_round != 0:
            raise UserError(
                f"--total-batch-tokens {self.total_batch_tokens} is not divisible by batch_size * block_size * "
                f"world_size = {self.batch_size} * {sequence_tokens} * {world_size} = {per_round}; "
                f"use a multiple of {per_round} or change --batch-size/--block-size"
            )
        return self.total_batch_tokens // per_round

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based): linear warmup, then the decay shape to min_lr_ratio."""
        lr, min_lr = self.lr, self.lr * self.min_lr_ratio
        if step < self.warmup_steps:
            return lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return lr
        if step >= self.schedule_steps:
            return min_lr
        decay = self.schedule_steps - self.warmup_steps
        ratio = 1.0 if decay == 0 else (step - self.warmup_steps) / decay  # 0 -> 1
        if self.lr_schedule == "linear":
            coeff = 1.0 - ratio
        else:
            import math

            coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
        return min_lr + coeff * (lr - min_lr)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON and checkpoint safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        return cls(**d)


@dataclass
class TrainConfig(LoopConfig):
    """Pretraining: the loop settings plus the model shape and the data."""

    preset: str | None = None
    """The preset these settings started from (recorded for the run's train_config.json)."""
    data: str | None = None
    """Prepared data directory (gpt2kit prepare) with train and val splits."""
    n_layer: int = 12
    """Transformer blocks L."""
    n_head: int = 12
    """Attention heads per block."""
    n_embd: int = 768
    """Residual stream width C (divisible by n_head)."""
    block_size: int = 1024
    """Context length T of the model and of every training window."""
    fused_loss: bool = True
    """Output layer + cross-entropy in one memory-lean step (gpt2kit.train.lm_loss; eager runs without FSDP)."""
    padded_vocab_size: int = 50304
    """Embedding rows allocated (>= 50257; a multiple of 64 makes the output matmul faster)."""
    dropout: float = 0.0
    """Dropout probability (0 for pretraining)."""
    bias: bool = True
    """Biases in Linear and LayerNorm layers (GPT-2 has them)."""
    hellaswag: str | None = None
    """HellaSwag jsonl file to score every hellaswag_every steps ('download' fetches the official validation set)."""
    hellaswag_every: int = 250
    """Score HellaSwag every this many steps when --hellaswag is given (0: only at the end)."""
    hellaswag_limit: int | None = None
    """Score only the first N HellaSwag examples (default: all 10042)."""
    samples: int = 2
    """Sample generations logged at each evaluation (0: none)."""
    sample_tokens: int = 48
    """Tokens per logged sample."""
    sample_prompt: str = "Hello, I'm a language model,"
    """Prompt of the logged samples."""
    export_hf: bool = False
    """At the end also write the final model in Hugging Face format to RUN/hf."""

    def validate(self) -> None:
        super().validate()
        _positive(self, "n_layer", "n_head", "n_embd", "block_size", "sample_tokens")
        _nonneg(self, "hellaswag_every", "samples")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})")
        if self.padded_vocab_size < 50257:
            raise ValueError(
                f"--padded-vocab-size must be >= 50257 (the GPT-2 vocabulary), got {self.padded_vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.hellaswag_limit is not None and self.hellaswag_limit < 1:
            raise ValueError(f"--hellaswag-limit must be >= 1, got {self.hellaswag_limit}")

    def model_config(self):
        """The :class:`~gpt2kit.model.config.GPTConfig` these settings describe."""
        from gpt2kit.model.config import GPTConfig

        return GPTConfig(
            n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, block_size=self.block_size,
            padded_vocab_size=self.padded_vocab_size, dropout=self.dropout, bias=self.bias,
        )


MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "padded_vocab_size", "bias")
"""TrainConfig fields that fix the weights' shapes: a resumed run may not change them."""


# ---------------------------------------------------------------------------------------------- presets

def _gpt2_recipe(**kw: Any) -> TrainConfig:
    """The GPT-2/GPT-3 small recipe as in build-nanogpt: 0.5M-token batches, 10B tokens, bf16, compile."""
    base = dict(
        n_layer=12, n_head=12, n_embd=768, block_size=1024, padded_vocab_size=50304, dropout=0.0,
        batch_size=64, total_batch_tokens=524_288, lr=6e-4, min_lr_ratio=0.1, warmup_steps=715,
        schedule_steps=19_073, lr_schedule="cosine", weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
        grad_clip=1.0, dtype="bfloat16", compile=True, tf32=True, fused_adamw=None,
        log_every=10, eval_every=250, eval_batches=20, save_every=1000, hellaswag_every=250,
    )
    base.update(kw)
    return TrainConfig(**base)


def gpt2_124m() -> TrainConfig:
    """GPT-2 124M on 10B tokens: 19,073 steps of 524,288 tokens, max lr 6e-4, 715 warmup steps (build-nanogpt)."""
    return _gpt2_recipe(preset="gpt2-124m", out="runs/gpt2-124m")


def gpt2_medium() -> TrainConfig:
    """GPT-2 medium (350M) on 10B tokens: GPT-3 Medium's lr 3e-4 and 0.5M-token batches."""
    return _gpt2_recipe(preset="gpt2-medium", out="runs/gpt2-medium", n_layer=24, n_head=16, n_embd=1024,
                        batch_size=32, lr=3e-4)


def gpt2_large() -> TrainConfig:
    """GPT-2 large (774M) on 10B tokens: GPT-3 Large's lr 2.5e-4 and 0.5M-token batches."""
    return _gpt2_recipe(preset="gpt2-large", out="runs/gpt2-large", n_layer=36, n_head=20, n_embd=1280,
                        batch_size=16, lr=2.5e-4)


def gpt2_xl() -> TrainConfig:
    """GPT-2 XL (1.5B) on 10B tokens: GPT-3 XL's lr 2e-4 and 1M-token batches (9,537 steps, 358 warmup)."""
    return _gpt2_recipe(preset="gpt2-xl", out="runs/gpt2-xl", n_layer=48, n_head=25, n_embd=1600,
                        batch_size=8, lr=2e-4, total_batch_tokens=1_048_576, schedule_steps=9_537,
                        warmup_steps=358)


def demo_cpu() -> TrainConfig:
    """The README demo: a small GPT-2 trained for about 7.5 minutes on 2 CPU cores (settings measured, see docs/training.md)."""
    return TrainConfig(
        preset="demo-cpu", out="runs/demo", n_layer=4, n_head=4, n_embd=96, block_size=128,
        padded_vocab_size=50304, dropout=0.0, batch_size=8, total_batch_tokens=None, lr=3e-3, min_lr_ratio=0.1,
        warmup_steps=30, schedule_steps=1600, lr_schedule="cosine", weight_decay=0.1, beta1=0.9, beta2=0.95,
        grad_clip=1.0, dtype="bfloat16", compile=False, log_every=10, eval_every=200, eval_batches=20,
        save_every=400, keep_last=2, samples=2, sample_tokens=48, sample_prompt="The ",
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "gpt2-124m": gpt2_124m,
    "gpt2-medium": gpt2_medium,
    "gpt2-large": gpt2_large,
    "gpt2-xl": gpt2_xl,
    "demo-cpu": demo_cpu,
}


def get_preset(name: str) -> TrainConfig:
    """The preset ``name``; a UserError naming --preset and the choices when unknown."""
    if name not in PRESETS:
        raise UserError(f"--preset {name!r} is unknown; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


def resolve_config(base: TrainConfig | LoopConfig, overrides: dict[str, Any]):
    """``base`` with ``overrides`` applied and validated; a bad value becomes a UserError naming its flag."""
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"unknown settings {unknown}")
    fields = dataclasses.asdict(base)
    fields.update(overrides)
    try:
        return type(base)(**fields)
    except ValueError as e:
        raise UserError(str(e)) from None


# ------------------------------------------------------------------------------------ flags from fields

@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings of a dataclass's fields (the string literal after each field), base classes included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def flag_name(field_name: str) -> str:
    """``total_batch_tokens`` -> ``--total-batch-tokens``."""
    return "--" + field_name.replace("_", "-")


def _parse_optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        if kind is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"{text!r} is not true/false/none")
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__} (or 'none')") from None

    parse.__name__ = kind.__name__
    return parse


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *, skip: tuple[str, ...] = (),
    defaults_from: Any = None,
) -> None:
    """Add one flag per field of dataclass ``cls``; absent flags leave no attribute (see :func:`overrides_from_args`).

    Help text is the field's docstring plus its default (taken from ``defaults_from`` when given, e.g. a preset).
    Booleans get ``--x/--no-x``; ``X | None`` fields accept ``none``; ``Literal`` fields list their choices.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    ref = defaults_from
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        default = getattr(ref, f.name) if ref is not None else (
            f.default if f.default is not dataclasses.MISSING else None)
        help_text = docs.get(f.name, "")
        if default not in (None, ""):  # None/empty mean "not set"; the docstring says what happens then
            help_text += f" [default: {default}]"
        help_text = help_text.replace("%", "%%")
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        args = typing.get_args(hint)
        optional = type(None) in args
        inner = [a for a in args if a is not type(None)] if optional else [hint]
        base = inner[0] if len(inner) == 1 else str
        if typing.get_origin(base) is Literal:
            kw["choices"] = list(typing.get_args(base))
            kw["type"] = str
        elif base is bool and not optional:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _parse_optional(base) if optional else base
            kw["metavar"] = {int: "N", float: "X", str: "VALUE", bool: "BOOL"}.get(base, "VALUE")
        parser.add_argument(flag_name(f.name), **kw)


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


# ------------------------------------------------------------------------------------------ validation

def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{flag_name(name)} must be an integer >= 1, got {value!r}")


def _nonneg(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{flag_name(name)} must be >= 0, got {value!r}")


def _check_choices(cfg: Any) -> None:
    for name, hint in typing.get_type_hints(type(cfg)).items():
        if typing.get_origin(hint) is Literal and getattr(cfg, name) not in typing.get_args(hint):
            raise ValueError(
                f"{flag_name(name)} must be one of {list(typing.get_args(hint))}, got {getattr(cfg, name)!r}")
