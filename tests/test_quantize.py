"""int8 quantization: logits near float32's, generate and the serve engine run it, bad input refused in one line."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn

import gpt2kit
from gpt2kit import GPT, UserError
from gpt2kit.generation import generate
from gpt2kit.model.lora import LoRAConfig, apply_lora
from gpt2kit.quantization import Int8Linear, quantize, weight_bytes


@pytest.fixture
def pair(tiny_config):
    """(float32 model, int8 copy of it), same weights."""
    torch.manual_seed(0)
    ref = GPT(tiny_config).eval()
    q = GPT(tiny_config)
    q.load_state_dict(ref.state_dict())
    return ref, quantize(q, "int8")


def test_every_linear_swapped_embedding_kept_float(pair):
    _, q = pair
    assert gpt2kit.quantize is quantize
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert isinstance(q.lm_head, Int8Linear)  # the tied output projection too
    assert q.transformer.wte.weight.dtype == torch.float32
    assert q.make_cache(1, 8)[0].k.dtype == torch.float32


def test_weights_are_rowwise_int8(pair):
    ref, q = pair
    w = ref.transformer.h[0].mlp.c_fc.weight
    wq = q.transformer.h[0].mlp.c_fc.dequantized_weight()
    step = w.abs().amax(dim=1, keepdim=True) / 127  # (out, 1): one scale per output channel
    assert ((wq - w).abs() <= step / 2 + 1e-7).all()
    assert not torch.equal(wq, w)


def test_logits_and_loss_close_to_float32(pair):
    ref, q = pair
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        lr, loss_r = ref(x, x)
        lq, loss_q = q(x, x)
    assert lq.shape == lr.shape
    assert (lq - lr).abs().max() < 0.05 * lr.abs().max()
    assert abs(loss_q.item() - loss_r.item()) < 0.01 * loss_r.item()


def test_generate_runs_the_int8_model(pair):
    _, q = pair
    idx = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(2))
    out = generate(q, idx, 12, temperature=0)
    assert out.shape == (2, 17)
    assert torch.equal(out[:, :5], idx)
    sampled = generate(q, idx, 6, temperature=0.8, top_k=20, seed=3)
    assert torch.equal(sampled, generate(q, idx, 6, temperature=0.8, top_k=20, seed=3))


def test_serve_engine_runs_the_int8_model(pair):
    from gpt2kit.serve.engine import Engine, SamplingParams

    _, q = pair
    tokens, done = [], threading.Event()
    engine = Engine(q, max_batch=2)
    engine.start()
    try:
        engine.submit([464, 3290, 318], SamplingParams(5, temperature=0), tokens.append, lambda reason: done.set())
        assert done.wait(60)
    finally:
        engine.stop(timeout=30)
    assert len(tokens) == 5 and all(0 <= t < 50257 for t in tokens)


def test_weight_bytes_counts_int8_layers(pair):
    ref, q = pair
    cfg = ref.config
    assert weight_bytes(ref) == 4 * ref.num_params() + 4 * (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
    untied = [m for m in ref.modules() if isinstance(m, nn.Linear) and m is not ref.lm_head]
    floats = sum(4 * (m.weight.numel() + m.bias.numel()) for m in untied)  # lm_head's float weight stays as wte
    # int8: a byte a weight, a float32 scale and bias a row
    int8 = sum(m.weight.numel() + 4 * m.out_features * (2 if m.bias is not None else 1)
               for m in ref.modules() if isinstance(m, nn.Linear))
    assert weight_bytes(q) == weight_bytes(ref) - floats + int8


def test_unknown_scheme_refused(tiny_config):
    with pytest.raises(UserError, match=r"--quantize int4: not offered; use --quantize int8"):
        quantize(GPT(tiny_config), "int4")


def test_other_device_refused(tiny_config):
    with torch.device("meta"):
        model = GPT(tiny_config)
    with pytest.raises(UserError, match=r"CPU only .*meta.*--device cpu"):
        quantize(model)


def test_unmerged_lora_refused(tiny_config):
    model = GPT(tiny_config)
    apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(UserError, match="LoRALinear.*merge"):
        quantize(model)


def test_bfloat16_model_keeps_its_dtype(tiny_config):
    torch.manual_seed(0)
    model = quantize(GPT(tiny_config).to(torch.bfloat16))
    logits, _ = model(torch.randint(0, 50257, (1, 6)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert generate(model, torch.tensor([[464, 3290]]), 4, temperature=0).shape == (1, 6)
