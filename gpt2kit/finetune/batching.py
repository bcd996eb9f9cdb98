"""Fine-tuning batches: padding, packing and the shuffled epoch order.

Shape letters: B batch, T padded sequence length (<= max_length).

Batches are right-padded with ``<|endoftext|>`` and carry a real-token ``mask`` (B, T); with causal
attention no real token attends to padding. Packing (SFT) puts several examples into one row with
per-example ``positions`` and a ``doc`` id per token from which :func:`packed_attn_mask` builds a
block-diagonal causal mask, so packed examples never see each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gpt2kit.data.stream import STATE_VERSION, EpochStream
from gpt2kit.errors import UserError
from gpt2kit.finetune.classify_data import ClassificationData
from gpt2kit.finetune.sft_data import IGNORE_INDEX, SFTExample


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int,
              length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx (B, T), mask (B, T) bool) with each sequence left-aligned and padded with ``pad_id``."""
    T = length if length is not None else max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    return idx, mask


def classification_batch(data: ClassificationData, items: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """``{"idx": (B, T), "mask": (B, T), "labels": (B,)}`` for the examples ``items``."""
    idx, mask = pad_right([data.ids[i] for i in items], pad_id)
    labels = torch.tensor([data.labels[i] for i in items], dtype=torch.long)
    return {"idx": idx, "mask": mask, "labels": labels}


def sft_batch(examples: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """A padded batch ``{"idx", "targets", "mask"}``, each (B, T); padding targets are -100."""
    idx, mask = pad_right([e.ids for e in examples], pad_id)
    targets, _ = pad_right([e.targets() for e in examples], IGNORE_INDEX, idx.size(1))
    return {"idx": idx, "targets": targets, "mask": mask}


def pack_examples(lengths: Sequence[int], max_length: int, order: Sequence[int] | None = None) -> list[list[int]]:
    """Group example indices into rows of at most ``max_length`` tokens (next-fit, in ``order``)."""
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in (order if order is not None else range(len(lengths))):
        n = lengths[i]
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens, more than max_length {max_length}")
        if current and used + n > max_length:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        rows.append(current)
    return rows


def packed_batch(rows: Sequence[Sequence[SFTExample]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of several examples each: ``{"idx", "targets", "mask", "positions", "doc"}``, each (B, T).

    ``positions`` restart at 0 for each example; ``doc`` numbers the examples of a row (-1 on padding),
    for :func:`packed_attn_mask`. The last token of each example has target -100, so no example is
    trained to predict the next one's first token.
    """
    seqs, tgts, poss, docs = [], [], [], []
    for row in rows:
        ids, tgt, pos, doc = [], [], [], []
        for d, ex in enumerate(row):
            ids += ex.ids
            tgt += ex.targets()
            pos += range(len(ex.ids))
            doc += [d] * len(ex.ids)
        seqs.append(ids)
        tgts.append(tgt)
        poss.append(pos)
        docs.append(doc)
    idx, mask = pad_right(seqs, pad_id)
    T = idx.size(1)
    targets, _ = pad_right(tgts, IGNORE_INDEX, T)
    positions, _ = pad_right(poss, 0, T)
    doc, _ = pad_right(docs, -1, T)
    return {"idx": idx, "targets": targets, "mask": mask, "positions": positions, "doc": doc}


def packed_attn_mask(doc: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask: causal, and only within the same packed example (padding sees padding)."""
    T = doc.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc.device).tril()  # (T, T)
    same = doc[:, :, None] == doc[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]  # (B, 1, T, T)


class EpochBatches:
    """Micro-batches of ``num_items`` items (examples or packed rows) in shuffled epochs, for one rank.

    The order is an :class:`~gpt2kit.data.stream.EpochStream`: epoch e is a permutation of the items seeded by
    (seed, e), epoch e+1 follows directly, and every rank's state is the same stream position, which survives
    a change of world size between optimizer steps. ``collate`` turns a list of item ids into the batch.
    """

    KIND = "gpt2kit-finetune-batches"

    def __init__(self, num_items: int, batch_size: int, collate: Callable[[list[int]], dict[str, torch.Tensor]],
                 *, seed: int, fingerprint: str, grad_accum_steps: int = 1, rank: int = 0, world_size: int = 1) -> None:
        self.collate = collate
        self.fingerprint = fingerprint
        self.stream = EpochStream(num_items, batch_size, seed=seed, grad_accum_steps=grad_accum_steps, rank=rank,
                                  world_size=world_size)

    @property
    def epoch(self) -> int:
        """The epoch the next micro-batch starts in (0-based)."""
        return self.stream.epoch

    @property
    def micro_batch_size(self) -> int:
        """Items per micro-batch on this rank."""
        return self.stream.micro_batch_size

    def set_layout(self, micro_batch_size: int, grad_accum_steps: int) -> None:
        """Serve each optimizer step's items in micro-batches of another size (between steps; the same items):
        what the trainer does after running out of memory."""
        self.stream.set_layout(micro_batch_size, grad_accum_steps)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """This rank's next micro-batch."""
        return self.collate(self.stream.next_items().tolist())

    def state_dict(self) -> dict[str, Any]:
        """Stream position as plain data."""
        return {"kind": self.KIND, "format_version": STATE_VERSION, "fingerprint": self.fingerprint,
                **self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the saved position; the data and seed must be the ones the state was saved with.

        A state without a format_version (before the stream's keys) held ``consumed``, always at a step's end.
        """
        if state.get("kind") != self.KIND:
            raise UserError("--resume: the checkpoint's data position is not from a fine-tuning run")
        if state.get("format_version", 0) > STATE_VERSION:
            raise UserError(f"--resume: the data position's format_version {state.get('format_version')} is newer "
                            "than this gpt2kit; upgrade gpt2kit")
        if state.get("fingerprint") != self.fingerprint or state.get("num_items") != self.stream.num_items:
            raise UserError("--resume: the training data (or --max-length/--overlong/--template/--pack) differs "
                            "from the run being resumed; use the same files and settings, or a new --out")
        if state.get("seed") != self.stream.seed:
            raise UserError(f"--resume: the run used --seed {state.get('seed')}; resume with the same seed")
        if "format_version" not in state:
            state = {**self.stream.state_dict(), "position": state["consumed"], "micro_step": 0}
        self.stream.load_state_dict(state)


def steps_per_epoch(num_items: int, batch_size: int, grad_accum_steps: int, world_size: int) -> int:
    """Optimizer steps that consume every item at least once: ceil(N / (B * A * W))."""
    return max(1, math.ceil(num_items / (batch_size * grad_accum_steps * world_size)))

