"""One evaluation of one checkpoint: load it, score a task on every rank, and build the results record.

:func:`run_eval` is what ``gpt2kit eval`` calls; under ``torchrun`` the examples (or windows) are split over
the ranks, rank 0 resolves and downloads the data file for all of them, and rank 0 gets the record.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2kit.checkpoint import LoadedModel, load_model
from gpt2kit.data.loader import eval_batches, read_manifest
from gpt2kit.distributed import broadcast_object, setup_distributed, teardown
from gpt2kit.errors import UserError
from gpt2kit.eval.hellaswag import hellaswag_path, load_examples, score_hellaswag
from gpt2kit.eval.lambada import lambada_path, load_lambada, score_lambada
from gpt2kit.eval.loss import (
    all_reduce_loss,
    batch_windows,
    count_windows,
    document_windows,
    mean_loss,
    read_documents,
)
from gpt2kit.eval.results import build_record
from gpt2kit.io import file_sha256
from gpt2kit.quantization import quantize_and_describe
from gpt2kit.tokenizer import get_tokenizer

METRICS = {
    "loss": ["loss", "perplexity", "bits_per_byte", "tokens", "bytes"],
    "hellaswag": ["acc", "acc_norm", "acc_norm_bytes", "n"],
    "lambada": ["acc", "perplexity", "token_perplexity", "n", "tokens"],
}
"""Each task's metrics, in the order a table shows them."""


@dataclass
class EvalOptions:
    """What to score and how; the fields a task does not use are ignored."""

    task: str
    checkpoint: str
    device: str = "auto"
    dtype: torch.dtype = torch.float32
    batch_size: int = 8
    limit: int | None = None
    data: str | None = None
    split: str = "val"
    block_size: int | None = None
    stride: int | None = None
    text_field: str | None = None
    cache_dir: str | None = None
    quantize: str | None = None


def run_eval(opts: EvalOptions) -> tuple[dict[str, Any], LoadedModel] | None:
    """Score ``opts.task`` on every rank; rank 0 returns (the results record, the loaded model), the others None."""
    env = setup_distributed(opts.device)
    rank, world_size, device = env.rank, env.world_size, env.device
    try:
        loaded = load_model(opts.checkpoint, device=device, dtype=opts.dtype)
        model = loaded.model
        show = rank == 0
        params = model.num_params()  # before quantizing: the int8 layers hold no parameters
        if opts.quantize is not None:
            note = quantize_and_describe(model, opts.quantize)
            if show:
                print(f"eval: {note}", file=sys.stderr, flush=True)
        settings: dict[str, Any] = {
            "batch_size": opts.batch_size, "limit": opts.limit, "device": str(device),
            "dtype": str(opts.dtype).removeprefix("torch."), "world_size": world_size, "quantize": opts.quantize,
        }
        if opts.task == "loss":
            metrics, data, extra = _score_loss(opts, model, device, rank, world_size, show)
            settings.update(extra)
        elif opts.task == "hellaswag":
            path = hellaswag_path(opts.data, cache_dir=opts.cache_dir) if show or opts.data else None
            path = Path(broadcast_object(str(path) if path else None, world_size))
            metrics = score_hellaswag(model, load_examples(path, limit=opts.limit), device=device,
                                      batch_size=opts.batch_size, rank=rank, world_size=world_size, progress=show)
            data = {"path": str(path), "sha256": file_sha256(path)}
            settings["block_size"] = model.config.block_size
        elif opts.task == "lambada":
            text_field = opts.text_field or "text"
            path = lambada_path(opts.data, cache_dir=opts.cache_dir) if show or opts.data else None
            path = Path(broadcast_object(str(path) if path else None, world_size))
            examples = load_lambada(path, limit=opts.limit, text_field=text_field)
            metrics = score_lambada(model, examples, device=device, batch_size=opts.batch_size,
                                    rank=rank, world_size=world_size, progress=show)
            data = {"path": str(path), "sha256": file_sha256(path)}
            settings.update(block_size=model.config.block_size, text_field=text_field)
        else:
            raise UserError(f"eval: unknown task {opts.task!r}; use one of {', '.join(METRICS)}")
        if not show:
            return None
        model_info = {
            "checkpoint": opts.checkpoint, "source": loaded.source, "format": loaded.format,
            "step": loaded.checkpoint.get("step"), "params": params, "config": loaded.config.to_dict(),
        }
        metrics = {k: metrics[k] for k in METRICS[opts.task] if k in metrics}
        return build_record(opts.task, metrics, model=model_info, data=data, settings=settings), loaded
    finally:
        teardown(env)


def _score_loss(opts: EvalOptions, model, device, rank: int, world_size: int, show: bool):
    """(metrics, data record, settings) of the loss task: a prepared split, or a text/JSONL file."""
    model_block = model.config.block_size
    block_size = opts.block_size or model_block
    if block_size > model_block:
        raise UserError(f"--block-size {block_size} exceeds the model's block_size {model_block}")
    if opts.data is None:
        raise UserError("eval loss: --data is required (a prepared data directory or a .txt / .jsonl file)")
    data = Path(opts.data)
    if data.is_dir():
        if opts.stride is not None:
            raise UserError(
                "--stride applies to text/JSONL files; a prepared split is scored in consecutive windows of "
                "block_size tokens (use --block-size to change their length)"
            )
        manifest = read_manifest(data)
        batches = eval_batches(data, opts.split, block_size=block_size, batch_size=opts.batch_size,
                               max_batches=opts.limit, rank=rank, world_size=world_size)
        n_tokens = manifest["splits"].get(opts.split, {}).get("tokens", 0)
        total = (n_tokens - 1) // block_size // opts.batch_size
        total = min(total, opts.limit or total) // world_size
        stats = mean_loss(model, batches, device=device, count_bytes=True, progress=show, total=total)
        record = {"path": str(data), "split": opts.split, "sha256": file_sha256(data / "manifest.json"),
                  "sha256_of": "manifest.json"}
        settings = {"block_size": block_size, "split": opts.split}
    else:
        stride = opts.stride or max(1, block_size // 2)
        if stride > block_size:
            raise UserError(
                f"--stride {stride} exceeds the window length {block_size}; use at most --stride {block_size}"
            )
        docs = read_documents(data, text_field=opts.text_field, limit=opts.limit)
        tokens = get_tokenizer().encode_batch(docs)
        if not any(tokens):
            raise UserError(f"--data {data}: no text to score")
        windows = document_windows(tokens, block_size, stride)
        mine = (w for i, w in enumerate(windows) if i % world_size == rank)
        n_windows = count_windows((len(t) for t in tokens), block_size, stride)
        total = -(-(n_windows - rank) // world_size) if n_windows > rank else 0
        stats = mean_loss(model, batch_windows(mine, opts.batch_size), device=device, count_bytes=True,
                          progress=show, total=-(-total // opts.batch_size))
        record = {"path": str(data), "sha256": file_sha256(data), "documents": len(docs)}
        settings = {"block_size": block_size, "stride": stride, "text_field": opts.text_field}
    stats = all_reduce_loss(stats, device)
    if stats["tokens"] == 0:
        raise UserError(f"--data {data}: no tokens were scored")
    return stats, record, settings
