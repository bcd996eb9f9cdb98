"""The one model loader used by train, sample, eval, export, finetune and serve, and the export to Hugging Face.

:func:`load_model` takes any ``--checkpoint`` value (:func:`~gpt2kit.checkpoint.resolve.resolve_checkpoint`
says which format it names) and returns a GPT in eval mode. A fine-tune's LoRA adapters come merged into
plain weights; a classification fine-tune is refused (a label predictor, not a language model;
``gpt2kit classify`` loads those).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2kit.checkpoint.finetune import language_model_checkpoint
from gpt2kit.checkpoint.format import read_checkpoint
from gpt2kit.checkpoint.hf import read_hf_dir, write_hf_dir
from gpt2kit.checkpoint.openai import read_openai_dir
from gpt2kit.checkpoint.resolve import download_hub_model, resolve_checkpoint
from gpt2kit.checkpoint.state_dict import load_state_dict_checked, model_state_dict
from gpt2kit.errors import UserError
from gpt2kit.io import publish_dir
from gpt2kit.model.config import GPTConfig
from gpt2kit.model.gpt import GPT
from gpt2kit.model.hf_keys import state_dict_from_hf
from gpt2kit.tokenizer import Tokenizer, checkpoint_tokenizer, get_tokenizer, load_tokenizer
from gpt2kit.tokenizer.bpe import META_NAME as TOKENIZER_META


@dataclass
class LoadedModel:
    """A model and where it came from."""

    model: GPT
    config: GPTConfig
    source: str
    """The file or directory the weights were read from."""
    format: str
    """``gpt2kit``, ``huggingface`` or ``openai``."""
    checkpoint: dict[str, Any] = field(default_factory=dict)
    """The whole checkpoint dict (gpt2kit format), minus the model weights; empty for HF weights."""
    tokenizer: Tokenizer = field(default_factory=get_tokenizer)
    """The model's tokenizer: GPT-2's, or the trained one its checkpoint (or export directory) carries."""


def load_hf_model(directory: Path) -> GPT:
    """A GPT with the weights of a Hugging Face GPT-2 directory."""
    sd, cfg = read_hf_dir(directory)
    return _model_with(cfg, sd, str(directory))


def load_openai_model(directory: Path) -> GPT:
    """A GPT with the weights of OpenAI's original GPT-2 release files (read without TensorFlow)."""
    hf_sd, cfg = read_openai_dir(directory)
    return _model_with(cfg, state_dict_from_hf(hf_sd, cfg, str(directory)), str(directory))


def model_from_checkpoint(ckpt: dict[str, Any], source: str) -> GPT:
    """A GPT built from a checkpoint dict's ``model_config`` with its ``model`` weights loaded."""
    try:
        cfg = GPTConfig.from_dict(ckpt["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: checkpoint has no valid model_config ({e})") from None
    return _model_with(cfg, ckpt["model"], source)


def _model_with(cfg: GPTConfig, sd: dict[str, torch.Tensor], source: str) -> GPT:
    model = GPT(cfg)
    load_state_dict_checked(model, sd, source)
    return model


def load_model(
    spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a model from any ``--checkpoint`` value (see :mod:`gpt2kit.checkpoint`), in eval mode."""
    kind, where = resolve_checkpoint(spec)
    if kind == "hub":
        where, kind = download_hub_model(str(where)), "huggingface"
    if kind == "huggingface":
        model, ckpt, fmt = load_hf_model(Path(where)), {}, "huggingface"
        # a gpt2kit export of a model with a trained vocabulary carries the tokenizer's directory files
        tok = load_tokenizer(where) if (Path(where) / TOKENIZER_META).is_file() else get_tokenizer()
    elif kind == "openai":
        model, ckpt, fmt, tok = load_openai_model(Path(where)), {}, "openai", get_tokenizer()
    else:
        # a fine-tune comes with its LoRA adapters merged into plain weights; a classifier is refused
        full = language_model_checkpoint(read_checkpoint(where), str(where))
        tok = checkpoint_tokenizer(full, where)
        model = model_from_checkpoint(full, str(where))
        ckpt = {k: v for k, v in full.items() if k != "model"}
        fmt = "gpt2kit"
    check_model_tokenizer(model.config, tok, str(where))
    model.to(device=device, dtype=dtype)
    model.eval()
    return LoadedModel(model=model, config=model.config, source=str(where), format=fmt, checkpoint=ckpt,
                       tokenizer=tok)


def check_model_tokenizer(cfg: GPTConfig, tok: Tokenizer, source: str) -> None:
    """UserError unless a trained tokenizer's vocabulary is the model's (GPT-2's models keep theirs as they are)."""
    if tok.files is not None and cfg.vocab_size != tok.vocab_size:
        raise UserError(f"{source}: the model has vocab_size {cfg.vocab_size} but its tokenizer {tok.name} has "
                        f"{tok.vocab_size}; the files do not belong together, use another checkpoint")


def export_hf(spec: str | Path, out_dir: str | Path) -> LoadedModel:
    """Write the model any ``--checkpoint`` value names to ``out_dir`` in Hugging Face GPT-2 format (config.json,
    model.safetensors, tokenizer files); returns what was loaded.

    The export is written whole into a temporary directory beside ``out_dir`` first, so a failure or a kill
    while writing leaves ``out_dir`` as it was. Then a new ``out_dir`` is one rename, and one holding only an
    earlier export is swapped for it by two; into a directory holding other files too (or a symlink, or the
    working directory), each exported file is renamed over its namesake and the other files stay.
    """
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory; name a directory for the model")
    loaded = load_model(spec)
    target = Path(out_dir).resolve()  # the real directory: the temporary one must sit on its filesystem
    if not target.name:
        raise UserError(f"{out_dir}: cannot export into the root directory; name a directory for the model")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write_hf_dir(model_state_dict(loaded.model), loaded.config, tmp, tokenizer=loaded.tokenizer)
        swappable = not Path(out_dir).is_symlink() and not Path.cwd().resolve().is_relative_to(target)
        _publish_export(tmp, target, swappable)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return loaded


def _publish_export(tmp: Path, target: Path, swappable: bool) -> None:
    written = {p.name for p in tmp.iterdir()}
    if not target.exists():
        publish_dir(tmp, target)
    elif swappable and {p.name for p in target.iterdir()} <= written:
        # an earlier export, swapped for the new one (gpt2kit train --export-hf rewrites hf-final on a resume)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        publish_dir(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        for name in sorted(written):
            os.replace(tmp / name, target / name)
