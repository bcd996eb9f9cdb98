"""``gpt2kit pipeline``: from a text to a model you can talk to, in one resumable command."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import HelpFormatter

HELP = "prepare, pretrain, instruction-tune, evaluate, export and report in one resumable command"
DESCRIPTION = """\
From your text to a model you can talk to: every stage is the library function of its own command.
  1. tokenizer  --tokenizer train: a --vocab-size BPE vocabulary learned from SOURCE into RUN/tokenizer
                (gpt2kit tokenizer train); default gpt2: GPT-2's 50,257 tokens
  2. prepare  SOURCE into RUN/data                              (gpt2kit prepare)
  3. pretrain on it into RUN/pretrain                           (gpt2kit train --preset ...)
  4. sft      instruction-tune into RUN/sft on --sft FILE, or on the small set shipped with gpt2kit
              (builtin:chat: it teaches the chat turn format, nothing more)   (gpt2kit finetune sft)
  5. eval     validation loss and bits per byte of both models, --eval tasks, samples, chat answers
  6. export   RUN/export/hf (transformers) and RUN/export/model.gguf (llama.cpp, Ollama)
  7. report   RUN/report.md: settings, hardware, stage times, curves, figures, samples, how to talk to it

Sizes (--size; each a preset of every stage, printed at the start):
  cpu   a laptop: demo-cpu (4 layers, 96 wide), about 15 minutes on 2 CPU cores (the default without a GPU)
  gpu   one GPU: GPT-2 124M on 2.5B tokens, a few hours (the default with CUDA)
  node  8 GPUs: the GPT-2 124M reproduction (10B tokens), under
        torchrun --standalone --nproc_per_node=8 -m gpt2kit pipeline SOURCE --size node --out RUN

Run the same command again after a kill or Ctrl-C and it continues in the stage where it stopped (finished
stages are recorded in RUN/pipeline.json and not redone). RUN is itself a --checkpoint for chat, serve,
sample, eval and export: the instruction-tuned model.

  gpt2kit pipeline the_verdict.txt --out runs/v
  gpt2kit pipeline builtin:sotu --out runs/sotu --pretrain-steps 400 --sft my_instructions.jsonl
  gpt2kit pipeline moby-dick.txt --out runs/md --tokenizer train --vocab-size 8192
  gpt2kit pipeline data/*.txt --out runs/mine --pretrain-args "--n-layer 6 --n-embd 192" --sft-args "--lora-rank 8"
  gpt2kit chat --checkpoint runs/v
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per PipelineConfig setting, and --fresh."""
    from gpt2kit.cli.flags import add_flags
    from gpt2kit.pipeline.config import PipelineConfig

    p.formatter_class = HelpFormatter
    add_flags(p, PipelineConfig)
    p.add_argument("--fresh", action="store_true",
                   help="delete what an earlier pipeline wrote to RUN (data, pretrain, sft, export, report) first")


def stage_flags(name: str, text: str) -> dict:
    """The flat settings a stage's own flags (``--pretrain-args "..."``) give, parsed by that command's flags."""
    import difflib
    import shlex

    from gpt2kit.cli.flags import add_flags, given_flags
    from gpt2kit.data.prepare import PrepareConfig
    from gpt2kit.finetune.config import SFTConfig
    from gpt2kit.train.config import TrainConfig

    cls, command, fixed = {
        "prepare": (PrepareConfig, "gpt2kit prepare", ("sources", "out_dir", "tokenizer")),
        "pretrain": (TrainConfig, "gpt2kit train", ("out", "data", "resume")),
        "sft": (SFTConfig, "gpt2kit finetune sft", ("out", "checkpoint", "train", "resume")),
    }[name]
    from gpt2kit.errors import UserError

    class StageParser(argparse.ArgumentParser):
        def error(self, message: str):  # one line naming the pipeline's flag and the command whose flags it takes
            taken = {"--" + f.replace("_", "-") for f in fixed}
            close = [c for word in message.split() if word.startswith("--") and word not in taken
                     for c in difflib.get_close_matches(word, self._option_string_actions, n=1)]
            guess = f"; did you mean {' or '.join(close)}?" if close else ""
            where = f"RUN sets {', '.join('--' + f.replace('_', '-') for f in fixed)} itself; " if fixed else ""
            raise UserError(f"--{name}-args: {message}{guess} ({where}it takes the flags of `{command} --help`)")

    parser = StageParser(prog=command, add_help=False)
    add_flags(parser, cls, skip=fixed)
    return given_flags(parser.parse_args(shlex.split(text)), cls)


def run(args: argparse.Namespace) -> int:
    """Resolve the settings (a rerun continues), run the stages not yet done."""
    import os

    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # see gpt2kit/cli/train.py

    from gpt2kit.cli.flags import given_flags
    from gpt2kit.distributed import is_rank_zero
    from gpt2kit.pipeline.config import PipelineConfig
    from gpt2kit.pipeline.run import StageFlags, resolve_pipeline, run_pipeline

    log = print if is_rank_zero() else (lambda msg: None)
    stages = {"prepare_args": "prepare", "pretrain_args": "pretrain", "sft_args": "sft"}
    cfg, state = resolve_pipeline(given_flags(args, PipelineConfig), fresh=args.fresh and is_rank_zero(), log=log,
                                  normalize=lambda key, value: stage_flags(stages[key], value) if key in stages
                                  else value)
    flags = StageFlags(prepare=stage_flags("prepare", cfg.prepare_args),
                       pretrain=stage_flags("pretrain", cfg.pretrain_args), sft=stage_flags("sft", cfg.sft_args))
    run_pipeline(cfg, state, flags, log=log)
    return 0
