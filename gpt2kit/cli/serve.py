"""``gpt2kit serve``: an OpenAI-compatible HTTP server with continuous batching."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from gpt2kit.cli.common import (
    add_checkpoint_argument,
    add_device_arguments,
    add_quantize_argument,
    nonneg_int,
    positive_int,
)
from gpt2kit.errors import UserError

HELP = "serve a checkpoint over an OpenAI-compatible HTTP API (many users at once)"
DESCRIPTION = """\
Serve a checkpoint over the OpenAI API: POST /v1/completions, POST /v1/chat/completions (instruction-tuned
checkpoints, with their stored template), GET /v1/models, GET /health. One decode loop serves every request
over a batched KV cache; requests join and leave between decode steps. Each answer equals what the request
would get alone (a seeded sample equals `gpt2kit sample` with that seed). GET / is a chat page (a completion
box for a base model) on the same endpoints, asking for the --api-key if one is set. SIGTERM lets the
requests in flight finish, refuses new ones and exits 0. Needs the serve extra: pip install 'gpt2kit[serve]'.

  gpt2kit serve --checkpoint runs/sft --port 8000
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
      -d '{"prompt": "Fellow citizens,", "max_tokens": 32, "temperature": 0}'
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the server to the network (use --api-key then)")
    p.add_argument("--port", type=nonneg_int, default=8000, help="TCP port")
    p.add_argument("--max-batch", type=positive_int, default=16,
                   help="requests decoded together (KV cache rows); up to 16 keeps every answer identical to the "
                        "request alone on a CPU (larger decode steps leave the packed weights' path)")
    p.add_argument("--max-queue", type=nonneg_int, default=64,
                   help="requests allowed to wait for a free row; more get 503 with Retry-After")
    p.add_argument("--api-key", default=os.environ.get("GPT2KIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $GPT2KIT_API_KEY; none: open)")
    p.add_argument("--max-body-mb", type=_megabytes, default=4.0,
                   help="request bodies larger than this many MB get 413, refused before they are read whole")
    p.add_argument("--model-name", default=None,
                   help="the model id clients send and /v1/models lists (default: the checkpoint's name)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (info logs every request)")
    add_device_arguments(p)
    add_quantize_argument(p)


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of MB, got {text!r}")
    return value


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                        "choose another --port or a local --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _model_name(spec: str) -> str:
    path = spec.rstrip("/")
    name = os.path.basename(path) or path
    return name[:-3] if name.endswith(".pt") else name


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from gpt2kit.serve.app import ServedModel, create_app
    except ModuleNotFoundError as e:
        raise UserError(f"gpt2kit serve needs {e.name}: pip install 'gpt2kit[serve]'") from None
    from gpt2kit.checkpoint import load_model
    from gpt2kit.cli.common import apply_quantize, resolve_dtype
    from gpt2kit.distributed import resolve_device
    from gpt2kit.serve.engine import Engine, on_passing_thread
    from gpt2kit.tokenizer import TOKENIZER_ID

    if args.api_key is not None and not args.api_key.strip():
        raise UserError("--api-key is empty; give a key, or leave the flag out for an open server")
    sock = _bind(args.host, args.port)

    def build() -> tuple:
        device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
        loaded = load_model(args.checkpoint, device=device, dtype=dtype)
        apply_quantize(args, loaded.model, "serve")
        return loaded, Engine(loaded.model, max_batch=args.max_batch, max_queue=args.max_queue)

    loaded, engine = on_passing_thread(build)  # the engine thread stays the only one with torch workers
    served = ServedModel.of(loaded, engine, args.model_name or _model_name(args.checkpoint), api_key=args.api_key,
                            max_body_bytes=int(args.max_body_mb * 2**20))
    template = served.template

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            engine.drain()  # new requests get 503 while the ones in flight finish
            super().handle_exit(sig, frame)

    def stopped(signum: int, frame) -> None:
        # uvicorn re-raises the signal after its graceful shutdown; SIGTERM asked for exactly that: success
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stopped)
    config = uvicorn.Config(create_app(served), log_level=args.log_level, timeout_graceful_shutdown=None)
    host, port = sock.getsockname()[:2]
    chat = "chat and completions" if template is not None else "completions only, no chat template: a base model"
    tok = served.tokenizer
    if tok.name != TOKENIZER_ID:  # a vocabulary of its own: GPT-2 token ids mean nothing to it
        chat += f"; tokenizer {tok.name}, {tok.vocab_size} tokens"
    print(f"serving {served.name} ({chat}) at http://{host}:{port}/v1 "
          f"(max batch {args.max_batch}, max queue {args.max_queue}{', API key required' if args.api_key else ''}); "
          f"chat page: http://{host}:{port}/",
          file=sys.stderr, flush=True)
    Server(config).run(sockets=[sock])
    return 0
