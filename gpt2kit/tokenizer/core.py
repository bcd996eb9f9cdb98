"""The tokenizer class and the GPT-2 BPE tokenizer, built offline from the ranks file shipped inside the package.

The ranks file (``assets/gpt2.tiktoken``) is OpenAI's ``r50k_base``/``gpt2`` encoding; its sha256 is
verified on load, so a corrupt or substituted file is refused rather than silently tokenizing wrong.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from importlib import resources

from gpt2kit.errors import UserError

GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257
TOKENIZER_ID = "gpt2"  # recorded in manifests and checkpoints; another id means another vocabulary


class RanksError(ValueError):
    """What is wrong with a ranks file; its reader says where, and what to do."""


def parse_ranks(data: bytes, expected_sha256: str) -> dict[bytes, int]:
    """The token -> rank table of a tiktoken ranks file (base64 token, rank per line), after checking its sha256;
    RanksError saying what is wrong."""
    import base64
    import binascii

    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise RanksError(f"BPE ranks file has sha256 {digest}, expected {expected_sha256}")
    ranks: dict[bytes, int] = {}
    try:
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error):
        raise RanksError("not a tiktoken ranks file (base64 token and rank per line)") from None
    if sorted(ranks.values()) != list(range(len(ranks))) or any(bytes([b]) not in ranks for b in range(256)):
        raise RanksError("ranks are not 0..N-1 over every single byte")
    return ranks


class Tokenizer:
    """Byte-level BPE with GPT-2's pre-tokenization: ``encode`` (no special tokens), ``decode``, ``encode_batch``,
    ``eot`` and ``vocab_size``; ``name`` is the id recorded in manifests and checkpoints.

    The end-of-text token ``<|endoftext|>`` has the id after the last rank (50256 for GPT-2). A bad ranks file is
    a UserError ``SOURCE: what is wrong; HINT``, or whatever ``on_error(what is wrong)`` returns.
    """

    def __init__(self, ranks_bytes: bytes, source: str = "gpt2.tiktoken", *, name: str = TOKENIZER_ID,
                 sha256: str = GPT2_RANKS_SHA256, path: str | None = None,
                 hint: str = "reinstall gpt2kit to restore it", files: dict[str, bytes] | None = None,
                 on_error: Callable[[str], Exception] | None = None) -> None:
        import tiktoken

        try:
            self.ranks: dict[bytes, int] = parse_ranks(ranks_bytes, sha256)
        except RanksError as e:
            raise (on_error(str(e)) if on_error else UserError(f"{source}: {e}; {hint}")) from None
        self.name = name
        self.sha256 = sha256
        self.path = path
        """The tokenizer directory it was read from (None for GPT-2's encoding and one read from a checkpoint)."""
        self.files: dict[str, bytes] | None = files
        """A trained tokenizer's directory files by name (None for GPT-2's): checkpoints and exports carry them."""
        self._byte_lengths: list[int] | None = None
        self.eot: int = len(self.ranks)
        self._enc = tiktoken.Encoding(
            name=name,
            pat_str=GPT2_PAT_STR,
            mergeable_ranks=self.ranks,
            special_tokens={EOT_TOKEN: self.eot},
        )
        self.vocab_size: int = self._enc.n_vocab
        if name == TOKENIZER_ID:
            assert self.vocab_size == VOCAB_SIZE and self.eot == EOT_ID, self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"

    def record(self) -> dict:
        """What manifests and checkpoints record of this tokenizer (the path is only a hint)."""
        return {"tokenizer": self.name, "tokenizer_sha256": self.sha256, "vocab_size": self.vocab_size,
                "eot": self.eot}

    def checkpoint_record(self) -> dict:
        """What a checkpoint stores of this tokenizer: its id, and a trained one's files (as text), so the
        checkpoint alone says how to encode its model's input (see :func:`gpt2kit.tokenizer.checkpoint_tokenizer`)."""
        record: dict = {"tokenizer": self.name}
        if self.files is not None:
            record["tokenizer_files"] = {k: v.decode("utf-8") for k, v in sorted(self.files.items())}
        return record

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 byte length of every token id (bits per byte counts them); ``<|endoftext|>`` counts 0."""
        if self._byte_lengths is None:
            one = self._enc.decode_single_token_bytes
            self._byte_lengths = [len(one(i)) for i in range(self.eot)] + [0]
        return self._byte_lengths

    @property
    def encoding(self):
        """The underlying ``tiktoken.Encoding`` (picklable, for worker processes)."""
        return self._enc

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; ``<|endoftext|>`` in the text is encoded as ordinary characters."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        """Token ids of each text, tokenized in parallel threads inside tiktoken."""
        return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; invalid UTF-8 byte sequences become U+FFFD."""
        return self._enc.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes of ``ids`` (for streaming output that may split a UTF-8 character)."""
        return self._enc.decode_bytes(list(ids))


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """The GPT-2 tokenizer, built once per process from the packaged ranks file."""
    ref = resources.files("gpt2kit") / "assets" / "gpt2.tiktoken"
    return Tokenizer(ref.read_bytes(), source=str(ref))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (used by vocab.json/merges.txt)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=1)
def byte_level_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The GPT-2 vocabulary as byte-level BPE strings (see :func:`byte_level_vocab_of`)."""
    return byte_level_vocab_of(get_tokenizer().ranks)


def byte_level_vocab_of(ranks: dict[bytes, int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A vocabulary as byte-level BPE strings: (token of each id, merges in rank order as ``"a b"``).

    The strings spell bytes through :func:`_bytes_to_unicode`, as Hugging Face's vocab.json/merges.txt and
    GGUF files do. Merges are recovered from the ranks: token r is the merge of the two parts that byte-pair
    encoding with ranks below r leaves of its bytes. The end-of-text token follows the last rank.
    """
    byte_char = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise RuntimeError(f"cannot recover the merge for token rank {rank}")
        merges.append(f"{to_str(parts[0])} {to_str(parts[1])}")
    tokens = [""] * (len(ranks) + 1)
    for t, r in ranks.items():
        tokens[r] = to_str(t)
    tokens[len(ranks)] = EOT_TOKEN
    return tuple(tokens), tuple(merges)


def hf_tokenizer_files() -> dict[str, str]:
    """The GPT-2 tokenizer as Hugging Face files: ``vocab.json``, ``merges.txt`` and configs, as text."""
    import json

    tokens, merges = byte_level_vocab()
    vocab = {t: i for i, t in enumerate(tokens)}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": 1024,
        "bos_token": EOT_TOKEN,
        "eos_token": EOT_TOKEN,
        "unk_token": EOT_TOKEN,
        "add_prefix_space": False,
    }
    special = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
