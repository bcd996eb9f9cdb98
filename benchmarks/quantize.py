"""int8 quality on a trained checkpoint: held-out loss, teacher-forced argmax agreement and greedy text, vs float32.

    python benchmarks/quantize.py --checkpoint runs/demo --data data/sotu
    python benchmarks/quantize.py --checkpoint runs/demo --data data/sotu --windows 64 --prompts 8 --json q.json

Loss is the mean next-token loss over --windows block_size windows of the split (as ``gpt2kit eval loss``
scores a prepared split); agreement is the share of those positions where the int8 model's most likely next
token is float32's. Greedy: --prompts prompts (the first --prompt-tokens tokens of a window each) continued by
--new-tokens tokens; "same" counts equal tokens position by position, "until first difference" the prefix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gpt2kit import load_model
from gpt2kit.data.loader import eval_batches
from gpt2kit.generation import generate
from gpt2kit.quantization import quantize_and_describe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="a prepared data directory (gpt2kit prepare)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    ref = load_model(args.checkpoint).model
    q = load_model(args.checkpoint).model
    note = quantize_and_describe(q, "int8")
    print(note)
    T = ref.config.block_size
    batches = list(eval_batches(Path(args.data), args.split, block_size=T, batch_size=args.batch_size,
                                max_batches=max(1, args.windows // args.batch_size)))
    nll = {"float32": 0.0, "int8": 0.0}
    agree = n = 0
    with torch.inference_mode():
        for x, y in batches:
            lr, loss_r = ref(x, y)
            lq, loss_q = q(x, y)
            nll["float32"] += loss_r.item() * y.numel()
            nll["int8"] += loss_q.item() * y.numel()
            agree += int((lr.argmax(-1) == lq.argmax(-1)).sum())
            n += y.numel()
    loss = {k: v / n for k, v in nll.items()}
    rel = loss["int8"] / loss["float32"] - 1
    print(f"held-out loss over {n:,} tokens: float32 {loss['float32']:.4f}  int8 {loss['int8']:.4f}  "
          f"({100 * rel:+.3f}%)  argmax agreement {100 * agree / n:.2f}%")
    prompts = torch.cat([x[:, :args.prompt_tokens] for x, _ in batches])[:args.prompts]  # (P, prompt)
    a = generate(ref, prompts, args.new_tokens, temperature=0)[:, args.prompt_tokens:]
    b = generate(q, prompts, args.new_tokens, temperature=0)[:, args.prompt_tokens:]
    same = (a == b).float().mean().item()
    prefix = [int((row_a != row_b).nonzero()[0]) if (row_a != row_b).any() else args.new_tokens
              for row_a, row_b in zip(a, b, strict=True)]
    print(f"greedy, {len(prompts)} prompts x {args.new_tokens} tokens: same token {100 * same:.1f}% of positions; "
          f"equal until the first difference: {prefix}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "checkpoint": args.checkpoint, "weights": note, "tokens": n, "loss": loss, "relative_change": rel,
            "argmax_agreement": agree / n, "greedy_same": same, "greedy_equal_prefix": prefix}, indent=2) + "\n")


if __name__ == "__main__":
    main()
