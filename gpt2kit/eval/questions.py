"""A multiple-choice question as the scorer takes it: (context, continuation) token rows, the gold index and the
lengths the normalised accuracies divide by. Plain data: building questions needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt2kit.tokenizer import Tokenizer, get_tokenizer

Row = tuple[list[int], list[int]]
"""(context tokens, continuation tokens): one scored sequence."""


@dataclass(frozen=True)
class ChoiceItem:
    """One tokenized multiple-choice question."""

    rows: tuple[Row, ...]
    """(context tokens, continuation tokens) of each choice."""
    gold: int
    """Index of the correct choice."""
    chars: tuple[int, ...]
    """Each choice's length in characters (the ``acc_per_char`` divisor)."""
    nbytes: tuple[int, ...]
    """Each choice's length in UTF-8 bytes (the ``acc_per_byte`` divisor)."""
    where: str = ""
    """Where the question came from (``file:line``), for messages."""


def encode_pair(context: str, continuation: str, tokenizer: Tokenizer | None = None) -> Row:
    """Tokens of a (context, continuation) pair as lm-evaluation-harness makes them, in ``tokenizer`` (the
    model's; GPT-2's by default).

    Trailing whitespace of the context moves to the continuation; the whole text is encoded and split where
    the context's own encoding ends, so a BPE merge across the boundary counts for the continuation. An
    empty context becomes ``[eot]``.
    """
    tok = tokenizer or get_tokenizer()
    if not context:
        return [tok.eot], tok.encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]
