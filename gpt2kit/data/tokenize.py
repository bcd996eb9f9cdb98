"""Documents -> GPT-2 tokens in worker processes, in order, with bounded memory (``gpt2kit prepare``'s pipeline).

Each document is preceded by ``<|endoftext|>``. The main process reads documents and sends chunks of them to
the workers; results come back in order, at most a few chunks in flight.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from gpt2kit.errors import UserError
from gpt2kit.tokenizer import load_tokenizer

_CHUNK_CHARS = 1 << 20  # text per task sent to a worker
_CHUNK_DOCS = 4096


def default_workers() -> int:
    """All CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def encode_documents(texts: list[str], tokenizer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize texts, each preceded by ``<|endoftext|>``: (concatenated tokens uint16, per-document lengths int64).

    ``tokenizer`` is ``gpt2`` (None) or a trained tokenizer's directory (see :func:`load_tokenizer`).
    """
    tok = load_tokenizer(tokenizer)  # built once per process (cached; forked workers inherit it)
    enc, eot = tok.encoding, tok.eot
    if hasattr(enc, "encode_to_numpy"):
        # with no special tokens allowed or disallowed this is encode_ordinary, minus a Python list per document
        ids = [_encode_to_numpy(enc, t) for t in texts]
    else:
        ids = [enc.encode_ordinary(t) for t in texts]
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))  # (D,) incl. EOT
    out = np.empty(int(lengths.sum()), dtype=np.uint16)
    for start, x in zip((np.cumsum(lengths) - lengths).tolist(), ids):
        out[start] = eot
        out[start + 1:start + 1 + len(x)] = x
    return out, lengths


def _encode_to_numpy(enc: Any, text: str) -> np.ndarray:
    try:
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    except UnicodeEncodeError:
        # lone surrogates (valid JSON: "\ud800") are not UTF-8; replace them as encode_ordinary does
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())


def _chunks(docs: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc)
        if chars >= _CHUNK_CHARS or len(chunk) >= _CHUNK_DOCS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _pool_context() -> mp.context.BaseContext:
    # fork starts workers instantly and they inherit the built tokenizer; spawn would re-import torch
    # (via the gpt2kit package) in every worker. The workers are started before any reader threads.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _worker_init(parent: int) -> None:
    # Ctrl-C reaches the whole process group; the main process handles it and stops the pool,
    # so workers ignore it instead of each printing a traceback
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a worker blocks forever on its task queue if the main process is SIGKILLed (OOM killer):
    # ask Linux to end it when the main process dies, and end now if that already happened
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)


def tokenize_stream(docs: Iterable[str], workers: int,
                    tokenizer: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Tokenized chunks of ``docs`` in order, from ``workers`` processes (1: in this process).

    At most ``2 * workers + 1`` chunks are in flight: the next chunk is read only when a result is
    taken, so memory does not grow with the corpus (``Pool.imap`` would read its whole input ahead).
    """
    load_tokenizer(tokenizer)  # built before forking, so every worker inherits it
    encode = encode_documents if tokenizer is None else functools.partial(encode_documents, tokenizer=tokenizer)
    if workers <= 1:
        yield from map(encode, _chunks(docs))
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_worker_init, initargs=(os.getpid(),))
    try:
        for f in [pool.submit(int, 0) for _ in range(workers)]:  # start every worker now
            f.result()
        pending: deque = deque()
        for chunk in _chunks(docs):
            pending.append(pool.submit(encode, chunk))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        raise UserError(
            "a tokenizer worker process died (out of memory?); re-run the same command to resume, "
            "with fewer --workers if it happens again"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
