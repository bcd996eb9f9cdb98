"""``gpt2kit pipeline``: tokenizer -> prepare -> pretrain -> instruction tuning -> evaluation -> export -> report.

Each stage is the library function of its own command (:func:`~gpt2kit.data.tokenizer_train.train_tokenizer`,
:func:`~gpt2kit.data.prepare.prepare`,
:func:`~gpt2kit.train.pretrain.run_pretraining`, :func:`~gpt2kit.finetune.run.run_sft`,
:func:`~gpt2kit.eval.run.run_eval`, :func:`~gpt2kit.checkpoint.export_hf`, :func:`~gpt2kit.checkpoint.gguf.write_gguf`)
in a sub-directory of the run: ``RUN/tokenizer`` (a trained vocabulary), ``RUN/data``, ``RUN/pretrain``,
``RUN/sft``, ``RUN/export``, and ``RUN/report.md``.
``RUN/pipeline.json`` records each finished stage; running the same command again skips those and continues the
one that stopped (training stages from their latest checkpoint, as ``--resume auto`` does).

Under torchrun every rank runs the training stages and the evaluation; rank 0 alone prepares, exports and writes
the report while the others wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2kit.checkpoint import export_hf, load_model
from gpt2kit.checkpoint.gguf import write_gguf
from gpt2kit.checkpoint.run_dir import PIPELINE_FILE
from gpt2kit.data.manifest import TOKENIZER_SUBDIR, read_manifest
from gpt2kit.data.prepare import prepare
from gpt2kit.data.shards import open_shard
from gpt2kit.data.sources import SourceOptions
from gpt2kit.data.tokenizer_train import train_tokenizer
from gpt2kit.device import is_gpu
from gpt2kit.distributed import DistEnv, barrier, broadcast_object, distributed
from gpt2kit.errors import UserError
from gpt2kit.eval.run import EvalOptions, run_eval
from gpt2kit.finetune.config import SFTConfig
from gpt2kit.finetune.run import resolve_finetune_config, run_sft
from gpt2kit.generation import generate
from gpt2kit.io import dir_lock
from gpt2kit.pipeline.config import BUILTIN_SFT, SIZES, PipelineConfig, PipelineSize, pick_size
from gpt2kit.pipeline.report import write_report
from gpt2kit.pipeline.state import STAGES, PipelineState
from gpt2kit.prompts import chat_prompt_ids, template_from_checkpoint
from gpt2kit.settings import from_flat
from gpt2kit.tokenizer import (
    TOKENIZER_ID,
    VOCAB_SIZE,
    Tokenizer,
    load_tokenizer,
    write_tokenizer_files,
)
from gpt2kit.train.presets import get_preset
from gpt2kit.train.pretrain import resolve_train_config, run_pretraining

CHAT_QUESTIONS = ("Hello! Who are you?", "What is 2 + 3?", "Name three colors.")
"""What the report asks the tuned model."""
LOSS_BATCHES = 100
"""Validation batches (of 8 sequences) scored in the evaluation stage: the whole split of a small corpus."""
SOURCE_SETTINGS = tuple(f.name for f in dataclasses.fields(SourceOptions))
"""The --prepare-args settings that say how the sources are read, which tokenizer training reads them with too."""
REDO_ON_CHANGE = {"eval": "eval", "eval_limit": "eval", "samples": "eval", "export": "export"}
"""Settings that may change between runs of one pipeline, and the first stage a change redoes."""


@dataclass
class StageFlags:
    """Each stage's own command flags (flat settings) given through ``--prepare-args`` and friends."""

    prepare: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)


def resolve_pipeline(given: dict[str, Any], *, fresh: bool = False, log: Callable[[str], None] = print,
                     normalize: Callable[[str, Any], Any] = lambda key, value: value,
                     ) -> tuple[PipelineConfig, PipelineState | None]:
    """The settings of the run ``given["out"]`` names: its saved ones plus what may change, or ``given`` for a new run.

    A setting that shaped a finished stage cannot change (one line says which, and what to do); a change of the
    evaluation or export settings redoes those stages. ``normalize(key, value)`` is what a setting's value is
    compared as (the stages' flag strings as the flags they give).
    """
    out = given.get("out")
    if not out:
        raise UserError("--out: required; the pipeline's run directory")
    if fresh:
        _remove_run(Path(out), log)
    state = PipelineState.read(out)
    if state is None:
        return _config(given), None
    saved = state.config
    changed = sorted(k for k, v in given.items() if k not in ("out", "device")
                     and normalize(k, saved.get(k)) != normalize(k, _jsonable(v)))
    fixed = [k for k in changed if k not in REDO_ON_CHANGE]
    if fixed:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in fixed).replace("--sources", "SOURCE")
        was = ", ".join(f"{k}={saved.get(k)!r}" for k in fixed)
        raise UserError(f"{out}: this pipeline was started with other {flags} ({was}); rerun without them to "
                        "continue it, or use --fresh (or another --out) to start over")
    cfg = _config({**saved, **given})
    for stage in sorted({REDO_ON_CHANGE[k] for k in changed}, key=STAGES.index):
        undone = state.redo_from(stage)
        if undone:
            log(f"pipeline: {', '.join(undone)} will run again ({', '.join(changed)} changed)")
    state.record["config"] = cfg.to_dict()
    return cfg, state


def run_pipeline(cfg: PipelineConfig, state: PipelineState | None, flags: StageFlags | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Run every stage not yet done; returns the final record (rank 0) or None when interrupted / on other ranks."""
    flags = flags or StageFlags()
    run = Path(cfg.out)
    with distributed(cfg.device) as env, contextlib.ExitStack() as held:
        say = log if env.is_main else (lambda msg: None)
        size_name = pick_size(cfg.size, gpu=is_gpu(env.device.type), world_size=env.world_size)
        size = SIZES[size_name]()
        if env.is_main:
            run.mkdir(parents=True, exist_ok=True)
            held.enter_context(dir_lock(run, "pipeline"))
            if state is None:
                state = PipelineState.new(run, cfg.to_dict(), size_name)
                state.save()
        barrier(env)
        if not env.is_main:
            state = PipelineState.read(run)
        assert state is not None
        if state.record.get("size") != size_name and cfg.size == "auto":
            size_name = state.record["size"]  # a run keeps the size it started with
            size = SIZES[size_name]()
        exports = cfg.export_formats()
        say(_plan_line(cfg, size, env, state, exports))
        stages: dict[str, Callable[[], dict[str, Any] | None]] = {
            "tokenizer": lambda: _tokenizer(cfg, size, flags, run, env, say),
            "prepare": lambda: _prepare(cfg, state, flags, run, env, say),
            "pretrain": lambda: _pretrain(cfg, size, flags, run, env, say),
            "sft": lambda: _sft(cfg, size, flags, run, env, say),
            "eval": lambda: _evaluate(cfg, run, env, say),
            "export": lambda: _export(exports, run, env, say),
            "report": lambda: _report(cfg, size, state, run, env, say),
        }
        for i, name in enumerate(STAGES, 1):
            if state.done(name):
                say(f"[{i}/{len(STAGES)}] {name}: done earlier ({state.info(name).get('seconds', 0):.0f} s), skipped")
                continue
            say(f"[{i}/{len(STAGES)}] {name}")
            if env.is_main:
                state.begin(name)
            t0 = time.perf_counter()
            info = stages[name]()
            seconds = time.perf_counter() - t0
            if info is None:  # interrupted (Ctrl-C or SIGTERM): the stage saved what it had
                if env.is_main:
                    state.finish(name, seconds, status="interrupted")
                say(f"pipeline: interrupted in {name}; run the same command again to continue there")
                return None
            if env.is_main:
                final = {"pretrain": "pretrain", "sft": "sft"}.get(name)
                if final:
                    state.set_final(final)
                state.finish(name, seconds, **info)
            barrier(env)
        if not env.is_main:
            return None
        ev = state.info("eval")
        for a in ev.get("answers", [])[:3]:
            say(f"  user: {a['question']}\n  model: {a['answer'] or '(nothing)'}")
        say(f"pipeline done in {sum(s.get('seconds', 0) for s in state.record['stages'].values()) / 60:.1f} min "
            f"(all runs of it): report {run / 'report.md'}")
        say(f"talk to it: gpt2kit chat --checkpoint {run}   or   gpt2kit serve --checkpoint {run} "
            "(then open http://127.0.0.1:8000/)")
        return state.record


# ------------------------------------------------------------------------------------------------ stages


def _tokenizer(cfg: PipelineConfig, size: PipelineSize, flags: StageFlags, run: Path, env: DistEnv,
               say) -> dict[str, Any]:
    """GPT-2's vocabulary, or a trained one in ``RUN/tokenizer``: learned from the sources, or copied from the
    directory ``--tokenizer`` names."""
    choice = size.tokenizer if cfg.tokenizer == "auto" else cfg.tokenizer
    info: dict[str, Any] = {"tokenizer": TOKENIZER_ID, "vocab_size": VOCAB_SIZE}
    if env.is_main and choice != TOKENIZER_ID:
        out = run / TOKENIZER_SUBDIR
        if choice == "train":
            reading = {k: v for k, v in flags.prepare.items() if k in SOURCE_SETTINGS}  # --text-field and friends
            tok = train_tokenizer(cfg.sources, out, vocab_size=cfg.vocab_size or size.vocab_size, overwrite=True,
                                  **reading)
        else:
            tok = load_tokenizer(choice)
            write_tokenizer_files(tok, out)
        info = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "dir": str(out),
                "trained_on": "SOURCE" if choice == "train" else choice}
    barrier(env)
    if env.is_main:
        say(f"tokenizer: {info['tokenizer']} ({info['vocab_size']:,} tokens)"
            + (f" in {info['dir']}" if "dir" in info else ", GPT-2's"))
    return info


def _prepare(cfg: PipelineConfig, state: PipelineState, flags: StageFlags, run: Path, env: DistEnv,
             say) -> dict[str, Any]:
    data = run / "data"
    if env.is_main:
        trained = state.info("tokenizer").get("tokenizer", TOKENIZER_ID) != TOKENIZER_ID
        tokenizer = str(run / TOKENIZER_SUBDIR) if trained else TOKENIZER_ID
        manifest = prepare(cfg.sources, data, tokenizer=tokenizer, **flags.prepare)
        splits = {k: v.get("tokens", 0) for k, v in manifest["splits"].items()}
    barrier(env)
    if not env.is_main:
        return {}
    say(f"prepared {', '.join(f'{v:,} {k}' for k, v in splits.items())} tokens into {data}")
    return {"dir": str(data), "tokens": splits}


def _pretrain(cfg: PipelineConfig, size: PipelineSize, flags: StageFlags, run: Path, env: DistEnv,
              say) -> dict[str, Any] | None:
    overrides = {**size.pretrain, **flags.pretrain, "out": str(run / "pretrain"), "data": str(run / "data"),
                 "device": cfg.device, "resume": "auto"}
    preset = cfg.preset or size.preset
    if cfg.pretrain_steps is not None:
        steps = cfg.pretrain_steps
        warmup = overrides.get("warmup_steps", get_preset(preset).schedule.warmup_steps)
        overrides.update(schedule_steps=steps, max_steps=steps, warmup_steps=warmup if warmup < steps else steps // 10)
    train_cfg, point = resolve_train_config(preset, overrides, log=say)
    result = run_pretraining(train_cfg, point, env=env, log=say)
    if result.interrupted:
        return None
    return {"preset": preset, "step": result.step, "train_loss": result.loss, "val_loss": result.val_loss,
            "best_val_loss": result.best_val_loss, "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "model": train_cfg.model.to_dict(), "settings": train_cfg.to_dict()}


def _sft(cfg: PipelineConfig, size: PipelineSize, flags: StageFlags, run: Path, env: DistEnv,
         say) -> dict[str, Any] | None:
    overrides = {**size.sft, **flags.sft, "checkpoint": str(run / "pretrain"), "train": cfg.sft or BUILTIN_SFT,
                 "out": str(run / "sft"), "device": cfg.device, "resume": "auto"}
    if cfg.sft_epochs is not None:
        overrides["epochs"] = cfg.sft_epochs
    if cfg.sft_steps is not None:
        overrides["max_steps"] = cfg.sft_steps
    sft_cfg, point = resolve_finetune_config(SFTConfig, overrides, log=say)
    results = run_sft(sft_cfg, point, env=env, log=say)
    if results.get("interrupted"):
        return None
    return {"data": overrides["train"], "steps": results.get("steps"), "val_loss": results.get("val_loss"),
            "best_val_loss": results.get("best_val_loss"), "train_examples": results.get("train_examples"),
            "val_examples": results.get("val_examples"), "template": results.get("template"),
            "settings": sft_cfg.to_dict()}


def _evaluate(cfg: PipelineConfig, run: Path, env: DistEnv, say) -> dict[str, Any]:
    """Validation loss and bits per byte of both models, each --eval task on both, samples and chat answers."""
    models = {"pretrained": run / "pretrain", "tuned": run / "sft"}
    has_val = read_manifest(run / "data")["splits"].get("val", {}).get("tokens", 0) > 0
    figures: dict[str, dict[str, Any]] = {name: {} for name in models}
    for name, path in models.items():
        if has_val:
            got = run_eval(EvalOptions(task="loss", checkpoint=str(path), device=cfg.device, data=str(run / "data"),
                                       split="val", limit=LOSS_BATCHES))
            if got is not None:
                m = got[0]
                figures[name]["val"] = {k: m.get(k) for k in ("loss", "bits_per_byte", "perplexity", "tokens")}
        for task, data in cfg.eval_data().items():
            got = run_eval(EvalOptions(task=task, checkpoint=str(path), device=cfg.device, data=data,
                                       limit=cfg.eval_limit))
            if got is not None:
                figures[name][task] = {k: v for k, v in got[0].items()
                                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
    texts = _samples_and_answers(cfg, run, env) if env.is_main else None
    barrier(env)
    if not env.is_main:
        return {}
    for name, figs in figures.items():
        val = figs.get("val")
        if val:
            say(f"{name}: validation loss {val['loss']:.4f}, {val['bits_per_byte']:.4f} bits per byte")
    return {"figures": figures, **(texts or {})}


def _samples_and_answers(cfg: PipelineConfig, run: Path, env: DistEnv) -> dict[str, Any]:
    """Samples of the pretrained model from the starts of validation windows; the tuned model's chat answers."""
    device = env.device
    pretrained = load_model(run / "pretrain", device=device)
    base, tok = pretrained.model, pretrained.tokenizer  # the data's vocabulary, which pretraining followed
    prompts = _sample_prompts(run / "data", cfg.samples, tok)
    samples = []
    for i, prompt in enumerate(prompts):
        idx = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=device)
        out = generate(base, idx, 48, temperature=0.8, top_k=40, seed=i, eos_id=tok.eot)
        text = tok.decode([t for t in out[0, idx.size(1):].tolist() if t != tok.eot])
        samples.append({"prompt": prompt, "text": text})
    loaded = load_model(run / "sft", device=device)
    tok = loaded.tokenizer
    template = template_from_checkpoint(loaded.checkpoint, loaded.source)
    answers = []
    for question in CHAT_QUESTIONS[:cfg.samples]:
        ids = chat_prompt_ids([{"role": "user", "content": question}], template, tok)
        out = generate(loaded.model, torch.tensor([ids], dtype=torch.long, device=device), 64, temperature=0.0,
                       eos_id=tok.eot)
        reply = [t for t in out[0, len(ids):].tolist() if t != tok.eot]
        answers.append({"question": question, "answer": tok.decode(reply).strip()})
    return {"samples": samples, "answers": answers}


def _sample_prompts(data: Path, n: int, tok: Tokenizer) -> list[str]:
    """The first words of ``n`` documents of the validation split (of the training split without one); where it
    has fewer documents, the first words of sentences spread over it."""
    manifest = read_manifest(data)
    split = "val" if manifest["splits"].get("val", {}).get("tokens", 0) > 0 else "train"
    entry = manifest["splits"][split]["shards"][0]
    tokens = open_shard(data / entry["file"], entry["tokens"])[:200_000].tolist()
    doc_starts = [i + 1 for i, t in enumerate(tokens) if t == tok.eot]
    spread = [len(tokens) * i // (n + 1) for i in range(1, n + 1)]
    prompts: list[str] = []
    for s in [0, *doc_starts, *spread]:
        window = tokens[s:s + 48]
        text = tok.decode(window[:window.index(tok.eot)] if tok.eot in window else window)
        if s not in doc_starts and s != 0 and ". " in text:
            text = text.split(". ", 1)[1]  # from the start of a sentence
        words = text.split()
        if len(words) >= 8 and " ".join(words[:6]) not in prompts:
            prompts.append(" ".join(words[:6]))
        if len(prompts) == n:
            break
    return prompts or ["The"] * n


def _export(exports: tuple[str, ...], run: Path, env: DistEnv, say) -> dict[str, Any]:
    written: dict[str, str] = {}
    if env.is_main:
        out = run / "export"
        if "hf" in exports:
            export_hf(run / "sft", out / "hf")
            written["hf"] = str(out / "hf")
            say(f"wrote {out / 'hf'} (transformers.GPT2LMHeadModel.from_pretrained reads it)")
        if "gguf" in exports:
            out.mkdir(parents=True, exist_ok=True)
            tuned = load_model(run / "sft")
            write_gguf(tuned.model, out / "model.gguf", "f16", name=run.resolve().name, tokenizer=tuned.tokenizer)
            written["gguf"] = str(out / "model.gguf")
            say(f"wrote {out / 'model.gguf'} (f16; llama.cpp, Ollama, LM Studio)")
    barrier(env)
    return {"written": written}


def _report(cfg: PipelineConfig, size: PipelineSize, state: PipelineState, run: Path, env: DistEnv,
            say) -> dict[str, Any]:
    path = None
    if env.is_main:
        path = write_report(run, cfg, size, state.record)
        say(f"wrote {path}")
    path = broadcast_object(str(path) if path else None, env.world_size)
    return {"file": path}


# ------------------------------------------------------------------------------------------------ helpers


def _plan_line(cfg: PipelineConfig, size: PipelineSize, env: DistEnv, state: PipelineState,
               exports: tuple[str, ...]) -> str:
    done = [s for s in STAGES if state.done(s)]
    steps = f"{cfg.pretrain_steps} steps" if cfg.pretrain_steps else "the preset's steps"
    choice = size.tokenizer if cfg.tokenizer == "auto" else cfg.tokenizer
    vocab = {"gpt2": "GPT-2's vocabulary", "train": f"a {cfg.vocab_size or size.vocab_size:,}-token vocabulary "
             "trained on SOURCE"}.get(choice, f"the tokenizer {choice}")
    return (f"pipeline: size {size.name} ({size.expect}) on {env.world_size} x {env.device.type} | {vocab} | pretrain "
            f"--preset {cfg.preset or size.preset}, {steps} | sft on {cfg.sft or BUILTIN_SFT}"
            f"{f', {cfg.sft_epochs} epochs' if cfg.sft_epochs else ''} | eval: validation loss"
            f"{''.join(', ' + t for t in cfg.eval_data())} | export {'+'.join(exports)} | run dir {cfg.out}"
            + (f" | continuing after {', '.join(done)}" if done else ""))


def _config(flat: dict[str, Any]) -> PipelineConfig:
    try:
        return from_flat(PipelineConfig, flat)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _remove_run(run: Path, log: Callable[[str], None]) -> None:
    """--fresh: remove what an earlier pipeline wrote to ``run`` (only the pipeline's own names)."""
    names = (TOKENIZER_SUBDIR, "data", "pretrain", "sft", "export", "report", "report.md", PIPELINE_FILE)
    removed = []
    for name in names:
        target = run / name
        if target.is_dir():
            shutil.rmtree(target)
            removed.append(name)
        elif target.exists():
            target.unlink()
            removed.append(name)
    if removed:
        log(f"pipeline: --fresh removed {', '.join(removed)} from {run}")
