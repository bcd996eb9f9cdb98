"""Validation loss, perplexity and bits per byte: one implementation for the trainer and ``gpt2kit eval loss``.

Batches are ``(inputs, targets)`` int64 pairs (B, T); targets equal to -100 are not scored. They
come from a prepared split (:func:`gpt2kit.data.loader.eval_batches`) or from text scored with a
sliding window (:func:`sliding_windows`, as in Hugging Face's perplexity guide): each window holds
up to ``block_size`` tokens and scores only the tokens the previous window did not, so every token
is scored once with at least ``block_size - stride`` tokens of context (except in the first window).

Bits per byte = total nats / ln 2 / total UTF-8 bytes of the scored tokens; it does not depend on
the tokenizer, so models with different vocabularies compare on it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from gpt2kit.device import autocast
from gpt2kit.distributed import all_reduce_sum
from gpt2kit.errors import UserError
from gpt2kit.eval.scoring import safe_exp
from gpt2kit.io import iter_jsonl
from gpt2kit.tokenizer import EOT_ID, Tokenizer, get_tokenizer


def token_byte_lengths(tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """UTF-8 byte length of every token of ``tokenizer`` (GPT-2's by default), (V,) int64; ``<|endoftext|>``
    counts 0 bytes."""
    return torch.tensor((tokenizer or get_tokenizer()).token_byte_lengths(), dtype=torch.long)


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    count_bytes: bool = False,
    tokenizer: Tokenizer | None = None,
    progress: bool = False,
    total: int | None = None,
) -> dict:
    """Mean next-token loss over all target tokens of ``batches`` (targets == -100 ignored).

    Returns ``{"loss", "perplexity", "tokens", "nll_sum"}``, plus ``"bytes"`` and ``"bits_per_byte"``
    with ``count_bytes`` (the bytes of ``tokenizer``'s tokens, GPT-2's by default). ``model`` is called
    as ``model(inputs, targets) -> (logits, mean loss)``, so a
    compiled or DDP-wrapped GPT works. In a distributed run each rank passes its own batches and the
    caller combines the ranks with :func:`all_reduce_loss`.
    """
    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)  # on device: no sync per batch
    tokens = 0
    n_bytes = 0
    lengths = token_byte_lengths(tokenizer) if count_bytes else None
    it = batches
    if progress:
        from tqdm import tqdm

        it = tqdm(batches, total=total, desc="loss", unit="batch", dynamic_ncols=True)
    try:
        for x, y in it:
            scored = y != -100  # (B, T)
            n = int(scored.sum())
            if n == 0:
                continue
            if lengths is not None:
                n_bytes += int(lengths[y[scored].cpu()].sum())
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with autocast(device, autocast_dtype):
                _, loss = model(x, y)
            # the model returns the mean over scored tokens; times n gives this batch's total nats
            nll_sum += loss.double() * n
            tokens += n
    finally:
        model.train(was_training)
    return _loss_stats(float(nll_sum), tokens, n_bytes if count_bytes else None)


def _loss_stats(nll_sum: float, tokens: int, n_bytes: int | None) -> dict:
    loss = nll_sum / tokens if tokens else float("nan")
    stats = {
        "loss": loss,
        "perplexity": safe_exp(loss),
        "tokens": int(tokens),
        "nll_sum": float(nll_sum),
    }
    if n_bytes is not None:
        stats["bytes"] = int(n_bytes)
        stats["bits_per_byte"] = nll_sum / math.log(2) / n_bytes if n_bytes else float("nan")
    return stats


def all_reduce_loss(stats: dict, device: torch.device | str = "cpu") -> dict:
    """Combine per-rank :func:`mean_loss` results into the global figures (every rank gets them).

    Sums ``nll_sum``, ``tokens`` (and ``bytes``) over ranks when torch.distributed is initialised;
    otherwise returns ``stats`` recomputed unchanged. ``device`` must be a CUDA device under NCCL.
    """
    has_bytes = "bytes" in stats
    vals = [stats["nll_sum"], float(stats["tokens"])] + ([float(stats["bytes"])] if has_bytes else [])
    vals = all_reduce_sum(vals, device)
    return _loss_stats(vals[0], int(round(vals[1])), int(round(vals[2])) if has_bytes else None)


def sliding_windows(
    ids: Sequence[int], block_size: int, stride: int
) -> Iterator[tuple[list[int], list[int]]]:
    """(inputs, targets) windows over one document's tokens, every position from 1 on scored once.

    Windows start every ``stride`` tokens and hold up to ``block_size`` inputs; targets the previous
    window already scored are -100. Callers prefix documents with ``<|endoftext|>`` so that the
    document's first token is scored too.
    """
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
    n = len(ids)
    scored_end = 1  # positions [1, scored_end) are already scored
    begin = 0
    while scored_end < n:
        end = min(begin + block_size, n - 1)  # inputs ids[begin:end], targets ids[begin+1:end+1]
        inputs = list(ids[begin:end])
        targets = list(ids[begin + 1 : end + 1])
        already = scored_end - (begin + 1)  # leading targets a previous window scored
        for j in range(max(already, 0)):
            targets[j] = -100
        yield inputs, targets
        scored_end = end + 1
        begin += stride


def batch_windows(
    windows: Iterable[tuple[list[int], list[int]]], batch_size: int, pad: int = EOT_ID
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Group windows into right-padded (inputs, targets) int64 batches (B, T); padding inputs are ``pad`` (the
    tokenizer's end-of-text id), padding targets -100."""
    chunk: list[tuple[list[int], list[int]]] = []

    def emit() -> tuple[torch.Tensor, torch.Tensor]:
        T = max(len(inp) for inp, _ in chunk)
        x = torch.full((len(chunk), T), pad, dtype=torch.long)  # (B, T)
        y = torch.full((len(chunk), T), -100, dtype=torch.long)  # (B, T)
        for b, (inp, tgt) in enumerate(chunk):
            x[b, : len(inp)] = torch.tensor(inp)
            y[b, : len(tgt)] = torch.tensor(tgt)
        return x, y

    for w in windows:
        chunk.append(w)
        if len(chunk) == batch_size:
            yield emit()
            chunk = []
    if chunk:
        yield emit()


def document_windows(
    documents: Iterable[list[int]], block_size: int, stride: int, eot: int = EOT_ID
) -> Iterator[tuple[list[int], list[int]]]:
    """Sliding windows over each document's tokens, each document prefixed with ``<|endoftext|>`` (id ``eot``)."""
    for doc in documents:
        if doc:
            yield from sliding_windows([eot] + list(doc), block_size, stride)


def read_documents(path: str | os.PathLike, *, text_field: str | None = None, limit: int | None = None) -> list[str]:
    """The documents of a text file (the whole file is one) or a JSONL file (``text_field`` of each line).

    A file ending in ``.jsonl`` or any file with ``text_field`` given is read as JSONL (default field
    ``text``); ``limit`` keeps the first documents. Errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--data {path}: no such file or prepared data directory")
    jsonl = text_field is not None or path.suffix == ".jsonl"
    field = text_field or "text"
    if not jsonl:
        try:
            return [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text") from None
    docs: list[str] = []
    for lineno, obj in iter_jsonl(path, "JSONL"):
        if limit is not None and len(docs) >= limit:
            break
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            have = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
            raise UserError(f"{path}:{lineno}: no string field {field!r} (found {have}); choose it with --text-field")
        docs.append(obj[field])
    return docs


def count_windows(doc_lengths: Iterable[int], block_size: int, stride: int) -> int:
    """How many windows :func:`document_windows` yields for documents of these token lengths."""
    total = 0
    for n in doc_lengths:
        if n:  # the document plus its <|endoftext|> prefix has n + 1 tokens, n targets
            total += 1 + max(0, -(-(n - block_size) // stride))
    return total
