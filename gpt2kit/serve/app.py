"""An OpenAI-compatible HTTP API over the batching :class:`~gpt2kit.serve.engine.Engine` (FastAPI).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``, and the
chat page at ``GET /`` (:mod:`gpt2kit.serve.page`).
Streaming answers are server-sent events in OpenAI's chunk format ending with ``data: [DONE]``; the last chunk
before it carries ``usage`` (with ``stream_options.include_usage`` a chunk of its own with empty ``choices``, as
OpenAI sends it). Every error is ``{"error": {"message", "type", "param", "code"}}``.

Text lives here, not in the engine: token ids are decoded incrementally (:class:`~gpt2kit.prompts.StreamDecoder`:
a character split over two tokens waits for its second half) and ``stop`` strings are matched on the decoded
text, holding back the few characters that could still become a stop string. Request bodies are checked in
:mod:`gpt2kit.serve.params`; one larger than ``max_body_bytes`` is refused with 413 before it is read whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt2kit.errors import UserError
from gpt2kit.prompts import PromptTemplate, StreamDecoder, chat_prompt_ids, template_from_checkpoint
from gpt2kit.serve.engine import Draining, Engine, QueueFull, SamplingParams
from gpt2kit.serve.page import add_page
from gpt2kit.serve.params import (
    COMPLETION_FIELDS,
    ApiError,
    CompletionParams,
    chat_body_schema,
    check_fits,
    completion_body_schema,
    parse_completion_params,
    parse_prompts,
    plain_message,
)

RETRY_AFTER_S = 1
MAX_BODY_BYTES = 4 * 2**20


@dataclass(frozen=True)
class ServedModel:
    """What the API serves: a name, the engine that owns the model, its tokenizer and chat template."""

    name: str
    engine: Engine
    tokenizer: Any
    template: PromptTemplate | None
    """The checkpoint's instruction template; None for a base model (no chat endpoint)."""
    api_key: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    """Request bodies larger than this get 413."""

    @classmethod
    def of(cls, loaded: Any, engine: Engine, name: str, **kw: Any) -> ServedModel:
        """What serving a :class:`~gpt2kit.checkpoint.LoadedModel` serves: the tokenizer its checkpoint carries
        (GPT-2's, or the vocabulary it was trained on) and its stored chat template; ``kw``: the other fields."""
        return cls(name=name, engine=engine, tokenizer=loaded.tokenizer,
                   template=template_from_checkpoint(loaded.checkpoint, loaded.source), **kw)


# ------------------------------------------------------------------------------------------ generation
@dataclass
class Choice:
    """One generated sequence: its tokens, decoded text and where it stopped."""

    index: int
    stops: list[str]
    tokenizer: Any
    tokens: int = 0
    text: str = ""
    sent: int = 0
    """Characters of ``text`` already streamed."""
    finish_reason: str | None = None
    request: Any = None
    decoder: StreamDecoder = field(init=False)

    def __post_init__(self) -> None:
        self.decoder = StreamDecoder(self.tokenizer)

    def add(self, token: int) -> None:
        """Append a generated token; a stop string ends the choice and cuts the text before it."""
        if self.finish_reason is not None:  # tokens the engine made before it saw the cancel
            return
        self.tokens += 1
        self.text += self.decoder.decode(token)
        self._match_stop()

    def end(self, reason: str) -> None:
        """The engine finished the sequence (``stop``, ``length``, ``cancelled`` or an error)."""
        if self.finish_reason is not None:
            return
        self.text += self.decoder.flush()
        self._match_stop()
        if self.finish_reason is None:
            self.finish_reason = reason

    def _match_stop(self) -> None:
        if self.finish_reason is not None or not self.stops:
            return
        hits = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.finish_reason = "stop"
            if self.request is not None:
                self.request.cancel()

    def fresh_text(self) -> str:
        """Text not streamed yet that can no longer turn into a stop string."""
        hold = 0 if self.finish_reason is not None else max((len(s) - 1 for s in self.stops), default=0)
        upto = max(self.sent, len(self.text) - hold)
        piece, self.sent = self.text[self.sent:upto], upto
        return piece


class Generation:
    """The choices of one HTTP request, fed by engine callbacks through an asyncio queue."""

    def __init__(self, served: ServedModel, prompts: list[list[int]], params: CompletionParams) -> None:
        self.served = served
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.choices: list[Choice] = []
        engine = served.engine
        try:
            for p in prompts:
                for j in range(params.n):
                    c = Choice(len(self.choices), params.stop, served.tokenizer)
                    sampling = SamplingParams(
                        max_tokens=params.max_tokens, temperature=params.temperature, top_k=params.top_k,
                        top_p=params.top_p, seed=None if params.seed is None else params.seed + j,
                        stop_token=served.tokenizer.eot,
                    )
                    c.request = engine.submit(p, sampling, self._callback(c, "token"), self._callback(c, "end"))
                    self.choices.append(c)
        except (QueueFull, Draining) as e:
            self.cancel()
            if isinstance(e, Draining):
                raise ApiError(503, "the server is shutting down; retry on another instance", None,
                               "shutting_down", "server_error") from None
            raise ApiError(503, f"the server is busy: more than {engine.max_queue} requests are waiting; retry "
                                f"in {RETRY_AFTER_S} s", None, "queue_full", "server_error",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    def _callback(self, choice: Choice, kind: str):
        def push(value: Any) -> None:  # runs on the engine thread
            self.loop.call_soon_threadsafe(self.events.put_nowait, (choice, kind, value))
        return push

    def cancel(self) -> None:
        """Stop every choice still generating (the client left)."""
        for c in self.choices:
            if c.request is not None:
                c.request.cancel()

    @property
    def finished(self) -> bool:
        """Every choice has a finish reason."""
        return all(c.finish_reason is not None for c in self.choices)

    async def next_event(self, timeout: float | None = None) -> Choice | None:
        """Apply the next engine event; returns the choice it changed (None on timeout)."""
        try:
            choice, kind, value = await asyncio.wait_for(self.events.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if kind == "token":
            choice.add(value)
        else:
            if value.startswith("error"):
                raise ApiError(500, f"generation failed ({value}); the server keeps running", None,
                               "generation_failed", "server_error")
            choice.end(value)
        return choice

    def usage(self) -> dict[str, int]:
        """Prompt and completion tokens of all choices."""
        completion = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


async def _wait_all(gen: Generation, request: Request) -> None:
    """Wait for every choice; cancel them if the client disconnects meanwhile."""
    try:
        while not gen.finished:
            if await gen.next_event(timeout=0.5) is None and await request.is_disconnected():
                gen.cancel()
                return
    except (asyncio.CancelledError, ApiError):
        gen.cancel()
        raise


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ------------------------------------------------------------------------------------------ the app
def create_app(served: ServedModel) -> FastAPI:
    """The FastAPI app; its lifespan starts the engine and, at shutdown, lets it finish every request."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served.engine.start()
        yield
        await asyncio.to_thread(served.engine.stop)

    app = FastAPI(title="gpt2kit", lifespan=lifespan, docs_url=None, redoc_url=None)
    block_size = served.engine.block_size

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error ({type(exc).__name__}: {exc}); the server keeps running", None,
                        "internal_error", "server_error").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", None,
                        "not_found" if exc.status_code == 404 else None).response()

    async def auth(request: Request) -> None:
        # a dependency of the /v1 routes rather than a middleware: an http middleware would relay every
        # streamed chunk through one more task and queue
        if served.api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), served.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the "
                                "key given to `gpt2kit serve --api-key`", None, "invalid_api_key")

    v1 = [Depends(auth)]

    async def read_body(request: Request) -> dict[str, Any]:
        limit = served.max_body_bytes
        too_large = ApiError(413, f"the request body is over {limit / 2**20:.3g} MB, the limit of this server "
                                  "(gpt2kit serve --max-body-mb): send a smaller one", None, "request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():  # counted as it arrives: a chunked body has no Content-Length
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as e:  # also: not UTF-8, an integer too long, nesting too deep
            raise ApiError(400, f"the request body is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "draining" if served.engine.draining else "ok", **served.engine.stats()}

    @app.get("/v1/models", dependencies=v1)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0,
                                            "owned_by": "gpt2kit", "max_model_len": block_size,
                                            "tokenizer": served.tokenizer.name,
                                            "vocab_size": served.tokenizer.vocab_size}]}

    @app.post("/v1/completions", dependencies=v1,
              openapi_extra=completion_body_schema(served.name, served.tokenizer.vocab_size))
    async def completions(request: Request):
        body = await read_body(request)
        params = parse_completion_params(body, served.name,
                                         COMPLETION_FIELDS | {"prompt", "echo", "logprobs", "best_of", "suffix"}, 16)
        for name, ok in (("echo", (None, False)), ("logprobs", (None,)), ("best_of", (None, 1)), ("suffix", (None,))):
            if body.get(name) not in ok:
                raise ApiError(400, f"'{name}' is not supported; leave it out", name)
        prompts = parse_prompts(body, served.tokenizer)
        check_fits(prompts, params.max_tokens, block_size, "prompt")
        return await respond(request, prompts, params, chat=False)

    @app.post("/v1/chat/completions", dependencies=v1, openapi_extra=chat_body_schema(served.name))
    async def chat_completions(request: Request):
        body = await read_body(request)
        if served.template is None:
            raise ApiError(400, f"model '{served.name}' has no chat template: it is a base model, not an "
                                "instruction-tuned checkpoint from `gpt2kit finetune sft`; use /v1/completions "
                                "to continue text", "messages", "no_chat_template")
        if "max_completion_tokens" in body:  # the newer name of max_tokens
            body.setdefault("max_tokens", body.pop("max_completion_tokens"))
        params = parse_completion_params(body, served.name, COMPLETION_FIELDS | {"messages"}, None)
        messages = body.get("messages")
        if isinstance(messages, list):
            messages = [plain_message(m) for m in messages]
        try:
            ids = chat_prompt_ids(messages, served.template, served.tokenizer)
        except UserError as e:
            raise ApiError(400, str(e), "messages") from None
        if params.max_tokens is None:  # OpenAI's default: as long as the context allows
            params.max_tokens = max(1, block_size - len(ids))
        check_fits([ids], params.max_tokens, block_size, "messages")
        return await respond(request, [ids], params, chat=True)

    async def respond(request: Request, prompts: list[list[int]], params: CompletionParams, chat: bool):
        engine = served.engine
        if len(prompts) * params.n > engine.max_batch + engine.max_queue:
            raise ApiError(400, f"{len(prompts)} prompt(s) x n={params.n} asks for {len(prompts) * params.n} "
                                f"sequences; this server takes at most {engine.max_batch + engine.max_queue} at "
                                "once: send fewer prompts or a smaller n", "n")
        gen = Generation(served, prompts, params)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        head = {"id": rid, "object": obj + (".chunk" if chat and params.stream else ""), "created": created,
                "model": served.name}
        if not params.stream:
            await _wait_all(gen, request)
            if chat:
                choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                            "logprobs": None, "finish_reason": c.finish_reason} for c in gen.choices]
            else:
                choices = [{"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                           for c in gen.choices]
            return {**head, "choices": choices, "usage": gen.usage()}

        def chunk(c: Choice, text: str | None, first: bool = False, usage: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                    {"content": text} if text else {})
                choice = {"index": c.index, "delta": delta, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": c.index, "text": text or "", "logprobs": None, "finish_reason": None}
            if c.finish_reason is not None and not first:
                choice["finish_reason"] = c.finish_reason
            return _sse({**head, "choices": [choice], **({"usage": gen.usage()} if usage else {})})

        async def events() -> AsyncIterator[str]:
            try:
                if chat:
                    for c in gen.choices:
                        yield chunk(c, None, first=True)
                ended: set[int] = set()
                while len(ended) < len(gen.choices):
                    c = await gen.next_event()
                    text = c.fresh_text()
                    if c.finish_reason is not None and c.index not in ended:
                        ended.add(c.index)
                        last = len(ended) == len(gen.choices)
                        yield chunk(c, text, usage=last and not params.include_usage)
                    elif text:
                        yield chunk(c, text)
                if params.include_usage:
                    yield _sse({**head, "choices": [], "usage": gen.usage()})
                yield "data: [DONE]\n\n"
            except ApiError as e:
                yield _sse(e.payload())
                yield "data: [DONE]\n\n"
            finally:
                gen.cancel()

        return _Stream(gen, events(), media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    add_page(app, chat=served.template is not None, key_required=served.api_key is not None)
    return app


class _Stream(StreamingResponse):
    """A streaming response that cancels its generation however it ends.

    A client that disconnects makes the next write fail; the event generator itself would only be closed
    whenever it is garbage-collected, so the cancel happens here, at once, and the rows are freed before the
    engine's next step.
    """

    def __init__(self, gen: Generation, content: AsyncIterator[str], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.gen = gen

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.gen.cancel()
