"""Helpers for the multi-rank fault tests: real ``torchrun`` launchers on loopback, gloo ranks on the CPU, faults
injected into chosen ranks (:mod:`hooked_worker`), and the processes found and signalled by rank.

Launchers are warm by default (:mod:`warm_torchrun`: torchrun forks its ranks from a launcher that has imported
torch and gpt2kit); ``warm=False`` runs ``python -m torch.distributed.run`` as a user does, each rank a fresh
interpreter. A test that gives up kills the launcher and every process below it (torchrun puts each fresh rank
in a session of its own, so process groups do not reach them); every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from reliability_harness import FLAGS, HOOKS, assert_same_state, live_processes

HERE = Path(__file__).resolve().parent
WORKER = HERE / "hooked_worker.py"
WARM_LAUNCHER = HERE / "warm_torchrun.py"
MR_FLAGS = [*FLAGS, "--block-size", "16", "--dist-timeout", "20"]
"""The crash suite's tiny run on 16-token windows; a hung collective fails after 20 s instead of 30 min."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_argv(nproc: int, gpt2kit_args: list, *, max_restarts: int = 0, nnodes: int = 1, node_rank: int = 0,
                  endpoint: str | None = None, warm: bool = True) -> list[str]:
    """A torchrun command line running ``gpt2kit GPT2KIT_ARGS`` through :mod:`hooked_worker`.

    One node: ``--standalone``. Several: c10d rendezvous at ``endpoint`` (host:port), as the README's
    multi-node command does. ``warm``: ranks forked from :mod:`warm_torchrun`, else fresh interpreters.
    """
    if nnodes == 1:
        where = ["--standalone"]
    else:
        where = ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", str(endpoint), "--rdzv-id", "gpt2kit-test"]
    launcher = [str(WARM_LAUNCHER)] if warm else ["-m", "torch.distributed.run"]
    return [sys.executable, *launcher, *where, "--nproc-per-node", str(nproc),
            "--max-restarts", str(max_restarts), "--monitor-interval", "0.1", str(WORKER),
            *[str(a) for a in gpt2kit_args]]


class WarmLaunchers:
    """Client of ``warm_torchrun.py --serve``: launchers forked from a process that has imported torch and gpt2kit,
    several at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WARM_LAUNCHER), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        ready = select.select([self.proc.stdout], [], [], 120)[0]
        assert ready and json.loads(self.proc.stdout.readline() or "null") == {"ready": True}, \
            "the launcher server died or did not start within 120 s"
        self._lock, self._ended = threading.Lock(), threading.Condition()
        self._started: queue.Queue[int] = queue.Queue()
        self._codes: dict[int, int] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "returncode" in msg:
                with self._ended:
                    self._codes[msg["pid"]] = msg["returncode"]
                    self._ended.notify_all()
            else:
                self._started.put(msg["pid"])

    def popen(self, argv: list[str], log: Path, env: dict[str, str]) -> ForkedLauncher:
        """Start the warm launcher command line ``argv`` (from :func:`torchrun_argv`) with ``env`` added."""
        assert argv[1] == str(WARM_LAUNCHER), argv[:3]
        with self._lock:  # one request and its answer at a time
            self.proc.stdin.write(json.dumps({"argv": argv[2:], "log": str(log), "env": env}) + "\n")
            self.proc.stdin.flush()
            pid = self._started.get(timeout=60)
        return ForkedLauncher(self, pid, argv)

    def returncode(self, pid: int, timeout: float | None) -> int | None:
        """``pid``'s exit status once it ended within ``timeout`` seconds (0: just look), else None."""
        with self._ended:
            self._ended.wait_for(lambda: pid in self._codes, timeout)
            return self._codes.get(pid)

    def close(self) -> None:
        """Stop the server (after the launchers it started end)."""
        self.proc.stdin.close()
        self.proc.wait(60)


class ForkedLauncher:
    """The part of ``subprocess.Popen`` that :class:`Launch` uses, for a launcher forked by :class:`WarmLaunchers`."""

    def __init__(self, server: WarmLaunchers, pid: int, argv: list[str]) -> None:
        self.server, self.pid, self.args, self.returncode = server, pid, argv, None

    def poll(self) -> int | None:
        """Its exit status if it ended, else None."""
        self.returncode = self.server.returncode(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status; ``subprocess.TimeoutExpired`` when it runs past ``timeout`` seconds."""
        self.returncode = self.server.returncode(self.pid, timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode


class Launch:
    """A launcher process (torchrun) writing stdout and stderr to one log file; forked by ``server`` when given
    (``argv`` from :func:`torchrun_argv` with ``warm=True``), else a child process of its own."""

    def __init__(self, argv: list[str], log: Path, hooks: dict | None = None, env: dict | None = None,
                 server: WarmLaunchers | None = None) -> None:
        self.log_path = log
        self.pid_dir = log.with_suffix(".pids")
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        added = {"OMP_NUM_THREADS": "1", "GPT2KIT_TEST_PID_DIR": str(self.pid_dir),
                 "GPT2KIT_TEST_HOOKS": json.dumps({"all": HOOKS, **(hooks or {})}), **(env or {})}
        self.started = time.perf_counter()
        if server is not None:
            self.proc = server.popen(argv, log, added)
            return
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **added},
                                         start_new_session=True)

    @property
    def log(self) -> str:
        """What it printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """Its exit status; kills it and its ranks and fails the test when it runs past ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.proc.args[:6]}... did not end within {timeout}s; log:\n"
                                 + self.log[-4000:]) from None

    def kill(self) -> None:
        """SIGKILL the launcher and every process it started (a test's clean-up)."""
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)

    def rank_pids(self) -> dict[tuple[int, int], int]:
        """Live worker processes of this launcher by (restart round, rank), from the pids they wrote."""
        live, found = set(_descendants(self.proc.pid)), {}
        for p in self.pid_dir.iterdir():
            try:
                pid = int(p.read_text())
            except ValueError:
                continue  # being written
            if pid in live:
                round_, rank = p.name.split(".")
                found[(int(round_), int(rank))] = pid
        return found


def _descendants(root: int) -> list[int]:
    """Pids of the live (not zombie) processes below ``root`` (torchrun starts each rank in a session of its own)."""
    children: dict[int, list[int]] = {}
    for pid, fields in live_processes().items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, launch: Launch | None = None) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail (killing ``launch``) after ``timeout`` seconds."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if launch is not None and launch.proc.poll() is not None:
            raise AssertionError(f"the launcher ended (exit {launch.proc.returncode}) before {what}:\n"
                                 + launch.log[-4000:])
        if time.perf_counter() > deadline:
            if launch is not None:
                launch.kill()
            raise AssertionError(f"{what}: not within {timeout}s" + (f"; log:\n{launch.log[-4000:]}" if launch else ""))
        time.sleep(0.02)


def logged_steps(run: Path) -> int:
    """Steps recorded in metrics.jsonl so far (0 when it does not exist yet)."""
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def train_args(data: Path, run: Path, flags: list[str]) -> list:
    """The same ``gpt2kit train`` command for every run and every restart."""
    return ["train", *flags, "--device", "cpu", "--data", data, "--out", run, "--resume", "auto"]


def restart_try(data: Path, run: Path, ref: dict, flags: list[str], *, kill: tuple[int, int] | None = None,
                hooks: dict | None = None, max_restarts: int = 1, warm: bool = True,
                server: WarmLaunchers | None = None) -> str:
    """A 2-rank ``torchrun --max-restarts N`` run hit by faults; '' when it ends in ``ref``'s state, else why not.

    ``kill=(rank, steps)``: SIGKILL that rank once ``steps`` steps are logged. ``hooks``: fault hooks by rank
    and round (:mod:`hooked_worker`), e.g. ``{"rank0": {"kill_in_save": ...}, "round1.rank0": {...}}``.
    ``warm``/``server``: as :func:`torchrun_argv` and :class:`Launch` take them.
    """
    launch = Launch(torchrun_argv(2, train_args(data, run, flags), max_restarts=max_restarts, warm=warm),
                    run.with_suffix(".log"), hooks=hooks, server=server)
    try:
        if kill is not None:
            rank, steps = kill
            wait_until(lambda: logged_steps(run) >= steps and (0, rank) in launch.rank_pids(), 120,
                       f"step {steps} of the first round", launch)
            os.kill(launch.rank_pids()[(0, rank)], signal.SIGKILL)
        rc = launch.wait(300)
    except (AssertionError, ProcessLookupError) as e:
        launch.kill()
        return f"stuck or ended early: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if rc != 0:
        tail = [ln for ln in launch.log.splitlines() if "rror" in ln][-3:]
        return f"exit {rc}: " + " | ".join(tail)
    try:
        assert_same_state(run, ref, f"after {kill or hooks}")
    except AssertionError as e:
        return str(e)
    return ""


def resumes(log: str) -> list[str]:
    """The checkpoint each round (rank 0) resumed from, in order."""
    return re.findall(r"resumed from \S+/(step_\d+\.pt) at step", log)


def resumed_from(log: str) -> str:
    """Where the restarted group continued: the checkpoint it resumed from, or a fresh start."""
    m = resumes(log)
    return m[-1] if m else "a fresh start (no complete checkpoint yet)"
