"""Training configuration: typed dataclasses, presets as functions, and command-line flags made from them.

- :class:`LoopConfig` holds what every training job needs (optimizer, schedule, batch, precision, logging,
  evaluation and checkpoint cadence, run directory, resume). Fine-tuning configs subclass it.
- :class:`TrainConfig` adds the model (a :class:`~gpt2kit.model.config.GPTConfig`) and the pretraining data.
- Presets (``gpt2``, ``gpt2-muon``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``demo-cpu``; ``gpt2-124m``
  is another name for ``gpt2``, ``gpt2-124m-muon`` for ``gpt2-muon``) are functions in :data:`PRESETS` returning
  a :class:`TrainConfig`; each takes its model from the model preset of the same name
  (:data:`~gpt2kit.model.config.MODEL_PRESETS`; ``gpt2-muon`` trains ``gpt2``).
- :func:`add_config_arguments` turns every field into a flag (``n_layer`` -> ``--n-layer``) whose help is the
  field's docstring; the model's fields are flags of their own (:data:`MODEL_FLAGS`), so flags stay flat, and so
  does the saved form (:meth:`TrainConfig.to_dict`, train_config.json). :func:`overrides_from_args` returns only
  the flags the user gave, so they override a preset or a resumed run's saved config and nothing else.

A field's docstring is the string literal right after it in the class body (read with :mod:`ast`, once).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import difflib
import json
import math
import textwrap
import typing
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from gpt2kit.errors import UserError
from gpt2kit.model.config import MODEL_PRESET_ALIASES, MODEL_PRESETS, GPTConfig
from gpt2kit.train.schedule import lr_at


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
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    """Compute precision: bfloat16 runs matmuls under torch.autocast (weights and optimizer stay float32); auto
    picks bfloat16 where the device computes it natively (CUDA with bf16, a CPU with AVX-512 BF16/AMX), else
    float32 (emulated bfloat16 is many times slower)."""
    compile: bool = False
    """torch.compile the model (needs a C++ compiler on CPU; the first steps are slow while it compiles)."""
    tf32: bool = True
    """Allow TF32 matmuls on NVIDIA GPUs (float32 runs only; no effect on CPU)."""
    fused_adamw: bool | None = None
    """Fused AdamW kernel; default: on for CUDA and CPU, off elsewhere."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism under torchrun: ddp (a full model per device) or fsdp (fully_shard: parameters,
    gradients and optimizer state sharded)."""
    dist_timeout: float = 1800.0
    """Under torchrun: seconds a rank waits for the others (joining, every collective) before the job stops with
    a message naming the ranks that stopped answering; room for rank 0 writing a large checkpoint."""
    batch_size: int = 8
    """Micro-batch: sequences per device per forward/backward."""
    total_batch_tokens: int | None = None
    """Global batch per optimizer step in tokens; gradient accumulation = this / (batch_size * block_size *
    world_size). Default: one micro-batch per device."""
    max_steps: int | None = None
    """Stop after this optimizer step (default: the end of the learning-rate schedule)."""
    schedule_steps: int = 1000
    """Length of the learning-rate schedule in optimizer steps (warmup + decay to min_lr_ratio * lr)."""
    warmup_steps: int = 100
    """Linear warmup from lr/warmup_steps to lr over this many steps."""
    lr: float = 6e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    lr_schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """Decay shape after warmup; wsd (warmup-stable-decay): constant, then a linear decay to min_lr_ratio over
    the last --decay-fraction of the schedule (a pretraining run stopped before its decay can be extended by
    resuming with a longer schedule; see docs/training.md)."""
    decay_fraction: float = 0.2
    """With --lr-schedule wsd: the share of the schedule's steps, at its end, over which lr decays linearly."""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw for every parameter, or muon: torch.optim.Muon for the blocks' attention and MLP weights, AdamW
    (--lr, --beta1/2, --weight-decay) for embeddings, output layer, LayerNorms, biases, heads and LoRA adapters."""
    muon_lr: float = 0.02
    """Muon's peak learning rate (follows the same schedule as --lr); ~0.02 with --muon-adjust-lr-fn original,
    about AdamW's lr with match_rms_adamw."""
    muon_momentum: float = 0.95
    """Muon's (Nesterov) momentum."""
    muon_momentum_warmup_steps: int = 0
    """Ramp Muon's momentum linearly from 0.85 to --muon-momentum over this many steps (0: constant)."""
    muon_weight_decay: float = 0.0
    """Muon's decoupled weight decay: each step multiplies the matrices by 1 - muon_lr(t) * this."""
    muon_adjust_lr_fn: Literal["original", "match_rms_adamw"] = "original"
    """How Muon scales its lr per matrix of shape (out, in): original (Keller Jordan) multiplies by
    sqrt(max(1, out/in)); match_rms_adamw (Moonshot) by 0.2 * sqrt(max(out, in)), so the update's RMS matches
    AdamW's and AdamW's lr and weight decay carry over."""
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
    checkpoint_format: Literal["full", "sharded"] = "full"
    """full: one file, RUN/checkpoints/step_N.pt, written by rank 0 (FSDP gathers the whole state to it first);
    sharded: a directory, RUN/checkpoints/step_N.dcp, where every rank writes its own part in parallel with
    torch.distributed.checkpoint, for models whose whole state does not fit one host. Both resume on any world
    size (one process included, which then writes the directory alone) and load in sample, eval and export."""
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
        _positive(self, "batch_size", "log_every", "eval_batches", "save_every", "keep_last", "max_skipped_steps")
        if self.schedule_steps is not None:  # None: computed later (fine-tuning reads it off the data)
            _positive(self, "schedule_steps")
        _nonneg(self, "warmup_steps", "eval_every", "weight_decay", "grad_clip", "muon_momentum_warmup_steps",
                "muon_weight_decay")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"--max-steps must be >= 0, got {self.max_steps}")
        if self.total_batch_tokens is not None and self.total_batch_tokens <= 0:
            raise ValueError(f"--total-batch-tokens must be > 0, got {self.total_batch_tokens}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.dist_timeout < float("inf"):
            raise ValueError(f"--dist-timeout must be a number of seconds > 0, got {self.dist_timeout}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"--eps must be > 0, got {self.eps}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"--decay-fraction must be in (0, 1], got {self.decay_fraction}")
        if not self.muon_lr > 0:
            raise ValueError(f"--muon-lr must be > 0, got {self.muon_lr}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ValueError(f"--muon-momentum must be in [0, 1), got {self.muon_momentum}")
        if self.optimizer == "muon" and self.parallel == "fsdp":
            raise ValueError("--optimizer muon with --parallel fsdp: Muon orthogonalizes whole matrices; FSDP shards "
                             "them — use --parallel ddp or --optimizer adamw")
        if self.schedule_steps is not None and self.warmup_steps > self.schedule_steps:
            raise ValueError(
                f"--warmup-steps ({self.warmup_steps}) must be <= --schedule-steps ({self.schedule_steps})"
            )
        _check_choices(self)

    @property
    def last_step(self) -> int:
        """The step the run stops after: max_steps, else schedule_steps."""
        if self.max_steps is None and self.schedule_steps is None:
            raise ValueError("the schedule's length is not known yet (schedule_steps is None)")
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
        """Learning rate for optimizer step ``step`` (0-based); see :func:`gpt2kit.train.schedule.lr_at`."""
        return lr_at(step, self)

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


MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "padded_vocab_size", "dropout", "bias")
"""The :class:`~gpt2kit.model.config.GPTConfig` fields that ``gpt2kit train`` takes as flags (``--n-layer`` ...)."""

PADDED_VOCAB_SIZE = 50304
"""Embedding rows pretraining allocates: 50257 rounded up to a multiple of 64, for faster output matmuls."""


def _pretraining_model(preset: str = "gpt2") -> GPTConfig:
    return dataclasses.replace(MODEL_PRESETS[preset](), padded_vocab_size=PADDED_VOCAB_SIZE)


@dataclass
class TrainConfig(LoopConfig):
    """Pretraining: the loop settings plus the model and the data."""

    preset: str | None = None
    """The preset these settings started from (recorded for the run's train_config.json)."""
    data: str | None = None
    """Prepared data directory (gpt2kit prepare) with train and val splits."""
    model: GPTConfig = field(default_factory=_pretraining_model)
    """The model to train: its fields are flags of their own (--n-layer, --n-head, --n-embd, --block-size, ...)."""
    fused_loss: bool = True
    """Output layer + cross-entropy in one memory-lean step (gpt2kit.train.fused_head_loss; eager runs without FSDP)."""
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
    """At the end also write the final and the best model in Hugging Face format to RUN/hf-final and RUN/hf-best."""
    init_from: str | None = None
    """Start a new run (step 0, fresh optimizer and schedule) from these weights: gpt2 (or another hub name), a
    Hugging Face or OpenAI GPT-2 directory, a checkpoint file or a run directory; the model shape is theirs."""
    epochs: float | None = None
    """Train for this many passes over the train split: sets --schedule-steps (and the last step) from the split's
    tokens and the global batch."""

    def validate(self) -> None:
        super().validate()
        _positive(self, "sample_tokens")
        _nonneg(self, "hellaswag_every", "samples")
        if self.hellaswag_limit is not None and self.hellaswag_limit < 1:
            raise ValueError(f"--hellaswag-limit must be >= 1, got {self.hellaswag_limit}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"--epochs must be > 0, got {self.epochs}")

    def steps_for_epochs(self, train_tokens: int, tokens_per_step: int) -> int:
        """Optimizer steps for ``epochs`` passes over ``train_tokens`` at ``tokens_per_step`` (rounded up)."""
        if self.epochs is None:
            raise ValueError("--epochs is not set")
        return max(1, math.ceil(self.epochs * train_tokens / tokens_per_step))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, flat as the flags are: the model's fields sit beside the loop's (train_config.json)."""
        out: dict[str, Any] = {}
        for k, v in dataclasses.asdict(self).items():
            out.update(v if k == "model" else {k: v})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; a model error names its flag; unknown keys are an error naming them."""
        model_names = {f.name for f in dataclasses.fields(GPTConfig)}
        flat = {k: v for k, v in d.items() if k not in model_names}
        if isinstance(flat.get("model"), GPTConfig):
            model = flat.pop("model")
        else:
            shape = {**_pretraining_model().to_dict(), **(flat.pop("model", None) or {})}
            shape.update({k: v for k, v in d.items() if k in model_names})
            try:
                model = GPTConfig.from_dict(shape)
            except ValueError as e:
                raise ValueError(_with_flag_names(str(e))) from None
        return super().from_dict({**flat, "model": model})  # type: ignore[return-value]


def _with_flag_names(message: str) -> str:
    """A GPTConfig message with its field names spelled as the flags that set them (``--n-embd``)."""
    message = message.replace("GPTConfig.", "")
    return re.sub(r"\b(" + "|".join(MODEL_FLAGS) + r")\b", lambda m: flag_name(m.group(1)), message)


# ---------------------------------------------------------------------------------------------- presets

def _gpt2_recipe(preset: str, model: str | None = None, **kw: Any) -> TrainConfig:
    """The GPT-2/GPT-3 small recipe as in build-nanogpt: 0.5M-token batches, 10B tokens, bf16, compile; the model
    is the model preset ``model`` (default: the one of the same name)."""
    base = dict(
        preset=preset, out=f"runs/{preset}", model=_pretraining_model(model or preset),
        batch_size=64, total_batch_tokens=524_288, lr=6e-4, min_lr_ratio=0.1, warmup_steps=715,
        schedule_steps=19_073, lr_schedule="cosine", weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
        grad_clip=1.0, dtype="bfloat16", compile=True, tf32=True, fused_adamw=None,
        log_every=10, eval_every=250, eval_batches=20, save_every=1000, hellaswag_every=250,
    )
    base.update(kw)
    return TrainConfig(**base)


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
    AdamW (lr 6e-4) for the rest, and the WSD schedule (decay over the last 30%): Muon lr 0.02 and WSD were best in
    benchmarks/optimizers.py on CPU-sized models (RESULTS.md); not yet measured at 124M."""
    return _gpt2_recipe("gpt2-muon", model="gpt2", optimizer="muon", muon_lr=0.02, muon_momentum=0.95,
                        muon_momentum_warmup_steps=300, muon_weight_decay=0.0, muon_adjust_lr_fn="original",
                        lr_schedule="wsd", decay_fraction=0.3)


def demo_cpu() -> TrainConfig:
    """The README demo: a small GPT-2 trained in 8-11 minutes on 2 CPU cores: Muon (lr 0.02) for the blocks'
    matrices, AdamW (lr 3e-3) for the rest, WSD schedule (benchmarks/optimizers.py; see benchmarks/RESULTS.md)."""
    return TrainConfig(
        preset="demo-cpu", out="runs/demo", model=_pretraining_model("demo-cpu"), batch_size=8,
        total_batch_tokens=None, lr=3e-3, min_lr_ratio=0.1, warmup_steps=30, schedule_steps=1600,
        optimizer="muon", muon_lr=0.02, lr_schedule="wsd", decay_fraction=0.3, weight_decay=0.1, beta1=0.9,
        beta2=0.95, grad_clip=1.0, dtype="auto",
        compile=False, log_every=10, eval_every=200, eval_batches=20, save_every=400, keep_last=2, samples=2,
        sample_tokens=48, sample_prompt="The",
    )


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


def resolve_config(base: TrainConfig | LoopConfig, overrides: dict[str, Any]):
    """``base`` with ``overrides`` applied and validated; a bad value becomes a UserError naming its flag."""
    fields = base.to_dict()
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UserError(f"unknown settings {unknown}")
    fields.update(overrides)
    try:
        return type(base).from_dict(fields)
    except ValueError as e:
        raise UserError(str(e)) from None


def read_config_file(path: str) -> dict[str, Any]:
    """The settings in a JSON file as ``--print-config`` prints them; a UserError naming --config (and, for an
    unknown key, the closest setting)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file; write one with `gpt2kit train ... --print-config > {path}`")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: not valid JSON ({e}); write it with `gpt2kit train ... --print-config`") \
            from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a JSON object of settings (as --print-config prints)")
    known = list(TrainConfig().to_dict())
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1, cutoff=0.0)
            raise UserError(f"--config {path}: unknown setting {key!r}; did you mean {close[0]!r}?")
    return data


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
        if hint is GPTConfig:  # the model's fields are flags of their own
            add_config_arguments(parser, GPTConfig, skip=tuple(n for n in _field_names(GPTConfig)
                                                                if n not in MODEL_FLAGS or n in skip),
                                 defaults_from=getattr(ref, f.name) if ref is not None else f.default_factory())
            continue
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
    """The fields of ``cls`` (the model's flags included) that were given on the command line."""
    names = [*_field_names(cls), *(MODEL_FLAGS if issubclass(cls, TrainConfig) else ())]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


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
