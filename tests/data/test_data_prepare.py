"""prepare(): exact token counts, round trips, deterministic doc-aligned splits, safe re-runs and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpt2kit.data import prepare as prep
from gpt2kit.data import tokenize
from gpt2kit.data.prepare import prepare
from gpt2kit.errors import UserError
from gpt2kit.tokenizer import EOT_ID

FAST = dict(workers=1, progress=False)


def test_token_count_is_tiktoken_count_plus_one_per_document(tmp_path, jsonl_corpus, docs, h):
    man = prepare([jsonl_corpus], tmp_path / "out", shard_tokens=97, val_fraction=0.2, **FAST)
    expected = sum(len(h.encode(d)) for d in docs) + len(docs)
    assert man["tokens"] == expected
    assert man["splits"]["train"]["tokens"] + man["splits"]["val"]["tokens"] == expected
    assert man["documents"] == len(docs)
    assert len(man["splits"]["train"]["shards"]) > 3, "small --shard-tokens must give several shards"
    for split in ("train", "val"):
        for e in man["splits"][split]["shards"]:
            assert (tmp_path / "out" / e["file"]).stat().st_size == 1024 + 2 * e["tokens"] == e["bytes"]
            assert 0 < e["tokens"] <= 97


def test_decoding_the_shards_gives_back_the_documents(tmp_path, jsonl_corpus, docs, h):
    out = tmp_path / "out"
    man = prepare([jsonl_corpus], out, shard_tokens=61, val_fraction=0.25, **FAST)
    train = h.documents_of(h.split_stream(out, "train"))
    val = h.documents_of(h.split_stream(out, "val"))
    # documents never straddle the splits: each split decodes into whole documents, in corpus order
    assert len(train) == man["splits"]["train"]["documents"] and len(val) == man["splits"]["val"]["documents"]
    assert sorted(train + val) == sorted(docs)
    assert train == [d for d in docs if d in train] and val == [d for d in docs if d in val]
    assert val and train
    # the literal "<|endoftext|>" inside a document is text, not the separator
    assert any("<|endoftext|>" in d for d in train + val)
    assert int((h.split_stream(out, "train") == EOT_ID).sum()) == len(train)


def test_val_fraction_is_deterministic_spread_and_close_to_target(tmp_path, jsonl_corpus):
    a = prepare([jsonl_corpus], tmp_path / "a", val_fraction=0.3, **FAST)
    b = prepare([jsonl_corpus], tmp_path / "b", val_fraction=0.3, **FAST)
    assert (tmp_path / "a" / "val_000000.bin").read_bytes() == (tmp_path / "b" / "val_000000.bin").read_bytes()
    share = a["splits"]["val"]["tokens"] / a["tokens"]
    assert 0.2 < share < 0.45
    assert b["splits"] == a["splits"]


def test_val_tokens_takes_exactly_the_first_tokens(tmp_path, jsonl_corpus, docs, h):
    out = tmp_path / "out"
    man = prepare([jsonl_corpus], out, val_tokens=40, **FAST)
    # as build-nanogpt's first shard: the first 40 tokens of the corpus, the document crossing 40 cut there
    whole = np.concatenate([[EOT_ID] + h.encode(d) for d in docs]).astype(np.uint16)
    val, train = h.split_stream(out, "val"), h.split_stream(out, "train")
    assert man["splits"]["val"]["tokens"] == 40 and np.array_equal(val, whole[:40])
    assert np.array_equal(train, whole[40:])
    assert man["split"] == {"method": "first_tokens", "asked_tokens": 40, "actual_share": round(40 / len(whole), 6),
                            "val_tokens": 40, "documents_split": 1}


def test_two_workers_write_the_same_bytes_as_one(tmp_path, jsonl_corpus, monkeypatch, h):
    monkeypatch.setattr(tokenize, "_CHUNK_DOCS", 4)  # many chunks, so results really come back from several workers
    a = prepare([jsonl_corpus], tmp_path / "one", shard_tokens=50, workers=1, progress=False)
    b = prepare([jsonl_corpus], tmp_path / "two", shard_tokens=50, workers=2, progress=False)
    assert a == b
    assert h.shard_files(tmp_path / "one") == h.shard_files(tmp_path / "two")


def test_rerun_of_a_finished_output_verifies_and_writes_nothing(tmp_path, jsonl_corpus, monkeypatch):
    out = tmp_path / "out"
    first = prepare([jsonl_corpus], out, shard_tokens=80, **FAST)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    tokenized = []
    monkeypatch.setattr(tokenize, "encode_documents",
                        lambda texts: tokenized.append(texts) or (_ for _ in ()).throw(AssertionError))
    again = prepare([jsonl_corpus], out, shard_tokens=80, **FAST)
    assert again == first and tokenized == []
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def _interrupt_after(monkeypatch, n_shards):
    """Make the n-th finished shard raise KeyboardInterrupt before it is renamed into place."""
    real = prep.ShardWriter.finish
    count = {"n": 0}

    def finish(self):
        count["n"] += 1
        if count["n"] == n_shards:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(prep.ShardWriter, "finish", finish)


def test_interrupted_run_leaves_nothing_that_looks_finished_and_resumes_exactly(tmp_path, jsonl_corpus, monkeypatch, h):
    clean = tmp_path / "clean"
    prepare([jsonl_corpus], clean, shard_tokens=60, val_fraction=0.1, **FAST)

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)
        with pytest.raises(KeyboardInterrupt):
            prepare([jsonl_corpus], out, shard_tokens=60, val_fraction=0.1, **FAST)
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in names and "progress.json" in names
    assert not [n for n in names if ".tmp." in n], "no temporary file may survive"
    from gpt2kit.data.loader import read_manifest

    with pytest.raises(UserError, match="unfinished"):
        read_manifest(out)
    progress = json.loads((out / "progress.json").read_text())
    done = [e["file"] for s in ("train", "val") for e in progress["splits"][s]["shards"]]
    assert len(done) == 3 and set(done) <= set(names)

    seen = []
    real_encode = tokenize.encode_documents
    monkeypatch.setattr(tokenize, "encode_documents", lambda texts: seen.extend(texts) or real_encode(texts))
    prepare([jsonl_corpus], out, shard_tokens=60, val_fraction=0.1, **FAST)
    assert 0 < len(seen) < len(h.documents_of(h.split_stream(clean, "train"))), "the resumed run skips done documents"
    assert h.shard_files(out) == h.shard_files(clean)


def test_corrupt_shard_in_finished_output_is_rebuilt_from_its_checkpoint(tmp_path, jsonl_corpus, h):
    out = tmp_path / "out"
    prepare([jsonl_corpus], out, shard_tokens=60, **FAST)
    expected = h.shard_files(out)
    first = (out / "train_000000.bin").stat().st_mtime_ns
    victim = out / "train_000003.bin"
    raw = bytearray(victim.read_bytes())
    raw[1024 + 7] ^= 0x10
    victim.write_bytes(bytes(raw))
    prepare([jsonl_corpus], out, shard_tokens=60, **FAST)
    assert h.shard_files(out) == expected
    assert (out / "train_000000.bin").stat().st_mtime_ns == first, "shards before the bad one are kept"


def test_output_from_a_different_source_or_settings_is_refused_unless_overwrite(tmp_path, jsonl_corpus, docs, h):
    out = tmp_path / "out"
    prepare([jsonl_corpus], out, shard_tokens=40, **FAST)
    other = h.write_jsonl(tmp_path / "other.jsonl", docs[:5])
    with pytest.raises(UserError, match=r"different source.*--overwrite"):
        prepare([other], out, **FAST)
    with pytest.raises(UserError, match=r"different --shard-tokens"):
        prepare([jsonl_corpus], out, shard_tokens=41, **FAST)
    tampered = json.loads((out / "manifest.json").read_text())
    tampered["tokenizer_sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(tampered))
    with pytest.raises(UserError, match="tokenizer_sha256"):
        prepare([jsonl_corpus], out, shard_tokens=40, **FAST)
    man = prepare([other], out, overwrite=True, **FAST)
    assert man["documents"] == 5
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train_000000.bin", "val_000000.bin"]


def test_empty_corpus_is_a_clear_error_with_no_output(tmp_path, h):
    src = h.write_jsonl(tmp_path / "empty.jsonl", ["", "", ""])
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no documents"):
        prepare([src], out, **FAST)
    assert not out.exists()


@pytest.mark.parametrize("bad_line, pattern", [
    ('{"text": "fine"', r"bad\.jsonl:3: not valid JSON"),
    ('{"body": "no text field"}', r"bad\.jsonl:3: no 'text' field \(fields: 'body'\); .*--text-field"),
    ('["a list"]', r"bad\.jsonl:3: expected a JSON object"),
    ('{"text": 5}', r"bad\.jsonl:3: field 'text' is int"),
])
def test_bad_jsonl_line_names_the_line_and_leaves_no_finished_output(tmp_path, bad_line, pattern):
    src = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": f"document {i} " * 30}) for i in range(6)]
    lines[2] = bad_line
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=pattern):
        prepare([src], out, shard_tokens=30, **FAST)
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert "manifest.json" not in left and not [n for n in left if ".tmp." in n]


def test_val_tokens_above_the_corpus_is_refused_with_advice_that_works(tmp_path, jsonl_corpus):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="--val-tokens 1000000000: the corpus has only") as err:
        prepare([jsonl_corpus], out, val_tokens=10**9, **FAST)
    assert not out.exists(), "nothing was written, so the advice needs no --overwrite"
    advised = int(str(err.value).split("e.g. --val-tokens ")[1].split(",")[0])
    man = prepare([jsonl_corpus], out, val_tokens=advised, **FAST)  # following the advice works
    assert man["splits"]["val"]["tokens"] == advised and man["splits"]["train"]["tokens"] > 0


def test_val_tokens_above_a_streamed_corpus_advises_overwrite_and_that_works(tmp_path, jsonl_corpus, monkeypatch):
    monkeypatch.setattr(prep, "HEAD_TOKENS", 50)  # the corpus outgrows the held-back head: known only at the end
    out = tmp_path / "out"
    with pytest.raises(UserError, match="none are left to train on") as err:
        prepare([jsonl_corpus], out, val_tokens=10**9, **FAST)
    advice = str(err.value).split("; pass ")[1].split()
    assert advice[0] == "--val-tokens" and advice[2] == "--overwrite"
    man = prepare([jsonl_corpus], out, val_tokens=int(advice[1]), overwrite=True, **FAST)
    assert man["splits"]["val"]["tokens"] == int(advice[1]) and man["splits"]["train"]["tokens"] > 0


def test_invalid_settings_name_the_flag(tmp_path, jsonl_corpus):
    with pytest.raises(UserError, match="--val-fraction"):
        prepare([jsonl_corpus], tmp_path / "o", val_fraction=1.0, **FAST)
    with pytest.raises(UserError, match="one or the other"):
        prepare([jsonl_corpus], tmp_path / "o", val_fraction=0.1, val_tokens=5, **FAST)
    with pytest.raises(UserError, match="--shard-tokens"):
        prepare([jsonl_corpus], tmp_path / "o", shard_tokens=0, **FAST)


def test_builtin_corpus_prepares_offline_and_second_call_is_a_no_op(tmp_path, h):
    from gpt2kit.data.builtin import builtin_documents

    out = tmp_path / "moby"
    man = prepare(["builtin:moby-dick"], out, workers=2, progress=False)
    chapters = list(builtin_documents("moby-dick"))
    assert man["documents"] == len(chapters) == 135
    assert man["tokens"] == sum(len(h.encode(c)) for c in chapters) + 135
    assert man["source"][0]["type"] == "builtin" and man["splits"]["val"]["tokens"] > 0
    assert prepare(["builtin:moby-dick"], out, workers=2, progress=False) == man


_real_encode = tokenize.encode_documents


def _die_on_marker(texts):
    """A worker task that kills its process when it meets the marker document (like the OOM killer would)."""
    import os

    if any("KILL-THIS-WORKER" in t for t in texts):
        os._exit(3)
    return _real_encode(texts)


def test_a_dying_worker_is_a_clear_error_not_a_hang(tmp_path, docs, monkeypatch, h):
    monkeypatch.setattr(tokenize, "_CHUNK_DOCS", 2)
    monkeypatch.setattr(tokenize, "encode_documents", _die_on_marker)
    src = h.write_jsonl(tmp_path / "c.jsonl", docs[:10] + ["KILL-THIS-WORKER"] + docs[10:])
    with pytest.raises(UserError, match="worker process died"):
        prepare([src], tmp_path / "out", workers=2, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_lone_surrogate_in_json_is_tokenized_like_encode_ordinary(tmp_path, h):
    src = tmp_path / "s.jsonl"
    src.write_text('{"text": "before \\ud800 after"}\n{"text": "fine"}\n')
    texts = [json.loads(line)["text"] for line in src.read_text().splitlines()]
    man = prepare([src], tmp_path / "out", val_fraction=0.0, **FAST)
    assert man["tokens"] == sum(len(h.encode(t)) + 1 for t in texts)
    expected = [EOT_ID, *h.encode(texts[0]), EOT_ID, *h.encode(texts[1])]
    assert h.split_stream(tmp_path / "out", "train").tolist() == expected


def test_missing_field_error_stays_one_short_line_for_huge_keys(tmp_path):
    src = tmp_path / "k.jsonl"
    src.write_text(json.dumps({"x" * 100_000: 1}) + "\n")
    with pytest.raises(UserError, match=r"k\.jsonl:1: no 'text' field") as e:
        prepare([src], tmp_path / "out", **FAST)
    assert len(str(e.value)) < 500
