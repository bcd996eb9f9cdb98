"""``manifest.json``: what a prepared data directory holds, and the checks every reader makes.

A data directory is complete exactly when ``manifest.json`` exists (it is written last, atomically).
The manifest records the tokenizer (id, ranks sha256, vocab size, end-of-text id), the source and
settings it was prepared with, and for each split (``train``, ``val``) its total token count and its
shards with token counts, sizes and sha256 checksums. See docs/data.md for every field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpt2kit.data.shards import HEADER_BYTES, TOKEN_DTYPE, verify_shard
from gpt2kit.errors import UserError
from gpt2kit.io import atomic_write_text
from gpt2kit.tokenizer import (
    EOT_ID,
    GPT2_RANKS_SHA256,
    TOKENIZER_ID,
    VOCAB_SIZE,
    get_tokenizer,
    load_tokenizer,
    tokenizer_id,
    vocab_size_problem,
)

MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "progress.json"  # the manifest of an unfinished run; readers never accept it
MANIFEST_KIND = "gpt2kit-tokens"
MANIFEST_VERSION = 1
SPLITS = ("train", "val")


TOKENIZER_SUBDIR = "tokenizer"
"""Where a data, run or pipeline directory keeps a copy of its trained tokenizer (``prepare --tokenizer DIR/tokenizer``
makes more data in that vocabulary)."""


def tokenizer_record(tok: Any = None) -> dict[str, Any]:
    """The tokenizer fields every manifest carries (GPT-2's when ``tok`` is None)."""
    if tok is not None:
        return tok.record()
    return {"tokenizer": TOKENIZER_ID, "tokenizer_sha256": GPT2_RANKS_SHA256, "vocab_size": VOCAB_SIZE, "eot": EOT_ID}


def _check_tokenizer_record(manifest: dict[str, Any], path: Path) -> None:
    """GPT-2's record exactly (a manifest without one is GPT-2's), or a consistent trained-tokenizer record."""
    for key, want in tokenizer_record().items():
        manifest.setdefault(key, want)  # manifests written before tokenizers were recorded are GPT-2's
    if manifest["tokenizer"] == TOKENIZER_ID:
        expected = tokenizer_record()
    else:
        sha, vocab = manifest.get("tokenizer_sha256"), manifest.get("vocab_size")
        ok = isinstance(sha, str) and manifest["tokenizer"] == tokenizer_id(sha) and isinstance(vocab, int) \
            and vocab_size_problem(vocab) is None and manifest.get("eot") == vocab - 1
        if ok:
            return
        expected = {"tokenizer": "gpt2 or bpe-<sha256[:12]>"}
    for key, want in expected.items():
        if manifest.get(key) != want:
            raise UserError(
                f"{path}: data was prepared with {key}={manifest.get(key)!r}, but gpt2kit uses {want!r}; "
                "re-run `gpt2kit prepare` with this gpt2kit"
            )


def _fail(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; re-run `gpt2kit prepare` to rebuild the data directory")


def validate_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """Check the structure of a parsed manifest; returns it, or raises UserError naming ``path``."""
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise _fail(path, f"not a gpt2kit data manifest (no \"kind\": \"{MANIFEST_KIND}\")")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise UserError(
            f"{path}: manifest format_version {version!r} is newer than this gpt2kit reads ({MANIFEST_VERSION}); "
            "upgrade gpt2kit"
        )
    _check_tokenizer_record(manifest, path)
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or "train" not in splits:
        raise _fail(path, "manifest has no \"splits\" with a \"train\" split")
    for name, split in splits.items():
        shards = split.get("shards") if isinstance(split, dict) else None
        if not isinstance(shards, list) or not isinstance(split.get("tokens"), int):
            raise _fail(path, f"split {name!r} lacks \"tokens\" or \"shards\"")
        total = 0
        for entry in shards:
            if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                    and isinstance(entry.get("tokens"), int) and isinstance(entry.get("sha256"), str)):
                raise _fail(path, f"split {name!r} has a shard entry without file/tokens/sha256")
            fname = entry["file"]
            if os.path.basename(fname) != fname or fname in ("", ".", "..") or "\0" in fname:
                raise _fail(path, f"shard file {entry['file']!r} is not a plain file name")
            total += entry["tokens"]
        if total != split["tokens"]:
            raise _fail(path, f"split {name!r} records {split['tokens']} tokens but its shards hold {total}")
    return manifest


def read_json(path: Path) -> Any:
    """Parse a JSON file; UserError naming it when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text") from None


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The validated manifest of a prepared data directory; UserError naming the file when missing/corrupt."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        if (data_dir / PROGRESS_NAME).is_file():
            raise UserError(
                f"{path}: missing; {data_dir} holds an unfinished `gpt2kit prepare` run, re-run the same command to "
                "finish it"
            )
        if data_dir.is_file():
            # a text or JSONL file given where the prepared token directory belongs: prepare it under a new name
            out = data_dir.parent / data_dir.stem if data_dir.parent.name == "data" else Path("data") / data_dir.stem
            out = out.with_name(out.name + "-tokens") if out == data_dir else out
            raise UserError(f"{data_dir}: a file, not a prepared data directory; tokenize it first with "
                            f"`gpt2kit prepare {data_dir} --out {out}` and pass {out}")
        if not data_dir.exists():
            raise UserError(f"{data_dir}: no such data directory; create it with `gpt2kit prepare SOURCE --out "
                            f"{data_dir}`")
        raise UserError(f"{path}: missing; {data_dir} is not a prepared data directory, run `gpt2kit prepare SOURCE "
                        f"--out {data_dir}`")
    return validate_manifest(read_json(path), path)


def data_tokenizer(data_dir: str | os.PathLike, manifest: dict[str, Any]) -> Any:
    """The tokenizer a data directory was prepared with: GPT-2, or the copy in ``DATA/tokenizer/``."""
    if manifest["tokenizer"] == TOKENIZER_ID:
        return get_tokenizer()
    tok = load_tokenizer(Path(data_dir) / TOKENIZER_SUBDIR)
    if tok.name != manifest["tokenizer"]:
        raise UserError(f"{data_dir}/{TOKENIZER_SUBDIR}: holds tokenizer {tok.name}, but the manifest records "
                        f"{manifest['tokenizer']}; re-run `gpt2kit prepare` to rebuild the data directory")
    return tok


def split_record(manifest: dict[str, Any], split: str, path: Path) -> dict[str, Any]:
    """The record of ``split``; UserError when the data directory has no such (or an empty) split."""
    rec = manifest["splits"].get(split)
    if rec is None or rec["tokens"] == 0:
        have = ", ".join(f"{k} ({v['tokens']} tokens)" for k, v in manifest["splits"].items())
        # the settings differ from the directory's, so re-preparing it needs --overwrite too
        hint = (f" (re-run `gpt2kit prepare SOURCE --out {path.parent} --val-fraction 0.1 --overwrite`)"
                if split == "val" else "")
        raise UserError(f"{path}: has no {split!r} tokens{hint}; it holds: {have}")
    return rec


def verify_split(data_dir: str | os.PathLike, manifest: dict[str, Any], split: str, *,
                 full_checksum: bool | list[bool] = True) -> None:
    """Check every shard of ``split`` against the manifest (size, header, count; sha256 where asked).

    ``full_checksum`` may be one flag or one per shard (ranks of a distributed run share the hashing).
    """
    data_dir = Path(data_dir)
    shards = split_record(manifest, split, data_dir / MANIFEST_NAME)["shards"]
    flags = full_checksum if isinstance(full_checksum, list) else [full_checksum] * len(shards)
    for entry, full in zip(shards, flags):
        path = data_dir / entry["file"]
        if "bytes" in entry and path.exists() and path.stat().st_size != entry["bytes"]:
            raise UserError(
                f"{path}: shard is {path.stat().st_size} bytes but the manifest records {entry['bytes']}; "
                "it is truncated or corrupt, re-run `gpt2kit prepare` to rebuild it"
            )
        verify_shard(path, tokens=entry["tokens"], sha256=entry["sha256"], full=full,
                     vocab_size=manifest.get("vocab_size", VOCAB_SIZE))


def shard_bytes(num_tokens: int) -> int:
    """The file size of a shard holding ``num_tokens`` tokens."""
    return HEADER_BYTES + num_tokens * TOKEN_DTYPE.itemsize


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write a manifest (or progress file) atomically, pretty-printed."""
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
