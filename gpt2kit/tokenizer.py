"""The GPT-2 BPE tokenizer, built offline from the ranks file shipped inside the package.

The ranks file (``assets/gpt2.tiktoken``) is OpenAI's ``r50k_base``/``gpt2`` encoding; its sha256 is
verified on load, so a corrupt or substituted file is refused rather than silently tokenizing wrong.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from importlib import resources

from gpt2kit.errors import UserError

GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257
TOKENIZER_ID = "gpt2"  # recorded in manifests and checkpoints; another id means another vocabulary


def _load_ranks(data: bytes, source: str) -> dict[bytes, int]:
    import base64

    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise UserError(
            f"{source}: GPT-2 BPE ranks file has sha256 {digest}, expected {GPT2_RANKS_SHA256}; "
            "reinstall gpt2kit to restore it"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


class Tokenizer:
    """GPT-2 BPE: ``encode`` (no special tokens), ``decode``, ``encode_batch`` and ``eot``."""

    name = TOKENIZER_ID

    def __init__(self, ranks_bytes: bytes, source: str = "gpt2.tiktoken") -> None:
        import tiktoken

        self.ranks: dict[bytes, int] = _load_ranks(ranks_bytes, source)
        self._enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PAT_STR,
            mergeable_ranks=self.ranks,
            special_tokens={EOT_TOKEN: EOT_ID},
        )
        self.eot: int = EOT_ID
        self.vocab_size: int = self._enc.n_vocab
        assert self.vocab_size == VOCAB_SIZE, self.vocab_size

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
    """The GPT-2 vocabulary as byte-level BPE strings: (token of each id, merges in rank order as ``"a b"``).

    The strings spell bytes through :func:`_bytes_to_unicode`, as Hugging Face's vocab.json/merges.txt and
    GGUF files do. Merges are recovered from the ranks: token r is the merge of the two parts that byte-pair
    encoding with ranks below r leaves of its bytes.
    """
    ranks = get_tokenizer().ranks
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
    tokens = [""] * VOCAB_SIZE
    for t, r in ranks.items():
        tokens[r] = to_str(t)
    tokens[EOT_ID] = EOT_TOKEN
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
