"""Prompts: how instructions and conversations become the text a model sees, and the text it writes back.

Templates
    A :class:`PromptTemplate` renders an instruction (Alpaca) or a chat record; built-in ones are in
    :data:`TEMPLATES`, others are JSON files with its fields. ``gpt2kit finetune sft`` stores the template
    in the checkpoint, and ``gpt2kit sample --instruction``, ``gpt2kit chat`` and ``gpt2kit serve`` read it
    back, so a prompt at inference is the prompt the model was trained on.

Records
    :func:`record_pieces` turns an Alpaca or chat record into text pieces, each marked as prompt or response;
    :func:`tokenize_pieces` tokenizes each piece on its own and ends every response with ``<|endoftext|>``.
    A conversation waiting for the assistant's reply (:func:`chat_prompt_ids`) is the same record with an
    empty last reply, minus that reply's ``<|endoftext|>``.

Streaming text
    :class:`StreamDecoder` turns generated token ids into text as they come: the bytes of a character split
    over two tokens wait for the rest, and :meth:`StreamDecoder.flush` ends the text (an incomplete
    character becomes U+FFFD).
"""

from __future__ import annotations

import codecs
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2kit.errors import UserError
from gpt2kit.tokenizer import Tokenizer

# -------------------------------------------------------------------------------------------- templates

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)
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
    def from_dict(cls, d: dict[str, Any], source: str = "template") -> PromptTemplate:
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
        prompt_input=(ALPACA_PREAMBLE_INPUT
                      + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
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


# ------------------------------------------------------------------------------------------------ records

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


def tokenize_pieces(pieces: list[tuple[str, bool]], tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """(ids, is_response per token): each piece tokenized on its own (a prompt encodes as it will at inference),
    every response followed by <|endoftext|>."""
    ids: list[int] = []
    is_response: list[bool] = []
    for text, response in pieces:
        part = tokenizer.encode(text) if text else []
        if response:
            part = part + [tokenizer.eot]
        ids.extend(part)
        is_response.extend([response] * len(part))
    return ids, is_response


def chat_prompt_ids(messages: list[dict[str, Any]], template: PromptTemplate, tokenizer: Tokenizer,
                    where: str = "messages") -> list[int]:
    """Token ids of a conversation that ends with a user turn, up to where the assistant's reply begins."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: must be a non-empty list of {{'role', 'content'}} objects")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise UserError(f"{where}: the last message must have role 'user' (the model replies to it)")
    record = {"messages": [*messages, {"role": "assistant", "content": ""}]}
    ids, _ = tokenize_pieces(record_pieces(record, where, template), tokenizer)
    return ids[:-1]  # the empty reply's <|endoftext|>: the model writes the reply from here


def trim_conversation(messages: list[dict[str, Any]], template: PromptTemplate, tokenizer: Tokenizer,
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


# ------------------------------------------------------------------------------------------ streaming text

class StreamDecoder:
    """Generated token ids to text, one token at a time, never splitting a UTF-8 character.

    ``skip_eot``: ``<|endoftext|>`` adds no text (it ends a reply); False spells it out, as any other token.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_eot: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_eot = skip_eot
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, token: int) -> str:
        """The text ``token`` completes: empty while a character's bytes are still incomplete."""
        if self.skip_eot and token == self.tokenizer.eot:
            return ""
        return self._utf8.decode(self.tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        """The text still held back at the end (U+FFFD for an incomplete character); the decoder starts afresh."""
        return self._utf8.decode(b"", final=True)
