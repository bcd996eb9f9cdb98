"""Fine-tuning batches: padding, packing masks and the shuffled epoch order that resumes."""

from __future__ import annotations

import pytest
import torch

from gpt2kit.errors import UserError
from gpt2kit.finetune.batching import EpochBatches, pack_examples, packed_attn_mask, packed_batch, pad_right, sft_batch
from gpt2kit.finetune.sft_data import SFTExample
from gpt2kit.tokenizer import EOT_ID


def test_padding_and_packing_masks():
    idx, mask = pad_right([[1, 2, 3], [4]], pad_id=0)
    assert idx.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]
    a = SFTExample([10, 11, 12], [False, True, True])
    b = SFTExample([20, 21], [False, True])
    batch = sft_batch([a, b], pad_id=EOT_ID)
    assert batch["targets"].tolist() == [[11, 12, -100], [21, -100, -100]]
    rows = pack_examples([3, 2, 4], max_length=5)
    assert rows == [[0, 1], [2]]
    packed = packed_batch([[a, b]], pad_id=EOT_ID)
    assert packed["positions"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["targets"].tolist() == [[11, 12, -100, 21, -100]]  # never predicts the next example's start
    m = packed_attn_mask(packed["doc"])[0, 0]
    assert m[4].tolist() == [False, False, False, True, True]  # the second example sees only itself
    assert m[2].tolist() == [True, True, True, False, False]


def test_epoch_batches_visit_every_item_per_epoch_and_resume():
    seen = []
    src = EpochBatches(10, 4, lambda items: {"items": torch.tensor(items)}, seed=3, fingerprint="f")
    for _ in range(5):  # 20 items = 2 epochs
        seen += src.next_batch()["items"].tolist()
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # reshuffled per epoch
    state = None
    src2 = EpochBatches(10, 4, lambda items: {"items": torch.tensor(items)}, seed=3, fingerprint="f")
    src2.next_batch()
    state = src2.state_dict()
    src3 = EpochBatches(10, 4, lambda items: {"items": torch.tensor(items)}, seed=3, fingerprint="f")
    src3.load_state_dict(state)
    assert src3.next_batch()["items"].tolist() == seen[4:8]
    # two ranks with batch 2 take the same items per step as one rank with batch 4
    r0 = EpochBatches(10, 2, lambda items: items, seed=3, fingerprint="f", rank=0, world_size=2)
    r1 = EpochBatches(10, 2, lambda items: items, seed=3, fingerprint="f", rank=1, world_size=2)
    assert r0.next_batch() + r1.next_batch() == seen[:4]
    other = EpochBatches(11, 4, lambda items: items, seed=3, fingerprint="g")
    with pytest.raises(UserError, match="training data .* differs"):
        other.load_state_dict(state)
