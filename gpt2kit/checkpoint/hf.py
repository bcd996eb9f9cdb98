"""Hugging Face GPT-2 directories: ``config.json`` plus ``model.safetensors`` (or ``pytorch_model.bin``), read
and written.

The tensors are renamed and transposed through the one key table beside the model
(:mod:`gpt2kit.model.hf_keys`), which asserts every shape both ways; this module reads and writes the files and
their config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gpt2kit.errors import UserError, first_line, torch_load_error
from gpt2kit.io import atomic_write_text, atomic_write_with
from gpt2kit.model.config import GPT2_VOCAB_SIZE, GPTConfig
from gpt2kit.model.hf_keys import state_dict_from_hf, state_dict_to_hf
from gpt2kit.tokenizer import EOT_ID, Tokenizer, hf_tokenizer_files, load_tokenizer, write_tokenizer_files
from gpt2kit.tokenizer.bpe import META_NAME as TOKENIZER_META

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def config_from_hf(hf: dict[str, Any], source: str = "config.json", vocab_size: int = GPT2_VOCAB_SIZE) -> GPTConfig:
    """A GPTConfig from a Hugging Face GPT-2 ``config.json`` dict; other architectures are refused, and so is a
    vocabulary other than ``vocab_size`` (GPT-2's, or the trained tokenizer's a gpt2kit export carries)."""
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise UserError(f"{source}: model_type is {model_type!r}; gpt2kit loads only GPT-2 ('gpt2') models")
    vocab = hf.get("vocab_size")
    if vocab != vocab_size:
        whose = "GPT-2's" if vocab_size == GPT2_VOCAB_SIZE else f"its {TOKENIZER_META} tokenizer's"
        raise UserError(
            f"{source}: vocab_size is {vocab}, not {whose} {vocab_size}; gpt2kit reads GPT-2's vocabulary, or a "
            f"trained one whose {TOKENIZER_META} (written by `gpt2kit export`) sits beside config.json"
        )
    try:
        # weights loaded for inference or a new run start without dropout; training sets its own
        return GPTConfig.from_hf(hf, dropout=0.0)
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: not a GPT-2 config gpt2kit can load ({e})") from None


def config_to_hf(cfg: GPTConfig, eot: int = EOT_ID) -> dict[str, Any]:
    """A Hugging Face ``config.json`` dict for ``transformers.GPT2LMHeadModel`` (``eot``: the end-of-text id)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def read_hf_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Tensors of a HF weights file in ``directory`` (safetensors preferred; .bin loaded with weights_only)."""
    for name in _WEIGHT_FILES:
        path = directory / name
        if not path.exists():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            try:
                return load_file(str(path))
            except Exception as e:  # corrupt, truncated or not a weights file at all
                raise UserError(
                    f"{path}: cannot read weights ({type(e).__name__}: {first_line(e, 200)}); re-download or "
                    "re-export it"
                ) from None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise torch_load_error(path, e, "cannot read weights; re-download or re-export it") from None
    raise UserError(f"{directory}: no {' or '.join(_WEIGHT_FILES)} found; is this a Hugging Face GPT-2 directory?")


def is_hf_dir(path: Path) -> bool:
    """True when ``path`` is a directory holding a Hugging Face ``config.json``."""
    return path.is_dir() and (path / "config.json").is_file()


def read_hf_config(directory: Path) -> GPTConfig:
    """The GPTConfig of a Hugging Face directory's ``config.json``."""
    path = directory / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read config ({e})") from None
    trained = (directory / TOKENIZER_META).is_file()
    return config_from_hf(hf, str(path), load_tokenizer(directory).vocab_size if trained else GPT2_VOCAB_SIZE)


def read_hf_dir(directory: Path) -> tuple[dict[str, torch.Tensor], GPTConfig]:
    """(weights under gpt2kit's names, config) of a Hugging Face GPT-2 directory, every shape checked."""
    cfg = read_hf_config(directory)
    return state_dict_from_hf(read_hf_state_dict(directory), cfg, str(directory)), cfg


def write_hf_dir(sd: dict[str, torch.Tensor], cfg: GPTConfig, out_dir: Path, with_tokenizer: bool = True,
                 tokenizer: Tokenizer | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` loadable by ``GPT2LMHeadModel.from_pretrained``.

    With ``with_tokenizer`` the tokenizer files are written too, so ``AutoTokenizer.from_pretrained(out_dir)``
    and ``transformers.pipeline("text-generation", model=out_dir)`` work on their own: GPT-2's ``vocab.json``
    and ``merges.txt``, or a trained ``tokenizer``'s whole directory (``tokenizer.json`` for transformers, and
    gpt2kit's own files, so gpt2kit reads the export back with the same tokenizer).

    Files are written to temporary names and renamed, so an interrupted export leaves no half file.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict_to_hf(sd, cfg).items()}
    atomic_write_with(out_dir / "model.safetensors",
                      lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    eot = EOT_ID if tokenizer is None else tokenizer.eot
    atomic_write_text(out_dir / "config.json", json.dumps(config_to_hf(cfg, eot), indent=2) + "\n")
    gen = {"bos_token_id": eot, "eos_token_id": eot}
    atomic_write_text(out_dir / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    if with_tokenizer and tokenizer is not None and tokenizer.files is not None:
        write_tokenizer_files(tokenizer, out_dir)
    elif with_tokenizer:
        for name, text in hf_tokenizer_files().items():
            atomic_write_text(out_dir / name, text)
