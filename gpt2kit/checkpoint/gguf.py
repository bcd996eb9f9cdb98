"""GGUF files for llama.cpp, Ollama and LM Studio: a GPT's weights with GPT-2's architecture keys and its tokenizer.

Written with the ``gguf`` package (the format's own library, ``pip install 'gpt2kit[gguf]'``) the way llama.cpp's
``convert_hf_to_gguf.py`` writes a Hugging Face GPT-2, so that llama.cpp's ``gpt2`` loader reads it:

- keys ``gpt2.context_length``, ``embedding_length``, ``block_count``, ``feed_forward_length``,
  ``attention.head_count``, ``attention.layer_norm_epsilon``; the tokenizer as ``tokenizer.ggml.model = gpt2``
  (byte-level BPE: tokens, token types, merges), pre-tokenizer ``gpt-2``, BOS = EOS = ``<|endoftext|>``.
- tensors by the key table :data:`TENSORS`. ggml lists a matrix's dimensions fastest first, so nn.Linear's
  (out, in) weight is stored as it is (Hugging Face's Conv1D (in, out) is what the converter transposes).
  The output projection is tied to ``token_embd`` and not written: the loader reuses ``token_embd`` when
  ``output`` is absent. Only the real vocabulary's rows are written, not the padding rows.
- ``--outtype``: 1-D tensors (norms, biases) and ``position_embd`` stay float32, as the converter keeps them;
  the other matrices are f32, f16 or q8_0 (a matrix whose rows do not split into q8_0's 32-value blocks is
  written f16, as the converter does).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch

from gpt2kit.errors import UserError
from gpt2kit.io import atomic_path
from gpt2kit.model.gpt import GPT
from gpt2kit.tokenizer import Tokenizer, byte_level_vocab, byte_level_vocab_of, get_tokenizer

OUTTYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
"""``--outtype`` -> (the file type recorded in ``general.file_type``, the type of the large matrices)."""

TENSORS = {
    "ln_1.weight": "attn_norm.weight", "ln_1.bias": "attn_norm.bias",
    "attn.c_attn.weight": "attn_qkv.weight", "attn.c_attn.bias": "attn_qkv.bias",
    "attn.c_proj.weight": "attn_output.weight", "attn.c_proj.bias": "attn_output.bias",
    "ln_2.weight": "ffn_norm.weight", "ln_2.bias": "ffn_norm.bias",
    "mlp.c_fc.weight": "ffn_up.weight", "mlp.c_fc.bias": "ffn_up.bias",
    "mlp.c_proj.weight": "ffn_down.weight", "mlp.c_proj.bias": "ffn_down.bias",
}
"""A block's gpt2kit parameter (under ``transformer.h.N.``) -> its GGUF tensor (under ``blk.N.``)."""

FLOAT32_ALWAYS = ("position_embd.weight",)
"""Matrices kept float32 at every --outtype, as llama.cpp's converter keeps them."""


def gguf_tensors(model: GPT) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every tensor the file holds; a bias-free model gets zero biases, which the
    ``gpt2`` loader requires."""
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
        t = sd.get(key)
        t = torch.zeros(shape) if t is None else t
        assert tuple(t.shape) == shape, (key, tuple(t.shape), shape)
        return t.numpy()

    C, V = cfg.n_embd, cfg.vocab_size
    yield "token_embd.weight", take("transformer.wte.weight", (cfg.padded_vocab_size, C))[:V]
    yield "position_embd.weight", take("transformer.wpe.weight", (cfg.block_size, C))
    shapes = {"attn.c_attn": 3 * C, "attn.c_proj": C, "mlp.c_fc": 4 * C, "mlp.c_proj": C}
    ins = {"attn.c_attn": C, "attn.c_proj": C, "mlp.c_fc": C, "mlp.c_proj": 4 * C}
    for i in range(cfg.n_layer):
        for ours, theirs in TENSORS.items():
            layer, kind = ours.rsplit(".", 1)
            if layer.startswith("ln_"):
                shape = (C,)
            else:
                shape = (shapes[layer], ins[layer]) if kind == "weight" else (shapes[layer],)
            yield f"blk.{i}.{theirs}", take(f"transformer.h.{i}.{ours}", shape)
    yield "output_norm.weight", take("transformer.ln_f.weight", (C,))
    yield "output_norm.bias", take("transformer.ln_f.bias", (C,))


def _encoded(name: str, data: np.ndarray, qtype: gguf.GGMLQuantizationType
             ) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """``data`` in the type the file stores it in (1-D tensors and :data:`FLOAT32_ALWAYS` stay float32)."""
    if data.ndim == 1 or name in FLOAT32_ALWAYS or qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32), gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
        return gguf.quants.quantize(data, qtype), qtype
    return np.ascontiguousarray(data, dtype=np.float16), gguf.GGMLQuantizationType.F16


def write_gguf(model: GPT, out: str | Path, outtype: str = "f32", name: str = "gpt2kit",
               tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` as a GGUF file at ``out`` (atomically: a failure leaves ``out`` as it was); returns the path.

    The file's vocabulary is ``tokenizer``'s (GPT-2's by default; a trained byte-level BPE is written the same
    way, its merges recovered from its ranks), which must be the model's."""
    if outtype not in OUTTYPES:
        raise UserError(f"--outtype {outtype}: not offered; use one of {', '.join(OUTTYPES)}")
    cfg = model.config
    tok = tokenizer or get_tokenizer()
    if cfg.vocab_size != tok.vocab_size:
        raise UserError(f"the model's vocab_size is {cfg.vocab_size}, not its tokenizer {tok.name}'s "
                        f"{tok.vocab_size}; a GGUF file needs the vocabulary the model was trained with")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; name the file to write, such as {out / 'model.gguf'}")
    file_type, qtype = OUTTYPES[outtype]
    tokens, merges = byte_level_vocab() if tok.files is None else byte_level_vocab_of(tok.ranks)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch="gpt2")
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(list(tokens))
        w.add_token_types([gguf.TokenType.CONTROL if i == tok.eot else gguf.TokenType.NORMAL
                           for i in range(len(tokens))])
        w.add_token_merges(list(merges))
        w.add_bos_token_id(tok.eot)
        w.add_eos_token_id(tok.eot)
        w.add_add_bos_token(False)  # GPT-2 reads the prompt as it is, with no start token put in front
        for tensor_name, data in gguf_tensors(model):
            data, dtype = _encoded(tensor_name, data, qtype)
            w.add_tensor(tensor_name, data, raw_dtype=dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out
