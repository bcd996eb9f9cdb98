"""`gpt2kit serve` as a real process on 127.0.0.1, spoken to with the official `openai` client and httpx."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import torch

from gpt2kit.checkpoint import load_model
from gpt2kit.cli import main
from gpt2kit.generation import generate
from gpt2kit.prompts import TEMPLATES, chat_prompt_ids
from gpt2kit.tokenizer import get_tokenizer

from .conftest import BLOCK_SIZE

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

TOK = get_tokenizer()


def _greedy(checkpoint, ids: list[int], n: int) -> str:
    model = load_model(checkpoint).model
    out = generate(model, torch.tensor([ids]), n, temperature=0, eos_id=TOK.eot)[0, len(ids):].tolist()
    return TOK.decode([t for t in out if t != TOK.eot])


def _error(resp: httpx.Response) -> dict:
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_completions_equal_sample_and_generate(sft_server, checkpoints, capsys):
    client = sft_server.client()
    assert [m.id for m in client.models.list().data] == ["sft"]
    r = client.completions.create(model="sft", prompt="The sea was", max_tokens=12, temperature=0)
    assert r.choices[0].text == _greedy(checkpoints["sft"], TOK.encode("The sea was"), 12)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(TOK.encode("The sea was")), 12)

    # a seeded sample is what `gpt2kit sample` prints for that seed
    r = client.completions.create(model="sft", prompt="Hello", max_tokens=10, temperature=0.9, top_p=0.95, seed=7,
                                  extra_body={"top_k": 40})
    assert main(["sample", "--checkpoint", str(checkpoints["sft"]), "--prompt", "Hello", "--max-new-tokens", "10",
                 "--temperature", "0.9", "--top-p", "0.95", "--top-k", "40", "--seed", "7"]) == 0
    assert "Hello" + r.choices[0].text + "\n" == capsys.readouterr().out

    # a list of prompts: one choice each, each as if alone; a stop string cuts the text before it
    texts = [client.completions.create(model="sft", prompt=p, max_tokens=8, temperature=0).choices[0].text
             for p in ("One", "Two words")]
    both = client.completions.create(model="sft", prompt=["One", "Two words"], max_tokens=8, temperature=0)
    assert [c.text for c in sorted(both.choices, key=lambda c: c.index)] == texts
    stop = texts[0][len(texts[0]) // 2:][:3]
    cut = client.completions.create(model="sft", prompt="One", max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == texts[0][:texts[0].find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_chat_uses_the_checkpoint_template(sft_server, checkpoints):
    client = sft_server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say red."},
                {"role": "assistant", "content": "red"}, {"role": "user", "content": "And blue?"}]
    r = client.chat.completions.create(model="sft", messages=messages, max_tokens=10, temperature=0)
    ids = chat_prompt_ids(messages, TEMPLATES["chat"], TOK)
    assert r.choices[0].message.content == _greedy(checkpoints["sft"], ids, 10)
    assert r.usage.prompt_tokens == len(ids) and r.choices[0].finish_reason == "length"

    # the prompt is exactly the training encoding of the same record up to the reply (gpt2kit finetune sft)
    from gpt2kit.finetune.sft_data import encode_pieces
    from gpt2kit.prompts import record_pieces

    trained = encode_pieces(record_pieces({"messages": messages + [{"role": "assistant", "content": "blue"}]},
                                          "x", TEMPLATES["chat"]), TOK).ids
    assert trained[:len(ids)] == ids and trained[len(ids):] == TOK.encode("blue") + [TOK.eot]

    chunks = list(client.chat.completions.create(model="sft", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10


def test_streaming_is_openai_sse(sft_server):
    client = sft_server.client()
    whole = client.completions.create(model="sft", prompt="Once", max_tokens=9, temperature=0).choices[0].text
    chunks = list(client.completions.create(model="sft", prompt="Once", max_tokens=9, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-2].usage is None
    with httpx.stream("POST", sft_server.url + "/completions", timeout=60,
                      json={"prompt": "Once", "max_tokens": 3, "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])  # without include_usage, usage rides on the chunk that ends the choice
    assert last["usage"]["completion_tokens"] == 3 and last["choices"][0]["finish_reason"] == "length"
    # so the usual client loop, which reads chunk.choices[0] of every chunk, works as against OpenAI
    chunks = list(client.completions.create(model="sft", prompt="Once", max_tokens=9, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole and chunks[-1].usage.completion_tokens == 9


def test_16_concurrent_clients_equal_their_single_requests(sft_server):
    specs = []
    for i in range(16):
        prompt = " ".join(["word"] * (1 + 3 * i)) + f" {i}"
        kw = {"temperature": 0} if i % 2 else {"temperature": 0.8, "seed": 1000 + i, "top_p": 0.9}
        specs.append({"prompt": prompt, "max_tokens": 8 + 4 * (i % 5), "stream": i % 4 < 2, **kw})

    def ask(spec: dict) -> tuple[str, str]:
        client = sft_server.client()
        if spec["stream"]:
            text, reason = "", None
            for c in client.completions.create(model="sft", **spec):
                if c.choices:
                    text += c.choices[0].text
                    reason = c.choices[0].finish_reason or reason
            return text, reason
        r = client.completions.create(model="sft", **spec)
        return r.choices[0].text, r.choices[0].finish_reason

    alone = [ask(s) for s in specs]  # one at a time: each request has the engine to itself
    together: list = [None] * len(specs)
    start = threading.Barrier(len(specs))

    def client_thread(i: int) -> None:
        start.wait(30)
        together[i] = ask(specs[i])

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    assert sft_server.health()["peak_active"] > 1  # the requests really shared decode steps


@pytest.mark.parametrize("body, status, param, needle", [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    ({"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens", "integer"),
    ({"prompt": "x", "temperature": 3}, 400, "temperature", "[0.0, 2.0]"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p", "(0.0, 1.0]"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "up to 4"),
    ({"prompt": "x", "bogus": 1}, 400, "bogus", "unrecognized"),
    ({"prompt": 12}, 400, "prompt", "must be a string"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model", "serves 'sft'"),
    ({"prompt": [1] * (BLOCK_SIZE + 6)}, 400, "prompt", f"{BLOCK_SIZE + 6} tokens; the model's context holds "
                                                       f"{BLOCK_SIZE}"),
    ({"prompt": [1] * 24, "max_tokens": BLOCK_SIZE}, 400, "max_tokens",
     f"(24 tokens) + max_tokens ({BLOCK_SIZE}) = {BLOCK_SIZE + 24} tokens, more than the model's context of "
     f"{BLOCK_SIZE}: set max_tokens to at most {BLOCK_SIZE - 24}"),
])
def test_bad_requests_get_openai_errors(sft_server, body, status, param, needle):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    resp = httpx.post(sft_server.url + "/completions", timeout=30, **kw)
    assert resp.status_code == status
    err = _error(resp)
    assert err["param"] == param and needle in err["message"]


def test_bad_chat_and_client_errors(sft_server):
    resp = httpx.post(sft_server.url + "/chat/completions", timeout=30,
                      json={"messages": [{"role": "assistant", "content": "hi"}]})
    assert resp.status_code == 400 and "role 'user'" in _error(resp)["message"]
    with pytest.raises(openai.BadRequestError) as e:
        sft_server.client().chat.completions.create(model="sft", messages=[{"role": "wizard", "content": "x"},
                                                                           {"role": "user", "content": "y"}])
    assert e.value.body["param"] == "messages" and "wizard" in e.value.body["message"]
    assert httpx.get(sft_server.base + "/nowhere", timeout=10).status_code == 404
    assert sft_server.health()["status"] == "ok"  # and the server is still there


def test_client_disconnect_stops_generation(sft_server, wait_until):
    before = sft_server.health()
    with httpx.stream("POST", sft_server.url + "/completions", timeout=60,
                      json={"prompt": "Go", "max_tokens": BLOCK_SIZE - 8, "stream": True}) as resp:
        next(ln for ln in resp.iter_lines() if ln.startswith("data: "))  # generation is under way
    # leaving the block closed the connection mid-stream
    after = wait_until(lambda: (h := sft_server.health())["active"] == 0 and h.get("cancelled", 0) > before.get(
        "cancelled", 0) and h, what="the cancelled request's rows to be freed")
    assert after.get("length", 0) == before.get("length", 0)  # it never ran to its max_tokens


def test_api_key_base_model_chat_and_overload(make_server, checkpoints):
    server = make_server(checkpoints["base"], "--api-key", "sekret", "--max-batch", "1", "--max-queue", "1")
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    resp = httpx.post(server.url + "/completions", json={"prompt": "x"}, timeout=30)
    assert resp.status_code == 401 and _error(resp)["code"] == "invalid_api_key"
    assert server.health()["status"] == "ok"  # health checks need no key

    client = server.client(api_key="sekret")
    assert client.completions.create(model="base", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "no_chat_template" and "base model" in e.value.body["message"]

    # one decoding slot and one waiting place: of 8 requests arriving together, the ones beyond those two get 503
    auth = {"Authorization": "Bearer sekret"}
    statuses: list = [None] * 8
    start = threading.Barrier(8)

    def post(i: int) -> None:
        start.wait(30)
        statuses[i] = httpx.post(server.url + "/completions", json={"prompt": "x", "max_tokens": 200},
                                 headers=auth, timeout=120)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    codes = sorted(r.status_code for r in statuses)
    assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) == {200, 503}
    for r in statuses:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1 and _error(r)["code"] == "queue_full"
        else:
            assert r.json()["usage"]["completion_tokens"] == 200


def test_sigterm_finishes_requests_in_flight_and_exits_0(make_server, checkpoints):
    server = make_server(checkpoints["sft"])
    n_tokens = 500
    results: dict[int, tuple] = {}
    started = [threading.Event() for _ in range(3)]
    signalled_at = []

    def stream(i: int) -> None:
        chunks, last_at = [], 0.0
        for c in server.client().completions.create(model="sft", prompt=f"Request {i}", max_tokens=n_tokens,
                                                    temperature=0, stream=True):
            chunks.append(c)
            last_at = time.monotonic()
            started[i].set()
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        results[i] = (reasons, chunks[-1].usage.completion_tokens, last_at)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for e in started:
        assert e.wait(60)
    server.proc.send_signal(15)  # SIGTERM
    signalled_at.append(time.monotonic())
    time.sleep(0.3)
    try:  # a new request is refused: the listening socket is closed (or, on a kept-alive connection, 503)
        refused = httpx.post(server.url + "/completions", json={"prompt": "x"}, timeout=10).status_code == 503
    except httpx.TransportError:
        refused = True
    assert refused
    for t in threads:
        t.join(120)
    assert server.proc.wait(60) == 0
    assert sorted(results) == [0, 1, 2]
    for reasons, completion_tokens, _ in results.values():
        assert reasons == ["length"] and completion_tokens == n_tokens
    assert max(r[2] for r in results.values()) > signalled_at[0]  # tokens kept coming after the signal


def test_serve_quantized_int8(checkpoints, make_server):
    server = make_server(checkpoints["base"], "--quantize", "int8")
    assert server.log.read_text().startswith("serve: quantized to int8: weights ")
    out = server.client().completions.create(model="base", prompt="Hello", max_tokens=4, temperature=0)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 4
