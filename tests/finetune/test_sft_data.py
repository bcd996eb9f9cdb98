"""Instruction data: response-only masks, chat records, truncation and the documented errors."""

from __future__ import annotations

import pytest

from gpt2kit.errors import UserError
from gpt2kit.finetune.sft_data import IGNORE_INDEX, load_sft
from gpt2kit.prompts import TEMPLATES
from gpt2kit.tokenizer import EOT_ID, get_tokenizer

from .conftest import write_jsonl

ALPACA = TEMPLATES["alpaca"]


def _decode_trained(ex) -> str:
    tok = get_tokenizer()
    return tok.decode([t for t in ex.targets() if t != IGNORE_INDEX])


def test_alpaca_masks_only_the_response(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Name a color.", "input": "", "output": "Blue"},
                                       {"instruction": "Add.", "input": "2 + 3", "output": "5"}])
    tok = get_tokenizer()
    data = load_sft(tmp_path / "a.jsonl", ALPACA, max_length=256)
    ex0, ex1 = data.examples
    prompt0 = ALPACA.format_prompt("Name a color.")
    assert prompt0.endswith("### Response:\n") and "### Input" not in prompt0
    assert ex0.ids == tok.encode(prompt0) + tok.encode("Blue") + [EOT_ID]
    assert ex0.targets()[:len(tok.encode(prompt0)) - 1] == [IGNORE_INDEX] * (len(tok.encode(prompt0)) - 1)
    assert _decode_trained(ex0) == "Blue<|endoftext|>"
    assert ex0.num_trained() == len(tok.encode("Blue")) + 1
    assert "### Input:\n2 + 3" in tok.decode(ex1.ids) and _decode_trained(ex1) == "5<|endoftext|>"


def test_chat_records_train_every_assistant_turn_and_match_alpaca(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                      {"role": "assistant", "content": "Later"}]},
    ])
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Name a color.", "output": "Blue"}])
    chat = load_sft(tmp_path / "c.jsonl", ALPACA, max_length=256).examples
    alpaca = load_sft(tmp_path / "a.jsonl", ALPACA, max_length=256).examples
    assert chat[0].ids == alpaca[0].ids and chat[0].trainable == alpaca[0].trainable  # one turn == Alpaca
    text = get_tokenizer().decode(chat[1].ids)
    assert text.startswith("Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello<|endoftext|>")
    assert _decode_trained(chat[1]) == "Hello<|endoftext|>Later<|endoftext|>"


def test_record_missing_output_and_other_bad_records(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [{"instruction": "Do it.", "output": "ok"}, {"instruction": "No output here."}])
    with pytest.raises(UserError, match=r"m\.jsonl:2: record has no 'output'"):
        load_sft(tmp_path / "m.jsonl", ALPACA, max_length=128)
    cases = [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role 'robot'"),
        ({"prompt": "x", "completion": "y"}, "neither an Alpaca record"),
        ({"instruction": "x", "output": 3}, "'output' must be a string"),
    ]
    for rec, needle in cases:
        write_jsonl(tmp_path / "b.jsonl", [rec])
        with pytest.raises(UserError, match=needle):
            load_sft(tmp_path / "b.jsonl", ALPACA, max_length=128)


def test_empty_output_is_kept_and_teaches_the_end(tmp_path):
    write_jsonl(tmp_path / "e.jsonl", [{"instruction": "Say nothing.", "output": ""}])
    (ex,) = load_sft(tmp_path / "e.jsonl", ALPACA, max_length=128).examples
    assert ex.num_trained() == 1 and ex.ids[-1] == EOT_ID and ex.targets()[-2] == EOT_ID


def test_overlong_sft_truncates_response_drops_when_prompt_fills_or_errors(tmp_path):
    tok = get_tokenizer()
    long_out = " ".join(["more"] * 50)
    write_jsonl(tmp_path / "o.jsonl", [{"instruction": "Talk.", "output": long_out},
                                       {"instruction": "Talk " * 80, "output": "x"},
                                       {"instruction": "Hi.", "output": "ok"}])
    prompt_len = len(tok.encode(ALPACA.format_prompt("Talk.")))
    limit = prompt_len + 5
    data = load_sft(tmp_path / "o.jsonl", ALPACA, max_length=limit)
    assert data.truncated == 1 and data.dropped == 1 and len(data.examples) == 2
    cut = data.examples[0]
    assert len(cut.ids) == limit and cut.num_trained() == 5  # prompt kept whole, 5 response tokens trained
    assert EOT_ID not in cut.ids
    data = load_sft(tmp_path / "o.jsonl", ALPACA, max_length=limit, overlong="drop")
    assert data.dropped == 2 and data.truncated == 0
    with pytest.raises(UserError, match=r"o\.jsonl:1: example has \d+ tokens .* more than --max-length"):
        load_sft(tmp_path / "o.jsonl", ALPACA, max_length=limit, overlong="error")
