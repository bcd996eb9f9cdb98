"""llama.cpp on gpt2kit's GGUF export: logits over held-out text and greedy text, against gpt2kit's own.

Exports the checkpoint with each --outtype, runs llama.cpp (through llama-cpp-python) teacher-forced over
--windows windows of the prepared split, and prints max |logit difference| (absolute, and relative to the
largest |logit|) and argmax agreement, then greedy continuations of --prompt from both.

    python benchmarks/gguf_parity.py --checkpoint runs/demo --data data/sotu
    python benchmarks/gguf_parity.py --checkpoint runs/demo --data data/sotu --outtypes f32,q8_0 --json p.json

Needs ``llama_cpp`` importable (pip install llama-cpp-python) and gguf (pip install 'gpt2kit[gguf]').
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from gpt2kit import load_model
from gpt2kit.checkpoint.gguf import write_gguf
from gpt2kit.data.loader import eval_batches
from gpt2kit.generation import generate


def llama_greedy(llm, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation: argmax of its own logits, token by token."""
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a prepared data directory (gpt2kit prepare)")
    p.add_argument("--split", default="val")
    p.add_argument("--outtypes", default="f32,f16,q8_0")
    p.add_argument("--windows", type=int, default=4, help="block_size windows of the split to score")
    p.add_argument("--prompt", default="The")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import llama_cpp

    torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint)
    model, tok = loaded.model, loaded.tokenizer  # GPT-2's, or the trained vocabulary the checkpoint carries
    T = model.config.block_size
    windows = [x[0].tolist() for x, _ in eval_batches(Path(args.data), args.split, block_size=T, batch_size=1,
                                                      max_batches=args.windows)]
    with torch.inference_mode():
        ours = [model(torch.tensor([w]))[0][0].numpy() for w in windows]  # each (T, V)
    prompt = tok.encode(args.prompt)
    greedy_ours = generate(model, torch.tensor([prompt]), args.new_tokens, temperature=0)[0, len(prompt):].tolist()
    results = {"checkpoint": args.checkpoint, "windows": len(windows), "block_size": T, "outtypes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in args.outtypes.split(","):
            path = write_gguf(model, Path(tmp) / f"m-{outtype}.gguf", outtype, tokenizer=tok)
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=T, n_batch=T, logits_all=True,
                                  n_threads=args.threads, verbose=False)
            diffs, agree, scale = [], [], []
            for w, mine in zip(windows, ours, strict=True):
                llm.reset()
                llm.eval(w)
                theirs = np.array(llm.scores[:T], dtype=np.float32)
                diffs.append(float(np.abs(theirs - mine).max()))
                scale.append(float(np.abs(mine).max()))
                agree.append(float((theirs.argmax(-1) == mine.argmax(-1)).mean()))
            greedy = llama_greedy(llm, prompt, args.new_tokens)
            llm.close()
            same = sum(a == b for a, b in zip(greedy, greedy_ours, strict=True))
            r = {"max_abs_diff": max(diffs), "max_abs_logit": max(scale), "argmax_agreement": float(np.mean(agree)),
                 "greedy_same_tokens": f"{same}/{args.new_tokens}", "bytes": path.stat().st_size,
                 "greedy_text": tok.decode(greedy)}
            results["outtypes"][outtype] = r
            print(f"{outtype:5s} max|diff| {r['max_abs_diff']:.3g} (max|logit| {r['max_abs_logit']:.3g})  "
                  f"argmax agreement {100 * r['argmax_agreement']:.1f}%  greedy tokens equal {same}/{args.new_tokens}"
                  f"  {r['bytes'] / 1e6:.1f} MB")
    results["greedy_text_gpt2kit"] = tok.decode(greedy_ours)
    print(f"gpt2kit greedy: {args.prompt}{results['greedy_text_gpt2kit']!r}")
    for outtype, r in results["outtypes"].items():
        print(f"llama.cpp {outtype} greedy: {args.prompt}{r['greedy_text']!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
