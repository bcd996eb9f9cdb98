"""A real `gpt2kit serve` process on a model over a trained 300-token vocabulary, through the OpenAI client."""

from __future__ import annotations

import pytest

from gpt2kit.checkpoint import load_model
from gpt2kit.generation import generate

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def test_serve_answers_in_the_models_vocabulary(trained_vocab_checkpoint, trained_tokenizer, make_server):
    import openai
    import torch

    server = make_server(trained_vocab_checkpoint)
    assert f"tokenizer {trained_tokenizer.name}, 300 tokens" in server.log.read_text()
    client = server.client()
    got = client.completions.create(model="trained_vocab", prompt="the cat", max_tokens=8, temperature=0)
    tok = trained_tokenizer
    ids = tok.encode("the cat")
    out = generate(load_model(trained_vocab_checkpoint).model, torch.tensor([ids]), 8, temperature=0,
                   eos_id=tok.eot)[0, len(ids):].tolist()
    assert got.choices[0].text == tok.decode([t for t in out if t != tok.eot])
    assert got.usage.prompt_tokens == len(ids)
    with pytest.raises(openai.BadRequestError, match=r"'prompt' token ids must be in \[0, 300\)"):
        client.completions.create(model="trained_vocab", prompt=[1, 300], max_tokens=2)
    assert server.stop() == 0
