"""Sequence classification with a GPT backbone: a linear head over the last real token's hidden state.

Shape letters: B batch, T time (padded length), C channels, K number of labels.

Batches are right-padded, so with causal attention no real token ever attends to padding; the token
that summarises a text is the *last real token*, found from the padding mask (never "position -1",
which in a padded batch is a pad token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2kit.checkpoint import load_state_dict_checked, read_checkpoint, resolve_checkpoint
from gpt2kit.checkpoint.finetune import finetune_record, plain_state_dict
from gpt2kit.errors import UserError
from gpt2kit.finetune.batching import pad_right
from gpt2kit.model.config import GPTConfig
from gpt2kit.model.gpt import GPT
from gpt2kit.tokenizer import EOT_ID, Tokenizer, checkpoint_tokenizer


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the last True in each row of a (B, T) real-token mask (left or right padding alike)."""
    T = mask.size(1)
    return (T - 1) - mask.flip(1).long().argmax(dim=1)  # (B,)


class GPTClassifier(GPT):
    """A GPT whose LM head is replaced, for this task, by ``score``: C -> K over the last real token.

    It adopts the backbone's modules (no copy, no re-initialisation), so its state dict is the backbone's
    keys plus ``score.weight``/``score.bias``, and everything that handles GPT weights (the checkpoint
    loader, LoRA, the trainer) handles it. ``lm_head`` stays tied to the token embedding and is unused.
    """

    def __init__(self, backbone: GPT, num_labels: int) -> None:
        nn.Module.__init__(self)  # GPT.__init__ would build and initialise a second backbone
        if num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {num_labels}")
        self.config = backbone.config
        self.transformer = backbone.transformer
        self.lm_head = backbone.lm_head
        self.num_labels = num_labels
        ref = backbone.lm_head.weight
        self.score = nn.Linear(self.config.n_embd, num_labels, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.score.bias)

    def forward(  # type: ignore[override]
        self, idx: torch.Tensor, labels: torch.Tensor | None = None, *, mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Label logits (B, K) of right-padded ``idx`` (B, T) with real-token ``mask`` (B, T), and the mean
        cross-entropy when ``labels`` (B,) is given."""
        h = self.hidden_states(idx)  # (B, T, C)
        if mask is None:
            pooled = h[:, -1, :]  # (B, C): no padding
        else:
            last = last_token_index(mask)  # (B,)
            pooled = h[torch.arange(h.size(0), device=h.device), last]  # (B, C)
        logits = self.score(pooled)  # (B, K)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss


def set_trainable(model: GPTClassifier, train_last_blocks: int | None, lora: bool = False) -> None:
    """Choose what a classification fine-tune trains.

    - LoRA: the adapters and the head (``apply_lora`` already froze the rest).
    - ``train_last_blocks=None``: everything.
    - ``train_last_blocks=N``: the last N blocks, the final LayerNorm and the head; embeddings and
      earlier blocks frozen (N=0 trains the head and the final LayerNorm only).
    """
    if lora:
        for p in model.score.parameters():
            p.requires_grad_(True)
        return
    if train_last_blocks is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    n_layer = len(model.transformer.h)
    if not 0 <= train_last_blocks <= n_layer:
        raise ValueError(f"--train-last-blocks must be in [0, {n_layer}] for this {n_layer}-block model, "
                         f"got {train_last_blocks}")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [model.score, model.transformer.ln_f, *model.transformer.h[n_layer - train_last_blocks:]]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)


def trainable_summary(model: nn.Module) -> str:
    """'N of M parameters trainable (x%)' for logs."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return f"{trainable:,} of {total:,} parameters trainable ({trainable / max(total, 1):.2%})"


@torch.no_grad()
def predict_logits(model: GPTClassifier, token_lists: list[list[int]], batch_size: int = 32,
                   device: torch.device | str = "cpu", pad_id: int = EOT_ID, progress: bool = False) -> torch.Tensor:
    """Label logits (N, K) for already-tokenized texts, in order (batched, right-padded with ``pad_id``: the
    classifier's tokenizer's ``eot``)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    out = []
    starts = range(0, len(token_lists), batch_size)
    try:
        for i in tqdm(starts, desc="classify", unit="batch", disable=not progress, dynamic_ncols=True):
            idx, mask = pad_right(token_lists[i:i + batch_size], pad_id)  # (B, T) each
            logits, _ = model(idx.to(device), mask=mask.to(device))
            out.append(logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.num_labels)


def load_classifier(spec: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                    ) -> tuple[GPTClassifier, dict[str, Any], str, Tokenizer]:
    """A trained classifier from a ``gpt2kit finetune classify`` run directory or checkpoint file.

    Returns (model in eval mode with any LoRA adapters merged, the checkpoint's ``finetune`` record,
    the file read, the tokenizer its texts are encoded with: the base model's, which the checkpoint carries).
    Goes through the one checkpoint reader (:mod:`gpt2kit.checkpoint`).
    """
    kind, where = resolve_checkpoint(spec)
    if kind != "gpt2kit":
        raise UserError(f"--checkpoint {spec}: a classifier comes from `gpt2kit finetune classify` (a run directory "
                        "or checkpoint file); this is plain GPT-2 weights with no classification head")
    ckpt = read_checkpoint(where)
    record = finetune_record(ckpt)
    if record is None or record.get("task") != "classify":
        raise UserError(f"{where}: not a classification checkpoint (no finetune task 'classify'); "
                        "train one with `gpt2kit finetune classify`")
    try:
        cfg = GPTConfig.from_dict(ckpt["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}: checkpoint has no valid model_config ({e})") from None
    tok = checkpoint_tokenizer(ckpt, where)
    if tok.vocab_size > cfg.vocab_size:
        raise UserError(f"{where}: the model's vocabulary has {cfg.vocab_size} tokens but the checkpoint records "
                        f"tokenizer {tok.name} with {tok.vocab_size}; it was written before fine-tunes carried their "
                        "tokenizer, fine-tune the classifier again")
    model = GPTClassifier(GPT(cfg), len(record["labels"]))
    load_state_dict_checked(model, plain_state_dict(ckpt, str(where), keep_head=True), str(where))
    model.to(device=device, dtype=dtype)
    model.eval()
    return model, record, str(where), tok
