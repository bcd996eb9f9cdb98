"""Fine-tuning data files, and what every data set read from one shares.

Files
    ``.csv``/``.tsv`` (header row), ``.jsonl`` (one JSON object a line) or ``.json`` (a list of objects,
    as Alpaca's ``alpaca_data.json``). Errors name ``FILE:LINE`` (``FILE:#N`` for the N-th object of a
    ``.json`` list).

Over-long examples (more than ``max_length`` tokens), by ``overlong``:
    ``truncate`` (default) keeps the first ``max_length`` tokens; ``drop`` leaves over-long examples out;
    ``error`` stops with an error naming the first one. Truncated and dropped examples are counted and
    reported. Each loader says what truncation keeps of its examples.

A data set's :func:`fingerprint_ids` is the hash a resumed run checks its data against; :func:`hold_out` splits
off a validation share for a run given no validation file.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from gpt2kit.errors import UserError
from gpt2kit.io import parse_jsonl

OVERLONG_CHOICES = ("truncate", "drop", "error")
Overlong = Literal["truncate", "drop", "error"]


BUILTIN_DATA = {"chat": "chat.jsonl"}
"""``builtin:NAME`` fine-tuning data shipped in ``gpt2kit/assets/instructions/`` (see NOTICE):
``chat``, short chat records written for gpt2kit that teach a small model the chat turn format, nothing more."""


def data_file(spec: str | Path) -> Path:
    """The file a ``--train``/``--val`` value names: a path, or ``builtin:NAME`` for data shipped with gpt2kit."""
    text = str(spec)
    if not text.startswith("builtin:"):
        return Path(spec)
    name = text.removeprefix("builtin:")
    if name not in BUILTIN_DATA:
        raise UserError(f"{text}: no such built-in data; use one of "
                        + ", ".join(f"builtin:{n}" for n in BUILTIN_DATA))
    from importlib import resources

    return Path(str(resources.files("gpt2kit") / "assets" / "instructions" / BUILTIN_DATA[name]))


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """The records of a ``.csv``/``.tsv``/``.jsonl``/``.json`` file (or ``builtin:NAME``), each with its location
    ``FILE:LINE``."""
    path = data_file(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    records: list[tuple[str, dict[str, Any]]] = []
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(keepends=True), delimiter="\t" if suffix == ".tsv" else ",")
        if not reader.fieldnames:
            raise UserError(f"{path}: empty file (a header row with column names is needed)")
        try:
            for row in reader:
                if None in row:  # more cells than header columns
                    raise UserError(f"{path}:{reader.line_num}: more cells than the header has columns; "
                                    "quote texts that contain the delimiter")
                if not any((v or "").strip() for v in row.values()):
                    continue  # a blank line
                records.append((f"{path}:{reader.line_num}", dict(row)))
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    elif suffix == ".jsonl":
        for lineno, rec in parse_jsonl(text.splitlines(), str(path)):
            if not isinstance(rec, dict):
                raise UserError(f"{path}:{lineno}: each line must be a JSON object, got {type(rec).__name__}")
            records.append((f"{path}:{lineno}", rec))
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: a .json file must hold a list of records (as alpaca_data.json); "
                            "for one record per line use .jsonl")
        for i, rec in enumerate(data, start=1):
            if not isinstance(rec, dict):
                raise UserError(f"{path}:#{i}: each record must be a JSON object, got {type(rec).__name__}")
            records.append((f"{path}:#{i}", rec))
    else:
        raise UserError(f"{path}: unknown file type {suffix or '(no extension)'!r}; use .csv, .tsv, .jsonl or .json")
    if not records:
        raise UserError(f"{path}: no records")
    return records


def check_overlong(overlong: str) -> None:
    """A ValueError naming --overlong unless it is one of :data:`OVERLONG_CHOICES`."""
    if overlong not in OVERLONG_CHOICES:
        raise ValueError(f"--overlong must be one of {list(OVERLONG_CHOICES)}, got {overlong!r}")


def check_max_length(max_length: int, minimum: int = 1) -> None:
    """A ValueError naming --max-length unless it is an integer of at least ``minimum``."""
    if not isinstance(max_length, int) or max_length < minimum:
        raise ValueError(f"--max-length must be an integer >= {minimum}, got {max_length!r}")


def fingerprint_ids(seqs: Sequence[Sequence[int]], extra: Sequence[int]) -> str:
    """A short hash of exact token ids (and labels or masks in ``extra``): a resumed run's data must match it."""
    h = hashlib.sha256()
    for s in seqs:
        h.update(np.asarray(s, dtype=np.int64).tobytes())
        h.update(b"|")
    h.update(np.asarray(extra, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


D = TypeVar("D", bound="Examples")


class Examples(Protocol):
    """A data set of examples: its size and the examples at given indices."""

    def __len__(self) -> int: ...

    def subset(self: D, items: Sequence[int]) -> D: ...


def hold_out(data: D, fraction: float, seed: int, path: str) -> tuple[D, D]:
    """Split ``data`` into (train, validation): ``fraction`` of the examples (at least one, never all) chosen by
    ``seed``, each part in file order. For a run given --train without --val."""
    n = len(data)
    if n < 2:
        raise UserError(f"{path}: {n} example(s), too few to hold out a validation share; give --val FILE")
    k = min(max(1, round(n * fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return data.subset(sorted(order[k:].tolist())), data.subset(sorted(order[:k].tolist()))

