"""What a request to the OpenAI API asks for: its JSON body checked, field by field, into parameters.

A bad field is an :class:`ApiError` that names it, answered as OpenAI's error object
``{"error": {"message", "type", "param", "code"}}``. The same rules are published as JSON Schema in the app's
OpenAPI description (:func:`completion_body_schema`, :func:`chat_body_schema`): a change to one is a change to both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

MAX_STOP_STRINGS = 4


class ApiError(Exception):
    """An error answered as OpenAI's JSON error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def payload(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The JSON error response."""
        return JSONResponse(self.payload(), status_code=self.status, headers=self.headers)


def _field(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ApiError(400, f"'{name}' must be {what}, got {json.dumps(value)[:80]}", name)
    return value


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: float | None,
            lo_open: bool = False) -> float | None:
    value = _field(body, name, (int, float), "a number", default)
    if value is None:
        return None
    if not (lo < value if lo_open else lo <= value) or value > hi:
        raise ApiError(400, f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}", name)
    return float(value)


def _int(body: dict[str, Any], name: str, lo: int, default: int | None) -> int | None:
    value = _field(body, name, (int,), "an integer", default)
    if value is not None and value < lo:
        raise ApiError(400, f"'{name}' must be >= {lo}, got {value}", name)
    return value


@dataclass
class CompletionParams:
    """What a completion or chat request asks for besides its prompt: sampling, stop strings, streaming, n."""

    max_tokens: int | None
    temperature: float
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: list[str]
    stream: bool
    n: int
    include_usage: bool = False
    """``stream_options.include_usage``: usage in a last chunk of its own with empty ``choices``, as OpenAI sends
    it; otherwise on the chunk that ends the last choice (clients that read ``chunk.choices[0]`` keep working)."""


COMPLETION_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "n",
                     "stream_options", "user", "presence_penalty", "frequency_penalty", "logit_bias"}


def parse_completion_params(body: dict[str, Any], model_name: str, allowed: set[str],
                            default_max: int | None) -> CompletionParams:
    """Check the fields both endpoints share; an :class:`ApiError` names the first bad one."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unrecognized request argument: '{unknown[0]}' (supported: {', '.join(sorted(allowed))})",
                       unknown[0])
    model = _field(body, "model", (str,), "a string")
    if model is not None and model != model_name:
        raise ApiError(404, f"model '{model}' is not served here; this server serves '{model_name}' "
                            "(GET /v1/models)", "model", "model_not_found")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, -2.0, 2.0, 0.0) != 0.0:
            raise ApiError(400, f"'{name}' is not supported; leave it out or 0", name)
    if body.get("logit_bias"):
        raise ApiError(400, "'logit_bias' is not supported; leave it out", "logit_bias")
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP_STRINGS:
        stops = list(stop)
    else:
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOP_STRINGS} strings", "stop")
    if any(s == "" for s in stops):
        raise ApiError(400, "'stop' strings must not be empty", "stop")
    stream_options = _field(body, "stream_options", (dict,), "an object", {})
    if set(stream_options) - {"include_usage"}:
        raise ApiError(400, "'stream_options' supports only include_usage (usage is always sent)", "stream_options")
    include_usage = _field(stream_options, "include_usage", (bool,), "true or false", False)
    return CompletionParams(
        max_tokens=_int(body, "max_tokens", 1, default_max),
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 0.0, 1.0, None, lo_open=True),
        top_k=_int(body, "top_k", 1, None),
        seed=_seed(body),
        stop=stops,
        stream=_field(body, "stream", (bool,), "true or false", False),
        n=_int(body, "n", 1, 1),
        include_usage=include_usage,
    )


def _seed(body: dict[str, Any]) -> int | None:
    seed = _field(body, "seed", (int,), "an integer")
    if seed is not None and not -2**63 <= seed < 2**64:  # what torch.Generator.manual_seed takes
        raise ApiError(400, f"'seed' must be in [-2**63, 2**64), got {seed}", "seed")
    return seed


def parse_prompts(body: dict[str, Any], tokenizer: Any) -> list[list[int]]:
    """``prompt``: a string, a list of strings, a list of token ids or a list of token-id lists."""
    prompt = body.get("prompt")
    bad = ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of "
                        "token-id lists", "prompt")
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            prompts = [prompt]
        else:
            prompts = prompt
    else:
        raise bad
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(tokenizer.encode(p) if p else [tokenizer.eot])  # "" starts from <|endoftext|>, as sample
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if not all(0 <= t < tokenizer.vocab_size for t in p):
                raise ApiError(400, f"'prompt' token ids must be in [0, {tokenizer.vocab_size})", "prompt")
            out.append(list(p))
        else:
            raise bad
    return out


def check_fits(prompts: list[list[int]], max_tokens: int, block_size: int, param: str) -> None:
    """A 400 with the numbers when a prompt, or prompt plus ``max_tokens``, does not fit the context."""
    for i, p in enumerate(prompts):
        which = f"prompt {i}" if len(prompts) > 1 else "the prompt"
        if len(p) >= block_size:
            raise ApiError(400, f"{which} has {len(p)} tokens; the model's context holds {block_size} tokens, "
                                "prompt and completion together: shorten the prompt", param, "context_length_exceeded")
        if len(p) + max_tokens > block_size:
            raise ApiError(400, f"{which} ({len(p)} tokens) + max_tokens ({max_tokens}) = {len(p) + max_tokens} "
                                f"tokens, more than the model's context of {block_size}: set max_tokens to at "
                                f"most {block_size - len(p)}", "max_tokens", "context_length_exceeded")


def plain_message(m: Any) -> Any:
    """A message as the templates read it: OpenAI's content-part lists (``[{"type": "text", "text": ...}]``)
    joined into one string, the ``developer`` role as ``system``."""
    if not isinstance(m, dict):
        return m
    parts = m.get("content")
    if isinstance(parts, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
        m = {**m, "content": "".join(p["text"] for p in parts)}
    if m.get("role") == "developer":  # OpenAI's newer name for the system role
        m = {**m, "role": "system"}
    return m


# ------------------------------------------------------------------------------------------ the published schema
def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _shared_fields(model_name: str) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1}
    return {
        "model": {"type": "string", "enum": [model_name]},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer", "minimum": -2**63, "maximum": 2**64 - 1},
        "stop": {"anyOf": [text, {"type": "array", "items": text, "maxItems": MAX_STOP_STRINGS}]},
        "stream": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 1},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}},
                           "additionalProperties": False},
        "user": {"type": "string"},
        "presence_penalty": {"type": "number", "enum": [0]},
        "frequency_penalty": {"type": "number", "enum": [0]},
        "logit_bias": {"type": "object", "maxProperties": 0},
    }


def completion_body_schema(model_name: str, vocab_size: int) -> dict[str, Any]:
    """The OpenAPI request body of ``POST /v1/completions``: what :func:`parse_completion_params` and
    :func:`parse_prompts` accept (published at /openapi.json; the fuzz test generates requests from it)."""
    ids = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": vocab_size - 1}, "minItems": 1}
    prompt = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}, ids,
                        {"type": "array", "items": ids, "minItems": 1}]}
    return _json_body({"type": "object", "required": ["prompt"], "additionalProperties": False, "properties": {
        **_shared_fields(model_name), "prompt": prompt, "echo": {"type": "boolean", "enum": [False]},
        "logprobs": {"type": "null"}, "best_of": {"type": "integer", "enum": [1]}, "suffix": {"type": "null"}}})


def chat_body_schema(model_name: str) -> dict[str, Any]:
    """The OpenAPI request body of ``POST /v1/chat/completions``."""
    part = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}
    message = {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": part}]}}}
    return _json_body({"type": "object", "required": ["messages"], "additionalProperties": False, "properties": {
        **_shared_fields(model_name), "messages": {"type": "array", "items": message, "minItems": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1}}})
