"""Splits that always work: one text file, unequal files, many documents, and a corpus past the held-back head."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2kit.cli import main
from gpt2kit.data import prepare as prep
from gpt2kit.data.builtin import builtin_text
from gpt2kit.data.prepare import prepare
from gpt2kit.data.split_plan import SPLIT_TOLERANCE
from gpt2kit.tokenizer import EOT_ID

FAST = dict(workers=1, progress=False)


def _within_tolerance(man: dict, asked: float) -> float:
    share = man["splits"]["val"]["tokens"] / man["tokens"]
    assert abs(share - asked) <= SPLIT_TOLERANCE * asked, f"val share {share:.4f}, asked {asked}"
    assert man["split"]["actual_share"] == pytest.approx(share, abs=1e-6)
    return share


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """A 20 KB short story as one .txt file (the start of Moby-Dick)."""
    path = tmp_path_factory.mktemp("story") / "story.txt"
    path.write_text(builtin_text("moby-dick")[:20_000], encoding="utf-8")
    return path


def test_one_text_file_gets_its_tail_as_val_by_default(story, tmp_path, capsys, h):
    out = tmp_path / "mine"
    assert main(["prepare", str(story), "--out", str(out), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    man = prepare([story], out, **FAST)  # the finished directory: returned as is
    assert man["split"]["method"] == "document_tails" and man["split"]["default"] is True
    assert man["split"]["asked_share"] == 0.1  # a small corpus gets nanoGPT's 10% by default
    _within_tolerance(man, 0.1)
    # train then val is the document itself: val is its tail
    whole = np.array([EOT_ID] + h.encode(story.read_text(encoding="utf-8")), dtype=np.uint16)
    train, val = h.split_stream(out, "train"), h.split_stream(out, "val")
    assert np.array_equal(np.concatenate([train, val]), whole) and len(val) > 400
    line = next(ln for ln in err.splitlines() if "val 10.0" in ln)
    assert "asked 10.00% by default" in line and "the tail of each of 1 long document" in line


def test_a_big_and_a_small_file_each_give_their_tail(tmp_path):
    text = builtin_text("moby-dick")
    (tmp_path / "big.txt").write_text(text[:200_000], encoding="utf-8")
    (tmp_path / "small.txt").write_text(text[-8_000:], encoding="utf-8")
    man = prepare([tmp_path / "big.txt", tmp_path / "small.txt"], tmp_path / "out", val_fraction=0.05, **FAST)
    _within_tolerance(man, 0.05)  # once: 98% of the tokens went to val
    assert man["split"]["documents_split"] == 2 and man["splits"]["train"]["documents"] == 2


def test_many_small_documents_split_as_whole_documents(tmp_path, jsonl_corpus, h):
    man = prepare([jsonl_corpus], tmp_path / "out", val_fraction=0.25, **FAST)
    assert man["split"]["method"] == "whole_documents" and man["split"]["documents_split"] == 0
    _within_tolerance(man, 0.25)
    assert int((h.split_stream(tmp_path / "out", "val") == EOT_ID).sum()) == man["splits"]["val"]["documents"]


def test_past_the_held_back_head_the_split_streams_and_resumes_alike(tmp_path, jsonl_corpus, monkeypatch, h):
    monkeypatch.setattr(prep, "HEAD_TOKENS", 120)  # the corpus (~1000 tokens) outgrows the head
    a = prepare([jsonl_corpus], tmp_path / "a", val_fraction=0.2, shard_tokens=40, **FAST)
    _within_tolerance(a, 0.2)
    # stopped after a few shards, then re-run: the resumed run plans the split exactly as the first did
    calls = {"n": 0}
    real = prep._Output.checkpoint

    def stop_after_three(self, position):
        real(self, position)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep._Output, "checkpoint", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare([jsonl_corpus], tmp_path / "b", val_fraction=0.2, shard_tokens=40, **FAST)
    monkeypatch.setattr(prep._Output, "checkpoint", real)
    b = prepare([jsonl_corpus], tmp_path / "b", val_fraction=0.2, shard_tokens=40, **FAST)
    assert b == a and h.shard_files(tmp_path / "b") == h.shard_files(tmp_path / "a")


@pytest.mark.slow  # a whole run or a transformers comparison
def test_prepare_then_train_on_a_short_story_with_default_flags(story, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", str(story), "--out", str(data), "--workers", "1", "--no-progress"]) == 0
    # 128-token windows: the story's ~510 val tokens hold fewer than one batch of them, evaluated as a smaller batch
    rc = main(["train", "--preset", "demo-cpu", "--data", str(data), "--out", str(run), "--max-steps", "2",
               "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "128", "--batch-size", "4",
               "--dtype", "float32", "--samples", "0", "--no-progress", "--no-tensorboard"])
    assert rc == 0
    assert "val loss" in capsys.readouterr().out


def test_the_advice_for_a_missing_val_split_works_when_followed(story, tmp_path):
    from gpt2kit.data.loader import eval_batches
    from gpt2kit.errors import UserError

    out = tmp_path / "mine"
    prepare([story], out, val_fraction=0.0, **FAST)
    with pytest.raises(UserError, match="has no 'val' tokens") as err:
        eval_batches(out, "val", block_size=32, batch_size=2)
    advice = str(err.value).split("re-run `gpt2kit ")[1].split("`")[0].split()
    assert advice[:4] == ["prepare", "SOURCE", "--out", str(out)]
    assert main([advice[0], str(story), *advice[2:], "--workers", "1", "--no-progress"]) == 0
    assert len(list(eval_batches(out, "val", block_size=32, batch_size=2))) >= 1
