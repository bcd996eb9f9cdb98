"""TensorFlow's "tensor bundle" checkpoint format (``.index`` + ``.data-*-of-*``), decoded without TensorFlow.

- ``.index`` is a LevelDB-format table (sorted keys, prefix-compressed, CRC32C-checked blocks, a footer
  with a magic number) mapping each variable name to a ``BundleEntryProto`` protobuf: dtype, shape,
  shard, offset, size, CRC32C. The empty key holds the ``BundleHeaderProto`` (shard count, byte order).
- ``.data-00000-of-00001`` holds the tensors as raw little-endian bytes at those offsets.

Both are decoded here by hand (varints and a few protobuf fields); nothing is unpickled or executed. Every
block and tensor checksum is verified, as TensorFlow does. The only bundles gpt2kit reads are OpenAI's GPT-2
releases (:mod:`gpt2kit.checkpoint.openai`), so a damaged file's advice is to fetch those again.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2kit.errors import UserError

REDOWNLOAD = "re-download the model files (OpenAI's download_model.py or gpt_download.py)"
"""What to do about a damaged file."""
_TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's kTableMagicNumber, which TensorFlow's table keeps
_FOOTER_LEN = 48  # two block handles padded to 40 bytes, then the 8-byte magic
_BLOCK_TRAILER_LEN = 5  # compression type byte + masked CRC32C
_DT_FLOAT = 1  # tensorflow.DataType.DT_FLOAT
_DTYPE_NAMES = {2: "float64", 3: "int32", 9: "int64", 14: "bfloat16", 19: "float16"}


class _Corrupt(ValueError):
    """Bytes that do not decode as the format says; turned into a UserError naming the file."""


# ------------------------------------------------------------------------------------------- CRC32C


@functools.lru_cache(maxsize=1)
def _crc_tables() -> tuple[list[int], np.ndarray, np.ndarray]:
    """Byte table of CRC32C (Castagnoli, reflected), and 16-bit tables for feeding 2 and 4 zero bytes."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0x82F63B78), t >> 1).astype(np.uint32)
    zero2 = _feed_zeros(np.arange(65536, dtype=np.uint32), 2, t)
    zero4 = _feed_zeros(zero2, 2, t)
    return t.tolist(), zero2, zero4


def _feed_zeros(reg: np.ndarray, nbytes: int, table: np.ndarray) -> np.ndarray:
    for _ in range(nbytes):
        reg = table[reg & 0xFF] ^ (reg >> 8)
    return reg


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C of ``data``, the checksum TensorFlow stores for index blocks and tensors."""
    byte_table, zero2, zero4 = _crc_tables()
    buf = np.frombuffer(data, dtype=np.uint8)
    n = buf.size
    # CRC is linear, so the buffer is cut into K equal lanes whose CRCs numpy computes side by side
    # (4 bytes a step), then joined in order: crc(A + B) = shift(crc(A), len(B)) ^ crc(B)
    # 4-byte words per lane; an odd count keeps the transposing copy clear of power-of-two cache strides
    words = int(min(1021, max(63, n // 4096))) | 1
    lanes = n // (4 * words)
    reg = 0xFFFFFFFF
    done = 0
    if lanes >= 8:
        done = lanes * words * 4
        w = np.ascontiguousarray(buf[:done].view("<u4").reshape(lanes, words).T)  # (words, K)
        c = np.zeros(lanes, dtype=np.uint32)
        for row in w:
            c ^= row
            c = zero4[c & 0xFFFF] ^ zero2[c >> 16]
        # shift(r) over one lane of zeros, as four byte-indexed tables
        basis = np.concatenate([np.arange(256, dtype=np.uint32) << np.uint32(8 * k) for k in range(4)])
        for _ in range(words):
            basis = zero4[basis & 0xFFFF] ^ zero2[basis >> 16]
        s0, s1, s2, s3 = (basis[256 * k: 256 * (k + 1)].tolist() for k in range(4))
        for lane_crc in c.tolist():
            reg = s0[reg & 0xFF] ^ s1[(reg >> 8) & 0xFF] ^ s2[(reg >> 16) & 0xFF] ^ s3[reg >> 24] ^ lane_crc
    for b in buf[done:].tolist():
        reg = byte_table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


def _unmask_crc(masked: int) -> int:
    """LevelDB stores block CRCs masked (rotated and offset) so CRCs of CRCs do not look like data."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------- varints and protobuf fields


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the unsigned varint at ``pos``."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _Corrupt("a varint runs past the end of its record")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("a varint is longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a protobuf message; length-delimited values stay bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise _Corrupt("a fixed-width field runs past the end of its record")
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise _Corrupt("a length-delimited field runs past the end of its record")
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise _Corrupt(f"protobuf wire type {wire} is not used by tensor bundles")
        yield number, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _entry(value: bytes) -> dict[str, Any]:
    """The fields of a ``BundleEntryProto`` that gpt2kit uses (absent fields take proto3 defaults)."""
    e: dict[str, Any] = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "crc32c": None,
                         "sliced": False}
    for number, v in _fields(value):
        if number == 1:
            e["dtype"] = v
        elif number == 2:  # TensorShapeProto: repeated Dim dim = 2 (Dim: int64 size = 1)
            for n, dim in _fields(v):
                if n == 2:
                    e["shape"].append(_signed64(dict(_fields(dim)).get(1, 0)))
        elif number in (3, 4, 5):
            e[("shard_id", "offset", "size")[number - 3]] = v
        elif number == 6:
            e["crc32c"] = v
        elif number == 7:
            e["sliced"] = True
    return e


# ------------------------------------------------------------------------------------- the index table


def _block(buf: bytes, handle: bytes | tuple[int, int]) -> bytes:
    """The checked contents of the block at a handle (offset, size) or an encoded handle."""
    if isinstance(handle, (bytes, bytearray)):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
    else:
        offset, size = handle
    end = offset + size
    if end + _BLOCK_TRAILER_LEN > len(buf):
        raise _Corrupt(f"a block at byte {offset} runs past the end of the file")
    data, kind = buf[offset:end], buf[end]
    stored = int.from_bytes(buf[end + 1:end + _BLOCK_TRAILER_LEN], "little")
    if crc32c(buf[offset:end + 1]) != _unmask_crc(stored):
        raise _Corrupt(f"checksum mismatch in the block at byte {offset}")
    if kind != 0:
        raise _Corrupt(f"block at byte {offset} is compressed (type {kind}); TensorFlow bundles are not")
    return data


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs of a table block: keys share a prefix with the previous key."""
    if len(block) < 4:
        raise _Corrupt("a block is shorter than its restart count")
    restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise _Corrupt("a block's restart array is larger than the block")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > end:
            raise _Corrupt("a key or value runs past the end of its block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


def read_bundle_index(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(header, {tensor name: entry}) of a TensorFlow ``.index`` file; corrupt bytes are a UserError."""
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e}); {REDOWNLOAD}") from None
    try:
        if len(buf) < _FOOTER_LEN or int.from_bytes(buf[-8:], "little") != _TABLE_MAGIC:
            raise _Corrupt("no table footer (wrong magic number); truncated or not a checkpoint index")
        footer = buf[-_FOOTER_LEN:]
        _, pos = _varint(footer, 0)  # the metaindex handle: TensorFlow writes an empty metaindex
        _, pos = _varint(footer, pos)
        index_offset, pos = _varint(footer, pos)
        index_size, _ = _varint(footer, pos)
        entries: dict[str, bytes] = {}
        for _, handle in _block_entries(_block(buf, (index_offset, index_size))):
            for key, value in _block_entries(_block(buf, handle)):
                entries[key.decode("utf-8", errors="replace")] = value
        if "" not in entries:
            raise _Corrupt("no bundle header (the empty key)")
        header = {"num_shards": 1, "endianness": 0}
        for number, v in _fields(entries.pop("")):
            if number in (1, 2):
                header[("num_shards", "endianness")[number - 1]] = v
        return header, {name: _entry(v) for name, v in entries.items()}
    except _Corrupt as e:
        raise UserError(f"{path}: not a readable TensorFlow checkpoint index ({e}); {REDOWNLOAD}") from None



# ----------------------------------------------------------------------------------------- the data shards


def read_bundle_tensor(prefix: Path, name: str, e: dict[str, Any], num_shards: int,
                       shards: dict[int, Any]) -> torch.Tensor:
    """The float32 tensor of index entry ``e`` from its data shard, its size and CRC32C checked; ``shards``
    caches the open shard files (by shard id), which the caller closes."""
    if e["sliced"]:
        raise UserError(f"{prefix}.index: {name} is a partitioned variable; gpt2kit reads whole tensors only")
    if e["dtype"] != _DT_FLOAT:
        kind = _DTYPE_NAMES.get(e["dtype"], f"TensorFlow dtype {e['dtype']}")
        raise UserError(f"{prefix}.index: {name} is {kind}, not float32; convert the checkpoint to float32 first")
    shape = e["shape"]
    if e["size"] != 4 * int(np.prod(shape)):
        raise UserError(f"{prefix}.index: {name} claims {e['size']} bytes for shape {shape}; the index is corrupt; "
                        f"{REDOWNLOAD}")
    shard = e["shard_id"]
    data = Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")
    if shard not in shards:
        try:
            shards[shard] = data.open("rb")
        except OSError as err:
            raise UserError(f"{data}: cannot open ({err.strerror or err}); {REDOWNLOAD}") from None
    f = shards[shard]
    have = data.stat().st_size
    if e["offset"] + e["size"] > have:
        raise UserError(f"{data}: {have} bytes, but {name} ends at byte {e['offset'] + e['size']}; "
                        f"the file is truncated; {REDOWNLOAD}")
    f.seek(e["offset"])
    raw = bytearray(e["size"])
    f.readinto(raw)
    if e["crc32c"] is not None and crc32c(raw) != _unmask_crc(e["crc32c"]):
        raise UserError(f"{data}: checksum mismatch in {name}; the file is corrupt; {REDOWNLOAD}")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)).reshape(shape)
