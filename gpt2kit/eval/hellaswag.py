"""HellaSwag, completion style: one scorer for the trainer and ``gpt2kit eval hellaswag``.

Each example is a context ``ctx`` and (usually four) ``endings``; the model reads
``ctx + " " + ending`` and only the ending's tokens are scored. Three ways to pick the answer:

- ``acc``: the ending with the lowest total loss (highest log-likelihood);
- ``acc_norm``: the lowest mean loss per ending token (build-nanogpt's ``acc_norm``);
- ``acc_norm_bytes``: the highest log-likelihood per UTF-8 byte of the ending (lm-evaluation-harness's
  ``acc_norm`` divides by characters, the same on ASCII text; its HellaSwag also rewrites the text first).

The scoring is :func:`gpt2kit.eval.choice.score_choices` (truncation, batching and sharding are its).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2kit.errors import UserError
from gpt2kit.eval.choice import ChoiceItem, score_choices
from gpt2kit.eval.download import cache_root, resolve_data_file
from gpt2kit.io import iter_jsonl
from gpt2kit.tokenizer import Tokenizer, get_tokenizer

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


def hellaswag_items(examples: Sequence[HellaSwagExample], tokenizer: Tokenizer | None = None) -> list[ChoiceItem]:
    """The examples as multiple-choice questions: ``ctx`` then ``" " + ending``, each encoded on its own in
    ``tokenizer`` (the model's; GPT-2's by default); an empty ``ctx`` is ``[eot]``."""
    tok = tokenizer or get_tokenizer()
    items = []
    for ex in examples:
        ctx = tok.encode(ex.ctx) or [tok.eot]
        rows = tuple((ctx, tok.encode(" " + e)) for e in ex.endings)
        items.append(ChoiceItem(rows, ex.label, tuple(len(e) for e in ex.endings),
                                tuple(len(e.encode("utf-8")) for e in ex.endings), where=f"HellaSwag line {ex.line}"))
    return items


def hellaswag_metrics(scores: dict) -> dict:
    """HellaSwag's names for the :func:`~gpt2kit.eval.choice.score_choices` figures."""
    return {"acc": scores["acc"], "acc_norm": scores["acc_per_token"], "acc_norm_bytes": scores["acc_per_byte"],
            "n": scores["n"]}


def score_hellaswag(model: torch.nn.Module, examples: Sequence[HellaSwagExample], *,
                    tokenizer: Tokenizer | None = None, **options: Any) -> dict:
    """Accuracy of ``model`` on ``examples``: ``{"acc", "acc_norm", "acc_norm_bytes", "n"}`` (fractions).

    The text is encoded in ``tokenizer``, the model's (GPT-2's by default). ``options`` are
    :func:`~gpt2kit.eval.choice.score_choices`'s (``device``, ``batch_size``, ``autocast_dtype``, ``rank``,
    ``world_size``, ``progress``): ``batch_size`` examples (all their endings) share a forward pass, and with
    ``world_size > 1`` each rank scores its share and every rank returns the global figures.
    """
    tok = tokenizer or get_tokenizer()
    return hellaswag_metrics(score_choices(model, hellaswag_items(examples, tok), desc="hellaswag", eot=tok.eot,
                                           **options))
