"""``gpt2kit plot RUN_DIR``: loss and learning-rate curves of a training run as PNG files."""

from __future__ import annotations

import argparse

HELP = "plot a run's loss, learning-rate, bits-per-byte and HellaSwag curves (PNG) from its metrics.jsonl"
DESCRIPTION = (
    "Read RUN_DIR/metrics.jsonl (written by `gpt2kit train`) and write loss.png (training loss per logged "
    "step, validation loss where measured), lr.png (the learning-rate schedule as run), bpb.png (validation "
    "bits per byte, val_bpb: comparable across vocabularies) when the run recorded it and, when the run "
    "scored HellaSwag (--hellaswag), hellaswag.png (acc_norm and acc per evaluation); --metric KEY draws any "
    "other recorded metric as KEY.png. Needs matplotlib (pip install 'gpt2kit[viz]')."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """RUN_DIR and --out."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by gpt2kit train")
    p.add_argument("--out", default=None, help="directory for the PNG files (default: RUN_DIR)")
    p.add_argument("--log-scale", "--logy", dest="log_scale", action="store_true",
                   help="loss on a logarithmic axis (the early drop and the late slope both visible)")
    p.add_argument("--metric", action="append", default=[], metavar="KEY",
                   help="also draw this metrics.jsonl key per step as KEY.png (repeatable): val_bpb (bpb.png), "
                        "grad_norm, tokens_per_s, mfu, ...")


def run(args: argparse.Namespace) -> int:
    """Write the PNGs and print their paths."""
    from gpt2kit.train.plot import plot_run

    for path in plot_run(args.run_dir, args.out, log_scale=args.log_scale, metrics=args.metric):
        print(f"wrote {path}")
    return 0
