"""The serve and chat commands' own checks: help, and bad flags as one clear line (in-process: no start-up cost)."""

from __future__ import annotations

import socket

import pytest

from gpt2kit.cli import main

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def test_help_lists_the_flags(capsys):
    for cmd in ("serve", "chat"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--max-queue" in out and "--api-key" in out and "--system" in out and "Ctrl-D" in out
    assert "--max-body-mb" in out


def test_serve_port_in_use_and_missing_checkpoint_are_one_line_errors(checkpoints, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", str(checkpoints["base"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--port {port}: cannot listen there" in err
    assert main(["serve", "--checkpoint", str(tmp_path / "nothing.pt"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing.pt" in err
