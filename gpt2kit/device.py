"""Device-dependent decisions, written as functions of the device type so that CPU tests reach their logic.

The training code branches on the device in a few places: pinned, non-blocking host-to-device copies, the TF32
matmul flags, the collective backend, DDP's ``device_ids``, the device a NCCL collective needs, fused AdamW,
torch.compile, the autocast dtype and its loss scaler, the random states kept in checkpoints and the allocator
cache. Each decision is one function here that takes the device type (or the ``torch.cuda``/``torch.mps``
module, which a test replaces by a fake), with an answer for "cuda", "mps" and "cpu"; the call sites keep only
the part that needs the device to run. ``tests/gpu/test_cuda_branches.py`` fails when a CUDA branch elsewhere
in gpt2kit is not registered there with the test that reaches it; ``tests/gpu/test_mps_decisions.py`` runs
every decision here for "mps".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch


def pinned_transfer(device_type: str) -> bool:
    """Whether host batches go to the device through pinned memory with ``non_blocking=True`` (CUDA only)."""
    # a pinned source lets the copy overlap the previous step's kernels; on CPU "pinning" is a wasted copy
    return device_type == "cuda"


def set_tf32(device_type: str, enabled: bool) -> bool:
    """Allow (or forbid) TF32 for float32 matmuls and cuDNN on CUDA runs; returns whether any flag was set."""
    if device_type != "cuda":
        return False  # the flags are process-wide: a CPU run must not change what a later CUDA run gets
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return True


def collective_backend(device_type: str) -> str:
    """The torch.distributed backend for ranks on this device type: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device_type == "cuda" else "gloo"


def ddp_device_ids(device: torch.device) -> list[int] | None:
    """DDP's ``device_ids``: the rank's one CUDA device; None for CPU modules (DDP refuses ids there) and for a
    CUDA device without an index (DDP then takes the module's device)."""
    return [device.index] if device.type == "cuda" and device.index is not None else None


def collective_device(backend: str, device: torch.device | str,
                      current_cuda_index: Callable[[], int] = torch.cuda.current_device) -> torch.device:
    """The device a collective's tensor must live on: NCCL reduces only CUDA tensors, gloo takes ``device``."""
    dev = torch.device(device)
    if backend == "nccl" and dev.type != "cuda":
        return torch.device("cuda", current_cuda_index())
    return dev


def cuda_rng_states(cuda: Any = torch.cuda) -> list[torch.Tensor]:
    """Copies of every CUDA device's RNG state, or [] when CUDA was never initialised in this process."""
    # asking for the states would initialise CUDA in a process that never used it (seconds, and memory)
    if cuda.is_available() and cuda.is_initialized():
        return [s.clone() for s in cuda.get_rng_state_all()]
    return []


def set_cuda_rng_states(states: list[torch.Tensor], cuda: Any = torch.cuda) -> bool:
    """Restore :func:`cuda_rng_states`; False (nothing set) without CUDA or with another device count."""
    # a checkpoint from a machine with another GPU count (or a CPU run) cannot continue those streams
    if not states or not cuda.is_available() or len(states) != cuda.device_count():
        return False
    cuda.set_rng_state_all(states)
    return True


def default_fused_adamw(device: torch.device) -> bool:
    """Whether AdamW runs its fused kernel by default: on CUDA and CPU (torch >= 2.4 has both; the
    comparison is in benchmarks/). The update is the same formula with another rounding order, so results match
    up to rounding, not bitwise over long runs. Not on MPS, where the fused kernel came later and is less tried."""
    return device.type in ("cuda", "cpu")


def compile_supported(device_type: str) -> bool:
    """Whether ``--compile`` may run on this device: CUDA and CPU (inductor); on MPS inductor's Metal backend is
    a prototype, so an MPS run stays eager."""
    return device_type in ("cuda", "cpu")


def mps_rng_state(mps: Any = None) -> torch.Tensor | None:
    """A copy of the MPS generator's state, or None on a machine without MPS (checkpoints then carry none)."""
    mps = mps or torch.mps
    if not mps.is_available():
        return None
    return mps.get_rng_state().clone()


def set_mps_rng_state(state: torch.Tensor | None, mps: Any = None) -> bool:
    """Restore :func:`mps_rng_state`; False (nothing set) without a state or without MPS."""
    mps = mps or torch.mps
    if state is None or not mps.is_available():
        return False
    mps.set_rng_state(state)
    return True


def native_bf16(device_type: str, cuda: Any = torch.cuda) -> bool:
    """Whether this machine computes bfloat16 matmuls natively on ``device_type`` (not emulated in float32)."""
    if device_type == "cuda":
        return bool(cuda.is_available() and cuda.is_bf16_supported())
    if device_type == "cpu":
        # oneDNN reports bf16 support only with AVX-512 BF16 or AMX; elsewhere autocast emulates bfloat16 and a
        # step takes several times as long as in float32
        try:
            return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_dtype_for(dtype: str, device_type: str, cuda: Any = torch.cuda) -> torch.dtype | None:
    """The autocast dtype for ``--dtype`` on this device: bfloat16, float16, or None (plain float32).

    ``auto`` takes bfloat16 where :func:`native_bf16` says the device computes it, float16 on a CUDA GPU without
    bfloat16 (V100, T4: their tensor cores run float16, trained with a loss scaler), float32 elsewhere.
    """
    if dtype in ("bfloat16", "float16"):
        return getattr(torch, dtype)
    if dtype == "auto":
        if native_bf16(device_type, cuda):
            return torch.bfloat16
        if device_type == "cuda" and cuda.is_available():
            return torch.float16
    return None


def grad_scaler(device_type: str, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler for autocast ``dtype``: on for float16, whose small gradients underflow without it; for
    other dtypes a disabled scaler, whose scale/unscale/step are plain backward and ``optimizer.step()``."""
    return torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op when ``dtype`` is None (plain float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def release_cached_memory(device_type: str, backend: Any = None) -> bool:
    """Hand the caching allocator's free blocks back to a CUDA or MPS device (after an out-of-memory error, so the
    retried step finds them); False on other devices, whose allocator caches nothing. ``backend``: a fake
    ``torch.cuda``/``torch.mps`` for tests."""
    if device_type not in ("cuda", "mps"):
        return False
    (backend or getattr(torch, device_type)).empty_cache()
    return True


MEMORY_FRACTION_CPU = 0.5
"""The share of the host's available memory (MemAvailable) a CPU run's --batch-size auto may plan to use: the
rest stays for the data loader, the OS page cache and whatever else runs on the machine."""


def memory_budget(device_type: str, cuda: Any = torch.cuda, mps: Any = None,
                  meminfo: str = "/proc/meminfo") -> tuple[int, str]:
    """Bytes a run on ``device_type`` may plan to fill (before any safety margin), and where the figure comes from
    (for the line ``--batch-size auto`` prints). CUDA: the free device memory (``mem_get_info``) plus what this
    process already holds there; MPS: Metal's recommended working set (``recommended_max_memory``) less what the
    driver already allocated; CPU: MEMORY_FRACTION_CPU of the host's available memory (psutil, else
    ``/proc/meminfo``). ``cuda``/``mps``/``meminfo``: fakes for tests."""
    if device_type == "cuda":
        free, total = cuda.mem_get_info()
        held = cuda.memory_allocated()
        return int(free + held), f"CUDA free memory {free / 2**30:.1f} of {total / 2**30:.1f} GiB"
    if device_type == "mps":
        mps = mps or torch.mps
        rec, used = mps.recommended_max_memory(), mps.driver_allocated_memory()
        return int(rec - used), f"MPS recommended max memory {rec / 2**30:.1f} GiB less {used / 2**30:.1f} in use"
    available = host_available_memory(meminfo)
    return (int(available * MEMORY_FRACTION_CPU),
            f"{MEMORY_FRACTION_CPU:.0%} of the host's {available / 2**30:.1f} GiB available memory")


def host_available_memory(meminfo: str = "/proc/meminfo") -> int:
    """Bytes of host memory available to a new allocation: psutil's figure, else MemAvailable, else 4 GiB."""
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def peak_memory_meter(device_type: str, cuda: Any = torch.cuda) -> Callable[[], int] | None:
    """For the ``--batch-size auto`` probe: a function that resets the device's peak-allocation counter and
    returns a reader of the peak since then, where the device keeps one (CUDA); None elsewhere (CPU and MPS have
    no peak counter: the probe uses the memory formula there)."""
    if device_type != "cuda":
        return None
    cuda.reset_peak_memory_stats()
    return cuda.max_memory_allocated


def is_gpu(device_type: str) -> bool:
    """Whether a device is a GPU that the pipeline's ``gpu`` size is meant for (CUDA; an Apple GPU under MPS
    trains the ``cpu`` size's toy faster than a CPU but not GPT-2 124M in hours)."""
    return device_type == "cuda"


def describe_gpus(cuda: Any = torch.cuda) -> str | None:
    """"N x NAME (M GiB)" for the CUDA GPUs torch sees (for reports), None without any."""
    if not cuda.is_available():
        return None
    props = cuda.get_device_properties(0)
    return f"{cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB)"
