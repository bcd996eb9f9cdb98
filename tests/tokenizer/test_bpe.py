"""Trained byte-level BPE: a tiny vocabulary trained in well under a second, its directory, its errors."""

from __future__ import annotations

import json

import pytest

from gpt2kit.cli import main
from gpt2kit.data.tokenizer_train import train_tokenizer
from gpt2kit.errors import UserError
from gpt2kit.tokenizer import get_tokenizer, load_tokenizer
from gpt2kit.tokenizer.bpe import META_NAME, RANKS_NAME

TEXTS = [
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money in my purse.",
    "def square(x):\n    return x ** 2  # the square of x\n\nprint(square(12))\n",
    "नमस्ते दुनिया, यह एक परीक्षण है। 東京は日本の首都です。",
    "Emoji: 👋🏽 🐋 ✓ and the naïve café's crème brûlée.",
] * 8
ODD = ["", " ", "\n\n\t ", "👋🏽🐋", "नमस्ते", "x" * 300, "a\r\nb\x00c\u200d", "<|endoftext|> inside", "  two  spaces "]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "corpus.txt"
    src.write_text("\n\n".join(TEXTS), encoding="utf-8")
    out = tmp_path_factory.mktemp("tok") / "t300"
    train_tokenizer([str(src)], out, vocab_size=300, progress=False)
    return out


def test_trained_tokenizer_round_trips_and_is_self_describing(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert tok.vocab_size == 300 and tok.eot == 299
    meta = json.loads((tok_dir / META_NAME).read_text())
    assert tok.name == meta["id"] == "bpe-" + meta["ranks_sha256"][:12] and meta["vocab_size"] == 300
    assert meta["sources"][0]["type"] == "files" and meta["training"]["vocab_size_asked"] == 300
    for text in TEXTS + ODD:
        ids = tok.encode(text)
        assert all(0 <= i < 299 for i in ids)
        assert tok.decode(ids) == text
    assert len(tok.encode(TEXTS[0])) < len(TEXTS[0].encode())  # it learned merges
    assert tok.encode_batch(ODD) == [tok.encode(t) for t in ODD]
    assert load_tokenizer("gpt2") is get_tokenizer()


def test_hugging_face_files_encode_to_the_same_ids(tok_dir):
    import tokenizers
    from transformers import AutoTokenizer

    tok = load_tokenizer(tok_dir)
    hf = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    fast = AutoTokenizer.from_pretrained(str(tok_dir))
    for text in TEXTS + ODD[:-2]:
        assert hf.encode(text).ids == tok.encode(text) == fast.encode(text)
    assert fast.eos_token_id == tok.eot and hf.decode(tok.encode(ODD[3])) == ODD[3]


def test_altered_or_missing_directory_is_refused(tok_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tok_dir, bad)
    data = (bad / RANKS_NAME).read_bytes()
    (bad / RANKS_NAME).write_bytes(data.replace(b" 298\n", b" 297\n", 1))
    with pytest.raises(UserError, match="sha256.*altered or is corrupt"):
        load_tokenizer(bad)
    with pytest.raises(UserError, match="no such tokenizer directory"):
        load_tokenizer(tmp_path / "nowhere")
    (bad / META_NAME).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_tokenizer(bad)


def test_bad_input_is_one_line(tmp_path, capsys):
    src = tmp_path / "c.txt"
    src.write_text("some text " * 50)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for argv, needle in (
        (["--vocab-size", "256"], "--vocab-size must be in [257, 65535]"),
        (["--vocab-size", "65536"], "--vocab-size must be in [257, 65535]"),
    ):
        assert main(["tokenizer", "train", str(src), "--out", str(tmp_path / "o"), "--no-progress", *argv]) == 2
        assert needle in capsys.readouterr().err
    assert main(["tokenizer", "train", str(empty), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "the corpus is empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_encode_decode_info_eval(tok_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXTS[0], encoding="utf-8")
    assert main(["tokenizer", "encode", str(tok_dir), "--text", "Hello 👋"]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["tokenizer", "decode", str(tok_dir), *ids]) == 0
    assert capsys.readouterr().out == "Hello 👋\n"
    assert main(["tokenizer", "info", str(tok_dir)]) == 0
    assert "vocab_size  300" in capsys.readouterr().out
    assert main(["tokenizer", "eval", str(text), "--tokenizer", "gpt2", "--tokenizer", str(tok_dir)]) == 0
    out = capsys.readouterr().out
    assert "gpt2" in out and load_tokenizer(tok_dir).name in out and "bytes/token" in out


def test_prepare_with_a_trained_tokenizer_writes_uint16_shards_and_its_record(tok_dir, tmp_path):
    import numpy as np

    from gpt2kit.data.manifest import data_tokenizer, read_manifest, verify_split
    from gpt2kit.data.prepare import prepare
    from gpt2kit.data.shards import open_shard

    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "data"
    man = prepare([str(src)], out, tokenizer=str(tok_dir), workers=1, progress=False, val_fraction=0.0)
    tok = load_tokenizer(tok_dir)
    assert man["tokenizer"] == tok.name and man["vocab_size"] == 300 and man["eot"] == 299
    assert man["tokenizer_sha256"] == tok.sha256 and (out / "tokenizer" / RANKS_NAME).is_file()
    m = read_manifest(out)
    verify_split(out, m, "train")
    assert data_tokenizer(out, m).name == tok.name
    e = m["splits"]["train"]["shards"][0]
    ids = open_shard(out / e["file"], e["tokens"])
    assert ids.dtype == np.dtype("<u2") and ids[0] == 299 and int(ids.max()) == 299
    first = ids[1:1 + len(tok.encode(TEXTS[0]))].tolist()
    assert tok.decode(first) == TEXTS[0]
    # an old manifest without any tokenizer record reads as GPT-2's
    for key in ("tokenizer", "tokenizer_sha256", "vocab_size", "eot"):
        m.pop(key)
    from gpt2kit.data.manifest import validate_manifest

    assert validate_manifest(m, out / "manifest.json")["tokenizer"] == "gpt2"
    with pytest.raises(UserError, match="no such tokenizer directory"):
        prepare([str(src)], tmp_path / "d2", tokenizer=str(tmp_path / "none"), workers=1, progress=False)


def test_train_refuses_data_in_another_vocabulary_in_one_line(tok_dir):
    from gpt2kit.train.pretrain import check_data_matches_model

    tok = load_tokenizer(tok_dir)
    with pytest.raises(UserError, match=f"prepared with tokenizer '{tok.name}' \\(vocab_size 300\\).*--tokenizer gpt2"):
        check_data_matches_model(tok.record(), 50257, "data/x")
