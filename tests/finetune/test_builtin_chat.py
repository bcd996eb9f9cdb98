"""The instruction set shipped as builtin:chat: found in the package, loads with the chat template, answers true."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2kit.errors import UserError
from gpt2kit.finetune.files import data_file, read_records
from gpt2kit.finetune.sft_data import load_sft
from gpt2kit.prompts import get_template

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_chat_loads_and_every_record_is_a_chat():
    records = read_records("builtin:chat")
    assert len(records) == 749
    prompts = set()
    for where, rec in records:
        msgs = rec["messages"]
        assert [m["role"] for m in msgs][-1] == "assistant" and all(m["content"].strip() for m in msgs), where
        prompts.add(json.dumps(msgs[:-1]))
    assert len(prompts) == len(records)  # no question twice
    data = load_sft("builtin:chat", get_template("chat"), max_length=128)
    assert len(data) == 749 and data.truncated == 0  # every record fits the demo model's 128-token context


def test_arithmetic_answers_are_correct():
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}
    checked = 0
    for _, rec in read_records("builtin:chat"):
        for m in rec["messages"]:
            found = re.fullmatch(r"(\d+) ([+\-x]) (\d+) = (\d+)\.", m["content"])
            if m["role"] == "assistant" and found:
                a, op, b, c = found.groups()
                assert ops[op](int(a), int(b)) == int(c), m["content"]
                checked += 1
    assert checked > 300


def test_the_file_is_what_its_generator_writes_and_notice_names_it(tmp_path):
    path = data_file("builtin:chat")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest in (ROOT / "NOTICE").read_text()
    script = (ROOT / "tools" / "make_chat_instructions.py").read_text()
    out = tmp_path / "gpt2kit" / "assets" / "instructions" / "chat.jsonl"
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "make.py").write_text(script)
    subprocess.run([sys.executable, str(tmp_path / "tools" / "make.py")], check=True, capture_output=True)
    assert out.read_bytes() == path.read_bytes()


def test_unknown_builtin_names_the_ones_there_are():
    with pytest.raises(UserError, match="builtin:chats: no such built-in data; use one of builtin:chat"):
        read_records("builtin:chats")
