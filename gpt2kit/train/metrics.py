"""Training metrics: ``metrics.jsonl``, TensorBoard scalars, and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s / peak FLOP/s, with the PaLM estimate of training FLOPs per token
``6 N + 12 L H Q T`` (N parameters doing matmuls, i.e. all but the position embeddings; L layers,
H heads, Q head size, T context). The peak is a table value for NVIDIA A100/H100/H200 (dense bf16,
or TF32/FP32 for float32 runs) and a *measured* matmul rate on CPU; :func:`peak_flops` says which.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from gpt2kit.checkpoint import unwrap_model
from gpt2kit.errors import UserError
from gpt2kit.eval.tasks import TASKS
from gpt2kit.io import atomic_write_text, parse_jsonl

# dense peak FLOP/s per device: {precision: value}; tf32 is what float32 matmuls run at with TF32 allowed.
# Keys are matched as substrings of torch.cuda.get_device_name in this order, so a variant comes before its base
# name ("NVIDIA H200 NVL" is the 600 W PCIe card; "NVIDIA H100 80GB HBM3" is the SXM part).
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200 NVL": {"bfloat16": 835e12, "tf32": 417.5e12, "float32": 60e12},
    "H200": {"bfloat16": 989e12, "tf32": 494.5e12, "float32": 67e12},
    "H100 NVL": {"bfloat16": 835e12, "tf32": 417.5e12, "float32": 60e12},
    "H100 PCIe": {"bfloat16": 756e12, "tf32": 378e12, "float32": 51e12},
    "H100": {"bfloat16": 989e12, "tf32": 494.5e12, "float32": 67e12},  # SXM
    "A100": {"bfloat16": 312e12, "tf32": 156e12, "float32": 19.5e12},
}


def flops_per_token(n_layer: int, n_head: int, head_size: int, block_size: int, matmul_params: int) -> int:
    """Training FLOPs per token: 6 N (forward + backward matmuls) + 12 L H Q T (attention scores and values)."""
    return 6 * matmul_params + 12 * n_layer * n_head * head_size * block_size


def gpt_flops_per_token(model: torch.nn.Module) -> int:
    """:func:`flops_per_token` for a gpt2kit GPT (N = its parameters minus the position embeddings)."""
    m = unwrap_model(model)
    cfg = m.config
    n = m.num_params() - m.transformer.wpe.weight.numel()
    return flops_per_token(cfg.n_layer, cfg.n_head, cfg.head_size, cfg.block_size, n)


@functools.cache
def measure_matmul_flops(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 1.0) -> float:
    """The best FLOP/s of square matmuls (at most ``size``) on this CPU in ``dtype``, over about ``seconds`` of
    trials."""
    g = torch.Generator().manual_seed(0)  # a private generator: measuring must not move the global RNG
    # the size doubles from 256 while one matmul takes under a tenth of ``seconds``: a dtype the CPU emulates
    # (float16 on most x86 parts runs at well under 1 GFLOP/s) would spend minutes on one 2048 matmul
    n = min(256, size)
    while True:
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        t = time.perf_counter()
        a @ b  # also the warm-up: thread pool start, first-touch pages
        if n >= size or time.perf_counter() - t > seconds / 10:
            break
        n *= 2
    best, deadline, trials = 0.0, time.perf_counter() + seconds, 0
    while trials < 3 or time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
        trials += 1
    return best


def gpu_peak_flops(device_name: str, precision: str) -> tuple[float | None, str]:
    """(dense peak FLOP/s of the GPU called ``device_name`` at bfloat16/tf32/float32, its source); None when unknown."""
    for key, table in GPU_PEAK_FLOPS.items():
        if key in device_name:
            return table[precision], f"{key} {precision} dense peak {table[precision] / 1e12:.0f} TFLOP/s (spec sheet)"
    return None, f"no peak FLOP/s known for {device_name}; MFU not reported"


def peak_flops(device: torch.device, dtype: torch.dtype, tf32: bool = True) -> tuple[float | None, str]:
    """(peak FLOP/s of one device for this precision, where that figure comes from); None when unknown."""
    if device.type == "cuda":
        # float16 and bfloat16 share the tensor cores' dense peak on every part in the table
        prec = "bfloat16" if dtype in (torch.bfloat16, torch.float16) else ("tf32" if tf32 else "float32")
        return gpu_peak_flops(torch.cuda.get_device_name(device), prec)
    if device.type == "cpu":
        rate = measure_matmul_flops(dtype)
        return rate, f"measured CPU {str(dtype).replace('torch.', '')} matmul peak {rate / 1e9:.1f} GFLOP/s"
    return None, f"no peak FLOP/s known for {device.type}; MFU not reported"


class MetricsWriter:
    """Appends one JSON object per logged step to ``RUN/metrics.jsonl`` and mirrors numbers to TensorBoard
    (and to a tracker such as W&B, when given).

    Every record is also kept in :attr:`records` so a checkpoint can carry the metrics so far; on resume
    :meth:`restore` rewrites the file from the checkpoint's records, dropping lines written after it.
    """

    def __init__(self, run_dir: str | os.PathLike | None, *, tensorboard: bool = True, enabled: bool = True,
                 tracker: Any = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.tracker = tracker
        """Where records also go (a :class:`~gpt2kit.train.tracking.WandbTracker`), or None."""
        self.enabled = enabled and run_dir is not None
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir is not None else None
        self._tb = None
        self._tb_wanted = tensorboard and self.enabled
        self._tb_dir = Path(run_dir) / "tensorboard" if run_dir is not None else None

    def restore(self, records: list[dict[str, Any]], step: int) -> None:
        """Continue after a checkpoint at ``step`` holding ``records``."""
        self.records = [dict(r) for r in records]
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._open_tb(purge_step=step + 1)

    def _open_tb(self, purge_step: int | None = None) -> None:
        if not self._tb_wanted or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (gpt2kit[viz])
            self._tb_wanted = False
            return
        self._tb = SummaryWriter(log_dir=str(self._tb_dir), purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        """Record ``record`` (must hold ``step``); numbers also go to TensorBoard."""
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(record)
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._open_tb()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(metric_tag(k), v, record["step"])
        if self.tracker is not None:
            self.tracker.log(record)

    def log_samples(self, step: int, texts: list[str]) -> None:
        """Samples generated at ``step``: to the tracker (samples.jsonl is the checkpointer's)."""
        if self.enabled and self.tracker is not None:
            self.tracker.log_samples(step, texts)

    def close(self) -> None:
        """Flush and close TensorBoard and the tracker."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.tracker is not None:
            self.tracker.close()


def metric_tag(key: str) -> str:
    """TensorBoard (and W&B) name of a metrics key: ``val_loss`` -> ``val/loss``, ``arc_easy_acc`` ->
    ``arc_easy/acc``, ``loss`` -> ``train/loss``."""
    for prefix in ("val", "hellaswag", *(t.harness for t in TASKS.values())):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1:]}"
    return f"train/{key}"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl`` (UserError naming the file when missing or unreadable)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no metrics file; is {run_dir} a run directory written by `gpt2kit train`?")
    out = []
    for lineno, rec in parse_jsonl(path.read_text(encoding="utf-8").splitlines(), str(path)):
        if not isinstance(rec, dict) or "step" not in rec:
            raise UserError(f"{path}:{lineno}: a metrics line needs an object with \"step\"")
        out.append(rec)
    return out
