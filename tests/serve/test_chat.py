"""`gpt2kit chat` through a pipe, and the conversation helpers it shares with the server."""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

from gpt2kit.checkpoint import load_model
from gpt2kit.cli import main
from gpt2kit.generation import generate
from gpt2kit.prompts import TEMPLATES, chat_prompt_ids, trim_conversation
from gpt2kit.tokenizer import get_tokenizer

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

TOK = get_tokenizer()


def _reply(model, ids: list[int], n: int) -> str:
    out = generate(model, torch.tensor([ids]), n, temperature=0, eos_id=TOK.eot)[0, len(ids):].tolist()
    return TOK.decode([t for t in out if t != TOK.eot])


def test_chat_through_a_pipe_keeps_the_conversation_and_leaves_at_eof(checkpoints):
    proc = subprocess.run(
        [sys.executable, "-m", "gpt2kit", "chat", "--checkpoint", str(checkpoints["sft"]), "--temperature", "0",
         "--max-new-tokens", "8", "--system", "Be brief."],
        input="Say red.\n\nAnd blue?\n", capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr  # end of input (Ctrl-D) leaves cleanly
    model = load_model(checkpoints["sft"]).model
    chat = TEMPLATES["chat"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say red."}]
    first = _reply(model, chat_prompt_ids(messages, chat, TOK), 8)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And blue?"}]
    second = _reply(model, chat_prompt_ids(messages, chat, TOK), 8)
    assert proc.stdout == first + "\n" + second + "\n"  # the empty line was skipped
    assert "template 'chat'" in proc.stderr


def test_chat_with_a_base_model_continues_the_text(checkpoints, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon a time\nthere was\n"))
    assert main(["chat", "--checkpoint", str(checkpoints["base"]), "--temperature", "0",
                 "--max-new-tokens", "6"]) == 0
    model = load_model(checkpoints["base"]).model
    first = _reply(model, TOK.encode("Once upon a time"), 6)
    second = _reply(model, TOK.encode("Once upon a time" + first + "\nthere was"), 6)
    assert capsys.readouterr().out == first + "\n" + second + "\n"


def test_chat_fits_its_default_reply_length_to_a_short_context(tmp_path, monkeypatch, capsys):
    from gpt2kit import GPTConfig
    from gpt2kit.checkpoint import model_state_dict, save_checkpoint
    from gpt2kit.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", block_size=128)).eval()  # demo-cpu's context: half of 256
    save_checkpoint(tmp_path / "short.pt", {"model_config": model.config.to_dict(), "model": model_state_dict(model)})
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon a time\n"))
    assert main(["chat", "--checkpoint", str(tmp_path / "short.pt"), "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out == _reply(model, TOK.encode("Once upon a time"), 64) + "\n"  # 64 = half the context


@pytest.mark.parametrize("argv, needle", [
    (["--max-new-tokens", "5000"], "leaves no room"),
    (["--system", "hi"], "no chat template"),
    (["--top-p", "0"], "--top-p"),
])
def test_chat_flag_errors(checkpoints, capsys, argv, needle):
    assert main(["chat", "--checkpoint", str(checkpoints["base"]), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_trim_drops_oldest_turns_and_keeps_the_system_message():
    chat = TEMPLATES["chat"]
    turns = [{"role": "system", "content": "S"}]
    for i in range(6):
        turns += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": f"answer {i}"}]
    turns.append({"role": "user", "content": "last"})
    full = len(chat_prompt_ids(turns, chat, TOK))
    kept, ids = trim_conversation(turns, chat, TOK, budget=full - 1)
    assert kept[0]["role"] == "system" and kept[1]["content"].startswith("question 1") and kept[-1] == turns[-1]
    assert ids == chat_prompt_ids(kept, chat, TOK) and len(ids) <= full - 1
    kept, ids = trim_conversation(turns, chat, TOK, budget=5)  # not even the last question fits: its end is kept
    assert kept == [turns[0], turns[-1]] and ids == chat_prompt_ids(kept, chat, TOK)[-5:]


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(checkpoints):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2kit", "chat", "--checkpoint", str(checkpoints["sft"]), "--temperature", "0",
         "--max-new-tokens", "600"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )

    fd = proc.stdout.fileno()

    def read_some(timeout: float = 120) -> bytes:
        # never a read that blocks for ever: a chat that went quiet fails the test instead of hanging the suite
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 4096) if ready else b""

    def read_until(text: bytes, needle: bytes) -> bytes:
        deadline = time.monotonic() + 120
        while needle not in text and time.monotonic() < deadline:
            piece = read_some(max(0.0, deadline - time.monotonic()))
            if not piece:
                break
            text += piece
        return text

    try:
        proc.stdin.write(b"hi\n")
        proc.stdin.flush()
        out = read_some()  # the first reply is streaming
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out = read_until(out, b" [stopped]\n")
        proc.stdin.write(b"again\n")  # the conversation goes on
        proc.stdin.flush()
        out += read_some()  # the second reply is streaming
        proc.send_signal(signal.SIGINT)
        proc.stdin.close()  # then end of input: Ctrl-D
        rest = read_until(b"", b"\0")  # everything up to the exit
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    first, second, tail = (out + rest).decode().split(" [stopped]\n")
    assert first and second and tail == ""
    model = load_model(checkpoints["sft"]).model
    chat = TEMPLATES["chat"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first},
                {"role": "user", "content": "again"}]
    _, ids = trim_conversation(messages, chat, TOK, budget=model.config.block_size - 600)
    expected = _reply(model, ids, 24)  # the stopped reply is a prefix of the greedy one, or extends its start
    assert second.startswith(expected) or expected.startswith(second)
