"""``gpt2kit train``: pretrain GPT-2 from a preset plus flag overrides, on CPU, a GPU or many (torchrun)."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import HelpFormatter

HELP = "pretrain GPT-2 from scratch (one process, or data-parallel under torchrun)"
DESCRIPTION = """\
Pretrain GPT-2 on a prepared data directory (gpt2kit prepare). Start from a --preset (or the defaults
below, or the weights --init-from names); every setting below overrides it. The run directory (--out) receives
train_config.json, metrics.jsonl, samples.jsonl, TensorBoard logs and checkpoints/step_XXXXXXXX.pt (the last
--keep-last plus the best by val loss).

  gpt2kit train --preset demo-cpu --data data/sotu --out runs/demo
  torchrun --standalone --nproc_per_node=8 -m gpt2kit train --preset gpt2 --data data/edu --out runs/124m
  gpt2kit train --out runs/124m --resume auto --max-steps 20000     # continue with the saved settings
  gpt2kit train --init-from gpt2 --data data/shk --block-size 256 --lr 3e-5 --max-steps 200 --out runs/shk
  gpt2kit train --data data/mine --n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --epochs 3 --export-hf

On a new run without --schedule-steps, --max-steps is also the schedule's length (the lr decays by then); with
--schedule-steps it stops early, and a stopped run continues with --resume auto and a larger --max-steps.
SIGTERM/SIGINT save a checkpoint and exit 0.
A [default: ...] below is the value without a preset; see a preset's values with --print-config.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The preset, --print-config, and one flag per TrainConfig field."""
    from gpt2kit.cli.flags import add_flags
    from gpt2kit.train.config import TrainConfig
    from gpt2kit.train.presets import PRESET_ALIASES, PRESETS

    p.formatter_class = HelpFormatter  # keep the examples' line breaks
    presets = "\n".join(f"  {k:12s} {(f.__doc__ or '').strip()}" for k, f in PRESETS.items())
    p.description = f"{DESCRIPTION}\npresets:\n{presets}"
    p.add_argument("--preset", choices=[*PRESETS, *PRESET_ALIASES], default=argparse.SUPPRESS,
                   help="starting settings for a new run (without one: the [default: ...] values below); a resumed "
                        "run takes its saved settings")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="read settings from a JSON file as --print-config prints it; flags given here override it")
    add_flags(p, TrainConfig)


def run(args: argparse.Namespace) -> int:
    """Resolve the settings, train, print how it ended."""
    import json
    import os
    import sys

    # 2 MB pages for large CPU tensors spare first-touch page faults on fresh (N, V) tensors; torch reads this
    # once, at its first CPU allocation (none yet here)
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

    from gpt2kit.cli.flags import given_flags
    from gpt2kit.distributed import is_rank_zero
    from gpt2kit.train.config import TrainConfig
    from gpt2kit.train.pretrain import resolve_train_config, run_pretraining, summary_line
    from gpt2kit.train.resolve import read_config_file

    overrides = given_flags(args, TrainConfig)
    defaults = read_config_file(args.config, TrainConfig) if args.config else None
    # notices about the settings go to stdout with the run's other lines; under --print-config to stderr, so that
    # `--print-config > FILE` writes JSON alone
    notices = sys.stderr if args.print_config else sys.stdout
    cfg, point = resolve_train_config(getattr(args, "preset", None), overrides, defaults=defaults,
                                      log=lambda msg: print(msg, file=notices))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    result = run_pretraining(cfg, point)
    if is_rank_zero():
        print(summary_line(result, cfg.run.out))
    return 0
