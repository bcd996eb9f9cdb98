"""HellaSwag, completion style: one scorer for the trainer and ``gpt2kit eval hellaswag``.

Each example is a context ``ctx`` and (usually four) ``endings``; the model reads
``ctx + " " + ending`` and only the ending's tokens are scored. Three ways to pick the answer:

- ``acc``: the ending with the lowest total loss (highest log-likelihood);
- ``acc_norm``: the lowest mean loss per ending token (build-nanogpt's ``acc_norm``);
- ``acc_norm_bytes``: the highest log-likelihood per UTF-8 byte of the ending
  (lm-evaluation-harness's ``acc_norm``, which divides by the choice's length).

Contexts longer than the model's ``block_size`` (never the case for GPT-2's 1024 tokens) are
left-truncated: the ending and the context tokens just before it are kept.

All endings of ``batch_size`` examples go through the model in one right-padded forward pass. Under
torchrun, rank r scores examples r, r + world_size, ... and the counts are all-reduced, so every
rank returns the global figures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2kit.distributed import all_reduce_sum
from gpt2kit.errors import UserError
from gpt2kit.eval.download import cache_root, resolve_data_file
from gpt2kit.eval.scoring import fit_row, model_block_size, scored_items
from gpt2kit.io import iter_jsonl
from gpt2kit.tokenizer import get_tokenizer

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_FILE = "hellaswag_val.jsonl"


@dataclass(frozen=True)
class HellaSwagExample:
    """One validated HellaSwag item."""

    ctx: str
    """The context the endings continue."""
    endings: tuple[str, ...]
    """Candidate endings (four in the official data)."""
    label: int
    """Index of the correct ending."""
    line: int
    """1-based line number in the source file, for messages."""
    ind: int | None = None
    """The official ``ind`` field, when present."""


def parse_example(obj: object, path: str | os.PathLike, lineno: int) -> HellaSwagExample:
    """Validate one decoded JSON line of ``path``; errors name the file and line."""
    source = f"{path}:{lineno}"
    if not isinstance(obj, dict):
        raise UserError(f"{source}: expected a JSON object with ctx, endings and label, got {type(obj).__name__}")
    for key in ("ctx", "endings", "label"):
        if key not in obj:
            raise UserError(f"{source}: missing {key!r}; HellaSwag lines need ctx, endings and label")
    ctx, endings, label = obj["ctx"], obj["endings"], obj["label"]
    if not isinstance(ctx, str):
        raise UserError(f"{source}: 'ctx' must be a string, got {type(ctx).__name__}")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) and e for e in endings):
        raise UserError(f"{source}: 'endings' must be a list of at least 2 non-empty strings")
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)  # some mirrors store the label as a string
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
        raise UserError(f"{source}: 'label' {obj['label']!r} is out of range for {len(endings)} endings")
    ind = obj.get("ind")
    return HellaSwagExample(
        ctx=ctx, endings=tuple(endings), label=label, line=lineno,
        ind=ind if isinstance(ind, int) else None,
    )


def load_examples(path: str | os.PathLike, limit: int | None = None) -> list[HellaSwagExample]:
    """The first ``limit`` (default all) examples of a HellaSwag JSONL file, validated.

    A malformed line is a UserError naming the file and its line number.
    """
    path = Path(path)
    examples: list[HellaSwagExample] = []
    for lineno, obj in iter_jsonl(path, "HellaSwag JSONL"):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(parse_example(obj, path, lineno))
    if not examples:
        raise UserError(f"{path}: no examples found; expected HellaSwag JSONL (one object per line)")
    return examples


def hellaswag_path(data: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None,
                   url: str | None = None, flag: str = "--data") -> Path:
    """The ``--data`` file when given, else the official validation file (``url``, default
    :data:`HELLASWAG_URL`), downloaded once into ``cache_dir`` (default ``<cache>/hellaswag``)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "hellaswag"
    return resolve_data_file(data, url=url or HELLASWAG_URL, filename=HELLASWAG_FILE,
                             what="HellaSwag validation data", cache_dir=cache_dir, flag=flag)


def _example_rows(ex: HellaSwagExample, block_size: int) -> list[tuple[list[int], list[int]]]:
    tok = get_tokenizer()
    ctx = tok.encode(ex.ctx)
    rows = []
    for ending in ex.endings:
        row = fit_row(ctx, tok.encode(" " + ending), block_size)
        if row is None:
            raise UserError(
                f"HellaSwag example at line {ex.line}: an ending is longer than the model's block_size "
                f"({block_size} tokens); "
                "evaluate with a model of a longer context"
            )
        rows.append(row)
    return rows


@torch.no_grad()
def score_hellaswag(
    model: torch.nn.Module,
    examples: Sequence[HellaSwagExample],
    *,
    device: torch.device | str,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> dict:
    """Accuracy of ``model`` on ``examples``: ``{"acc", "acc_norm", "acc_norm_bytes", "n"}`` (fractions).

    ``batch_size`` examples (all their endings) share a forward pass. With ``world_size > 1`` this
    rank scores its share and, when torch.distributed is initialised, the counts are summed over
    ranks so every rank returns the global figures.
    """
    block_size = model_block_size(model)
    correct = correct_norm = correct_bytes = 0
    scored = scored_items(model, examples, lambda ex: _example_rows(ex, block_size), batch_size=batch_size,
                          rank=rank, world_size=world_size, device=device, autocast_dtype=autocast_dtype,
                          desc="hellaswag", progress=progress)
    for ex, total, tokens, _ in scored:  # total: (k,) summed loss of each of the k endings
        per_token = total / tokens  # (k,)
        n_bytes = torch.tensor([len(e.encode("utf-8")) for e in ex.endings], dtype=torch.float64)
        per_byte = total / n_bytes  # (k,) = -loglik per byte; lowest wins
        correct += int(int(total.argmin()) == ex.label)
        correct_norm += int(int(per_token.argmin()) == ex.label)
        correct_bytes += int(int(per_byte.argmin()) == ex.label)
    n = len(examples[rank::world_size])
    if world_size > 1:
        correct, correct_norm, correct_bytes, n = (
            int(round(v)) for v in all_reduce_sum([correct, correct_norm, correct_bytes, n], device)
        )
    if n == 0:
        return {"acc": float("nan"), "acc_norm": float("nan"), "acc_norm_bytes": float("nan"), "n": 0}
    return {"acc": correct / n, "acc_norm": correct_norm / n, "acc_norm_bytes": correct_bytes / n, "n": n}
