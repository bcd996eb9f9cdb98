"""Conversion between gpt2kit's GPT and Hugging Face's GPT-2 format, through an explicit key table.

Hugging Face's GPT-2 stores attention and MLP weights in ``Conv1D`` layout (in_features, out_features),
the transpose of ``nn.Linear``'s (out, in). Every tensor's shape is asserted both ways.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gpt2kit.errors import UserError, first_line, torch_load_error
from gpt2kit.model.config import GPT2_VOCAB_SIZE, GPTConfig
from gpt2kit.io import atomic_write_text, atomic_write_with
from gpt2kit.tokenizer import EOT_ID, hf_tokenizer_files

# gpt2kit key (per block, after "transformer.h.{i}.") -> (HF key, transpose?)
_BLOCK_KEYS: list[tuple[str, bool]] = [
    ("ln_1.weight", False),
    ("ln_1.bias", False),
    ("attn.c_attn.weight", True),
    ("attn.c_attn.bias", False),
    ("attn.c_proj.weight", True),
    ("attn.c_proj.bias", False),
    ("ln_2.weight", False),
    ("ln_2.bias", False),
    ("mlp.c_fc.weight", True),
    ("mlp.c_fc.bias", False),
    ("mlp.c_proj.weight", True),
    ("mlp.c_proj.bias", False),
]
_TOP_KEYS: list[str] = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
# buffers some HF checkpoints carry (causal mask tables); they hold no weights
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def key_table(n_layer: int) -> list[tuple[str, str, bool]]:
    """(gpt2kit key, HF key without the ``transformer.`` prefix, transpose?) for every weight."""
    table = [(f"transformer.{k}", k, False) for k in _TOP_KEYS]
    for i in range(n_layer):
        for k, transpose in _BLOCK_KEYS:
            table.append((f"transformer.h.{i}.{k}", f"h.{i}.{k}", transpose))
    return table


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> GPTConfig:
    """A GPTConfig from a Hugging Face GPT-2 ``config.json`` dict; other architectures are refused."""
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise UserError(f"{source}: model_type is {model_type!r}; gpt2kit loads only GPT-2 ('gpt2') models")
    vocab = hf.get("vocab_size")
    if vocab != GPT2_VOCAB_SIZE:
        raise UserError(
            f"{source}: vocab_size is {vocab}, not GPT-2's {GPT2_VOCAB_SIZE}; gpt2kit uses the GPT-2 tokenizer"
        )
    try:
        # weights loaded for inference or a new run start without dropout; training sets its own
        return GPTConfig.from_hf(hf, dropout=0.0)
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: not a GPT-2 config gpt2kit can load ({e})") from None


def config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    """A Hugging Face ``config.json`` dict for ``transformers.GPT2LMHeadModel``."""
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
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
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


def state_dict_from_hf(hf_sd: dict[str, torch.Tensor], cfg: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    """gpt2kit state dict from HF GPT-2 tensors (with or without the ``transformer.`` prefix)."""
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in hf_sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(_IGNORED_SUFFIXES)}
    lm_head = sd.pop("lm_head.weight", None)
    C, V = cfg.n_embd, cfg.vocab_size
    expected = _expected_shapes(cfg)
    out: dict[str, torch.Tensor] = {}
    missing = []
    for ours, theirs, transpose in key_table(cfg.n_layer):
        if theirs not in sd:
            missing.append(theirs)
            continue
        t = sd.pop(theirs)
        if transpose:
            t = t.t()
        if tuple(t.shape) != expected[ours]:
            raise UserError(
                f"{source}: tensor {theirs} has shape {tuple(t.shape)} (after layout conversion), "
                f"expected {expected[ours]} for this config"
            )
        out[ours] = t.contiguous()
    if missing:
        raise UserError(f"{source}: missing {len(missing)} weights, e.g. {missing[:3]}; the file is incomplete")
    if sd:
        raise UserError(f"{source}: unexpected weights {sorted(sd)[:5]}; not a GPT-2 checkpoint")
    if lm_head is not None and not torch.equal(lm_head, out["transformer.wte.weight"]):
        raise UserError(f"{source}: lm_head.weight differs from wte.weight; gpt2kit requires tied embeddings")
    out["lm_head.weight"] = out["transformer.wte.weight"]
    assert out["transformer.wte.weight"].shape == (V, C)
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors (``transformer.``-prefixed, Conv1D layout, real vocab rows only) from gpt2kit's."""
    expected = _expected_shapes(cfg)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, transpose in key_table(cfg.n_layer):
        t = sd[ours]
        if ours == "transformer.wte.weight":
            t = t[: cfg.vocab_size]  # drop padded vocab rows
        assert tuple(t.shape) == expected[ours], (ours, tuple(t.shape), expected[ours])
        out[f"transformer.{theirs}"] = (t.t() if transpose else t).contiguous()
    return out


def _expected_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    C, V, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (V, C),
        "transformer.wpe.weight": (T, C),
        "transformer.ln_f.weight": (C,),
        "transformer.ln_f.bias": (C,),
    }
    per_block = {
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,),
    }
    for i in range(cfg.n_layer):
        for k, s in per_block.items():
            shapes[f"transformer.h.{i}.{k}"] = s
    return shapes


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
    return config_from_hf(hf, str(path))


def write_hf_dir(sd: dict[str, torch.Tensor], cfg: GPTConfig, out_dir: Path, with_tokenizer: bool = True) -> None:
    """Write ``config.json`` and ``model.safetensors`` loadable by ``GPT2LMHeadModel.from_pretrained``.

    With ``with_tokenizer`` the GPT-2 tokenizer files (``vocab.json``, ``merges.txt``) are written
    too, so ``transformers.pipeline("text-generation", model=out_dir)`` works on its own.

    Files are written to temporary names and renamed, so an interrupted export leaves no half file.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict_to_hf(sd, cfg).items()}
    atomic_write_with(out_dir / "model.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(out_dir / "config.json", json.dumps(config_to_hf(cfg), indent=2) + "\n")
    gen = {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID}
    atomic_write_text(out_dir / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    if with_tokenizer:
        for name, text in hf_tokenizer_files().items():
            atomic_write_text(out_dir / name, text)
