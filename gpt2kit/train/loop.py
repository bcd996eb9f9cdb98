"""The training loop, shared by pretraining and fine-tuning (classification, SFT): one loop, one set of
checkpoints, resume, metrics and progress bar.

A job describes itself as a :class:`TrainTask` and calls :func:`train`::

    from gpt2kit.train import LoopConfig, TrainTask, train, setup_distributed

    env = setup_distributed(cfg.device)          # torchrun env -> rank, world size, device
    task = TrainTask(
        model=model,                             # a pure nn.Module on CPU; the loop moves, compiles and wraps it
        model_config=model.config.to_dict(),     # saved as the checkpoint's model_config (load_model rebuilds from it)
        train_data=source,                       # next_batch() -> batch; state_dict()/load_state_dict() (plain data)
        grad_accum_steps=A,                      # micro-batches per optimizer step on each rank
        loss_fn=lm_loss,                         # (model, batch on device) -> scalar mean loss of the micro-batch
        evaluate=fn,                             # (EvalContext) -> {"val_loss": ..., ...}; called on every rank
        sample=fn,                               # (EvalContext) -> list[str] logged samples; called on every rank
        param_groups=decay_param_groups,         # (raw model, weight_decay) -> AdamW param groups ("lr_scale" allowed)
        train_module=FusedLossGPT,               # optional: model -> the module to compile/wrap/call (same params)
        batch_tokens=default_batch_tokens,       # (batch) -> tokens in it, for tokens/s
        flops_per_token=gpt_flops_per_token(model),  # for MFU (None: not reported)
        extra_state={...},                       # plain data stored in every checkpoint
    )
    result = train(cfg, task, env)              # cfg: a LoopConfig (or subclass); resumes when cfg.resume says so

What :func:`train` does per optimizer step: sets the scheduled lr, runs ``grad_accum_steps`` micro-steps
(gradient all-reduce only on the last), clips the global grad norm, checks loss and norm are finite
(stop with a clear message, or skip with ``on_nan="skip"``), steps AdamW, updates the progress bar,
logs to ``metrics.jsonl``/TensorBoard every ``log_every``, evaluates every ``eval_every`` (and at the end),
and saves ``RUN/checkpoints/step_XXXXXXXX.pt`` every ``save_every``, at the end, on a new best
``val_loss`` and on SIGTERM/SIGINT (then returns with ``interrupted=True``). Evaluation and sampling never
disturb the training RNG streams, so a resumed run is bitwise the run that was not interrupted.

Checkpoint keys written here: model_config, model, optimizer, optimizer_format, step, loader, rng (one per
rank), config, metrics, best_val_loss, world_size, grad_accum_steps, skipped_steps, tokens_seen,
train_seconds, plus ``extra_state``; :func:`gpt2kit.checkpoint.save_checkpoint` adds format_version,
kind and tokenizer.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from gpt2kit.checkpoint import (
    BEST_FILE, CHECKPOINT_DIR, list_step_checkpoints, load_state_dict_checked, model_state_dict,
    prune_step_checkpoints, save_checkpoint, step_checkpoint_path, write_best,
)
from gpt2kit.device import pinned_transfer, set_tf32
from gpt2kit.errors import UserError
from gpt2kit.train.config import LoopConfig
from gpt2kit.train.distributed import (
    DistEnv, all_reduce_mean, any_rank, barrier, gather_objects, gradient_sync, is_fsdp, setup_distributed,
    wrap_model,
)
from gpt2kit.train.metrics import MetricsWriter, peak_flops
from gpt2kit.train.state import ResumePoint, find_resume, rng_state, seed_everything, set_rng_state

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "padded_vocab_size", "bias")
"""model_config keys that fix the weights' shapes; a resumed run must match them."""


class BatchSource(Protocol):
    """Where training batches come from (e.g. :class:`gpt2kit.data.loader.TokenLoader`)."""

    def next_batch(self) -> Any:
        """The next micro-batch for this rank (tensors, tuples/dicts of tensors)."""

    def state_dict(self) -> dict:
        """Position in the data as plain data (the same on every rank)."""

    def load_state_dict(self, state: dict) -> None:
        """Continue at exactly the micro-batch after the saved one."""


@dataclass
class EvalContext:
    """What an ``evaluate``/``sample`` callback gets."""

    model: nn.Module
    """The model to call for forward passes (compiled and/or FSDP-sharded; not DDP-wrapped). Every rank calls it."""
    raw_model: nn.Module
    """``TrainTask.model`` itself, not compiled or wrapped (for generation and attributes such as ``config``)."""
    step: int
    """Optimizer steps done."""
    env: DistEnv
    autocast_dtype: torch.dtype | None
    """bfloat16 when the run computes in bf16, else None."""
    config: LoopConfig

    @property
    def device(self) -> torch.device:
        """This rank's device."""
        return self.env.device


def lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Next-token cross-entropy of an ``(inputs, targets)`` batch, (B, T) each."""
    x, y = batch
    _, loss = model(x, y)
    return loss


def default_batch_tokens(batch: Any) -> int:
    """Tokens in a batch: the element count of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    if isinstance(batch, dict):
        batch = list(batch.values())
    return default_batch_tokens(batch[0])


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on 2-D parameters (matmul weights, embeddings), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class TrainTask:
    """A training job for :func:`train` (see the module docstring)."""

    model: nn.Module
    model_config: dict[str, Any]
    train_data: BatchSource
    grad_accum_steps: int = 1
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = lm_loss
    evaluate: Callable[[EvalContext], dict[str, float]] | None = None
    sample: Callable[[EvalContext], list[str]] | None = None
    param_groups: Callable[[nn.Module, float], list[dict[str, Any]]] = decay_param_groups
    batch_tokens: Callable[[Any], int] = default_batch_tokens
    flops_per_token: float | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)
    train_module: Callable[[nn.Module], nn.Module] | None = None
    """Builds the module the loop compiles/wraps and calls from ``model`` (e.g. FusedLossGPT); default: the model."""
    oom_hint: str = "lower --batch-size (gradient accumulation keeps the global batch the same)"
    """Appended to the out-of-memory message: which flags to lower."""


@dataclass
class TrainResult:
    """How a :func:`train` call ended."""

    step: int
    """Optimizer steps done."""
    loss: float | None
    """Training loss of the last step run (None when no step ran)."""
    val_loss: float | None
    """The last validation loss measured."""
    best_val_loss: float | None
    checkpoint: Path | None
    """The last checkpoint written (or resumed from)."""
    interrupted: bool
    """Stopped by SIGTERM/SIGINT after saving."""
    metrics: list[dict[str, Any]]
    """Every record logged so far (resumed records included)."""


class TrainingDiverged(UserError):
    """The loss or gradient norm became NaN/inf."""


class _StopSignals:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


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


def default_fused_adamw(device: torch.device) -> bool:
    """Whether AdamW runs its fused kernel by default: on CUDA and CPU (torch >= 2.4 has both). On the 2-core
    CPU the fused step for the L4 C256 benchmark model took 7.9 ms against 54 ms for the default. The update is
    the same formula with another rounding order: equal after 3 steps in a check, while the 1600-step demo
    ended at validation loss 5.4420 instead of 5.4545."""
    return device.type in ("cuda", "cpu")


def _optimizer(raw: nn.Module, cfg: LoopConfig, task: TrainTask, device: torch.device) -> torch.optim.Optimizer:
    groups = task.param_groups(raw, cfg.weight_decay)
    fused = cfg.fused_adamw if cfg.fused_adamw is not None else default_fused_adamw(device)
    kw: dict[str, Any] = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if fused:
        kw["fused"] = True
    return torch.optim.AdamW(groups, **kw)


def _check_model_config(saved: dict[str, Any], wanted: dict[str, Any], source: Path) -> None:
    diff = [k for k in SHAPE_KEYS if saved.get(k) != wanted.get(k)]
    if diff:
        have = ", ".join(f"{k}={saved.get(k)}" for k in diff)
        want = ", ".join(f"{k}={wanted.get(k)}" for k in diff)
        raise UserError(
            f"--resume: {source} holds a model with {have}, but this run asks for {want}; resume with the same "
            "model settings (omit --preset/--n-layer/... to take them from the checkpoint) or choose a new --out"
        )


def _state_for_checkpoint(model: nn.Module, raw: nn.Module, optimizer: torch.optim.Optimizer,
                          fsdp: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(model weights, optimizer state, optimizer format); collective under FSDP, full on rank 0."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        sd = get_model_state_dict(raw, options=opts)
        sd.pop("lm_head.weight", None)  # tied to transformer.wte.weight
        return sd, get_optimizer_state_dict(raw, optimizer, options=opts), "fqn"
    return model_state_dict(raw), optimizer.state_dict(), "index"


def _load_optimizer(raw: nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict[str, Any], fsdp: bool,
                    source: Path) -> None:
    fmt = ckpt.get("optimizer_format", "index")
    if (fmt == "fqn") != fsdp:
        saved = "fsdp" if fmt == "fqn" else "ddp (or one process)"
        raise UserError(f"--resume: {source} was saved with --parallel {saved}; resume with the same --parallel")
    try:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(raw, optimizer, ckpt["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"--resume: {source}: optimizer state does not fit this model ({e})") from None


def _drop_samples_after(run_dir: Path, step: int) -> None:
    """Keep ``samples.jsonl`` in step with the checkpoint the run continues from (a killed run logged past it)."""
    import json

    from gpt2kit.io import atomic_write_text

    path = run_dir / "samples.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by the kill
    atomic_write_text(path, "".join(keep))


def _remove_stale_temp_files(run_dir: Path) -> None:
    """Delete half-written checkpoints (``.NAME.tmp.PID``) that a killed run left; each can be gigabytes."""
    import os

    cdir = run_dir / CHECKPOINT_DIR
    if not cdir.is_dir():
        return
    for p in cdir.glob(".*.tmp.*"):
        pid = p.name.rsplit(".", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer is still alive
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except PermissionError:
            continue


def _repair_best(run_dir: Path, path: Path, step: int, best_val: float, records: list[dict[str, Any]],
                 keep_last: int) -> None:
    """Finish what a run killed between writing a new-best checkpoint and ``best.json`` left undone."""
    import json

    if path.parent != run_dir / CHECKPOINT_DIR:
        return
    try:
        recorded = json.loads((run_dir / CHECKPOINT_DIR / BEST_FILE).read_text()).get("val_loss")
    except (OSError, ValueError, AttributeError):
        recorded = None
    is_best = any(r.get("step") == step and r.get("val_loss") == best_val for r in records)
    if recorded != best_val and is_best:
        write_best(run_dir, path, step, best_val)
        prune_step_checkpoints(run_dir, keep_last)


def _fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def train(cfg: LoopConfig, task: TrainTask, env: DistEnv | None = None, resume: ResumePoint | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Run (or continue) training as described in the module docstring; returns how it ended.

    ``env`` defaults to :func:`~gpt2kit.train.distributed.setup_distributed`; ``resume`` defaults to what
    ``cfg.resume`` names (see :func:`~gpt2kit.train.state.find_resume`). Only rank 0 prints and writes.
    """
    env = env or setup_distributed(cfg.device)
    if resume is None and cfg.resume:
        resume = find_resume(cfg.out, cfg.resume)
    if resume is None and list_step_checkpoints(cfg.out):
        # a fresh start would overwrite the earlier run's step_*.pt and best.json
        raise UserError(
            f"--out {cfg.out}: already holds checkpoints of an earlier run (up to "
            f"{list_step_checkpoints(cfg.out)[-1].name}); continue it with --resume auto, or choose a new --out"
        )
    main = env.is_main
    from tqdm import tqdm

    say = log or (lambda msg: tqdm.write(msg, file=sys.stdout))
    say = say if main else (lambda msg: None)
    device = env.device
    run_dir = Path(cfg.out)
    autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    set_tf32(device.type, cfg.tf32)
    A = task.grad_accum_steps
    if A < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {A}")

    # ---- model, optimizer and (when resuming) their state
    raw = task.model
    ckpt = resume.checkpoint if resume is not None else None
    if ckpt is not None:
        _check_model_config(ckpt["model_config"], task.model_config, resume.path)
        load_state_dict_checked(raw, ckpt["model"], str(resume.path))
    raw.to(device)
    module = task.train_module(raw) if task.train_module is not None else raw
    model = wrap_model(module, env, parallel=cfg.parallel, compile=cfg.compile)
    fsdp = is_fsdp(model)
    eval_model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    optimizer = _optimizer(raw, cfg, task, device)
    metrics = MetricsWriter(run_dir, tensorboard=cfg.tensorboard, enabled=main)
    step, skipped, tokens_seen, train_seconds = 0, 0, 0, 0.0
    best_val: float | None = None
    last_ckpt: Path | None = None
    if ckpt is not None:
        _load_optimizer(raw, optimizer, ckpt, fsdp, resume.path)
        step = int(ckpt["step"])
        task.train_data.load_state_dict(ckpt["loader"])
        rngs = ckpt.get("rng") or []
        if len(rngs) == env.world_size:
            set_rng_state(rngs[env.rank])
        else:  # another world size: rank streams cannot all continue, so derive fresh ones from the step
            seed_everything(cfg.seed + env.rank + 1_000_003 * step)
        best_val = ckpt.get("best_val_loss")
        skipped = int(ckpt.get("skipped_steps", 0))
        tokens_seen = int(ckpt.get("tokens_seen", 0))
        train_seconds = float(ckpt.get("train_seconds", 0.0))
        metrics.restore(ckpt.get("metrics") or [], step)
        last_ckpt = resume.path
        say(f"resumed from {resume.path} at step {step}")
    else:
        seed_everything(cfg.seed + env.rank)
        if main and metrics.path is not None and metrics.path.exists():  # left by a run killed before its first save
            metrics.restore([], 0)
    if main:
        _drop_samples_after(run_dir, step)
        _remove_stale_temp_files(run_dir)
        if resume is not None and best_val is not None:
            _repair_best(run_dir, resume.path, step, best_val, ckpt.get("metrics") or [], cfg.keep_last)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        import json

        from gpt2kit.io import atomic_write_text

        atomic_write_text(run_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=1) + "\n")

    last_step = cfg.last_step
    peak, peak_source = peak_flops(device, autocast_dtype or torch.float32, cfg.tf32) \
        if task.flops_per_token else (None, "no FLOPs estimate")
    say(f"world {env.world_size} x {device} | grad accum {A} | {cfg.dtype} | compile {'on' if cfg.compile else 'off'}"
        f" | steps {step} -> {last_step} (schedule {cfg.schedule_steps}) | MFU vs {peak_source}")
    if step >= last_step:
        say(f"already at step {step} >= --max-steps {last_step}; nothing to train (raise --max-steps to continue)")
        metrics.close()
        return TrainResult(step, None, None, best_val, last_ckpt, False, metrics.records)

    def run_eval(at: int) -> dict[str, Any]:
        results: dict[str, Any] = {}
        if task.evaluate is None and task.sample is None:
            return results
        snapshot = rng_state()  # evaluation must not move the training RNG streams
        ctx = EvalContext(eval_model, raw, at, env, autocast_dtype, cfg)
        if task.evaluate is not None:
            results.update(task.evaluate(ctx))
        if task.sample is not None:
            texts = task.sample(ctx)
            if main and texts:
                for i, text in enumerate(texts):
                    say(f"sample {i} @ step {at}: {text!r}")
                import json

                with open(run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": at, "samples": list(texts)}) + "\n")
        set_rng_state(snapshot)
        return results

    def save(at: int, rng: list[dict[str, Any]], val_loss: float | None, new_best: bool) -> Path:
        model_sd, optim_sd, optim_fmt = _state_for_checkpoint(model, raw, optimizer, fsdp)
        path = step_checkpoint_path(run_dir, at)
        if main:
            payload = {
                **task.extra_state,
                "model_config": task.model_config, "model": model_sd, "optimizer": optim_sd,
                "optimizer_format": optim_fmt, "step": at, "loader": task.train_data.state_dict(), "rng": rng,
                "config": cfg.to_dict(), "metrics": metrics.records, "best_val_loss": best_val,
                "world_size": env.world_size, "grad_accum_steps": A, "skipped_steps": skipped,
                "tokens_seen": tokens_seen, "train_seconds": train_seconds, "torch_version": str(torch.__version__),
            }
            try:
                save_checkpoint(path, payload)
            except (OSError, RuntimeError) as e:  # a full disk: OSError, or RuntimeError from torch's zip writer
                why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or [""])[0]
                kept = list_step_checkpoints(run_dir)
                kept_msg = f"the previous checkpoint {kept[-1]} is intact" if kept else "no earlier checkpoint exists"
                raise UserError(
                    f"{path}: could not write the checkpoint ({why or type(e).__name__}; is the disk full?); "
                    f"nothing was overwritten, {kept_msg}; free space, then continue with --resume auto"
                ) from None
            if new_best:
                write_best(run_dir, path, at, val_loss)
            prune_step_checkpoints(run_dir, cfg.keep_last)
        barrier(env)
        return path

    bar = tqdm(total=last_step, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (main and cfg.progress), file=sys.stderr)
    loss_val: float | None = None
    val_loss: float | None = None
    consecutive_bad = 0
    window_tokens, window_time = 0, 0.0
    interrupted = False
    context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        with _StopSignals() as stop:
            while step < last_step:
                t0 = time.perf_counter()
                lr = cfg.lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                try:
                    loss_sum = torch.zeros((), device=device)
                    step_tokens = 0
                    for micro in range(A):
                        batch = to_device(task.train_data.next_batch(), device)
                        step_tokens += task.batch_tokens(batch)
                        with gradient_sync(model, micro == A - 1):
                            with context:
                                loss = task.loss_fn(model, batch)
                            # the gradients of the micro-steps are summed, so each loss is divided by A
                            # to make the sum the gradient of the mean loss over the global batch
                            loss = loss / A
                            loss_sum += loss.detach()
                            loss.backward()
                    all_reduce_mean(loss_sum, env)
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
                        norm = norm.full_tensor()
                    loss_val, grad_norm = float(loss_sum), float(norm)
                    if not (math.isfinite(loss_val) and math.isfinite(grad_norm)):
                        what = f"loss {loss_val}" if not math.isfinite(loss_val) else f"gradient norm {grad_norm}"
                        consecutive_bad += 1
                        if cfg.on_nan == "stop" or consecutive_bad > cfg.max_skipped_steps:
                            steps = list_step_checkpoints(run_dir)
                            kept = f"the last good checkpoint is {steps[-1]}" if steps else "no checkpoint was written"
                            why = ("" if cfg.on_nan == "stop"
                                   else f" after {consecutive_bad} consecutive skipped steps (--max-skipped-steps)")
                            raise TrainingDiverged(
                                f"step {step + 1}: {what}{why}; stopped without saving ({kept}). Lower --lr, raise "
                                "--warmup-steps or use --dtype float32; --on-nan skip skips such steps instead"
                            )
                        skipped += 1
                        say(f"step {step + 1}: {what}; update skipped (--on-nan skip, {skipped} skipped so far)")
                        optimizer.zero_grad(set_to_none=True)
                    else:
                        consecutive_bad = 0
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                except torch.OutOfMemoryError:
                    raise UserError(
                        f"out of memory on {device} with micro-batch --batch-size {cfg.batch_size}: "
                        f"{task.oom_hint}; or use --parallel fsdp on several GPUs, --dtype bfloat16, --compile"
                    ) from None
                step += 1
                dt = time.perf_counter() - t0
                step_tokens *= env.world_size
                tokens_seen += step_tokens
                train_seconds += dt
                window_tokens += step_tokens
                window_time += dt
                tok_s = step_tokens / dt
                mfu = task.flops_per_token * tok_s / (peak * env.world_size) if peak and task.flops_per_token else None
                bar.set_postfix_str(
                    f"loss {loss_val:.4f} lr {lr:.2e} gnorm {grad_norm:.2f} tok/s {_fmt_rate(tok_s)}"
                    + (f" MFU {mfu:.1%}" if mfu is not None else ""), refresh=False)
                bar.update(1)

                stop_now = any_rank(stop.received is not None, env)
                eval_due = ((cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == last_step) and not stop_now
                save_due = step % cfg.save_every == 0 or step == last_step or stop_now
                rng = gather_objects(rng_state(), env) if (eval_due or save_due) else None
                results = run_eval(step) if eval_due else {}
                new_best = False
                if "val_loss" in results and results["val_loss"] is not None and math.isfinite(results["val_loss"]):
                    val_loss = float(results["val_loss"])
                    new_best = best_val is None or val_loss < best_val
                    if new_best and (save_due or cfg.save_best):
                        best_val = val_loss
                        save_due = True
                    else:
                        new_best = False
                if results:
                    say(f"step {step}: " + " ".join(
                        f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float)))
                if step % cfg.log_every == 0 or step == last_step or results or stop_now:
                    rate = window_tokens / window_time if window_time > 0 else float("nan")
                    record: dict[str, Any] = {
                        "step": step, "loss": loss_val, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": rate,
                        "mfu": task.flops_per_token * rate / (peak * env.world_size) if mfu is not None else None,
                        "tokens": tokens_seen, "time_s": round(train_seconds, 3),
                    }
                    epoch = getattr(task.train_data, "epoch", None)
                    if isinstance(epoch, int):
                        record["epoch"] = epoch
                    if skipped:
                        record["skipped_steps"] = skipped
                    record.update({k: v for k, v in results.items() if isinstance(v, (int, float))})
                    metrics.log(record)
                    window_tokens, window_time = 0, 0.0
                if save_due:
                    last_ckpt = save(step, rng, val_loss, new_best)
                if stop_now:
                    interrupted = True
                    say(f"received {stop.received or 'a stop signal on another rank'}: saved {last_ckpt} at step "
                        f"{step}; continue with --resume auto")
                    break
    finally:
        bar.close()
        metrics.close()
    return TrainResult(step, loss_val, val_loss, best_val, last_ckpt, interrupted, metrics.records)
