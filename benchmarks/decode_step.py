"""One decode step of the serving engine at 1, 2, 4, 8 and 16 rows, broken down, against plain torch.

gpt2 preset, random weights, float32, every row 16 prompt tokens in. Per row count: the engine's whole step
(packed path, as `gpt2kit serve` runs it), the 48 block linears and the lm_head through the packed path,
12 layers of attention, the greedy argmax, the rest (norms, GELU, cache writes, Python), a packed
``model(x, cache)`` step with an ordinary KV cache, and the same step through nn.Linear's own products
(plain torch). Every figure is the minimum over interleaved rounds.

On a shared machine two torch threads measure the other jobs more than the code; ``--threads 1`` reports the
CPU time of the one thread (``time.thread_time``), which the load does not stretch. The packed weights are
made for two threads either way (their slab count), so the work is the same.

    python benchmarks/decode_step.py --threads 1 --rounds 6
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from gpt2kit import GPT, GPTConfig
from gpt2kit.packed_decode import packed_cpu_linears
from gpt2kit.serve.engine import Engine, Request, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads while timing; 1 reports CPU time")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--rows", default="1,2,4,8,16")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    torch.set_num_threads(2)  # the packed slabs are cut for two threads, as on the 2-core development machine
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2")).eval()
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    best: dict[tuple[str, int], float] = {}

    def timed(name: str, B: int, fn) -> None:
        t = clock()
        fn()
        best[(name, B)] = min(best.get((name, B), float("inf")), (clock() - t) * 1e3)

    def engine(B: int) -> Engine:
        e = Engine(model, max_batch=B)
        e._admit([Request(list(range(100 + i, 116 + i)), SamplingParams(10_000, temperature=0), lambda t: None,
                          lambda r: None) for i in range(B)])  # one batched prefill, as for clients arriving together
        return e

    with torch.inference_mode():
        caches = {B: model.make_cache(B) for B in rows}
        for B in rows:
            model(torch.randint(0, 50257, (B, 16)), cache=caches[B])
        step = {B: (lambda B=B: model(torch.zeros(B, 1, dtype=torch.long), cache=caches[B], pos=16, last_only=True))
                for B in rows}
        with packed_cpu_linears(model):
            torch.set_num_threads(args.threads)
            engines = {B: engine(B) for B in rows}
            for _ in range(args.rounds):
                for B in rows:
                    x, h = torch.randn(B, 1, 768), torch.randn(B, 1, 3072)
                    q, kv = torch.randn(B, 12, 1, 64), engines[B]._caches[0].k[:B, :, :40]
                    logits = torch.randn(B, 50304)[:, :50257]
                    timed("engine", B, engines[B]._decode_step)
                    timed("blocks", B, lambda x=x, h=h: [m(x if m.in_features == 768 else h) for m in blocks])
                    timed("lm_head", B, lambda x=x: model.lm_head(x))
                    timed("attn", B, lambda q=q, kv=kv: [F.scaled_dot_product_attention(q, kv, kv) for _ in range(12)])
                    timed("argmax", B, lambda logits=logits: logits.argmax(-1).tolist())
                    timed("packed", B, step[B])
        for _ in range(args.rounds):
            for B in rows:
                timed("plain", B, step[B])
    unit = "CPU ms of one thread" if args.threads == 1 else f"wall ms, {args.threads} threads"
    print(f"{unit}, minimum of {args.rounds} interleaved rounds")
    print("| rows | engine step | tok/s | x 1 row | block linears | lm_head | attention | argmax | rest | "
          "packed model(x, cache) | plain torch model(x, cache) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    one = rows[0] / best[("engine", rows[0])]
    for B in rows:
        g = {k: v for (k, b), v in best.items() if b == B}
        rest = g["engine"] - g["blocks"] - g["lm_head"] - g["attn"] - g["argmax"]
        print(f"| {B} | {g['engine']:.1f} | {B / g['engine'] * 1e3:.0f} | {B / g['engine'] / one:.2f}x | "
              f"{g['blocks']:.1f} | {g['lm_head']:.1f} | {g['attn']:.1f} | {g['argmax']:.1f} | {rest:.1f} | "
              f"{g['packed']:.1f} | {g['plain']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
