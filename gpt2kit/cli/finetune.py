"""``gpt2kit finetune classify|sft``: fine-tune a checkpoint or GPT-2 weights on the shared training loop."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import HelpFormatter

HELP = "fine-tune a checkpoint: text classification (classify) or instruction following (sft), optionally with LoRA"
DESCRIPTION = """\
Fine-tune any --checkpoint (a gpt2kit run directory or .pt file, a Hugging Face GPT-2 directory, or a hub
name such as gpt2) on the training loop of `gpt2kit train`: the same progress bar, metrics.jsonl,
checkpoints (last --keep-last plus the best by validation loss), SIGTERM/SIGINT saving and --resume.

  gpt2kit finetune classify --checkpoint gpt2 --train train.csv --val val.csv --test test.csv --out runs/spam
  gpt2kit finetune sft --checkpoint gpt2 --train alpaca.json --val val.jsonl --out runs/sft --lora-rank 8
  gpt2kit finetune sft --out runs/sft --resume auto            # continue an interrupted run with its settings

Then: `gpt2kit classify --checkpoint runs/spam --text "..."`, `gpt2kit sample --checkpoint runs/sft
--instruction "..."`, `gpt2kit export --checkpoint runs/sft --out hf/` (LoRA adapters merged).
See docs/finetune.md for the data formats, templates and what happens to over-long examples.
"""

CLASSIFY_DESCRIPTION = """\
Replace the LM head by a classification head over the hidden state of each text's last real token and
train on a CSV/TSV/JSONL/JSON file with text and label columns (--text-column, --label-column). Labels are
the sorted set of the training file's labels (or --labels). Accuracy and macro-F1 on --val (without it, on the
share of --train that --val-fraction holds out) are logged every
epoch; at the end the best checkpoint (by val loss) is scored on --test and RUN/results.json is written
(val_accuracy per epoch, test_accuracy, test_macro_f1).

  gpt2kit finetune classify --checkpoint gpt2 --train train.csv --val val.csv --test test.csv --out runs/spam \\
      --epochs 3 --lr 5e-5 --batch-size 8 --max-length 128 --train-last-blocks 2
"""

SFT_DESCRIPTION = """\
Instruction tuning on Alpaca records (instruction, optional input, output; .json list or .jsonl) and/or chat
records ({"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}). Prompts are rendered with
--template (alpaca by default) and only response tokens are trained on (prompt and padding targets -100).
--pack fills rows of --max-length tokens with several examples that cannot see each other. The template is
stored in every checkpoint, so `gpt2kit sample --checkpoint RUN --instruction "..."` prompts the same way.

  gpt2kit finetune sft --checkpoint gpt2 --train alpaca.json --val val.json --out runs/sft --epochs 2 --lr 2e-5
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Two subcommands, each with one flag per field of its config dataclass."""
    from gpt2kit.cli.flags import add_flags
    from gpt2kit.finetune.config import ClassifyConfig, SFTConfig

    p.formatter_class = HelpFormatter
    p.description = DESCRIPTION
    sub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for name, cls, desc, help_text in (
        ("classify", ClassifyConfig, CLASSIFY_DESCRIPTION, "train a text classifier (CSV/JSONL text + label)"),
        ("sft", SFTConfig, SFT_DESCRIPTION, "instruction-tune on Alpaca or chat records"),
    ):
        sp = sub.add_parser(name, help=help_text, description=desc, formatter_class=HelpFormatter)
        sp.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
        add_flags(sp, cls, help=cls.HELP)


def run(args: argparse.Namespace) -> int:
    """Resolve the settings, fine-tune, print how it ended."""
    import json

    from gpt2kit.cli.flags import given_flags
    from gpt2kit.distributed import is_rank_zero
    from gpt2kit.finetune.config import ClassifyConfig, SFTConfig
    from gpt2kit.finetune.run import resolve_finetune_config, run_classify, run_sft

    cls = ClassifyConfig if args.task == "classify" else SFTConfig
    main_rank = is_rank_zero()
    cfg, point = resolve_finetune_config(cls, given_flags(args, cls),
                                         log=print if main_rank else (lambda msg: None))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    results = (run_classify if args.task == "classify" else run_sft)(cfg, point)
    if main_rank and results:
        keys = ("test_accuracy", "test_macro_f1", "val_accuracy", "val_macro_f1", "val_loss", "best_val_loss")
        shown = ", ".join(f"{k} {results[k]:.4f}" for k in keys if isinstance(results.get(k), float))
        state = "interrupted at" if results.get("interrupted") else "done:"
        print(f"{state} step {results['steps']}" + (f", {shown}" if shown else "") + f" (run dir {cfg.run.out})")
    return 0
