"""OpenAI's original GPT-2 release directories, read without TensorFlow.

OpenAI's ``download_model.py`` (and Raschka's ``gpt_download.py``) fetch a directory of ``checkpoint``,
``hparams.json``, ``model.ckpt.index``, ``model.ckpt.data-00000-of-00001``, ``model.ckpt.meta``,
``encoder.json`` and ``vocab.bpe``. The weights are a TensorFlow tensor bundle
(:mod:`gpt2kit.checkpoint.tf_bundle`); ``.meta``, the TensorFlow graph, is not read.
Variables are named as in OpenAI's ``model.py`` (``model/h0/attn/c_attn/w`` shaped (1, C, 3C), ...);
:func:`read_openai_dir` returns them under Hugging Face GPT-2 names in Hugging Face's Conv1D layout, so
the one key table in :mod:`gpt2kit.model.hf_keys` converts them to gpt2kit's. Shape letters: V vocab,
T context, C channels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from gpt2kit.checkpoint.tf_bundle import REDOWNLOAD, read_bundle_index, read_bundle_tensor
from gpt2kit.errors import UserError
from gpt2kit.model.config import GPT2_VOCAB_SIZE, GPTConfig
from gpt2kit.model.hf_keys import key_table
from gpt2kit.tokenizer import EOT_ID, EOT_TOKEN, _bytes_to_unicode, get_tokenizer

HPARAMS_FILE = "hparams.json"
_HPARAMS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")


def is_openai_dir(path: Path) -> bool:
    """True when ``path`` looks like an OpenAI GPT-2 release directory (``hparams.json`` or a ``.ckpt.index``)."""
    return path.is_dir() and ((path / HPARAMS_FILE).is_file() or any(path.glob("*.ckpt.index")))


def read_openai_hparams(directory: Path) -> GPTConfig:
    """The GPTConfig of a release's ``hparams.json`` (n_vocab, n_ctx, n_embd, n_head, n_layer)."""
    path = directory / HPARAMS_FILE
    if not path.is_file():
        raise UserError(f"{path}: file not found; copy hparams.json of the same OpenAI release beside the checkpoint")
    try:
        hp = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not readable JSON ({e}); {REDOWNLOAD}") from None
    if not isinstance(hp, dict):
        raise UserError(f"{path}: expected a JSON object with {', '.join(_HPARAMS)}; {REDOWNLOAD}")
    missing = [k for k in _HPARAMS if k not in hp]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}; an OpenAI GPT-2 hparams.json has {', '.join(_HPARAMS)}")
    if hp["n_vocab"] != GPT2_VOCAB_SIZE:
        raise UserError(f"{path}: n_vocab is {hp['n_vocab']}, not GPT-2's {GPT2_VOCAB_SIZE}; "
                        "gpt2kit uses the GPT-2 tokenizer")
    try:
        return GPTConfig(block_size=hp["n_ctx"], vocab_size=hp["n_vocab"], n_layer=hp["n_layer"],
                         n_head=hp["n_head"], n_embd=hp["n_embd"])
    except ValueError as e:
        raise UserError(f"{path}: not a valid GPT-2 configuration ({e})") from None


def checkpoint_prefix(directory: Path) -> Path:
    """The bundle prefix (``DIR/model.ckpt``): from the ``checkpoint`` file, else the one ``*.index`` there."""
    state = directory / "checkpoint"
    if state.is_file():
        m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text(errors="replace"), re.M)
        if m:
            # TensorFlow may record an absolute path from the machine that saved it; the files sit here
            prefix = directory / Path(m.group(1)).name
            if prefix.with_name(prefix.name + ".index").is_file():
                return prefix
    indexes = sorted(directory.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    if not indexes:
        raise UserError(f"{directory}: no model.ckpt.index; {REDOWNLOAD}")
    raise UserError(f"{directory}: several checkpoints ({', '.join(p.name for p in indexes)}) and no "
                    "'checkpoint' file naming one; keep one or write that file")


def openai_name(hf_key: str, conv: bool) -> str:
    """OpenAI's variable name for a Hugging Face GPT-2 key (``h.0.attn.c_attn.weight`` ->
    ``model/h0/attn/c_attn/w``)."""
    *path, leaf = hf_key.split(".")
    if path in (["wte"], ["wpe"]):
        return f"model/{path[0]}"
    if path[0] == "h":
        path = [f"h{path[1]}", *path[2:]]
    return "model/" + "/".join(path) + "/" + ("b" if leaf == "bias" else "w" if conv else "g")


def read_openai_dir(directory: Path) -> tuple[dict[str, torch.Tensor], GPTConfig]:
    """(weights under Hugging Face GPT-2 names and layout, config) of an OpenAI GPT-2 release directory."""
    cfg = read_openai_hparams(directory)
    check_openai_tokenizer(directory)
    prefix = checkpoint_prefix(directory)
    index = prefix.with_name(prefix.name + ".index")
    header, entries = read_bundle_index(index)
    if header["endianness"] != 0:
        raise UserError(f"{index}: the tensors are stored big-endian; "
                        "re-save the checkpoint on a little-endian machine")
    names = {openai_name(hf, conv): hf for _, hf, conv in key_table(cfg.n_layer)}
    missing = sorted(set(names) - set(entries))
    if missing:
        raise UserError(f"{index}: no tensor {missing[0]} ({len(missing)} missing); this is not a GPT-2 checkpoint "
                        f"of the shape hparams.json describes (n_layer {cfg.n_layer})")
    layers = {int(m.group(1)) for k in entries if (m := re.match(r"model/h(\d+)/", k))}
    deeper = sorted(layers - set(range(cfg.n_layer)))
    if deeper:
        raise UserError(f"{index}: has layer h{deeper[0]} but hparams.json says n_layer {cfg.n_layer}; "
                        "use the hparams.json of the same release")
    shards: dict[int, Any] = {}
    out: dict[str, torch.Tensor] = {}
    try:
        for name, hf in names.items():
            t = read_bundle_tensor(prefix, name, entries[name], header["num_shards"], shards)
            out[hf] = _conv1d(prefix, name, t)
    finally:
        for f in shards.values():
            f.close()
    return out, cfg


def _conv1d(prefix: Path, name: str, t: torch.Tensor) -> torch.Tensor:
    """OpenAI saves a Conv1D weight (``.../w``) as (1, in, out); Hugging Face's layout drops the leading 1."""
    if not name.endswith("/w"):
        return t
    if t.dim() != 3 or t.shape[0] != 1:
        raise UserError(f"{prefix}.index: {name} has shape {list(t.shape)}, expected (1, in, out) as OpenAI saves it")
    return t[0]


# ------------------------------------------------------------------------------------------- tokenizer


def check_openai_tokenizer(directory: Path) -> None:
    """Refuse ``encoder.json``/``vocab.bpe`` (when present) that are not GPT-2's BPE, which gpt2kit always uses."""
    enc, bpe = directory / "encoder.json", directory / "vocab.bpe"
    if not enc.exists() and not bpe.exists():
        return
    ranks = get_tokenizer().ranks
    char = _bytes_to_unicode()
    advice = "gpt2kit reads GPT-2 models only; use the files of OpenAI's GPT-2 release or remove them"
    if enc.exists():
        try:
            vocab = json.loads(enc.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{enc}: not readable JSON ({e}); {advice}") from None
        expected = {"".join(char[b] for b in token): rank for token, rank in ranks.items()}
        expected[EOT_TOKEN] = EOT_ID
        if vocab != expected:
            if not isinstance(vocab, dict):
                raise UserError(f"{enc}: not a token-to-id JSON object; {advice}")
            bad = next((k for k in expected if vocab.get(k) != expected[k]), None)
            detail = (f"token {bad!r} has id {vocab.get(bad)}, GPT-2's is {expected[bad]}" if bad is not None
                      else f"{len(vocab)} tokens, GPT-2 has {len(expected)}")
            raise UserError(f"{enc}: not GPT-2's vocabulary ({detail}); {advice}")
    if bpe.exists():
        try:
            lines = bpe.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{bpe}: not readable ({e}); {advice}") from None
        merges = [ln for ln in lines[1 if lines and lines[0].startswith("#version") else 0:] if ln]
        byte_of = {c: b for b, c in char.items()}
        n_merges = GPT2_VOCAB_SIZE - 1 - 256  # every token but the 256 bytes and <|endoftext|>
        for i, line in enumerate(merges):
            # merge i makes the token of rank 256 + i
            parts = line.split(" ")
            try:
                token = bytes(byte_of[c] for c in "".join(parts))
            except KeyError:
                token = b""
            if len(parts) != 2 or ranks.get(token) != 256 + i:
                raise UserError(f"{bpe}: merge {i + 1} ({line[:40]!r}) is not GPT-2's; {advice}")
        if len(merges) != n_merges:
            raise UserError(f"{bpe}: {len(merges)} merges, GPT-2 has {n_merges}; {advice}")
