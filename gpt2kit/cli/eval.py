"""``gpt2kit eval TASK``: loss/perplexity, HellaSwag, LAMBADA, the harness's multiple-choice tasks, a suite.

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
    nonneg_int,
    positive_int,
)
from gpt2kit.errors import UserError

HELP = "evaluate a model: loss/perplexity, HellaSwag, LAMBADA, ARC, MMLU, PIQA, Winogrande, a suite"
DESCRIPTION = (
    "Evaluate a gpt2kit checkpoint or GPT-2 weights (Hugging Face directory or hub name) the same way: "
    "`loss` (mean next-token loss, perplexity and bits per byte of a prepared split or a text/JSONL file), "
    "`hellaswag` (acc, acc_norm, acc_norm_bytes), `lambada` (last-word accuracy and perplexity), "
    "`arc-easy`, `arc-challenge`, `mmlu`, `piqa`, `winogrande` (defined as lm-evaluation-harness defines them) "
    "or `suite` (several of them and one centred mean). "
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
            "scored (comparable across tokenizers; `bpb` and `bits_per_byte` in --json). Text is encoded with the "
            "model's own tokenizer (a trained vocabulary travels in its checkpoint). --data is a prepared data "
            "directory in that same tokenizer (scored in consecutive "
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

    hs = _downloaded_task(
        sub, "hellaswag", "HellaSwag accuracy (acc, acc_norm, acc_norm_bytes)", (
            "HellaSwag, completion style: the model reads ctx + ' ' + ending and only the ending is scored. "
            "acc picks the ending with the lowest total loss; acc_norm the lowest mean loss per token "
            "(build-nanogpt); acc_norm_bytes the highest log-likelihood per UTF-8 byte of the ending "
            "(lm-evaluation-harness acc_norm). Contexts longer than the model's block_size are left-truncated. "
            "Without --data the official validation file is downloaded once into ~/.cache/gpt2kit/hellaswag "
            "(or $GPT2KIT_CACHE). GPT-2 124M scores about 29.5% acc_norm."
        ),
        data_help="HellaSwag JSONL file (official format: ctx, endings, label); default: the official "
                  "validation set, downloaded and cached",
    )
    _common(hs, 8, "score only the first N examples")

    lam = _downloaded_task(
        sub, "lambada", "LAMBADA last-word accuracy and perplexity", (
            "LAMBADA: each passage's last word (after the last space) must be reproduced by greedy decoding, every "
            "token of it (acc). perplexity = exp(mean negative log-likelihood of the last word per passage); "
            "token_perplexity divides by its tokens. Without --data OpenAI's LAMBADA test file (the one GPT-2 "
            "was evaluated on) is downloaded once into ~/.cache/gpt2kit/lambada (or $GPT2KIT_CACHE)."
        ),
        data_help="JSONL file with a text field per line; default: OpenAI's test set",
    )
    lam.add_argument("--text-field", default="text", help="JSONL field holding the passage")
    _common(lam, 16, "score only the first N passages")
    _add_choice_tasks(sub)
    _add_suite(sub)


def _downloaded_task(sub, name: str, help: str, description: str, data_help: str) -> argparse.ArgumentParser:
    """A task's parser with --data (default: the official file, downloaded once) and --cache-dir."""
    p = sub.add_parser(name, formatter_class=_FMT, help=help, description=description)
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("--cache-dir", default=None, help="where the downloaded file is kept")
    return p


_PROMPTS = {
    "arc-easy": "'Question: {question}\\nAnswer:' then ' ' + each choices.text; gold choices.label.index(answerKey). "
                "Rows: the allenai/ai2_arc ARC-Easy rows (id, question, choices {text, label}, answerKey); "
                "default: its test split",
    "arc-challenge": "as arc-easy, on the ARC-Challenge rows (default: its test split)",
    "mmlu": "'The following are multiple choice questions (with answers) about {subject}.\\n\\n' + "
            "question.strip() + '\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:' then ' A' .. ' D'; 0-shot as the "
            "harness's default, or --num-fewshot N with the first N dev rows of the subject (the harness's "
            "first_n). Rows: cais/mmlu (question, subject, choices, answer); default: the 'all' test split",
    "piqa": "'Question: {goal}\\nAnswer:' then ' ' + sol1 / sol2; gold label. Rows: goal, sol1, sol2, label; "
            "default: the validation split",
    "winogrande": "partial evaluation: the sentence up to the '_' filled with option1 / option2 is the context "
                  "and ' ' + the rest of the sentence is scored after each; gold answer ('1' or '2'). Rows: "
                  "sentence, option1, option2, answer; default: winogrande_xl validation",
}


def _add_choice_tasks(sub) -> None:
    from gpt2kit.eval.tasks import TASKS

    for name, task in TASKS.items():
        norm = "; acc_norm divides the log-likelihood by the choice's length in characters" \
            if "acc_norm" in task.metrics else ""
        t = sub.add_parser(
            name, formatter_class=_FMT, help=f"{task.harness} as lm-evaluation-harness defines it",
            description=(
                f"lm-evaluation-harness's {task.harness}: {_PROMPTS[name]}. acc picks the choice with the highest "
                f"log-likelihood{norm}. Prompts longer than the model's context are left-truncated and counted "
                "(truncated). --data takes the Hugging Face dataset's rows as JSONL or Parquet; without it the "
                "split is fetched from the hub once (needs `datasets`) and cached in ~/.cache/gpt2kit/tasks."
            ),
        )
        t.add_argument("--data", default=None, help="the dataset's rows (.jsonl or .parquet); default: the hub split")
        t.add_argument("--cache-dir", default=None, help="where the downloaded rows are kept")
        if task.fewshot_group is not None:
            t.add_argument("--num-fewshot", type=nonneg_int, default=0, help="answered examples before each question")
            t.add_argument("--fewshot-data", default=None, help="the rows few-shot examples come from (dev split)")
        _common(t, 8, "score only the first N questions")


def _add_suite(sub) -> None:
    from gpt2kit.eval.tasks import SUITE_METRIC, SUITES

    s = sub.add_parser(
        "suite", formatter_class=_FMT, help="several multiple-choice tasks and one centred mean",
        description=(
            "Score a named set of multiple-choice tasks with one model load and print one table. score is the "
            "mean over the tasks of (acc - chance) / (1 - chance), chance being 1 / (number of choices) averaged "
            "over the task's questions, acc the task's acc_norm where the harness reports one, else acc ("
            + ", ".join(f"{t}: {m}" for t, m in SUITE_METRIC.items()) + "). Sets: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in SUITES.items()) + "."
        ),
    )
    s.add_argument("--set", dest="suite", default="small", choices=sorted(SUITES), help="the named set")
    s.add_argument("--tasks", default=None, help="comma-separated tasks instead of a named set")
    s.add_argument("--data", action="append", default=[], metavar="TASK=FILE",
                   help="a task's data file (repeatable); tasks without one are downloaded")
    s.add_argument("--cache-dir", default=None, help="where downloaded data is kept")
    _common(s, 8, "score only the first N questions of each task")


def run(args: argparse.Namespace) -> int:
    from gpt2kit.checkpoint import resolve_checkpoint
    from gpt2kit.cli.common import resolve_dtype
    from gpt2kit.eval.results import format_suite_table, format_table, to_json
    from gpt2kit.eval.run import ALIASES, METRICS, EvalOptions, run_eval

    opts = EvalOptions(
        task=args.task, checkpoint=args.checkpoint, device=args.device, dtype=resolve_dtype(args.dtype),
        batch_size=args.batch_size, limit=args.limit, data=args.data, split=getattr(args, "split", "val"),
        block_size=getattr(args, "block_size", None), stride=getattr(args, "stride", None),
        text_field=getattr(args, "text_field", None), cache_dir=getattr(args, "cache_dir", None),
        num_fewshot=getattr(args, "num_fewshot", 0), fewshot_data=getattr(args, "fewshot_data", None),
        quantize=args.quantize,
    )
    if args.task == "suite":
        from gpt2kit.eval.run import run_suite
        from gpt2kit.eval.tasks import SUITES

        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(SUITES[args.suite])
        result = run_suite(EvalOptions(**{**vars(opts), "data": None}), tasks, _task_files(args.data))
    else:
        result = run_eval(opts)
    if result is None:  # not rank 0
        return 0
    record, loaded = result
    record["results_file"] = _save(record, args, resolve_checkpoint(args.checkpoint)[0], loaded.source)
    if args.json:
        print(to_json(record), flush=True)
    elif args.task == "suite":
        print(format_suite_table(record), flush=True)
    else:
        print(format_table(record, [k for k in METRICS[args.task] if k not in ALIASES]), flush=True)
    per_task = record["tasks"] if args.task == "suite" else {args.task: record}
    for task, r in per_task.items():
        if r.get("truncated"):
            print(f"warning: {task}: {r['truncated']} of {r['n']} questions were longer than the model's context "
                  f"({record['settings']['block_size']} tokens) and were left-truncated", file=sys.stderr)
    if record["results_file"]:
        print(f"results written to {record['results_file']}", file=sys.stderr)
    return 0


def _task_files(pairs: list[str]) -> dict[str, str]:
    """``--data TASK=FILE`` flags as a dict."""
    out = {}
    for pair in pairs:
        task, sep, path = pair.partition("=")
        if not sep or not task or not path:
            raise UserError(f"--data {pair}: expected TASK=FILE, e.g. --data arc-easy=ARC-Easy-test.jsonl")
        out[task] = path
    return out


def _save(record: dict, args, checkpoint_kind: str, source: str) -> str | None:
    """Write the results JSON; beside the checkpoint a failure is a warning, at --out an error."""
    from gpt2kit.eval.results import default_results_path, write_record

    if args.out:
        try:
            return str(write_record(record, args.out))
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write the results ({e.strerror or e})") from None
    name = args.task
    if args.task == "suite":
        name += "-" + (args.suite if not args.tasks else "custom")
    if args.task == "loss":
        name += "-" + Path(args.data.rstrip("/")).name + (f"-{args.split}" if Path(args.data).is_dir() else "")
    path = default_results_path(checkpoint_kind, source, args.checkpoint, name)
    try:
        return str(write_record(record, path))
    except OSError as e:
        print(f"warning: could not write results to {path} ({e.strerror or e}); use --out FILE", file=sys.stderr)
        return None
