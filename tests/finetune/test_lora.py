"""LoRA: adapters from outside the model, only adapters trained, merged == unmerged."""

from __future__ import annotations

import pytest
import torch

from gpt2kit import GPTConfig
from gpt2kit.model.gpt import GPT
from gpt2kit.model.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    lora_parameters,
    merge_lora,
    merge_lora_state_dict,
    parse_targets,
)


def _adapted(seed: int = 0, **kw) -> tuple[GPT, LoRAConfig]:
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset("tiny"))
    cfg = LoRAConfig(rank=4, alpha=8.0, **kw)
    apply_lora(model, cfg)
    return model, cfg


def _train_adapters(model: GPT, steps: int = 3) -> None:
    """A few real optimizer steps so that B (zero at init) is not zero."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(0, 50257, (2, 12), generator=g)
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_targets_parse():
    assert parse_targets("all") == ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert parse_targets("c_attn,mlp") == ("attn.c_attn", "mlp.c_fc", "mlp.c_proj")
    assert parse_targets(["c_proj"]) == ("attn.c_proj", "mlp.c_proj")
    with pytest.raises(ValueError, match="unknown target 'q_proj'"):
        parse_targets("q_proj")


def test_fresh_adapters_change_nothing_and_only_adapters_train():
    torch.manual_seed(0)
    plain = GPT(GPTConfig.from_preset("tiny"))
    x = torch.randint(0, 50257, (2, 10))
    before, _ = plain(x)
    names = apply_lora(plain, LoRAConfig(rank=2, alpha=4.0, targets=("c_attn", "c_fc")))
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc",
                     "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc"]
    after, _ = plain(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # B starts at zero
    trainable = {n for n, p in plain.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.{ab}" for name in names for ab in ("lora_A", "lora_B")}
    frozen = {n: p.detach().clone() for n, p in plain.named_parameters() if not p.requires_grad}
    _train_adapters(plain)
    for n, p in plain.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # the pretrained weights never move
    assert all(bool(p.abs().sum() > 0) for p in lora_parameters(plain) if p.shape[1] == 2)  # every B trained


def test_merged_model_gives_the_same_logits():
    model, cfg = _adapted(dropout=0.1)
    _train_adapters(model)
    model.eval()
    x = torch.randint(0, 50257, (3, 16))
    with torch.no_grad():
        unmerged, _ = model(x)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        merge_lora(model)
        merged, _ = model(x)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any(k.endswith(("lora_A", "lora_B")) for k in model.state_dict())
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    # the state-dict merge (what load_model uses) gives the same weights
    plain = GPT(GPTConfig.from_preset("tiny"))
    plain.load_state_dict(merge_lora_state_dict(sd, cfg))
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], unmerged, rtol=1e-5, atol=1e-5)
    # residual-projection markers survive the round trip (they set the init scale)
    assert model.transformer.h[0].attn.c_proj.residual_projection is True


def test_adapters_only_in_chosen_blocks_and_bad_state():
    model, cfg = _adapted(blocks=(1,))
    assert not isinstance(model.transformer.h[0].attn.c_attn, LoRALinear)
    assert isinstance(model.transformer.h[1].attn.c_attn, LoRALinear)
    sd = dict(model.state_dict())
    sd.pop("transformer.h.1.attn.c_attn.lora_B")
    with pytest.raises(ValueError, match="incomplete"):
        merge_lora_state_dict(sd, cfg)
    with pytest.raises(ValueError, match="--lora-rank"):
        LoRAConfig(rank=0)
