"""Classification data: file formats, label vocabulary, truncation and the documented errors."""

from __future__ import annotations

import json

import pytest

from gpt2kit.errors import UserError
from gpt2kit.finetune.classify_data import label_vocabulary, load_classification
from gpt2kit.tokenizer import get_tokenizer

from .conftest import write_csv, write_jsonl


def test_csv_jsonl_json_and_configurable_columns(tmp_path):
    write_csv(tmp_path / "a.csv", [("hello there", "b"), ("bye", "a")], header=("sentence", "y"))
    write_jsonl(tmp_path / "a.jsonl", [{"sentence": "hello there", "y": "b"}, {"sentence": "bye", "y": "a"}])
    (tmp_path / "a.json").write_text(json.dumps([{"sentence": "hello there", "y": "b"}, {"sentence": "bye", "y": "a"}]))
    tok = get_tokenizer()
    for name in ("a.csv", "a.jsonl", "a.json"):
        vocab = label_vocabulary(tmp_path / name, "y")
        assert vocab == ["a", "b"]
        d = load_classification(tmp_path / name, vocab, max_length=16, text_column="sentence", label_column="y")
        assert d.ids == [tok.encode("hello there"), tok.encode("bye")]
        assert d.labels == [1, 0]
    with pytest.raises(UserError, match=r"a\.csv:2: no 'text' column.*--text-column"):
        load_classification(tmp_path / "a.csv", ["a", "b"], max_length=16, label_column="y")


def test_integer_labels_sort_numerically_and_match_across_types(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"text": f"x{i}", "label": lab} for i, lab in enumerate([10, 2, 1, 2])])
    assert label_vocabulary(tmp_path / "t.jsonl") == ["1", "2", "10"]
    write_csv(tmp_path / "v.csv", [("y", "10"), ("z", "1")])
    d = load_classification(tmp_path / "v.csv", ["1", "2", "10"], max_length=8)
    assert d.labels == [2, 0]


def test_unseen_label_is_an_error_naming_file_line_and_label(tmp_path):
    write_csv(tmp_path / "val.csv", [("fine text", "pos"), ("another", "maybe")])
    with pytest.raises(UserError, match=r"val\.csv:3: label 'maybe' does not occur in the training data"):
        load_classification(tmp_path / "val.csv", ["neg", "pos"], max_length=8)


def test_empty_text_is_an_error(tmp_path):
    write_csv(tmp_path / "t.csv", [("fine text", "pos"), ("   ", "neg")])
    with pytest.raises(UserError, match=r"t\.csv:3: empty text in column 'text'"):
        load_classification(tmp_path / "t.csv", ["neg", "pos"], max_length=8)
    write_jsonl(tmp_path / "t.jsonl", [{"text": "", "label": "neg"}])
    with pytest.raises(UserError, match=r"t\.jsonl:1: empty text"):
        load_classification(tmp_path / "t.jsonl", ["neg", "pos"], max_length=8)


def test_overlong_text_truncate_drop_error(tmp_path):
    long_text = " ".join(["word"] * 40)
    write_csv(tmp_path / "t.csv", [(long_text, "a"), ("short", "b")])
    tok = get_tokenizer()
    d = load_classification(tmp_path / "t.csv", ["a", "b"], max_length=10)
    assert d.truncated == 1 and d.ids[0] == tok.encode(long_text)[:10]  # the text's beginning is kept
    d = load_classification(tmp_path / "t.csv", ["a", "b"], max_length=10, overlong="drop")
    assert d.dropped == 1 and d.labels == [1]
    with pytest.raises(UserError, match=r"t\.csv:2: text has 40 tokens, more than --max-length 10"):
        load_classification(tmp_path / "t.csv", ["a", "b"], max_length=10, overlong="error")
