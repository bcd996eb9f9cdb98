"""--dtype float16: the loss scaler in a step, the NaN policy beside it, and (slow) whole runs that skip
overflowed steps, resume bitwise with the scaler's state and resume checkpoints saved without one."""

from __future__ import annotations

import math

import pytest
import torch
from train_settings import losses

from gpt2kit.device import grad_scaler
from gpt2kit.distributed import DistEnv
from gpt2kit.train.guards import MIN_LOSS_SCALE, NanPolicy, TrainingDiverged
from gpt2kit.train.state import RunState


def test_scaler_is_on_for_float16_only():
    assert grad_scaler("cpu", torch.float16).is_enabled()
    assert not grad_scaler("cpu", torch.bfloat16).is_enabled()
    assert not grad_scaler("cpu", None).is_enabled()
    assert grad_scaler("cpu", None).state_dict() == {}


class _Nan:
    on_nan, max_skipped_steps = "stop", 10


class _Cfg:
    nan = _Nan()


class _Ckpt:
    def last_good(self) -> str:
        return "no checkpoint was written"


def test_overflowed_float16_step_is_skipped_not_a_nan_failure():
    policy, state = NanPolicy(_Cfg(), _Ckpt(), print), RunState()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    assert policy.allows_update(2.0, math.inf, state, scaler) is False  # --on-nan stop, yet no stop
    assert state.skipped_steps == 1
    assert policy.allows_update(2.0, 1.0, state, scaler) is True
    with pytest.raises(TrainingDiverged, match="step 1: loss nan"):  # a NaN loss is no overflow of the scale
        policy.allows_update(math.nan, math.inf, state, scaler)
    with pytest.raises(TrainingDiverged, match="gradient norm inf"):  # without a scaler, as before
        policy.allows_update(2.0, math.inf, state)
    tiny = torch.amp.GradScaler("cpu", init_scale=MIN_LOSS_SCALE * 1.5)
    with pytest.raises(TrainingDiverged, match="float16 with the loss scale down to"):
        policy.allows_update(2.0, math.inf, state, tiny)


def _step(scaler, dtype):
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.train.loop import train_step
    from gpt2kit.train.task import TrainTask, lm_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64, padded_vocab_size=64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Data:
        def next_batch(self):
            g = torch.Generator().manual_seed(1)
            x = torch.randint(0, 64, (2, 9), generator=g)
            return x[:, :-1], x[:, 1:]

    task = TrainTask(model=model, model_config={}, train_data=Data(), loss_fn=lm_loss, grad_accum_steps=2)
    params = list(model.parameters())
    loss, norm, tokens = train_step(model, task, params, 1.0, DistEnv(device=torch.device("cpu")), dtype,
                                    scaler, opt)
    return loss, norm, tokens, [p.grad.clone() for p in params]


def test_train_step_clips_the_unscaled_gradients():
    plain = _step(None, torch.float16)
    scaled = _step(torch.amp.GradScaler("cpu", init_scale=2.0**10), torch.float16)
    assert scaled[0] == plain[0] and scaled[2] == plain[2] == 32
    assert scaled[1] == pytest.approx(plain[1], rel=1e-3)  # the norm of the true gradients, not 1024 times it
    assert all(torch.allclose(a, b, rtol=1e-2, atol=1e-5) for a, b in zip(scaled[3], plain[3]))


def test_progress_line_shows_skipped_steps():
    from gpt2kit.train.loop import _postfix

    assert "skipped" not in _postfix(1.0, 1e-3, 0.5, 100.0, None)
    assert _postfix(1.0, 1e-3, 0.5, 100.0, None, 3).endswith(" skipped 3")


def _scaler_from(init_scale):
    """A float16 scaler that starts far too high, so the first steps overflow and are skipped."""
    return lambda device_type, dtype: torch.amp.GradScaler(device_type, init_scale=init_scale,
                                                           enabled=dtype == torch.float16)


@pytest.mark.slow
def test_float16_run_skips_overflows_and_resumes_bitwise(tiny_cfg, tmp_path, monkeypatch):
    import json

    from gpt2kit.checkpoint import list_step_checkpoints, read_checkpoint
    from gpt2kit.train.pretrain import resolve_train_config, run_pretraining

    monkeypatch.setattr("gpt2kit.train.loop.grad_scaler", _scaler_from(2.0**20))
    common = dict(dtype="float16", dropout=0.1)
    full = run_pretraining(tiny_cfg(out=str(tmp_path / "full"), max_steps=8, **common))
    skipped = [r["skipped_steps"] for r in full.metrics if "skipped_steps" in r]
    assert skipped and skipped[-1] >= 1 and all(r["loss_scale"] < 2.0**20 for r in full.metrics[skipped[-1]:])
    first = run_pretraining(tiny_cfg(out=str(tmp_path / "split"), max_steps=4, **common))
    saved = read_checkpoint(first.checkpoint)["grad_scaler"]
    assert saved["scale"] < 2.0**20  # the scale it found, which a resume must not lose
    cfg, point = resolve_train_config(None, {"out": str(tmp_path / "split"), "resume": "auto", "max_steps": 8})
    assert cfg.runtime.dtype == "float16"
    second = run_pretraining(cfg, point)
    assert losses(second.metrics) == losses(full.metrics)  # bitwise, all 8 steps
    assert losses(second.metrics, "loss_scale") == losses(full.metrics, "loss_scale")
    assert second.metrics[-1]["skipped_steps"] == full.metrics[-1]["skipped_steps"]
    a, b = (read_checkpoint(list_step_checkpoints(tmp_path / d)[-1]) for d in ("full", "split"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["grad_scaler"] == b["grad_scaler"]
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["skipped_steps"] == full.metrics[-1]["skipped_steps"]


@pytest.mark.slow
def test_checkpoint_without_scaler_state_resumes_in_float16(tiny_cfg, tmp_path):
    from gpt2kit.checkpoint import read_checkpoint
    from gpt2kit.train.pretrain import resolve_train_config, run_pretraining

    first = run_pretraining(tiny_cfg(max_steps=2))  # float32
    ckpt = torch.load(first.checkpoint, map_location="cpu", weights_only=True)
    del ckpt["grad_scaler"]  # as saved before float16 existed
    torch.save(ckpt, first.checkpoint)
    cfg, point = resolve_train_config(None, {"out": str(tmp_path / "run"), "resume": "auto", "max_steps": 4,
                                             "dtype": "float16"})
    second = run_pretraining(cfg, point)
    assert second.step == 4 and all(math.isfinite(x) for x in losses(second.metrics))
    assert read_checkpoint(second.checkpoint)["grad_scaler"]["scale"] > 0
