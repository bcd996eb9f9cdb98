"""Instruction-tuning (SFT) data: Alpaca and chat records as token ids with the response positions marked.

Each record is either Alpaca (``instruction``, optional ``input``, ``output``) or chat (``messages``: a list of
``{"role": "system"|"user"|"assistant", "content": ...}``); :func:`gpt2kit.prompts.record_pieces` renders it
with a :class:`~gpt2kit.prompts.PromptTemplate`. A record with no ``output`` (or chat with no assistant
message) is an error naming it; an empty ``output`` is kept and teaches the model to end at once. The prompt
is tokenized separately from the response, exactly as ``gpt2kit sample --instruction`` encodes a prompt;
every response ends with ``<|endoftext|>``. Only response tokens (and their ``<|endoftext|>``) are
predicted: every other target is -100.

Truncating an over-long example keeps its prompt and the beginning of its response; an example whose
prompt alone fills ``max_length`` has no response token left and is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2kit.errors import UserError
from gpt2kit.finetune.files import Overlong, check_max_length, check_overlong, fingerprint_ids, read_records
from gpt2kit.prompts import PromptTemplate, record_pieces, tokenize_pieces
from gpt2kit.tokenizer import get_tokenizer

IGNORE_INDEX = -100
"""Target value the loss ignores (prompt, padding, boundaries between packed examples)."""


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
        return fingerprint_ids([e.ids for e in self.examples], [int(m) for e in self.examples for m in e.trainable])

    def subset(self, items: Sequence[int]) -> SFTData:
        """The examples at ``items``, in that order."""
        return SFTData([self.examples[i] for i in items])


def encode_pieces(pieces: list[tuple[str, bool]], tokenizer: Any) -> SFTExample:
    """Tokenize a record's pieces (:func:`gpt2kit.prompts.tokenize_pieces`); the responses are what is trained."""
    return SFTExample(*tokenize_pieces(pieces, tokenizer))


def load_sft(path: str | Path, template: PromptTemplate, *, max_length: int, overlong: Overlong = "truncate",
             tokenizer: Any = None) -> SFTData:
    """Read, check and tokenize an Alpaca or chat file (records of both kinds may mix) with ``tokenizer``, the
    model's own (GPT-2's when None; a model over a trained vocabulary needs its tokenizer passed)."""
    check_overlong(overlong)
    check_max_length(max_length, 2)
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
