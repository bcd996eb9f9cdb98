"""Public-domain corpora shipped inside the package, so the demo and ``builtin:NAME`` work offline.

Each corpus is a verbatim copy of a file from the project's offline data, xz-compressed under
``gpt2kit/assets/corpora/``; its sha256 (of the uncompressed bytes) is checked on every read.
Sources and licenses are listed in the NOTICE file.
"""

from __future__ import annotations

import lzma
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources

from gpt2kit.errors import UserError
from gpt2kit.io import parse_jsonl


def _jsonl_texts(data: str) -> Iterator[str]:
    for _, record in parse_jsonl(data.splitlines(), "embedded JSONL corpus"):
        yield record["text"]


_CHAPTER_RE = re.compile(r"^CHAPTER \d+\.", re.MULTILINE)


def _chapters(data: str) -> Iterator[str]:
    starts = [m.start() for m in _CHAPTER_RE.finditer(data)]
    if not starts or starts[0] > 0:
        starts.insert(0, 0)  # keep any front matter as its own document
    for a, b in zip(starts, starts[1:] + [len(data)]):
        text = data[a:b].strip()
        if text:
            yield text


@dataclass(frozen=True)
class BuiltinCorpus:
    """One embedded corpus."""

    name: str
    """Used as ``builtin:NAME``."""
    asset: str
    """File under ``gpt2kit/assets/corpora/`` (xz-compressed)."""
    sha256: str
    """sha256 of the uncompressed file."""
    size: int
    """Uncompressed size in bytes."""
    num_documents: int
    """Documents the splitter yields."""
    description: str
    """One line for --help and docs."""
    split: Callable[[str], Iterator[str]]
    """Turns the whole uncompressed text into documents."""


BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    c.name: c
    for c in (
        BuiltinCorpus(
            name="sotu",
            asset="sotu.jsonl.xz",
            sha256="a0df50c6d33f7dcee610967d971a261c8641498fb3b78a0c5311969fb46e5e38",
            size=10_782_974,
            num_documents=233,
            description="US State of the Union addresses 1790-2021, one address per document (~2.1M tokens)",
            split=_jsonl_texts,
        ),
        BuiltinCorpus(
            name="moby-dick",
            asset="moby-dick.txt.xz",
            sha256="fe282a57094ed62e7144fb7c804a9748fc1c909bf3b49d06e7276015f9f67240",
            size=1_204_997,
            num_documents=135,
            description="Herman Melville's Moby-Dick, one chapter per document (~0.3M tokens)",
            split=_chapters,
        ),
    )
}
DEFAULT_CORPUS = "sotu"


def get_builtin(name: str) -> BuiltinCorpus:
    """The embedded corpus called ``name``; UserError listing the choices otherwise."""
    try:
        return BUILTIN_CORPORA[name]
    except KeyError:
        raise UserError(
            f"builtin:{name}: no such built-in corpus; choose one of: "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_CORPORA)
        ) from None


def builtin_text(name: str) -> str:
    """The whole uncompressed text of an embedded corpus, checked against its sha256."""
    import hashlib

    corpus = get_builtin(name)
    ref = resources.files("gpt2kit") / "assets" / "corpora" / corpus.asset
    try:
        raw = lzma.decompress(ref.read_bytes())
    except (FileNotFoundError, lzma.LZMAError) as e:
        raise UserError(f"{ref}: built-in corpus {name!r} is missing or corrupt ({e}); reinstall gpt2kit") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != corpus.sha256:
        raise UserError(f"{ref}: built-in corpus {name!r} has sha256 {digest}, expected {corpus.sha256}; reinstall "
                        "gpt2kit")
    return raw.decode("utf-8")


def builtin_documents(name: str) -> Iterator[str]:
    """The documents of an embedded corpus, in their fixed order."""
    corpus = get_builtin(name)
    return corpus.split(builtin_text(name))
