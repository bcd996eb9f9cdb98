"""``gpt2kit demo``: the README's main command — the CPU pipeline on the corpus shipped in the package."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import HelpFormatter

HELP = "from the built-in corpus to a model you can talk to, on a CPU, offline (gpt2kit pipeline --size cpu)"
DESCRIPTION = """\
`gpt2kit pipeline builtin:sotu --size cpu --out runs/demo`, offline, in about 15 minutes on 2 CPU cores:
  1. prepare the built-in corpus (US State of the Union addresses, shipped in the package) into RUN/data,
  2. pretrain the demo-cpu preset on it into RUN/pretrain,
  3. instruction-tune it on the small instruction set shipped with gpt2kit into RUN/sft
     (it teaches the toy model the chat turn format, nothing more),
  4. score validation loss and bits per byte, sample and ask it three questions,
  5. export it (RUN/export: Hugging Face and GGUF),
  6. write RUN/report.md.
Running it again continues an interrupted demo where it stopped; --fresh starts over.
Afterwards: gpt2kit chat --checkpoint RUN, gpt2kit serve --checkpoint RUN (a chat page at http://127.0.0.1:8000/).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--out, --corpus, --fresh, --max-steps, --device."""
    p.formatter_class = HelpFormatter
    p.add_argument("--out", default="runs/demo", help="run directory (see gpt2kit pipeline --help for its layout)")
    p.add_argument("--corpus", default="sotu", choices=["sotu", "moby-dick"], help="built-in corpus")
    p.add_argument("--fresh", action="store_true", help="delete what an earlier demo wrote to OUT and start over")
    p.add_argument("--max-steps", type=int, default=None,
                   help="pretraining steps (default: the demo-cpu preset's 1,600); also the schedule's length")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")


def run(args: argparse.Namespace) -> int:
    """The pipeline with the demo's settings."""
    from gpt2kit.cli.pipeline import run as run_pipeline

    pipeline_args = argparse.Namespace(sources=[f"builtin:{args.corpus}"], out=args.out, size="cpu",
                                       device=args.device, fresh=args.fresh)
    if args.max_steps is not None:
        pipeline_args.pretrain_steps = args.max_steps
    return run_pipeline(pipeline_args)
