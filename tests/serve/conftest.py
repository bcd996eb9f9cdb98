"""Serve fixtures: tiny checkpoints written here, and real `gpt2kit serve` processes on loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

BLOCK_SIZE = 1024
"""Long enough that a request of ~1000 tokens is still running while a test disconnects or stops the server."""
START_TIMEOUT_S = 120


def _save(path: Path, sft: bool, block_size: int = BLOCK_SIZE) -> Path:
    from gpt2kit import GPTConfig
    from gpt2kit.checkpoint import model_state_dict, save_checkpoint
    from gpt2kit.model.gpt import GPT
    from gpt2kit.prompts import TEMPLATES

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", block_size=block_size))
    payload = {"model_config": model.config.to_dict(), "model": model_state_dict(model)}
    if sft:  # the record `gpt2kit finetune sft` writes (gpt2kit.checkpoint.finetune), with the chat template
        payload["finetune"] = {"version": 1, "task": "sft", "base": "base.pt", "lora": None,
                               "template": TEMPLATES["chat"].to_dict(), "max_length": 64}
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``base``: a random tiny GPT; ``sft``: the same weights as an instruction-tuned checkpoint."""
    d = tmp_path_factory.mktemp("serve")
    return {"base": _save(d / "base.pt", sft=False), "sft": _save(d / "sft.pt", sft=True)}


class Server:
    """A `python -m gpt2kit serve` child process on 127.0.0.1 and a free port it chose itself."""

    def __init__(self, checkpoint: Path, *flags: str) -> None:
        # stderr goes to a file, not a pipe nobody drains (a full pipe would block the server)
        self.log = Path(checkpoint).parent / f"serve-{time.monotonic_ns()}.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gpt2kit", "serve", "--checkpoint", str(checkpoint), "--port", "0", *flags],
                stdout=subprocess.DEVNULL, stderr=err, text=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:  # the "serving" line names the address
            text = self.log.read_text()
            line = next((ln for ln in text.split("\n")[:-1] if ln.startswith("serving")), "")
            if line:
                break
            time.sleep(0.05)
        if "serving" not in line:
            self.stop()
            raise RuntimeError(f"gpt2kit serve did not start: {self.log.read_text()[-2000:]}")
        self.url = line.split(" at ")[1].split()[0]  # http://127.0.0.1:PORT/v1
        assert self.url.startswith("http://127.0.0.1:")
        self.base = self.url[: -len("/v1")]

    def client(self, **kw):
        """An official OpenAI client for this server (no retries: a test sees every error)."""
        import openai

        return openai.OpenAI(base_url=self.url, api_key=kw.pop("api_key", "none"), max_retries=0, timeout=60, **kw)

    def health(self) -> dict:
        import httpx

        return httpx.get(self.base + "/health", timeout=10).json()

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not end; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def sft_server(checkpoints):
    """A server for the instruction-tuned checkpoint with default settings."""
    server = Server(checkpoints["sft"])
    yield server
    server.stop()


@pytest.fixture
def make_server():
    """Start servers with any flags; each is stopped at the end of the test."""
    started = []

    def make(checkpoint: Path, *flags: str) -> Server:
        started.append(Server(checkpoint, *flags))
        return started[-1]

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def wait_until():
    """``wait_until(cond, timeout, what)``: poll ``cond`` every 50 ms until truthy; fail after ``timeout`` s."""

    def wait(cond, timeout: float = 20.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    return wait


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")  # loopback only, whatever proxy the machine has
