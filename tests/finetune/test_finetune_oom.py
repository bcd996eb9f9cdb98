"""Fine-tuning survives out of memory like pretraining: the micro-batch splits, accumulation doubles, the losses
are those of a run with the smaller micro-batch, and the saved config records the layout in use."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow  # whole fine-tuning runs


def _cfg(ft_dir, out, **kw):
    from gpt2kit.finetune.config import ClassifyConfig

    return ClassifyConfig.from_dict(dict(checkpoint=str(ft_dir / "base.pt"), train=str(ft_dir / "train.csv"),
                                         val=str(ft_dir / "val.csv"), out=str(out), epochs=1, progress=False,
                                         tensorboard=False, device="cpu", log_every=1, **kw))


def test_injected_oom_in_classify_splits_the_micro_batch(ft_dir, tmp_path, monkeypatch, capsys):
    from gpt2kit.checkpoint import read_checkpoint, resolve_checkpoint
    from gpt2kit.finetune.run import run_classify
    from gpt2kit.model import GPT
    from gpt2kit.train.metrics import read_metrics

    run_classify(_cfg(ft_dir, tmp_path / "small", batch_size=16, accum_steps=2), log=print)
    seen = {"n": 0}
    real = GPT.hidden_states

    def hidden_states(self, idx, *a, **kw):
        if torch.is_grad_enabled() and idx.size(0) == 32:
            seen["n"] += 1
            if seen["n"] == 2:
                raise torch.OutOfMemoryError("CUDA out of memory at micro-batch 32")
        return real(self, idx, *a, **kw)

    monkeypatch.setattr(GPT, "hidden_states", hidden_states)
    capsys.readouterr()
    run_classify(_cfg(ft_dir, tmp_path / "big", batch_size=32, accum_steps=1), log=print)
    assert seen["n"] == 2 and "redoing the step with micro-batch 16 x 2 accumulation" in capsys.readouterr().out
    small = [r["loss"] for r in read_metrics(tmp_path / "small") if r.get("loss") is not None]
    big = [r["loss"] for r in read_metrics(tmp_path / "big") if r.get("loss") is not None]
    assert len(big) == len(small) == 6 and big == pytest.approx(small, abs=1e-5)
    saved = read_checkpoint(resolve_checkpoint(tmp_path / "big")[1])["config"]
    assert saved["batch_size"] == 16 and saved["accum_steps"] == 2
