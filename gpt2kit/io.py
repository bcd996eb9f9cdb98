"""Files: atomic writing (temporary name in the same directory, fsync, rename), the one JSONL reader, and
the one-command-per-directory lock.

A crash at any moment leaves either the old file or the complete new one, never a half-written file
under the final name. Files get the mode ``open()`` would give them (0666 minus the umask), whatever
the library that wrote the temporary file chose (safetensors writes 0600).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gpt2kit.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; dir_lock then only records the holder
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".gpt2kit.lock"


def current_umask() -> int:
    """This process's umask, read without changing it where the OS allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it and set it back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
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


def publish_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the finished directory ``tmp`` (its files fsynced by their writers) onto the new name ``path``,
    atomically and durably: a crash leaves either no ``path`` or the whole directory under it."""
    tmp, path = Path(tmp), Path(path)
    _fsync_dir(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # the rename itself must reach the disk, or a power cut can undo it
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a whole file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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


def _read_holder(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        parts = path.read_text(encoding="utf-8").split(maxsplit=1)
        if parts and parts[0].isdigit():
            return f"`gpt2kit {parts[1].strip()}` (PID {parts[0]})" if len(parts) > 1 else f"PID {parts[0]}"
    return "another process"


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, what: str, flag: str = "--out") -> Iterator[Path]:
    """Hold ``directory`` for one command (``what``, e.g. ``prepare``); UserError naming the holder's PID if taken.

    The lock is an OS lock (``flock``) on ``directory/.gpt2kit.lock``: the kernel drops it when the holder
    exits however it exits, so a SIGKILLed command never blocks the next one. The file holds the PID and
    command for the message; it is removed on release.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise UserError(
                f"{flag} {directory}: in use by {_read_holder(path)}; wait for it to finish or stop it, "
                f"or choose another {flag}"
            ) from None
        # the holder before us may have removed the file between our open and our lock: lock the file
        # that is there now, or two commands would each hold a lock on a different file
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked, so no one else holds this file
        os.close(fd)
