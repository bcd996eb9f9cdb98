"""Pretraining: a :class:`~gpt2kit.train.config.TrainConfig` and a prepared data directory become a
:class:`~gpt2kit.train.loop.TrainTask` for the shared loop.

Used by ``gpt2kit train`` and ``gpt2kit demo``. Validation loss uses the eval package's
:func:`~gpt2kit.eval.loss.mean_loss` on fixed batches read once; HellaSwag uses
:func:`~gpt2kit.eval.hellaswag.score_hellaswag`; samples use :func:`gpt2kit.generation.generate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpt2kit.checkpoint import (
    ResumePoint,
    best_checkpoint,
    export_hf,
    load_model,
    load_state_dict_checked,
    model_state_dict,
)
from gpt2kit.data.loader import TokenLoader, eval_batches, read_manifest
from gpt2kit.data.manifest import MANIFEST_NAME, TOKENIZER_SUBDIR, data_tokenizer
from gpt2kit.device import autocast, autocast_dtype_for, compile_supported
from gpt2kit.distributed import DistEnv, distributed, gather_objects
from gpt2kit.errors import UserError
from gpt2kit.eval.choice import ChoiceItem, score_choices
from gpt2kit.eval.hellaswag import hellaswag_path, load_examples, score_hellaswag
from gpt2kit.eval.loss import all_reduce_loss, mean_loss
from gpt2kit.eval.tasks import choice_items, get_task, load_questions, task_data
from gpt2kit.generation import generate
from gpt2kit.io import dir_lock
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.model.config import SHAPE_KEYS
from gpt2kit.settings import flag_name, replace_flat
from gpt2kit.tokenizer import TOKENIZER_ID, Tokenizer, get_tokenizer, write_tokenizer_files
from gpt2kit.train.autobatch import auto_batch_size
from gpt2kit.train.config import MODEL_FLAGS, PADDED_VOCAB_SIZE, TrainConfig
from gpt2kit.train.fused_head_loss import FusedLossGPT
from gpt2kit.train.loop import train
from gpt2kit.train.metrics import gpt_flops_per_token
from gpt2kit.train.presets import get_preset
from gpt2kit.train.resolve import apply_overrides, resolve_run
from gpt2kit.train.task import EvalContext, TrainResult, TrainTask


def check_data_matches_model(manifest: dict[str, Any], vocab_size: int, data_dir: str | Path,
                             model_tokenizer: str = TOKENIZER_ID, model_source: str = "the model",
                             tokenizer_hint: str = "gpt2") -> None:
    """Refuse data whose tokenizer or vocabulary is not the model's (``model_tokenizer``, ``vocab_size``).

    ``model_source`` names where the model comes from (--init-from X, the checkpoint resumed) and
    ``tokenizer_hint`` the ``prepare --tokenizer`` value that would make matching data."""
    tok, vocab = manifest.get("tokenizer"), manifest.get("vocab_size")
    if tok != model_tokenizer or vocab != vocab_size:
        raise UserError(
            f"--data {data_dir}: prepared with tokenizer {tok!r} (vocab_size {vocab}), but {model_source} uses "
            f"{model_tokenizer!r} with vocab_size {vocab_size}; prepare the data with "
            f"`gpt2kit prepare SOURCE --tokenizer {tokenizer_hint} --out DIR`"
        )


def padded_vocab(vocab_size: int) -> int:
    """Embedding rows for a vocabulary of ``vocab_size``: rounded up to a multiple of 64 (50257 -> 50304)."""
    return -(-vocab_size // 64) * 64


def model_for_data(cfg: TrainConfig, manifest: dict[str, Any]) -> TrainConfig:
    """A new run's config with the model's vocabulary the data's (a trained tokenizer's size, padded as GPT-2's
    is); an explicit --padded-vocab-size that holds it is kept."""
    vocab = manifest["vocab_size"]
    if cfg.model.vocab_size == vocab:
        return cfg
    padded = cfg.model.padded_vocab_size
    keep = padded is not None and padded >= vocab and padded != PADDED_VOCAB_SIZE
    return replace_flat(cfg, vocab_size=vocab, padded_vocab_size=padded if keep else padded_vocab(vocab))


def resolve_train_config(preset: str | None, overrides: dict[str, Any], log: Callable[[str], None] = print,
                         defaults: dict[str, Any] | None = None) -> tuple[TrainConfig, ResumePoint | None]:
    """The run's config and the checkpoint to resume from (if any).

    A new run starts from ``preset`` (without one, the fields' defaults: GPT-2 124M's shape); a resumed run
    from the checkpoint's saved config (a ``preset`` with another model shape is refused). ``defaults`` (a
    ``--config`` file's settings) and then the flags in ``overrides`` apply on top in both cases.
    """
    given = dict(overrides)  # what the command line said, for the checks of what the user asked for
    if defaults:
        preset = preset if preset is not None else defaults.get("preset")
        overrides = {**defaults, **overrides}
    if given.get("epochs") is not None:
        clash = [flag_name(k) for k in ("schedule_steps", "max_steps") if given.get(k) is not None]
        if clash:
            raise UserError(f"--epochs sets the schedule's length from the data; drop {' and '.join(clash)} "
                            "or drop --epochs")
    out = overrides.get("out") or (get_preset(preset).run.out if preset else None)
    spec = overrides.get("resume")
    if spec == "auto" and out is None:
        raise UserError("--resume auto: needs --out (the run directory to continue) or --preset")

    def new_run() -> TrainConfig:
        cfg = _new_run_config(preset, overrides, given, log)
        if spec == "auto":
            log(f"--resume auto: no checkpoint in {Path(out).resolve()}; starting a new run there")
        return cfg

    def check_saved(base: TrainConfig, point: ResumePoint) -> None:
        if preset is None or preset == base.preset:
            return
        other = get_preset(preset)
        diff = [f for f in SHAPE_KEYS if getattr(other.model, f) != getattr(base.model, f)]
        if diff:
            raise UserError(
                f"--preset {preset}: {point.path} was trained as {base.preset!r} with a different model size ("
                + ", ".join(f"{f}={getattr(base.model, f)} vs {getattr(other.model, f)}" for f in diff)
                + "); resume without --preset or choose a new --out"
            )

    return resolve_run(TrainConfig, out, overrides, new_run, what="a pretraining config", log=log,
                       check_saved=check_saved)


def _new_run_config(preset: str | None, overrides: dict[str, Any], given: dict[str, Any],
                    log: Callable[[str], None]) -> TrainConfig:
    """A new run's config: the preset (or the fields' defaults), the --init-from weights' shape, the flags."""
    init = overrides.get("init_from")
    base = get_preset(preset) if preset is not None else TrainConfig()  # no preset: the fields' own defaults
    if init:
        overrides = {**overrides, **init_model_config(init, overrides).to_dict()}
    max_steps = given.get("max_steps")
    notice = None
    if max_steps and "schedule_steps" not in overrides:  # (--epochs with --max-steps was refused above)
        # nanoGPT's max_iters is the schedule's length: a new run asked to stop at N decays its lr by step N
        warmup = overrides.get("warmup_steps", base.schedule.warmup_steps)
        overrides = {**overrides, "schedule_steps": max_steps, "warmup_steps": _warmup_within(warmup, max_steps)}
        notice = (f"--max-steps {max_steps}: the learning-rate schedule is {max_steps} steps long (give "
                  "--schedule-steps for a longer one to stop early in)")
    cfg = apply_overrides(base, overrides)
    data = cfg.pretrain.data
    if data and (Path(data) / MANIFEST_NAME).is_file():  # the saved config names the vocabulary the run trains
        cfg = model_for_data(cfg, read_manifest(data))
    if notice:  # after the settings are valid: a bad flag gets its one error line alone
        log(notice)
    return cfg


def _warmup_within(warmup: int, steps: int) -> int:
    """``warmup``, or a tenth of a schedule of ``steps`` that it would fill (a run all warmup never decays)."""
    return warmup if warmup < steps else steps // 10


def init_model_config(init_from: str, flags: dict[str, Any]) -> GPTConfig:
    """The model shape of the weights ``--init-from`` names, with a smaller ``block_size`` and any ``dropout`` from
    ``flags``; a flag that contradicts the weights' shape is a UserError naming it."""
    src = load_model(init_from).config
    for name in MODEL_FLAGS:
        if name in ("block_size", "dropout") or flags.get(name) is None or flags[name] == getattr(src, name):
            continue
        raise UserError(f"{flag_name(name)} {flags[name]}: --init-from {init_from} has {name}={getattr(src, name)}; "
                        f"drop {flag_name(name)} (the model's shape comes from the weights)")
    block_size = flags.get("block_size") or src.block_size
    if block_size > src.block_size:
        raise UserError(f"--block-size {block_size}: --init-from {init_from} has position embeddings for "
                        f"{src.block_size} tokens only; use --block-size {src.block_size} or less")
    dropout = src.dropout if flags.get("dropout") is None else flags["dropout"]
    return dataclasses.replace(src, block_size=block_size, dropout=dropout)


def _val_batches(cfg: TrainConfig, env: DistEnv) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's fixed validation batches, read (and verified) once for the whole run."""
    return list(eval_batches(cfg.pretrain.data, "val", block_size=cfg.model.block_size,
                             batch_size=cfg.runtime.batch_size, max_batches=cfg.cadence.eval_batches, rank=env.rank,
                             world_size=env.world_size,
                             fit_small=True))


def make_evaluator(cfg: TrainConfig, env: DistEnv, val: list | None, hellaswag: list | None,
                   choice: list[ChoiceItem] | None = None,
                   tokenizer: Tokenizer | None = None) -> Callable[[EvalContext], dict[str, float]]:
    """Validation loss and bits per byte (of ``tokenizer``'s tokens; every evaluation); HellaSwag and the
    ``--eval-task`` questions ``choice`` (every ``hellaswag_every`` steps and at the end), both in ``tokenizer``
    (the data's; GPT-2's by default)."""

    def evaluate(ctx: EvalContext) -> dict[str, float]:
        out: dict[str, float] = {}
        if val is not None:
            stats = all_reduce_loss(mean_loss(ctx.model, val, device=ctx.device, autocast_dtype=ctx.autocast_dtype,
                                              count_bytes=True, tokenizer=tokenizer), ctx.device)
            out["val_loss"] = stats["loss"]
            out["val_bpb"] = stats["bits_per_byte"]
        every = cfg.evals.hellaswag_every
        due = ctx.step == cfg.last_step or (every > 0 and ctx.step % every == 0)
        if hellaswag and due:
            # the plain module: HellaSwag rows vary in length, which would make a compiled model recompile
            res = score_hellaswag(ctx.raw_model, hellaswag, device=ctx.device,
                                  batch_size=max(1, cfg.runtime.batch_size // 4), autocast_dtype=ctx.autocast_dtype,
                                  rank=ctx.env.rank, world_size=ctx.env.world_size, tokenizer=tokenizer)
            out["hellaswag_acc"] = res["acc"]
            out["hellaswag_acc_norm"] = res["acc_norm"]
        if choice and due:
            task = get_task(cfg.evals.eval_task)
            res = score_choices(ctx.raw_model, choice, device=ctx.device,
                                batch_size=max(1, cfg.runtime.batch_size // 4), autocast_dtype=ctx.autocast_dtype,
                                rank=ctx.env.rank, world_size=ctx.env.world_size,
                                eot=(tokenizer or get_tokenizer()).eot)
            out[f"{task.harness}_acc"] = res["acc"]
            if "acc_norm" in task.metrics:  # the harness's acc_norm: per character of the choice
                out[f"{task.harness}_acc_norm"] = res["acc_per_char"]
        return out

    return evaluate


def make_sampler(cfg: TrainConfig, tokenizer: Tokenizer | None = None) -> Callable[[EvalContext], list[str]]:
    """A few seeded samples from ``sample_prompt`` (top-k 50, temperature 1), in ``tokenizer`` (GPT-2's)."""

    def sample(ctx: EvalContext) -> list[str]:
        tok = tokenizer or get_tokenizer()
        ids = tok.encode(cfg.evals.sample_prompt) or [tok.eot]
        idx = torch.tensor([ids] * cfg.evals.samples, dtype=torch.long, device=ctx.device)  # (S, P)
        with autocast(ctx.device, ctx.autocast_dtype):
            out = generate(ctx.raw_model, idx, cfg.evals.sample_tokens, temperature=1.0, top_k=50,
                           seed=cfg.run.seed + ctx.step)
        return [tok.decode(row.tolist()) for row in out]  # prompt + continuation

    return sample


def initial_model(cfg: TrainConfig, fresh: bool = True) -> GPT:
    """The weights a run starts from: ``cfg.model`` initialised from ``cfg.run.seed``, or for a new (``fresh``) run
    with ``init_from`` those weights, the position table cropped to ``block_size`` (a resumed run then loads its
    checkpoint over them)."""
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank (FSDP shards them as they are)
    model = GPT(cfg.model)
    if cfg.pretrain.init_from and fresh:
        source = load_model(cfg.pretrain.init_from)  # every rank reads the same weights
        sd = model_state_dict(source.model)
        # nanoGPT's crop_block_size: the first block_size rows of the position table
        sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][: cfg.model.block_size]
        load_state_dict_checked(model, sd, source.source)
    return model


def run_pretraining(cfg: TrainConfig, resume: ResumePoint | None = None, env: DistEnv | None = None,
                    log: Callable[[str], None] | None = None) -> TrainResult:
    """Pretrain (or continue) the model ``cfg`` describes on ``cfg.pretrain.data``; rank 0 prints and writes."""
    with distributed(cfg.runtime.device, env, cfg.dist.dist_timeout) as env, contextlib.ExitStack() as held:
        say = (log or print) if env.is_main else (lambda msg: None)
        if env.is_main:  # one command per run directory; under torchrun rank 0 holds it for all ranks
            held.enter_context(dir_lock(cfg.run.out, "train"))
        if not cfg.pretrain.data:
            raise UserError("--data: required; a directory written by `gpt2kit prepare`")
        manifest = read_manifest(cfg.pretrain.data)
        tok = data_tokenizer(cfg.pretrain.data, manifest)
        if resume is None:
            cfg = model_for_data(cfg, manifest)
        check_tokenizers(cfg, manifest, resume)
        gcfg = cfg.model
        model = None
        if cfg.runtime.batch_size == "auto":  # the probe needs the model; the integer is what the run records
            model = initial_model(cfg, fresh=resume is None)
            b, line = auto_batch_size(model, cfg, env.world_size, env.device,
                                      autocast_dtype_for(cfg.runtime.dtype, env.device.type))
            picks = gather_objects(b, env)  # every rank must run the same layout: the smallest pick
            if min(picks) != b:
                line += f"; {min(picks)} on every rank (the smallest rank's pick)"
            cfg = replace_flat(cfg, batch_size=min(picks))
            say(line)
        A = cfg.grad_accum_steps(gcfg.block_size, env.world_size)
        tokens_per_step = cfg.runtime.batch_size * gcfg.block_size * A * env.world_size
        train_tokens = manifest["splits"]["train"]["tokens"]
        if cfg.pretrain.epochs is not None:
            steps = cfg.pretrain.steps_for_epochs(train_tokens, tokens_per_step)
            cfg = replace_flat(cfg, schedule_steps=steps, warmup_steps=_warmup_within(cfg.schedule.warmup_steps, steps))
            say(f"--epochs {cfg.pretrain.epochs:g}: {train_tokens:,} train tokens / {tokens_per_step:,} tokens a step "
                f"-> {steps} steps (rounded up), {cfg.schedule.warmup_steps} of them warmup")
        if A >= 64:
            one = cfg.runtime.batch_size * gcfg.block_size * env.world_size
            say(f"note: {A:,} micro-steps per optimizer step (--total-batch-tokens "
                f"{cfg.cadence.total_batch_tokens:,} / {one:,} tokens a micro-step); for faster steps set "
                f"--total-batch-tokens {one} (or a small multiple)")
        loader = TokenLoader(cfg.pretrain.data, "train", block_size=gcfg.block_size,
                             micro_batch_size=cfg.runtime.batch_size, grad_accum_steps=A, rank=env.rank,
                             world_size=env.world_size, seed=cfg.run.seed)
        has_val = manifest["splits"].get("val", {}).get("tokens", 0) > 0
        val = _val_batches(cfg, env) if has_val else None
        if not has_val:
            say(f"note: {cfg.pretrain.data} has no validation split; no val_loss (best checkpoint) will be tracked")
        examples = None
        if cfg.evals.hellaswag:
            spec = cfg.evals.hellaswag
            path = hellaswag_path(None if spec == "download" else spec, flag="--hellaswag")
            examples = load_examples(path, limit=cfg.evals.hellaswag_limit)
        choice = None
        if cfg.evals.eval_task:
            task_def, spec = get_task(cfg.evals.eval_task), cfg.evals.eval_task_data
            rows = task_data(task_def, None if spec == "download" else spec)
            choice = choice_items(load_questions(task_def, rows, limit=cfg.evals.eval_task_limit), tok)
        model = model if model is not None else initial_model(cfg, fresh=resume is None)
        if cfg.pretrain.init_from and resume is None:
            say(f"init: weights from --init-from {cfg.pretrain.init_from} (step 0, new optimizer and schedule)")
        say(f"model: {model.num_params() / 1e6:.2f}M parameters (L={gcfg.n_layer}, H={gcfg.n_head}, C={gcfg.n_embd}, "
            f"T={gcfg.block_size}) | data: {train_tokens:,} train tokens in {cfg.pretrain.data} | "
            f"{tokens_per_step:,} tokens/step = {cfg.runtime.batch_size} x {gcfg.block_size} x {A} accum x "
            f"{env.world_size} ranks")
        fsdp = cfg.dist.parallel == "fsdp" and env.backend is not None
        # compiled runs let torch.compile fuse the model's own loss; FSDP needs the model's forward hooks; the
        # fused loss makes its gradients in the forward, before the float16 loss scale could keep them from underflowing
        float16 = autocast_dtype_for(cfg.runtime.dtype, env.device.type) == torch.float16
        compiled = cfg.runtime.compile and compile_supported(env.device.type)
        fused = cfg.pretrain.fused_loss and not compiled and not fsdp and not float16
        task = TrainTask(
            model=model, model_config=gcfg.to_dict(), train_data=loader, grad_accum_steps=A,
            train_module=FusedLossGPT if fused else None,
            evaluate=make_evaluator(cfg, env, val, examples, choice, tok) if (val is not None or examples or choice)
            else None,
            sample=make_sampler(cfg, tok) if cfg.evals.samples > 0 else None,
            flops_per_token=gpt_flops_per_token(model),
            extra_state={"data": {"dir": str(cfg.pretrain.data), "tokenizer": manifest["tokenizer"],
                                  "vocab_size": manifest["vocab_size"]}, **tok.checkpoint_record()},
            oom_hint=("lower --batch-size (gradient accumulation keeps --total-batch-tokens, the global batch) "
                      "or --block-size"),
        )
        if env.is_main and tok.files is not None:  # prepare --tokenizer RUN/tokenizer makes more data for it
            write_tokenizer_files(tok, Path(cfg.run.out) / TOKENIZER_SUBDIR)
        result = train(cfg, task, env, resume, log=log)
        if cfg.pretrain.export_hf and env.is_main and result.checkpoint is not None and not result.interrupted:
            export_hf(result.checkpoint, Path(cfg.run.out) / "hf-final")
            best = best_checkpoint(cfg.run.out)
            if best is not None:
                export_hf(best, Path(cfg.run.out) / "hf-best")
            say(f"wrote Hugging Face models to {Path(cfg.run.out) / 'hf-final'}"
                + (f" and {Path(cfg.run.out) / 'hf-best'}" if best is not None else " (no val loss, so no hf-best)"))
        return result


def check_tokenizers(cfg: TrainConfig, manifest: dict[str, Any], resume: ResumePoint | None) -> None:
    """Refuse data in another vocabulary than the model's: the model of this config, of the checkpoint resumed
    (its recorded tokenizer) or of the --init-from weights."""
    data = cfg.pretrain.data
    if resume is not None:
        name = resume.checkpoint.get("tokenizer", TOKENIZER_ID)
        check_data_matches_model(manifest, cfg.model.vocab_size, data, name, f"the checkpoint {resume.path}",
                                 _hint(name, Path(cfg.run.out)))
    elif cfg.pretrain.init_from:
        init = load_model(cfg.pretrain.init_from).tokenizer
        where = Path(cfg.pretrain.init_from)
        check_data_matches_model(manifest, init.vocab_size, data, init.name, f"--init-from {cfg.pretrain.init_from}",
                                 _hint(init.name, where if where.is_dir() else where.parent))
    else:
        check_data_matches_model(manifest, cfg.model.vocab_size, data, manifest["tokenizer"])


def _hint(name: str, run_dir: Path) -> str:
    return "gpt2" if name == TOKENIZER_ID else str(run_dir / TOKENIZER_SUBDIR)


def summary_line(result: TrainResult, out: str) -> str:
    """One line saying how the run ended."""
    parts = [f"step {result.step}"]
    if result.loss is not None:
        parts.append(f"train loss {result.loss:.4f}")
    if result.val_loss is not None:
        parts.append(f"val loss {result.val_loss:.4f}")
        bpb = next((r["val_bpb"] for r in reversed(result.metrics) if r.get("val_bpb") is not None), None)
        if bpb is not None:
            parts.append(f"val bpb {bpb:.4f}")
    if result.checkpoint is not None:
        parts.append(f"checkpoint {result.checkpoint}")
    return ("interrupted at " if result.interrupted else "done: ") + ", ".join(parts) + f" (run dir {out})"


__all__ = ["check_data_matches_model", "check_tokenizers", "export_hf", "init_model_config", "initial_model",
           "make_evaluator", "make_sampler", "model_for_data", "padded_vocab", "resolve_train_config",
           "run_pretraining", "summary_line"]
