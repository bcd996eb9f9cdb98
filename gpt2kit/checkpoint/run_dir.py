"""A run directory's checkpoints on disk, and where a run resumes from.

``gpt2kit train --out RUN`` keeps its checkpoints in ``RUN/checkpoints/``: ``step_XXXXXXXX.pt`` files (or
sharded ``step_XXXXXXXX.dcp`` directories), ``best.json`` naming the best by validation loss, and, after a
kill, half-written ``.NAME.tmp.PID`` leftovers of the writer that died. Sample, eval and export read the best
checkpoint of a run directory (else the latest); ``--resume`` continues from the latest, never the best.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2kit.checkpoint.format import read_checkpoint
from gpt2kit.checkpoint.sharded import SUFFIX as SHARDED_SUFFIX
from gpt2kit.checkpoint.sharded import is_sharded
from gpt2kit.errors import UserError
from gpt2kit.io import atomic_write_text

CHECKPOINT_DIR = "checkpoints"
"""The folder of a run directory holding its checkpoints."""
BEST_FILE = "best.json"
"""The record of the best checkpoint by validation loss: ``{"file", "step", "val_loss"}``."""
PIPELINE_FILE = "pipeline.json"
"""The record of a ``gpt2kit pipeline`` run directory; its ``final`` names the sub-directory of its model."""
_STEP_RE = re.compile(r"^step_(\d+)(\.pt|\.dcp)$")


# ------------------------------------------------------------------------------------------ step checkpoints


def step_checkpoint_path(run_dir: str | Path, step: int, sharded: bool = False) -> Path:
    """Where a run directory keeps the checkpoint of ``step`` (a ``.dcp`` directory when ``sharded``)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}{SHARDED_SUFFIX if sharded else '.pt'}"


def list_step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The step checkpoints of a run directory (``step_*.pt`` files and sharded ``step_*.dcp`` directories),
    oldest step first."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir()
             if (m := _STEP_RE.match(p.name)) and p.is_dir() == (m.group(2) == SHARDED_SUFFIX)]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest step checkpoint (``step_*.pt`` or ``step_*.dcp``) of a run directory (resume continues from the
    latest, not the best)."""
    steps = list_step_checkpoints(run_dir)
    return steps[-1] if steps else None


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint file, or a sharded checkpoint directory at once: renamed to a temporary name first, so a
    kill during the deletion leaves no partial checkpoint under a step name (the next run removes the rest)."""
    path = Path(path)
    if not path.is_dir():
        path.unlink(missing_ok=True)
        return
    doomed = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        os.replace(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def prune_step_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest step checkpoints, never the best one; returns what was deleted."""
    steps = list_step_checkpoints(run_dir)
    best = best_checkpoint(run_dir)
    doomed = [p for p in steps[: max(0, len(steps) - keep_last)] if best is None or p.name != best.name]
    for p in doomed:
        remove_checkpoint(p)
    return doomed


def remove_stale_temp_files(run_dir: str | Path) -> None:
    """Delete half-written checkpoints (``.NAME.tmp.PID``, files or sharded directories) that a killed run left,
    and directories a killed prune was deleting; each can be gigabytes. A living writer's are left alone."""
    cdir = Path(run_dir) / CHECKPOINT_DIR
    if not cdir.is_dir():
        return
    for p in cdir.glob(".*.tmp.*"):
        pid = p.name.rsplit(".", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer is still alive
        except ProcessLookupError:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        except PermissionError:
            continue


# ------------------------------------------------------------------------------------------------- best.json


def best_record(run_dir: str | Path) -> dict[str, Any] | None:
    """What ``checkpoints/best.json`` says (``file``, ``step``, ``val_loss``), or None when absent or unreadable."""
    try:
        record = json.loads((Path(run_dir) / CHECKPOINT_DIR / BEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The best-by-validation-loss checkpoint recorded in ``checkpoints/best.json``, if it still exists."""
    name = (best_record(run_dir) or {}).get("file")
    if not isinstance(name, str):
        return None
    p = Path(run_dir) / CHECKPOINT_DIR / Path(name).name
    return p if p.is_file() or is_sharded(p) else None


def write_best(run_dir: str | Path, path: str | Path, step: int, val_loss: float) -> None:
    """Record ``path`` (a step checkpoint of ``run_dir``) as the best by validation loss, atomically."""
    record = {"file": Path(path).name, "step": int(step), "val_loss": float(val_loss)}
    atomic_write_text(Path(run_dir) / CHECKPOINT_DIR / BEST_FILE, json.dumps(record, indent=1) + "\n")


def pipeline_model(run_dir: str | Path) -> Path | None:
    """The run directory of the model a ``gpt2kit pipeline`` directory stands for (its tuned model, or the
    pretrained one before tuning finished); None when ``run_dir`` is no pipeline or has no model yet."""
    try:
        record = json.loads((Path(run_dir) / PIPELINE_FILE).read_text())
    except (OSError, ValueError):
        return None
    final = record.get("final") if isinstance(record, dict) else None
    return Path(run_dir) / Path(final).name if isinstance(final, str) and final else None


# --------------------------------------------------------------------------------------------- resuming


@dataclass
class ResumePoint:
    """A checkpoint to continue from."""

    path: Path
    checkpoint: dict[str, Any]


def find_resume(out: str | Path, spec: str | None) -> ResumePoint | None:
    """The checkpoint ``--resume`` names, read and checked; None for a fresh start.

    ``auto``: the latest checkpoint in ``out`` (None when there is none). A run directory: its latest
    checkpoint. A file or a sharded checkpoint directory: that checkpoint.
    """
    if spec is None or spec == "":
        return None
    if spec == "auto":
        path = latest_checkpoint(out)
        return None if path is None else ResumePoint(path, _read_training_checkpoint(path))
    p = Path(spec)
    if is_sharded(p):
        path = p
    elif p.is_dir():
        path = latest_checkpoint(p)
        if path is None:
            raise UserError(
                f"--resume {spec}: no checkpoints/step_*.pt or .dcp in this directory; "
                "use --resume auto to start fresh")
    elif p.is_file():
        path = p
    else:
        raise UserError(f"--resume {spec}: no such checkpoint file or run directory")
    return ResumePoint(path, _read_training_checkpoint(path))


def _read_training_checkpoint(path: Path) -> dict[str, Any]:
    # a sharded checkpoint's tensors are read later, each rank its own part (Checkpointer.restore_optimizer)
    ckpt = read_checkpoint(path, weights=False)
    has = {*ckpt, *(["optimizer"] if "optimizer_param_groups" in ckpt else [])}
    missing = [k for k in ("optimizer", "step", "config") if k not in has]
    if missing:
        raise UserError(
            f"{path}: has weights but no training state ({', '.join(missing)} missing), so training cannot resume "
            "from it; to start a new run from these weights use the fine-tuning commands"
        )
    return ckpt
