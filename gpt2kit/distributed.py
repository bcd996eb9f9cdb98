"""Data parallelism from outside the model: torchrun's environment, DDP or FSDP wrapping, collectives.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (plus the rendezvous variables); without them
the process is a world of one and nothing distributed is touched. CUDA ranks use NCCL and device
``cuda:LOCAL_RANK``; CPU ranks use gloo (that is how the tests run two processes on one CPU).

The model stays pure: :func:`wrap_model` applies ``torch.compile`` and then DDP, or ``fully_shard`` on
every block and the root and then ``torch.compile`` (torchtitan's order for FSDP2).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from gpt2kit.device import collective_backend, collective_device, ddp_device_ids
from gpt2kit.errors import UserError


@dataclass
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    """``nccl``/``gloo`` when torch.distributed is in use, else None."""
    owns_process_group: bool = False
    """True when :func:`setup_distributed` initialised the process group (and :func:`teardown` destroys it)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one rank."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def resolve_device(name: str) -> torch.device:
    """A torch.device from ``--device``; a clear error when it is not available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return dev


def setup_distributed(device: str = "auto") -> DistEnv:
    """Read torchrun's environment, pick this rank's device and initialise the process group if needed."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if "WORLD_SIZE" not in os.environ:
        # not launched by torchrun: a world of one without a process group. Under `torchrun --nproc_per_node=1`
        # the group (NCCL on a GPU) and the DDP/FSDP wrapping are set up as for many ranks, so one GPU checks them
        return DistEnv(device=resolve_device(device))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                "set --nproc_per_node to at most the number of GPUs"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = resolve_device("cpu" if device == "auto" else device)
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        backend = collective_backend(dev.type)
    owns = False
    if not dist.is_initialized():
        kw: dict[str, Any] = dict(backend=backend, timeout=datetime.timedelta(minutes=30))
        if backend == "nccl":
            kw["device_id"] = dev
        dist.init_process_group(**kw)
        owns = True
    return DistEnv(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(), device=dev,
                   backend=dist.get_backend(), owns_process_group=owns)


def teardown(env: DistEnv) -> None:
    """Destroy the process group if :func:`setup_distributed` created it; call it from a ``finally`` block.

    A DDP wrapper that outlives its process group is freed only at interpreter exit, and with gloo that can
    abort the process ("terminate called without an active exception", SIGABRT, after all the work is done;
    seen in about a third of two-rank evaluation runs). DDP keeps reference cycles, so unreferenced wrappers are
    collected here first.
    """
    if env.owns_process_group and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto", env: DistEnv | None = None) -> Iterator[DistEnv]:
    """``env``, or a new one from :func:`setup_distributed` that :func:`teardown` closes when the block ends."""
    if env is not None:
        yield env
        return
    env = setup_distributed(device)
    try:
        yield env
    finally:
        teardown(env)


def wrap_model(model: nn.Module, env: DistEnv, *, parallel: str = "ddp", compile: bool = False) -> nn.Module:
    """The module the loop calls: compiled and/or DDP/FSDP-wrapped ``model`` (already on ``env.device``).

    Under FSDP, ``model`` itself is sharded in place (its parameters become DTensors); build the
    optimizer from it after this call.
    """
    if env.backend is not None and parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        blocks = getattr(getattr(model, "transformer", None), "h", None)
        for block in blocks if blocks is not None else []:
            fully_shard(block)
        fully_shard(model)
        return torch.compile(model) if compile else model
    if compile:
        model = torch.compile(model)
    if env.backend is not None:
        model = nn.parallel.DistributedDataParallel(model, device_ids=ddp_device_ids(env.device))
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce unless ``sync`` (the last micro-step of an optimizer step)."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
        return
    root = getattr(model, "_orig_mod", model)
    if hasattr(root, "set_requires_gradient_sync"):  # FSDP2
        root.set_requires_gradient_sync(sync)
    yield


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` (or the module under torch.compile) was sharded with ``fully_shard``."""
    return hasattr(getattr(model, "_orig_mod", model), "set_requires_gradient_sync")


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """``t`` averaged over ranks, in place (a no-op in a world of one)."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= env.world_size
    return t


def all_reduce_sum(values: list[float], device: torch.device | str) -> list[float]:
    """``values`` summed over ranks (float64; unchanged in a world of one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(dist.get_backend(), device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a SIGTERM that reached one rank)."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (plain data), in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    """Wait for every rank."""
    if env.distributed:
        dist.barrier()
