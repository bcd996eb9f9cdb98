"""``gpt2kit eval TASK``: validation loss/perplexity, HellaSwag and LAMBADA for any checkpoint.

The command parses, calls :func:`gpt2kit.eval.run.run_eval` (which loads the model and scores it with the
scorers the trainer uses), prints a table (or, with ``--json``, one JSON object and nothing else on stdout)
and saves the record beside the checkpoint. Under ``torchrun`` the examples are split over the ranks and
rank 0 reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt2kit.cli.common import (
    DefaultsFormatter,
    add_checkpoint_argument,
    add_device_arguments,
    add_quantize_argument,
    positive_int,
)
from gpt2kit.errors import UserError

HELP = "evaluate a model: loss/perplexity, HellaSwag, LAMBADA"
DESCRIPTION = (
    "Evaluate a gpt2kit checkpoint or GPT-2 weights (Hugging Face directory or hub name) the same way: "
    "`loss` (mean next-token loss, perplexity and bits per byte of a prepared split or a text/JSONL file), "
    "`hellaswag` (acc, acc_norm, acc_norm_bytes) or `lambada` (last-word accuracy and perplexity). "
    "Prints a table, or one JSON object with --json; the results are also saved as JSON beside the checkpoint "
    "(or at --out). Run under torchrun to split the work over several GPUs. "
    "See `gpt2kit eval TASK --help`."
)

_FMT = DefaultsFormatter


def _common(p: argparse.ArgumentParser, batch_size: int, limit_help: str) -> None:
    add_checkpoint_argument(p)
    p.add_argument("--limit", type=positive_int, default=None, help=limit_help)
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="examples (or windows) per forward pass; changes speed and memory, not the scores")
    add_device_arguments(p)
    add_quantize_argument(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with the metrics and settings on stdout (progress stays on stderr)")
    p.add_argument("--out", default=None,
                   help="write the results JSON here instead of beside the checkpoint "
                        "(<checkpoint>.eval-TASK.json, or eval-TASK.json inside a model directory)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="task", metavar="TASK", required=True)

    loss = sub.add_parser(
        "loss", formatter_class=_FMT, help="mean next-token loss, perplexity and bits per byte",
        description=(
            "Mean next-token loss, perplexity = exp(loss), and bits per byte = total nats / ln 2 / UTF-8 bytes "
            "scored (comparable across tokenizers). --data is a prepared data directory (scored in consecutive "
            "windows of block_size tokens, as the trainer's validation loss), or a text file (one document) or "
            "JSONL file (one document per line, field --text-field). Files are scored with a sliding window as in "
            "Hugging Face's perplexity guide: windows of block_size tokens start every --stride tokens and each "
            "token is scored once, with at least block_size - stride tokens of context; each document starts "
            "after <|endoftext|>, so its first token is scored too."
        ),
    )
    loss.add_argument("--data", required=True,
                      help="a prepared data directory (gpt2kit prepare), or a .txt / .jsonl file")
    loss.add_argument("--split", default="val", help="split of a prepared data directory")
    loss.add_argument("--text-field", default=None,
                      help="JSONL field holding the text (default 'text'; giving it reads any file as JSONL)")
    loss.add_argument("--stride", type=positive_int, default=None,
                      help="sliding-window step for text/JSONL files; default half the block size "
                           "(smaller: more context per token, slower; = block size: independent chunks)")
    loss.add_argument("--block-size", type=positive_int, default=None,
                      help="window length in tokens; default (and at most) the model's block_size")
    _common(loss, 8, "prepared split: score the first N batches; text/JSONL: the first N documents")

    hs = sub.add_parser(
        "hellaswag", formatter_class=_FMT, help="HellaSwag accuracy (acc, acc_norm, acc_norm_bytes)",
        description=(
            "HellaSwag, completion style: the model reads ctx + ' ' + ending and only the ending is scored. "
            "acc picks the ending with the lowest total loss; acc_norm the lowest mean loss per token "
            "(build-nanogpt); acc_norm_bytes the highest log-likelihood per UTF-8 byte of the ending "
            "(lm-evaluation-harness acc_norm). Contexts longer than the model's block_size are left-truncated. "
            "Without --data the official validation file is downloaded once into ~/.cache/gpt2kit/hellaswag "
            "(or $GPT2KIT_CACHE). GPT-2 124M scores about 29.5% acc_norm."
        ),
    )
    hs.add_argument("--data", default=None,
                    help="HellaSwag JSONL file (official format: ctx, endings, label); default: the official "
                         "validation set, downloaded and cached")
    hs.add_argument("--cache-dir", default=None, help="where the downloaded file is kept")
    _common(hs, 8, "score only the first N examples")

    lam = sub.add_parser(
        "lambada", formatter_class=_FMT, help="LAMBADA last-word accuracy and perplexity",
        description=(
            "LAMBADA: each passage's last word (after the last space) must be reproduced by greedy decoding, every "
            "token of it (acc). perplexity = exp(mean negative log-likelihood of the last word per passage); "
            "token_perplexity divides by its tokens. Without --data OpenAI's LAMBADA test file (the one GPT-2 "
            "was evaluated on) is downloaded once into ~/.cache/gpt2kit/lambada (or $GPT2KIT_CACHE)."
        ),
    )
    lam.add_argument("--data", default=None, help="JSONL file with a text field per line; default: OpenAI's test set")
    lam.add_argument("--text-field", default="text", help="JSONL field holding the passage")
    lam.add_argument("--cache-dir", default=None, help="where the downloaded file is kept")
    _common(lam, 16, "score only the first N passages")


def run(args: argparse.Namespace) -> int:
    from gpt2kit.checkpoint import resolve_checkpoint
    from gpt2kit.cli.common import resolve_dtype
    from gpt2kit.eval.results import format_table, to_json
    from gpt2kit.eval.run import METRICS, EvalOptions, run_eval

    opts = EvalOptions(
        task=args.task, checkpoint=args.checkpoint, device=args.device, dtype=resolve_dtype(args.dtype),
        batch_size=args.batch_size, limit=args.limit, data=args.data, split=getattr(args, "split", "val"),
        block_size=getattr(args, "block_size", None), stride=getattr(args, "stride", None),
        text_field=getattr(args, "text_field", None), cache_dir=getattr(args, "cache_dir", None),
        quantize=args.quantize,
    )
    result = run_eval(opts)
    if result is None:  # not rank 0
        return 0
    record, loaded = result
    record["results_file"] = _save(record, args, resolve_checkpoint(args.checkpoint)[0], loaded.source)
    if args.json:
        print(to_json(record), flush=True)
    else:
        print(format_table(record, METRICS[args.task]), flush=True)
    if record["results_file"]:
        print(f"results written to {record['results_file']}", file=sys.stderr)
    return 0


def _save(record: dict, args, checkpoint_kind: str, source: str) -> str | None:
    """Write the results JSON; beside the checkpoint a failure is a warning, at --out an error."""
    from gpt2kit.eval.results import default_results_path, write_record

    if args.out:
        try:
            return str(write_record(record, args.out))
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write the results ({e.strerror or e})") from None
    name = args.task
    if args.task == "loss":
        name += "-" + Path(args.data.rstrip("/")).name + (f"-{args.split}" if Path(args.data).is_dir() else "")
    path = default_results_path(checkpoint_kind, source, args.checkpoint, name)
    try:
        return str(write_record(record, path))
    except OSError as e:
        print(f"warning: could not write results to {path} ({e.strerror or e}); use --out FILE", file=sys.stderr)
        return None
