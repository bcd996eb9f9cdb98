"""``RUN/pipeline.json``: the pipeline's settings, which stages finished, their times and what they produced.

Written atomically after every change, so a kill at any moment leaves the record of the last finished stage.
Its ``final`` names the sub-directory holding the model a ``--checkpoint RUN`` means (see
:func:`gpt2kit.checkpoint.run_dir.pipeline_model`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gpt2kit.checkpoint.run_dir import PIPELINE_FILE
from gpt2kit.errors import UserError
from gpt2kit.io import atomic_write_text

STAGES = ("tokenizer", "prepare", "pretrain", "sft", "eval", "export", "report")
"""The stages, in order."""
KIND = "gpt2kit-pipeline"
VERSION = 1


class PipelineState:
    """What ``RUN/pipeline.json`` holds, and its atomic updates."""

    def __init__(self, run_dir: str | Path, record: dict[str, Any]) -> None:
        self.path = Path(run_dir) / PIPELINE_FILE
        self.record = record

    @classmethod
    def new(cls, run_dir: str | Path, config: dict[str, Any], size: str) -> PipelineState:
        return cls(run_dir, {"kind": KIND, "format_version": VERSION, "config": config, "size": size,
                             "final": None, "stages": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})

    @classmethod
    def read(cls, run_dir: str | Path) -> PipelineState | None:
        """The saved state, None when ``run_dir`` has none; one clear line when it is not a pipeline record."""
        path = Path(run_dir) / PIPELINE_FILE
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable ({e}); use --fresh to start the pipeline over") from None
        if not isinstance(record, dict) or record.get("kind") != KIND or not isinstance(record.get("stages"), dict):
            raise UserError(f"{path}: not a gpt2kit pipeline record; use another --out, or --fresh to start over")
        if record.get("format_version", 0) > VERSION:
            raise UserError(f"{path}: written by a newer gpt2kit (format {record['format_version']}); upgrade gpt2kit")
        if isinstance(record.get("config"), dict) and "tokenizer" not in record["config"]:
            # a pipeline started before the tokenizer stage existed prepared its data with GPT-2's vocabulary
            record["config"]["tokenizer"] = "gpt2"
            if record["stages"].get("prepare", {}).get("status") == "done":
                record["stages"].setdefault("tokenizer", {"status": "done", "seconds": 0.0, "tokenizer": "gpt2"})
        return cls(run_dir, record)

    @property
    def config(self) -> dict[str, Any]:
        return self.record["config"]

    def done(self, stage: str) -> bool:
        return self.record["stages"].get(stage, {}).get("status") == "done"

    def info(self, stage: str) -> dict[str, Any]:
        """What ``stage`` recorded (empty before it ran)."""
        return self.record["stages"].get(stage, {})

    def begin(self, stage: str) -> None:
        entry = self.record["stages"].setdefault(stage, {"seconds": 0.0})
        entry["status"] = "running"
        entry["attempts"] = entry.get("attempts", 0) + 1
        self.save()

    def finish(self, stage: str, seconds: float, status: str = "done", **info: Any) -> None:
        """Record ``stage``'s outcome; its time adds to earlier attempts'."""
        entry = self.record["stages"].setdefault(stage, {"seconds": 0.0})
        entry.update(info, status=status, seconds=round(entry.get("seconds", 0.0) + seconds, 1))
        self.save()

    def redo_from(self, stage: str) -> list[str]:
        """Mark ``stage`` and every later finished stage as not done; returns those that were done."""
        later = STAGES[STAGES.index(stage):]
        undone = [s for s in later if self.done(s)]
        for s in undone:
            self.record["stages"][s]["status"] = "redo"
        self.save()
        return undone

    def set_final(self, sub_dir: str) -> None:
        """Point ``--checkpoint RUN`` at ``RUN/sub_dir``."""
        self.record["final"] = sub_dir
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.record, indent=1) + "\n")
