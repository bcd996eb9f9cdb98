"""Log-likelihood of continuations after contexts, many rows per forward pass.

The one scorer behind HellaSwag and LAMBADA. Rows of different lengths share a batch by right
padding: with causal attention a position never sees the padding after it, so padding changes no
score. Only the continuation's positions are scored. Shape letters:

    R  rows (context + continuation pairs) in a batch     T  padded length     V  vocab
    N  scored positions in the batch
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gpt2kit.checkpoint import unwrap_model
from gpt2kit.device import autocast
from gpt2kit.eval.questions import Row
from gpt2kit.tokenizer import EOT_ID

T = TypeVar("T")

"""(context tokens, continuation tokens)."""


def model_block_size(model: torch.nn.Module) -> int:
    """The context length of a GPT, also under ``torch.compile``/DDP wrappers."""
    return int(unwrap_model(model).config.block_size)


def fit_row(context: list[int], continuation: list[int], block_size: int, eot: int = EOT_ID) -> Row | None:
    """Left-truncate ``context`` so context + continuation fits ``block_size`` inputs.

    The model reads ``len(context) + len(continuation) - 1`` tokens (the last one is only a
    target), so up to ``block_size + 1`` tokens fit. An empty context becomes ``[eot]`` (the model's
    tokenizer's end-of-text id) so that the first continuation token has something to be predicted from.
    Returns ``None`` when the continuation alone does not fit.
    """
    if not continuation:
        raise ValueError("continuation must have at least one token")
    if not context:
        context = [eot]
    keep = block_size + 1 - len(continuation)
    if keep < 1:
        return None
    return context[-keep:], continuation


@torch.no_grad()
def score_rows(
    model: torch.nn.Module,
    rows: Sequence[Row],
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    pad: int = EOT_ID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score each row's continuation in one forward pass.

    Rows must already fit the model (see :func:`fit_row`); shorter rows are right-padded with ``pad`` (the
    model's end-of-text id: any id of its vocabulary gives the same scores). Returns, on the CPU,
    ``nll`` (R,) float64 — the summed negative log-likelihood of the continuation tokens,
    ``tokens`` (R,) int64 — how many tokens were scored, and
    ``greedy`` (R,) bool — whether every continuation token is the model's argmax prediction.
    """
    R = len(rows)
    T = max(len(ctx) + len(cont) - 1 for ctx, cont in rows)
    idx = torch.full((R, T), pad, dtype=torch.long)  # (R, T) right-padded inputs
    tgt = torch.full((R, T), -100, dtype=torch.long)  # (R, T) targets, -100 where not scored
    for r, (ctx, cont) in enumerate(rows):
        seq = ctx + cont
        idx[r, : len(seq) - 1] = torch.tensor(seq[:-1])
        # the input at position len(ctx) - 1 + j predicts continuation token j
        tgt[r, len(ctx) - 1 : len(seq) - 1] = torch.tensor(cont)
    idx = idx.to(device, non_blocking=True)
    tgt = tgt.to(device, non_blocking=True)
    with autocast(device, autocast_dtype):
        logits, _ = model(idx)  # (R, T, V)
    mask = tgt != -100  # (R, T)
    scored = logits[mask].float()  # (N, V): only the continuation's positions get a softmax
    targets = tgt[mask]  # (N,)
    nll_tok = F.cross_entropy(scored, targets, reduction="none")  # (N,)
    miss = (scored.argmax(dim=-1) != targets).long()  # (N,)
    row_of = mask.nonzero()[:, 0]  # (N,) row index of each scored position
    nll = torch.zeros(R, dtype=torch.float64, device=scored.device).index_add_(0, row_of, nll_tok.double())
    misses = torch.zeros(R, dtype=torch.long, device=scored.device).index_add_(0, row_of, miss)
    tokens = mask.sum(dim=1)  # (R,)
    return nll.cpu(), tokens.cpu(), (misses == 0).cpu()


def safe_exp(x: float) -> float:
    """``exp(x)``, or inf where it would overflow (a perplexity past e^700 is reported as inf)."""
    return math.exp(x) if x < 700 or math.isnan(x) else float("inf")


def sharded_batches(items: Sequence[T], batch_size: int, rank: int, world_size: int, *, model: torch.nn.Module,
                    desc: str = "eval", progress: bool = False) -> Iterator[list[T]]:
    """The one sharded scoring driver: this rank's ``items`` (round-robin) in batches, ``model`` in eval mode
    meanwhile (its mode is restored after).

    Every rank gets the same number of batches: a rank that has run out gets empty ones, on which the caller
    still runs one forward pass (on any item) and discards it, because a DDP/FSDP-wrapped model may run
    collectives inside forward and unequal counts would hang.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mine = list(items[rank::world_size])
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(mine), desc=desc, unit="ex", dynamic_ncols=True) if progress else None
    try:
        for b in range(batches_per_rank(len(items), batch_size, world_size)):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            yield chunk
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)


def scored_items(model: torch.nn.Module, items: Sequence[T], rows_of: Callable[[T], list[Row]], *,
                 batch_size: int, rank: int, world_size: int, device: torch.device | str,
                 autocast_dtype: torch.dtype | None = None, desc: str = "eval", progress: bool = False,
                 pad: int = EOT_ID) -> Iterator[tuple[T, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This rank's ``items`` scored ``batch_size`` at a time (all rows of an item in the same forward pass):
    ``(item, nll, tokens, greedy)`` for each, the :func:`score_rows` results of its ``rows_of(item)`` rows
    (padded with ``pad``, the model's end-of-text id).

    The padding passes of :func:`sharded_batches` are run here (on the first item) and yield nothing.
    """
    for chunk in sharded_batches(items, batch_size, rank, world_size, model=model, desc=desc, progress=progress):
        if not chunk:  # a padding pass: the forward must run, its scores are discarded
            if items:
                score_rows(model, rows_of(items[0]), device=device, autocast_dtype=autocast_dtype, pad=pad)
            continue
        rows: list[Row] = []
        spans = []
        for item in chunk:
            item_rows = rows_of(item)
            spans.append((len(rows), len(item_rows)))
            rows.extend(item_rows)
        nll, tokens, greedy = score_rows(model, rows, device=device, autocast_dtype=autocast_dtype, pad=pad)
        for item, (start, k) in zip(chunk, spans):
            yield item, nll[start:start + k], tokens[start:start + k], greedy[start:start + k]


def batches_per_rank(n_items: int, batch_size: int, world_size: int) -> int:
    """Forward passes every rank makes for ``n_items`` split round-robin over ``world_size`` ranks.

    Every rank makes the same number, padding with a dummy batch where it has fewer items, because
    a DDP/FSDP-wrapped model may run collectives inside forward and unequal counts would hang.
    """
    per_rank = -(-n_items // world_size)
    return -(-per_rank // batch_size)
