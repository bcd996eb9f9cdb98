"""Corpus -> token shards + ``manifest.json``: the library behind ``gpt2kit prepare`` and the demo.

Pipeline: the main process reads documents in order and sends chunks of them to ``workers``
processes that tokenize (GPT-2 BPE, each document preceded by ``<|endoftext|>``); results come back
in order, at most a few chunks in flight, so memory stays bounded whatever the corpus size. Each
split's tokens stream into shards of ``shard_tokens`` tokens written atomically.

Splits (see :class:`_SplitPlanner` and docs/data.md): the first ``HEAD_TOKENS`` tokens are held back
before anything is written, so a corpus that fits there (any single book) is split knowing its size.
Whole documents go to ``val`` when they can give the asked share within ``SPLIT_TOLERANCE``; where they
cannot (one file, a few or very unequal documents), each long document gives its tail to ``val``, as
nanoGPT's 90/10 cut of a single text. ``manifest.json`` records how (``split``).

Resumability: whenever a shard fills up, the other split's open shard is closed too and the run
records a *checkpoint* (the document and token offset reached, and the running totals) in
``progress.json``. Re-running the same command verifies the shards already written, skips the
documents they cover without tokenizing them, and continues from the last good checkpoint. The
finished run writes ``manifest.json`` last; its presence is what marks a data directory complete.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import multiprocessing as mp
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpt2kit.data.manifest import (
    MANIFEST_KIND,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    PROGRESS_NAME,
    SPLITS,
    read_json,
    shard_bytes,
    tokenizer_record,
    validate_manifest,
    write_manifest,
)
from gpt2kit.data.shards import MAX_SHARD_TOKENS, ShardWriter, verify_shard
from gpt2kit.data.sources import ReadProgress, Source, SourceOptions, iter_documents, resolve_sources
from gpt2kit.errors import UserError
from gpt2kit.io import dir_lock
from gpt2kit.tokenizer import EOT_ID, get_tokenizer
from gpt2kit.version import __version__

DEFAULT_SHARD_TOKENS = 100_000_000  # as build-nanogpt's FineWeb shards
DEFAULT_VAL_FRACTION = 0.01
"""The default val share for large corpora; smaller ones get up to ``MAX_DEFAULT_VAL_FRACTION``."""
MAX_DEFAULT_VAL_FRACTION = 0.1  # nanoGPT's and Raschka's share for a single text
DEFAULT_MIN_VAL_TOKENS = 50_000  # the default share gives at least this many val tokens, up to the 10% above
SPLIT_TOLERANCE = 0.1  # the val share lands within 10% (relative) of the asked share
HEAD_TOKENS = 1 << 24  # tokens held back to plan the split knowing the corpus size (32 MiB as uint16)
_CHUNK_CHARS = 1 << 20  # text per task sent to a worker
_CHUNK_DOCS = 4096
_SHARD_RE = re.compile(r"^(train|val)_\d{6}\.bin$")


def default_workers() -> int:
    """All CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class PrepareConfig:
    """Everything ``prepare`` needs; validated on creation (ValueError naming the flag)."""

    sources: list[str] = field(metadata={"flag": {"positional": True, "nargs": "+", "metavar": "SOURCE"}})
    """What to tokenize: files, directories, globs, hf:DATASET or builtin:NAME."""
    out_dir: Path = field(metadata={"flag": {"name": "--out", "required": True, "metavar": "DIR"}})
    """Output directory for the shards and manifest.json."""
    text_field: str = field(default="text", metadata={"flag": {"metavar": "NAME"}})
    """JSON field / Parquet or dataset column that holds the text."""
    val_fraction: float | None = field(default=None, metadata={"flag": {"metavar": "F"}})
    """Share of tokens for the val split (default: 1%, up to 10% for small corpora; 0: no val split)."""
    val_tokens: int | None = field(default=None, metadata={"flag": {"metavar": "N"}})
    """Instead: the first N tokens form the val split (build-nanogpt style)."""
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    """Tokens per shard."""
    workers: int = field(default_factory=default_workers)
    """Tokenizer processes (default: all CPU cores; 1 = in this process)."""
    hf_config: str | None = field(default=None, metadata={"flag": {"metavar": "NAME"}})
    """Hugging Face dataset config, e.g. sample-10BT."""
    hf_split: str = field(default="train", metadata={"flag": {"metavar": "SPLIT"}})
    """Hugging Face split to stream."""
    hf_data_files: list[str] | None = field(default=None, metadata={"flag": {"nargs": "+", "metavar": "PATH"}})
    """Hugging Face data_files (e.g. with hf:json or hf:parquet for local or remote files)."""
    overwrite: bool = False
    """Replace output in --out that was prepared from another source, tokenizer or settings."""
    progress: bool = True
    """Show a progress bar and messages on stderr (--no-progress: none)."""

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.sources = [str(s) for s in self.sources]
        if self.val_fraction is not None and self.val_tokens is not None:
            raise ValueError("--val-fraction and --val-tokens: give one or the other")
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_tokens is not None and self.val_tokens < 0:
            raise ValueError(f"--val-tokens must be >= 0, got {self.val_tokens}")
        if not 1 <= self.shard_tokens <= MAX_SHARD_TOKENS:
            raise ValueError(f"--shard-tokens must be in [1, {MAX_SHARD_TOKENS}], got {self.shard_tokens}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if not self.text_field:
            raise ValueError("--text-field must not be empty")

    @property
    def source_options(self) -> SourceOptions:
        """How the sources read records."""
        return SourceOptions(self.text_field, self.hf_config, self.hf_split, self.hf_data_files)

    def settings(self) -> dict[str, Any]:
        """The settings that shape the output (recorded in the manifest; a change needs --overwrite)."""
        return {"text_field": self.text_field, "val_fraction": self.val_fraction, "val_tokens": self.val_tokens,
                "shard_tokens": self.shard_tokens}


# ---------------------------------------------------------------------------------------------- tokenizing


def encode_documents(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize texts, each preceded by ``<|endoftext|>``: (concatenated tokens uint16, per-document lengths int64)."""
    enc = get_tokenizer().encoding  # built once per process
    if hasattr(enc, "encode_to_numpy"):
        # with no special tokens allowed or disallowed this is encode_ordinary, minus a Python list per document
        ids = [_encode_to_numpy(enc, t) for t in texts]
    else:
        ids = [enc.encode_ordinary(t) for t in texts]
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))  # (D,) incl. EOT
    out = np.empty(int(lengths.sum()), dtype=np.uint16)
    for start, x in zip((np.cumsum(lengths) - lengths).tolist(), ids):
        out[start] = EOT_ID
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


def tokenize_stream(docs: Iterable[str], workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Tokenized chunks of ``docs`` in order, from ``workers`` processes (1: in this process).

    At most ``2 * workers + 1`` chunks are in flight: the next chunk is read only when a result is
    taken, so memory does not grow with the corpus (``Pool.imap`` would read its whole input ahead).
    """
    get_tokenizer()  # built before forking, so every worker inherits it
    if workers <= 1:
        yield from map(encode_documents, _chunks(docs))
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_worker_init, initargs=(os.getpid(),))
    try:
        for f in [pool.submit(int, 0) for _ in range(workers)]:  # start every worker now
            f.result()
        pending: deque = deque()
        for chunk in _chunks(docs):
            pending.append(pool.submit(encode_documents, chunk))
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


# ---------------------------------------------------------------------------------------------- output state


def _empty_state() -> dict[str, Any]:
    return {"splits": {s: {"tokens": 0, "documents": 0, "shards": []} for s in SPLITS}, "checkpoints": []}


def _shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def _fingerprint(man: dict[str, Any]) -> dict[str, Any]:
    return {**{k: man.get(k) for k in tokenizer_record()}, "source": man.get("source"), "settings": man.get("settings")}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    what = []
    if any(old.get(k) != new[k] for k in tokenizer_record()):
        what.append("tokenizer")
    if old.get("source") != new["source"]:
        what.append("source")
    for key, value in (new["settings"] or {}).items():
        if (old.get("settings") or {}).get(key) != value:
            what.append(f"--{key.replace('_', '-')}")
    return ", ".join(what) or "format"


def _remove_outputs(out_dir: Path, keep: set[str] = frozenset()) -> None:
    """Delete what gpt2kit prepare writes (shards, manifest, progress, temp files) except ``keep``; nothing else."""
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        name = p.name
        ours = _SHARD_RE.match(name) or name in (MANIFEST_NAME, PROGRESS_NAME)
        temp = name.startswith(".") and ".tmp." in name and (
            _SHARD_RE.match(name[1:].split(".tmp.")[0]) or name[1:].split(".tmp.")[0] in (MANIFEST_NAME, PROGRESS_NAME))
        if (ours and name not in keep) or temp:
            p.unlink(missing_ok=True)


def _usable_prefix(out_dir: Path, state: dict[str, Any], log: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    """Keep the shards up to the last checkpoint whose shards all verify (size, header, sha256).

    Returns the kept state and whether every shard verified.
    """
    first_bad, all_ok = len(state["checkpoints"]), True
    for split in SPLITS:
        for e in state["splits"][split]["shards"]:
            try:
                verify_shard(out_dir / e["file"], tokens=e["tokens"], sha256=e["sha256"])
            except UserError as err:
                log(f"will rebuild {e['file']} and what follows it: {err}")
                first_bad, all_ok = min(first_bad, e.get("checkpoint", 0)), False
    kept = _empty_state()
    kept["checkpoints"] = state["checkpoints"][:first_bad]
    for split in SPLITS:
        shards = [e for e in state["splits"][split]["shards"] if e.get("checkpoint", 0) < first_bad]
        kept["splits"][split]["shards"] = shards
        kept["splits"][split]["tokens"] = sum(e["tokens"] for e in shards)
    return kept, all_ok


def default_val_fraction(corpus_tokens: int) -> float:
    """The val share used when none is asked: 1%, raised to give 50,000 tokens, at most 10%."""
    if corpus_tokens <= 0:
        return MAX_DEFAULT_VAL_FRACTION
    return max(DEFAULT_VAL_FRACTION, min(MAX_DEFAULT_VAL_FRACTION, DEFAULT_MIN_VAL_TOKENS / corpus_tokens))


def _whole_document_share(lengths: list[int], fraction: float) -> float:
    """The val share that whole documents alone give under :meth:`_SplitPlanner.pieces`' rule."""
    total = val = 0
    for n in lengths:
        total += n
        if fraction * total - val >= n / 2:
            val += n
    return val / max(total, 1)


class _SplitPlanner:
    """Decides which tokens of each document are validation; deterministic given the order and ``reference``.

    ``reference`` is the size of the held-back head of the corpus (the whole corpus when it fits), so a
    re-run, and a resumed run that reads it back from its checkpoint, decide exactly alike.
    """

    def __init__(self, cfg: PrepareConfig, reference: int, head_lengths: list[int] | None,
                 whole_only: bool | None = None) -> None:
        self.val_tokens, self.reference = cfg.val_tokens, reference
        self.asked_default = cfg.val_tokens is None and cfg.val_fraction is None
        self.fraction = default_val_fraction(reference) if self.asked_default else (cfg.val_fraction or 0.0)
        if whole_only is None:  # a resumed run passes what the first run decided on the head
            # whole documents only, when they land the share within the tolerance on the head of the corpus
            share = _whole_document_share(head_lengths or [], self.fraction) if self.fraction > 0 else 0.0
            whole_only = self.fraction > 0 and abs(share - self.fraction) <= SPLIT_TOLERANCE * self.fraction
        self.whole_only = whole_only

    def pieces(self, totals: dict[str, int], n: int) -> list[tuple[str, int, int]]:
        """(split, start, end) token ranges of the next document of ``n`` tokens, in document order."""
        if self.val_tokens is not None:
            # the first val_tokens tokens of the corpus, cut inside a document as build-nanogpt's first shard
            take = min(n, max(0, self.val_tokens - totals["val_tokens"]))
            return [p for p in (("val", 0, take), ("train", take, n)) if p[1] < p[2]]
        f = self.fraction
        if f <= 0:
            return [("train", 0, n)]
        owed = f * (totals["tokens"] + n) - totals["val_tokens"]
        # a document so long that, whole, it would throw the share off by more than the tolerance
        long = n > 2 * SPLIT_TOLERANCE * f * max(self.reference, totals["tokens"] + n)
        if long and (not self.whole_only or totals["tokens"] + n > self.reference):
            take = min(n, max(0, round(owed)))  # its tail, so that val is back at the asked share
            return [p for p in (("train", 0, n - take), ("val", n - take, n)) if p[1] < p[2]]
        # whole documents, spread evenly: one goes to val once val is owed at least half of it
        return [("val", 0, n)] if owed >= n / 2 else [("train", 0, n)]

    def record(self, totals: dict[str, int]) -> dict[str, Any]:
        """The manifest's ``split`` record: how the corpus was split, the asked and the actual share."""
        tokens, val = totals["tokens"], totals["val_tokens"]
        if self.val_tokens is not None:
            method, asked = "first_tokens", {"asked_tokens": self.val_tokens}
        else:
            cut = totals.get("split_documents", 0)
            method = ("none" if self.fraction <= 0 else "whole_documents" if cut == 0
                      else "document_tails" if totals["val_documents"] == cut else "whole_documents+document_tails")
            asked = {"asked_share": self.fraction, "default": self.asked_default}
        return {"method": method, **asked, "actual_share": round(val / max(tokens, 1), 6),
                "val_tokens": val, "documents_split": totals.get("split_documents", 0)}

    def describe(self, totals: dict[str, int]) -> str:
        """One line saying how the corpus was split."""
        rec = self.record(totals)
        actual = f"val {rec['actual_share']:.2%} of {totals['tokens']:,} tokens"
        if rec["method"] == "first_tokens":
            return f"{actual}: the first {self.val_tokens:,} tokens (--val-tokens)"
        asked = f"asked {self.fraction:.2%}" + (" by default for this corpus size" if self.asked_default else "")
        how = {"none": "no val split (--val-fraction 0)",
               "whole_documents": f"whole documents ({totals['val_documents']:,} of {totals['documents']:,})",
               "document_tails": f"the tail of each of {rec['documents_split']:,} long document(s), whole documents "
                                 "could not give that share",
               "whole_documents+document_tails": f"the tails of {rec['documents_split']:,} long document(s) and "
                                                 f"{totals['val_documents'] - rec['documents_split']:,} whole "
                                                 "document(s), whole documents alone could not give that share"}
        return f"{actual} ({asked}): {how[rec['method']]}"


class _Output:
    """The shards being written, the checkpoints, and ``progress.json``."""

    def __init__(self, out_dir: Path, shard_tokens: int, state: dict[str, Any], header: dict[str, Any]) -> None:
        self.out_dir, self.shard_tokens, self.state, self.header = out_dir, shard_tokens, state, header
        self.open: dict[str, ShardWriter] = {}

    def append(self, split: str, tokens: np.ndarray, doc: int, offset: int, totals: dict[str, int]) -> None:
        """Append ``tokens`` (the part of document ``doc`` from token ``offset``) to ``split``."""
        pos = 0
        while pos < len(tokens):
            writer = self.open.get(split)
            if writer is None:
                index = len(self.state["splits"][split]["shards"])
                writer = self.open[split] = ShardWriter(self.out_dir / _shard_name(split, index))
            take = min(len(tokens) - pos, self.shard_tokens - writer.num_tokens)
            writer.append(tokens[pos:pos + take])
            pos += take
            if writer.num_tokens == self.shard_tokens:
                self.checkpoint({"doc": doc, "offset": offset + pos, "split": split, "totals": dict(totals)})

    def _close_all(self) -> None:
        k = len(self.state["checkpoints"])
        for split, writer in sorted(self.open.items()):
            if writer.num_tokens == 0:
                writer.abort()
                continue
            n = writer.num_tokens
            sha = writer.finish()
            rec = self.state["splits"][split]
            rec["shards"].append({"file": writer.path.name, "tokens": n, "bytes": shard_bytes(n), "sha256": sha,
                                  "checkpoint": k})
            rec["tokens"] += n
        self.open = {}

    def checkpoint(self, position: dict[str, Any]) -> None:
        """Close every open shard and record ``position`` so a re-run can continue from here."""
        self._close_all()
        self.state["checkpoints"].append(position)
        write_manifest(self.out_dir / PROGRESS_NAME, {**self.header, **self.state})

    def abort(self) -> None:
        """Drop the open (unfinished) shards."""
        for writer in self.open.values():
            writer.abort()
        self.open = {}


# ---------------------------------------------------------------------------------------------- prepare


def prepare(sources: str | Iterable[str], out_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Tokenize ``sources`` into verified shards under ``out_dir``; returns the manifest.

    ``options`` are the other :class:`PrepareConfig` fields (``val_fraction``, ``shard_tokens``,
    ``workers``, ``progress``...). When ``out_dir`` already holds this exact preparation and every shard
    verifies, it returns at once; an unfinished run is continued from its last checkpoint.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]  # one source given bare, not a list of its characters
    try:
        cfg = PrepareConfig(list(sources), Path(out_dir), **options)
    except ValueError as e:
        raise UserError(str(e)) from None
    return run_prepare(cfg)


def run_prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """:func:`prepare` for a ready :class:`PrepareConfig`."""
    log = (lambda msg: print(f"prepare: {msg}", file=sys.stderr)) if cfg.progress else (lambda msg: None)
    opts = cfg.source_options
    srcs = resolve_sources(cfg.sources, opts)
    header = {"kind": MANIFEST_KIND, "format_version": MANIFEST_VERSION, **tokenizer_record(), "dtype": "uint16",
              "shard_format": "llm.c (1024-byte header: int32 magic 20240520, version 1, token count; uint16 tokens)",
              "source": [s.describe(opts) for s in srcs], "settings": cfg.settings(), "gpt2kit_version": __version__}
    out_dir = cfg.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a directory; choose another --out")
    created_dir = not out_dir.exists()
    try:
        # one prepare per directory: a second one would interleave shards and progress with this one
        with dir_lock(out_dir, "prepare"):
            return _prepare_locked(cfg, srcs, header, log)
    except BaseException:
        if created_dir:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # nothing was finished: leave no trace (rmdir only removes an empty directory)
        raise


def _prepare_locked(cfg: PrepareConfig, srcs: list[Source], header: dict[str, Any],
                    log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`run_prepare` once ``--out`` is locked."""
    out_dir = cfg.out_dir
    state = _existing_state(cfg, header, log)
    if state is not None and state.get("complete"):
        return state["manifest"]
    _remove_outputs(out_dir, keep={e["file"] for s in SPLITS for e in (state or _empty_state())["splits"][s]["shards"]}
                    | {PROGRESS_NAME})
    try:
        return _write(cfg, srcs, header, state or _empty_state(), log)
    except OSError as e:  # a full disk, above all: the atomic writes kept every finished shard
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        raise UserError(
            f"{e.filename or out_dir}: {e.strerror or e}; the shards finished so far are kept, re-run the same "
            f"command to continue {'once there is free space' if full else 'when this is fixed'}"
        ) from None


def _existing_state(cfg: PrepareConfig, header: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any] | None:
    """What the output directory already holds for this preparation (None: start afresh).

    Returns ``{"complete": True, "manifest": m}`` when finished and verified, else the usable progress state.
    """
    out_dir = cfg.out_dir
    man_path, prog_path = out_dir / MANIFEST_NAME, out_dir / PROGRESS_NAME
    path = man_path if man_path.is_file() else prog_path if prog_path.is_file() else None
    if path is None:
        return None
    try:
        old = validate_manifest(read_json(path), path)
    except UserError as e:
        if not cfg.overwrite:
            raise UserError(f"{e}; or pass --overwrite to replace it") from None
        old = None
    if old is not None and _fingerprint(old) != _fingerprint(header):
        if not cfg.overwrite:
            raise UserError(
                f"--out {out_dir}: already holds data prepared with a different {_differences(old, header)}; "
                "pass --overwrite to replace it, or choose another --out"
            )
        old = None
    if old is None:
        log(f"--overwrite: removing the previous output in {out_dir}")
        _remove_outputs(out_dir)
        return None
    state = {"splits": old["splits"], "checkpoints": old.get("checkpoints", [])}
    kept, all_ok = _usable_prefix(out_dir, state, log)
    if path == man_path and all_ok:
        log(f"{out_dir} is already prepared and every shard verifies; nothing to do")
        prog_path.unlink(missing_ok=True)  # left over if a run stopped between the manifest and its cleanup
        return {"complete": True, "manifest": old}
    if path == man_path:  # it no longer describes what is on disk; progress.json takes over
        write_manifest(prog_path, {**header, **kept})
        man_path.unlink()
    n = sum(len(kept["splits"][s]["shards"]) for s in SPLITS)
    log(f"resuming: {n} verified shard(s) kept, continuing from checkpoint {len(kept['checkpoints'])}")
    return kept


def _write(cfg: PrepareConfig, srcs: list[Source], header: dict[str, Any], state: dict[str, Any],
           log: Callable[[str], None]) -> dict[str, Any]:
    from tqdm import tqdm

    resume = state["checkpoints"][-1] if state["checkpoints"] else None
    start_doc = resume["doc"] if resume else 0
    totals = dict(resume["totals"]) if resume else {"tokens": 0, "val_tokens": 0, "documents": 0, "val_documents": 0,
                                                    "train_documents": 0, "split_documents": 0}
    totals.setdefault("train_documents", totals["documents"] - totals["val_documents"])  # progress.json of 0.1.0
    totals.setdefault("split_documents", 0)
    out = _Output(cfg.out_dir, cfg.shard_tokens, state, header)

    read = ReadProgress()
    docs = itertools.islice(iter_documents(srcs, cfg.source_options, read), start_doc, None)
    sized = all(s.size_bytes is not None for s in srcs)
    bar = tqdm(total=sum(s.size_bytes for s in srcs) if sized else None, unit="B" if sized else "doc",
               unit_scale=True, unit_divisor=1024 if sized else 1000, desc="prepare", disable=not cfg.progress,
               dynamic_ncols=True)
    t0, new_tokens, new_docs, doc = time.perf_counter(), 0, 0, start_doc
    resumed_tokens = totals["tokens"]
    # the worker pool is created (forked) on the first chunk, before the sources start any reader threads
    stream = tokenize_stream(docs, cfg.workers)

    def documents() -> Iterator[np.ndarray]:
        nonlocal new_tokens, new_docs
        for tokens, lengths in stream:
            ends = np.cumsum(lengths)
            for n, end in zip(lengths.tolist(), ends.tolist()):
                yield tokens[end - n:end]
            new_tokens += len(tokens)
            new_docs += len(lengths)
            bar.update((read.bytes if sized else read.documents) - bar.n)
            rate = new_tokens / max(time.perf_counter() - t0, 1e-9)
            # counted as tokenized: the split below holds the head of the corpus back before it counts it
            bar.set_postfix_str(f"docs={start_doc + new_docs:,} tokens={resumed_tokens + new_tokens:,} "
                                f"{rate:,.0f} tok/s",
                                refresh=False)

    try:
        doc_iter = documents()
        head: list[np.ndarray] = []
        reference = totals.get("reference") if resume else None
        if reference is None:
            # hold the head of the corpus back (all of it when it fits), to split knowing its size
            reference = 0
            for d in doc_iter:
                head.append(d)
                reference += len(d)
                if reference >= HEAD_TOKENS:
                    break
            totals["reference"] = reference
            whole = reference < HEAD_TOKENS  # the whole corpus is in hand
            if whole and cfg.val_tokens is not None and 0 < reference <= cfg.val_tokens:
                raise UserError(
                    f"--val-tokens {cfg.val_tokens}: the corpus has only {reference:,} tokens, so none would be left "
                    f"to train on; pass a smaller --val-tokens, e.g. --val-tokens {reference // 10}, or leave it out"
                )
            planner = _SplitPlanner(cfg, reference, [len(d) for d in head])
            totals["whole_only"] = int(planner.whole_only)  # checkpoints carry the plan, so a resume decides alike
        else:
            planner = _SplitPlanner(cfg, reference, None, whole_only=bool(totals.get("whole_only", 0)))
        for tokens in itertools.chain(head, doc_iter):
            n = len(tokens)
            pieces = planner.pieces(totals, n)
            before = dict(totals)
            totals["tokens"] += n
            totals["documents"] += 1
            for split, a, b in pieces:
                totals[f"{split}_documents"] += 1
                if split == "val":
                    totals["val_tokens"] += b - a
            totals["split_documents"] += len(pieces) > 1
            # on resume, the checkpoint's document is partly written already; others before it fully
            skip = resume["offset"] if resume and doc == resume["doc"] else 0
            if skip > n:
                raise UserError(
                    f"--out {cfg.out_dir}: the source no longer matches the interrupted run it continues "
                    f"(document {doc} is shorter now); pass --overwrite to start afresh"
                )
            for split, a, b in pieces:
                if b > skip:
                    out.append(split, tokens[max(a, skip):b], doc, max(a, skip), before)
            doc += 1
        head.clear()
        if totals["documents"] == 0:
            where = ", ".join(cfg.sources)
            raise UserError(f"{where}: no documents found (the corpus is empty); check the source and --text-field")
        if totals["tokens"] == totals["val_tokens"]:
            # only when the corpus outgrew the held-back head, so this is known only now
            raise UserError(
                f"--val-tokens {cfg.val_tokens}: the corpus has only {totals['tokens']:,} tokens, so none are left to "
                f"train on; pass --val-tokens {totals['tokens'] // 10} --overwrite"
            )
        if out.open:  # the final shards get their own checkpoint, so a later corruption of them only redoes the tail
            out.checkpoint({"doc": totals["documents"], "offset": 0, "split": "train", "totals": dict(totals)})
    except BaseException:
        out.abort()
        raise
    finally:
        stream.close()  # stops the worker processes now, also on errors
        bar.close()
    log(planner.describe(totals))
    state["splits"]["train"]["documents"] = totals["train_documents"]
    state["splits"]["val"]["documents"] = totals["val_documents"]
    manifest = {**header, "documents": totals["documents"], "tokens": totals["tokens"], "split": planner.record(totals),
                **state}
    write_manifest(cfg.out_dir / MANIFEST_NAME, manifest)
    (cfg.out_dir / PROGRESS_NAME).unlink(missing_ok=True)
    elapsed = time.perf_counter() - t0
    log(f"{totals['documents']:,} documents, {manifest['splits']['train']['tokens']:,} train + "
        f"{manifest['splits']['val']['tokens']:,} val tokens in {elapsed:.1f}s "
        f"({new_tokens / max(elapsed, 1e-9):,.0f} tokens/s tokenized) -> {cfg.out_dir}")
    return manifest
