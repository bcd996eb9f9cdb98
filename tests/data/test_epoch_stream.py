"""EpochStream: the one epoch stream of pretraining windows and fine-tuning items. Loader states written before
the two shared it (tests/data/fixtures/loader_states_main.json, by make_loader_states.py) still resume to exactly
the batches they resumed to then, and both loaders draw the same order for the same seed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from gpt2kit.data.loader import TokenLoader
from gpt2kit.data.stream import STATE_VERSION, EpochStream
from gpt2kit.errors import UserError
from gpt2kit.finetune.batching import EpochBatches

T = 8
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "loader_states_main.json").read_text())


def _digest(batches) -> str:
    h = hashlib.sha256()
    for x, y in batches:
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("case", FIXTURE["pretrain"], ids=lambda c: c["name"])
def test_pretraining_states_from_before_resume_to_the_same_batches(counting_dir, case):
    assert case["state"]["format_version"] == 1 and "num_items" not in case["state"]
    for expected in case["resumes"]:
        loader = TokenLoader(counting_dir, block_size=T, **expected["loader"])
        if "error" in expected:
            with pytest.raises(UserError) as err:
                loader.load_state_dict(case["state"])
            assert str(err.value) == expected["error"]
            continue
        loader.load_state_dict(case["state"])
        batches = [loader.next_batch() for _ in expected["window_ids"]]
        assert loader.epoch == expected["epoch"]  # after those batches
        assert [(x[:, 0] // T).tolist() for x, _ in batches] == expected["window_ids"]
        assert _digest(batches) == expected["sha256"]


@pytest.mark.parametrize("case", FIXTURE["finetune"], ids=lambda c: c["name"])
def test_finetuning_states_from_before_resume_to_the_same_items(case):
    assert "format_version" not in case["state"] and "consumed" in case["state"]
    for expected in case["resumes"]:
        src = EpochBatches(case["num_items"], collate=lambda items: items, seed=expected["seed"],
                           fingerprint=case["fingerprint"], **expected["batches"])
        if "error" in expected:
            with pytest.raises(UserError) as err:
                src.load_state_dict(case["state"])
            assert str(err.value) == expected["error"]
            continue
        src.load_state_dict(case["state"])
        assert src.epoch == expected["epoch"]  # finetune recorded it before the batches
        assert [src.next_batch() for _ in expected["items"]] == expected["items"]


def test_both_loaders_draw_one_order_and_save_one_state_layout(counting_dir):
    """Windows and fine-tuning items in the same seeded order; the saved position is the stream's own keys."""
    stream = EpochStream(125, 8, seed=5, grad_accum_steps=2)
    loader = TokenLoader(counting_dir, block_size=T, micro_batch_size=8, grad_accum_steps=2, seed=5)
    items = EpochBatches(125, 8, lambda ids: ids, seed=5, fingerprint="f", grad_accum_steps=2)
    for _ in range(20):  # past the first epoch (16 windows a step)
        expected = stream.next_items().tolist()
        assert (loader.next_batch()[0][:, 0] // T).tolist() == expected
        assert items.next_batch() == expected
    assert loader.epoch == items.epoch == stream.epoch == 1
    for state in (loader.state_dict(), items.state_dict()):
        assert state["format_version"] == STATE_VERSION
        assert {k: state[k] for k in stream.state_dict()} == stream.state_dict()
    assert stream.state_dict() == {"num_items": 125, "seed": 5, "shuffle": True, "position": 160, "micro_step": 0,
                                   "micro_batch_size": 8, "grad_accum_steps": 2, "world_size": 1}
    assert stream.order(3).tolist() == np.random.default_rng([5, 3]).permutation(125).tolist()


def test_finetuning_state_keeps_its_checks_and_refuses_a_newer_format():
    src = EpochBatches(10, 2, lambda ids: ids, seed=3, fingerprint="f", grad_accum_steps=2)
    src.next_batch()  # mid-step
    state = src.state_dict()
    with pytest.raises(UserError, match="middle of an optimizer step"):
        EpochBatches(10, 2, lambda ids: ids, seed=3, fingerprint="f", world_size=2).load_state_dict(state)
    with pytest.raises(UserError, match="training data .* differs"):
        EpochBatches(10, 2, lambda ids: ids, seed=3, fingerprint="g", grad_accum_steps=2).load_state_dict(state)
    with pytest.raises(UserError, match="newer than this gpt2kit"):
        EpochBatches(10, 2, lambda ids: ids, seed=3, fingerprint="f").load_state_dict({**state, "format_version": 99})
    resumed = EpochBatches(10, 2, lambda ids: ids, seed=3, fingerprint="f", grad_accum_steps=2)
    resumed.load_state_dict(state)
    assert resumed.next_batch() == src.next_batch()
