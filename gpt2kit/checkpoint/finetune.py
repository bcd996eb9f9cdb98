"""What a fine-tuning checkpoint adds to the common format, and how it becomes plain weights.

A fine-tune run writes ordinary trainer checkpoints (:mod:`gpt2kit.train.loop`), carrying the base model's
tokenizer (``tokenizer``, and a trained one's ``tokenizer_files``) like every checkpoint, with one extra key,
``finetune``, a plain-data record::

    {"version": 1, "task": "classify" | "sft", "base": "<--checkpoint it started from>",
     "lora": {"rank", "alpha", "targets", "dropout", "blocks"} | None,
     "labels": [...], "text_column", "label_column", "max_length"       # classify
     "template": {...PromptTemplate fields...}, "max_length"            # sft

With LoRA, ``model`` holds the frozen base weights under their usual names plus ``*.lora_A``/``*.lora_B``;
a classifier's ``model`` also holds ``score.weight``/``score.bias``. :func:`plain_state_dict` turns that
into weights a plain GPT (or :class:`~gpt2kit.finetune.classifier.GPTClassifier`) loads.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt2kit.errors import UserError
from gpt2kit.model.lora import LoRAConfig, merge_lora_state_dict

RECORD_KEY = "finetune"
RECORD_VERSION = 1
HEAD_PREFIX = "score."


def finetune_record(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's ``finetune`` record, or None for a checkpoint that is not a fine-tune."""
    record = ckpt.get(RECORD_KEY)
    return record if isinstance(record, dict) else None


def plain_state_dict(ckpt: dict[str, Any], source: str, keep_head: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's weights with LoRA adapters merged; the classification head only when ``keep_head``."""
    sd = dict(ckpt["model"])
    record = finetune_record(ckpt) or {}
    if record.get("lora"):
        try:
            cfg = LoRAConfig.from_dict(record["lora"])
            sd = merge_lora_state_dict(sd, cfg, source)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{source}: cannot merge its LoRA adapters ({e})") from None
    if not keep_head:
        sd = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIX)}
    return sd


def language_model_checkpoint(ckpt: dict[str, Any], source: str) -> dict[str, Any]:
    """``ckpt`` with plain GPT weights in ``model``, for :func:`gpt2kit.checkpoint.load_model` (a checkpoint that
    is not a fine-tune is returned as it is).

    An SFT checkpoint is a language model: its adapters are merged. A classification checkpoint is
    refused: its LM head was never trained, so sampling, LM evaluation or exporting it as
    ``GPT2LMHeadModel`` would silently give a model that is not what was fine-tuned.
    """
    record = finetune_record(ckpt)
    if record is None:
        return ckpt
    if record.get("task") == "classify":
        raise UserError(
            f"{source}: a classification fine-tune (labels {record.get('labels')}); it predicts labels, not text: "
            "use `gpt2kit classify --checkpoint ...` (sample, eval and export need a language model)"
        )
    return {**ckpt, "model": plain_state_dict(ckpt, source)}
