"""Corpus -> token shards + ``manifest.json``: the library behind ``gpt2kit prepare`` and the demo.

Pipeline: the main process reads documents in order and sends chunks of them to ``workers``
processes that tokenize (GPT-2 BPE, each document preceded by ``<|endoftext|>``); results come back
in order, at most a few chunks in flight, so memory stays bounded whatever the corpus size. Each
split's tokens stream into shards of ``shard_tokens`` tokens written atomically.

Splits (see :class:`~gpt2kit.data.split_plan.SplitPlanner` and docs/data.md): the first ``HEAD_TOKENS`` tokens
are held back before anything is written, so a corpus that fits there (any single book) is split knowing its size.
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
import os
import re
import sys
import time
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
    TOKENIZER_SUBDIR,
    read_json,
    shard_bytes,
    tokenizer_record,
    validate_manifest,
    write_manifest,
)
from gpt2kit.data.shards import MAX_SHARD_TOKENS, ShardWriter, verify_shard
from gpt2kit.data.sources import ReadProgress, Source, SourceOptions, iter_documents, resolve_sources
from gpt2kit.data.split_plan import SplitPlanner
from gpt2kit.data.tokenize import default_workers, tokenize_stream
from gpt2kit.errors import UserError
from gpt2kit.io import dir_lock
from gpt2kit.tokenizer import load_tokenizer, write_tokenizer_files
from gpt2kit.version import __version__

DEFAULT_SHARD_TOKENS = 100_000_000  # as build-nanogpt's FineWeb shards
HEAD_TOKENS = 1 << 24  # tokens held back to plan the split knowing the corpus size (32 MiB as uint16)
_SHARD_RE = re.compile(r"^(train|val)_\d{6}\.bin$")


@dataclass
class PrepareConfig(SourceOptions):
    """Everything ``prepare`` needs; validated on creation (ValueError naming the flag)."""

    sources: list[str] = field(metadata={"flag": {"positional": True, "nargs": "+", "metavar": "SOURCE"}})
    """What to tokenize: files, directories, globs, hf:DATASET or builtin:NAME."""
    out_dir: Path = field(metadata={"flag": {"name": "--out", "required": True, "metavar": "DIR"}})
    """Output directory for the shards and manifest.json."""
    val_fraction: float | None = field(default=None, metadata={"flag": {"metavar": "F"}})
    """Share of tokens for the val split (default: 1%, up to 10% for small corpora; 0: no val split)."""
    val_tokens: int | None = field(default=None, metadata={"flag": {"metavar": "N"}})
    """Instead: the first N tokens form the val split (build-nanogpt style)."""
    tokenizer: str = field(default="gpt2", metadata={"flag": {"metavar": "DIR"}})
    """gpt2, or a directory written by `gpt2kit tokenizer train`."""
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    """Tokens per shard."""
    workers: int = field(default_factory=default_workers)
    """Tokenizer processes (default: all CPU cores; 1 = in this process)."""
    overwrite: bool = False
    """Replace output in --out that was prepared from another source, tokenizer or settings."""
    progress: bool = True
    """Show a progress bar and messages on stderr (--no-progress: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
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

    def settings(self) -> dict[str, Any]:
        """The settings that shape the output (recorded in the manifest; a change needs --overwrite)."""
        return {"text_field": self.text_field, "val_fraction": self.val_fraction, "val_tokens": self.val_tokens,
                "shard_tokens": self.shard_tokens}


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
    tok = load_tokenizer(cfg.tokenizer)
    if tok.vocab_size > 65_536:
        raise UserError(f"--tokenizer {cfg.tokenizer}: vocab_size {tok.vocab_size} does not fit uint16 shards "
                        "(at most 65,536); train a smaller vocabulary")
    hint = {"tokenizer_path": tok.path} if tok.path else {}
    header = {"kind": MANIFEST_KIND, "format_version": MANIFEST_VERSION, **tokenizer_record(tok), **hint,
              "dtype": "uint16",
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
    stream = tokenize_stream(docs, cfg.workers, header.get("tokenizer_path"))

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
            planner = SplitPlanner(cfg.val_tokens, cfg.val_fraction, reference, [len(d) for d in head])
            totals["whole_only"] = int(planner.whole_only)  # checkpoints carry the plan, so a resume decides alike
        else:
            planner = SplitPlanner(cfg.val_tokens, cfg.val_fraction, reference, None,
                                   whole_only=bool(totals.get("whole_only", 0)))
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
    if header.get("tokenizer_path"):
        write_tokenizer_files(load_tokenizer(header["tokenizer_path"]), cfg.out_dir / TOKENIZER_SUBDIR)
    write_manifest(cfg.out_dir / MANIFEST_NAME, manifest)
    (cfg.out_dir / PROGRESS_NAME).unlink(missing_ok=True)
    elapsed = time.perf_counter() - t0
    log(f"{totals['documents']:,} documents, {manifest['splits']['train']['tokens']:,} train + "
        f"{manifest['splits']['val']['tokens']:,} val tokens in {elapsed:.1f}s "
        f"({new_tokens / max(elapsed, 1e-9):,.0f} tokens/s tokenized) -> {cfg.out_dir}")
    return manifest
