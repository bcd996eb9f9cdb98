"""The int8 CPU kernels gpt2kit.quantize chose between, on GPT-2 124M's matrix shapes.

Per (out, in) shape and row count: float32 ``nn.Linear``, weight-only int8 ``torch._weight_int8pack_mm`` with
float32 and bfloat16 activations, and the dynamic quantized linear (int8 weights per output channel, uint8
activations quantized per call: ``torch.ops.quantized.linear_dynamic``), in microseconds, with each int8 path's
max |error| against float32.

    OMP_NUM_THREADS=1 python benchmarks/int8_kernels.py
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn as nn


def bench(f, n: int = 30) -> float:
    """Mean microseconds of ``n`` calls after 3 warm-up calls."""
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e6


def measure(out_f: int, in_f: int, rows: int) -> str:
    """One table row: the four paths on a random (out_f, in_f) weight and ``rows`` input rows."""
    w = torch.randn(out_f, in_f) * 0.02
    b = torch.zeros(out_f)
    lin = nn.Linear(in_f, out_f)
    lin.weight.data, lin.bias.data = w, b
    s = w.abs().amax(1) / 127  # (out,): one scale per output channel
    wq = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    qw = torch.quantize_per_channel(w, s.double(), torch.zeros(out_f, dtype=torch.long), 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, b)
    x = torch.randn(rows, in_f)
    xb, sb = x.bfloat16(), s.bfloat16()
    with torch.inference_mode():
        ref = lin(x)
        t_f = bench(lambda: lin(x))
        t_w8 = bench(lambda: torch._weight_int8pack_mm(x, wq, s) + b)
        t_w8b = bench(lambda: torch._weight_int8pack_mm(xb, wq, sb))
        t_dyn = bench(lambda: torch.ops.quantized.linear_dynamic(x, packed, True))
        e_w8 = (torch._weight_int8pack_mm(x, wq, s) + b - ref).abs().max().item()
        e_dyn = (torch.ops.quantized.linear_dynamic(x, packed, True) - ref).abs().max().item()
    return (f"{out_f:>5} x {in_f:<4} {rows:>4} {t_f:>8.0f} {t_w8:>10.0f} {t_w8b:>11.0f} {t_dyn:>12.0f} "
            f"{e_w8:>8.1e} {e_dyn:>8.1e}")


def main() -> None:
    torch.manual_seed(0)
    warnings.simplefilter("ignore", UserWarning)  # torch's notice that its quantized tensor types will go
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), engine {torch.backends.quantized.engine}")
    print(f"{'out x in':>12} {'rows':>4} {'f32 us':>8} {'w8 f32 us':>10} {'w8 bf16 us':>11} {'dyn int8 us':>12} "
          f"{'w8 err':>8} {'dyn err':>8}")
    for out_f, in_f in [(2304, 768), (3072, 768), (768, 3072), (50304, 768)]:
        for rows in (1, 16):
            print(measure(out_f, in_f, rows), flush=True)


if __name__ == "__main__":
    main()
