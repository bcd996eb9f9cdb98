"""Conversations as token ids, encoded exactly as ``gpt2kit finetune sft`` encodes its chat records.

A chat record is tokenized piece by piece, each earlier reply followed by ``<|endoftext|>``
(:func:`gpt2kit.finetune.data.record_pieces` and :func:`~gpt2kit.finetune.data.encode_pieces`); a
conversation waiting for the assistant's reply is the same record with an empty last reply, minus that
reply's ``<|endoftext|>``. Used by the ``/v1/chat/completions`` endpoint and by ``gpt2kit chat``.
"""

from __future__ import annotations

from typing import Any

from gpt2kit.errors import UserError
from gpt2kit.finetune.data import PromptTemplate, encode_pieces, record_pieces


def chat_prompt_ids(messages: list[dict[str, Any]], template: PromptTemplate, tokenizer: Any,
                    where: str = "messages") -> list[int]:
    """Token ids of a conversation that ends with a user turn, up to where the assistant's reply begins."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: must be a non-empty list of {{'role', 'content'}} objects")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise UserError(f"{where}: the last message must have role 'user' (the model replies to it)")
    record = {"messages": [*messages, {"role": "assistant", "content": ""}]}
    ids = encode_pieces(record_pieces(record, where, template), tokenizer).ids
    return ids[:-1]  # the empty reply's <|endoftext|>: the model writes the reply from here


def trim_conversation(messages: list[dict[str, Any]], template: PromptTemplate, tokenizer: Any,
                      budget: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Drop the oldest turns (a system message stays) until the prompt has at most ``budget`` tokens.

    Returns the kept messages and their prompt ids. When the last user message alone is too long, its
    prompt keeps the last ``budget`` tokens.
    """
    system = messages[:1] if messages and messages[0].get("role") == "system" else []
    turns = messages[len(system):]
    while True:
        ids = chat_prompt_ids(system + turns, template, tokenizer)
        if len(ids) <= budget or len(turns) <= 1:
            break
        # drop through the oldest user message and the reply to it, so the conversation still starts with a user
        cut = next((i for i in range(1, len(turns)) if turns[i].get("role") == "user"), len(turns) - 1)
        turns = turns[cut:]
    if len(ids) > budget:
        ids = ids[-budget:]
    return system + turns, ids
