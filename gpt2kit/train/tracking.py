"""Weights & Biases tracking (``--wandb PROJECT``): what ``metrics.jsonl`` holds, the resolved config and samples.

Tracking never stops training: when the run cannot be started (no network, no login, a service error) or a
later call fails, one line says so and training goes on without it. ``WANDB_MODE=offline`` keeps the run in
``RUN/wandb`` for a later ``wandb sync``. The W&B run id is kept in ``RUN/wandb_run_id`` so a resumed run
continues the same W&B run. ``wandb`` is an optional dependency (``pip install 'gpt2kit[wandb]'``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpt2kit.errors import UserError
from gpt2kit.train.metrics import metric_tag

RUN_ID_FILE = "wandb_run_id"
INIT_TIMEOUT_S = 30.0
"""How long starting a run may wait for the service before training goes on without it."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class WandbTracker:
    """One W&B run mirroring a training run; every failure turns it off with one message."""

    def __init__(self, project: str, *, run_name: str | None = None, config: dict[str, Any] | None = None,
                 run_dir: str | Path | None = None, say: Callable[[str], None] = _stderr) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError("--wandb: the wandb package is not installed; pip install 'gpt2kit[wandb]' "
                            "(or drop --wandb)") from None
        self._wandb = wandb
        self._say = say
        self._run = None
        self._samples: list[list[Any]] = []
        run_dir = Path(run_dir) if run_dir is not None else None
        id_file = run_dir / RUN_ID_FILE if run_dir is not None else None
        run_id = id_file.read_text().strip() if id_file is not None and id_file.is_file() else None
        try:
            if run_dir is not None:
                run_dir.mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(project=project, name=run_name, config=config or {},
                                   dir=str(run_dir) if run_dir is not None else None, id=run_id,
                                   resume="allow" if run_id else None,
                                   settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S))
            if id_file is not None and getattr(self._run, "id", None):
                id_file.write_text(str(self._run.id) + "\n")
        except Exception as e:  # wandb raises many types (network, auth, usage); none may stop training
            self._fail("could not start a run", e)

    @property
    def active(self) -> bool:
        """Whether records still go to W&B."""
        return self._run is not None

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record: its numbers at its ``step``."""
        if self._run is None:
            return
        data = {metric_tag(k): v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                and not isinstance(v, bool) and math.isfinite(v)}
        try:
            self._run.log(data, step=int(record["step"]))
        except Exception as e:  # see __init__
            self._fail("logging failed", e)

    def log_samples(self, step: int, texts: list[str]) -> None:
        """The samples generated at ``step``, as one table that grows over the run."""
        if self._run is None or not texts:
            return
        self._samples += [[step, i, t] for i, t in enumerate(texts)]
        try:
            table = self._wandb.Table(columns=["step", "sample", "text"], data=self._samples)
            self._run.log({"samples": table}, step=int(step))
        except Exception as e:  # see __init__
            self._fail("logging samples failed", e)

    def close(self) -> None:
        """Finish the W&B run (uploads what is left, or closes the offline files)."""
        if self._run is None:
            return
        try:
            self._run.finish()
        except Exception as e:  # see __init__
            self._fail("finishing the run failed", e)
        self._run = None

    def _fail(self, what: str, e: Exception) -> None:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        self._say(f"warning: wandb: {what} ({reason}); training continues without W&B logging")
        self._run = None
