"""Where documents come from: local files, directories and globs, Hugging Face datasets, built-in corpora.

A source spec is one of:

- ``builtin:NAME`` — a corpus shipped inside the package (:mod:`gpt2kit.data.builtin`);
- ``hf:NAME`` — a Hugging Face dataset, streamed with ``datasets.load_dataset(NAME, config, split=...,
  streaming=True)`` (``hf:json``/``hf:parquet`` with data files read local files the same way);
- a file: ``.txt``/``.md``/other text (one document per file), ``.jsonl``/``.ndjson`` (one JSON object
  a line), ``.json`` (JSON lines, or one array of objects), ``.parquet``; each optionally compressed
  as ``.gz``, ``.bz2``, ``.xz`` or ``.zst`` (Parquet excepted);
- a directory (every such file below it, sorted by path) or a glob (``data/**/*.jsonl.gz``).

Records are read in order; a record's text is taken from ``--text-field`` (default ``text``).
Empty texts are skipped. Bad input raises :class:`UserError` naming the file (and line or row).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gpt2kit.data.builtin import builtin_documents, get_builtin
from gpt2kit.errors import UserError
from gpt2kit.io import parse_json_line

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
JSONL_EXTS = {".jsonl", ".ndjson"}
JSON_EXTS = {".json"}
PARQUET_EXTS = {".parquet"}
TEXT_EXTS = {".txt", ".text", ".md", ".rst"}
_PROGRESS_EVERY = 256  # documents between progress updates inside a file


@dataclass(kw_only=True)
class SourceOptions:
    """How records are turned into documents, shared by all sources of one run.

    The settings of every command that reads sources (``prepare``, ``tokenizer train``) start from this class,
    so its fields are their flags."""

    text_field: str = field(default="text", metadata={"flag": {"metavar": "NAME"}})
    """JSON field / Parquet or dataset column that holds the text."""
    hf_config: str | None = field(default=None, metadata={"flag": {"metavar": "NAME"}})
    """Hugging Face dataset config, e.g. sample-10BT."""
    hf_split: str = field(default="train", metadata={"flag": {"metavar": "SPLIT"}})
    """Hugging Face split to stream."""
    hf_data_files: list[str] | None = field(default=None, metadata={"flag": {"nargs": "+", "metavar": "PATH"}})
    """Hugging Face data_files (e.g. with hf:json or hf:parquet for local or remote files)."""

    def __post_init__(self) -> None:
        if not self.text_field:
            raise ValueError("--text-field must not be empty")

    @property
    def source_options(self) -> SourceOptions:
        """Just these settings (what the sources and the tokenizer workers are handed)."""
        return SourceOptions(text_field=self.text_field, hf_config=self.hf_config, hf_split=self.hf_split,
                             hf_data_files=self.hf_data_files)


@dataclass
class ReadProgress:
    """How far reading has got, updated by the sources as they go."""

    bytes: int = 0
    """Input bytes consumed (compressed bytes for compressed files)."""
    documents: int = 0
    """Non-empty documents yielded."""


def _compression(path: Path) -> tuple[str | None, str]:
    """(compression or None, the extension under it) of a file name."""
    suffixes = [s.lower() for s in path.suffixes]
    comp = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if comp and len(suffixes) >= 2 else (suffixes[-1] if suffixes and not comp else "")
    return comp, inner


def file_kind(path: Path, *, strict: bool) -> str | None:
    """``text``, ``jsonl``, ``json`` or ``parquet`` for a file name; None for unknown types when ``strict``."""
    _, ext = _compression(path)
    if ext in JSONL_EXTS:
        return "jsonl"
    if ext in JSON_EXTS:
        return "json"
    if ext in PARQUET_EXTS:
        return "parquet"
    if ext in TEXT_EXTS or not strict:
        return "text"
    return None


def _open_binary(path: Path, raw: BinaryIO) -> BinaryIO:
    """A decompressing reader over ``raw`` chosen by ``path``'s suffix."""
    comp, _ = _compression(path)
    if comp is None:
        return raw
    if comp == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if comp == "bz2":
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    if comp == "xz":
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[return-value]
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{path}: reading .zst files needs the zstandard package; pip install 'gpt2kit[hf]'") from None
    # buffered for readline/peek, which the zstd stream reader lacks
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))  # type: ignore[arg-type]


def _decompress_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a compressed file is corrupt or truncated."""
    errors: list[type[BaseException]] = [OSError, EOFError, lzma.LZMAError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def _text_of(record: Any, field_name: str, where: str) -> str:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with a {field_name!r} field, found {type(record).__name__}")
    if field_name not in record:
        # field names are shortened: a record's keys are untrusted input and may be megabytes long
        have = ", ".join(repr(k) if len(k) <= 40 else repr(k[:37]) + "..." for k in list(record)[:10]) or "none"
        raise UserError(f"{where}: no {field_name!r} field (fields: {have}); choose the text field with --text-field")
    text = record[field_name]
    if not isinstance(text, str):
        raise UserError(f"{where}: field {field_name!r} is {type(text).__name__}, not a string")
    return text


@dataclass
class FileSource:
    """One local file."""

    path: Path
    kind: str

    def documents(self, options: SourceOptions, progress: ReadProgress) -> Iterator[str]:
        """The file's documents; ``progress.bytes`` counts this file's consumed bytes (from 0)."""
        if self.kind == "parquet":
            yield from self._parquet(options, progress)
            return
        try:
            raw = open(self.path, "rb")
        except OSError as e:
            raise UserError(f"{self.path}: cannot read ({e.strerror})") from None
        with raw, _open_binary(self.path, raw) as stream:
            try:
                if self.kind == "text":
                    yield self._decode(stream.read())
                    progress.bytes = raw.tell()
                elif self.kind == "jsonl":
                    yield from self._jsonl(stream, raw, options, progress)
                else:
                    head = stream.peek(64)[:64] if hasattr(stream, "peek") else b""
                    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
                        yield from self._json_array(stream, options)
                        progress.bytes = raw.tell()
                    else:
                        yield from self._jsonl(stream, raw, options, progress)
            except _decompress_errors() as e:
                raise UserError(
                    f"{self.path}: cannot decompress or read ({e}); the file is corrupt or truncated"
                ) from None

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise UserError(f"{self.path}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from None

    def _jsonl(self, stream: BinaryIO, raw: BinaryIO, options: SourceOptions, progress: ReadProgress) -> Iterator[str]:
        for lineno, line in enumerate(stream, start=1):
            if lineno == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            where = f"{self.path}:{lineno}"
            record = parse_json_line(line, where)
            yield _text_of(record, options.text_field, where)
            if lineno % _PROGRESS_EVERY == 0:
                progress.bytes = raw.tell()
        progress.bytes = raw.tell()

    def _json_array(self, stream: BinaryIO, options: SourceOptions) -> Iterator[str]:
        try:
            records = json.loads(stream.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(
                f"{self.path}: not valid JSON ({e}); use a JSON array of objects or one object a line"
            ) from None
        for i, record in enumerate(records):
            yield _text_of(record, options.text_field, f"{self.path}: item {i}")

    def _parquet(self, options: SourceOptions, progress: ReadProgress) -> Iterator[str]:
        if _compression(self.path)[0] is not None:
            raise UserError(f"{self.path}: compressed Parquet files are not supported; Parquet compresses internally, "
                            "decompress it")
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{self.path}: reading Parquet needs pyarrow; pip install 'gpt2kit[hf]'") from None
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for anything unreadable
            raise UserError(f"{self.path}: not a readable Parquet file ({e})") from None
        columns = pf.schema_arrow.names
        if options.text_field not in columns:
            raise UserError(
                f"{self.path}: no {options.text_field!r} column (columns: {', '.join(columns[:10])}); "
                "choose the text column with --text-field"
            )
        size, groups, row = self.path.stat().st_size, max(pf.num_row_groups, 1), 0
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g, columns=[options.text_field])
            for text in table.column(0).to_pylist():
                if not isinstance(text, str):
                    raise UserError(f"{self.path}: row {row}: column {options.text_field!r} is {type(text).__name__}, "
                                    "not a string")
                row += 1
                yield text
            progress.bytes = size * (g + 1) // groups


@dataclass
class Source:
    """One resolved source spec: its identity (for the manifest) and how to read it."""

    spec: str
    """As the user wrote it."""
    kind: str
    """``files``, ``hf`` or ``builtin``."""
    files: list[FileSource] = field(default_factory=list)
    name: str = ""
    """Dataset or built-in corpus name."""
    size_bytes: int | None = None
    """Input size when known (drives the progress bar's ETA)."""

    def describe(self, options: SourceOptions) -> dict[str, Any]:
        """What identifies this source in a manifest; a different description means different data.

        Local files are identified by their resolved paths and sizes (a hash of the listing).
        """
        if self.kind == "files":
            import hashlib

            listing = "".join(f"{f.path}\t{f.path.stat().st_size}\n" for f in self.files)
            return {"spec": self.spec, "type": "files", "files": len(self.files), "bytes": self.size_bytes,
                    "first_file": str(self.files[0].path),
                    "listing_sha256": hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()}
        if self.kind == "hf":
            return {"spec": self.spec, "type": "hf", "name": self.name, "config": options.hf_config,
                    "split": options.hf_split, "data_files": options.hf_data_files}

        return {"spec": self.spec, "type": "builtin", "name": self.name, "sha256": get_builtin(self.name).sha256}

    def documents(self, options: SourceOptions, progress: ReadProgress) -> Iterator[str]:
        """Every text of this source in order (empty ones included); ``progress.bytes`` counts from 0."""
        if self.kind == "files":
            done = 0
            for f in self.files:
                sub = ReadProgress()
                for text in f.documents(options, sub):
                    progress.bytes = done + sub.bytes
                    yield text
                done += f.path.stat().st_size
                progress.bytes = done
        elif self.kind == "hf":
            yield from _hf_documents(self.name, options)
        else:
            size, count = get_builtin(self.name).size, get_builtin(self.name).num_documents
            for i, text in enumerate(builtin_documents(self.name), start=1):
                progress.bytes = min(size, size * i // count)
                yield text
            progress.bytes = size


def _hf_documents(name: str, options: SourceOptions) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"hf:{name}: Hugging Face sources need the datasets package; pip install 'gpt2kit[hf]'"
        ) from None
    try:
        ds = datasets.load_dataset(name, options.hf_config, split=options.hf_split, streaming=True,
                                   data_files=options.hf_data_files)
    except Exception as e:  # datasets raises many types (DatasetNotFoundError, ConnectionError, ValueError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"hf:{name}: cannot load the dataset ({first}); check the name, --hf-config, --hf-split and the network"
        ) from None
    for i, row in enumerate(ds):
        yield _text_of(row, options.text_field, f"hf:{name} ({options.hf_split}) row {i}")


def _expand_path(spec: str) -> tuple[list[FileSource], bool]:
    """Files named by a path, directory or glob; the flag says whether the spec was a single file."""
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [FileSource(p.resolve(), kind) for p in matches if p.is_file() and (kind := file_kind(p, strict=True))]
        if not files:
            raise UserError(f"{spec}: the glob matches no .txt/.md/.jsonl/.json/.parquet files (compressed or not)")
        return files, False
    if path.is_dir():
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for n in names:
                p = Path(root) / n
                if not n.startswith(".") and (kind := file_kind(p, strict=True)):
                    found.append(FileSource(p.resolve(), kind))
        if not found:
            raise UserError(f"{spec}: the directory holds no .txt/.md/.jsonl/.json/.parquet files (compressed or not)")
        return sorted(found, key=lambda f: str(f.path)), False
    if path.is_file():
        return [FileSource(path.resolve(), file_kind(path, strict=False) or "text")], True
    raise UserError(f"{spec}: no such file or directory")


def resolve_sources(specs: list[str], options: SourceOptions) -> list[Source]:
    """Turn source specs into :class:`Source` objects, checking that local files and built-in names exist."""
    if not specs:
        raise UserError("no source given; name a file, directory, glob, hf:DATASET or builtin:NAME")
    out = []
    for spec in specs:
        if spec.startswith("builtin:"):
            corpus = get_builtin(spec.removeprefix("builtin:"))
            out.append(Source(spec, "builtin", name=corpus.name, size_bytes=corpus.size))
        elif spec.startswith("hf:"):
            name = spec.removeprefix("hf:")
            if not name:
                raise UserError(f"{spec}: name a dataset, e.g. hf:HuggingFaceFW/fineweb-edu")
            out.append(Source(spec, "hf", name=name))
        else:
            files, _ = _expand_path(spec)
            out.append(Source(spec, "files", files=files, size_bytes=sum(f.path.stat().st_size for f in files)))
    return out


def iter_documents(sources: list[Source], options: SourceOptions, progress: ReadProgress) -> Iterator[str]:
    """Every non-empty document of ``sources`` in order; ``progress`` counts bytes and documents overall."""
    done = 0
    for src in sources:
        sub = ReadProgress()
        for text in src.documents(options, sub):
            progress.bytes = done + sub.bytes
            if text:
                progress.documents += 1
                yield text
        done += src.size_bytes or 0
        progress.bytes = done
