"""TokenLoader / eval_batches: disjoint ranks, shuffled epochs, exact resume, and refusal of bad data."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from gpt2kit.data.loader import TokenLoader, eval_batches, read_manifest
from gpt2kit.data.shards import write_shard
from gpt2kit.errors import UserError

T = 8


def window_ids(x: torch.Tensor) -> list[int]:
    assert (x[:, 0] % T == 0).all()
    return (x[:, 0] // T).tolist()


def test_inputs_and_targets_are_consecutive_token_windows(counting_dir):
    loader = TokenLoader(counting_dir, block_size=T, micro_batch_size=4)
    for _ in range(40):  # more than one epoch, every window crossing shards included
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, T) and x.dtype == y.dtype == torch.int64
        assert x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x + 1, y)  # the stream is 0, 1, 2, ...: targets are inputs shifted by one
        assert torch.equal(x, x[:, :1] + torch.arange(T))
    assert loader.num_windows == 125 and loader.tokens_per_step == 4 * T


def test_two_ranks_see_every_window_exactly_once_per_epoch(counting_dir):
    B, A, W = 3, 2, 2
    ranks = [TokenLoader(counting_dir, block_size=T, micro_batch_size=B, grad_accum_steps=A, rank=r, world_size=W)
             for r in range(W)]
    n, G = 125, B * A * W
    stream = {}  # global stream position -> window id, rebuilt from what each rank received
    for step in range(3 * n // G + 1):
        for m in range(A):
            for r, loader in enumerate(ranks):
                first = step * G + (m * W + r) * B
                for i, w in enumerate(window_ids(loader.next_batch()[0])):
                    stream[first + i] = w
    for epoch in range(3):
        ids = [stream[p] for p in range(epoch * n, (epoch + 1) * n)]
        assert sorted(ids) == list(range(n)), f"epoch {epoch} must visit every window once"
    orders = [[stream[p] for p in range(e * n, (e + 1) * n)] for e in range(3)]
    assert orders[0] != list(range(n)) and orders[0] != orders[1] != orders[2], "seeded shuffle differs per epoch"
    assert ranks[0].epoch == ranks[1].epoch == 3


def test_each_step_has_the_same_global_batch_whatever_the_split(counting_dir):
    one = TokenLoader(counting_dir, block_size=T, micro_batch_size=8, grad_accum_steps=2)
    two = [TokenLoader(counting_dir, block_size=T, micro_batch_size=8, rank=r, world_size=2) for r in range(2)]
    four = [TokenLoader(counting_dir, block_size=T, micro_batch_size=2, grad_accum_steps=2, rank=r, world_size=4)
            for r in range(4)]
    for step in range(10):
        a = window_ids(one.next_batch()[0]) + window_ids(one.next_batch()[0])
        b = window_ids(two[0].next_batch()[0]) + window_ids(two[1].next_batch()[0])
        c = [w for _ in range(2) for loader in four for w in window_ids(loader.next_batch()[0])]
        assert sorted(a) == sorted(b) == sorted(c)
        if step * 16 // 125 == (step * 16 + 15) // 125:  # a step inside one epoch: 16 distinct windows
            assert len(set(b)) == 16
    assert one.tokens_per_step == two[0].tokens_per_step == four[0].tokens_per_step == 16 * T


def test_seed_decides_the_order_and_shuffle_false_is_sequential(counting_dir):
    def first_ids(**kw):
        loader = TokenLoader(counting_dir, block_size=T, micro_batch_size=25, **kw)
        return [w for _ in range(5) for w in window_ids(loader.next_batch()[0])]

    assert first_ids(seed=1) == first_ids(seed=1) != first_ids(seed=2)
    assert first_ids(shuffle=False) == list(range(125))


@pytest.mark.parametrize("stop_after", [1, 3, 7, 20, 31])
def test_restored_loader_continues_with_exactly_the_same_batches(counting_dir, stop_after):
    kw = dict(block_size=T, micro_batch_size=3, grad_accum_steps=2, rank=1, world_size=2, seed=7)
    reference = TokenLoader(counting_dir, **kw)
    expected = [reference.next_batch() for _ in range(stop_after + 15)]

    first = TokenLoader(counting_dir, **kw)
    for _ in range(stop_after):  # odd counts stop in the middle of an optimizer step
        first.next_batch()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)

    resumed = TokenLoader(counting_dir, **{**kw, "seed": 999})  # the seed comes from the state
    resumed.load_state_dict(state)
    assert resumed.epoch == first.epoch
    for x, y in expected[stop_after:]:
        rx, ry = resumed.next_batch()
        assert torch.equal(rx, x) and torch.equal(ry, y)


def test_state_is_rank_independent_and_layout_may_change_between_steps(counting_dir):
    a = TokenLoader(counting_dir, block_size=T, micro_batch_size=4, grad_accum_steps=2)
    for _ in range(6):
        a.next_batch()
    state = a.state_dict()
    cont = sorted(window_ids(a.next_batch()[0]) + window_ids(a.next_batch()[0]))
    b = [TokenLoader(counting_dir, block_size=T, micro_batch_size=4, rank=r, world_size=2) for r in range(2)]
    for loader in b:
        loader.load_state_dict(state)
    assert sorted(window_ids(b[0].next_batch()[0]) + window_ids(b[1].next_batch()[0])) == cont
    assert b[0].state_dict() == b[1].state_dict()

    a.next_batch()  # now in the middle of a step: the layout must match
    with pytest.raises(UserError, match="middle of an optimizer step"):
        b[0].load_state_dict(a.state_dict())


def test_state_from_other_data_or_block_size_is_refused(counting_dir, tmp_path, h):
    state = TokenLoader(counting_dir, block_size=T, micro_batch_size=2).state_dict()
    other = h.write_token_dir(tmp_path / "other", {"train": [np.arange(2000)]})
    with pytest.raises(UserError, match="other data"):
        TokenLoader(other, block_size=T, micro_batch_size=2).load_state_dict(state)
    with pytest.raises(UserError, match="block size"):
        TokenLoader(counting_dir, block_size=4, micro_batch_size=2).load_state_dict(state)


def test_eval_batches_are_fixed_in_order_and_disjoint_across_ranks(counting_dir):
    # val: 161 tokens -> 20 windows -> 5 batches of 4
    one = list(eval_batches(counting_dir, block_size=T, batch_size=4))
    assert len(one) == 5
    starts = torch.cat([x[:, 0] for x, _ in one]).tolist()
    assert starts == [5000 + T * i for i in range(20)]
    assert all(torch.equal(x + 1, y) for x, y in one)
    again = eval_batches(counting_dir, block_size=T, batch_size=4)
    assert [torch.equal(a[0], b[0]) for a, b in zip(one, again)] == [True] * 5
    r0 = list(eval_batches(counting_dir, block_size=T, batch_size=4, rank=0, world_size=2))
    r1 = list(eval_batches(counting_dir, block_size=T, batch_size=4, rank=1, world_size=2))
    assert len(r0) == len(r1) == 2, "ranks yield the same count; the odd batch out is dropped"
    got = sorted(torch.cat([x[:, 0] for x, _ in r0 + r1]).tolist())
    assert got == sorted(torch.cat([x[:, 0] for x, _ in one[:4]]).tolist())
    assert len(list(eval_batches(counting_dir, block_size=T, batch_size=4, max_batches=2))) == 2
    with pytest.raises(UserError, match="fewer than batch_size"):
        eval_batches(counting_dir, block_size=T, batch_size=64)


def _flip_byte(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, pattern", [
    (lambda p: p.write_bytes(p.read_bytes()[:-2]), r"train_000002\.bin: shard is \d+ bytes but"),
    (lambda p: _flip_byte(p, 1024 + 100), r"train_000002\.bin: shard checksum mismatch"),
    (lambda p: _flip_byte(p, 12), r"train_000002\.bin: not a gpt2kit token shard \(bad header\)"),
    (lambda p: write_shard(p, np.arange(7)), r"train_000002\.bin: shard holds 7 tokens but the manifest records"),
    (lambda p: p.unlink(), r"train_000002\.bin: shard file is missing"),
])
def test_damaged_shards_are_refused_with_the_file_name(counting_dir, damage, pattern):
    damage(counting_dir / "train_000002.bin")
    with pytest.raises(UserError, match=pattern):
        TokenLoader(counting_dir, block_size=T, micro_batch_size=2)
    # the val split is intact, so evaluation still works
    assert len(list(eval_batches(counting_dir, block_size=T, batch_size=4))) == 5


def test_each_rank_hashes_its_share_and_together_they_catch_a_bit_flip(counting_dir):
    _flip_byte(counting_dir / "train_000003.bin", 1024 + 3)
    assert TokenLoader(counting_dir, block_size=T, micro_batch_size=2, rank=0, world_size=2) is not None
    with pytest.raises(UserError, match="train_000003.bin: shard checksum mismatch"):
        TokenLoader(counting_dir, block_size=T, micro_batch_size=2, rank=1, world_size=2)


def test_manifest_problems_are_clear_errors(tmp_path, counting_dir):
    with pytest.raises(UserError, match=r"nowhere: no such data directory.*gpt2kit prepare"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty/manifest\.json: missing.*gpt2kit prepare"):
        TokenLoader(tmp_path / "empty", block_size=T, micro_batch_size=2)
    man_path = counting_dir / "manifest.json"
    good = json.loads(man_path.read_text())
    man_path.write_text("{not json")
    with pytest.raises(UserError, match=r"manifest\.json: not valid JSON"):
        read_manifest(counting_dir)
    man_path.write_text(json.dumps({**good, "vocab_size": 50304}))
    with pytest.raises(UserError, match=r"manifest\.json: data was prepared with vocab_size=50304"):
        TokenLoader(counting_dir, block_size=T, micro_batch_size=2)
    man_path.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(UserError, match="newer than this gpt2kit"):
        read_manifest(counting_dir)
    man_path.write_text(json.dumps({**good, "splits": {"train": good["splits"]["train"]}}))
    with pytest.raises(UserError, match="has no 'val' tokens"):
        eval_batches(counting_dir, block_size=T, batch_size=2)
    with pytest.raises(UserError, match="fewer than one window"):
        TokenLoader(counting_dir, block_size=5000, micro_batch_size=2)


def test_loader_on_prepared_text_never_mixes_splits(tmp_path, jsonl_corpus, h):
    from gpt2kit.data.prepare import prepare

    out = tmp_path / "out"
    prepare([jsonl_corpus], out, shard_tokens=70, val_fraction=0.3, workers=1, progress=False)
    val = h.split_stream(out, "val").astype(np.int64)
    train = h.split_stream(out, "train").astype(np.int64)
    for k, (x, y) in enumerate(eval_batches(out, block_size=T, batch_size=2)):
        for i in range(2):
            w = 2 * k + i
            assert x[i].tolist() == val[w * T:w * T + T].tolist()
            assert y[i].tolist() == val[w * T + 1:w * T + T + 1].tolist()
    loader = TokenLoader(out, block_size=T, micro_batch_size=4, shuffle=False)
    x, _ = loader.next_batch()
    assert x.flatten().tolist() == train[:4 * T].reshape(4, T).flatten().tolist()
    assert loader.manifest == read_manifest(out)


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    # a shard whose checksum matches its manifest but whose ids are not GPT-2's (another tokenizer)
    import numpy as np

    from gpt2kit.data.loader import TokenLoader
    from gpt2kit.data.manifest import MANIFEST_KIND, MANIFEST_VERSION, tokenizer_record, write_manifest
    from gpt2kit.data.shards import write_shard
    from gpt2kit.errors import UserError

    splits = {}
    for split in ("train", "val"):
        toks = np.arange(200, dtype=np.uint16)
        if split == "train":
            toks[17] = 60000
        sha = write_shard(tmp_path / f"{split}.bin", toks)
        splits[split] = {"tokens": 200, "shards": [{"file": f"{split}.bin", "tokens": 200, "sha256": sha}]}
    write_manifest(tmp_path / "manifest.json", {"kind": MANIFEST_KIND, "format_version": MANIFEST_VERSION,
                                                **tokenizer_record(), "splits": splits})
    with pytest.raises(UserError, match="train.bin: shard holds token ids >= 50257"):
        TokenLoader(tmp_path, "train", block_size=8, micro_batch_size=2)
