"""Out of memory survived: the micro-batch halves, accumulation doubles, the step is redone from its start, and
the run follows the trajectory of one that used the smaller micro-batch throughout; at micro-batch 1 the run
saves and stops with one sentence."""

from __future__ import annotations

import pytest
import torch
from train_settings import losses

from gpt2kit.data.stream import EpochStream
from gpt2kit.train.guards import is_out_of_memory, smaller_micro_batch


def test_what_counts_as_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                         "memory: you tried to allocate 1099511627776 bytes"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_smaller_micro_batch_divides_the_old_one():
    assert [smaller_micro_batch(b) for b in (64, 8, 6, 3, 9, 7, 2)] == [32, 4, 3, 1, 3, 1, 1]


def test_stream_set_layout_serves_the_same_windows():
    a = EpochStream(100, 8, seed=3, grad_accum_steps=1)
    b = EpochStream(100, 8, seed=3, grad_accum_steps=1)
    a.next_items()
    b.next_items()
    b.set_layout(2, 4)
    step_a = a.next_items()
    step_b = torch.cat([torch.from_numpy(b.next_items()) for _ in range(4)]).numpy()
    assert (step_a == step_b).all() and a.position == b.position
    with pytest.raises(ValueError, match="same global batch"):
        b.set_layout(3, 3)
    b.next_items()
    with pytest.raises(ValueError, match="only between steps"):
        b.set_layout(8, 1)


def _oom_once_at(monkeypatch, batch_size, call):
    """Make the model's forward raise out-of-memory once, on its ``call``-th training forward at ``batch_size``."""
    from gpt2kit.model import GPT

    seen = {"n": 0}
    real = GPT.hidden_states

    def hidden_states(self, idx, *a, **kw):
        if torch.is_grad_enabled() and idx.size(0) == batch_size:
            seen["n"] += 1
            if seen["n"] == call:
                raise torch.OutOfMemoryError(f"CUDA out of memory at micro-batch {batch_size}")
        return real(self, idx, *a, **kw)

    monkeypatch.setattr(GPT, "hidden_states", hidden_states)
    return seen


@pytest.mark.slow
def test_injected_oom_halves_the_micro_batch_and_keeps_the_trajectory(tiny_cfg, tmp_path, monkeypatch, capsys):
    from gpt2kit.checkpoint import read_checkpoint
    from gpt2kit.train.pretrain import run_pretraining

    # no dropout: its masks depend on how the batch is split, so only then are the trajectories the same
    common = dict(total_batch_tokens=8 * 32, max_steps=6, dropout=0.0)
    small = run_pretraining(tiny_cfg(out=str(tmp_path / "small"), batch_size=4, **common))
    seen = _oom_once_at(monkeypatch, 8, call=3)  # the third step runs out of memory
    survived = run_pretraining(tiny_cfg(out=str(tmp_path / "big"), batch_size=8, **common))
    assert seen["n"] == 3  # after the back-off no forward ran at 8 again
    out = capsys.readouterr().out
    assert out.count("out of memory") == 1 and "redoing the step with micro-batch 4 x 2 accumulation" in out
    assert survived.step == 6
    assert losses(survived.metrics) == pytest.approx(losses(small.metrics), abs=1e-5)
    saved = read_checkpoint(survived.checkpoint)
    assert saved["grad_accum_steps"] == 2
    assert saved["config"]["batch_size"] == 4  # the micro-batch in use: a resumed run continues with it


@pytest.mark.slow
def test_oom_at_micro_batch_one_saves_and_stops(tiny_cfg, tmp_path, monkeypatch):
    from gpt2kit.checkpoint import list_step_checkpoints, read_checkpoint
    from gpt2kit.errors import UserError
    from gpt2kit.model import GPT
    from gpt2kit.train.pretrain import resolve_train_config, run_pretraining

    run_pretraining(tiny_cfg(batch_size=2, max_steps=2))
    real = GPT.hidden_states

    def hidden_states(self, idx, *a, **kw):
        if torch.is_grad_enabled():
            raise RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)")
        return real(self, idx, *a, **kw)

    monkeypatch.setattr(GPT, "hidden_states", hidden_states)
    cfg, point = resolve_train_config(None, {"out": str(tmp_path / "run"), "resume": "auto", "max_steps": 4})
    with pytest.raises(UserError, match=r"out of memory on cpu at micro-batch 1 \(--batch-size 2, split after .*"
                                        r"saved .*step_00000002\.pt, continue with --resume auto"):
        run_pretraining(cfg, point)
    ckpt = read_checkpoint(list_step_checkpoints(tmp_path / "run")[-1])
    assert ckpt["step"] == 2 and ckpt["loader"]["position"] == 2 * 2 and ckpt["loader"]["micro_step"] == 0
