"""The run directory's checkpoints during training: where a run resumes from, saving, pruning, best tracking, and
the repairs a killed run needs before it continues.

The files and their layout are :mod:`gpt2kit.checkpoint`'s; the checkpointer is the trainer's component that
orchestrates them with the optimizer and the ranks (which is why it sits in ``train/``, above ``distributed``
and the optimizers it restores).

:meth:`Checkpointer.save` is collective (every rank calls it, and a barrier follows the write). In the full format
only rank 0 writes (under FSDP gathering the full weights needs every rank). In the sharded format
(``--checkpoint-format sharded``) every rank writes its part into one temporary directory, rank 0 adds the
metadata and renames the directory once every rank has finished, so a kill at any moment leaves the previous
checkpoint as the latest complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch.nn as nn

from gpt2kit.checkpoint import (
    CHECKPOINT_DIR,
    ResumePoint,
    find_resume,
    is_sharded,
    list_step_checkpoints,
    load_state_dict_checked,
    model_state_dict,
    prune_step_checkpoints,
    remove_checkpoint,
    save_checkpoint,
    step_checkpoint_path,
    write_best,
    write_sharded_meta,
)
from gpt2kit.checkpoint.run_dir import best_record, remove_stale_temp_files
from gpt2kit.checkpoint.sharded import load_tensors, save_tensors
from gpt2kit.checkpoint.state_dict import TIED
from gpt2kit.distributed import DistEnv, barrier, gather_objects
from gpt2kit.errors import UserError, first_line
from gpt2kit.io import atomic_write_text, publish_dir
from gpt2kit.model.config import SHAPE_KEYS
from gpt2kit.train.optim import Optimizer, load_optimizer_state

SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "train_config.json"


class Checkpointer:
    """Saves and restores a run in ``run_dir`` (``checkpoints/step_XXXXXXXX.pt``, or ``.dcp`` directories when
    ``sharded``; ``best.json``, ``samples.jsonl``). Resume reads either format, whatever ``sharded`` says."""

    def __init__(self, run_dir: str | Path, keep_last: int, env: DistEnv, sharded: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.env = env
        self.sharded = sharded

    # ---- where the run starts

    def resume_point(self, spec: str | None, given: ResumePoint | None = None) -> ResumePoint | None:
        """``given``, else what ``--resume spec`` names; refuses a fresh start over an earlier run's checkpoints."""
        point = given if given is not None else (find_resume(self.run_dir, spec) if spec else None)
        steps = list_step_checkpoints(self.run_dir)
        if point is None and steps:
            # a fresh start would overwrite the earlier run's step_*.pt and best.json
            raise UserError(
                f"--out {self.run_dir}: already holds checkpoints of an earlier run (up to {steps[-1].name}); "
                "continue it with --resume auto, or choose a new --out"
            )
        return point

    def restore_model(self, point: ResumePoint, model: nn.Module, model_config: dict[str, Any]) -> None:
        """Load the checkpoint's weights into ``model`` (the pure module) after checking its shape matches; a
        sharded checkpoint's weights load later, with the optimizer state, into the wrapped model."""
        saved = point.checkpoint["model_config"]
        diff = [k for k in SHAPE_KEYS if saved.get(k) != model_config.get(k)]
        if diff:
            have = ", ".join(f"{k}={saved.get(k)}" for k in diff)
            want = ", ".join(f"{k}={model_config.get(k)}" for k in diff)
            raise UserError(
                f"--resume: {point.path} holds a model with {have}, but this run asks for {want}; resume with the "
                "same model settings (omit --preset/--n-layer/... to take them from the checkpoint) "
                "or choose a new --out"
            )
        if not is_sharded(point.path):
            load_state_dict_checked(model, point.checkpoint["model"], str(point.path))

    def restore_optimizer(self, point: ResumePoint, model: nn.Module, optimizer: Optimizer, fsdp: bool) -> None:
        """Load the optimizer state saved with the checkpoint (the same --optimizer is required; state saved under
        FSDP loads under any --parallel). A sharded checkpoint loads the weights too, each rank its own part, from
        any world size. Collective."""
        ckpt = point.checkpoint
        if is_sharded(point.path):
            try:
                load_tensors(point.path, model, optimizer, ckpt["optimizer_param_groups"])
            except (ValueError, KeyError, RuntimeError) as e:
                raise UserError(f"--resume: {point.path}: the sharded checkpoint does not fit this model and "
                                f"--optimizer, or a file of it is missing or damaged ({first_line(e, 300)})") from None
            return
        fmt = ckpt.get("optimizer_format", "index")
        if fmt == "index" and fsdp:
            raise UserError(f"--resume: {point.path} was saved with --parallel ddp (or one process); resume it with "
                            "--parallel ddp (a checkpoint saved under fsdp resumes under either)")
        try:
            # full state by parameter name: a sharded model and a plain one (fewer ranks) take it alike
            if fmt == "fqn":
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(model, optimizer, ckpt["optimizer"],
                                         options=StateDictOptions(full_state_dict=True))
            else:
                load_optimizer_state(optimizer, ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"--resume: {point.path}: optimizer state does not fit this model ({e})") from None

    def tidy(self, point: ResumePoint | None, step: int, best_val_loss: float | None) -> None:
        """Rank 0, before the first step: undo what a killed run left behind, so the run continues at ``step``."""
        if not self.env.is_main:
            return
        self._drop_samples_after(step)
        remove_stale_temp_files(self.run_dir)
        if point is not None and best_val_loss is not None:
            self._repair_best(point.path, step, best_val_loss, point.checkpoint.get("metrics") or [])
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        """Record the resolved settings in ``train_config.json`` (rank 0)."""
        if self.env.is_main:
            atomic_write_text(self.run_dir / CONFIG_FILE, json.dumps(config, indent=1) + "\n")

    # ---- during the run

    def append_samples(self, step: int, texts: list[str]) -> None:
        """Log generated samples to ``samples.jsonl`` (rank 0)."""
        if self.env.is_main and texts:
            with open(self.run_dir / SAMPLES_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "samples": list(texts)}) + "\n")

    def save(self, step: int, model: nn.Module, optimizer: Optimizer, fsdp: bool,
             payload: dict[str, Any], new_best_val_loss: float | None = None) -> Path:
        """Write ``step``'s checkpoint (``payload`` plus model and optimizer state), record it as the best when
        ``new_best_val_loss`` is given, prune old ones; collective (every rank calls it)."""
        if self.sharded:
            path = self._save_sharded(step, model, optimizer, payload)
        else:
            path = self._save_full(step, model, optimizer, fsdp, payload)
        if self.env.is_main:
            if new_best_val_loss is not None:
                write_best(self.run_dir, path, step, new_best_val_loss)
            prune_step_checkpoints(self.run_dir, self.keep_last)
        barrier(self.env)
        return path

    def _save_full(self, step: int, model: nn.Module, optimizer: Optimizer, fsdp: bool,
                   payload: dict[str, Any]) -> Path:
        """One file written by rank 0 (the state gathered to it under FSDP)."""
        model_sd, optim_sd, optim_fmt = _model_and_optimizer_state(model, optimizer, fsdp)
        path = step_checkpoint_path(self.run_dir, step)
        if self.env.is_main:
            full = {**payload, "model": model_sd, "optimizer": optim_sd, "optimizer_format": optim_fmt}
            try:
                save_checkpoint(path, full)
            except (OSError, RuntimeError) as e:  # a full disk: OSError, or RuntimeError from torch's zip writer
                raise self._write_failed(path, e) from None
        return path

    def _save_sharded(self, step: int, model: nn.Module, optimizer: Optimizer, payload: dict[str, Any]) -> Path:
        """Every rank writes its shards into ``.step_N.dcp.tmp.PID`` (PID: rank 0's, so a later run can tell
        when its writer is gone); after a barrier rank 0 writes the metadata and renames the directory."""
        path = step_checkpoint_path(self.run_dir, step, sharded=True)
        tmp = path.with_name(f".{path.name}.tmp.{gather_objects(os.getpid(), self.env)[0]}")
        try:
            groups = save_tensors(tmp, model, optimizer)
            barrier(self.env)  # DCP's coordinator already waits for every rank's files; said here, not assumed
            if self.env.is_main:
                write_sharded_meta(tmp, {**payload, "optimizer_param_groups": groups})
                if path.exists():  # a run resumed from an earlier step saves this step again
                    remove_checkpoint(path)
                publish_dir(tmp, path)
        except (OSError, RuntimeError) as e:
            if self.env.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise self._write_failed(path, e) from None
        return path

    def last_good(self) -> str:
        """Which checkpoint a stopped run can continue from, in words."""
        steps = list_step_checkpoints(self.run_dir)
        return f"the last good checkpoint is {steps[-1]}" if steps else "no checkpoint was written"

    # ---- helpers

    def _write_failed(self, path: Path, e: Exception) -> UserError:
        why = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        kept = list_step_checkpoints(self.run_dir)
        kept_msg = f"the previous checkpoint {kept[-1]} is intact" if kept else "no earlier checkpoint exists"
        return UserError(
            f"{path}: could not write the checkpoint ({why}; is the disk full?); "
            f"nothing was overwritten, {kept_msg}; free space, then continue with --resume auto"
        )

    def _drop_samples_after(self, step: int) -> None:
        """Keep ``samples.jsonl`` in step with the checkpoint the run continues from (a killed run logged past it)."""
        path = self.run_dir / SAMPLES_FILE
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by the kill
        atomic_write_text(path, "".join(keep))

    def _repair_best(self, path: Path, step: int, best_val: float, records: list[dict[str, Any]]) -> None:
        """Finish what a run killed between writing a new-best checkpoint and ``best.json`` left undone."""
        if path.parent != self.run_dir / CHECKPOINT_DIR:
            return
        recorded = (best_record(self.run_dir) or {}).get("val_loss")
        is_best = any(r.get("step") == step and r.get("val_loss") == best_val for r in records)
        if recorded != best_val and is_best:
            write_best(self.run_dir, path, step, best_val)
            prune_step_checkpoints(self.run_dir, self.keep_last)


def _model_and_optimizer_state(model: nn.Module, optimizer: Optimizer,
                               fsdp: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(model weights, optimizer state, optimizer format); collective under FSDP, full on rank 0."""
    if fsdp:
        # imported only under FSDP: torch.distributed.checkpoint takes seconds to import, at every start
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        sd = get_model_state_dict(model, options=opts)
        sd.pop(TIED, None)
        return sd, get_optimizer_state_dict(model, optimizer, options=opts), "fqn"
    return model_state_dict(model), optimizer.state_dict(), "index"
