"""Token shard files: a 1024-byte header, then uint16 GPT-2 token ids.

The layout is llm.c's (``dev/data/data_common.py``), so gpt2kit shards can be fed to llm.c as they are:

- header: 256 little-endian int32 — ``[0]`` magic ``20240520``, ``[1]`` version ``1`` (uint16 tokens),
  ``[2]`` token count N, the rest zero;
- payload: N little-endian uint16 token ids.

A shard is written under a temporary name and renamed when complete (:func:`gpt2kit.io.atomic_path`),
so a file under a shard's name is always whole. Its integrity (size, header, sha256 of the whole
file) is checked against the manifest by :func:`verify_shard` before anything reads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gpt2kit.errors import UserError
from gpt2kit.io import atomic_path, file_sha256
from gpt2kit.tokenizer import VOCAB_SIZE

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_SHARD_TOKENS = 2**31 - 1  # the count is an int32 in the header


def make_header(num_tokens: int) -> bytes:
    """The 1024-byte header of a shard holding ``num_tokens`` tokens."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, num_tokens
    return header.tobytes()


def read_header(path: str | os.PathLike) -> int:
    """The token count in ``path``'s header; UserError if the file is not a whole gpt2kit/llm.c shard."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: shard file is missing; re-run `gpt2kit prepare` to rebuild it") from None
    except (OSError, ValueError) as e:  # a directory, no permission, a name the OS refuses
        raise UserError(f"{path}: cannot read the shard ({e}); re-run `gpt2kit prepare` to rebuild it") from None
    if len(raw) < HEADER_BYTES:
        raise UserError(f"{path}: shard is truncated (no complete header); re-run `gpt2kit prepare` to rebuild it")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION or header[3:].any():
        raise UserError(f"{path}: not a gpt2kit token shard (bad header); re-run `gpt2kit prepare` to rebuild it")
    num_tokens = int(header[2])
    if size != HEADER_BYTES + num_tokens * TOKEN_DTYPE.itemsize:
        raise UserError(
            f"{path}: shard is {size} bytes but its header announces {num_tokens} tokens "
            f"({HEADER_BYTES + 2 * num_tokens} bytes); it is truncated or corrupt, re-run `gpt2kit prepare` to rebuild "
            "it"
        )
    return num_tokens


def verify_shard(path: str | os.PathLike, *, tokens: int, sha256: str | None, full: bool = True,
                 vocab_size: int = VOCAB_SIZE) -> None:
    """Check ``path`` against its manifest entry: header, size, token count and (when ``full``) sha256.

    Raises UserError naming the file when anything disagrees.
    """
    path = Path(path)
    found = read_header(path)
    if found != tokens:
        raise UserError(
            f"{path}: shard holds {found} tokens but the manifest records {tokens}; "
            "it is not the shard that was prepared, re-run `gpt2kit prepare` to rebuild it"
        )
    if full and sha256 is not None:
        digest = file_sha256(path)
        if digest != sha256:
            raise UserError(
                f"{path}: shard checksum mismatch (sha256 {digest[:16]}..., manifest {sha256[:16]}...); "
                "the file is corrupt, re-run `gpt2kit prepare` to rebuild it"
            )
        # a checksum only proves the file is what its writer wrote; ids past the vocabulary
        # (another tokenizer's shards under a GPT-2 manifest) would fail deep inside the embedding
        if tokens and int(open_shard(path, tokens).max()) >= vocab_size:
            raise UserError(
                f"{path}: shard holds token ids >= {vocab_size}, outside the manifest's vocabulary; "
                "it was not written by its tokenizer, re-run `gpt2kit prepare` to rebuild it"
            )


def open_shard(path: str | os.PathLike, num_tokens: int) -> np.ndarray:
    """The tokens of a (verified) shard as a read-only memory map, shape (N,) uint16."""
    if num_tokens == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> str:
    """Write ``tokens`` as one shard, atomically; returns the file's sha256."""
    writer = ShardWriter(path)
    writer.append(tokens)
    return writer.finish()


class ShardWriter:
    """Streams tokens into one shard under a temporary name; :meth:`finish` renames it into place.

    Memory stays bounded by the appended pieces, not the shard size. :meth:`abort` (or an exception
    before :meth:`finish`) removes the temporary file, so nothing that looks complete is left behind.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.num_tokens = 0
        self._ctx = atomic_path(self.path)
        self._tmp: Path = self._ctx.__enter__()
        self._f: BinaryIO | None = open(self._tmp, "wb")
        self._f.write(make_header(0))  # the real count is written by finish()

    def append(self, tokens: np.ndarray) -> None:
        """Append token ids (any integer array with values < 65536)."""
        assert self._f is not None, "shard already finished"
        if self.num_tokens + len(tokens) > MAX_SHARD_TOKENS:
            raise ValueError(f"a shard holds at most {MAX_SHARD_TOKENS} tokens")
        self._f.write(np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).tobytes())
        self.num_tokens += len(tokens)

    def finish(self) -> str:
        """Write the header, fsync and rename onto the final name; returns the file's sha256."""
        assert self._f is not None, "shard already finished"
        self._f.seek(0)
        self._f.write(make_header(self.num_tokens))
        self._f.close()
        self._f = None
        # hashing the finished file (hot in the page cache) gives the digest `sha256sum` would print
        digest = file_sha256(self._tmp)
        self._ctx.__exit__(None, None, None)
        return digest

    def abort(self) -> None:
        """Drop the unfinished shard (its temporary file is removed)."""
        if self._f is not None:
            self._f.close()
            self._f = None
            try:
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass
