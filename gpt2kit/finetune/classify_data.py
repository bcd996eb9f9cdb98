"""Classification data: a table of texts and labels, checked and tokenized.

Text and label columns are configurable (``text``/``label`` by default). The label vocabulary is the sorted
set of training labels (numerically when all are integers) unless given explicitly. A validation/test label
not in the vocabulary, an empty (or all-whitespace) text, or a missing text/label is an error naming the
file, line and what to do. Truncating an over-long text keeps its beginning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2kit.errors import UserError
from gpt2kit.finetune.files import Overlong, check_max_length, check_overlong, fingerprint_ids, read_records
from gpt2kit.tokenizer import get_tokenizer


@dataclass
class ClassificationData:
    """Tokenized texts and label ids of one file."""

    ids: list[list[int]]
    """Token ids of each text (at most max_length)."""
    labels: list[int]
    """Label id of each text (index into ``vocab``)."""
    vocab: list[str]
    """Label names, in id order."""
    truncated: int = 0
    """Texts cut to max_length."""
    dropped: int = 0
    """Over-long texts left out (overlong='drop')."""

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """A short hash of the exact token ids and labels (a resumed run checks its data did not change)."""
        return fingerprint_ids(self.ids, self.labels)

    def subset(self, items: Sequence[int]) -> ClassificationData:
        """The examples at ``items``, in that order."""
        return ClassificationData([self.ids[i] for i in items], [self.labels[i] for i in items], self.vocab)


def label_string(value: Any) -> str | None:
    """A label as its vocabulary name (``1``, ``1.0`` and ``"1"`` are all ``"1"``); None when empty or not a scalar."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = str(value).strip()
    return s or None


def _sorted_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _column(rec: dict[str, Any], where: str, column: str, flag: str) -> Any:
    if column not in rec:
        have = ", ".join(repr(k) for k in rec) or "none"
        raise UserError(f"{where}: no {column!r} column/field (found {have}); pass {flag} to name the right one")
    return rec[column]


def label_vocabulary(path: str | Path, label_column: str = "label") -> list[str]:
    """The sorted set of labels in a classification file (numeric order when every label is an integer)."""
    found: set[str] = set()
    for where, rec in read_records(path):
        label = label_string(_column(rec, where, label_column, "--label-column"))
        if label is None:
            raise UserError(f"{where}: empty or invalid label in column {label_column!r}")
        found.add(label)
    if len(found) < 2:
        raise UserError(f"{path}: needs at least 2 different labels to classify, found {sorted(found)}")
    return _sorted_labels(found)


def load_classification(
    path: str | Path, vocab: Sequence[str], *, max_length: int, text_column: str = "text",
    label_column: str = "label", overlong: Overlong = "truncate", tokenizer: Any = None,
) -> ClassificationData:
    """Read, check and tokenize a classification file against the label vocabulary ``vocab``.

    Errors (naming ``FILE:LINE``): a label not in ``vocab``, an empty text, a missing column. Over-long
    texts follow ``overlong`` (see the module docstring). ``tokenizer`` is the model's own (GPT-2's when None;
    a model over a trained vocabulary needs its tokenizer passed).
    """
    check_overlong(overlong)
    check_max_length(max_length)
    tok = tokenizer or get_tokenizer()
    index = {name: i for i, name in enumerate(vocab)}
    texts, labels, wheres = [], [], []
    for where, rec in read_records(path):
        text = _column(rec, where, text_column, "--text-column")
        raw_label = _column(rec, where, label_column, "--label-column")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: empty text in column {text_column!r}; every example needs some text "
                            "(remove the row or fill it in)")
        label = label_string(raw_label)
        if label is None:
            raise UserError(f"{where}: empty or invalid label in column {label_column!r}")
        if label not in index:
            raise UserError(f"{where}: label {label!r} does not occur in the training data (labels: "
                            f"{list(vocab)}); fix the label, add training examples of it, or list it in --labels")
        texts.append(text)
        labels.append(index[label])
        wheres.append(where)
    ids_all = tok.encode_batch(texts)
    out = ClassificationData([], [], list(vocab))
    for ids, label, where in zip(ids_all, labels, wheres):
        if len(ids) > max_length:
            if overlong == "error":
                raise UserError(f"{where}: text has {len(ids)} tokens, more than --max-length {max_length}; "
                                "raise --max-length or use --overlong truncate/drop")
            if overlong == "drop":
                out.dropped += 1
                continue
            ids = ids[:max_length]
            out.truncated += 1
        out.ids.append(ids)
        out.labels.append(label)
    if not out.ids:
        raise UserError(f"{path}: no example is left after dropping over-long ones; raise --max-length")
    return out


def encode_texts(texts: Sequence[str], max_length: int, tokenizer: Any = None) -> tuple[list[list[int]], int]:
    """Token ids of texts to classify in the classifier's ``tokenizer`` (GPT-2's when None), each cut to its first
    ``max_length`` tokens; (ids, number truncated)."""
    for i, t in enumerate(texts):
        if not t.strip():
            raise UserError(f"text {i + 1} is empty; give every text to classify some content")
    ids = (tokenizer or get_tokenizer()).encode_batch(list(texts))
    truncated = sum(len(x) > max_length for x in ids)
    return [x[:max_length] for x in ids], truncated

