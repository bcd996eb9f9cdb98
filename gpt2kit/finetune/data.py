"""Fine-tuning data: classification tables, instruction and chat records, prompt templates and batches.

Shape letters: B batch, T padded sequence length (<= max_length), K labels.

Files
    ``.csv``/``.tsv`` (header row), ``.jsonl`` (one JSON object a line) or ``.json`` (a list of objects,
    as Alpaca's ``alpaca_data.json``). Errors name ``FILE:LINE`` (``FILE:#N`` for the N-th object of a
    ``.json`` list).

Classification (``load_classification``)
    Text and label columns are configurable (``text``/``label`` by default). The label vocabulary is
    the sorted set of training labels (numerically when all are integers) unless given explicitly.
    A validation/test label not in the vocabulary, an empty (or all-whitespace) text, or a missing
    text/label is an error naming the file, line and what to do.

Instruction tuning (``load_sft``)
    Each record is either Alpaca (``instruction``, optional ``input``, ``output``) or chat
    (``messages``: a list of ``{"role": "system"|"user"|"assistant", "content": ...}``). A record with no
    ``output`` (or chat with no assistant message) is an error naming it; an empty ``output`` is kept
    and teaches the model to end at once. The prompt is rendered with a :class:`PromptTemplate` and
    tokenized separately from the response, exactly as ``gpt2kit sample --instruction`` encodes a prompt;
    every response ends with ``<|endoftext|>``. Only response tokens (and their ``<|endoftext|>``) are
    predicted: every other target is -100.

Over-long examples (more than ``max_length`` tokens), by ``overlong``:
    ``truncate`` (default) keeps the first ``max_length`` tokens: a text's beginning; an instruction
    example's prompt and the beginning of its response. An instruction example whose prompt alone fills
    ``max_length`` has no response token left and is dropped. ``drop`` leaves over-long examples out;
    ``error`` stops with an error naming the first one. Truncated and dropped examples are counted
    and reported.

Batches are right-padded with ``<|endoftext|>`` and carry a real-token ``mask`` (B, T); with causal
attention no real token attends to padding. Packing (SFT) puts several examples into one row with
per-example ``positions`` and a ``doc`` id per token from which :func:`packed_attn_mask` builds a
block-diagonal causal mask, so packed examples never see each other.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

import numpy as np
import torch

from gpt2kit.data.stream import STATE_VERSION, EpochStream
from gpt2kit.errors import UserError
from gpt2kit.io import parse_jsonl
from gpt2kit.tokenizer import get_tokenizer

IGNORE_INDEX = -100
"""Target value the loss ignores (prompt, padding, boundaries between packed examples)."""
OVERLONG_CHOICES = ("truncate", "drop", "error")
Overlong = Literal["truncate", "drop", "error"]


# ------------------------------------------------------------------------------------------- reading files

def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """The records of a ``.csv``/``.tsv``/``.jsonl``/``.json`` file, each with its location ``FILE:LINE``."""
    path = Path(path)
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


def _check_overlong(overlong: str) -> None:
    if overlong not in OVERLONG_CHOICES:
        raise ValueError(f"--overlong must be one of {list(OVERLONG_CHOICES)}, got {overlong!r}")


def _check_max_length(max_length: int, minimum: int = 1) -> None:
    if not isinstance(max_length, int) or max_length < minimum:
        raise ValueError(f"--max-length must be an integer >= {minimum}, got {max_length!r}")


# -------------------------------------------------------------------------------------------- classification

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
        return _fingerprint(self.ids, self.labels)

    def subset(self, items: Sequence[int]) -> "ClassificationData":
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
    texts follow ``overlong`` (see the module docstring).
    """
    _check_overlong(overlong)
    _check_max_length(max_length)
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
    """Token ids of texts to classify, each cut to its first ``max_length`` tokens; (ids, number truncated)."""
    for i, t in enumerate(texts):
        if not t.strip():
            raise UserError(f"text {i + 1} is empty; give every text to classify some content")
    ids = (tokenizer or get_tokenizer()).encode_batch(list(texts))
    truncated = sum(len(x) > max_length for x in ids)
    return [x[:max_length] for x in ids], truncated


# -------------------------------------------------------------------------------------------- templates

ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)


@dataclass(frozen=True)
class PromptTemplate:
    """How instructions and chat turns become the text the model sees (placeholders are replaced literally)."""

    name: str
    """A label for logs and checkpoints."""
    prompt: str
    """An instruction without input; must contain ``{instruction}``; ends where the response starts."""
    prompt_input: str
    """An instruction with input; must contain ``{instruction}`` and ``{input}``."""
    user: str
    """A user turn of a chat record; must contain ``{content}``."""
    assistant: str
    """Text before an assistant's reply (part of the prompt, not trained on)."""
    system: str = "{content}\n\n"
    """A system message of a chat record; must contain ``{content}``."""
    default_system: str = ""
    """Text that starts a chat record without a system message."""

    def __post_init__(self) -> None:
        need = {"prompt": ("{instruction}",), "prompt_input": ("{instruction}", "{input}"),
                "user": ("{content}",), "system": ("{content}",)}
        for name, marks in need.items():
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"template {self.name!r}: {name} must be a string")
            for mark in marks:
                if mark not in value:
                    raise ValueError(f"template {self.name!r}: {name} must contain {mark}")
        for name in ("assistant", "default_system", "name"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"template {self.name!r}: {name} must be a string")

    def format_prompt(self, instruction: str, input: str = "") -> str:
        """The prompt for an instruction (and optional input); the model's reply continues it."""
        if input:
            return self.prompt_input.replace("{instruction}", instruction).replace("{input}", input)
        return self.prompt.replace("{instruction}", instruction)

    def to_dict(self) -> dict[str, str]:
        """Plain data for checkpoints and template files."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "template") -> "PromptTemplate":
        """A template from plain data; a clear error naming ``source`` when a field is missing or wrong."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(n for n in ("prompt", "prompt_input", "user", "assistant") if n not in d)
        if unknown or missing:
            raise UserError(f"{source}: template fields wrong (unknown {unknown}, missing {missing}); "
                            f"fields: {sorted(names)}")
        try:
            return cls(**{"name": Path(source).stem, **d})
        except ValueError as e:
            raise UserError(f"{source}: {e}") from None


TEMPLATES: dict[str, PromptTemplate] = {
    "alpaca": PromptTemplate(
        name="alpaca",
        prompt=ALPACA_PREAMBLE + "### Instruction:\n{instruction}\n\n### Response:\n",
        prompt_input=ALPACA_PREAMBLE_INPUT + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        user="### Instruction:\n{content}\n\n",
        assistant="### Response:\n",
        system="{content}\n\n",
        default_system=ALPACA_PREAMBLE,
    ),
    "chat": PromptTemplate(
        name="chat",
        prompt="<|user|>\n{instruction}\n<|assistant|>\n",
        prompt_input="<|user|>\n{instruction}\n\n{input}\n<|assistant|>\n",
        user="<|user|>\n{content}\n",
        assistant="<|assistant|>\n",
        system="<|system|>\n{content}\n",
        default_system="",
    ),
}
"""Built-in templates. ``alpaca`` renders a one-turn chat exactly as the Alpaca prompt without input.
The ``<|user|>`` markers of ``chat`` are ordinary text to the GPT-2 tokenizer."""


def get_template(spec: str) -> PromptTemplate:
    """A built-in template by name, or one read from a JSON file with the :class:`PromptTemplate` fields."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    path = Path(spec)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise UserError(f"--template {spec}: file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"--template {spec}: not a readable JSON file ({e})") from None
        if not isinstance(data, dict):
            raise UserError(f"--template {spec}: must hold a JSON object with the template fields")
        return PromptTemplate.from_dict(data, str(path))
    raise UserError(f"--template {spec!r}: not a built-in template ({', '.join(TEMPLATES)}) nor a .json file")


def template_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> PromptTemplate | None:
    """The prompt template stored by ``gpt2kit finetune sft`` in a checkpoint dict, if any."""
    record = ckpt.get("finetune")
    if not isinstance(record, dict) or not isinstance(record.get("template"), dict):
        return None
    return PromptTemplate.from_dict(record["template"], source)


# ---------------------------------------------------------------------------------------- instruction data

@dataclass
class SFTExample:
    """One tokenized instruction example."""

    ids: list[int]
    """Prompt and response tokens (the response ends with <|endoftext|>)."""
    trainable: list[bool]
    """Per token: True when the loss predicts it (response tokens), False for prompt tokens."""

    def targets(self) -> list[int]:
        """Next-token targets, one per token of ``ids``: the next id where it is a response token, else -100."""
        nxt = self.ids[1:]
        out = [t if keep else IGNORE_INDEX for t, keep in zip(nxt, self.trainable[1:])]
        return out + [IGNORE_INDEX]  # the last token has no next token inside this example

    def num_trained(self) -> int:
        """How many tokens the loss predicts."""
        return sum(self.trainable[1:])


@dataclass
class SFTData:
    """Tokenized instruction examples of one file."""

    examples: list[SFTExample]
    truncated: int = 0
    """Examples whose response was cut at max_length."""
    dropped: int = 0
    """Over-long examples left out (overlong='drop', or nothing of the response fit)."""

    def __len__(self) -> int:
        return len(self.examples)

    def fingerprint(self) -> str:
        """A short hash of the exact token ids and masks."""
        return _fingerprint([e.ids for e in self.examples], [int(m) for e in self.examples for m in e.trainable])

    def subset(self, items: Sequence[int]) -> "SFTData":
        """The examples at ``items``, in that order."""
        return SFTData([self.examples[i] for i in items])


def _text_field(rec: dict[str, Any], name: str, where: str, required: bool, what: str) -> str:
    value = rec.get(name)
    if value is None:
        if required:
            raise UserError(f"{where}: record has no {name!r} ({what}); every Alpaca record needs "
                            "'instruction' and 'output' ('input' is optional)")
        return ""
    if not isinstance(value, str):
        raise UserError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    return value


def record_pieces(rec: dict[str, Any], where: str, template: PromptTemplate) -> list[tuple[str, bool]]:
    """An Alpaca or chat record as text pieces, each (text, is_response); responses end the record's turns.

    The <|endoftext|> after each response is added at tokenization, not here.
    """
    if "messages" in rec:
        messages = rec["messages"]
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
        pieces: list[tuple[str, bool]] = []
        prompt = ""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
                raise UserError(f"{where}: message {i + 1} must be an object with a 'role' and a string 'content'")
            role, content = m["role"], m["content"]
            if role == "system":
                if i != 0:
                    raise UserError(f"{where}: message {i + 1}: a system message may only come first")
                prompt += template.system.replace("{content}", content)
            elif role == "user":
                if i == 0:
                    prompt += template.default_system
                prompt += template.user.replace("{content}", content)
            elif role == "assistant":
                if i == 0:
                    prompt += template.default_system
                pieces.append((prompt + template.assistant, False))
                pieces.append((content, True))
                prompt = ""
            else:
                raise UserError(f"{where}: message {i + 1} has role {role!r}; use system, user or assistant")
        if not any(is_resp for _, is_resp in pieces):
            raise UserError(f"{where}: chat record has no assistant message to learn from")
        return pieces  # text after the last assistant reply has nothing to train and is left out
    if "instruction" not in rec and "output" not in rec:
        have = ", ".join(repr(k) for k in rec) or "none"
        raise UserError(f"{where}: neither an Alpaca record ('instruction', 'input', 'output') nor a chat "
                        f"record ('messages'); found fields {have}")
    instruction = _text_field(rec, "instruction", where, True, "the task")
    output = _text_field(rec, "output", where, True, "the response to learn")
    inp = _text_field(rec, "input", where, False, "")
    if not instruction.strip():
        raise UserError(f"{where}: 'instruction' is empty")
    return [(template.format_prompt(instruction, inp), False), (output, True)]


def encode_pieces(pieces: list[tuple[str, bool]], tokenizer: Any) -> SFTExample:
    """Tokenize each piece on its own (a prompt encodes as it will at inference) and end responses with EOT."""
    ids: list[int] = []
    trainable: list[bool] = []
    for text, is_response in pieces:
        part = tokenizer.encode(text) if text else []
        if is_response:
            part = part + [tokenizer.eot]
        ids.extend(part)
        trainable.extend([is_response] * len(part))
    return SFTExample(ids, trainable)


def load_sft(path: str | Path, template: PromptTemplate, *, max_length: int, overlong: Overlong = "truncate",
             tokenizer: Any = None) -> SFTData:
    """Read, check and tokenize an Alpaca or chat file (records of both kinds may mix)."""
    _check_overlong(overlong)
    _check_max_length(max_length, 2)
    tok = tokenizer or get_tokenizer()
    out = SFTData([])
    for where, rec in read_records(path):
        ex = encode_pieces(record_pieces(rec, where, template), tok)
        if len(ex.ids) > max_length:
            if overlong == "error":
                raise UserError(f"{where}: example has {len(ex.ids)} tokens (prompt + response), more than "
                                f"--max-length {max_length}; raise --max-length or use --overlong truncate/drop")
            ex = SFTExample(ex.ids[:max_length], ex.trainable[:max_length])
            if overlong == "drop" or ex.num_trained() == 0:
                out.dropped += 1
                continue
            out.truncated += 1
        out.examples.append(ex)
    if not out.examples:
        raise UserError(f"{path}: no example is left after dropping over-long ones; raise --max-length")
    return out


D = TypeVar("D", "ClassificationData", "SFTData")


def hold_out(data: D, fraction: float, seed: int, path: str) -> tuple[D, D]:
    """Split ``data`` into (train, validation): ``fraction`` of the examples (at least one, never all) chosen by
    ``seed``, each part in file order. For a run given --train without --val."""
    n = len(data)
    if n < 2:
        raise UserError(f"{path}: {n} example(s), too few to hold out a validation share; give --val FILE")
    k = min(max(1, round(n * fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return data.subset(sorted(order[k:].tolist())), data.subset(sorted(order[:k].tolist()))


def _fingerprint(seqs: Sequence[Sequence[int]], extra: Sequence[int]) -> str:
    h = hashlib.sha256()
    for s in seqs:
        h.update(np.asarray(s, dtype=np.int64).tobytes())
        h.update(b"|")
    h.update(np.asarray(extra, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------------------------- batches

def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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


__all__ = [
    "IGNORE_INDEX", "ClassificationData", "EpochBatches", "PromptTemplate", "SFTData", "SFTExample", "TEMPLATES",
    "classification_batch", "encode_texts", "get_template", "label_vocabulary",
    "load_classification", "load_sft", "pack_examples", "packed_attn_mask", "packed_batch", "pad_right",
    "read_records", "record_pieces", "sft_batch", "steps_per_epoch", "template_from_checkpoint",
]
