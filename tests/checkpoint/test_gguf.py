"""GGUF export: every key and tensor read back with gguf's own reader; --outtype, bad input, atomic writes.

gguf's reader takes seconds for the 50257 tokens and 50000 merges, so each file is read once per module and the
other outtypes, LoRA and sharded inputs are in the slow tier.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt2kit import GPT, GPTConfig, UserError
from gpt2kit.checkpoint import model_state_dict, save_checkpoint, write_sharded_meta
from gpt2kit.cli import main
from gpt2kit.tokenizer import EOT_ID, _bytes_to_unicode, byte_level_vocab, get_tokenizer

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package: pip install 'gpt2kit[gguf]'")

from gpt2kit.checkpoint.gguf import OUTTYPES, write_gguf  # noqa: E402  (after the importorskip)


def _model(config: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # biases and norms away from their 0/1 init: a swap would show
    return model


def _expected(model: GPT) -> dict[str, torch.Tensor]:
    """GGUF name -> tensor, written out by hand from the model (independent of the module's key table)."""
    cfg, t = model.config, model.transformer
    want = {"token_embd.weight": t.wte.weight[:cfg.vocab_size], "position_embd.weight": t.wpe.weight,
            "output_norm.weight": t.ln_f.weight, "output_norm.bias": t.ln_f.bias}
    for i, b in enumerate(t.h):
        for name, mod in [("attn_norm", b.ln_1), ("attn_qkv", b.attn.c_attn), ("attn_output", b.attn.c_proj),
                          ("ffn_norm", b.ln_2), ("ffn_up", b.mlp.c_fc), ("ffn_down", b.mlp.c_proj)]:
            want[f"blk.{i}.{name}.weight"] = mod.weight
            want[f"blk.{i}.{name}.bias"] = mod.bias
    return {k: v.detach().float() for k, v in want.items()}


def _save(path, model, **extra):
    save_checkpoint(path, {"model_config": model.config.to_dict(), "model": model_state_dict(model), **extra})
    return path


def _read(path):
    reader = gguf.GGUFReader(path)
    keys = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return keys, {t.name: t for t in reader.tensors}


def _values(t) -> np.ndarray:
    """A read-back tensor as float32 (rows, cols), dequantized where it is q8_0."""
    data = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type == gguf.GGMLQuantizationType.Q8_0 \
        else np.asarray(t.data, dtype=np.float32)
    return data.reshape(tuple(int(n) for n in reversed(t.shape)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """outtype -> (model, keys, tensors) of `gpt2kit export --format gguf` of one tiny checkpoint, read lazily."""
    tmp = tmp_path_factory.mktemp("gguf")
    model = _model(GPTConfig.from_preset("tiny"))
    ckpt = _save(tmp / "tiny.pt", model)
    cache = {}

    def get(outtype: str):
        if outtype not in cache:
            out = tmp / f"tiny-{outtype}.gguf"
            assert main(["export", "--checkpoint", str(ckpt), "--format", "gguf", "--outtype", outtype,
                         "--out", str(out)]) == 0
            cache[outtype] = (model, *_read(out))
        return cache[outtype]

    return get


def test_f32_every_key_and_tensor(exported, capsys):
    model, keys, tensors = exported("f32")
    assert "(f32, " in capsys.readouterr().out
    tokens, merges = byte_level_vocab()
    assert keys == {
        "general.architecture": "gpt2", "general.type": "model", "general.name": "tiny",
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        "gpt2.context_length": 64, "gpt2.embedding_length": 32, "gpt2.block_count": 2,
        "gpt2.feed_forward_length": 128, "gpt2.attention.head_count": 2,
        "gpt2.attention.layer_norm_epsilon": pytest.approx(1e-5),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": list(tokens), "tokenizer.ggml.merges": list(merges),
        "tokenizer.ggml.token_type": [3 if i == EOT_ID else 1 for i in range(50257)],
        "tokenizer.ggml.bos_token_id": EOT_ID, "tokenizer.ggml.eos_token_id": EOT_ID,
        "tokenizer.ggml.add_bos_token": False,
    }
    want = _expected(model)
    assert set(tensors) == set(want)  # no "output": it is tied to token_embd, which the loader reuses
    for name, w in want.items():
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
        assert np.array_equal(_values(t), w.numpy()), name


def test_vocabulary_spells_the_tokenizer_bytes():
    tokens, merges = byte_level_vocab()
    tok = get_tokenizer()
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    for i in [0, 198, 220, 262, 464, 1169, 30210, 50255]:
        assert bytes(byte_of[c] for c in tokens[i]) == tok.decode_bytes([i])
    assert tokens[EOT_ID] == "<|endoftext|>" and len(merges) == 50000
    assert merges[0] == "Ġ t" and tokens[220] == "Ġ"


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_smaller_outtypes(exported, outtype):
    model, keys, tensors = exported(outtype)
    file_type, matrix_type = OUTTYPES[outtype]
    assert keys["general.file_type"] == int(file_type)
    for name, w in _expected(model).items():
        t = tensors[name]
        big = w.dim() == 2 and name != "position_embd.weight"
        assert t.tensor_type == (matrix_type if big else gguf.GGMLQuantizationType.F32), name
        got = _values(t)
        if not big:
            assert np.array_equal(got, w.numpy()), name
        else:  # f16: 2^-11 relative; q8_0: a step of max|block| / 127 (its scale is f16 itself)
            tol = w.abs().max().item() / (2048 if outtype == "f16" else 127)
            assert np.abs(got - w.numpy()).max() <= tol + 1e-7, name


@pytest.mark.slow
def test_bias_free_model_gets_zero_biases(tmp_path):
    model = _model(GPTConfig.from_preset("tiny", bias=False))
    _, tensors = _read(write_gguf(model, tmp_path / "m.gguf"))
    assert not _values(tensors["blk.1.ffn_down.bias"]).any() and not _values(tensors["output_norm.bias"]).any()
    want = model.transformer.h[0].mlp.c_fc.weight.detach().numpy()
    assert np.array_equal(_values(tensors["blk.0.ffn_up.weight"]), want)


def test_other_vocabulary_refused(tmp_path):
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(UserError, match="vocab_size is 64, not its tokenizer gpt2's 50257"):
        write_gguf(model, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_old_file(tmp_path, tiny_config, monkeypatch):
    import gpt2kit.checkpoint.gguf as mod

    path = tmp_path / "m.gguf"
    path.write_bytes(b"the earlier export")

    def broken(model):
        yield "token_embd.weight", np.zeros((50257, 32), dtype=np.float32)
        raise OSError("disk full")

    monkeypatch.setattr(mod, "gguf_tensors", broken)
    with pytest.raises(OSError, match="disk full"):
        write_gguf(GPT(tiny_config), path)
    assert path.read_bytes() == b"the earlier export" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


@pytest.mark.slow
def test_cli_exports_lora_finetune_merged(tmp_path, tiny_config):
    from gpt2kit.model.lora import LoRAConfig, apply_lora, merge_lora

    model = _model(tiny_config)
    lora = LoRAConfig(rank=2, targets=("attn.c_attn", "mlp.c_fc"))
    apply_lora(model, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.5)
    ckpt = _save(tmp_path / "sft.pt", model, finetune={"version": 1, "task": "sft", "base": "base.pt",
                                                       "lora": lora.to_dict(), "template": None, "max_length": 64})
    merge_lora(model)
    out = tmp_path / "sft.gguf"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "gguf", "--out", str(out)]) == 0
    _, tensors = _read(out)
    want = _expected(model)["blk.1.attn_qkv.weight"]
    assert np.allclose(_values(tensors["blk.1.attn_qkv.weight"]), want.numpy(), atol=1e-6)


@pytest.mark.slow
def test_cli_exports_sharded_checkpoint(tmp_path, tiny_config):
    from gpt2kit.checkpoint.sharded import save_tensors

    model = _model(tiny_config)
    sharded = tmp_path / "step_00000003.dcp"
    sharded.mkdir()
    groups = save_tensors(sharded, model, torch.optim.SGD(model.parameters(), lr=0.1))
    write_sharded_meta(sharded, {"model_config": model.config.to_dict(), "optimizer_param_groups": groups,
                                 "step": 3, "config": {}})
    out = tmp_path / "s.gguf"
    assert main(["export", "--checkpoint", str(sharded), "--format", "gguf", "--out", str(out)]) == 0
    _, tensors = _read(out)
    assert np.array_equal(_values(tensors["blk.0.ffn_down.weight"]), _expected(model)["blk.0.ffn_down.weight"].numpy())


def test_cli_bad_input_one_line(tmp_path, tiny_config, capsys):
    ckpt = _save(tmp_path / "tiny.pt", GPT(tiny_config))
    base = ["export", "--checkpoint", str(ckpt)]
    with pytest.raises(SystemExit) as e:
        main([*base, "--format", "gguf", "--outtype", "q4_k", "--out", str(tmp_path / "x.gguf")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--outtype" in err and "invalid choice: 'q4_k'" in err and "q8_0" in err
    assert main([*base, "--format", "gguf", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: is a directory; name the file to write" in capsys.readouterr().err
    assert main([*base, "--outtype", "f16", "--out", str(tmp_path / "hf")]) == 2
    assert "--outtype: applies to --format gguf" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


def test_cli_outtypes_match_the_writer():
    from gpt2kit.cli.export import GGUF_OUTTYPES

    assert GGUF_OUTTYPES == tuple(OUTTYPES)
