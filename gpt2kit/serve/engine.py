"""Continuous batching: one decode loop serves every active request over one batched KV cache.

Shape letters as in :mod:`gpt2kit.model.gpt`: S slots (most requests decoding at once), B active rows,
L cached length, nh heads, hs head size, V vocab.

A background thread owns the model. Each turn of its loop it

1. admits waiting requests into free slots: the prompts that join together and have the same length are
   prefilled in one forward pass into their consecutive rows of the cache (one pass over the weights for
   all of them, as :func:`gpt2kit.generation.generate` prefills a batch), and each one's first token is sampled;
2. runs one decode step for every active row together: each row feeds its newest token at its own position,
   writes its keys and values at its own length and attends to its own prefix only (:class:`RowCache`);
3. samples each row with :func:`gpt2kit.generation.sample_next` and the request's own ``torch.Generator``, so
   a seeded request draws the same random numbers as ``gpt2kit sample`` with that seed, whoever shares its batch;
4. retires finished and cancelled rows: the last row moves into the freed one, so rows 0..B-1 stay dense.

Requests join and leave between decode steps. The engine knows token ids only; text, stop strings and HTTP
are the caller's (:mod:`gpt2kit.serve.app`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from gpt2kit.generation import packed_by_default, sample_next
from gpt2kit.model.gpt import GPT, KVCache
from gpt2kit.packed_decode import packed_cpu_linears

T = TypeVar("T")


def on_passing_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread that ends when it returns; return its result or raise its exception.

    Build the model and the :class:`Engine` this way when the process does no other torch work. Torch's CPU ops
    run on OpenMP, and libgomp gives each thread that starts a parallel op its own team of worker threads, kept
    as long as that thread lives. Once a process holds more of them than there are cores, libgomp stops spinning
    between ops and lets the workers sleep, so every op pays a wake-up (a model loaded on the main thread and
    decoded on the engine thread is that case; benchmarks/serve.py shows the cost).
    Loading on a thread that ends leaves the engine thread's team the only one.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpt2kit-load") as pool:
        return pool.submit(fn).result()  # leaving the block joins the thread


class QueueFull(Exception):
    """More requests wait for a slot than the engine's ``max_queue`` allows."""


class Draining(Exception):
    """The engine is shutting down and takes no new requests."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded; the same meaning as the flags of ``gpt2kit sample``."""

    max_tokens: int
    """Most tokens to generate (the stop token counts as one)."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy."""
    top_k: int | None = None
    """Sample among the k most likely tokens only."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens with probability >= top_p."""
    seed: int | None = None
    """Seeds the request's own generator; None draws a fresh seed."""
    stop_token: int | None = None
    """Generation ends after this token (``<|endoftext|>``), with finish reason ``stop``."""

    @property
    def greedy(self) -> bool:
        """Argmax decoding: no random numbers are drawn (as in :func:`sample_next`)."""
        return self.temperature == 0 or self.top_k == 1


@dataclass
class Request:
    """A request inside the engine; callbacks run on the engine thread and must not block."""

    prompt: list[int]
    params: SamplingParams
    on_token: Callable[[int], None]
    """Called with each generated token id."""
    on_finish: Callable[[str], None]
    """Called once at the end with ``stop``, ``length``, ``cancelled`` or ``error: ...``."""
    generated: int = 0
    cancelled: bool = False
    generator: torch.Generator | None = None
    last: int = -1
    """The newest token, the input of the next decode step."""
    cache_len: int = 0
    """Positions of this row's cache that hold keys and values."""
    done: bool = field(default=False, repr=False)

    def cancel(self) -> None:
        """Stop generating; the row is freed before the next decode step (safe from any thread)."""
        self.cancelled = True


class RowCache:
    """One block's keys and values for every slot, (S, nh, L, hs) each; every row writes at its own length.

    The model's attention calls ``update(k, v, pos)`` as for a :class:`~gpt2kit.model.gpt.KVCache`; in a decode
    step whose rows differ in length each row's new key goes to position ``lens[row]`` instead of one shared ``pos``.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v  # (S, nh, L, hs)
        self.lens: torch.Tensor | None = None  # (B,) write positions of the current decode step; None: all at pos

    def rows(self, i: int, n: int) -> KVCache:
        """Rows ``i .. i+n-1`` as an ordinary batch cache (views, so a prefill writes straight into them)."""
        return KVCache(self.k[i:i + n], self.v[i:i + n])

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, nh, 1, hs) at each row's own position; return every row's keys/values up to ``pos + 1``."""
        lens = self.lens
        B = k.size(0)
        if lens is None:  # every row is ``pos`` long: the ordinary cache's slice write, no scatter
            return self.rows(0, B).update(k, v, pos)
        rows = torch.arange(B, device=k.device)
        self.k[rows, :, lens] = k[:, :, 0]  # (B, nh, hs) into (S, nh, L, hs) at [row, :, lens[row]]
        self.v[rows, :, lens] = v[:, :, 0]
        return self.k[:B, :, :pos + 1], self.v[:B, :, :pos + 1]  # (B, nh, pos + 1, hs)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy row ``src``'s first ``length`` positions into row ``dst``."""
        self.k[dst, :, :length] = self.k[src, :, :length]
        self.v[dst, :, :length] = self.v[src, :, :length]


class Engine:
    """The batching scheduler: ``submit`` from any thread, one background thread decodes."""

    def __init__(self, model: GPT, *, max_batch: int = 16, max_queue: int = 64, packed: bool | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.model = model.eval()
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.packed = packed_by_default() if packed is None else packed
        cfg = model.config
        self.block_size = cfg.block_size
        # zeroed, not empty: masked-out keys still enter the attention product, and 0 * NaN from uninitialised
        # memory would poison every row (stale values of earlier requests are finite and harmless)
        self._caches = [RowCache(c.k.zero_(), c.v.zero_()) for c in model.make_cache(max_batch, cfg.block_size)]
        self._rows: list[Request] = []  # row i of the cache belongs to _rows[i]; engine thread only
        self._waiting: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._inflight = 0  # submitted and not finished
        self._draining = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counts = collections.Counter()  # finished requests by reason, read by /health
        self.peak_active = 0  # most rows decoded together so far

    # ----------------------------------------------------------------------------------------- public side
    def start(self) -> None:
        """Start the decode thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpt2kit-engine", daemon=True)
            self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, on_token: Callable[[int], None],
               on_finish: Callable[[str], None]) -> Request:
        """Queue a request; raises :class:`QueueFull` or :class:`Draining` instead of queueing past the limits."""
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        if params.max_tokens < 1 or len(prompt) + params.max_tokens > self.block_size:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) must fit the "
                             f"context of {self.block_size} tokens")
        req = Request(list(prompt), params, on_token, on_finish)
        if not params.greedy:
            req.generator = torch.Generator(device=self._caches[0].k.device)
            if params.seed is None:
                req.generator.seed()
            else:
                req.generator.manual_seed(params.seed)
        with self._cv:
            if self._draining:
                raise Draining()
            # requests beyond the slots wait; capacity is max_batch decoding plus max_queue waiting
            if self._inflight + 1 > self.max_batch + self.max_queue:
                raise QueueFull()
            self._inflight += 1
            self._waiting.append(req)
            self._cv.notify()
        return req

    def stats(self) -> dict[str, int]:
        """Active and waiting requests, the most decoded together so far, and finished ones by reason."""
        with self._cv:
            return {"active": self._inflight - len(self._waiting), "waiting": len(self._waiting),
                    "peak_active": self.peak_active, **self.counts}

    @property
    def draining(self) -> bool:
        """New requests are refused (shutting down)."""
        return self._draining

    def drain(self) -> None:
        """Refuse new requests; those already submitted run to their end."""
        with self._cv:
            self._draining = True

    def stop(self, timeout: float | None = None) -> None:
        """Finish every submitted request, then end the decode thread."""
        with self._cv:
            self._draining = True
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ----------------------------------------------------------------------------------------- engine thread
    def _run(self) -> None:
        stack = contextlib.ExitStack()
        if self.packed:
            stack.enter_context(packed_cpu_linears(self.model))
        with stack, torch.inference_mode():
            while True:
                with self._cv:
                    while not self._waiting and not self._rows and not self._stopping:
                        self._cv.wait()
                    if self._stopping and not self._waiting and not self._rows:
                        return
                    joining = []
                    while self._waiting and len(self._rows) + len(joining) < self.max_batch:
                        joining.append(self._waiting.popleft())
                try:
                    self._admit(joining)
                    self._retire()
                    if self._rows:
                        self._decode_step()
                        self._retire()
                except Exception as e:  # a failed step ends the requests in it, never the server
                    for req in self._rows + [r for r in joining if not r.done]:
                        self._finish(req, f"error: {type(e).__name__}: {e}")
                    self._rows = []

    def _admit(self, joining: list[Request]) -> None:
        """Prefill the joining requests into the next free rows and take each one's first token (as generate's
        first step does); prompts of the same length share one forward pass."""
        by_length: dict[int, list[Request]] = {}
        for req in joining:
            if req.cancelled:
                self._finish(req, "cancelled")
            else:
                by_length.setdefault(len(req.prompt), []).append(req)
        device = self._caches[0].k.device
        for group in by_length.values():
            i, n = len(self._rows), len(group)
            self._rows.extend(group)
            self.peak_active = max(self.peak_active, len(self._rows))
            idx = torch.tensor([r.prompt for r in group], dtype=torch.long, device=device)  # (n, T)
            logits, _ = self.model(idx, cache=[c.rows(i, n) for c in self._caches], pos=0, last_only=True)
            logits = logits[:, -1, :]  # (n, V)
            for r in group:
                r.cache_len = idx.size(1)
            self._take_all(group, logits)

    def _decode_step(self) -> None:
        """Feed every row's newest token at its own position and sample the next one (B = len(rows))."""
        rows = self._rows
        device = self._caches[0].k.device
        tokens = torch.tensor([[r.last] for r in rows], dtype=torch.long, device=device)  # (B, 1)
        lens = torch.tensor([r.cache_len for r in rows], dtype=torch.long, device=device)  # (B,)
        top = int(lens.max())
        if int(lens.min()) == top:
            mask = None  # every row has the same length: no key is padding, the unmasked path applies
        else:
            k_pos = torch.arange(top + 1, device=device)  # (L,)
            mask = (k_pos[None, :] <= lens[:, None])[:, None, None, :]  # (B, 1, 1, L): a row sees its own prefix
        for c in self._caches:
            c.lens = None if mask is None else lens
        logits, _ = self.model(tokens, cache=self._caches, pos=top, positions=lens[:, None], attn_mask=mask,
                               last_only=True)
        for r in rows:
            r.cache_len += 1
        self._take_all(rows, logits[:, -1, :])

    def _take_all(self, rows: list[Request], logits: torch.Tensor) -> None:
        """Sample each row of ``logits`` (B, V) for its request: the greedy rows in one argmax, the others each
        with its own generator, then hand every request its token."""
        greedy = [i for i, r in enumerate(rows) if r.params.greedy]
        if len(greedy) == len(rows):
            picked = logits.argmax(dim=-1).tolist()  # no gather of the greedy rows' logits first
        else:
            picked = logits[greedy].argmax(dim=-1).tolist() if greedy else []
        next_ids = dict(zip(greedy, picked))
        for i, r in enumerate(rows):
            if i not in next_ids:
                next_ids[i] = self._sample(r, logits[i:i + 1])
        for i, r in enumerate(rows):
            self._take(r, next_ids[i])

    @staticmethod
    def _sample(req: Request, logits: torch.Tensor) -> int:
        p = req.params
        return int(sample_next(logits, p.temperature, p.top_k, p.top_p, req.generator)[0])

    def _take(self, req: Request, token: int) -> None:
        """Record a sampled token and hand it to the request; finish it at its stop token or length."""
        req.last = token
        req.generated += 1
        if req.cancelled:
            return
        req.on_token(token)
        if req.params.stop_token is not None and token == req.params.stop_token:
            self._finish(req, "stop")
        elif req.generated >= req.params.max_tokens:
            self._finish(req, "length")

    def _finish(self, req: Request, reason: str) -> None:
        if req.done:
            return
        req.done = True
        with self._cv:
            self._inflight -= 1
            self.counts[reason.split(":")[0]] += 1
        req.on_finish(reason)

    def _retire(self) -> None:
        """Free the rows of finished and cancelled requests, moving the last row into each hole."""
        i = 0
        while i < len(self._rows):
            req = self._rows[i]
            if req.cancelled and not req.done:
                self._finish(req, "cancelled")
            if not req.done:
                i += 1
                continue
            last = len(self._rows) - 1
            if i != last:
                moved = self._rows[last]
                for c in self._caches:
                    c.move(last, i, moved.cache_len)
                self._rows[i] = moved
            self._rows.pop()
