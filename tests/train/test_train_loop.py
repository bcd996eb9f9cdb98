"""The training loop: exact resume, gradient accumulation, NaN handling, checkpoints kept, refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_settings import losses

from gpt2kit.checkpoint import list_step_checkpoints, load_model, read_checkpoint
from gpt2kit.errors import UserError
from gpt2kit.train.pretrain import check_data_matches_model, resolve_train_config, run_pretraining

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def _weights(run_dir):
    return load_model(list_step_checkpoints(run_dir)[-1]).model.state_dict()


def _same(a, b) -> bool:
    """Nested dicts/lists of tensors and plain values equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_bitwise_identical(tiny_cfg, tmp_path, optimizer):
    # dropout > 0 so the torch RNG stream matters; the first half ends with an evaluation and samples,
    # which must not move the training RNG streams; muon ramps its momentum across the stop point
    common = dict(dropout=0.1, samples=1, sample_tokens=4, optimizer=optimizer, muon_momentum_warmup_steps=6)
    full = run_pretraining(tiny_cfg(out=str(tmp_path / "full"), max_steps=8, **common))
    first = run_pretraining(tiny_cfg(out=str(tmp_path / "split"), max_steps=4, **common))
    assert first.step == 4 and first.val_loss is not None
    cfg, point = resolve_train_config(None, {"out": str(tmp_path / "split"), "resume": "auto", "max_steps": 8})
    assert point is not None and point.checkpoint["step"] == 4
    # from the checkpoint
    assert cfg.model.dropout == 0.1 and cfg.model.n_embd == 32 and cfg.optim.optimizer == optimizer
    second = run_pretraining(cfg, point)
    assert second.step == 8
    assert losses(second.metrics) == losses(full.metrics)  # bitwise, all 8 steps
    assert len(losses(full.metrics)) == 8
    assert second.val_loss == full.val_loss
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt_a, opt_b = (read_checkpoint(list_step_checkpoints(tmp_path / d)[-1])["optimizer"] for d in ("full", "split"))
    assert _same(opt_a, opt_b)  # moments, momentum buffers and step counts, bit for bit
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 9))


def test_checkpoint_is_complete_and_weights_only(tiny_cfg, tmp_path):
    res = run_pretraining(tiny_cfg(max_steps=3))
    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=True)  # no pickled code
    for key in ("format_version", "kind", "tokenizer", "model_config", "model", "optimizer", "step", "loader",
                "rng", "config", "metrics"):
        assert key in ckpt, key
    assert ckpt["step"] == 3 and ckpt["tokenizer"] == "gpt2"
    rng = ckpt["rng"][0]
    assert set(rng) == {"python", "numpy", "torch", "cuda"}
    assert ckpt["loader"]["position"] == 3 * 4  # 3 steps of 4 windows
    assert [m["step"] for m in ckpt["metrics"]] == [1, 2, 3]
    assert ckpt["config"]["n_layer"] == 2
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["max_steps"] == 3


def test_grad_accumulation_matches_one_big_batch(tiny_cfg, tmp_path):
    big = run_pretraining(tiny_cfg(out=str(tmp_path / "a"), batch_size=8, total_batch_tokens=256, max_steps=4))
    accum = run_pretraining(tiny_cfg(out=str(tmp_path / "b"), batch_size=2, total_batch_tokens=256, max_steps=4))
    assert read_checkpoint(accum.checkpoint)["grad_accum_steps"] == 4
    assert losses(accum.metrics) == pytest.approx(losses(big.metrics), abs=1e-5)


def test_max_steps_does_not_change_the_schedule(tiny_cfg):
    short, long = tiny_cfg(max_steps=5), tiny_cfg(max_steps=40)
    assert [short.lr_at(s) for s in range(5)] == [long.lr_at(s) for s in range(5)]
    cfg = tiny_cfg(lr=6e-4, warmup_steps=715, schedule_steps=19073, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(6e-4 / 715)
    assert cfg.lr_at(714) == pytest.approx(6e-4)
    assert cfg.lr_at(19073) == pytest.approx(6e-5)
    assert cfg.lr_at(715 + (19073 - 715) // 2) == pytest.approx(3.3e-4, rel=1e-3)


def test_keeps_last_k_plus_best(tiny_cfg, tmp_path):
    # lr so high the loss gets worse after a while, so the best checkpoint is not among the last two
    res = run_pretraining(tiny_cfg(max_steps=8, save_every=1, keep_last=2, eval_every=2, lr=0.5, warmup_steps=0,
                                   grad_clip=0.0))
    run = tmp_path / "run"
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    names = sorted(p.name for p in list_step_checkpoints(run))
    vals = {r["step"]: r["val_loss"] for r in res.metrics if r.get("val_loss") is not None}
    assert best["step"] == min(vals, key=vals.get)
    assert best["val_loss"] == pytest.approx(min(vals.values()))
    expected = {"step_00000007.pt", "step_00000008.pt", best["file"]}
    assert set(names) == expected
    assert load_model(run).source.endswith(best["file"])  # --checkpoint RUN_DIR picks the best


def _poisoned_task(cfg, bad_calls):
    """A TrainTask (the fine-tuning API) whose loss is NaN on the given micro-step calls."""
    from gpt2kit.data.loader import TokenLoader
    from gpt2kit.model import GPT
    from gpt2kit.train.loop import TrainTask, lm_loss

    torch.manual_seed(0)
    model = GPT(cfg.model)
    loader = TokenLoader(cfg.pretrain.data, block_size=cfg.model.block_size, micro_batch_size=cfg.runtime.batch_size)
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = lm_loss(m, batch)
        return loss * float("nan") if calls["n"] in bad_calls else loss

    return TrainTask(model=model, model_config=model.config.to_dict(), train_data=loader, loss_fn=loss_fn)


def test_nan_loss_stops_without_saving(tiny_cfg, tmp_path):
    from gpt2kit.train.guards import TrainingDiverged
    from gpt2kit.train.loop import train

    cfg = tiny_cfg(max_steps=6, save_every=2)
    with pytest.raises(TrainingDiverged, match=r"step 3: loss nan.*step_00000002\.pt.*--on-nan skip"):
        train(cfg, _poisoned_task(cfg, {3}))
    assert [p.name for p in list_step_checkpoints(cfg.run.out)] == ["step_00000002.pt"]


def test_nan_loss_skipped_when_asked(tiny_cfg):
    from gpt2kit.train.loop import train

    cfg = tiny_cfg(max_steps=6, on_nan="skip")
    res = train(cfg, _poisoned_task(cfg, {3}))
    assert res.step == 6
    assert res.metrics[-1]["skipped_steps"] == 1
    sd = read_checkpoint(res.checkpoint)["model"]
    assert all(torch.isfinite(v).all() for v in sd.values())
    # too many consecutive bad steps still stop the run
    cfg = tiny_cfg(max_steps=6, on_nan="skip", max_skipped_steps=1, out=cfg.run.out + "2")
    from gpt2kit.train.guards import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="consecutive"):
        train(cfg, _poisoned_task(cfg, {2, 3}))


def test_resume_with_other_model_size_is_refused(tiny_cfg, tmp_path):
    run_pretraining(tiny_cfg(max_steps=2))
    out = str(tmp_path / "run")
    cfg, point = resolve_train_config(None, {"out": out, "resume": "auto", "max_steps": 4, "n_layer": 3})
    with pytest.raises(UserError, match=r"n_layer=2.*n_layer=3"):
        run_pretraining(cfg, point)
    with pytest.raises(UserError, match="different model size"):
        resolve_train_config("gpt2-124m", {"out": out, "resume": "auto"})


def test_data_with_other_vocab_is_refused(data_dir, tiny_cfg, tmp_path):
    import shutil

    bad = tmp_path / "bad_data"
    shutil.copytree(data_dir, bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["vocab_size"] = 32000
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UserError, match="vocab_size"):
        run_pretraining(tiny_cfg(data=str(bad), max_steps=1))
    with pytest.raises(UserError, match=r"--data .*vocab_size 32000.*vocab_size 50257"):
        check_data_matches_model({"tokenizer": "gpt2", "vocab_size": 32000}, 50257, bad)


def test_tokens_per_s_and_mfu_are_logged(tiny_cfg):
    res = run_pretraining(tiny_cfg(max_steps=2))
    rec = res.metrics[-1]
    assert rec["tokens_per_s"] > 0 and 0 < rec["mfu"] < 1.5
    assert rec["tokens"] == 2 * 4 * 32
    assert math.isfinite(rec["loss"]) and rec["lr"] > 0


def test_hellaswag_and_tensorboard_during_training(tiny_cfg, tmp_path):
    hs = tmp_path / "hellaswag.jsonl"
    rows = [{"ctx": f"The whale swam {i} miles and", "endings": ["then dove.", "sang loudly.", "ate a boat.", "slept."],
             "label": i % 4} for i in range(6)]
    hs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_pretraining(tiny_cfg(max_steps=4, eval_every=2, hellaswag=str(hs), hellaswag_every=4,
                                   tensorboard=True))
    by_step = {r["step"]: r for r in res.metrics}
    assert "val_loss" in by_step[2] and "hellaswag_acc_norm" not in by_step[2]
    assert 0.0 <= by_step[4]["hellaswag_acc_norm"] <= 1.0 and "hellaswag_acc" in by_step[4]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_out_of_memory_names_the_flags(tiny_cfg):
    from gpt2kit.data.loader import TokenLoader
    from gpt2kit.model import GPT
    from gpt2kit.train.loop import TrainTask, train

    cfg = tiny_cfg(max_steps=2)
    model = GPT(cfg.model)

    def oom(m, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    task = TrainTask(model=model, model_config=model.config.to_dict(), loss_fn=oom,
                     train_data=TokenLoader(cfg.pretrain.data, block_size=32, micro_batch_size=4))
    with pytest.raises(UserError, match=r"out of memory .*--batch-size 4.*lower --batch-size"):
        train(cfg, task)
