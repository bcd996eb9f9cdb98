"""The fused training loss equals the model's own forward loss, in value and gradients."""

from __future__ import annotations

import pytest
import torch

from gpt2kit.model import GPT, GPTConfig
from gpt2kit.train.fused_head_loss import FusedLossGPT


def _grads(model, loss_of, autocast):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_of()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("padded, max_rows", [(50257, 8192), (50304, 8192), (50304, 20)])
@pytest.mark.parametrize("autocast, tol", [(False, 1e-5), (True, 2e-2)])
def test_fused_loss_matches_model_forward(padded, max_rows, autocast, tol):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, padded_vocab_size=padded))
    fused = FusedLossGPT(model, max_rows=max_rows)  # 20: three blocks of rows, gradients summed over them
    x = torch.randint(0, 50257, (3, 16))
    y = torch.randint(0, 50257, (3, 16))
    y[0, :5] = -100  # ignored targets (fine-tuning masks) count neither in the mean nor in the gradient
    ref_loss, ref = _grads(model, lambda: model(x, y)[1], autocast)
    for _ in range(2):  # the second call reuses the scratch buffers
        loss, got = _grads(model, lambda: fused(x, y)[1], autocast)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        for name, g in ref.items():
            err = (got[name] - g).abs().max() / g.abs().max().clamp(min=1e-12)
            assert err < tol, (name, float(err))


def test_fused_loss_without_grad_and_without_targets():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8))
    fused = FusedLossGPT(model)
    x = torch.randint(0, 50257, (2, 8))
    with torch.no_grad():
        assert fused(x, x)[1].item() == pytest.approx(model(x, x)[1].item(), rel=1e-6)
        assert fused(x)[1] is None and torch.equal(fused(x)[0], model(x)[0])
    assert list(fused.parameters()) == list(model.parameters())
