"""``gpt2kit plot RUN_DIR``: loss and learning-rate curves of a training run as PNG files."""

from __future__ import annotations

import argparse

HELP = "plot a run's loss, learning-rate and HellaSwag curves (PNG) from its metrics.jsonl"
DESCRIPTION = (
    "Read RUN_DIR/metrics.jsonl (written by `gpt2kit train`) and write loss.png (training loss per logged "
    "step, validation loss where measured), lr.png (the learning-rate schedule as run) and, when the run "
    "scored HellaSwag (--hellaswag), hellaswag.png (acc_norm and acc per evaluation). Needs matplotlib "
    "(pip install 'gpt2kit[viz]')."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """RUN_DIR and --out."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by gpt2kit train")
    p.add_argument("--out", default=None, help="directory for the PNG files (default: RUN_DIR)")
    p.add_argument("--log-scale", "--logy", dest="log_scale", action="store_true",
                   help="loss on a logarithmic axis (the early drop and the late slope both visible)")


def run(args: argparse.Namespace) -> int:
    """Write the PNGs and print their paths."""
    from gpt2kit.train.plot import plot_run

    for path in plot_run(args.run_dir, args.out, log_scale=args.log_scale):
        print(f"wrote {path}")
    return 0
