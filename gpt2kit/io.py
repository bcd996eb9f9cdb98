"""Files: atomic writing (write to a temporary name in the same directory, fsync, then rename) and the one
JSONL reader.

A crash at any moment leaves either the old file or the complete new one, never a half-written file
under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from gpt2kit.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and rename the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def _fsync_dir(directory: Path) -> None:
    # the rename itself must reach the disk, or a power cut can undo it
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def parse_json_line(line: str | bytes, where: str, hint: str = "each line must be one JSON object") -> Any:
    """One JSONL line parsed; a line that is not JSON (or not UTF-8) raises a UserError starting with ``where``."""
    try:
        return json.loads(line)
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text; convert the file to UTF-8") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); {hint}") from None


def parse_jsonl(lines: Iterable[str | bytes], source: str, hint: str = "each line must be one JSON object"
                ) -> Iterator[tuple[int, Any]]:
    """``(line_number, object)`` for each non-blank line; errors name ``source`` and the line."""
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            yield lineno, parse_json_line(line, f"{source}:{lineno}", hint)


def iter_jsonl(path: str | os.PathLike, what: str = "JSONL") -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line of the file ``path``.

    A missing file, bytes that are not UTF-8 and a line that is not JSON each raise a UserError naming
    the file (and line); ``what`` says what the file should have been.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            yield from parse_jsonl(f, str(path), f"{what} needs one object per line")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; expected {what}") from None
