"""HellaSwag scoring speed: examples/s batched (all endings of several examples per forward pass) vs one
example at a time (its four endings in one pass), same model, same examples, same run.

Random weights and synthetic examples in the official HellaSwag jsonl format (context of about 40
tokens, four endings of about 20, like the real validation set), written to a temporary file and read
back through the same loader ``gpt2kit eval hellaswag`` uses.

    python benchmarks/eval.py                                  # gpt2 (124M), current device
    python benchmarks/eval.py --preset small --examples 64     # quick CPU check
    python benchmarks/eval.py --preset gpt2-medium --dtype bfloat16 --batch-size 16 --examples 512
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from gpt2kit import GPT, MODEL_PRESETS, GPTConfig
from gpt2kit.eval.hellaswag import load_examples, score_hellaswag

WORDS = (
    "the a man woman child dog cat house street car park river table kitchen ball water tree road window door "
    "walks runs jumps sits holds throws opens closes looks smiles talks plays begins starts continues stops turns "
    "slowly quickly then while after before into onto over under with without behind around next his her their "
    "small large red blue old new bright dark long short happy tired camera shows people crowd field stage"
).split()


def synthetic_examples(path: Path, n: int, seed: int) -> None:
    """``n`` HellaSwag-format lines: ctx ~30 words (~40 tokens), 4 endings of 10-22 words."""
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k)) + "."

    with open(path, "w") as f:
        for i in range(n):
            ctx_a, ctx_b = sentence(rng.randint(18, 30)), sentence(rng.randint(4, 8))[:-1]
            obj = {
                "ind": i, "activity_label": "Synthetic", "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b}",
                "endings": [sentence(rng.randint(10, 22)) for _ in range(4)], "source_id": f"synthetic~{i}",
                "split": "val", "split_type": "indomain", "label": rng.randrange(4),
            }
            f.write(json.dumps(obj) + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2", choices=list(MODEL_PRESETS), help="model size (random weights)")
    ap.add_argument("--examples", type=int, default=256, help="synthetic examples to score in each mode")
    ap.add_argument("--batch-size", type=int, default=16, help="examples per forward pass in the batched mode")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="autocast dtype for the forward pass (weights stay float32, as in training)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cfg = GPTConfig.from_preset(args.preset)
    model = GPT(cfg).to(device).eval()
    autocast = None if args.dtype == "float32" else getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hellaswag_synthetic.jsonl"
        synthetic_examples(path, args.examples, args.seed)
        examples = load_examples(path)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"model {args.preset}: {model.num_params() / 1e6:.1f}M params, block_size {cfg.block_size}; "
          f"device {device} ({hw}), autocast {args.dtype}; {len(examples)} synthetic examples")
    # warm-up (allocator, kernels) on a few examples in both modes
    for bs in (1, args.batch_size):
        score_hellaswag(model, examples[: min(len(examples), args.batch_size)], device=device, batch_size=bs,
                        autocast_dtype=autocast)
    results = {}
    for label, bs in (("one example per pass", 1), (f"batched, {args.batch_size} examples per pass", args.batch_size)):
        _sync(device)
        t0 = time.perf_counter()
        res = score_hellaswag(model, examples, device=device, batch_size=bs, autocast_dtype=autocast)
        _sync(device)
        dt = time.perf_counter() - t0
        results[bs] = (res, dt)
        print(f"{label:<34} {len(examples) / dt:9.1f} examples/s   ({dt:.2f} s, acc_norm {res['acc_norm']:.4f})")
    (r1, t1), (rb, tb) = results[1], results[args.batch_size]
    print(f"speed-up batched / one-at-a-time: {t1 / tb:.2f}x; same scores: {r1 == rb}")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
