"""Settings and helpers shared by the training tests (a module of its own: tests/reliability has a conftest
too, and importing names from "conftest" depends on which of the two was imported last)."""

from __future__ import annotations

# a 2-layer, 32-wide model on 32-token windows: every step takes a few milliseconds on CPU
TINY = {
    "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 4, "dtype": "float32",
    "warmup_steps": 2, "schedule_steps": 50, "lr": 1e-3, "eval_batches": 2, "samples": 0,
    "progress": False, "tensorboard": False, "log_every": 1, "eval_every": 0, "save_every": 1000,
}
TINY_FLAGS = [
    "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
    "--dtype", "float32", "--warmup-steps", "2", "--schedule-steps", "50", "--lr", "1e-3", "--eval-batches", "2",
    "--samples", "0", "--no-progress", "--no-tensorboard", "--log-every", "1", "--optimizer", "adamw",
    "--lr-schedule", "cosine",
]


def losses(records, key="loss"):
    """The ``key`` values of metrics records, in step order."""
    return [r[key] for r in sorted(records, key=lambda r: r["step"]) if r.get(key) is not None]
