"""Prompts: templates, record rendering, conversation prompts and the streaming decoder."""

from __future__ import annotations

import json

import pytest

from gpt2kit.errors import UserError
from gpt2kit.prompts import (
    TEMPLATES,
    PromptTemplate,
    StreamDecoder,
    chat_prompt_ids,
    get_template,
    record_pieces,
    template_from_checkpoint,
    tokenize_pieces,
    trim_conversation,
)
from gpt2kit.tokenizer import EOT_ID, get_tokenizer

ALPACA = TEMPLATES["alpaca"]
TOK = get_tokenizer()


def test_templates_builtin_and_from_file(tmp_path):
    assert get_template("alpaca") is ALPACA
    assert TEMPLATES["chat"].format_prompt("Hi", "ctx") == "<|user|>\nHi\n\nctx\n<|assistant|>\n"
    custom = {"prompt": "Q: {instruction}\nA:", "prompt_input": "Q: {instruction} ({input})\nA:",
              "user": "Q: {content}\n", "assistant": "A:"}
    (tmp_path / "t.json").write_text(json.dumps(custom))
    t = get_template(str(tmp_path / "t.json"))
    assert t.format_prompt("x {y}") == "Q: x {y}\nA:"  # braces in the instruction are left alone
    assert PromptTemplate.from_dict(t.to_dict(), "x") == t
    (tmp_path / "bad.json").write_text(json.dumps({**custom, "prompt": "no placeholder"}))
    with pytest.raises(UserError, match=r"must contain \{instruction\}"):
        get_template(str(tmp_path / "bad.json"))
    with pytest.raises(UserError, match="not a built-in template"):
        get_template("vicuna")

def test_a_template_round_trips_through_a_checkpoint_record():
    assert template_from_checkpoint({"finetune": {"template": TEMPLATES["chat"].to_dict()}}) == TEMPLATES["chat"]
    assert template_from_checkpoint({}) is None and template_from_checkpoint({"finetune": {"kind": "x"}}) is None


def test_pieces_mark_responses_and_each_response_ends_with_eot():
    rec = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Later"}]}
    pieces = record_pieces(rec, "rec", TEMPLATES["chat"])
    assert pieces == [("<|user|>\nHi\n<|assistant|>\n", False), ("Hello", True),
                      ("<|user|>\nBye\n<|assistant|>\n", False), ("Later", True)]
    ids, is_response = tokenize_pieces(pieces, TOK)
    assert ids == (TOK.encode(pieces[0][0]) + TOK.encode("Hello") + [EOT_ID]
                   + TOK.encode(pieces[2][0]) + TOK.encode("Later") + [EOT_ID])
    assert TOK.decode([t for t, r in zip(ids, is_response) if r]) == "Hello<|endoftext|>Later<|endoftext|>"
    with pytest.raises(UserError, match=r"rec: message 2: a system message may only come first"):
        record_pieces({"messages": [rec["messages"][0], {"role": "system", "content": "x"}]}, "rec", ALPACA)


def test_a_chat_prompt_is_the_training_encoding_up_to_the_reply():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say red."}]
    ids = chat_prompt_ids(messages, TEMPLATES["chat"], TOK)
    trained, _ = tokenize_pieces(record_pieces({"messages": [*messages, {"role": "assistant", "content": "red"}]},
                                               "x", TEMPLATES["chat"]), TOK)
    assert trained == ids + TOK.encode("red") + [EOT_ID]
    with pytest.raises(UserError, match="the last message must have role 'user'"):
        chat_prompt_ids([*messages, {"role": "assistant", "content": "red"}], TEMPLATES["chat"], TOK)


def test_trimming_drops_the_oldest_turns_and_keeps_the_system_message():
    system = {"role": "system", "content": "Be brief."}
    turns = [{"role": "user", "content": "one " * 20}, {"role": "assistant", "content": "two " * 20},
             {"role": "user", "content": "three"}]
    whole = chat_prompt_ids([system, *turns], TEMPLATES["chat"], TOK)
    kept, ids = trim_conversation([system, *turns], TEMPLATES["chat"], TOK, budget=len(whole) - 1)
    assert kept == [system, turns[2]] and ids == chat_prompt_ids(kept, TEMPLATES["chat"], TOK)
    kept, ids = trim_conversation([system, *turns], TEMPLATES["chat"], TOK, budget=3)
    assert kept == [system, turns[2]] and ids == chat_prompt_ids(kept, TEMPLATES["chat"], TOK)[-3:]


def test_a_character_split_over_two_tokens_waits_for_its_second_half():
    ids = TOK.encode("a🙂b")
    assert len(ids) == 4  # the emoji's four bytes are two tokens of two bytes each
    decoder = StreamDecoder(TOK)
    assert [decoder.decode(t) for t in ids] == ["a", "", "🙂", "b"]
    assert decoder.flush() == ""


def test_flush_ends_an_incomplete_character_and_the_decoder_starts_afresh():
    first_half = TOK.encode("🙂")[0]
    decoder = StreamDecoder(TOK)
    assert decoder.decode(first_half) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.decode(TOK.encode("x")[0]) == "x" and decoder.flush() == ""


def test_end_of_text_is_skipped_unless_asked_for():
    assert StreamDecoder(TOK).decode(EOT_ID) == ""
    assert StreamDecoder(TOK, skip_eot=False).decode(EOT_ID) == "<|endoftext|>"
