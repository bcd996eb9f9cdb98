"""One evaluation of one checkpoint: load it, score a task (or a suite of them) on every rank, build the records.

:func:`run_eval` is what ``gpt2kit eval`` calls, :func:`run_suite` what ``gpt2kit eval suite`` calls; under
``torchrun`` the examples (or windows) are split over the ranks, rank 0 resolves and downloads the data file
for all of them, and rank 0 gets the record.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2kit.checkpoint import LoadedModel, load_model
from gpt2kit.data.loader import eval_batches, read_manifest
from gpt2kit.data.manifest import data_tokenizer
from gpt2kit.distributed import broadcast_object, setup_distributed, teardown
from gpt2kit.errors import UserError
from gpt2kit.eval.choice import score_choices
from gpt2kit.eval.hellaswag import hellaswag_items, hellaswag_metrics, hellaswag_path, load_examples
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
from gpt2kit.eval.tasks import SUITE_METRIC, TASKS, choice_items, get_task, load_questions, task_data
from gpt2kit.io import file_sha256
from gpt2kit.quantization import quantize_and_describe
from gpt2kit.tokenizer import TOKENIZER_ID, Tokenizer, load_tokenizer
from gpt2kit.tokenizer.bpe import META_NAME

METRICS = {
    "loss": ["loss", "perplexity", "bpb", "bits_per_byte", "tokens", "bytes"],
    "hellaswag": ["acc", "acc_norm", "acc_norm_bytes", "n", "truncated"],
    "lambada": ["acc", "perplexity", "token_perplexity", "n", "tokens"],
    **{name: [*task.metrics, "n", "truncated"] for name, task in TASKS.items()},
}
"""Each task's metrics, in the order a record holds them (a table leaves out the :data:`ALIASES`)."""

ALIASES = {"bpb": "bits_per_byte"}
"""Second names of a metric in the record: ``bpb`` is the short name of ``bits_per_byte`` (nanochat's)."""


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
    num_fewshot: int = 0
    fewshot_data: str | None = None
    quantize: str | None = None


def run_eval(opts: EvalOptions) -> tuple[dict[str, Any], LoadedModel] | None:
    """Score ``opts.task`` on every rank; rank 0 returns (the results record, the loaded model), the others None."""
    env = setup_distributed(opts.device)
    rank, world_size, device = env.rank, env.world_size, env.device
    try:
        show = rank == 0
        loaded, params = _load(opts, device, show)
        model, tok = loaded.model, loaded.tokenizer
        settings = _settings(opts, device, world_size)
        if opts.task == "loss":
            metrics, data, extra = _score_loss(opts, loaded, device, rank, world_size, show)
            metrics.update({alias: metrics[name] for alias, name in ALIASES.items() if name in metrics})
            settings.update(extra)
        elif opts.task == "hellaswag" or opts.task in TASKS:
            metrics, data, extra = _score_choice_task(opts.task, opts, model, tok, device, rank, world_size, show)
            settings.update(extra)
        elif opts.task == "lambada":
            text_field = opts.text_field or "text"
            path = _data_path(lambda: lambada_path(opts.data, cache_dir=opts.cache_dir), opts, show, world_size)
            examples = load_lambada(path, limit=opts.limit, text_field=text_field)
            metrics = score_lambada(model, examples, device=device, batch_size=opts.batch_size,
                                    rank=rank, world_size=world_size, progress=show, tokenizer=tok)
            data = {"path": str(path), "sha256": file_sha256(path)}
            settings.update(block_size=model.config.block_size, text_field=text_field)
        else:
            get_task(opts.task, known=list(METRICS))
        if not show:
            return None
        metrics = {k: metrics[k] for k in METRICS[opts.task] if k in metrics}
        record = build_record(opts.task, metrics, model=_model_info(opts, loaded, params), data=data, settings=settings)
        return record, loaded
    finally:
        teardown(env)


def run_suite(opts: EvalOptions, tasks: list[str], data: dict[str, str]) -> tuple[dict[str, Any], LoadedModel] | None:
    """Score every task of ``tasks`` (``data[task]`` its file, else downloaded); rank 0 returns (one record with
    each task's metrics under ``tasks`` and the suite's ``score``, the loaded model), the others None.

    ``score`` is the mean over tasks of the centred accuracy ``(acc - chance) / (1 - chance)`` of each task's
    :data:`SUITE_METRIC`, ``chance`` being the mean of 1 / (number of choices) over its questions.
    """
    for name in tasks:
        if name not in SUITE_METRIC:
            get_task(name, known=list(SUITE_METRIC))
    env = setup_distributed(opts.device)
    rank, world_size, device = env.rank, env.world_size, env.device
    try:
        show = rank == 0
        loaded, params = _load(opts, device, show)
        results: dict[str, Any] = {}
        for name in tasks:
            task_opts = EvalOptions(**{**vars(opts), "task": name, "data": data.get(name)})
            metrics, record, _ = _score_choice_task(name, task_opts, loaded.model, loaded.tokenizer, device, rank,
                                                    world_size, show)
            acc, chance = metrics[SUITE_METRIC[name]], metrics["chance"]
            results[name] = {"metric": SUITE_METRIC[name], "value": acc, "chance": chance,
                             "centered": (acc - chance) / (1 - chance), "n": metrics["n"],
                             "truncated": metrics["truncated"], "data": record}
        if not show:
            return None
        score = sum(r["centered"] for r in results.values()) / len(results)
        settings = {**_settings(opts, device, world_size), "block_size": loaded.model.config.block_size}
        record = build_record("suite", {"score": score, "tasks": results}, model=_model_info(opts, loaded, params),
                              data={t: r.pop("data") for t, r in results.items()}, settings=settings)
        return record, loaded
    finally:
        teardown(env)


def _load(opts: EvalOptions, device: torch.device, show: bool) -> tuple[LoadedModel, int]:
    """The model of ``opts.checkpoint``, quantized when ``opts.quantize`` says so, and its parameter count
    (counted before quantizing: the int8 layers hold no parameters)."""
    loaded = load_model(opts.checkpoint, device=device, dtype=opts.dtype)
    params = loaded.model.num_params()
    if opts.quantize is not None:
        note = quantize_and_describe(loaded.model, opts.quantize)
        if show:
            print(f"eval: {note}", file=sys.stderr, flush=True)
    return loaded, params


def _settings(opts: EvalOptions, device: torch.device, world_size: int) -> dict[str, Any]:
    """The settings every record holds; each task adds its own."""
    return {"batch_size": opts.batch_size, "limit": opts.limit, "device": str(device),
            "dtype": str(opts.dtype).removeprefix("torch."), "world_size": world_size, "quantize": opts.quantize}


def _data_path(resolve, opts: EvalOptions, show: bool, world_size: int) -> Path:
    """The task's data file: rank 0 resolves it (and may download it) unless --data names it for every rank;
    the other ranks get rank 0's path."""
    path = resolve() if show or opts.data else None
    return Path(broadcast_object(str(path) if path else None, world_size))


def _model_info(opts: EvalOptions, loaded: LoadedModel, params: int) -> dict[str, Any]:
    return {"checkpoint": opts.checkpoint, "source": loaded.source, "format": loaded.format,
            "step": loaded.checkpoint.get("step"), "params": params, "config": loaded.config.to_dict(),
            "tokenizer": loaded.tokenizer.name}


def _score_choice_task(name: str, opts: EvalOptions, model, tok: Tokenizer, device, rank: int, world_size: int,
                       show: bool):
    """(metrics with ``chance``, data record, settings) of HellaSwag or a harness multiple-choice task, the text
    encoded in ``tok`` (the model's tokenizer)."""
    if name == "hellaswag":
        path = _data_path(lambda: hellaswag_path(opts.data, cache_dir=opts.cache_dir), opts, show, world_size)
    else:
        path = _data_path(lambda: task_data(get_task(name), opts.data, cache_dir=opts.cache_dir), opts, show,
                          world_size)
    settings: dict[str, Any] = {"block_size": model.config.block_size}
    if name == "hellaswag":
        items = hellaswag_items(load_examples(path, limit=opts.limit), tok)
    else:
        task = get_task(name)
        questions = load_questions(task, path, limit=opts.limit, num_fewshot=opts.num_fewshot,
                                   fewshot_path=opts.fewshot_data)
        items = choice_items(questions, tok)
        settings.update(harness_task=task.harness, num_fewshot=opts.num_fewshot)
    scores = score_choices(model, items, device=device, batch_size=opts.batch_size, rank=rank,
                           world_size=world_size, progress=show, desc=name, eot=tok.eot)
    if name == "hellaswag":
        metrics = hellaswag_metrics(scores)
    else:  # the harness's acc_norm divides by the choice's characters
        metrics = {"acc": scores["acc"], "acc_norm": scores["acc_per_char"], "n": scores["n"]}
    metrics.update(truncated=scores["truncated"], chance=sum(1 / len(it.rows) for it in items) / len(items))
    data = {"path": str(path), "sha256": file_sha256(path)}
    if opts.fewshot_data and name != "hellaswag":
        data["fewshot"] = {"path": opts.fewshot_data, "sha256": file_sha256(opts.fewshot_data)}
    return metrics, data, settings


def _score_loss(opts: EvalOptions, loaded: LoadedModel, device, rank: int, world_size: int, show: bool):
    """(metrics, data record, settings) of the loss task: a prepared split (in the model's tokenizer, else a
    UserError), or a text/JSONL file encoded in the model's tokenizer; bytes are those of its tokens."""
    model, tok = loaded.model, loaded.tokenizer
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
        check_data_tokenizer(data, data_tokenizer(data, manifest), opts.checkpoint, loaded)
        # a split too small for one batch (a short story's) is scored as one smaller batch, as training does
        batches = eval_batches(data, opts.split, block_size=block_size, batch_size=opts.batch_size,
                               max_batches=opts.limit, rank=rank, world_size=world_size, fit_small=True)
        n_tokens = manifest["splits"].get(opts.split, {}).get("tokens", 0)
        total = max(1, (n_tokens - 1) // block_size // opts.batch_size)
        total = max(1, min(total, opts.limit or total) // world_size)
        stats = mean_loss(model, batches, device=device, count_bytes=True, tokenizer=tok, progress=show, total=total)
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
        tokens = tok.encode_batch(docs)
        if not any(tokens):
            raise UserError(f"--data {data}: no text to score")
        windows = document_windows(tokens, block_size, stride, eot=tok.eot)
        mine = (w for i, w in enumerate(windows) if i % world_size == rank)
        n_windows = count_windows((len(t) for t in tokens), block_size, stride)
        total = -(-(n_windows - rank) // world_size) if n_windows > rank else 0
        stats = mean_loss(model, batch_windows(mine, opts.batch_size, pad=tok.eot), device=device, count_bytes=True,
                          tokenizer=tok, progress=show, total=-(-total // opts.batch_size))
        record = {"path": str(data), "sha256": file_sha256(data), "documents": len(docs)}
        settings = {"block_size": block_size, "stride": stride, "text_field": opts.text_field}
    stats = all_reduce_loss(stats, device)
    if stats["tokens"] == 0:
        raise UserError(f"--data {data}: no tokens were scored")
    return stats, record, settings


def check_data_tokenizer(data: Path, data_tok: Tokenizer, checkpoint: str, loaded: LoadedModel) -> None:
    """Refuse a prepared data directory tokenized with another vocabulary than the model's, in one line that
    names both and the ``prepare --tokenizer`` value that makes matching data."""
    model_tok = loaded.tokenizer
    if data_tok.name == model_tok.name:
        return
    raise UserError(
        f"--data {data}: prepared with tokenizer {data_tok.name!r} (vocab_size {data_tok.vocab_size}), but "
        f"--checkpoint {checkpoint} uses {model_tok.name!r} (vocab_size {model_tok.vocab_size}); prepare the data "
        f"with the model's tokenizer: `gpt2kit prepare SOURCE --tokenizer {tokenizer_dir_hint(loaded)} --out DIR`"
    )


def tokenizer_dir_hint(loaded: LoadedModel) -> str:
    """What to pass ``prepare --tokenizer`` for data in ``loaded``'s vocabulary: ``gpt2``, or a directory that
    holds its tokenizer (the run's ``tokenizer/`` beside its checkpoints, an export directory)."""
    tok = loaded.tokenizer
    if tok.name == TOKENIZER_ID:
        return TOKENIZER_ID
    if tok.path:
        return str(tok.path)
    src = Path(loaded.source)
    for d in (src, src / "tokenizer", src.parent / "tokenizer", src.parent.parent / "tokenizer"):
        if (d / META_NAME).is_file():
            with contextlib.suppress(UserError):  # a damaged copy is no hint
                if load_tokenizer(d).name == tok.name:
                    return str(d)
    return f"DIR (a directory holding tokenizer {tok.name}, e.g. the training run's tokenizer/)"
