"""CTranslate2 side of ``benchmarks/generate.py --baseline ctranslate2``, in a process of its own.

Converts a Hugging Face GPT-2 directory with CTranslate2's own converter (float32 and int8) and prints one JSON
line: tokens/s of greedy generation at each batch size, prompt of random token ids, fixed length.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    vocab = json.loads((Path(args.hf) / "vocab.json").read_text())
    tokens = sorted(vocab, key=vocab.get)
    rows = []
    for compute_type in ("float32", "int8"):
        out = Path(args.work) / f"ct2-{compute_type}"
        TransformersConverter(args.hf).convert(str(out), quantization=compute_type, force=True)
        gen = ctranslate2.Generator(str(out), device="cpu", compute_type=compute_type, intra_threads=args.threads)
        rng = random.Random(0)
        for B in (int(b) for b in args.batch_sizes.split(",")):
            prompts = [[tokens[rng.randrange(50256)] for _ in range(args.prompt_tokens)] for _ in range(B)]

            def run(prompts=prompts, gen=gen):
                gen.generate_batch(prompts, max_length=args.new_tokens, min_length=args.new_tokens,
                                   sampling_topk=1, include_prompt_in_result=False)

            run()
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t0)
            rows.append({"compute_type": compute_type, "batch_size": B, "version": ctranslate2.__version__,
                         "tokens_per_s": B * args.new_tokens / best})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
