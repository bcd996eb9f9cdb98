"""``gpt2kit demo``: the README's main command — prepare the embedded corpus, train demo-cpu, print samples."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import HelpFormatter

HELP = "train a small GPT-2 on the built-in corpus in about 10 minutes on a CPU, then print samples"
DESCRIPTION = """\
The whole pipeline on a laptop-class CPU, offline:
  1. prepare the built-in corpus (US State of the Union addresses, shipped in the package) into RUN/data,
  2. train the demo-cpu preset on it (gpt2kit train --preset demo-cpu --data RUN/data --out RUN),
  3. print the validation loss and a few samples from the best checkpoint.
Running it again continues an interrupted demo (--resume auto) or, when it finished, only samples;
--fresh starts over. Afterwards: gpt2kit sample --checkpoint RUN, gpt2kit plot RUN.
"""

PROMPTS = ("Fellow-Citizens of the Senate and House of Representatives:", "The state of the Union is",
           "In the coming year, my Administration will")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--out, --corpus, --fresh, --max-steps, --device, --samples."""
    p.formatter_class = HelpFormatter
    p.add_argument("--out", default="runs/demo", help="run directory (the prepared data goes to OUT/data)")
    p.add_argument("--corpus", default="sotu", help="built-in corpus: sotu or moby-dick")
    p.add_argument("--fresh", action="store_true", help="delete OUT's checkpoints and metrics first and train anew")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step (default: the preset's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    p.add_argument("--samples", type=int, default=3, help="samples printed at the end")
    p.add_argument("--sample-tokens", type=int, default=60, help="tokens per printed sample")


def run(args: argparse.Namespace) -> int:
    """Prepare, train, sample."""
    import os

    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # see gpt2kit/cli/train.py
    import shutil
    import time
    from pathlib import Path

    import torch

    from gpt2kit.checkpoint import find_resume, load_model
    from gpt2kit.data.prepare import prepare
    from gpt2kit.errors import UserError
    from gpt2kit.generation import generate
    from gpt2kit.tokenizer import get_tokenizer
    from gpt2kit.train.presets import get_preset
    from gpt2kit.train.pretrain import run_pretraining, summary_line
    from gpt2kit.train.resolve import apply_overrides

    t0 = time.perf_counter()
    out = Path(args.out)
    data = out / "data"
    if args.fresh:
        for name in ("checkpoints", "tensorboard", "metrics.jsonl", "samples.jsonl", "train_config.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    print(f"[1/3] preparing builtin:{args.corpus} into {data}")
    prepare([f"builtin:{args.corpus}"], data)
    overrides = {"out": str(out), "data": str(data), "device": args.device, "resume": "auto"}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    cfg = apply_overrides(get_preset("demo-cpu"), overrides)
    print(f"[2/3] training demo-cpu into {out} (about {cfg.last_step} steps; Ctrl-C saves, rerun continues)")
    point = find_resume(cfg.run.out, "auto")
    result = run_pretraining(cfg, point)
    print(summary_line(result, cfg.run.out))
    if result.interrupted:
        return 0
    loaded = load_model(out, device=cfg.runtime.device if cfg.runtime.device != "auto" else "cpu")
    ckpt = loaded.checkpoint
    val = ckpt.get("best_val_loss")
    print(f"[3/3] samples from {loaded.source} (step {ckpt.get('step')}"
          + (f", validation loss {val:.4f}" if val is not None else "") + ")")
    tok = get_tokenizer()
    for i in range(args.samples):
        prompt = PROMPTS[i % len(PROMPTS)]
        idx = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=loaded.model.lm_head.weight.device)
        ids = generate(loaded.model, idx, args.sample_tokens, temperature=0.8, top_k=40, seed=i)
        print(f"\n--- sample {i + 1} ---\n{tok.decode(ids[0].tolist())}")
    minutes = (time.perf_counter() - t0) / 60
    if val is None:
        raise UserError(f"{out}: the run recorded no validation loss; re-run with --fresh")
    print(f"\ndemo finished in {minutes:.1f} min: validation loss {val:.4f} "
          f"(next: gpt2kit sample --checkpoint {out}; gpt2kit plot {out})")
    return 0
