"""Helpers for the reliability suite: a fork server that runs real ``gpt2kit`` commands in child
processes that the tests kill at random (seeded) moments, plus small corpora and helpers.

Kill points are drawn from ``random.Random(SEED)``; set ``GPT2KIT_RELIABILITY_SEED`` to explore
other points (the seed in use is printed in every failure message).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2kit.checkpoint import best_checkpoint, list_step_checkpoints, load_model, read_checkpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SEED = int(os.environ.get("GPT2KIT_RELIABILITY_SEED", "20240520"))


@dataclass
class RunResult:
    """How a child run ended."""

    returncode: int
    """Exit status; negative: killed by that signal."""
    seconds: float
    """From fork to exit, as seen by the test."""
    log: str
    """stdout and stderr together."""
    signalled: bool
    """Whether the signal reached it before it ended on its own."""
    pid: int
    """The child's pid (also its process group id)."""


class ForkServer:
    """Client of ``forkserver.py``: one run at a time, optionally signalled after a delay."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "forkserver.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            cwd=REPO, text=True, bufsize=1,
        )
        ready = self._read(120)
        assert ready == {"ready": True}, ready
        self._count = 0

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def run(self, argv: list[str], *, cwd: Path | None = None, env: dict | None = None, hooks: dict | None = None,
            signal_after: float | None = None, sig: int = signal.SIGKILL, group: bool = True,
            before_signal: Callable[[int], None] | None = None, signal_when: Callable[[int], bool] | None = None,
            timeout: float = 120) -> RunResult:
        """Run ``gpt2kit ARGV`` in a forked child; send ``sig`` after ``signal_after`` seconds if still running.

        ``group``: signal the child's whole process group (its worker processes too), as a job
        scheduler or a terminal does; else only the main process. ``before_signal(pid)`` is called
        just before the signal is sent. ``signal_when(pid)``: the delay counts from when this predicate
        (polled every 10 ms) first holds, e.g. once training has logged a step.
        """
        self._count += 1
        log = self.log_dir / f"run{self._count:04d}.log"
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd or REPO), "log": str(log), "env": env or {},
               "hooks": hooks or {}}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        pid = self._read(30)["pid"]
        t0 = time.perf_counter()
        signalled = False
        try:
            done = None
            if signal_after is not None and signal_when is not None:
                while done is None and not signal_when(pid):
                    if time.perf_counter() - t0 > timeout:
                        raise TimeoutError
                    done = self._poll(0.01)  # not None: it ended before the condition held
            if done is None and signal_after is not None:
                done = self._poll(signal_after)
                if done is None:
                    signalled = True
                    if before_signal is not None:
                        before_signal(pid)
                    try:
                        (os.killpg if group else os.kill)(pid, sig)
                    except ProcessLookupError:
                        pass
            if done is None:
                done = self._read(timeout)
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
            self._read(30)
            raise AssertionError(f"gpt2kit {' '.join(req['argv'])} did not end within {timeout}s; log:\n"
                                 + log.read_text(errors="replace")[-3000:]) from None
        if signalled and sig == signal.SIGKILL and done["returncode"] != -signal.SIGKILL:
            signalled = False  # it ended on its own just before the signal was sent
        return RunResult(done["returncode"], time.perf_counter() - t0, log.read_text(errors="replace"), signalled, pid)

    def _poll(self, timeout: float) -> dict | None:
        """The end-of-run message if it arrives within ``timeout`` seconds, else None."""
        try:
            return self._read(timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop the server."""
        self.proc.stdin.close()
        self.proc.wait(30)


WORDS = ("the whale ship sea captain harpoon ocean deck sail wind storm mast crew voyage island white "
         "deep water boat line rope iron fire night day long old young man hand heart head eye "
         "naïve café 東京 🐋 1790 2021 — … \"quoted\" (parenthetical) it's we'll they've").split()


def write_corpus(path: Path, num_docs: int, words_per_doc: int, seed: int = 0) -> Path:
    """A deterministic JSONL corpus of ``num_docs`` documents of random words (unicode included)."""
    r = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(num_docs):
            n = r.randint(words_per_doc // 2, words_per_doc * 3 // 2)
            text = " ".join(r.choice(WORDS) for _ in range(n))
            f.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
    return path


def dir_files(d: Path) -> dict[str, bytes]:
    """Every file of a directory (not recursive) by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def live_processes() -> dict[int, list[str]]:
    """Every live (not zombie) process: pid -> the fields of /proc/PID/stat after "pid (comm) " (state ppid ...)."""
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            procs[int(d.name)] = fields
    return procs


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``."""
    return [pid for pid, fields in live_processes().items() if int(fields[2]) == pgid]


# ---------------------------------------------------------------------------------------------- training runs

MAX_STEPS = 12
FLAGS = [
    "--preset", "demo-cpu", "--optimizer", "adamw", "--lr-schedule", "cosine", "--device", "cpu", "--dtype", "float32",
    "--n-layer", "2", "--n-head", "2",
    "--n-embd", "32", "--block-size", "32", "--batch-size", "4", "--warmup-steps", "2", "--schedule-steps", "50",
    "--lr", "1e-3", "--eval-every", "4", "--eval-batches", "2", "--save-every", "2", "--keep-last", "2",
    "--samples", "1", "--sample-tokens", "8", "--log-every", "1", "--no-progress", "--no-tensorboard",
    "--max-steps", str(MAX_STEPS),
]
HOOKS = {"skip_peak_flops": True, "threads": 1}
# what legitimately differs between two runs of the same training: wall-clock figures, the run directory
# and the --resume flag
VOLATILE = {"train_seconds", "tokens_per_s", "mfu", "time_s", "resume", "out"}


def train_argv(data: Path, run: Path, *extra: str) -> list:
    """``gpt2kit train`` of the tiny model into ``run``, resuming whatever is there (the same command every time)."""
    return ["train", *FLAGS, "--data", data, "--out", run, "--resume", "auto", *extra]


def _plain(x):
    """``x`` with tensors turned into (dtype, shape, bytes) and volatile keys dropped, for exact comparison."""
    if isinstance(x, torch.Tensor):
        return ("tensor", str(x.dtype), tuple(x.shape), x.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def final_state(run: Path) -> dict:
    """Everything a finished run leaves that must not depend on whether it was interrupted."""
    ckpts = list_step_checkpoints(run)
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return {
        "checkpoint files": [p.name for p in ckpts],
        "final checkpoint": _plain(read_checkpoint(ckpts[-1])),
        "best.json": best,
        "metrics.jsonl": _plain(metrics),
        "samples.jsonl": samples,
        "stray files": sorted(p.name for p in (run / "checkpoints").iterdir() if ".tmp." in p.name),
    }


TRAINING_STATE = ("model_config", "model", "optimizer", "optimizer_format", "step", "loader", "rng", "config",
                  "skipped_steps", "tokens_seen", "world_size", "grad_accum_steps")
"""Checkpoint keys that make up where training is (not what was evaluated along the way)."""


def training_state(state: dict) -> dict:
    """From a :func:`final_state`: the training state and the training loss of every step."""
    ckpt = state["final checkpoint"]
    return {"checkpoint": {k: ckpt.get(k) for k in TRAINING_STATE},
            "train losses": [(m["step"], m["loss"], m["grad_norm"]) for m in state["metrics.jsonl"]]}


def assert_same_state(run: Path, ref: dict, context: str, keys: tuple[str, ...] | None = None) -> None:
    """``run``'s final state equals ``ref`` (in ``keys``, default all), bit for bit."""
    got = final_state(run)
    for key in keys or ref:
        assert got[key] == ref[key], f"{context}: {key} differs from the uninterrupted run (seed {SEED})"


def check_after_kill(run: Path) -> int:
    """Every checkpoint under its final name is whole and loads; returns how many temporary files were left."""
    for p in list_step_checkpoints(run):
        ckpt = read_checkpoint(p)  # a half-written file under a final name would fail here
        assert ckpt["step"] == int(p.stem.split("_")[1])
    if (run / "checkpoints" / "best.json").exists():
        json.loads((run / "checkpoints" / "best.json").read_text())
        best = best_checkpoint(run)
        if best is not None:
            read_checkpoint(best)
    if list_step_checkpoints(run):
        load_model(run)  # what sample/eval/export would load
    cdir = run / "checkpoints"
    return sum(".tmp." in p.name for p in cdir.iterdir()) if cdir.is_dir() else 0
