"""The HTTP surface of `gpt2kit serve` under bad input: the published OpenAPI schema fuzzed with schemathesis,
malformed bodies, bodies over --max-body-mb, and the chat page's own routes and headers."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from .conftest import _save

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

FUZZ_BLOCK_SIZE = 32
"""Every generation the fuzzer asks for stays under this many tokens, so the fuzz takes seconds."""
POSITIVE_EXAMPLES = 12
NEGATIVE_EXAMPLES = 40
MAX_BODY_MB = 0.5


def _is_openai_error(resp: httpx.Response | object) -> bool:
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and err["message"]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from .conftest import Server

    ckpt = _save(tmp_path_factory.mktemp("fuzz") / "fuzz.pt", sft=True, block_size=FUZZ_BLOCK_SIZE)
    server = Server(ckpt, "--max-batch", "2", "--max-queue", "2", "--max-body-mb", str(MAX_BODY_MB))
    yield server
    server.stop()


def _fuzz(op, mode, count: int, base: str, seen: dict[str, set[int]], failures: list[str]) -> None:
    """Send ``count`` requests that ``mode`` generates for ``op``; note each status and each bad answer."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def call(case):
        resp = case.call(base_url=base, timeout=30)
        seen.setdefault(op.label, set()).add(resp.status_code)
        if resp.status_code >= 500 or resp.status_code >= 400 and not _is_openai_error(resp):
            failures.append(f"{op.label} {mode.value}: {resp.status_code} {resp.text[:200]} for "
                            f"body={case.body!r:.300} headers={case.headers} query={case.query}")

    call()


def test_fuzzed_schema_gets_4xx_in_openai_shape_never_500(fuzz_server):
    schemathesis = pytest.importorskip("schemathesis")

    schema = schemathesis.openapi.from_url(fuzz_server.base + "/openapi.json", timeout=10)
    seen: dict[str, set[int]] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        _fuzz(op, schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES, fuzz_server.base, seen, failures)
        if op.method.upper() == "POST":  # the GETs take no input to break
            _fuzz(op, schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, fuzz_server.base, seen, failures)
    assert not failures, "\n".join(failures[:10])
    # the fuzzer reached both sides of every endpoint that reads a body: accepted and refused requests
    for label in ("POST /v1/completions", "POST /v1/chat/completions"):
        assert any(s < 300 for s in seen[label]) and any(400 <= s < 500 for s in seen[label]), (label, seen)
    assert fuzz_server.health()["status"] == "ok" and fuzz_server.proc.poll() is None


@pytest.mark.parametrize("body", [
    b"{", b"", b"[]", b'"text"', b"\xff\xfe\x00", b"[" * 100_000,  # nesting deeper than the JSON parser's stack
    b'{"prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}",  # an integer past Python's digit limit
    b'{"prompt": "a", "max_tokens": NaN}', b'{"prompt": "a", "temperature": Infinity}',
])
def test_malformed_bodies_get_400_in_openai_shape(fuzz_server, body):
    for path in ("/v1/completions", "/v1/chat/completions"):
        resp = httpx.post(fuzz_server.base + path, content=body, headers={"Content-Type": "application/json"},
                          timeout=30)
        assert resp.status_code == 400 and _is_openai_error(resp), (path, resp.status_code, resp.text[:300])


def _raw_request(base: str, head: str, first_part: bytes) -> bytes:
    """Send the request head and only the start of its body; return what the server answers meanwhile."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(head.encode() + b"\r\n" + first_part)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = s.recv(65536)
            if not piece:
                break
            answer += piece
    return answer


def test_a_body_over_the_limit_gets_413_before_it_is_read_whole(fuzz_server):
    limit = int(MAX_BODY_MB * 2**20)
    big = b'{"prompt": "' + b"a" * (2 * limit) + b'"}'
    resp = httpx.post(fuzz_server.url + "/completions", content=big, timeout=30)
    assert resp.status_code == 413 and _is_openai_error(resp) and resp.json()["error"]["code"] == "request_too_large"
    assert "--max-body-mb" in resp.json()["error"]["message"]

    # Content-Length over the limit: refused on the header, while the body has not been sent
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * limit}\r\n")
    t0 = time.monotonic()
    answer = _raw_request(fuzz_server.base, head, b'{"prompt": "')
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer, answer[:300]
    assert time.monotonic() - t0 < 10

    # chunked, with no length given: refused once the bytes that came exceed the limit, the body not finished
    chunk = b"a" * (limit + 1)
    part = b"c\r\n" + b'{"prompt": "' + b"\r\n" + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    head = ("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n")
    answer = _raw_request(fuzz_server.base, head, part)
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer, answer[:300]

    # a body under the limit still works, and the server is alive
    ok = httpx.post(fuzz_server.url + "/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    assert fuzz_server.health()["status"] == "ok"


def test_the_page_and_its_files_are_served_with_a_strict_policy(fuzz_server):
    page = httpx.get(fuzz_server.base + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'data-mode="chat"' in page.text and 'data-key="none"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from another origin
    for name, media in (("chat.js", "text/javascript"), ("chat.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        resp = httpx.get(f"{fuzz_server.base}/static/{name}", timeout=10)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(media), name
        assert resp.headers["x-content-type-options"] == "nosniff"
    js = httpx.get(fuzz_server.base + "/static/chat.js", timeout=10).text
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
    assert httpx.get(fuzz_server.base + "/favicon.ico", timeout=10).status_code == 200
    missing = httpx.get(fuzz_server.base + "/static/../app.py", timeout=10)
    assert missing.status_code == 404 and _is_openai_error(missing)
    # the page's routes are not part of the API the schema describes
    assert set(httpx.get(fuzz_server.base + "/openapi.json", timeout=10).json()["paths"]) == {
        "/health", "/v1/models", "/v1/completions", "/v1/chat/completions"}
