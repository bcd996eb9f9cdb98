"""Fine-tuning data files: the formats read and the errors that name the file and line."""

from __future__ import annotations

import pytest

from gpt2kit.errors import UserError
from gpt2kit.finetune.files import read_records


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(UserError, match="unknown file type"):
        read_records(tmp_path / "x.parquet")
    with pytest.raises(UserError, match="file not found"):
        read_records(tmp_path / "missing.csv")
    (tmp_path / "obj.json").write_text('{"instruction": "x"}')
    with pytest.raises(UserError, match="must hold a list"):
        read_records(tmp_path / "obj.json")
