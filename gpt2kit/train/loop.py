"""The training loop, shared by pretraining and fine-tuning (classification, SFT): one loop, one set of
checkpoints, resume, metrics and progress bar.

A job describes itself as a :class:`~gpt2kit.train.task.TrainTask` and calls :func:`train`::

    from gpt2kit.distributed import distributed
    from gpt2kit.train.loop import TrainTask, train

    with distributed(cfg.runtime.device, timeout=cfg.dist.dist_timeout) as env:  # torchrun env: rank, world, device
        task = TrainTask(
            model=model,                             # a pure nn.Module on CPU; the loop moves, compiles and wraps it
            model_config=model.config.to_dict(),     # saved as the checkpoint's model_config
            train_data=source,                       # next_batch() -> batch; state_dict()/load_state_dict()
            grad_accum_steps=A,                      # micro-batches per optimizer step on each rank
            loss_fn=lm_loss,                         # (model, batch on device) -> scalar mean loss of the micro-batch
            evaluate=fn,                             # (EvalContext) -> {"val_loss": ..., ...}; called on every rank
            sample=fn,                               # (EvalContext) -> list[str] logged samples; every rank
            param_groups=decay_param_groups,         # (model, weight_decay) -> param groups ("lr_scale" allowed)
            train_module=FusedLossGPT,               # optional: model -> the module to compile/wrap/call
            batch_tokens=default_batch_tokens,       # (batch) -> tokens in it, for tokens/s
            flops_per_token=gpt_flops_per_token(model),  # for MFU (None: not reported)
            extra_state={...},                       # plain data stored in every checkpoint
        )
        result = train(cfg, task, env)               # cfg: a LoopConfig; resumes when cfg.run.resume says so

Two names for the model, used throughout: ``model`` is ``TrainTask.model``, the pure module whose weights
checkpoints hold and the optimizer updates; ``wrapped`` is what a training step calls (``train_module(model)``,
compiled and/or DDP/FSDP-wrapped by :func:`~gpt2kit.distributed.wrap_model`).

Per optimizer step :func:`train` sets the scheduled lr (:func:`~gpt2kit.train.optim.apply_schedule`, the shape
from :mod:`gpt2kit.train.schedule`), runs :func:`train_step` (``grad_accum_steps`` micro-steps, gradient
all-reduce only on the last, global grad-norm clip of the unscaled gradients; an out-of-memory error splits
the micro-batch and redoes the step: :class:`~gpt2kit.train.guards.OutOfMemoryBackoff`), applies the NaN
policy (:class:`~gpt2kit.train.guards.NanPolicy`: stop with a clear message, or skip with ``on_nan="skip"``;
under ``--dtype float16`` a step whose gradients overflowed the loss scale is skipped and the scale lowered),
steps the optimizer through the loss scaler (AdamW, or Muon + AdamW:
:func:`~gpt2kit.train.optim.build_optimizer`), updates the progress bar, logs to
``metrics.jsonl``/TensorBoard every ``log_every``, evaluates every ``eval_every`` (and at the end), and saves
``RUN/checkpoints/step_XXXXXXXX.pt`` (:class:`~gpt2kit.train.checkpointer.Checkpointer`) every ``save_every``,
at the end, on a new best ``val_loss`` and on SIGTERM/SIGINT (then returns with ``interrupted=True``).
Evaluation and sampling never disturb the training RNG streams, so a resumed run is bitwise the run that was
not interrupted.

Checkpoint keys written here: model_config, model, optimizer, optimizer_format, loader, rng (one per rank),
config, metrics, world_size, grad_accum_steps, grad_scaler (the float16 loss scaler's state; empty otherwise),
torch_version, the :class:`~gpt2kit.train.state.RunState`
counters (step, skipped_steps, tokens_seen, train_seconds, best_val_loss), plus ``extra_state``;
:func:`gpt2kit.checkpoint.save_checkpoint` adds format_version, kind and tokenizer.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from gpt2kit.checkpoint import ResumePoint
from gpt2kit.device import autocast, autocast_dtype_for, compile_supported, grad_scaler, pinned_transfer, set_tf32
from gpt2kit.distributed import (
    DistEnv,
    all_reduce_mean,
    any_rank,
    gather_objects,
    gradient_sync,
    is_fsdp,
    setup_distributed,
    wrap_model,
)
from gpt2kit.errors import UserError
from gpt2kit.train.checkpointer import Checkpointer
from gpt2kit.train.config import LoopConfig
from gpt2kit.train.guards import NanPolicy, OutOfMemoryBackoff, out_of_memory_message
from gpt2kit.train.metrics import MetricsWriter, peak_flops
from gpt2kit.train.optim import Optimizer, apply_schedule, build_optimizer, decay_param_groups
from gpt2kit.train.schedule import lr_at
from gpt2kit.train.state import RunState, rng_state, seed_everything, set_rng_state
from gpt2kit.train.task import (
    BatchSource,
    EvalContext,
    TrainResult,
    TrainTask,
    default_batch_tokens,
    lm_loss,
)
from gpt2kit.train.tracking import WandbTracker


def train(cfg: LoopConfig, task: TrainTask, env: DistEnv | None = None, resume: ResumePoint | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Run (or continue) training as described in the module docstring; returns how it ended.

    ``env`` defaults to :func:`~gpt2kit.distributed.setup_distributed`; ``resume`` defaults to what
    ``cfg.run.resume`` names (see :func:`~gpt2kit.checkpoint.find_resume`). Only rank 0 prints and writes.
    """
    env = env or setup_distributed(cfg.runtime.device, cfg.dist.dist_timeout)
    say = _rank0_printer(log, env)
    checkpointer = Checkpointer(cfg.run.out, cfg.ckpt.keep_last, env,
                                sharded=cfg.ckpt.checkpoint_format == "sharded")
    resume = checkpointer.resume_point(cfg.run.resume, resume)
    autocast_dtype = autocast_dtype_for(cfg.runtime.dtype, env.device.type)
    _check_and_configure(cfg, task, env.device, autocast_dtype)

    # ---- set up: the model (the checkpoint's weights when resuming), its wrapped form, the optimizer, the state
    model = task.model
    if resume is not None:
        checkpointer.restore_model(resume, model, task.model_config)
    model.to(env.device)
    wrapped = wrap_model(task.train_module(model) if task.train_module else model, env,
                         parallel=cfg.dist.parallel, compile=cfg.runtime.compile and compile_supported(env.device.type))
    optimizer = build_optimizer(model, cfg, env.device, task.param_groups)
    scaler = grad_scaler(env.device.type, autocast_dtype)
    tracker = None
    if cfg.logging.wandb and env.is_main:
        tracker = WandbTracker(cfg.logging.wandb, run_name=cfg.logging.wandb_run, config=_settings(task, cfg),
                               run_dir=cfg.run.out, say=say)
    metrics = MetricsWriter(cfg.run.out, tensorboard=cfg.logging.tensorboard, enabled=env.is_main, tracker=tracker)
    state = RunState()
    if resume is not None:
        _continue_from(resume, state, model, wrapped, optimizer, scaler, task, metrics, checkpointer, cfg, env)
        say(f"resumed from {resume.path} at step {state.step}")
    else:
        _fresh_start(metrics, cfg, env)
    checkpointer.tidy(resume, state.step, state.best_val_loss)
    checkpointer.write_config(_settings(task, cfg))
    last_ckpt = resume.path if resume is not None else None
    speed = _Speedometer(task.flops_per_token, env, autocast_dtype, cfg.runtime.tf32)
    say(_header(cfg, task, env, state.step, speed.peak_source, autocast_dtype))
    if state.step >= cfg.last_step:
        say(f"already at step {state.step} >= --max-steps {cfg.last_step}; nothing to train "
            "(raise --max-steps to continue)")
        metrics.close()
        return TrainResult(state.step, None, None, state.best_val_loss, last_ckpt, False, metrics.records)

    # ---- train: for each step, train_step, log, maybe evaluate, maybe checkpoint
    nan_policy = NanPolicy(cfg, checkpointer, say)
    backoff = OutOfMemoryBackoff(cfg, task, env, say, save=lambda: checkpointer.save(
        state.step, model, optimizer, is_fsdp(wrapped),
        _payload(task, cfg, env, state, metrics, gather_objects(rng_state(), env), scaler)))
    eval_ctx = EvalContext(_unwrap_ddp(wrapped), model, state.step, env, autocast_dtype, cfg)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    bar = _progress_bar(cfg, env, state.step)
    loss = grad_norm = val_loss = None
    shown_val: dict[str, float] = {}  # the last validation figures, kept on the progress line
    interrupted = False
    with _StopSignals(say) as stop, _closing(bar, metrics):
        while state.step < cfg.last_step:
            t0 = time.perf_counter()
            lr = apply_schedule(optimizer, state.step, cfg)
            with out_of_memory_message(env.device, cfg, task):
                loss, grad_norm, tokens = backoff.run(lambda: train_step(
                    wrapped, task, params, cfg.optim.grad_clip, env, autocast_dtype, scaler, optimizer), optimizer)
                if nan_policy.allows_update(loss, grad_norm, state, scaler):
                    scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            state.step += 1
            tok_s, mfu = speed.step_done(state, tokens * env.world_size, time.perf_counter() - t0)

            stop_now = any_rank(stop.received is not None, env)
            eval_due, save_due = _due(cfg, state.step, stop_now)
            rng = gather_objects(rng_state(), env) if (eval_due or save_due) else None
            results = evaluate(task, eval_ctx, state.step, checkpointer, say, metrics) if eval_due else {}
            new_best = _new_best_val_loss(results, state, may_save=save_due or cfg.ckpt.save_best)
            val_loss = _val_loss(results, val_loss)
            shown_val = _val_figures(results) or shown_val  # after an evaluation, so the last line has the final ones
            bar.set_postfix_str(_postfix(loss, lr, grad_norm, tok_s, mfu, state.skipped_steps, shown_val),
                                refresh=False)
            bar.update(1)
            if state.step % cfg.logging.log_every == 0 or state.step == cfg.last_step or results or stop_now:
                metrics.log(_record(state, task, loss, lr, grad_norm, speed, results, scaler))
            if save_due or new_best is not None:
                last_ckpt = checkpointer.save(state.step, model, optimizer, is_fsdp(wrapped),
                                              _payload(task, cfg, env, state, metrics, rng, scaler), new_best)
            if stop_now:
                interrupted = True
                say(f"received {stop.received or 'a stop signal on another rank'}: saved {last_ckpt} at step "
                    f"{state.step}; continue with --resume auto")
                break
    return TrainResult(state.step, loss, val_loss, state.best_val_loss, last_ckpt, interrupted, metrics.records)


# ------------------------------------------------------------------------------------------------ one step

def train_step(wrapped: nn.Module, task: TrainTask, params: list[nn.Parameter], grad_clip: float, env: DistEnv,
               autocast_dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None = None,
               optimizer: Optimizer | None = None) -> tuple[float, float, int]:
    """Forward and backward over ``task.grad_accum_steps`` micro-batches, then clip the global gradient norm.

    With an enabled ``scaler`` (float16) the backward runs on the scaled loss and ``optimizer``'s gradients are
    unscaled before the norm is taken. Returns (mean loss over the global batch, gradient norm before clipping,
    this rank's tokens); the caller steps the optimizer (through the scaler).
    """
    scaler = scaler or torch.amp.GradScaler(env.device.type, enabled=False)
    A = task.grad_accum_steps
    loss_sum = torch.zeros((), device=env.device)
    tokens = 0
    for micro in range(A):
        batch = to_device(task.train_data.next_batch(), env.device)
        tokens += task.batch_tokens(batch)
        with gradient_sync(wrapped, micro == A - 1):
            with autocast(env.device, autocast_dtype):
                loss = task.loss_fn(wrapped, batch)
            # the gradients of the micro-steps are summed, so each loss is divided by A
            # to make the sum the gradient of the mean loss over the global batch
            loss = loss / A
            loss_sum += loss.detach()
            scaler.scale(loss).backward()
    all_reduce_mean(loss_sum, env)
    if scaler.is_enabled():
        scaler.unscale_(optimizer)  # clip (and report) the true gradients, not the scaled ones
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(loss_sum), float(norm), tokens


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (tensors, tuples, lists, dicts) with every tensor on ``device``."""
    if isinstance(batch, torch.Tensor):
        if pinned_transfer(device.type):
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ------------------------------------------------------------------------------------- evaluation, saving

def evaluate(task: TrainTask, ctx: EvalContext, step: int, checkpointer: Checkpointer,
             say: Callable[[str], None], metrics: MetricsWriter | None = None) -> dict[str, Any]:
    """The task's evaluation and samples at ``step`` (every rank); the training RNG streams are left as they were."""
    results: dict[str, Any] = {}
    if task.evaluate is None and task.sample is None:
        return results
    snapshot = rng_state()
    ctx.step = step
    if task.evaluate is not None:
        results.update(task.evaluate(ctx))
    if task.sample is not None:
        texts = task.sample(ctx)
        for i, text in enumerate(texts or []):
            say(f"sample {i} @ step {step}: {text!r}")
        checkpointer.append_samples(step, texts)
        if metrics is not None:
            metrics.log_samples(step, texts or [])
    set_rng_state(snapshot)
    if results:
        say(f"step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float)))
    return results


def _due(cfg: LoopConfig, step: int, stop_now: bool) -> tuple[bool, bool]:
    """(evaluate now, save now) after ``step``: on their cadence and at the last step; a stop saves, never evaluates."""
    last = step == cfg.last_step
    eval_due = ((cfg.cadence.eval_every > 0 and step % cfg.cadence.eval_every == 0) or last) and not stop_now
    save_due = step % cfg.cadence.save_every == 0 or last or stop_now
    return eval_due, save_due


def _val_loss(results: dict[str, Any], previous: float | None) -> float | None:
    """The finite ``val_loss`` in ``results``, else the one measured before."""
    v = results.get("val_loss")
    return float(v) if v is not None and math.isfinite(v) else previous


def _new_best_val_loss(results: dict[str, Any], state: RunState, may_save: bool) -> float | None:
    """The new best validation loss in ``results`` (recorded in ``state``) when it beats the best and may be saved."""
    v = _val_loss(results, None)
    if v is None or not may_save or (state.best_val_loss is not None and v >= state.best_val_loss):
        return None
    state.best_val_loss = v
    return v


def _payload(task: TrainTask, cfg: LoopConfig, env: DistEnv, state: RunState, metrics: MetricsWriter,
             rng: list[dict[str, Any]] | None, scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """Everything a checkpoint holds besides model and optimizer state."""
    return {
        **task.extra_state, "model_config": task.model_config, "loader": task.train_data.state_dict(), "rng": rng,
        "config": _settings(task, cfg), "metrics": metrics.records, "world_size": env.world_size,
        "grad_accum_steps": task.grad_accum_steps, "grad_scaler": scaler.state_dict(),
        "torch_version": str(torch.__version__), **state.state_dict(),
    }


def _settings(task: TrainTask, cfg: LoopConfig) -> dict[str, Any]:
    """What the run records as its settings: the job's, else the loop config's, with the micro-batch in use (an
    out-of-memory back-off may have split it: a resumed run continues with the smaller one)."""
    settings = task.settings if task.settings is not None else cfg.to_dict()
    in_use = getattr(task.train_data, "micro_batch_size", None)
    if isinstance(in_use, int) and settings.get("batch_size") not in (None, in_use):
        settings = {**settings, "batch_size": in_use}
        if "accum_steps" in settings:  # fine-tuning's accumulation is a setting of its own (not a token total)
            settings["accum_steps"] = task.grad_accum_steps
    return settings


def _continue_from(point: ResumePoint, state: RunState, model: nn.Module, wrapped: nn.Module,
                   optimizer: Optimizer, scaler: torch.amp.GradScaler, task: TrainTask, metrics: MetricsWriter,
                   checkpointer: Checkpointer, cfg: LoopConfig, env: DistEnv) -> None:
    """Restore optimizer, loss scaler, counters, data position, RNG streams and metrics from the checkpoint."""
    ckpt = point.checkpoint
    checkpointer.restore_optimizer(point, model, optimizer, is_fsdp(wrapped))
    if scaler.is_enabled() and ckpt.get("grad_scaler"):
        # a checkpoint without one (saved before float16 existed, or by a float32/bfloat16 run) starts a new scale
        scaler.load_state_dict(ckpt["grad_scaler"])
    state.load_state_dict(ckpt)
    task.train_data.load_state_dict(ckpt["loader"])
    rngs = ckpt.get("rng") or []
    if len(rngs) == env.world_size:
        set_rng_state(rngs[env.rank])
    else:  # another world size: rank streams cannot all continue, so derive fresh ones from the step
        seed_everything(cfg.run.seed + env.rank + 1_000_003 * state.step)
    metrics.restore(ckpt.get("metrics") or [], state.step)


def _fresh_start(metrics: MetricsWriter, cfg: LoopConfig, env: DistEnv) -> None:
    seed_everything(cfg.run.seed + env.rank)
    if env.is_main and metrics.path is not None and metrics.path.exists():  # left by a run killed before its first save
        metrics.restore([], 0)


# ------------------------------------------------------------------------------------- logging and signals

class _Speedometer:
    """Tokens/s and MFU of each step, and averaged over the steps since the last logged record."""

    def __init__(self, flops_per_token: float | None, env: DistEnv, autocast_dtype: torch.dtype | None,
                 tf32: bool) -> None:
        self.flops_per_token, self.world_size = flops_per_token, env.world_size
        self.peak, self.peak_source = peak_flops(env.device, autocast_dtype or torch.float32, tf32) \
            if flops_per_token else (None, "no FLOPs estimate")
        self.window_tokens, self.window_time = 0, 0.0

    def mfu(self, tok_s: float) -> float | None:
        if not (self.peak and self.flops_per_token):
            return None
        return self.flops_per_token * tok_s / (self.peak * self.world_size)

    def step_done(self, state: RunState, tokens: int, seconds: float) -> tuple[float, float | None]:
        """Count a step of ``tokens`` (all ranks) in ``seconds``; returns its (tokens/s, MFU)."""
        state.tokens_seen += tokens
        state.train_seconds += seconds
        self.window_tokens += tokens
        self.window_time += seconds
        return tokens / seconds, self.mfu(tokens / seconds)

    def window_rate(self) -> float:
        """Tokens/s since the last call, then start a new window."""
        rate = self.window_tokens / self.window_time if self.window_time > 0 else float("nan")
        self.window_tokens, self.window_time = 0, 0.0
        return rate


def _record(state: RunState, task: TrainTask, loss: float, lr: float, grad_norm: float, speed: _Speedometer,
            results: dict[str, Any], scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """One metrics.jsonl line."""
    rate = speed.window_rate()
    record: dict[str, Any] = {
        "step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": rate,
        "mfu": speed.mfu(rate), "tokens": state.tokens_seen, "time_s": round(state.train_seconds, 3),
    }
    epoch = getattr(task.train_data, "epoch", None)
    if isinstance(epoch, int):
        record["epoch"] = epoch
    if state.skipped_steps:
        record["skipped_steps"] = state.skipped_steps
    if scaler.is_enabled():
        record["loss_scale"] = scaler.get_scale()
    record.update({k: v for k, v in results.items() if isinstance(v, (int, float))})
    return record


def _val_figures(results: dict[str, Any]) -> dict[str, float]:
    """The finite validation loss and bits per byte in ``results``, for the progress line."""
    return {k: float(results[k]) for k in ("val_loss", "val_bpb")
            if isinstance(results.get(k), (int, float)) and math.isfinite(results[k])}


def _postfix(loss: float, lr: float, grad_norm: float, tok_s: float, mfu: float | None, skipped: int = 0,
             val: dict[str, float] | None = None) -> str:
    """The progress bar's figures: this step's, and the last evaluation's validation loss and bits per byte."""
    val = val or {}
    shown = "".join(f" {name} {val[key]:.4f}" for key, name in (("val_loss", "val"), ("val_bpb", "bpb")) if key in val)
    return (f"loss {loss:.4f}{shown} lr {lr:.2e} gnorm {grad_norm:.2f} tok/s {_fmt_rate(tok_s)}"
            + (f" MFU {mfu:.1%}" if mfu is not None else "") + (f" skipped {skipped}" if skipped else ""))


def _fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _progress_bar(cfg: LoopConfig, env: DistEnv, step: int) -> tqdm:
    return tqdm(total=cfg.last_step, initial=step, desc="train", unit="step", dynamic_ncols=True,
                disable=not (env.is_main and cfg.logging.progress), file=sys.stderr,
                mininterval=0.1 if sys.stderr.isatty() else 60)


def _rank0_printer(log: Callable[[str], None] | None, env: DistEnv) -> Callable[[str], None]:
    if not env.is_main:
        return lambda msg: None
    if log is not None:
        return log
    # in a log file tqdm.write redraws the bar after every message, repeating its final line; print there
    if sys.stderr.isatty():
        return lambda msg: tqdm.write(msg, file=sys.stdout)
    return lambda msg: print(msg, flush=True)


@contextlib.contextmanager
def _closing(bar: tqdm, metrics: MetricsWriter) -> Iterator[None]:
    try:
        yield
    finally:
        bar.close()
        metrics.close()


def _header(cfg: LoopConfig, task: TrainTask, env: DistEnv, step: int, peak_source: str,
            autocast_dtype: torch.dtype | None) -> str:
    precision = {torch.bfloat16: "bfloat16", torch.float16: "float16 (loss scaling)"}.get(autocast_dtype, "float32")
    if cfg.runtime.dtype == "auto":
        precision += " (--dtype auto)"
    compiled = "on" if cfg.runtime.compile and compile_supported(env.device.type) else "off"
    if cfg.runtime.compile and compiled == "off":
        compiled += f" (not on {env.device.type})"
    return (f"world {env.world_size} x {env.device} | grad accum {task.grad_accum_steps} | {precision} | compile "
            f"{compiled} | steps {step} -> {cfg.last_step} (schedule "
            f"{cfg.cadence.schedule_steps}) | MFU vs {peak_source}"
            + (f" | note: stops at step {cfg.last_step}, before the schedule ends, so the lr will not decay fully"
               if cfg.last_step < cfg.cadence.schedule_steps else ""))


def _check_and_configure(cfg: LoopConfig, task: TrainTask, device: torch.device,
                         autocast_dtype: torch.dtype | None) -> None:
    if task.grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {task.grad_accum_steps}")
    if autocast_dtype == torch.float16 and cfg.dist.parallel == "fsdp":
        # each FSDP rank sees only its shard of the gradients, so ranks could disagree on an overflow
        raise UserError(f"--dtype {cfg.runtime.dtype} trains in float16 with a loss scaler, which gpt2kit does not "
                        "run under --parallel fsdp; use --parallel ddp, or --dtype bfloat16/float32")
    set_tf32(device.type, cfg.runtime.tf32)


def _unwrap_ddp(wrapped: nn.Module) -> nn.Module:
    """What evaluation calls: the wrapped module without DDP (whose forward would expect a backward)."""
    return wrapped.module if isinstance(wrapped, nn.parallel.DistributedDataParallel) else wrapped


class _StopSignals:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps; a second Ctrl-C stops at once."""

    def __init__(self, say: Callable[[str], None] = lambda msg: None) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}
        self._say = say

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a long step would otherwise look like an ignored Ctrl-C
            self._say("stopping after this step (Ctrl-C again to abort)")

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


__all__ = [
    "BatchSource", "EvalContext", "TrainResult", "TrainTask", "build_optimizer",
    "decay_param_groups", "default_batch_tokens", "evaluate", "lm_loss", "lr_at", "to_device",
    "train", "train_step",
]
