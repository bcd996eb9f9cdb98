"""Fine-tuning settings: the training loop's shared sections, the fine-tune's own and ``lora``.

A :class:`FinetuneConfig` holds the sections it shares with pretraining (``run``, ``runtime``, ``dist``,
``optim``, ``schedule``, ``logging``, ``ckpt``, ``nan``: the same flags as ``gpt2kit train``), its own
``finetune`` section (weights, data, epochs) and ``lora``, a
:class:`~gpt2kit.model.lora_config.LoRAConfig` or None (``--lora-rank 0``). The loop's ``cadence`` (schedule
length, evaluation and save cadence) is not a setting here: :meth:`FinetuneConfig.loop_config` derives it from
the data, ``epochs`` x steps per epoch, evaluating and saving ``evals_per_epoch`` times an epoch. Defaults
differ from pretraining where fine-tuning wants otherwise (small learning rate, light weight decay, no warmup,
run directory required).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from gpt2kit.model.lora_config import LoRAConfig
from gpt2kit.settings import check_choices, check_nonneg, check_positive, from_flat, section, to_flat
from gpt2kit.train.config import (
    CadenceSettings,
    CheckpointSettings,
    DistSettings,
    LogSettings,
    LoopConfig,
    NanSettings,
    OptimSettings,
    RunSettings,
    RuntimeSettings,
    ScheduleSettings,
    check_loop_sections,
)

LORA_LR, FULL_LR = 1e-3, 5e-5
"""The default peak learning rate with LoRA adapters, and when the weights themselves are trained."""

LOOP_DERIVED = ("schedule_steps", "eval_every", "save_every", "total_batch_tokens", "eval_batches")
"""Keys older versions saved in a fine-tune's config: the loop's cadence, which is derived from the data."""


@dataclass
class FinetuneSettings:
    """The weights to start from, the data and how long to train."""

    checkpoint: str | None = None
    """Weights to start from: a gpt2kit run directory or checkpoint file, a Hugging Face GPT-2 directory or hub name."""
    train: str | None = None
    """Training data file (.csv, .tsv, .jsonl or .json); for sft also builtin:chat, the small chat set shipped with
    gpt2kit (it teaches the chat turn format, nothing more)."""
    val: str | None = None
    """Validation data file, evaluated every epoch (the best checkpoint is chosen by its loss); without it
    --val-fraction of the training examples are held out instead."""
    val_fraction: float = 0.1
    """Without --val: this share of --train's examples (at least one; a fixed choice by --seed) is held out for
    validation and not trained on."""
    epochs: int = 3
    """Passes over the training data."""
    evals_per_epoch: int = 1
    """Evaluate (and save a checkpoint) this many times per epoch."""
    accum_steps: int = 1
    """Micro-batches per optimizer step on each device (gradient accumulation)."""
    max_length: int | None = None
    """Longest example in tokens (default: the model's context length, block_size)."""
    overlong: Literal["truncate", "drop", "error"] = "truncate"
    """Examples longer than --max-length: truncate (keep the first max_length tokens), drop, or error."""

    def __post_init__(self) -> None:
        check_positive(self, "epochs", "evals_per_epoch", "accum_steps")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"--max-length must be >= 2, got {self.max_length}")
        check_choices(self)


LORA_FLAGS = ("rank", "alpha", "targets", "dropout")
"""The LoRAConfig fields that are settings (``--lora-rank`` ...); ``blocks`` follows from --train-last-blocks."""


@dataclass
class FinetuneConfig:
    """Settings shared by classification and instruction fine-tuning."""

    HELP: ClassVar[dict[str, str]] = {
        "out": "Run directory (required): checkpoints/, metrics.jsonl, results.json and train_config.json go here.",
        "lr": f"Peak learning rate (default: {LORA_LR:g} with LoRA, {FULL_LR:g} otherwise).",
        "weight_decay": "AdamW weight decay on 2-D parameters.",
        "warmup_steps": "Linear warmup steps.",
        "batch_size": "Micro-batch: examples per device per forward/backward (an integer here; auto is for "
                      "gpt2kit train).",
        "lora_rank": "LoRA rank r (0: no LoRA, fine-tune the weights themselves).",
        "lora_alpha": "LoRA scale numerator: adapters' outputs are multiplied by alpha / rank.",
        "lora_targets": "Comma-separated layers to adapt: all, attn, mlp, c_attn, c_fc, c_proj, attn.c_proj, "
                        "mlp.c_proj.",
        "lora_dropout": "Dropout on the LoRA adapters' input.",
    }
    """Flag help where fine-tuning means something more specific than the shared section's docstring."""

    run: RunSettings = field(default_factory=lambda: RunSettings(out=""))
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    dist: DistSettings = field(default_factory=DistSettings)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=FULL_LR, weight_decay=0.01))
    schedule: ScheduleSettings = field(default_factory=lambda: ScheduleSettings(warmup_steps=0))
    logging: LogSettings = field(default_factory=LogSettings)
    ckpt: CheckpointSettings = field(default_factory=CheckpointSettings)
    nan: NanSettings = field(default_factory=NanSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    lora: LoRAConfig | None = field(default=None, metadata=section(prefix="lora_", saved=LORA_FLAGS, off="rank"))
    """LoRA adapters (None: the weights themselves are trained)."""

    def __post_init__(self) -> None:
        check_loop_sections(self.optim, self.dist)
        if self.runtime.batch_size == "auto":  # examples differ in length: no one probe size stands for the run
            raise ValueError("--batch-size auto: gpt2kit train only; give fine-tuning an integer (with "
                             "--accum-steps for a larger effective batch)")

    def loop_config(self, steps_per_epoch: int) -> LoopConfig:
        """The loop's config for ``steps_per_epoch`` optimizer steps per epoch: the shared sections and the cadence
        they imply (``epochs`` x steps per epoch; evaluate and save ``evals_per_epoch`` times an epoch)."""
        every = max(1, steps_per_epoch // self.finetune.evals_per_epoch)
        cadence = CadenceSettings(schedule_steps=self.finetune.epochs * steps_per_epoch, eval_every=every,
                                  save_every=every)
        return LoopConfig(run=self.run, runtime=self.runtime, dist=self.dist, optim=self.optim,
                          schedule=self.schedule, cadence=cadence, logging=self.logging, ckpt=self.ckpt, nan=self.nan)

    def to_dict(self) -> dict[str, Any]:
        """The settings, flat as the flags are (train_config.json and every checkpoint's ``config``)."""
        return to_flat(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; settings not given take their defaults, ``lr`` the one for LoRA or not.

        The loop's cadence, which older versions saved, is left out: it is derived from the data.
        """
        flat = {k: v for k, v in d.items() if k not in LOOP_DERIVED}
        if flat.get("lr") is None and "optim" not in flat:
            with_lora = bool(flat.get("lora_rank")) or isinstance(flat.get("lora"), (LoRAConfig, dict))
            flat["lr"] = LORA_LR if with_lora else FULL_LR
        return from_flat(cls, flat)


@dataclass
class ClassifySettings:
    """The classifier's data columns, labels and which blocks train."""

    test: str | None = None
    """Test data file, scored once at the end with the best checkpoint (results.json: test_accuracy, test_macro_f1)."""
    text_column: str = "text"
    """Column (CSV) or field (JSONL) holding the text."""
    label_column: str = "label"
    """Column or field holding the label."""
    labels: str | None = None
    """Comma-separated label names in class order (default: the sorted labels of the training file)."""
    train_last_blocks: int | None = None
    """Train only the last N blocks, the final LayerNorm and the head (default: all; with LoRA: adapters only there)."""

    def __post_init__(self) -> None:
        if self.train_last_blocks is not None and self.train_last_blocks < 0:
            raise ValueError(f"--train-last-blocks must be >= 0, got {self.train_last_blocks}")


@dataclass
class ClassifyConfig(FinetuneConfig):
    """``gpt2kit finetune classify``: a classification head over the last real token."""

    classify: ClassifySettings = field(default_factory=ClassifySettings)

    def lora_for_blocks(self, blocks: tuple[int, ...] | None) -> LoRAConfig | None:
        """``lora`` restricted to ``blocks`` (None: every block), or None without LoRA."""
        return None if self.lora is None else dataclasses.replace(self.lora, blocks=blocks)


@dataclass
class SFTSettings:
    """The prompt template, packing and the logged responses."""

    template: str = "alpaca"
    """Prompt template: alpaca, chat, or a .json file with the template's fields (see docs/finetune.md)."""
    pack: bool = False
    """Pack several examples into each row of --max-length tokens (masked so they never attend to each other)."""
    samples: int = 1
    """Greedy responses to the first validation prompts logged at each evaluation (0: none)."""
    sample_tokens: int = 64
    """Tokens per logged response."""

    def __post_init__(self) -> None:
        check_nonneg(self, "samples")
        check_positive(self, "sample_tokens")


@dataclass
class SFTConfig(FinetuneConfig):
    """``gpt2kit finetune sft``: instruction tuning with the loss on response tokens only."""

    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(epochs=2))
    sft: SFTSettings = field(default_factory=SFTSettings)
