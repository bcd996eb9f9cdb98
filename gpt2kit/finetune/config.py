"""Fine-tuning settings: :class:`~gpt2kit.train.config.LoopConfig` plus the data, LoRA and task fields.

The loop's optimizer, precision, logging, checkpoint and resume settings are inherited unchanged (and
become the same flags as ``gpt2kit train``). Three loop fields are computed from the data when the run
starts rather than given: ``schedule_steps`` = ``epochs`` x steps per epoch, and ``eval_every`` =
``save_every`` = steps per epoch / ``evals_per_epoch``. Defaults differ from pretraining where
fine-tuning wants otherwise (small learning rate, light weight decay, no warmup, run directory required).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from gpt2kit.model.lora_config import LoRAConfig
from gpt2kit.train.config import LoopConfig, _nonneg, _positive

DERIVED_FIELDS = ("schedule_steps", "eval_every", "save_every", "total_batch_tokens", "eval_batches")
"""LoopConfig fields a fine-tune computes itself (no flags for them)."""

@dataclass
class FinetuneConfig(LoopConfig):
    """Settings shared by classification and instruction fine-tuning."""

    out: str = ""
    """Run directory (required): checkpoints/, metrics.jsonl, results.json and train_config.json go here."""
    checkpoint: str | None = None
    """Weights to start from: a gpt2kit run directory or checkpoint file, a Hugging Face GPT-2 directory or hub name."""
    train: str | None = None
    """Training data file (.csv, .tsv, .jsonl or .json)."""
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
    lr: float | None = None  # type: ignore[assignment]
    """Peak learning rate (default: 1e-3 with LoRA, 5e-5 otherwise)."""
    weight_decay: float = 0.01
    """AdamW weight decay on 2-D parameters."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    lora_rank: int = 0
    """LoRA rank r (0: no LoRA, fine-tune the weights themselves)."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: adapters' outputs are multiplied by alpha / rank."""
    lora_targets: str = "all"
    """Comma-separated layers to adapt: all, attn, mlp, c_attn, c_fc, c_proj, attn.c_proj, mlp.c_proj."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA adapters' input."""
    schedule_steps: int | None = None  # type: ignore[assignment]
    """Computed: --epochs x steps per epoch (None until the run has read its data; see :attr:`scheduled`)."""

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = 1e-3 if self.lora_rank else 5e-5
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        _positive(self, "epochs", "evals_per_epoch", "accum_steps")
        _nonneg(self, "lora_rank", "lora_dropout")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"--max-length must be >= 2, got {self.max_length}")
        if self.lora_rank:
            LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha, targets=self.lora_targets,
                       dropout=self.lora_dropout)

    def lora_config(self, blocks: tuple[int, ...] | None = None):
        """The :class:`~gpt2kit.model.lora.LoRAConfig` these settings ask for, or None without LoRA."""
        if not self.lora_rank:
            return None
        return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha, targets=self.lora_targets,
                          dropout=self.lora_dropout, blocks=blocks)

    @property
    def scheduled(self) -> bool:
        """Whether the fields computed from the data are set (by :meth:`with_schedule`)."""
        return self.schedule_steps is not None

    def with_schedule(self, steps_per_epoch: int) -> "FinetuneConfig":
        """A copy with the derived loop fields set for ``steps_per_epoch`` optimizer steps per epoch."""
        every = max(1, steps_per_epoch // self.evals_per_epoch)
        return dataclasses.replace(self, schedule_steps=self.epochs * steps_per_epoch, eval_every=every,
                                   save_every=every)


@dataclass
class ClassifyConfig(FinetuneConfig):
    """``gpt2kit finetune classify``: a classification head over the last real token."""

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

    def validate(self) -> None:
        super().validate()
        if self.train_last_blocks is not None and self.train_last_blocks < 0:
            raise ValueError(f"--train-last-blocks must be >= 0, got {self.train_last_blocks}")


@dataclass
class SFTConfig(FinetuneConfig):
    """``gpt2kit finetune sft``: instruction tuning with the loss on response tokens only."""

    epochs: int = 2
    """Passes over the training data."""
    template: str = "alpaca"
    """Prompt template: alpaca, chat, or a .json file with the template's fields (see docs/finetune.md)."""
    pack: bool = False
    """Pack several examples into each row of --max-length tokens (masked so they never attend to each other)."""
    samples: int = 1
    """Greedy responses to the first validation prompts logged at each evaluation (0: none)."""
    sample_tokens: int = 64
    """Tokens per logged response."""

    def validate(self) -> None:
        super().validate()
        _nonneg(self, "samples")
        _positive(self, "sample_tokens")

