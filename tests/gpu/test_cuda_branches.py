"""CUDA-only branches, reached on a CPU: every place gpt2kit branches on CUDA is registered here with the test
that runs its logic without a GPU (a decision function called with "cuda", a fake ``torch.cuda``, a device name).

``test_every_cuda_branch_is_registered`` scans gpt2kit's source and fails on a CUDA branch that is not in
CUDA_BRANCHES, so a new one cannot hide from the CPU suite.
"""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest
import torch

import gpt2kit
from gpt2kit.device import (
    autocast_dtype_for,
    collective_backend,
    collective_device,
    cuda_rng_states,
    ddp_device_ids,
    native_bf16,
    pinned_transfer,
    release_cached_memory,
    set_cuda_rng_states,
    set_tf32,
)
from gpt2kit.errors import UserError

# function (qualified name within its module) -> the test below that runs its CUDA logic on a CPU
CUDA_BRANCHES = {
    "pinned_transfer": "test_pinned_transfer_decides_to_device",
    "to_device": "test_pinned_transfer_decides_to_device",
    "set_tf32": "test_tf32_flags_only_for_cuda",
    "collective_backend": "test_backend_and_ddp_device_ids",
    "ddp_device_ids": "test_backend_and_ddp_device_ids",
    "collective_device": "test_collective_device_for_nccl",
    "cuda_rng_states": "test_cuda_rng_states_with_a_fake_cuda",
    "set_cuda_rng_states": "test_cuda_rng_states_with_a_fake_cuda",
    "peak_flops": "test_peak_flops_by_device_name",
    "default_fused_adamw": "test_fused_adamw_default_on_cuda",
    "resolve_device": "test_resolve_device_with_and_without_cuda",
    "setup_distributed": "test_setup_distributed_on_fake_gpus_and_in_a_world_of_one",
    "native_bf16": "test_auto_dtype_follows_native_bf16",
    "autocast_dtype_for": "test_auto_dtype_follows_native_bf16",
    "release_cached_memory": "test_release_cached_memory_after_oom",
    "compile_supported": "test_compile_supported_on_cuda",
    "memory_budget": "test_auto_batch_memory_on_cuda",
    "peak_memory_meter": "test_auto_batch_memory_on_cuda",
    "is_gpu": "test_pipeline_size_and_report_gpus",
    "describe_gpus": "test_pipeline_size_and_report_gpus",
}


def _names_cuda(node: ast.AST) -> bool:
    """Whether an expression mentions CUDA: the string "cuda" or an attribute/name called cuda/cudnn."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.startswith("cuda"):
            return True
        if isinstance(sub, ast.Attribute) and sub.attr in ("cuda", "cudnn"):
            return True
        if isinstance(sub, ast.Name) and sub.id == "cuda":  # a torch.cuda passed in (or a fake of it)
            return True
    return False


def cuda_sites(root: Path) -> dict[str, list[str]]:
    """{function qualname: ["file:line what", ...]} for every CUDA branch and CUDA-only call under ``root``."""
    sites: dict[str, list[str]] = {}

    def visit(node: ast.AST, fn: str, path: Path) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            fn = f"{fn}.{node.name}" if fn else node.name
        what = None
        if isinstance(node, (ast.If, ast.IfExp, ast.While)) and _names_cuda(node.test):
            what = "branch on " + ast.unparse(node.test)
        elif isinstance(node, ast.Compare) and _names_cuda(node):
            what = "test " + ast.unparse(node)
        elif isinstance(node, ast.Attribute) and node.attr == "pin_memory":
            what = "pin_memory"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr in (
                "cuda", "cudnn") and not isinstance(getattr(node, "ctx", None), ast.Del):
            what = ast.unparse(node)
        if what is not None:
            sites.setdefault(fn.split(".")[-1] if fn else "<module>", []).append(
                f"{path.relative_to(root.parent)}:{node.lineno} {what}")
        for child in ast.iter_child_nodes(node):
            visit(child, fn, path)

    for path in sorted(root.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8")), "", path)
    return sites


def test_every_cuda_branch_is_registered():
    sites = cuda_sites(Path(gpt2kit.__file__).parent)
    unregistered = {fn: where for fn, where in sites.items() if fn not in CUDA_BRANCHES}
    assert not unregistered, (
        "CUDA-only code that no CPU test reaches: " + "; ".join(w for ws in unregistered.values() for w in ws)
        + ". Put the decision in gpt2kit/device.py as a function of the device type (or reach it with a fake "
        "torch.cuda), test it here with 'cuda', and register the function in CUDA_BRANCHES")
    stale = sorted(set(CUDA_BRANCHES) - set(sites))
    assert not stale, f"CUDA_BRANCHES names functions without CUDA code (moved or renamed?): {stale}"
    missing = sorted({t for t in CUDA_BRANCHES.values() if not callable(globals().get(t))})
    assert not missing, f"CUDA_BRANCHES names tests that do not exist: {missing}"


def test_the_scan_finds_what_it_should(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "import torch\n"
        "def a(device):\n    if device.type == 'cuda':\n        return 1\n"
        "def b(x):\n    return x.pin_memory()\n"
        "def c():\n    torch.backends.cudnn.allow_tf32 = True\n"
        "def d(x):\n    return x.to('cpu') if x.dim() else x\n")
    sites = cuda_sites(pkg)
    assert set(sites) == {"a", "b", "c"}
    assert any("m.py:3 branch on device.type == 'cuda'" in s for s in sites["a"])


def test_pinned_transfer_decides_to_device():
    from gpt2kit.train.loop import to_device

    assert pinned_transfer("cuda") is True
    assert pinned_transfer("cpu") is False and pinned_transfer("mps") is False
    batch = {"x": torch.arange(6).view(2, 3), "pair": (torch.ones(2), 7)}
    out = to_device(batch, torch.device("cpu"))
    assert torch.equal(out["x"], batch["x"]) and out["pair"][1] == 7 and isinstance(out["pair"], tuple)


def test_tf32_flags_only_for_cuda():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert set_tf32("cpu", True) is False
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        assert set_tf32("cuda", True) is True
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
        assert set_tf32("cuda", False) is True
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_backend_and_ddp_device_ids():
    assert collective_backend("cuda") == "nccl"
    assert collective_backend("cpu") == "gloo" and collective_backend("mps") == "gloo"
    assert ddp_device_ids(torch.device("cuda", 3)) == [3]
    assert ddp_device_ids(torch.device("cuda")) is None
    assert ddp_device_ids(torch.device("cpu")) is None


def test_collective_device_for_nccl():
    assert collective_device("gloo", "cpu") == torch.device("cpu")
    assert collective_device("nccl", "cuda:1") == torch.device("cuda", 1)
    # an evaluation on CPU tensors under NCCL reduces on the rank's current GPU
    assert collective_device("nccl", torch.device("cpu"), lambda: 2) == torch.device("cuda", 2)


class FakeCuda:
    """What gpt2kit.device asks of ``torch.cuda``, for a machine with ``count`` GPUs."""

    def __init__(self, count: int, initialized: bool = True) -> None:
        self.count, self.initialized = count, initialized
        self.states = [torch.full((16,), i, dtype=torch.uint8) for i in range(count)]

    def is_available(self) -> bool:
        return self.count > 0

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return self.count

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return self.states

    def set_rng_state_all(self, states) -> None:
        self.states = [s.clone() for s in states]


def test_cuda_rng_states_with_a_fake_cuda(tmp_path):
    from gpt2kit.train.state import rng_state

    two = FakeCuda(2)
    captured = cuda_rng_states(two)
    assert [s.tolist() for s in captured] == [[0] * 16, [1] * 16]
    captured[0].fill_(9)  # copies: changing them does not change the device's state
    assert two.states[0].tolist() == [0] * 16
    assert cuda_rng_states(FakeCuda(2, initialized=False)) == []  # never touch CUDA a process did not use
    assert cuda_rng_states(FakeCuda(0)) == []
    # through a weights-only checkpoint, as the trainer saves them, and back onto a machine with two GPUs
    state = rng_state()
    state["cuda"] = cuda_rng_states(FakeCuda(2))
    torch.save({"rng": [state]}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["rng"][0]["cuda"]
    target = FakeCuda(2)
    target.states = [torch.zeros(16, dtype=torch.uint8)] * 2
    assert set_cuda_rng_states(saved, target) is True
    assert [s.tolist() for s in target.states] == [[0] * 16, [1] * 16]
    # another GPU count, a CPU machine, or a CPU run's empty list: nothing is set
    assert set_cuda_rng_states(saved, FakeCuda(1)) is False
    assert set_cuda_rng_states(saved, FakeCuda(0)) is False
    assert set_cuda_rng_states([], FakeCuda(2)) is False
    if not torch.cuda.is_available():
        assert rng_state()["cuda"] == []


def test_peak_flops_by_device_name(monkeypatch):
    from gpt2kit.train.metrics import gpu_peak_flops, peak_flops

    # the names torch.cuda.get_device_name reports for these parts
    assert gpu_peak_flops("NVIDIA H200", "bfloat16")[0] == 989e12
    assert gpu_peak_flops("NVIDIA H200 NVL", "bfloat16")[0] == 835e12
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe", "bfloat16")[0] == 756e12
    assert gpu_peak_flops("NVIDIA H100 NVL", "bfloat16")[0] == 835e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16")[0] == 312e12
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", "tf32")[0] == 494.5e12
    peak, source = gpu_peak_flops("NVIDIA GeForce RTX 4090", "bfloat16")
    assert peak is None and "RTX 4090" in source and "MFU not reported" in source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    peak, source = peak_flops(torch.device("cuda", 0), torch.bfloat16)
    assert peak == 989e12 and "H200 bfloat16 dense peak 989 TFLOP/s" in source
    assert peak_flops(torch.device("cuda", 0), torch.float32, tf32=False)[0] == 67e12


def test_fused_adamw_default_on_cuda():
    from gpt2kit.device import default_fused_adamw

    assert default_fused_adamw(torch.device("cuda", 0)) is True
    assert default_fused_adamw(torch.device("cpu")) is True
    assert default_fused_adamw(torch.device("mps")) is False


def test_resolve_device_with_and_without_cuda(monkeypatch):
    from gpt2kit.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda: CUDA is not available on this machine; use --device cpu"):
        resolve_device("cuda")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_setup_distributed_on_fake_gpus_and_in_a_world_of_one(monkeypatch):
    from gpt2kit.distributed import setup_distributed, teardown, wrap_model

    # torchrun started two ranks per node on a machine with one GPU: a clear error before any CUDA call
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="LOCAL_RANK 1 but only 1 CUDA devices; set --nproc_per_node to at most"):
        setup_distributed("auto")
    monkeypatch.undo()
    # not under torchrun: no process group
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = setup_distributed("cpu")
    assert env.backend is None and not env.distributed
    # `torchrun --nproc_per_node=1`: a process group and a DDP-wrapped model, as with many ranks
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)
    env = setup_distributed("cpu")
    try:
        assert env.backend == "gloo" and env.world_size == 1 and env.owns_process_group
        wrapped = wrap_model(torch.nn.Linear(2, 2), env)
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        wrapped(torch.ones(1, 2)).sum().backward()
    finally:
        del wrapped
        teardown(env)


class _Bf16Cuda:
    def __init__(self, available: bool, bf16: bool) -> None:
        self._available, self._bf16 = available, bf16

    def is_available(self) -> bool:
        return self._available

    def is_bf16_supported(self) -> bool:
        return self._bf16


def test_auto_dtype_follows_native_bf16(monkeypatch):
    # CUDA: bfloat16 exactly where the GPU has it (A100/H100 yes); a V100/T4 trains in float16 with a loss
    # scaler (issue 27; float32 before); no GPU at all: float32
    assert autocast_dtype_for("auto", "cuda", _Bf16Cuda(True, True)) == torch.bfloat16
    assert autocast_dtype_for("auto", "cuda", _Bf16Cuda(True, False)) == torch.float16
    assert autocast_dtype_for("auto", "cuda", _Bf16Cuda(False, False)) is None
    # an explicit choice is kept whatever the hardware
    assert autocast_dtype_for("bfloat16", "cpu") == torch.bfloat16
    assert autocast_dtype_for("float16", "cpu") == torch.float16
    assert autocast_dtype_for("float16", "cuda", _Bf16Cuda(True, True)) == torch.float16
    assert autocast_dtype_for("float32", "cuda", _Bf16Cuda(True, True)) is None
    # CPU: oneDNN's answer decides
    for has in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda has=has: has)
        assert native_bf16("cpu") is (has and torch.backends.mkldnn.is_available())
        assert autocast_dtype_for("auto", "cpu") == (torch.bfloat16 if native_bf16("cpu") else None)
    assert native_bf16("mps") is False


class _Allocator:
    """A fake ``torch.cuda``/``torch.mps`` that counts ``empty_cache`` calls."""

    def __init__(self) -> None:
        self.emptied = 0

    def empty_cache(self) -> None:
        self.emptied += 1


def test_release_cached_memory_after_oom():
    for device_type in ("cuda", "mps"):
        fake = _Allocator()
        assert release_cached_memory(device_type, fake) is True and fake.emptied == 1
    fake = _Allocator()
    assert release_cached_memory("cpu", fake) is False and fake.emptied == 0


def test_compile_supported_on_cuda():
    from gpt2kit.device import compile_supported

    assert compile_supported("cuda") is True and compile_supported("cpu") is True
    assert compile_supported("mps") is False


def test_auto_batch_memory_on_cuda():
    from types import SimpleNamespace

    from gpt2kit.device import memory_budget, peak_memory_meter

    GiB = 2**30
    calls = []
    cuda = SimpleNamespace(mem_get_info=lambda: (20 * GiB, 24 * GiB), memory_allocated=lambda: 1 * GiB,
                           reset_peak_memory_stats=lambda: calls.append("reset"), max_memory_allocated=lambda: 7)
    limit, why = memory_budget("cuda", cuda=cuda)
    assert limit == 21 * GiB and "CUDA free memory 20.0 of 24.0 GiB" in why  # free plus what this process holds
    assert peak_memory_meter("cuda", cuda=cuda)() == 7 and calls == ["reset"]


def test_pipeline_size_and_report_gpus():
    from types import SimpleNamespace

    from gpt2kit.device import describe_gpus, is_gpu

    assert is_gpu("cuda") and not is_gpu("mps") and not is_gpu("cpu")
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30)
    cuda = SimpleNamespace(is_available=lambda: True, device_count=lambda: 8, get_device_properties=lambda i: props)
    assert describe_gpus(cuda) == "8 x NVIDIA H100 80GB HBM3 (80 GiB)"
    assert describe_gpus(SimpleNamespace(is_available=lambda: False)) is None
