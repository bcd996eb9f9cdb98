"""Evaluation of fine-tuned models: classification (loss, accuracy, macro-F1) and SFT response loss.

Used by the trainer's evaluation callback (every rank, its share of the data, summed over ranks) and
after training on the test set. Every rank makes the same number of forward passes (a padding pass
where it has fewer items) because an FSDP-sharded model runs collectives inside forward.

Shape letters: B batch, T time, V vocab, K labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from gpt2kit.device import autocast
from gpt2kit.distributed import all_reduce_sum
from gpt2kit.eval.scoring import sharded_batches
from gpt2kit.finetune.batching import classification_batch, sft_batch
from gpt2kit.finetune.classify_data import ClassificationData
from gpt2kit.finetune.metrics import accuracy, confusion_matrix, macro_f1
from gpt2kit.finetune.sft_data import IGNORE_INDEX, SFTExample
from gpt2kit.tokenizer import EOT_ID


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, data: ClassificationData, *, batch_size: int,
                        device: torch.device | str, autocast_dtype: torch.dtype | None = None,
                        rank: int = 0, world_size: int = 1, pad_id: int = EOT_ID) -> dict:
    """``{"loss", "accuracy", "macro_f1", "count", "confusion"}`` of a classifier over all of ``data``
    (``pad_id``: the model's tokenizer's ``eot``)."""
    K = len(data.vocab)
    confusion = torch.zeros(K, K, dtype=torch.int64)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for chunk in sharded_batches(range(len(data)), batch_size, rank, world_size, model=model):
        batch = classification_batch(data, chunk or [0], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, autocast_dtype):
            logits, _ = model(batch["idx"], mask=batch["mask"])  # (B, K)
        if not chunk:
            continue  # a padding pass: this rank has no items left
        loss_sum += F.cross_entropy(logits.float(), batch["labels"], reduction="sum").double()
        confusion += confusion_matrix(logits.argmax(dim=-1), batch["labels"], K)
    totals = all_reduce_sum([float(loss_sum)] + confusion.flatten().double().tolist(), device)
    loss_total = totals[0]
    confusion = torch.tensor([round(x) for x in totals[1:]], dtype=torch.int64).reshape(K, K)
    count = int(confusion.sum())
    return {"loss": loss_total / count if count else float("nan"), "accuracy": accuracy(confusion),
            "macro_f1": macro_f1(confusion), "count": count, "confusion": confusion.tolist()}


@torch.no_grad()
def evaluate_sft(model: torch.nn.Module, examples: Sequence[SFTExample], *, batch_size: int,
                 device: torch.device | str, autocast_dtype: torch.dtype | None = None,
                 rank: int = 0, world_size: int = 1, pad_id: int = EOT_ID) -> dict:
    """``{"loss", "tokens", "nll_sum"}``: mean cross-entropy over every response token of ``examples``
    (``pad_id``: the model's tokenizer's ``eot``)."""
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for chunk in sharded_batches(range(len(examples)), batch_size, rank, world_size, model=model):
        batch = sft_batch([examples[i] for i in (chunk or [0])], pad_id)
        x, y = batch["idx"].to(device), batch["targets"].to(device)  # (B, T) each
        with autocast(device, autocast_dtype):
            logits, _ = model(x)  # (B, T, V)
        if not chunk:
            continue  # a padding pass: this rank has no items left
        V = logits.size(-1)
        nll_sum += F.cross_entropy(logits.reshape(-1, V).float(), y.reshape(-1), ignore_index=IGNORE_INDEX,
                                   reduction="sum").double()
        tokens += int((y != IGNORE_INDEX).sum())
    nll, n = all_reduce_sum([float(nll_sum), float(tokens)], device)
    return {"loss": nll / n if n else float("nan"), "tokens": int(round(n)), "nll_sum": nll}
