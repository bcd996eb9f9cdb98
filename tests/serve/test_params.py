"""Request bodies checked into parameters, without a server: defaults, the errors that name the field."""

from __future__ import annotations

import pytest

from gpt2kit.serve.params import (
    COMPLETION_FIELDS,
    ApiError,
    CompletionParams,
    check_fits,
    parse_completion_params,
    parse_prompts,
    plain_message,
)
from gpt2kit.tokenizer import get_tokenizer

ALLOWED = COMPLETION_FIELDS | {"prompt"}


def test_a_body_becomes_completion_params_with_openai_defaults():
    params = parse_completion_params({"model": "m", "prompt": "x", "stop": "\n"}, "m", ALLOWED, 16)
    assert params == CompletionParams(max_tokens=16, temperature=1.0, top_p=None, top_k=None, seed=None,
                                      stop=["\n"], stream=False, n=1, include_usage=False)
    params = parse_completion_params({"max_tokens": 3, "temperature": 0, "seed": 7, "stream": True,
                                      "stream_options": {"include_usage": True}}, "m", ALLOWED, 16)
    assert (params.max_tokens, params.temperature, params.seed, params.stream, params.include_usage) == (
        3, 0.0, 7, True, True)


@pytest.mark.parametrize("body, status, param", [
    ({"temperature": 3}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"max_tokens": True}, 400, "max_tokens"),
    ({"stop": ["a", ""]}, 400, "stop"),
    ({"best_of": 2}, 400, "best_of"),
    ({"model": "other"}, 404, "model"),
])
def test_a_bad_field_is_an_api_error_naming_it(body, status, param):
    with pytest.raises(ApiError) as e:
        parse_completion_params(body, "m", ALLOWED, 16)
    assert e.value.status == status and e.value.param == param
    assert e.value.payload()["error"]["param"] == param


def test_prompts_messages_and_the_context_check():
    tok = get_tokenizer()
    assert parse_prompts({"prompt": ["hi", ""]}, tok) == [tok.encode("hi"), [tok.eot]]
    assert parse_prompts({"prompt": [1, 2]}, tok) == [[1, 2]]
    with pytest.raises(ApiError, match="token ids must be in"):
        parse_prompts({"prompt": [[tok.vocab_size]]}, tok)
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert plain_message({"role": "user", "content": parts}) == {"role": "user", "content": "ab"}
    assert plain_message({"role": "developer", "content": "a"}) == {"role": "system", "content": "a"}
    assert plain_message({"role": "developer", "content": parts}) == {"role": "system", "content": "ab"}
    check_fits([[1] * 4], 4, 8, "prompt")
    with pytest.raises(ApiError, match="set max_tokens to at most 4"):
        check_fits([[1] * 4], 5, 8, "prompt")
