"""What a training checkpoint holds beyond the weights: the run's counters and the random states.

Every value here is plain data or tensors, so checkpoints load with ``torch.load(weights_only=True)``
(through :func:`gpt2kit.checkpoint.read_checkpoint`): RNG states of python, numpy, torch and CUDA are
converted to lists, ints and tensors; optimizer state is ``Optimizer.state_dict()`` (tensors and numbers).
Where a run resumes from is :func:`gpt2kit.checkpoint.find_resume`.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gpt2kit.device import cuda_rng_states, mps_rng_state, set_cuda_rng_states, set_mps_rng_state


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch, CUDA (and, on a machine with MPS, MPS) random states as plain data
    and tensors."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    mps = mps_rng_state()
    return {
        "python": {"version": int(version), "state": [int(x) for x in mt], "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda_rng_states(),
        **({"mps": mps} if mps is not None else {}),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    set_cuda_rng_states(state.get("cuda") or [])
    set_mps_rng_state(state.get("mps"))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class RunState:
    """The counters a run carries from step to step and across a resume (saved under these names)."""

    step: int = 0
    """Optimizer steps done."""
    skipped_steps: int = 0
    """Updates skipped for a NaN/inf loss or gradient norm (--on-nan skip) or a float16 loss-scale overflow."""
    tokens_seen: int = 0
    """Training tokens over all ranks so far."""
    train_seconds: float = 0.0
    """Wall time spent in training steps (evaluation and saving excluded)."""
    best_val_loss: float | None = None
    """The lowest validation loss measured so far."""

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint."""
        return dataclasses.asdict(self)

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint's counters (absent ones, from older checkpoints, start at zero)."""
        self.step = int(ckpt["step"])
        self.skipped_steps = int(ckpt.get("skipped_steps", 0))
        self.tokens_seen = int(ckpt.get("tokens_seen", 0))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        self.best_val_loss = ckpt.get("best_val_loss")
