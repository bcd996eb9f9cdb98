"""``gpt2kit eval TASK``: validation loss/perplexity, HellaSwag and LAMBADA for any checkpoint.

The command parses, loads the model through :func:`gpt2kit.checkpoint.load_model`, calls the same
scorers the trainer uses (:mod:`gpt2kit.eval`), prints a table (or, with ``--json``, one JSON object
and nothing else on stdout) and saves the record beside the checkpoint. Under ``torchrun`` the
examples are split over the ranks and rank 0 reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gpt2kit.cli.common import DefaultsFormatter, add_checkpoint_argument, add_device_arguments, positive_int
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
_METRICS = {
    "loss": ["loss", "perplexity", "bits_per_byte", "tokens", "bytes"],
    "hellaswag": ["acc", "acc_norm", "acc_norm_bytes", "n"],
    "lambada": ["acc", "perplexity", "token_perplexity", "n", "tokens"],
}


def _common(p: argparse.ArgumentParser, batch_size: int, limit_help: str) -> None:
    add_checkpoint_argument(p)
    p.add_argument("--limit", type=positive_int, default=None, help=limit_help)
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="examples (or windows) per forward pass; changes speed and memory, not the scores")
    add_device_arguments(p)
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
    from gpt2kit.checkpoint import load_model, resolve_checkpoint
    from gpt2kit.cli.common import resolve_dtype
    from gpt2kit.eval.download import file_sha256
    from gpt2kit.eval.results import build_record, format_table, to_json

    from gpt2kit.distributed import setup_distributed, teardown

    env = setup_distributed(args.device)
    rank, world_size, device = env.rank, env.world_size, env.device
    try:
        loaded = load_model(args.checkpoint, device=device, dtype=resolve_dtype(args.dtype))
        model = loaded.model
        show = rank == 0
        settings: dict[str, Any] = {
            "batch_size": args.batch_size, "limit": args.limit, "device": str(device), "dtype": args.dtype,
            "world_size": world_size,
        }
        if args.task == "loss":
            metrics, data, extra = _run_loss(args, model, device, rank, world_size, show)
            settings.update(extra)
        elif args.task == "hellaswag":
            from gpt2kit.eval.hellaswag import hellaswag_path, load_examples, score_hellaswag

            path = hellaswag_path(args.data, cache_dir=args.cache_dir) if show or args.data else None
            path = _broadcast_path(path, world_size)
            examples = load_examples(path, limit=args.limit)
            metrics = score_hellaswag(model, examples, device=device, batch_size=args.batch_size,
                                      rank=rank, world_size=world_size, progress=show)
            data = {"path": str(path), "sha256": file_sha256(path)}
            settings["block_size"] = model.config.block_size
        else:
            from gpt2kit.eval.lambada import lambada_path, load_lambada, score_lambada

            path = lambada_path(args.data, cache_dir=args.cache_dir) if show or args.data else None
            path = _broadcast_path(path, world_size)
            examples = load_lambada(path, limit=args.limit, text_field=args.text_field)
            metrics = score_lambada(model, examples, device=device, batch_size=args.batch_size,
                                    rank=rank, world_size=world_size, progress=show)
            data = {"path": str(path), "sha256": file_sha256(path)}
            settings.update(block_size=model.config.block_size, text_field=args.text_field)
        if not show:
            return 0
        ckpt = loaded.checkpoint
        model_info = {
            "checkpoint": args.checkpoint, "source": loaded.source, "format": loaded.format,
            "step": ckpt.get("step"), "params": model.num_params(), "config": loaded.config.to_dict(),
        }
        metrics = {k: metrics[k] for k in _METRICS[args.task] if k in metrics}
        record = build_record(args.task, metrics, model=model_info, data=data, settings=settings)
        record["results_file"] = _save(record, args, resolve_checkpoint(args.checkpoint)[0], loaded.source)
        if args.json:
            print(to_json(record), flush=True)
        else:
            print(format_table(record, _METRICS[args.task]), flush=True)
        if record["results_file"]:
            print(f"results written to {record['results_file']}", file=sys.stderr)
        return 0
    finally:
        teardown(env)


def _run_loss(args, model, device, rank: int, world_size: int, show: bool):
    """(metrics, data record, settings) of the loss task."""
    from gpt2kit.eval.download import file_sha256
    from gpt2kit.eval.loss import (
        all_reduce_loss, batch_windows, count_windows, document_windows, mean_loss, read_documents,
    )

    model_block = model.config.block_size
    block_size = args.block_size or model_block
    if block_size > model_block:
        raise UserError(f"--block-size {block_size} exceeds the model's block_size {model_block}")
    data = Path(args.data)
    if data.is_dir():
        from gpt2kit.data.loader import eval_batches, read_manifest

        if args.stride is not None:
            raise UserError(
                "--stride applies to text/JSONL files; a prepared split is scored in consecutive windows of "
                "block_size tokens (use --block-size to change their length)"
            )
        manifest = read_manifest(data)
        batches = eval_batches(data, args.split, block_size=block_size, batch_size=args.batch_size,
                               max_batches=args.limit, rank=rank, world_size=world_size)
        n_tokens = manifest["splits"].get(args.split, {}).get("tokens", 0)
        total = (n_tokens - 1) // block_size // args.batch_size
        total = min(total, args.limit or total) // world_size
        stats = mean_loss(model, batches, device=device, count_bytes=True, progress=show, total=total)
        record = {"path": str(data), "split": args.split, "sha256": file_sha256(data / "manifest.json"),
                  "sha256_of": "manifest.json"}
        settings = {"block_size": block_size, "split": args.split}
    else:
        stride = args.stride or max(1, block_size // 2)
        if stride > block_size:
            raise UserError(
                f"--stride {stride} exceeds the window length {block_size}; use at most --stride {block_size}"
            )
        from gpt2kit.tokenizer import get_tokenizer

        docs = read_documents(data, text_field=args.text_field, limit=args.limit)
        tokens = get_tokenizer().encode_batch(docs)
        if not any(tokens):
            raise UserError(f"--data {data}: no text to score")
        windows = document_windows(tokens, block_size, stride)
        mine = (w for i, w in enumerate(windows) if i % world_size == rank)
        n_windows = count_windows((len(t) for t in tokens), block_size, stride)
        total = -(-(n_windows - rank) // world_size) if n_windows > rank else 0
        stats = mean_loss(model, batch_windows(mine, args.batch_size), device=device, count_bytes=True,
                          progress=show, total=-(-total // args.batch_size))
        record = {"path": str(data), "sha256": file_sha256(data), "documents": len(docs)}
        settings = {"block_size": block_size, "stride": stride, "text_field": args.text_field}
    stats = all_reduce_loss(stats, device)
    if stats["tokens"] == 0:
        raise UserError(f"--data {data}: no tokens were scored")
    return stats, record, settings


def _broadcast_path(path: Path | None, world_size: int) -> Path:
    """Rank 0 resolves (and maybe downloads) the data file; the other ranks get its path."""
    if world_size > 1:
        import torch.distributed as dist

        box = [str(path) if path is not None else None]
        dist.broadcast_object_list(box, src=0)
        path = Path(box[0])
    assert path is not None
    return path


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
