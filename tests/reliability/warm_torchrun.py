"""torchrun (``torch.distributed.run``, the same flags) whose launcher and ranks start warm (tests only).

Why: a process started as a fresh interpreter spends about 4 CPU-seconds importing torch, torch._dynamo (which
AdamW's constructor imports) and gpt2kit before its first step, and the multi-rank suite starts dozens of ranks
and launchers on two cores. This module imports them once; torchrun's own ``--run-path --start-method fork``
then forks each rank from the launcher. The launcher, rendezvous, restart rounds and process tree (ranks are
children of the launcher) are torchrun's. Nothing here runs a torch op before forking, so no OpenMP thread pool
is copied.

``python warm_torchrun.py TORCHRUN_FLAGS SCRIPT ARGS``: one launcher (``--run-path --start-method fork`` added).
``python warm_torchrun.py --serve``: a launcher server; each JSON line on stdin,
``{"argv": [TORCHRUN_FLAGS, SCRIPT, ARGS...], "log": FILE, "env": {...}}``, forks a launcher in a session of its
own writing to FILE, answered by ``{"pid": PID}`` on stdout, and ``{"pid": PID, "returncode": RC}`` (negative:
killed by that signal) when it ends. Launchers run side by side; closing stdin stops the server once they end.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# what the ranks would import before training (the fork server's list, the FSDP state-dict API included)
import hooked_worker  # noqa: E402,F401
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401
import torch.distributed.checkpoint.state_dict  # noqa: E402,F401
import torch.distributed.run  # noqa: E402

import gpt2kit.checkpoint  # noqa: E402,F401
import gpt2kit.cli  # noqa: E402
import gpt2kit.cli.train  # noqa: E402,F401
import gpt2kit.train.pretrain  # noqa: E402,F401
from gpt2kit.tokenizer import get_tokenizer  # noqa: E402


def torchrun(argv: list[str]) -> int:
    """torchrun's main on ``TORCHRUN_FLAGS SCRIPT ARGS``, its ranks forked from this process."""
    script = next(i for i, a in enumerate(argv) if a.endswith(".py"))
    torch.distributed.run.main([*argv[:script], "--run-path", "--start-method", "fork", *argv[script:]])
    return 0


def _launcher(req: dict) -> None:
    """The forked launcher: its own session, output to the log, the request's environment; never returns."""
    code = 1
    try:
        os.setsid()
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.update(req.get("env") or {})
        code = torchrun(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Fork a launcher per request line on stdin, report each one's pid and exit status on stdout."""
    out, buf, running, stdin_open = sys.stdout, b"", set(), True
    print(json.dumps({"ready": True}), file=out, flush=True)
    while stdin_open or running:
        if stdin_open and select.select([0], [], [], 0.02)[0]:
            chunk = os.read(0, 65536)
            stdin_open = bool(chunk)
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    pid = os.fork()
                    if pid == 0:
                        _launcher(json.loads(line))
                    running.add(pid)
                    print(json.dumps({"pid": pid}), file=out, flush=True)
        elif not stdin_open:
            time.sleep(0.02)
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            running.discard(pid)
            rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            print(json.dumps({"pid": pid, "returncode": rc}), file=out, flush=True)


if __name__ == "__main__":
    gpt2kit.cli.build_parser()  # warm what each rank does before training, too
    get_tokenizer()
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        sys.exit(torchrun(sys.argv[1:]))
