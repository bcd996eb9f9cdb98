"""Fine-tuning runs: settings and data become a :class:`~gpt2kit.train.loop.TrainTask` for the shared loop.

:func:`run_classify` and :func:`run_sft` are what ``gpt2kit finetune classify|sft`` call. They read and
tokenize the data, build the model from ``--checkpoint`` (a classification head and/or LoRA adapters on
top), and hand everything to :func:`gpt2kit.train.loop.train`, which owns the optimizer, schedule,
progress bar, ``metrics.jsonl``, checkpoints, best-by-val-loss and ``--resume``. The fine-tune's
metadata (task, labels or prompt template, LoRA settings) rides in every checkpoint under ``finetune``
(see :mod:`gpt2kit.checkpoint.finetune`). At the end rank 0 writes ``RUN/results.json``.

Every text is encoded with the base model's own tokenizer (``load_model(--checkpoint).tokenizer``: GPT-2's, or
the trained vocabulary its checkpoint carries; a resumed run the one its checkpoint records), and every
fine-tune checkpoint carries that tokenizer, so ``gpt2kit classify``, ``sample`` and a fine-tune of the
fine-tune encode as the model was trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpt2kit.checkpoint import ResumePoint, load_model
from gpt2kit.checkpoint.finetune import RECORD_KEY, RECORD_VERSION, finetune_record
from gpt2kit.device import autocast
from gpt2kit.distributed import DistEnv, distributed
from gpt2kit.errors import UserError
from gpt2kit.finetune.batching import (
    EpochBatches,
    classification_batch,
    pack_examples,
    packed_attn_mask,
    packed_batch,
    sft_batch,
    steps_per_epoch,
)
from gpt2kit.finetune.classifier import GPTClassifier, load_classifier, set_trainable, trainable_summary
from gpt2kit.finetune.classify_data import label_vocabulary, load_classification
from gpt2kit.finetune.config import ClassifyConfig, FinetuneConfig, SFTConfig
from gpt2kit.finetune.evaluate import evaluate_classifier, evaluate_sft
from gpt2kit.finetune.files import D, hold_out
from gpt2kit.finetune.sft_data import load_sft
from gpt2kit.generation import generate
from gpt2kit.io import atomic_write_text
from gpt2kit.model.config import GPTConfig
from gpt2kit.model.gpt import GPT
from gpt2kit.model.lora import apply_lora
from gpt2kit.prompts import get_template
from gpt2kit.tokenizer import Tokenizer, checkpoint_tokenizer
from gpt2kit.train.config import LoopConfig
from gpt2kit.train.loop import train
from gpt2kit.train.optim import decay_param_groups
from gpt2kit.train.resolve import resolve_run
from gpt2kit.train.task import EvalContext, TrainResult, TrainTask

RESULTS_FILE = "results.json"


def resolve_finetune_config(cls: type, overrides: dict[str, Any], log: Callable[[str], None] = print
                            ) -> tuple[FinetuneConfig, ResumePoint | None]:
    """The run's settings and the checkpoint it resumes from (if any).

    A new run takes the defaults of ``cls`` plus ``overrides``; a resumed run its saved settings plus
    ``overrides``. ``--out`` is always required; ``--checkpoint`` and ``--train`` for a new run.
    """
    task = "classify" if cls is ClassifyConfig else "sft"
    out = overrides.get("out")
    if not out:
        raise UserError("--out: required; the run directory for checkpoints, metrics.jsonl and results.json")

    def new_run() -> FinetuneConfig:
        try:
            cfg = cls.from_dict(overrides)
        except ValueError as e:
            raise UserError(str(e)) from None
        need = {"checkpoint": "the weights to start from (a gpt2kit run or checkpoint, a Hugging Face GPT-2 "
                              "directory, or a hub name such as gpt2)",
                "train": "the training data (.csv, .tsv, .jsonl or .json)"}
        missing = [name for name in need if not getattr(cfg.finetune, name)]
        if missing:
            raise UserError(", ".join(f"--{n}" for n in missing) + ": required for a new fine-tuning run; give "
                            + " and ".join(need[n] for n in missing))
        return cfg

    def check_point(point: ResumePoint) -> None:
        record = finetune_record(point.checkpoint)
        if record is None or record.get("task") != task:
            what = f"a {record.get('task')} fine-tune" if record else "not a fine-tuning checkpoint"
            raise UserError(f"--resume: {point.path} is {what}; resume it with the command that wrote it, "
                            f"or choose a new --out")

    return resolve_run(cls, out, overrides, new_run, what=f"`gpt2kit finetune {task}`", log=log,
                       check_point=check_point)


def _base_model(cfg: FinetuneConfig, resume: ResumePoint | None) -> tuple[GPT, Tokenizer]:
    """The backbone and its tokenizer: the weights and tokenizer of --checkpoint, or (resuming) an empty model
    the loop fills from the checkpoint and the tokenizer that checkpoint records."""
    if resume is not None:
        model = GPT(GPTConfig.from_dict(resume.checkpoint["model_config"]))
        tok = checkpoint_tokenizer(resume.checkpoint, resume.path)
        where = f"--resume {resume.path}"
    else:
        loaded = load_model(cfg.finetune.checkpoint)
        model, tok, where = loaded.model, loaded.tokenizer, f"--checkpoint {cfg.finetune.checkpoint}"
        model.train()
    if tok.vocab_size > model.config.vocab_size:
        # e.g. a fine-tune written before checkpoints carried a trained tokenizer: GPT-2's ids would crash the model
        raise UserError(f"{where}: the model's vocabulary has {model.config.vocab_size} tokens but its checkpoint "
                        f"records tokenizer {tok.name} with {tok.vocab_size}; fine-tune from a checkpoint that "
                        "carries the model's own tokenizer")
    return model, tok


def _max_length(cfg: FinetuneConfig, model: GPT) -> int:
    block = model.config.block_size
    if cfg.finetune.max_length is None:
        return block
    if cfg.finetune.max_length > block:
        raise UserError(f"--max-length {cfg.finetune.max_length} is longer than the model's context ({block} tokens); "
                        f"use at most {block}")
    return cfg.finetune.max_length


def _val_split(cfg: FinetuneConfig, train: D, val: D | None, say: Callable[[str], None]) -> tuple[D, D]:
    """``(train, val)`` as loaded, or, without --val, ``train`` split by --val-fraction (the same split on resume)."""
    if val is not None:
        return train, val
    train, val = hold_out(train, cfg.finetune.val_fraction, cfg.run.seed, cfg.finetune.train)
    say(f"no --val: {len(val)} of {len(train) + len(val)} examples of {cfg.finetune.train} are held out for validation "
        f"(--val-fraction {cfg.finetune.val_fraction}, chosen by --seed {cfg.run.seed}) and not trained on")
    return train, val


def _note_lengths(say: Callable[[str], None], path: str, n: int, truncated: int, dropped: int, max_len: int) -> None:
    if truncated:
        say(f"note: {truncated} of {n + dropped} examples in {path} are longer than --max-length {max_len} and were "
            "truncated to their first tokens")
    if dropped:
        say(f"note: {dropped} of {n + dropped} examples in {path} are longer than --max-length {max_len} and were "
            "left out")


def _check_resume_record(resume: ResumePoint | None, record: dict[str, Any], keys: tuple[str, ...]) -> None:
    if resume is None:
        return
    saved = finetune_record(resume.checkpoint) or {}
    for key in keys:
        if saved.get(key) != record.get(key):
            raise UserError(f"--resume: {resume.path} was trained with {key} {saved.get(key)!r}, this run asks for "
                            f"{record.get(key)!r}; resume with the same settings or choose a new --out")


def _schedule(cfg: FinetuneConfig, n_items: int, env: DistEnv, say: Callable[[str], None]
              ) -> tuple[LoopConfig, int]:
    """The loop's config for ``n_items`` training items, and the optimizer steps per epoch."""
    spe = steps_per_epoch(n_items, cfg.runtime.batch_size, cfg.finetune.accum_steps, env.world_size)
    steps = cfg.finetune.epochs * spe
    if cfg.schedule.warmup_steps > steps:
        raise UserError(f"--warmup-steps {cfg.schedule.warmup_steps} is more than the whole run "
                        f"({cfg.finetune.epochs} epochs x {spe} steps = {steps}); lower it")
    loop = cfg.loop_config(spe)
    say(f"{n_items} training items, {cfg.runtime.batch_size} x {cfg.finetune.accum_steps} accum x {env.world_size} "
        f"ranks per step: {spe} steps/epoch, {cfg.finetune.epochs} epochs = {steps} steps; evaluate every "
        f"{loop.cadence.eval_every}")
    return loop, spe


def _write_results(out: str, results: dict[str, Any]) -> Path:
    path = Path(out) / RESULTS_FILE
    atomic_write_text(path, json.dumps(results, indent=1) + "\n")
    return path


def _per_eval(result: TrainResult, spe: int, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    for rec in result.metrics:
        if keys[0] in rec:
            rows.append({"epoch": round(rec["step"] / spe, 4), "step": rec["step"],
                         **{k: rec.get(k) for k in keys}})
    return rows


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


# ------------------------------------------------------------------------------------------ classification

def classify_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of a classification micro-batch ``{"idx", "mask", "labels"}``."""
    _, loss = model(batch["idx"], batch["labels"], mask=batch["mask"])
    return loss


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens of a batch (for tokens/s)."""
    return int(batch["mask"].sum())


def run_classify(cfg: ClassifyConfig, resume: ResumePoint | None = None, env: DistEnv | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune a classifier as ``cfg`` says; returns what was written to ``RUN/results.json`` (rank 0)."""
    with distributed(cfg.runtime.device, env, cfg.dist.dist_timeout) as env:
        say = (log or print) if env.is_main else (lambda msg: None)
        backbone, tok = _base_model(cfg, resume)
        max_len = _max_length(cfg, backbone)
        if cfg.classify.labels:
            vocab = [s.strip() for s in cfg.classify.labels.split(",") if s.strip()]
            if len(vocab) < 2 or len(set(vocab)) != len(vocab):
                raise UserError(f"--labels {cfg.classify.labels!r}: needs at least 2 different comma-separated names")
        elif resume is not None:
            vocab = list((finetune_record(resume.checkpoint) or {}).get("labels") or [])
        else:
            vocab = label_vocabulary(cfg.finetune.train, cfg.classify.label_column)
        kw = dict(max_length=max_len, text_column=cfg.classify.text_column, label_column=cfg.classify.label_column,
                  overlong=cfg.finetune.overlong, tokenizer=tok)
        train_data = load_classification(cfg.finetune.train, vocab, **kw)
        val_data = load_classification(cfg.finetune.val, vocab, **kw) if cfg.finetune.val else None
        test_data = load_classification(cfg.classify.test, vocab, **kw) if cfg.classify.test else None
        for path, d in ((cfg.finetune.train, train_data), (cfg.finetune.val, val_data), (cfg.classify.test, test_data)):
            if d is not None:
                _note_lengths(say, path, len(d), d.truncated, d.dropped, max_len)
        train_data, val_data = _val_split(cfg, train_data, val_data, say)

        torch.manual_seed(cfg.run.seed)  # the same head and adapters on every rank
        model = GPTClassifier(backbone, len(vocab))
        n_layer = backbone.config.n_layer
        if cfg.classify.train_last_blocks is not None and not 0 <= cfg.classify.train_last_blocks <= n_layer:
            raise UserError(f"--train-last-blocks must be in [0, {n_layer}] for this {n_layer}-block model, "
                            f"got {cfg.classify.train_last_blocks}")
        last = cfg.classify.train_last_blocks
        blocks = None if last is None else tuple(range(n_layer - last, n_layer))
        lora = cfg.lora_for_blocks(blocks)
        if lora is not None:
            apply_lora(model, lora)
        set_trainable(model, cfg.classify.train_last_blocks, lora=lora is not None)
        record = {"version": RECORD_VERSION, "task": "classify", "base": cfg.finetune.checkpoint, "labels": vocab,
                  "lora": lora.to_dict() if lora else None, "text_column": cfg.classify.text_column,
                  "label_column": cfg.classify.label_column, "max_length": max_len}
        _check_resume_record(resume, record, ("labels", "lora", "max_length"))
        say(f"classify {len(vocab)} labels {vocab} | {trainable_summary(model)}"
            + (f" | LoRA r={lora.rank} alpha={lora.alpha:g} on {', '.join(lora.targets)}" if lora else ""))
        loop, spe = _schedule(cfg, len(train_data), env, say)
        source = EpochBatches(len(train_data), cfg.runtime.batch_size,
                              lambda items: classification_batch(train_data, items, tok.eot), seed=cfg.run.seed,
                              fingerprint=train_data.fingerprint(), grad_accum_steps=cfg.finetune.accum_steps,
                              rank=env.rank,
                              world_size=env.world_size)

        def evaluate(ctx: EvalContext) -> dict[str, float]:
            # the plain module: batches vary in length, which would make a compiled model recompile
            res = evaluate_classifier(ctx.raw_model, val_data, batch_size=cfg.runtime.batch_size, device=ctx.device,
                                      autocast_dtype=ctx.autocast_dtype, rank=env.rank, world_size=env.world_size,
                                      pad_id=tok.eot)
            return {"val_loss": res["loss"], "val_accuracy": res["accuracy"], "val_macro_f1": res["macro_f1"]}

        task = TrainTask(
            model=model, model_config=backbone.config.to_dict(), train_data=source,
            grad_accum_steps=cfg.finetune.accum_steps,
            loss_fn=classify_loss, evaluate=evaluate, param_groups=decay_param_groups, batch_tokens=real_tokens,
            flops_per_token=None, extra_state={RECORD_KEY: record, **tok.checkpoint_record()}, settings=cfg.to_dict(),
            oom_hint="lower --batch-size (raise --accum-steps to keep the batch) or --max-length",
        )
        result = train(loop, task, env, resume, log=log)
        final_val = test = None
        path = None
        if result.checkpoint is not None and not result.interrupted:
            # score with the checkpoint `gpt2kit classify --checkpoint RUN` uses: the best by val loss
            # (every rank loads it and scores its share; the sums are all-reduced)
            best, _, path, _ = load_classifier(cfg.run.out, device=env.device)
            kw = dict(batch_size=cfg.runtime.batch_size, device=env.device, rank=env.rank, world_size=env.world_size,
                      pad_id=tok.eot)
            final_val = evaluate_classifier(best, val_data, **kw)
            test = evaluate_classifier(best, test_data, **kw) if test_data is not None else None
        if not env.is_main:
            return {}
        results: dict[str, Any] = {
            "task": "classify", "labels": vocab, "steps": result.step, "steps_per_epoch": spe,
            "interrupted": result.interrupted,
            "epochs": _per_eval(result, spe, ("val_accuracy", "val_macro_f1", "val_loss")),
            "train_examples": len(train_data), "val_examples": len(val_data),
        }
        if final_val is not None:
            results.update(checkpoint=path, val_accuracy=final_val["accuracy"], val_macro_f1=final_val["macro_f1"],
                           val_loss=final_val["loss"])
        if test is not None:
            results.update(test_accuracy=test["accuracy"], test_macro_f1=test["macro_f1"], test_loss=test["loss"],
                           test_examples=test["count"], test_confusion=test["confusion"])
            say(f"test ({cfg.classify.test}, {test['count']} examples, {Path(path).name}): accuracy "
                f"{test['accuracy']:.4f} "
                f"macro-F1 {test['macro_f1']:.4f}")
        results = {k: _finite(v) for k, v in results.items()}
        say(f"wrote {_write_results(cfg.run.out, results)}")
        return results


# --------------------------------------------------------------------------------------------------- SFT

def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the response tokens of a padded or packed micro-batch."""
    if "doc" in batch:
        _, loss = model(batch["idx"], batch["targets"], positions=batch["positions"],
                        attn_mask=packed_attn_mask(batch["doc"]))
    else:
        _, loss = model(batch["idx"], batch["targets"])
    return loss


def run_sft(cfg: SFTConfig, resume: ResumePoint | None = None, env: DistEnv | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Instruction-tune as ``cfg`` says; returns what was written to ``RUN/results.json`` (rank 0)."""
    import numpy as np

    with distributed(cfg.runtime.device, env, cfg.dist.dist_timeout) as env:
        say = (log or print) if env.is_main else (lambda msg: None)
        model, tok = _base_model(cfg, resume)
        max_len = _max_length(cfg, model)
        template = get_template(cfg.sft.template)
        kw = dict(max_length=max_len, overlong=cfg.finetune.overlong, tokenizer=tok)
        train_data = load_sft(cfg.finetune.train, template, **kw)
        val_data = load_sft(cfg.finetune.val, template, **kw) if cfg.finetune.val else None
        for path, d in ((cfg.finetune.train, train_data), (cfg.finetune.val, val_data)):
            if d is not None:
                _note_lengths(say, path, len(d), d.truncated, d.dropped, max_len)
        train_data, val_data = _val_split(cfg, train_data, val_data, say)

        torch.manual_seed(cfg.run.seed)
        lora = cfg.lora
        if lora is not None:
            apply_lora(model, lora)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        record = {"version": RECORD_VERSION, "task": "sft", "base": cfg.finetune.checkpoint,
                  "template": template.to_dict(),
                  "lora": lora.to_dict() if lora else None, "max_length": max_len}
        _check_resume_record(resume, record, ("template", "lora", "max_length"))
        examples = train_data.examples
        fingerprint = train_data.fingerprint()
        if cfg.sft.pack:
            order = np.random.default_rng([cfg.run.seed, 7]).permutation(len(examples))  # mix lengths before packing
            rows = pack_examples([len(e.ids) for e in examples], max_len, order.tolist())
            collate = lambda items: packed_batch([[examples[i] for i in rows[r]] for r in items], tok.eot)  # noqa: E731
            n_items = len(rows)
            fingerprint += f"+pack{max_len}"
            say(f"packed {len(examples)} examples into {n_items} rows of <= {max_len} tokens "
                f"({sum(len(e.ids) for e in examples) / (n_items * max_len):.1%} full)")
        else:
            collate = lambda items: sft_batch([examples[i] for i in items], tok.eot)  # noqa: E731
            n_items = len(examples)
        trained = sum(e.num_trained() for e in examples)
        say(f"sft template {template.name!r} | {len(examples)} examples, {trained:,} response tokens | "
            f"{trainable_summary(model)}"
            + (f" | LoRA r={lora.rank} alpha={lora.alpha:g} on {', '.join(lora.targets)}" if lora else ""))
        loop, spe = _schedule(cfg, n_items, env, say)
        source = EpochBatches(n_items, cfg.runtime.batch_size, collate, seed=cfg.run.seed, fingerprint=fingerprint,
                              grad_accum_steps=cfg.finetune.accum_steps, rank=env.rank, world_size=env.world_size)
        prompts = []
        for ex in val_data.examples[:cfg.sft.samples]:
            first = ex.trainable.index(True) if True in ex.trainable else len(ex.ids)
            prompts.append(ex.ids[:max(first, 1)])

        def evaluate(ctx: EvalContext) -> dict[str, float]:
            res = evaluate_sft(ctx.raw_model, val_data.examples, batch_size=cfg.runtime.batch_size, device=ctx.device,
                               autocast_dtype=ctx.autocast_dtype, rank=env.rank, world_size=env.world_size,
                               pad_id=tok.eot)
            return {"val_loss": res["loss"]}

        def sample(ctx: EvalContext) -> list[str]:
            texts = []
            for ids in prompts:
                idx = torch.tensor([ids], dtype=torch.long, device=ctx.device)  # (1, P)
                with autocast(ctx.device, ctx.autocast_dtype):
                    out = generate(ctx.raw_model, idx, cfg.sft.sample_tokens, temperature=0.0, eos_id=tok.eot)
                reply = [t for t in out[0, len(ids):].tolist() if t != tok.eot]
                texts.append(tok.decode(reply))
            return texts

        task = TrainTask(
            model=model, model_config=model.config.to_dict(), train_data=source,
            grad_accum_steps=cfg.finetune.accum_steps,
            loss_fn=sft_loss, evaluate=evaluate, sample=sample if prompts else None,
            param_groups=decay_param_groups, batch_tokens=real_tokens, flops_per_token=None,
            extra_state={RECORD_KEY: record, **tok.checkpoint_record()}, settings=cfg.to_dict(),
            oom_hint="lower --batch-size (raise --accum-steps to keep the batch) or --max-length",
        )
        result = train(loop, task, env, resume, log=log)
        if not env.is_main:
            return {}
        results = {
            "task": "sft", "template": template.name, "steps": result.step, "steps_per_epoch": spe,
            "interrupted": result.interrupted, "epochs": _per_eval(result, spe, ("val_loss",)),
            "val_loss": _finite(result.val_loss), "best_val_loss": _finite(result.best_val_loss),
            "train_examples": len(train_data), "val_examples": len(val_data),
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        }
        say(f"wrote {_write_results(cfg.run.out, results)}")
        return results


__all__ = ["classify_loss", "resolve_finetune_config", "run_classify", "run_sft", "sft_loss"]
