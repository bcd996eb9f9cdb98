"""--optimizer muon (Muon for the blocks' matrices, AdamW for the rest) and --lr-schedule wsd."""

from __future__ import annotations

import pytest
import torch
from train_settings import losses

from gpt2kit.checkpoint import read_checkpoint
from gpt2kit.errors import UserError
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.train.config import LoopConfig
from gpt2kit.train.optim import (
    Float32Muon,
    MuonWithAdamW,
    apply_schedule,
    build_optimizer,
    muon_split,
    orthogonalize,
)
from gpt2kit.train.presets import get_preset
from gpt2kit.train.pretrain import resolve_train_config, run_pretraining


def test_muon_trains_the_block_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32))
    muon, adamw = muon_split(model)
    assert muon == [f"transformer.h.{i}.{layer}.weight" for i in range(2)
                    for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    # the token embedding appears once: it is also the output layer (tied)
    assert adamw[:2] == ["transformer.wte.weight", "transformer.wpe.weight"] and "lm_head.weight" not in adamw
    assert {n.rsplit(".", 2)[-2] for n in adamw[2:]} == {"ln_1", "ln_2", "ln_f", "c_attn", "c_proj", "c_fc"}
    assert all(n.endswith(".bias") or ".ln_" in n for n in adamw[2:])
    opt = build_optimizer(model, LoopConfig.from_dict(dict(optimizer="muon", muon_lr=0.05, lr=1e-3, weight_decay=0.1)),
                          torch.device("cpu"))
    assert isinstance(opt, MuonWithAdamW)
    assert sum(len(g["params"]) for g in opt.muon.param_groups) == 8
    assert sum(len(g["params"]) for g in opt.adamw.param_groups) == len(adamw)
    apply_schedule(opt, 10**6, LoopConfig.from_dict(dict(optimizer="muon", muon_lr=0.05, lr=1e-3, min_lr_ratio=0.1)))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 1e-4, 1e-4])


def test_wsd_schedule_is_warmup_constant_then_linear_decay():
    cfg = LoopConfig.from_dict(dict(lr=1.0, lr_schedule="wsd", warmup_steps=10, schedule_steps=100, decay_fraction=0.2,
                                   min_lr_ratio=0.1))
    assert cfg.lr_at(0) == pytest.approx(0.1) and cfg.lr_at(9) == pytest.approx(1.0)
    assert [cfg.lr_at(s) for s in (10, 50, 80)] == [1.0, 1.0, 1.0]  # the decay starts at 100 - 20
    assert cfg.lr_at(90) == pytest.approx(0.55) and cfg.lr_at(100) == pytest.approx(0.1)
    longer = LoopConfig.from_dict({**cfg.to_dict(), "schedule_steps": 200})
    assert [longer.lr_at(s) for s in range(80)] == [cfg.lr_at(s) for s in range(80)]
    for bad, flag in ((dict(decay_fraction=0.0), "--decay-fraction"), (dict(muon_momentum=1.0), "--muon-momentum"),
                      (dict(optimizer="muon", parallel="fsdp"), "use --parallel ddp or --optimizer adamw")):
        with pytest.raises(ValueError, match=flag):
            LoopConfig.from_dict(bad)


@pytest.mark.slow  # a whole run or a transformers comparison
def test_two_step_muon_run_is_deterministic_and_saves_both_optimizers(tiny_cfg, tmp_path):
    a = run_pretraining(tiny_cfg(out=str(tmp_path / "a"), optimizer="muon", max_steps=2))
    b = run_pretraining(tiny_cfg(out=str(tmp_path / "b"), optimizer="muon", max_steps=2))
    assert len(losses(a.metrics)) == 2 and losses(a.metrics) == losses(b.metrics)
    ca, cb = read_checkpoint(a.checkpoint), read_checkpoint(b.checkpoint)
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    opt = ca["optimizer"]
    assert set(opt) == {"muon", "adamw"}
    assert len(opt["muon"]["state"]) == 8 and all("momentum_buffer" in s for s in opt["muon"]["state"].values())
    assert all({"exp_avg", "exp_avg_sq", "step"} <= set(s) for s in opt["adamw"]["state"].values())
    # AdamW's state does not fit a Muon run (and back): a one-line refusal naming the flag
    cfg, point = resolve_train_config(None, {"out": str(tmp_path / "a"), "resume": "auto", "max_steps": 3,
                                             "optimizer": "adamw"})
    with pytest.raises(UserError, match="resume with --optimizer muon"):
        run_pretraining(cfg, point)


@pytest.mark.slow  # a whole run or a transformers comparison
def test_wsd_run_stopped_before_its_decay_extends_like_a_longer_run(tiny_cfg, tmp_path):
    # schedule 10 with decay_fraction 0.5 decays from step 5; stopping at 4 and going on with schedule 20 must
    # be the run that had schedule 20 from the start (its decay starts at step 10)
    wsd = dict(lr_schedule="wsd", decay_fraction=0.5, warmup_steps=2, lr=3e-3)
    longer = run_pretraining(tiny_cfg(out=str(tmp_path / "long"), schedule_steps=20, max_steps=8, **wsd))
    run_pretraining(tiny_cfg(out=str(tmp_path / "ext"), schedule_steps=10, max_steps=4, **wsd))
    cfg, point = resolve_train_config(None, {"out": str(tmp_path / "ext"), "resume": "auto", "schedule_steps": 20,
                                             "max_steps": 8})
    extended = run_pretraining(cfg, point)
    assert losses(extended.metrics) == losses(longer.metrics) and len(losses(longer.metrics)) == 8
    assert losses(extended.metrics, "lr") == losses(longer.metrics, "lr")


def test_muon_preset_is_gpt2_with_muon_and_wsd():
    muon, base = get_preset("gpt2-muon"), get_preset("gpt2")
    assert get_preset("gpt2-124m-muon") == muon  # the alias, as gpt2-124m is gpt2's
    assert muon.model == base.model and muon.cadence.total_batch_tokens == base.cadence.total_batch_tokens
    assert (muon.optim.optimizer, muon.schedule.lr_schedule) == ("muon", "wsd")
    assert (base.optim.optimizer, base.schedule.lr_schedule) == ("adamw", "cosine")
    assert muon.preset == "gpt2-muon" and muon.run.out == "runs/gpt2-muon"


def test_lrs_given_on_resume_take_effect_over_the_saved_group_values():
    # load_state_dict restores each group's saved lr; apply_schedule reads the base lrs from the config instead
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32))
    old = LoopConfig.from_dict(dict(optimizer="muon", muon_lr=0.05, lr=1e-3, warmup_steps=0, lr_schedule="constant"))
    saved = build_optimizer(model, old, torch.device("cpu"))
    apply_schedule(saved, 0, old)
    new = LoopConfig.from_dict({**old.to_dict(), "muon_lr": 0.01, "lr": 2e-4})
    opt = build_optimizer(model, new, torch.device("cpu"))
    opt.load_state_dict(saved.state_dict())
    assert [g["lr"] for g in opt.param_groups] == [0.05, 1e-3, 1e-3]  # the saved values came back
    assert apply_schedule(opt, 0, new) == 2e-4
    assert [g["lr"] for g in opt.param_groups] == [0.01, 2e-4, 2e-4]


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_float32_muon_is_torchs_update_with_the_iterations_in_float32(adjust_lr_fn):
    # with its iterations put back in bfloat16 Float32Muon is torch.optim.Muon bit for bit: the same update
    class Bfloat16Muon(Float32Muon):
        ns_dtype = torch.bfloat16

    def run(cls):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(48, 16)), torch.nn.Parameter(torch.randn(16, 40))]
        opt = cls([{"params": ps, "weight_decay": 0.1}], lr=0.02, adjust_lr_fn=adjust_lr_fn)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
        return ps, opt

    torch_ps, torch_opt = run(torch.optim.Muon)
    same_ps, _ = run(Bfloat16Muon)
    f32_ps, f32_opt = run(Float32Muon)
    assert all(torch.equal(a, b) for a, b in zip(torch_ps, same_ps))
    assert all(torch.allclose(a, b, atol=1e-3) and not torch.equal(a, b) for a, b in zip(torch_ps, f32_ps))
    assert f32_opt.state_dict()["param_groups"] == torch_opt.state_dict()["param_groups"]
    # orthogonalize approximates U V^T: singular values near 1 (the quintic leaves them in about (0.5, 1.5))
    s = torch.linalg.svdvals(orthogonalize(torch.randn(64, 24), torch.float32))
    assert s.min() > 0.5 and s.max() < 1.5


def test_muon_orthogonalizes_in_bfloat16_only_where_the_device_computes_it_natively(monkeypatch):
    import gpt2kit.train.optim as optim

    for native, cls in ((True, torch.optim.Muon), (False, Float32Muon)):
        monkeypatch.setattr(optim, "native_bf16", lambda device_type, native=native: native)
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32))
        opt = build_optimizer(model, LoopConfig.from_dict({"optimizer": "muon"}), torch.device("cpu"))
        assert type(opt.muon) is cls
