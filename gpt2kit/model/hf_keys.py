"""The key table between gpt2kit's GPT and Hugging Face's GPT-2 weights, with every tensor's shape asserted.

Hugging Face's GPT-2 stores attention and MLP weights in ``Conv1D`` layout (in_features, out_features), the
transpose of ``nn.Linear``'s (out, in). The table lives beside the model, whose parameter names it spells
out; reading and writing the files is :mod:`gpt2kit.checkpoint.hf`. Shape letters: V vocab, T context,
C channels.
"""

from __future__ import annotations

import torch

from gpt2kit.errors import UserError
from gpt2kit.model.config import GPTConfig

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


def key_table(n_layer: int) -> list[tuple[str, str, bool]]:
    """(gpt2kit key, HF key without the ``transformer.`` prefix, transpose?) for every weight."""
    table = [(f"transformer.{k}", k, False) for k in _TOP_KEYS]
    for i in range(n_layer):
        for k, transpose in _BLOCK_KEYS:
            table.append((f"transformer.h.{i}.{k}", f"h.{i}.{k}", transpose))
    return table


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
