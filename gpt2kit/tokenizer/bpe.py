"""Trained byte-level BPE tokenizers: training (Hugging Face ``tokenizers``) and the self-describing directory.

A tokenizer directory holds:

- ``tokenizer.tiktoken`` — the ranks (base64 token bytes and rank per line, as ``gpt2.tiktoken``); run-time
  encoding goes through tiktoken with GPT-2's pre-tokenization regex, so any UTF-8 text round-trips exactly;
- ``gpt2kit_tokenizer.json`` — metadata: kind, format version, id (``bpe-`` + the first 12 hex digits of the
  ranks file's sha256), vocab size, end-of-text token and id, the sha256, training settings and sources;
- ``tokenizer.json`` + ``tokenizer_config.json`` — the same vocabulary for ``tokenizers.Tokenizer.from_file``
  and ``transformers.AutoTokenizer.from_pretrained(DIR)``, which encode ordinary text to the same ids.

The end-of-text token ``<|endoftext|>`` takes the last id (``vocab_size - 1``), after the ranks. Reading a
directory checks the ranks file's sha256 against the metadata, so an altered directory is refused.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpt2kit.errors import UserError
from gpt2kit.io import atomic_write_bytes, atomic_write_text, publish_dir
from gpt2kit.tokenizer.core import (
    EOT_TOKEN,
    GPT2_PAT_STR,
    TOKENIZER_ID,
    Tokenizer,
    _bytes_to_unicode,
    byte_level_vocab_of,
    get_tokenizer,
)
from gpt2kit.version import __version__

META_NAME = "gpt2kit_tokenizer.json"
RANKS_NAME = "tokenizer.tiktoken"
HF_NAME = "tokenizer.json"
HF_CONFIG_NAME = "tokenizer_config.json"
FILES = (META_NAME, RANKS_NAME, HF_NAME, HF_CONFIG_NAME)
TOKENIZER_KIND = "gpt2kit-tokenizer"
TOKENIZER_FORMAT_VERSION = 1
MIN_VOCAB_SIZE = 257  # the 256 bytes plus <|endoftext|>
MAX_VOCAB_SIZE = 65_535  # every id fits the uint16 token shards


def tokenizer_id(ranks_sha256: str) -> str:
    """The id manifests and checkpoints record for a trained tokenizer: it names the exact vocabulary."""
    return f"bpe-{ranks_sha256[:12]}"


def vocab_size_problem(vocab_size: int, flag: str = "--vocab-size") -> str | None:
    """What is wrong with ``vocab_size`` as a trained tokenizer's size (the settings that take one raise it as
    their error type), or None when it is fine."""
    if MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        return None
    return (f"{flag} must be in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}], got {vocab_size} (256 bytes + <|endoftext|> "
            "at least; ids must fit the uint16 token shards)")


# ---------------------------------------------------------------------------------------------- training


def _require_hf_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise UserError("training a tokenizer needs Hugging Face tokenizers; pip install 'gpt2kit[tokenizer]'") \
            from None
    return tokenizers


def train_ranks(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> dict[bytes, int]:
    """Train byte-level BPE on ``texts``; returns tiktoken ranks (the 256 bytes first, then merges in order).

    The vocabulary (``vocab_size`` including ``<|endoftext|>``) may come out smaller when the corpus runs out
    of pairs seen ``min_frequency`` times.
    """
    problem = vocab_size_problem(vocab_size)
    if problem:
        raise UserError(problem)
    tk = _require_hf_tokenizers()
    hf = tk.Tokenizer(tk.models.BPE())
    # ByteLevel's regex is GPT-2's; no prefix space, so its pieces are tiktoken's
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency, show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    hf.train_from_iterator(texts, trainer=trainer)
    char_byte = {c: b for b, c in _bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    # ids follow creation order (the alphabet, then each merge's result), which is the order BPE must merge in
    for token, _ in sorted(hf.get_vocab().items(), key=lambda kv: kv[1]):
        raw = bytes(char_byte[c] for c in token)
        if raw not in ranks:
            ranks[raw] = len(ranks)
    return ranks


# ---------------------------------------------------------------------------------------------- directory


def ranks_file_bytes(ranks: dict[bytes, int]) -> bytes:
    """The tiktoken ranks file of ``ranks`` (base64 token, space, rank; one a line, in rank order)."""
    return b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n"
                    for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))


def hf_tokenizer_json(ranks: dict[bytes, int]) -> str:
    """``tokenizer.json`` for ``ranks``: byte-level BPE whose merges are recovered from the ranks."""
    tk = _require_hf_tokenizers()
    tokens, merges = byte_level_vocab_of(ranks)
    vocab = {t: i for i, t in enumerate(tokens[:-1])}
    pairs = [tuple(m.split(" ")) for m in merges]
    # ignore_merges: a piece that is itself a token is that token, as tiktoken encodes it
    hf = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=pairs, ignore_merges=True))
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = tk.decoders.ByteLevel()
    hf.add_special_tokens([tk.AddedToken(EOT_TOKEN, special=True, normalized=False)])
    assert hf.token_to_id(EOT_TOKEN) == len(ranks)
    return hf.to_str()


def _hf_config() -> str:
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN,
              "unk_token": EOT_TOKEN, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
              "model_max_length": 1024}
    return json.dumps(config, indent=2) + "\n"


def save_tokenizer_dir(ranks: dict[bytes, int], out_dir: str | os.PathLike, *, training: dict[str, Any],
                       sources: list[Any], overwrite: bool = False) -> Tokenizer:
    """Write a tokenizer directory for ``ranks`` atomically (whole or not at all); returns its tokenizer."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite:
            raise UserError(f"--out {out_dir}: already exists; choose another --out or pass --overwrite")
        if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / META_NAME).is_file():
            raise UserError(f"--out {out_dir}: exists and is not a gpt2kit tokenizer directory; --overwrite replaces "
                            "only those, choose another --out")
    data = ranks_file_bytes(ranks)
    sha = hashlib.sha256(data).hexdigest()
    meta = {"kind": TOKENIZER_KIND, "format_version": TOKENIZER_FORMAT_VERSION, "id": tokenizer_id(sha),
            "type": "byte-level-bpe", "pattern": GPT2_PAT_STR, "vocab_size": len(ranks) + 1,
            "eot_token": EOT_TOKEN, "eot_id": len(ranks), "ranks_file": RANKS_NAME, "ranks_sha256": sha,
            "training": training, "sources": sources, "gpt2kit_version": __version__}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        atomic_write_bytes(tmp / RANKS_NAME, data)
        atomic_write_text(tmp / HF_NAME, hf_tokenizer_json(ranks))
        atomic_write_text(tmp / HF_CONFIG_NAME, _hf_config())
        atomic_write_text(tmp / META_NAME, json.dumps(meta, indent=1) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    read_tokenizer_dir.cache_clear()
    return read_tokenizer_dir(str(out_dir.resolve()))


def _bad(directory: Path, what: str) -> UserError:
    return UserError(f"{directory}: {what}; train it again with `gpt2kit tokenizer train SOURCE --vocab-size N "
                     f"--out {directory}` or pass another --tokenizer")


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated ``gpt2kit_tokenizer.json`` of a tokenizer directory; UserError naming what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--tokenizer {directory}: no such tokenizer directory; use gpt2 or train one with "
                        f"`gpt2kit tokenizer train SOURCE --vocab-size N --out {directory}`")
    path = directory / META_NAME
    if not path.is_file():
        raise _bad(directory, f"no {META_NAME}, not a gpt2kit tokenizer directory")
    return _parse_metadata(path.read_bytes(), path, _bad)


def _parse_metadata(data: bytes, path: Path, bad: Any) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(path, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("kind") != TOKENIZER_KIND:
        raise bad(path, f"not a gpt2kit tokenizer file (no \"kind\": \"{TOKENIZER_KIND}\")")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > TOKENIZER_FORMAT_VERSION:
        raise UserError(f"{path}: format_version {version!r} is newer than this gpt2kit reads "
                        f"({TOKENIZER_FORMAT_VERSION}); upgrade gpt2kit")
    sha = meta.get("ranks_sha256")
    if not isinstance(sha, str) or meta.get("id") != tokenizer_id(sha) or not isinstance(meta.get("vocab_size"), int):
        raise bad(path, "id, ranks_sha256 and vocab_size are missing or disagree")
    return meta


def tokenizer_from_files(files: dict[str, bytes], where: Path, *, path: str | None = None,
                         bad: Any = None) -> Tokenizer:
    """The trained tokenizer whose directory files are ``files`` (name -> bytes), the ranks checked against the
    metadata's sha256; ``where`` names them in errors, ``bad(where, what)`` makes the UserError."""
    on_error = None if bad is None else (lambda what: bad(where, what))  # a directory's own line, else the caller's
    bad = bad or _bad
    if META_NAME not in files:
        raise bad(where, f"no {META_NAME}, not a gpt2kit tokenizer")
    meta = _parse_metadata(files[META_NAME], where / META_NAME, bad)
    if RANKS_NAME not in files:
        raise bad(where / RANKS_NAME, "the ranks file is missing")
    tok = Tokenizer(files[RANKS_NAME], str(where / RANKS_NAME), name=meta["id"], sha256=meta["ranks_sha256"],
                    path=path, hint="the tokenizer was altered or is corrupt; copy or train it again", files=files,
                    on_error=on_error)
    if tok.vocab_size != meta["vocab_size"] or tok.eot != meta.get("eot_id"):
        raise bad(where, f"{META_NAME} records vocab_size {meta['vocab_size']} and eot_id {meta.get('eot_id')}, "
                         f"the ranks give {tok.vocab_size} and {tok.eot}")
    return tok


@functools.lru_cache(maxsize=8)
def read_tokenizer_dir(directory: str) -> Tokenizer:
    """The tokenizer of a directory written by :func:`save_tokenizer_dir`, its ranks checked against the sha256."""
    path = Path(directory)
    read_metadata(path)  # a missing or foreign directory gets its own line
    files = {}
    for name in FILES:
        try:
            files[name] = (path / name).read_bytes()
        except FileNotFoundError:
            if name in (META_NAME, RANKS_NAME):
                raise _bad(path / name, "missing") from None
        except OSError as e:
            raise _bad(path / name, f"cannot be read ({e.strerror})") from None
    return tokenizer_from_files(files, path, path=str(path))


def load_tokenizer(spec: str | os.PathLike | None = None) -> Tokenizer:
    """``gpt2`` (or None): the GPT-2 tokenizer; else the trained tokenizer in directory ``spec``."""
    if spec is None or str(spec) == TOKENIZER_ID:
        return get_tokenizer()
    return read_tokenizer_dir(str(Path(spec).expanduser().resolve()))


def write_tokenizer_files(tok: Tokenizer, dest: str | os.PathLike) -> None:
    """Write a trained tokenizer's directory files into ``dest`` (a data directory's ``tokenizer/``, a Hugging Face
    export), each atomically; nothing for GPT-2's."""
    if tok.files is None:
        return
    dest = Path(dest)
    for name, data in sorted(tok.files.items()):
        atomic_write_bytes(dest / name, data)
    read_tokenizer_dir.cache_clear()
    if read_tokenizer_dir(str(dest.resolve())).name != tok.name:  # the copy is whole and unaltered
        raise RuntimeError(f"{dest}: the tokenizer written is not {tok.name}")


def checkpoint_tokenizer(ckpt: dict[str, Any], source: str | os.PathLike) -> Tokenizer:
    """The tokenizer a gpt2kit checkpoint dict records: GPT-2's (also for checkpoints older than trained
    tokenizers), or the trained one from the files it carries; UserError when they are missing or altered."""
    name = ckpt.get("tokenizer", TOKENIZER_ID)
    if name == TOKENIZER_ID:
        return get_tokenizer()
    files = ckpt.get("tokenizer_files")

    def bad(where: Any, what: str) -> UserError:
        return UserError(f"{source}: the checkpoint's tokenizer {name!r} is unusable ({what}); the checkpoint is "
                         "damaged or was altered, use another checkpoint")

    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise bad(source, "its tokenizer_files are missing")
    tok = tokenizer_from_files({k: v.encode("utf-8") for k, v in files.items()}, Path(str(source)), bad=bad)
    if tok.name != name:
        raise bad(source, f"the files are tokenizer {tok.name}")
    return tok


def compression(tokenizers: list[Tokenizer], text: str) -> list[dict[str, Any]]:
    """Bytes per token of ``text`` under each tokenizer (nanochat's tok_eval): name, vocab, tokens, ratio."""
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    rows = []
    for tok in tokenizers:
        ids = tok.encode(text)
        if tok.decode(ids) != text:
            raise UserError(f"{tok.path or tok.name}: does not round-trip the text; the tokenizer is broken")
        rows.append({"tokenizer": tok.name, "path": tok.path, "vocab_size": tok.vocab_size, "bytes": n_bytes,
                     "tokens": len(ids), "bytes_per_token": n_bytes / max(len(ids), 1)})
    return rows
