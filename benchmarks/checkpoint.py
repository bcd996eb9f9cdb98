"""Save and load seconds of the two checkpoint formats at 2 ranks: ``full`` (one file; under FSDP the state is
gathered to rank 0, which writes it) and ``sharded`` (``torch.distributed.checkpoint``: every rank writes and
reads its own part), through the trainer's own :class:`~gpt2kit.train.checkpointer.Checkpointer`.

Each rank builds the model (GPT-2 medium by default, AdamW), wraps it (``--parallel``, FSDP by default: the
setting for models whose state does not fit one host), takes one real training step on 8 tokens so every
AdamW moment exists, and then for each format:

- save: ``Checkpointer.save`` (what the training loop calls), from the first rank entering it to the last
  leaving it (it ends with a barrier);
- load: what ``--resume`` does on a fresh model: read the checkpoint (``find_resume``; the full format reads the
  whole file on every rank), load the weights into the plain model, wrap it, build the optimizer, load its state
  (the sharded format loads weights and optimizer state together, each rank its own part). Building and
  wrapping the model are timed apart and not counted.

    python benchmarks/checkpoint.py                        # torchrun, 2 gloo ranks on the CPU, gpt2-medium, fsdp
    python benchmarks/checkpoint.py --model gpt2 --parallel ddp --dir /scratch/ckpt-bench

Without ``WORLD_SIZE`` in the environment the script starts itself under ``torchrun --nproc-per-node 2``, once
per format (so each format's peak memory is its own; it is printed per rank). The checkpoints are written under
``--dir`` (default: a temporary directory, deleted at the end).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpt2kit.checkpoint import find_resume
from gpt2kit.distributed import DistEnv, barrier, gather_objects, setup_distributed, teardown, wrap_model
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.train.checkpointer import Checkpointer
from gpt2kit.train.config import LoopConfig
from gpt2kit.train.optim import build_optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2-medium", help="model preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
    p.add_argument("--parallel", default="fsdp", choices=["ddp", "fsdp"])
    p.add_argument("--nproc", type=int, default=2, help="ranks (torchrun --nproc-per-node)")
    p.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temporary directory)")
    p.add_argument("--formats", default="full,sharded", help="comma-separated, in this order")
    return p.parse_args(argv)


def _clock(env: DistEnv) -> float:
    barrier(env)
    return time.perf_counter()


def _fresh(model_cfg: GPTConfig, seed: int = 0) -> GPT:
    """The plain model on every rank (the same weights), as the trainer builds it before wrapping."""
    torch.manual_seed(seed)
    return GPT(model_cfg)


def _wrap(model, cfg: LoopConfig, env: DistEnv):
    wrapped = wrap_model(model, env, parallel=cfg.dist.parallel)
    return wrapped, build_optimizer(model, cfg, env.device)


def run(args: argparse.Namespace) -> None:
    env = setup_distributed("cpu", timeout=3600)
    say = print if env.is_main else (lambda *a, **k: None)
    model_cfg = GPTConfig.from_preset(args.model)
    root = Path(args.dir) if args.dir else Path(tempfile.gettempdir()) / "gpt2kit-checkpoint-bench"
    t0 = time.perf_counter()
    model = _fresh(model_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    results = {}
    for fmt in args.formats.split(","):
        cfg = LoopConfig.from_dict(dict(out=str(root / fmt), parallel=args.parallel, checkpoint_format=fmt,
                                        fused_adamw=False))
        if env.is_main:
            shutil.rmtree(cfg.run.out, ignore_errors=True)
        barrier(env)
        if model is None:
            model = _fresh(model_cfg)
        wrapped, optimizer = _wrap(model, cfg, env)
        idx = torch.randint(0, model_cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(env.rank))
        _, loss = wrapped(idx, idx)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        say(f"{fmt}: {args.model} ({n_params / 1e6:.0f}M parameters) built, wrapped ({args.parallel}) and stepped "
            f"at {time.perf_counter() - t0:.0f} s")
        checkpointer = Checkpointer(cfg.run.out, keep_last=1, env=env, sharded=fmt == "sharded")
        payload = {"model_config": model_cfg.to_dict(), "step": 1, "config": cfg.to_dict(), "loader": {},
                   "rng": None, "world_size": env.world_size}
        start = _clock(env)
        path = checkpointer.save(1, model, optimizer, cfg.dist.parallel == "fsdp" and env.distributed, payload)
        save_s = _clock(env) - start
        size = sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file())
        del wrapped, optimizer, model, loss
        gc.collect()

        start = _clock(env)
        point = find_resume(cfg.run.out, "auto")
        read_s = _clock(env) - start
        model = _fresh(model_cfg, seed=1)
        start = _clock(env)
        checkpointer.restore_model(point, model, model_cfg.to_dict())
        restore_s = _clock(env) - start
        wrapped, optimizer = _wrap(model, cfg, env)
        start = _clock(env)
        checkpointer.restore_optimizer(point, model, optimizer, cfg.dist.parallel == "fsdp" and env.distributed)
        restore_s += _clock(env) - start
        results[fmt] = (save_s, read_s + restore_s, size)
        say(f"{fmt}: save {save_s:.1f} s, load {read_s + restore_s:.1f} s (read {read_s:.1f} s, into the model "
            f"and optimizer {restore_s:.1f} s), {size / 2**30:.2f} GiB on disk ({path.name})")
        del wrapped, optimizer, point, model
        model = None  # noqa: F841 (read by the next format's iteration: it builds a fresh model)
        gc.collect()
        if env.is_main:
            shutil.rmtree(cfg.run.out, ignore_errors=True)
        barrier(env)
    peaks = gather_objects(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, env)  # KiB -> GiB
    for fmt, (save_s, load_s, size) in results.items():
        say(f"| {args.model} | {args.parallel} | {fmt} | {save_s:.1f} | {load_s:.1f} | {size / 2**30:.2f} | "
            + " / ".join(f"{p:.1f}" for p in peaks) + " |")
    if env.is_main and not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    teardown(env)


def main() -> int:
    args = parse_args()
    if "WORLD_SIZE" in os.environ:
        run(args)
        return 0
    rows = []
    for fmt in args.formats.split(","):  # a launch per format: its peak memory is its own
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
                __file__, *sys.argv[1:], "--formats", fmt]
        out = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
                             stdout=subprocess.PIPE, text=True)
        print(out.stdout, end="", flush=True)
        if out.returncode != 0:
            print(f"{fmt}: the ranks exited {out.returncode}")
            return out.returncode
        rows += [line for line in out.stdout.splitlines() if line.startswith("| ")]
    print(f"\n{args.nproc} ranks (gloo, CPU); save and load in seconds; peak resident memory per rank in GiB\n")
    print("| model | parallel | format | save s | load s | on disk GiB | peak RSS GiB (rank 0 / 1) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
