"""Every device decision in gpt2kit/device.py answered for "mps", run on a CPU (fakes stand in for torch.mps).

``test_every_decision_has_an_mps_answer`` fails when device.py gains a function that no test here runs for
"mps", so an Apple-silicon run cannot meet a decision nobody made for it.
"""

from __future__ import annotations

import inspect

import torch

import gpt2kit.device as device
from gpt2kit.device import (
    autocast,
    autocast_dtype_for,
    collective_backend,
    collective_device,
    compile_supported,
    cuda_rng_states,
    ddp_device_ids,
    default_fused_adamw,
    grad_scaler,
    mps_rng_state,
    native_bf16,
    pinned_transfer,
    release_cached_memory,
    set_cuda_rng_states,
    set_mps_rng_state,
    set_tf32,
)

MPS = torch.device("mps")

# device.py function -> the test below that runs it for "mps"
MPS_DECISIONS = {
    "pinned_transfer": "test_copies_and_process_flags",
    "set_tf32": "test_copies_and_process_flags",
    "collective_backend": "test_collectives",
    "ddp_device_ids": "test_collectives",
    "collective_device": "test_collectives",
    "default_fused_adamw": "test_optimizer_and_compile",
    "compile_supported": "test_optimizer_and_compile",
    "native_bf16": "test_precision",
    "autocast_dtype_for": "test_precision",
    "grad_scaler": "test_precision",
    "autocast": "test_precision",
    "cuda_rng_states": "test_random_states",
    "set_cuda_rng_states": "test_random_states",
    "mps_rng_state": "test_random_states",
    "set_mps_rng_state": "test_random_states",
    "release_cached_memory": "test_allocator_cache",
    "memory_budget": "test_memory_for_auto_batch",
    "peak_memory_meter": "test_memory_for_auto_batch",
    "host_available_memory": "test_memory_for_auto_batch",
    "is_gpu": "test_pipeline_size_and_report",
    "describe_gpus": "test_pipeline_size_and_report",
}


def test_every_decision_has_an_mps_answer():
    decisions = {name for name, fn in inspect.getmembers(device, inspect.isfunction)
                 if fn.__module__ == device.__name__ and not name.startswith("_")}
    missing = sorted(decisions - set(MPS_DECISIONS))
    assert not missing, f"device.py decisions without an mps test here: {missing}; add one and register it"
    assert not sorted(set(MPS_DECISIONS) - decisions), "MPS_DECISIONS names functions device.py no longer has"
    assert all(callable(globals().get(t)) for t in MPS_DECISIONS.values())


def test_copies_and_process_flags():
    assert pinned_transfer("mps") is False  # no pinned memory, so no non_blocking copies from the host
    old = torch.backends.cuda.matmul.allow_tf32
    assert set_tf32("mps", not old) is False and torch.backends.cuda.matmul.allow_tf32 == old


def test_collectives():
    assert collective_backend("mps") == "gloo"  # NCCL is CUDA's; gloo reduces host tensors
    assert ddp_device_ids(MPS) is None
    assert collective_device("gloo", MPS) == MPS


def test_optimizer_and_compile():
    assert default_fused_adamw(MPS) is False
    assert compile_supported("mps") is False and compile_supported("cpu") and compile_supported("cuda")


def test_precision():
    assert native_bf16("mps") is False
    assert autocast_dtype_for("auto", "mps") is None  # float32 unless asked
    assert autocast_dtype_for("float16", "mps") == torch.float16
    assert autocast_dtype_for("bfloat16", "mps") == torch.bfloat16
    assert grad_scaler("mps", torch.float16).is_enabled() and not grad_scaler("mps", None).is_enabled()
    with autocast("mps", None):  # float32: no autocast context at all
        assert not torch.is_autocast_enabled("cpu")


class _FakeMps:
    def __init__(self, available: bool) -> None:
        self.available, self.state = available, torch.arange(8, dtype=torch.uint8)
        self.emptied = 0

    def is_available(self) -> bool:
        return self.available

    def get_rng_state(self) -> torch.Tensor:
        return self.state

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.state = state.clone()

    def empty_cache(self) -> None:
        self.emptied += 1


def test_random_states():
    mac = _FakeMps(True)
    saved = mps_rng_state(mac)
    assert saved.tolist() == list(range(8))
    saved[0] = 99  # a copy
    assert mac.state[0] == 0
    target = _FakeMps(True)
    assert set_mps_rng_state(saved, target) is True and target.state[0] == 99
    assert mps_rng_state(_FakeMps(False)) is None and set_mps_rng_state(saved, _FakeMps(False)) is False
    assert set_mps_rng_state(None, target) is False
    # a Mac has no CUDA: the CUDA states are an empty list and restoring them sets nothing
    assert cuda_rng_states(_NoCuda()) == [] and set_cuda_rng_states([torch.zeros(4)], _NoCuda()) is False
    if not torch.backends.mps.is_available():
        from gpt2kit.train.state import rng_state

        assert "mps" not in rng_state()  # checkpoints of machines without MPS carry no MPS state


class _NoCuda:
    def is_available(self) -> bool:
        return False


def test_allocator_cache():
    fake = _FakeMps(True)
    assert release_cached_memory("mps", fake) is True and fake.emptied == 1


def test_memory_for_auto_batch():
    from types import SimpleNamespace

    from gpt2kit.device import host_available_memory, memory_budget, peak_memory_meter

    GiB = 2**30
    mac = SimpleNamespace(recommended_max_memory=lambda: 12 * GiB, driver_allocated_memory=lambda: 2 * GiB)
    limit, why = memory_budget("mps", mps=mac)
    assert limit == 10 * GiB and "MPS recommended max memory 12.0 GiB less 2.0 in use" in why
    assert peak_memory_meter("mps") is None  # no peak counter on MPS: --batch-size auto uses the formula
    assert host_available_memory() > 0  # the host's memory (a Mac's is the same pool as the GPU's)


def test_pipeline_size_and_report():
    from types import SimpleNamespace

    assert device.is_gpu("mps") is False  # an Apple GPU runs the pipeline's cpu size, not GPT-2 124M in hours
    assert device.describe_gpus(SimpleNamespace(is_available=lambda: False)) is None  # a Mac has no CUDA GPU
