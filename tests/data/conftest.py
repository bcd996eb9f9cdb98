"""Fixtures for the data tests: small corpora written to temp files, and token-level helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest

DOCS = [
    "Hello world",
    "Call me Ishmael. Some years ago—never mind how long precisely—having little money.",
    "Unicode: naïve café, 東京, emoji 🐋, and a literal <|endoftext|> inside the text.",
    "  leading and trailing whitespace  \n\n",
    "x",
    "Line one\nLine two\n\nParagraph two with numbers 1234567890 and symbols !@#$%^&*().",
] + [f"Document number {i}: " + "the quick brown fox jumps over the lazy dog " * (i % 7 + 1) for i in range(24)]


@pytest.fixture
def docs() -> list[str]:
    """Thirty varied documents (unicode, whitespace, a literal end-of-text string, different lengths)."""
    return list(DOCS)


def write_jsonl(path, texts, field="text"):
    """One JSON object a line, text under ``field``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, field: t}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture
def jsonl_corpus(tmp_path, docs):
    """``docs`` as a JSONL file."""
    return write_jsonl(tmp_path / "src" / "corpus.jsonl", docs)


def encode(text: str) -> list[int]:
    """tiktoken's own GPT-2 encoding of ``text`` (no special tokens)."""
    from gpt2kit.tokenizer import get_tokenizer

    return get_tokenizer().encoding.encode_ordinary(text)


def split_stream(data_dir, split: str) -> np.ndarray:
    """All tokens of a split, shards concatenated, read straight from the files (header skipped)."""
    man = json.loads((data_dir / "manifest.json").read_text())
    parts = [np.fromfile(data_dir / e["file"], dtype="<u2", offset=1024) for e in man["splits"][split]["shards"]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype="<u2")


def documents_of(tokens: np.ndarray) -> list[str]:
    """Decode a token stream back into documents (each must start with <|endoftext|>)."""
    from gpt2kit.tokenizer import EOT_ID, get_tokenizer

    assert len(tokens) == 0 or tokens[0] == EOT_ID, "a split must start with a document's <|endoftext|>"
    cuts = np.flatnonzero(tokens == EOT_ID).tolist() + [len(tokens)]
    return [get_tokenizer().decode(tokens[a + 1:b].tolist()) for a, b in zip(cuts, cuts[1:])]


def shard_files(data_dir) -> dict[str, bytes]:
    """Every file of a data directory by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir())}


def write_token_dir(path, splits: dict[str, list[np.ndarray]]):
    """A data directory holding exactly the given token arrays as shards (for loader tests)."""
    from gpt2kit.data.manifest import MANIFEST_KIND, MANIFEST_VERSION, tokenizer_record, write_manifest
    from gpt2kit.data.shards import write_shard

    path.mkdir(parents=True, exist_ok=True)
    rec = {}
    for split, arrays in splits.items():
        shards = []
        for i, toks in enumerate(arrays):
            name = f"{split}_{i:06d}.bin"
            shards.append({"file": name, "tokens": len(toks), "sha256": write_shard(path / name, toks)})
        rec[split] = {"tokens": sum(len(a) for a in arrays), "shards": shards}
    write_manifest(path / "manifest.json", {"kind": MANIFEST_KIND, "format_version": MANIFEST_VERSION,
                                            **tokenizer_record(), "splits": rec})
    return path


def write_counting_dir(path):
    """Train tokens 0..1000 in shards of uneven sizes (windows of 8 cross shard boundaries, one shard holds 1 token),
    so with block size 8 ``x[:, 0] // 8`` names the window; val tokens 5000..5160."""
    stream = np.arange(0, 1001)  # 1001 tokens -> (1001 - 1) // 8 = 125 windows
    cuts = [0, 97, 98, 400, 655, 1001]
    train = [stream[a:b] for a, b in zip(cuts, cuts[1:])]
    return write_token_dir(path, {"train": train, "val": [np.arange(5000, 5000 + 8 * 20 + 1)]})


@pytest.fixture
def counting_dir(tmp_path):
    """:func:`write_counting_dir` in a temp dir."""
    return write_counting_dir(tmp_path / "data")


@pytest.fixture
def h():
    """The helpers above, as a fixture (test modules here do not import each other)."""
    from types import SimpleNamespace

    return SimpleNamespace(write_jsonl=write_jsonl, encode=encode, split_stream=split_stream,
                           documents_of=documents_of, shard_files=shard_files, write_token_dir=write_token_dir)
