"""Data parallelism from outside the model: torchrun's environment, DDP or FSDP wrapping, collectives.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (plus the rendezvous variables); without them
the process is a world of one and nothing distributed is touched. CUDA ranks use NCCL and device
``cuda:LOCAL_RANK``; CPU ranks use gloo (that is how the tests run two processes on one CPU).

The model stays pure: :func:`wrap_model` applies ``torch.compile`` and then DDP, or ``fully_shard`` on
every block and the root and then ``torch.compile`` (torchtitan's order for FSDP2).

Restarts (``torchrun --max-restarts N``): torchrun's agent hosts one TCPStore for the whole job and hands it to
every restart round, and ``init_process_group`` writes the same keys into it each round (pytorch/pytorch#135712,
#167288). A restarted rank could read a dead rank's address from the round before ("Gloo connectFullMesh failed
... Connection refused", or a hang). :func:`round_store` gives each round keys of its own.
Every collective gives up after ``--dist-timeout`` seconds, and :func:`rank_failure` turns the failure into one
line naming the ranks that stopped answering.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from gpt2kit.device import collective_backend, collective_device, ddp_device_ids
from gpt2kit.errors import UserError, first_line


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
    store: dist.Store | None = None
    """The store the process group was built on (None when the launcher set no ``MASTER_ADDR``/``MASTER_PORT``)."""
    timeout: float = 1800.0
    """Seconds a collective (or joining the group) may wait for the other ranks: ``--dist-timeout``."""

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


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of a torchrun job (``RANK``), or runs alone: the one that prints."""
    return _env_int("RANK", 0) == 0


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


DEFAULT_DIST_TIMEOUT = 1800.0
"""``--dist-timeout``: long enough for rank 0 to write a gpt2-xl checkpoint to slow shared storage (about 18 GB
with the optimizer) or for the first steps under ``torch.compile`` while the other ranks wait; a dead or stuck
rank still ends the job within half an hour instead of never."""
PROBE_SECONDS = 5.0
"""After a collective fails, how long a rank waits for the others to report in before naming the silent ones."""


def setup_distributed(device: str = "auto", timeout: float = DEFAULT_DIST_TIMEOUT) -> DistEnv:
    """Read torchrun's environment, pick this rank's device and initialise the process group if needed.

    ``timeout`` (seconds) bounds joining the group and every collective afterwards.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if "WORLD_SIZE" not in os.environ:
        # not launched by torchrun: a world of one without a process group. Under `torchrun --nproc_per_node=1`
        # the group (NCCL on a GPU) and the DDP/FSDP wrapping are set up as for many ranks, so one GPU checks them
        return DistEnv(device=resolve_device(device), timeout=timeout)
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
    store = None
    if not dist.is_initialized():
        store = init_process_group(backend, rank, world_size, dev, timeout)
        owns = True
    return DistEnv(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(), device=dev,
                   backend=dist.get_backend(), owns_process_group=owns, store=store, timeout=timeout)


def init_process_group(backend: str, rank: int, world_size: int, device: torch.device,
                       timeout: float) -> dist.Store | None:
    """Join the job's process group within ``timeout`` seconds; returns the store it uses (see :func:`round_store`).

    Failing to join is one line naming this rank and the flag that bounds the wait.
    """
    if backend == "nccl":
        # without async error handling a timed-out NCCL collective blocks forever instead of failing;
        # torchrun sets this already, other launchers may not
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    kw: dict[str, Any] = dict(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    if backend == "nccl":
        kw["device_id"] = device
    try:
        store = round_store(rank, world_size, timeout)
        if store is not None:
            kw.update(store=store, rank=rank, world_size=world_size)
        dist.init_process_group(**kw)
    except dist.DistError as e:
        raise UserError(
            f"rank {rank}: could not join the other {world_size - 1} rank(s) within --dist-timeout {timeout:g}s "
            f"({first_line(e, 200, sentence=True)}); check that every node was started with the same --nnodes and "
            "rendezvous "
            "endpoint and can reach it, then relaunch (with --resume auto to continue)"
        ) from None
    except RuntimeError as e:  # gloo's connection errors are plain RuntimeErrors
        if "Gloo" not in str(e) and "connect" not in str(e).lower():
            raise
        raise UserError(
            f"rank {rank}: could not connect to the other ranks ({first_line(e, 200, sentence=True)}); if the hosts "
            "have several "
            "network interfaces, set GLOO_SOCKET_IFNAME (NCCL_SOCKET_IFNAME) to the one they share, then "
            "relaunch with --resume auto"
        ) from None
    return store


def round_store(rank: int, world_size: int, timeout: float) -> dist.Store | None:
    """The store this round's process group uses (None without ``MASTER_ADDR``/``MASTER_PORT``).

    Without torchrun's shared store (other launchers, or ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``) rank 0
    hosts a new one, as ``env://`` would; under it, a view of the shared store that only this round uses.

    The agent's store outlives the ranks, so keys of a round before (the addresses of ranks that are now
    dead) are still there when a restarted group joins. ``TORCHELASTIC_RESTART_COUNT`` cannot tell the
    rounds apart across nodes (each agent counts its own restarts, and a node that only sees others
    restart does not count), so rank 0 draws a fresh round number from the store and hands it to each
    rank in answer to a random token that rank wrote: an answer to a token cannot be stale.
    """
    addr, port = os.environ.get("MASTER_ADDR"), _env_int("MASTER_PORT", -1)
    if not addr or port < 0:
        return None
    wait = datetime.timedelta(seconds=timeout)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return dist.TCPStore(addr, port, world_size, is_master=rank == 0, timeout=wait, multi_tenant=True)
    store = dist.TCPStore(addr, port, world_size, is_master=False, timeout=wait)
    return dist.PrefixStore(f"gpt2kit/round{_fresh_round(store, rank, world_size, timeout)}", store)


def _fresh_round(store: dist.Store, rank: int, world_size: int, timeout: float) -> int:
    """A number every rank of this round agrees on and no earlier round used (see :func:`round_store`)."""
    if rank != 0:
        token = os.urandom(8).hex()
        store.set(f"gpt2kit/hello/{rank}", token)
        number = int(store.get(f"gpt2kit/answer/{rank}/{token}"))  # waits up to the store's timeout
        store.set(f"gpt2kit/round{number}/joined/{rank}", "1")
        return number
    number = store.add("gpt2kit/rounds", 1)
    answered: dict[int, bytes] = {}
    waiting = set(range(1, world_size))
    deadline = time.monotonic() + timeout
    while waiting:
        for r in sorted(waiting):
            if store.check([f"gpt2kit/round{number}/joined/{r}"]):
                waiting.discard(r)
            elif store.check([f"gpt2kit/hello/{r}"]):
                token = store.get(f"gpt2kit/hello/{r}")
                if answered.get(r) != token:  # perhaps a dead rank's token; answering it too is harmless
                    store.set(f"gpt2kit/answer/{r}/{token.decode()}", str(number))
                    answered[r] = token
        if waiting and time.monotonic() > deadline:
            raise UserError(
                f"rank 0: {_ranks(sorted(waiting))} did not join within --dist-timeout "
                f"{timeout:g}s; check that every node was started, then relaunch with --resume auto")
        if waiting:
            time.sleep(0.01)
    return number


@contextlib.contextmanager
def rank_failures_reported(env: DistEnv) -> Iterator[None]:
    """Turn a collective that failed because of another rank into :func:`rank_failure`'s one line."""
    try:
        yield
    except RuntimeError as e:  # gloo reports a dead peer as a plain RuntimeError, timeouts as DistError
        if not env.distributed or not (isinstance(e, dist.DistError) or _is_peer_error(e)):
            raise
        raise rank_failure(env, e) from None


def _is_peer_error(e: RuntimeError) -> bool:
    text = str(e)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Timed out waiting",
                                   "Broken pipe", "gloo", "Gloo", "NCCL"))


def rank_failure(env: DistEnv, error: BaseException) -> UserError:
    """The one-line error for a collective that failed on this rank: which ranks stopped answering.

    A rank that died makes its peers' collectives fail at once (gloo) or after ``--dist-timeout`` (a stuck
    rank; NCCL). Each rank that sees the failure reports in on the store; the ranks that stay silent for
    :data:`PROBE_SECONDS` are named. SIGTERM (torchrun stopping the survivors) is held off meanwhile so that
    the line gets printed.
    """
    silent: list[int] | None = None
    if env.store is not None:
        old = signal.signal(signal.SIGTERM, signal.SIG_IGN) if _main_thread() else None
        try:
            silent = _silent_ranks(env.store, env.rank, env.world_size, min(PROBE_SECONDS, env.timeout))
        except (dist.DistError, RuntimeError):
            silent = None  # the store itself is gone
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
    who = (f"{_ranks(silent)} stopped answering (crashed, killed or stuck)" if silent
           else "another rank failed, was killed or is stuck")
    restarts_left = _env_int("TORCHELASTIC_MAX_RESTARTS", 0) - _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    then = ("torchrun restarts the group, which continues from the last complete checkpoint with --resume auto"
            if restarts_left > 0 else "the job stops here; relaunch with --resume auto to continue from the last "
            "complete checkpoint (torchrun --max-restarts N does that by itself)")
    return UserError(
        f"rank {env.rank}: a collective with the other ranks failed: {who} ({first_line(error, 200, sentence=True)}; "
        "collectives "
        f"wait at most --dist-timeout {env.timeout:g}s); {then}"
    )


def _silent_ranks(store: dist.Store, rank: int, world_size: int, seconds: float) -> list[int]:
    """Report this rank alive on ``store``; the ranks that did not do the same within ``seconds``."""
    store.set(f"alive_after_failure/{rank}", "1")
    deadline = time.monotonic() + seconds
    while True:
        silent = [r for r in range(world_size) if not store.check([f"alive_after_failure/{r}"])]
        if not silent or time.monotonic() > deadline:
            return silent
        time.sleep(0.05)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def teardown(env: DistEnv) -> None:
    """Destroy the process group if :func:`setup_distributed` created it; call it from a ``finally`` block.

    A DDP wrapper that outlives its process group is freed only at interpreter exit, and with gloo that can
    abort the process ("terminate called without an active exception", SIGABRT, after all the work is done).
    DDP keeps reference cycles, so unreferenced wrappers are
    collected here first.
    """
    if env.owns_process_group and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto", env: DistEnv | None = None,
                timeout: float = DEFAULT_DIST_TIMEOUT) -> Iterator[DistEnv]:
    """``env``, or a new one from :func:`setup_distributed` that :func:`teardown` closes when the block ends.

    ``timeout`` is ``--dist-timeout`` for a new env. A collective in the block that fails because of another
    rank ends it with :func:`rank_failure`'s one line (see :func:`rank_failures_reported`).
    """
    if env is not None:
        with rank_failures_reported(env):
            yield env
        return
    env = setup_distributed(device, timeout)
    try:
        with rank_failures_reported(env):
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
        # torch 2.13 warns that the root's forward returns a view (the logits without the padded
        # vocabulary columns) in case a caller changes it in place and skips the backward all-gather; no caller
        # here does (FSDP losses match DDP within 1e-5: tests/reliability/test_multirank.py)
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor",
                                category=UserWarning)
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


def broadcast_object(obj: Any, world_size: int) -> Any:
    """Rank 0's ``obj`` (plain data) on every rank; ``obj`` itself in a world of one."""
    if world_size > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        obj = box[0]
    return obj
