"""`gpt2kit serve` and `gpt2kit chat` on a model over a trained 300-token vocabulary: prompts, chat templates
and the end-of-text stop use the checkpoint's own tokenizer (a GPT-2 id >= 300 would crash its embedding)."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from fastapi.testclient import TestClient

from gpt2kit.checkpoint import load_model, model_state_dict, read_checkpoint, save_checkpoint
from gpt2kit.cli import main
from gpt2kit.generation import generate
from gpt2kit.prompts import TEMPLATES, chat_prompt_ids
from gpt2kit.serve import app as app_module
from gpt2kit.serve.app import ServedModel, create_app
from gpt2kit.serve.engine import Engine

SFT = {"version": 1, "task": "sft", "base": "base.pt", "lora": None, "template": TEMPLATES["chat"].to_dict(),
       "max_length": 64}
"""The record `gpt2kit finetune sft` writes, with the chat template."""


def _variant(path, out, *, finetune=None, always_eot=False):
    """The checkpoint at ``path`` (tokenizer record and all) as an instruction-tuned one, or with weights that put
    every next-token probability on the end-of-text id."""
    ckpt = read_checkpoint(path)
    model = load_model(path).model
    if always_eot:  # every position's final hidden state is ln_f's bias: make it point at the eot embedding
        eot = model.config.vocab_size - 1
        with torch.no_grad():
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.copy_(torch.linspace(-1, 1, model.config.n_embd))
            model.lm_head.weight[eot] = 10 * model.transformer.ln_f.bias
    payload = {**ckpt, "model": model_state_dict(model)}
    if finetune is not None:
        payload["finetune"] = finetune
    save_checkpoint(out, payload)
    return out


def _greedy(loaded, ids: list[int], n: int) -> list[int]:
    tok = loaded.tokenizer
    out = generate(loaded.model, torch.tensor([ids]), n, temperature=0, eos_id=tok.eot)[0, len(ids):].tolist()
    return [t for t in out if t != tok.eot]


@pytest.fixture
def client_for(monkeypatch):
    """``client_for(path)``: a TestClient of the app `gpt2kit serve` builds for that checkpoint; ``.ids`` the
    token ids its answers were made of."""
    clients, seen = [], []
    add = app_module.Choice.add
    monkeypatch.setattr(app_module.Choice, "add", lambda self, token: (seen.append(token), add(self, token))[1])

    def make(path) -> TestClient:
        loaded = load_model(path)
        client = TestClient(create_app(ServedModel.of(loaded, Engine(loaded.model, max_batch=2), "tv")))
        client.__enter__()  # the lifespan starts the engine
        client.ids = seen
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_a_completion_is_made_of_the_models_own_tokens(trained_vocab_checkpoint, trained_tokenizer, client_for):
    client, loaded, tok = client_for(trained_vocab_checkpoint), load_model(trained_vocab_checkpoint), trained_tokenizer
    model = client.get("/v1/models").json()["data"][0]
    assert (model["tokenizer"], model["vocab_size"]) == (tok.name, 300)
    r = client.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["text"] == tok.decode(_greedy(loaded, tok.encode("the cat"), 8))
    assert body["usage"]["prompt_tokens"] == len(tok.encode("the cat"))
    assert client.ids and all(0 <= t < 300 for t in client.ids)
    r = client.post("/v1/completions", json={"prompt": "", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text  # "" starts from the model's <|endoftext|> (299), not GPT-2's 50256
    assert r.json()["usage"]["prompt_tokens"] == 1


def test_prompt_ids_are_checked_against_the_models_vocabulary(trained_vocab_checkpoint, client_for):
    client = client_for(trained_vocab_checkpoint)
    r = client.post("/v1/completions", json={"prompt": [5, 300], "max_tokens": 2})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "prompt" and "[0, 300)" in err["message"]
    r = client.post("/v1/completions", json={"prompt": [5, 299], "max_tokens": 2})
    assert r.status_code == 200, r.text
    schema = client.get("/openapi.json").json()["paths"]["/v1/completions"]["post"]["requestBody"]
    ids = schema["content"]["application/json"]["schema"]["properties"]["prompt"]["anyOf"][2]
    assert ids["items"]["maximum"] == 299


def test_a_completion_stops_on_the_models_end_of_text(trained_vocab_checkpoint, tmp_path, client_for):
    client = client_for(_variant(trained_vocab_checkpoint, tmp_path / "eot.pt", always_eot=True))
    r = client.post("/v1/completions", json={"prompt": "the", "max_tokens": 8, "temperature": 0})
    choice = r.json()["choices"][0]
    assert (choice["finish_reason"], choice["text"], r.json()["usage"]["completion_tokens"]) == ("stop", "", 1)
    assert client.ids == [299]


def test_a_chat_template_encodes_with_the_models_tokenizer(trained_vocab_checkpoint, tmp_path, client_for):
    path = _variant(trained_vocab_checkpoint, tmp_path / "sft.pt", finetune=SFT)
    client, loaded = client_for(path), load_model(path)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the dog?"}]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    ids = chat_prompt_ids(messages, TEMPLATES["chat"], loaded.tokenizer)
    assert max(ids) < 300 and r.json()["usage"]["prompt_tokens"] == len(ids)
    assert r.json()["choices"][0]["message"]["content"] == loaded.tokenizer.decode(_greedy(loaded, ids, 6))


def test_chat_talks_in_the_models_vocabulary(trained_vocab_checkpoint, tmp_path, monkeypatch, capsys):
    base = load_model(trained_vocab_checkpoint)
    tok = base.tokenizer
    monkeypatch.setattr(sys, "stdin", io.StringIO("the cat\nsat\n"))
    assert main(["chat", "--checkpoint", str(trained_vocab_checkpoint), "--temperature", "0",
                 "--max-new-tokens", "6"]) == 0
    first = tok.decode(_greedy(base, tok.encode("the cat"), 6))
    second = tok.decode(_greedy(base, tok.encode("the cat" + first + "\nsat"), 6))
    assert capsys.readouterr().out == first + "\n" + second + "\n"

    path = _variant(trained_vocab_checkpoint, tmp_path / "sft.pt", finetune=SFT)
    sft = load_model(path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("the dog?\n"))
    assert main(["chat", "--checkpoint", str(path), "--temperature", "0", "--max-new-tokens", "6"]) == 0
    ids = chat_prompt_ids([{"role": "user", "content": "the dog?"}], TEMPLATES["chat"], tok)
    assert capsys.readouterr().out == tok.decode(_greedy(sft, ids, 6)) + "\n"
