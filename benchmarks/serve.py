"""Serving throughput: `gpt2kit serve` against `transformers serve` on the same exported directory, same run.

Random gpt2-preset weights are written as a Hugging Face directory; each server in turn serves it on 127.0.0.1
and gets 1, 4 and 16 concurrent streaming clients, each asking for ``--new-tokens`` greedy tokens after its own
16-token prompt. Prints total generated tokens/s per server and concurrency (with ``--rounds``, gpt2kit's
median round per level), gpt2kit's speed-up over its own single client, the ratio to the baseline, failed
requests, and whether every client's text is the same at every concurrency (continuous batching must not change
an answer) and the same as the other server's.

The baseline is `transformers serve DIR` (its defaults, offline) where it runs; ``--baseline generate`` uses
a minimal server that calls transformers' ``generate`` for one request at a time instead.

    python benchmarks/serve.py                                  # gpt2 preset, 64 new tokens, 1/4/16 clients
    python benchmarks/serve.py --preset tiny --new-tokens 16    # quick check
    python benchmarks/serve.py --baseline none --rounds 3       # gpt2kit only, 1/4/16 clients three times in turn
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from gpt2kit import GPT, GPTConfig
from gpt2kit.checkpoint import model_state_dict
from gpt2kit.checkpoint.hf import write_hf_dir
from gpt2kit.tokenizer import get_tokenizer

WORDS = "the state of the union is strong and our people are free to build a future worth having".split()

GENERATE_SERVER = r'''
import json, sys, threading, torch, transformers
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
d, port = sys.argv[1], int(sys.argv[2])
tok = transformers.AutoTokenizer.from_pretrained(d)
model = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
lock = threading.Lock()  # one request at a time through generate()
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ids = torch.tensor([tok.encode(body["prompt"])])
        with lock, torch.inference_mode():
            out = model.generate(ids, max_new_tokens=body["max_tokens"], min_new_tokens=body["max_tokens"],
                                 do_sample=False, pad_token_id=tok.eos_token_id)
        text = tok.decode(out[0, ids.size(1):])
        self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
        chunk = {"choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                 "usage": {"completion_tokens": out.size(1) - ids.size(1)}}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def prompts(n: int, tokens: int) -> list[str]:
    """``n`` different prompts of exactly ``tokens`` tokens each."""
    tok = get_tokenizer()
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(tokens * 2)]
        ids = tok.encode(" ".join(words))[:tokens]
        out.append(tok.decode(ids))
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def stream_one(url: str, model: str, prompt: str, new_tokens: int) -> tuple[str, int] | None:
    """One streaming greedy completion; (text, generated tokens), or None when it failed."""
    body = {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True}
    text, tokens, done, reason = "", 0, False, None
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as resp:
            if resp.status_code != 200:
                return None
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                for c in chunk.get("choices") or []:
                    text += c.get("text") or ""
                    tokens += 1 if c.get("text") else 0
                    reason = c.get("finish_reason") or reason
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError:
        return None
    # transformers serve ends its stream without `data: [DONE]`; its last chunk's finish_reason marks the end
    if not (done or reason == "length") or reason not in ("length", None) or tokens != new_tokens:
        return None
    return text, tokens


def load(url: str, model: str, texts: list[str], new_tokens: int) -> tuple[float, list, int]:
    """All ``texts`` at once, one client thread each; (tokens/s, results, failures)."""
    results: list = [None] * len(texts)
    start = threading.Barrier(len(texts) + 1)

    def client(i: int) -> None:
        start.wait()
        results[i] = stream_one(url, model, texts[i], new_tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r is not None]
    return sum(r[1] for r in ok) / wall, results, len(texts) - len(ok)


def run_server(cmd: list[str], url: str, model: str, texts: list[str], clients: list[int], new_tokens: int,
               env: dict | None = None, rounds: int = 1) -> dict[int, tuple[float, list, int]]:
    """Every concurrency level ``rounds`` times in turn against one server; per level the round of median
    tokens/s, with the failures of all rounds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_ready(url, proc)
        stream_one(url, model, texts[0], 4)  # warm-up: first-request setup is not throughput
        runs = {c: [] for c in clients}
        for r in range(rounds):
            for c in clients:
                runs[c].append(load(url, model, texts[:c], new_tokens))
            if rounds > 1:
                print(f"round {r + 1}: " + ", ".join(f"{c} clients {runs[c][-1][0]:.1f} tok/s" for c in clients)
                      + f" ({runs[clients[-1]][-1][0] / runs[clients[0]][-1][0]:.2f}x)", flush=True)
        out = {}
        for c, rs in runs.items():
            tps, res, _ = sorted(rs, key=lambda x: x[0])[len(rs) // 2]
            out[c] = (tps, res, sum(x[2] for x in rs))
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2", help="model preset (random weights)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    ap.add_argument("--baseline", choices=("transformers-serve", "generate", "none"), default="transformers-serve")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the concurrency levels this many times in turn against gpt2kit's server (back to back, "
                         "for a shared machine) and report each level's median round")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    texts = prompts(max(clients), args.prompt_tokens)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1"}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "model"
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_preset(args.preset))
        write_hf_dir(model_state_dict(model), model.config, d)
        n_params = model.num_params()
        del model
        print(f"preset={args.preset} params={n_params:,} threads={torch.get_num_threads()} prompt "
              f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens each, greedy, streaming", flush=True)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        ours = run_server([sys.executable, "-m", "gpt2kit", "serve", "--checkpoint", str(d), "--port", str(port),
                           "--model-name", "model"], url, "model", texts, clients, args.new_tokens, env,
                          args.rounds)
        base = {}
        if args.baseline != "none":
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            if args.baseline == "transformers-serve":
                cmd = [str(Path(sys.executable).parent / "transformers"), "serve", str(d), "--port", str(port)]
            else:
                cmd = [sys.executable, "-c", GENERATE_SERVER, str(d), str(port)]
            base = run_server(cmd, url, str(d), texts, clients, args.new_tokens, env)

    single = ours[clients[0]][0]
    reference = {i: r[0] for i, r in enumerate(ours[clients[-1]][1]) if r is not None}  # texts at most clients
    head = f"| clients | gpt2kit tok/s | x own {clients[0]}-client | failed | same text at every concurrency |"
    if base:
        head += f" {args.baseline} tok/s | ratio | baseline failed | same text as baseline |"
    print("\n" + head + "\n" + "|---" * head.count(" | ") + "|---|")
    for c in clients:
        tps, res, failed = ours[c]
        same = all(r is not None and r[0] == reference.get(i) for i, r in enumerate(res))
        row = f"| {c} | {tps:.1f} | {tps / single:.2f}x | {failed} | {'yes' if same else 'NO'} |"
        if base:
            btps, bres, bfailed = base[c]
            as_base = all(a is not None and b is not None and a[0] == b[0] for a, b in zip(res, bres))
            row += f" {btps:.1f} | {tps / btps:.2f}x | {bfailed} | {'yes' if as_base else 'no'} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
