"""Training settings: small section dataclasses that validate themselves, composed into the loop's config.

- :class:`LoopConfig` is what the training loop reads: ``run`` (out, resume, seed, max_steps), ``runtime``
  (device, dtype, compile, tf32, batch_size), ``dist``, ``optim``, ``schedule``, ``cadence`` (the run's length,
  global batch and how often it evaluates and saves: the settings fine-tuning derives from its data),
  ``logging``, ``ckpt`` and ``nan``.
- :class:`TrainConfig` (pretraining) adds the ``preset`` name, the ``model`` (a
  :class:`~gpt2kit.model.config.GPTConfig`), the ``pretrain`` data and start, and the ``evals`` it logs.

Flags stay flat (``--lr``, ``--n-layer``: each setting's flat name is its field's name, see
:mod:`gpt2kit.settings`), and so does the saved form (:meth:`LoopConfig.to_dict`, train_config.json). The
presets live in :mod:`gpt2kit.train.presets`, resolution (preset, saved config, flags) in
:mod:`gpt2kit.train.resolve`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from gpt2kit.errors import UserError
from gpt2kit.eval.tasks import get_task
from gpt2kit.model.config import MODEL_PRESETS, GPTConfig
from gpt2kit.settings import check_choices, check_nonneg, check_positive, flag_name, from_flat, section, to_flat
from gpt2kit.train.schedule import lr_at


@dataclass
class RunSettings:
    """Run directory, resume, seed and where the run stops."""

    out: str = "runs/gpt2kit"
    """Run directory: checkpoints/, metrics.jsonl, train_config.json and TensorBoard logs go here."""
    resume: str | None = None
    """'auto' continues from the run directory's latest checkpoint (starts fresh when there is none);
    a checkpoint file or run directory resumes from it."""
    seed: int = 1337
    """Random seed for weights, data order and dropout."""
    max_steps: int | None = None
    """Stop after this optimizer step (default: the end of the learning-rate schedule)."""

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"--max-steps must be >= 0, got {self.max_steps}")


@dataclass
class RuntimeSettings:
    """Device, precision, compilation and the micro-batch."""

    device: str = "auto"
    """cpu, cuda, cuda:N, mps, or auto (under torchrun each rank uses cuda:LOCAL_RANK)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Autocast compute precision (the weights and optimizer state stay float32): bfloat16 or float16 runs
    matmuls under torch.autocast, float16 with a loss scaler (its state is in every checkpoint); auto picks
    bfloat16 where the device computes it natively (CUDA with bf16, a CPU with AVX-512 BF16/AMX), float16 on a
    CUDA GPU without bf16 (V100, T4), else float32 (emulated bfloat16 is many times slower)."""
    compile: bool = False
    """torch.compile the model (needs a C++ compiler on CPU; the first steps are slow while it compiles; an MPS
    run stays eager)."""
    tf32: bool = True
    """Allow TF32 matmuls on NVIDIA GPUs (float32 runs only; no effect on CPU)."""
    batch_size: int | Literal["auto"] = 8
    """Micro-batch: sequences per device per forward/backward, or auto: before the first step, the largest that
    fits the device's memory (with a safety margin) and divides --total-batch-tokens; gradient accumulation keeps
    the global batch. The run records the integer it chose: a resumed run keeps it unless given --batch-size auto."""

    def __post_init__(self) -> None:
        b = self.batch_size
        if b != "auto" and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise ValueError(f"--batch-size must be a positive integer or 'auto', got {b!r}")
        check_choices(self)


@dataclass
class DistSettings:
    """Data parallelism under torchrun."""

    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism under torchrun: ddp (a full model per device) or fsdp (fully_shard: parameters,
    gradients and optimizer state sharded)."""
    dist_timeout: float = 1800.0
    """Under torchrun: seconds a rank waits for the others (joining, every collective) before the job stops with
    a message naming the ranks that stopped answering; room for rank 0 writing a large checkpoint."""

    def __post_init__(self) -> None:
        if not 0 < self.dist_timeout < float("inf"):
            raise ValueError(f"--dist-timeout must be a number of seconds > 0, got {self.dist_timeout}")
        check_choices(self)


@dataclass
class OptimSettings:
    """The optimizer: AdamW, or Muon for the blocks' matrices and AdamW for the rest."""

    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw for every parameter, or muon: torch.optim.Muon for the blocks' attention and MLP weights, AdamW
    (--lr, --beta1/2, --weight-decay) for embeddings, output layer, LayerNorms, biases, heads and LoRA adapters."""
    lr: float = 6e-4
    """Peak learning rate."""
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
    fused_adamw: bool | None = None
    """Fused AdamW kernel; default: on for CUDA and CPU, off elsewhere."""
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

    def __post_init__(self) -> None:
        check_nonneg(self, "weight_decay", "grad_clip", "muon_momentum_warmup_steps", "muon_weight_decay")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"--eps must be > 0, got {self.eps}")
        if not self.muon_lr > 0:
            raise ValueError(f"--muon-lr must be > 0, got {self.muon_lr}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ValueError(f"--muon-momentum must be in [0, 1), got {self.muon_momentum}")
        check_choices(self)


@dataclass
class ScheduleSettings:
    """The learning rate's shape: warmup, then a decay to min_lr_ratio * lr by the end of the schedule."""

    warmup_steps: int = 100
    """Linear warmup from lr/warmup_steps to lr over this many steps."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    lr_schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """Decay shape after warmup; wsd (warmup-stable-decay): constant, then a linear decay to min_lr_ratio over
    the last --decay-fraction of the schedule (a pretraining run stopped before its decay can be extended by
    resuming with a longer schedule; see docs/training.md)."""
    decay_fraction: float = 0.2
    """With --lr-schedule wsd: the share of the schedule's steps, at its end, over which lr decays linearly."""

    def __post_init__(self) -> None:
        check_nonneg(self, "warmup_steps")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"--decay-fraction must be in (0, 1], got {self.decay_fraction}")
        check_choices(self)


@dataclass
class CadenceSettings:
    """The run's length and global batch, and how often it evaluates and saves (fine-tuning derives these from
    its data: epochs, evaluations per epoch, accumulation)."""

    schedule_steps: int = 1000
    """Length of the learning-rate schedule in optimizer steps (warmup + decay to min_lr_ratio * lr)."""
    total_batch_tokens: int | None = None
    """Global batch per optimizer step in tokens; gradient accumulation = this / (batch_size * block_size *
    world_size). Default: one micro-batch per device."""
    eval_every: int = 250
    """Evaluate (validation loss, HellaSwag, samples) every this many steps and at the end (0: only at the end)."""
    eval_batches: int = 20
    """Validation batches of batch_size sequences per evaluation, over all ranks (fixed, the same every time)."""
    save_every: int = 1000
    """Save a checkpoint every this many steps (and at the end, on SIGTERM/SIGINT, and when validation loss
    improves)."""

    def __post_init__(self) -> None:
        check_positive(self, "schedule_steps", "eval_batches", "save_every")
        check_nonneg(self, "eval_every")
        if self.total_batch_tokens is not None and self.total_batch_tokens <= 0:
            raise ValueError(f"--total-batch-tokens must be > 0, got {self.total_batch_tokens}")


@dataclass
class LogSettings:
    """metrics.jsonl, TensorBoard, Weights & Biases and the progress bar."""

    log_every: int = 10
    """Write a metrics.jsonl line (and TensorBoard scalars) every this many steps."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    tensorboard: bool = True
    """Also log scalars to RUN/tensorboard when the tensorboard package is installed."""
    wandb: str | None = field(default=None, metadata={"omit_default": True})
    """Also log metrics.jsonl's records, the config and the samples to this Weights & Biases project (pip install
    'gpt2kit[wandb]'; WANDB_MODE=offline keeps the run in RUN/wandb); an unreachable service never stops training."""
    wandb_run: str | None = field(default=None, metadata={"omit_default": True})
    """Name of the W&B run (default: W&B picks one); a resumed run continues its W&B run."""

    def __post_init__(self) -> None:
        check_positive(self, "log_every")
        if self.wandb is not None and not self.wandb.strip():
            raise ValueError("--wandb: give the W&B project name")


@dataclass
class CheckpointSettings:
    """Which checkpoints are kept and how they are written."""

    keep_last: int = 3
    """Keep this many most recent step checkpoints, plus the best by validation loss."""
    checkpoint_format: Literal["full", "sharded"] = "full"
    """full: one file, RUN/checkpoints/step_N.pt, written by rank 0 (FSDP gathers the whole state to it first);
    sharded: a directory, RUN/checkpoints/step_N.dcp, where every rank writes its own part in parallel with
    torch.distributed.checkpoint, for models whose whole state does not fit one host. Both resume on any world
    size (one process included, which then writes the directory alone) and load in sample, eval and export."""
    save_best: bool = True
    """Also save a checkpoint whenever validation loss reaches a new best."""

    def __post_init__(self) -> None:
        check_positive(self, "keep_last")
        check_choices(self)


@dataclass
class NanSettings:
    """What a NaN/inf loss or gradient norm does."""

    on_nan: Literal["stop", "skip"] = "stop"
    """On a NaN/inf loss or gradient norm: stop (keeping the last good checkpoint) or skip that step's update."""
    max_skipped_steps: int = 10
    """With --on-nan skip, stop after this many consecutive skipped steps."""

    def __post_init__(self) -> None:
        check_positive(self, "max_skipped_steps")
        check_choices(self)


def check_loop_sections(optim: OptimSettings, dist: DistSettings) -> None:
    """The rule between sections that every training config keeps: Muon needs whole matrices."""
    if optim.optimizer == "muon" and dist.parallel == "fsdp":
        raise ValueError("--optimizer muon with --parallel fsdp: Muon orthogonalizes whole matrices; FSDP shards "
                         "them — use --parallel ddp or --optimizer adamw")


@dataclass
class LoopConfig:
    """Everything the training loop reads: the sections above."""

    run: RunSettings = field(default_factory=RunSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    dist: DistSettings = field(default_factory=DistSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    cadence: CadenceSettings = field(default_factory=CadenceSettings)
    logging: LogSettings = field(default_factory=LogSettings)
    ckpt: CheckpointSettings = field(default_factory=CheckpointSettings)
    nan: NanSettings = field(default_factory=NanSettings)

    def __post_init__(self) -> None:
        check_loop_sections(self.optim, self.dist)
        if self.schedule.warmup_steps > self.cadence.schedule_steps:
            raise ValueError(f"--warmup-steps ({self.schedule.warmup_steps}) must be <= --schedule-steps "
                             f"({self.cadence.schedule_steps})")

    @property
    def last_step(self) -> int:
        """The step the run stops after: max_steps, else schedule_steps."""
        return self.cadence.schedule_steps if self.run.max_steps is None else self.run.max_steps

    def grad_accum_steps(self, sequence_tokens: int, world_size: int) -> int:
        """Micro-steps per optimizer step so that the global batch is ``total_batch_tokens``.

        ``sequence_tokens`` is the length of one training sequence (block_size for pretraining).
        """
        batch_size, total = self.runtime.batch_size, self.cadence.total_batch_tokens
        per_round = batch_size * sequence_tokens * world_size  # tokens of one micro-step on every device
        if total is None:
            return 1
        if total % per_round != 0:
            raise UserError(
                f"--total-batch-tokens {total} is not divisible by batch_size * block_size * world_size = "
                f"{batch_size} * {sequence_tokens} * {world_size} = {per_round}; "
                f"use a multiple of {per_round} or change --batch-size/--block-size"
            )
        return total // per_round

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based); see :func:`gpt2kit.train.schedule.lr_at`."""
        return lr_at(step, self)

    def to_dict(self) -> dict[str, Any]:
        """The settings, flat as the flags are (JSON and checkpoint safe; train_config.json)."""
        return to_flat(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of :meth:`to_dict` (sections may also be given as dicts); unknown keys are an error naming them."""
        return from_flat(cls, d)


MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "padded_vocab_size", "dropout", "bias")
"""The :class:`~gpt2kit.model.config.GPTConfig` fields that ``gpt2kit train`` takes as flags (``--n-layer`` ...)."""

PADDED_VOCAB_SIZE = 50304
"""Embedding rows pretraining allocates: 50257 rounded up to a multiple of 64, for faster output matmuls."""


def pretraining_model(preset: str = "gpt2") -> GPTConfig:
    """The model preset ``preset`` with the padded vocabulary pretraining allocates."""
    return dataclasses.replace(MODEL_PRESETS[preset](), padded_vocab_size=PADDED_VOCAB_SIZE)


@dataclass
class PretrainSettings:
    """What pretraining reads and starts from, and what it writes at the end."""

    data: str | None = None
    """Prepared data directory (gpt2kit prepare) with train and val splits."""
    init_from: str | None = None
    """Start a new run (step 0, fresh optimizer and schedule) from these weights: gpt2 (or another hub name), a
    Hugging Face or OpenAI GPT-2 directory, a checkpoint file or a run directory; the model shape is theirs."""
    epochs: float | None = None
    """Train for this many passes over the train split: sets --schedule-steps (and the last step) from the split's
    tokens and the global batch."""
    fused_loss: bool = True
    """Output layer + cross-entropy in one memory-lean step (gpt2kit.train.fused_head_loss; eager runs without FSDP)."""
    export_hf: bool = False
    """At the end also write the final and the best model in Hugging Face format to RUN/hf-final and RUN/hf-best."""

    def __post_init__(self) -> None:
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"--epochs must be > 0, got {self.epochs}")

    def steps_for_epochs(self, train_tokens: int, tokens_per_step: int) -> int:
        """Optimizer steps for ``epochs`` passes over ``train_tokens`` at ``tokens_per_step`` (rounded up)."""
        if self.epochs is None:
            raise ValueError("--epochs is not set")
        return max(1, math.ceil(self.epochs * train_tokens / tokens_per_step))


@dataclass
class PretrainEvalSettings:
    """HellaSwag and the samples logged at each evaluation."""

    hellaswag: str | None = None
    """HellaSwag jsonl file to score every hellaswag_every steps ('download' fetches the official validation set)."""
    hellaswag_every: int = 250
    """Score HellaSwag every this many steps when --hellaswag is given (0: only at the end)."""
    hellaswag_limit: int | None = None
    """Score only the first N HellaSwag examples (default: all 10042)."""
    eval_task: str | None = field(default=None, metadata={"omit_default": True})
    """A multiple-choice task scored as HellaSwag is (every hellaswag_every steps and at the end): arc-easy,
    arc-challenge, mmlu, piqa or winogrande, as lm-evaluation-harness defines it (needs --eval-task-data)."""
    eval_task_data: str | None = field(default=None, metadata={"omit_default": True})
    """The --eval-task rows (the dataset's JSONL or Parquet file), or 'download' for the harness's split."""
    eval_task_limit: int | None = field(default=None, metadata={"omit_default": True})
    """Score only the first N questions of --eval-task."""
    samples: int = 2
    """Sample generations logged at each evaluation (0: none)."""
    sample_tokens: int = 48
    """Tokens per logged sample."""
    sample_prompt: str = "Hello, I'm a language model,"
    """Prompt of the logged samples."""

    def __post_init__(self) -> None:
        check_positive(self, "sample_tokens")
        check_nonneg(self, "hellaswag_every", "samples")
        if self.hellaswag_limit is not None and self.hellaswag_limit < 1:
            raise ValueError(f"--hellaswag-limit must be >= 1, got {self.hellaswag_limit}")
        if self.eval_task is not None:
            try:
                get_task(self.eval_task)
            except UserError as e:
                raise ValueError(f"--eval-task: {e}") from None
            if not self.eval_task_data:
                raise ValueError(f"--eval-task {self.eval_task} needs --eval-task-data FILE (or 'download')")
        if self.eval_task_limit is not None and self.eval_task_limit < 1:
            raise ValueError(f"--eval-task-limit must be >= 1, got {self.eval_task_limit}")


@dataclass
class TrainConfig(LoopConfig):
    """Pretraining: the loop's sections plus the model, the data and what is evaluated."""

    preset: str | None = field(default=None, metadata={"flag": None})
    """The preset these settings started from (recorded for the run's train_config.json)."""
    model: GPTConfig = field(default_factory=pretraining_model, metadata=section(flags=MODEL_FLAGS))
    """The model to train: its fields are flags of their own (--n-layer, --n-head, --n-embd, --block-size, ...)."""
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    evals: PretrainEvalSettings = field(default_factory=PretrainEvalSettings)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; a model error names its flag; unknown keys are an error naming them."""
        try:
            return from_flat(cls, d)
        except ValueError as e:
            raise ValueError(_with_flag_names(str(e))) from None


def _with_flag_names(message: str) -> str:
    """A GPTConfig message with its field names spelled as the flags that set them (``--n-embd``)."""
    if "GPTConfig." not in message:
        return message
    message = message.replace("GPTConfig.", "")
    return re.sub(r"\b(" + "|".join(MODEL_FLAGS) + r")\b", lambda m: flag_name(m.group(1)), message)
