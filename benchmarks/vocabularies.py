"""Held-out bits per byte at equal CPU time: GPT-2's 50,257-token vocabulary against byte-level BPE
vocabularies trained on the corpus (``gpt2kit tokenizer train``), through the real commands.

For each corpus the documents are split once into a training file and a held-out text (the same bytes for every
arm). Each arm is a tokenizer and a model shape (``demo-cpu``: 4 layers, 96 wide, 128-token context; ``wide``:
6 layers, 192 wide, which spends on the blocks what a small vocabulary frees from the output layer). An arm
trains the ``demo-cpu`` training preset (Muon + AdamW, WSD schedule) for as many steps as fit ``--minutes`` of
wall time: a probe run measures its seconds per step first, and the schedule is that many steps long, so every
arm ends its learning-rate decay when its time is up. Then ``gpt2kit eval loss`` scores the held-out text
(sliding windows, bits per byte over the text's UTF-8 bytes, which do not depend on the tokenizer). Every command
runs in its own process. A tokenizer is trained on the training file only.

    OMP_NUM_THREADS=1 python benchmarks/vocabularies.py                      # both corpora, the default arms
    python benchmarks/vocabularies.py --encode-speed                         # only: run-time encoding, two libraries
    python benchmarks/vocabularies.py --corpora sotu --minutes 1 --arms gpt2 bpe-4096
    python benchmarks/vocabularies.py --parallel 2 --threads 1               # two arms at a time, one thread each

Arms run ``--parallel`` at a time (each with ``--threads`` threads): arms that share the machine see the same
conditions, so they compare at equal time, but the absolute figures are those of the shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CORPORA = ("sotu", "moby-dick")
"""The embedded corpus (State of the Union addresses) and one more public-domain text (Moby-Dick)."""
HELD_OUT_CHARS = 120_000
"""Characters of held-out text per corpus: the last documents of sotu, the last part of Moby-Dick."""
SHAPES = {"demo-cpu": {}, "wide": {"n_layer": 6, "n_head": 6, "n_embd": 192}}
"""Model shapes an arm may train (flags over the demo-cpu preset)."""
DEFAULT_ARMS = ("gpt2", "bpe-2048", "bpe-4096", "bpe-8192", "bpe-4096-wide")
"""``gpt2`` or ``bpe-N`` (a trained vocabulary of N tokens), optionally ``-wide`` for the wide shape."""
PROBE_STEPS = 24


def split_corpus(name: str, root: Path) -> tuple[Path, Path]:
    """(train.jsonl, heldout.txt) of an embedded corpus: the held-out text is its tail (whole documents of sotu)."""
    from gpt2kit.data.builtin import builtin_documents

    docs = list(builtin_documents(name))
    held: list[str] = []
    if len(docs) > 1:
        while sum(map(len, held)) < HELD_OUT_CHARS:
            held.insert(0, docs.pop())
        text = "\n\n".join(held)
    else:
        text = docs[0][-HELD_OUT_CHARS:]
        docs = [docs[0][:-HELD_OUT_CHARS]]
    train = root / f"{name}-train.jsonl"
    train.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    heldout = root / f"{name}-heldout.txt"
    heldout.write_text(text, encoding="utf-8")
    return train, heldout


def gpt2kit(*args: str, threads: int, log: Path) -> str:
    """Run ``gpt2kit ARGS`` in its own process; its stdout (stderr goes to ``log``), or exit naming the log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(log, "a") as err:
        err.write(f"$ gpt2kit {' '.join(args)}\n")
        err.flush()
        done = subprocess.run([sys.executable, "-m", "gpt2kit", *args], stdout=subprocess.PIPE, stderr=err,
                              text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"gpt2kit {' '.join(args)} failed (exit {done.returncode}); see {log}")
    return done.stdout


def parse_arm(arm: str) -> tuple[int | None, str]:
    """(vocabulary size or None for GPT-2's, shape) of an arm name."""
    shape = "demo-cpu"
    if arm.endswith("-wide"):
        arm, shape = arm[: -len("-wide")], "wide"
    if arm == "gpt2":
        return None, shape
    if arm.startswith("bpe-") and arm[4:].isdigit():
        return int(arm[4:]), shape
    raise SystemExit(f"--arms {arm}: not gpt2 or bpe-N, optionally with -wide")


def train_flags(shape: str, data: Path, out: Path, steps: int) -> list[str]:
    extra = [x for k, v in SHAPES[shape].items() for x in (f"--{k.replace('_', '-')}", str(v))]
    warmup = min(30, max(1, steps // 10))
    return ["train", "--preset", "demo-cpu", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
            "--warmup-steps", str(warmup), "--eval-every", "0", "--samples", "0", "--save-every", "100000",
            "--no-tensorboard", "--no-progress", "--log-every", "1", *extra]


def step_seconds(run: Path) -> float:
    """Seconds per step of a run from its metrics.jsonl (``time_s``: training seconds so far), past the first
    steps (the allocator's warm-up)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [(r["step"], r["time_s"]) for r in rows if "time_s" in r and r["step"] > 4]
    (s0, t0), (s1, t1) = timed[0], timed[-1]
    return (t1 - t0) / (s1 - s0)


def run_arm(arm: str, corpus: str, root: Path, train_file: Path, heldout: Path, minutes: float,
            threads: int) -> dict[str, Any]:
    vocab, shape = parse_arm(arm)
    work = root / corpus / arm
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    tok_flag = "gpt2" if vocab is None else str(root / corpus / f"tok-{vocab}")  # trained by main()
    data = work / "data"
    gpt2kit("prepare", str(train_file), "--tokenizer", tok_flag, "--out", str(data), "--val-fraction", "0",
            "--overwrite", threads=threads, log=log)
    from gpt2kit.tokenizer import compression, load_tokenizer

    ratio = compression([load_tokenizer(tok_flag)], heldout.read_text(encoding="utf-8"))[0]["bytes_per_token"]
    probe = work / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    shutil.rmtree(work / "run", ignore_errors=True)
    gpt2kit(*train_flags(shape, data, probe, PROBE_STEPS), threads=threads, log=log)
    per_step = step_seconds(probe)
    steps = max(10, int(minutes * 60 / per_step))
    run = work / "run"
    t0 = time.perf_counter()
    gpt2kit(*train_flags(shape, data, run, steps), threads=threads, log=log)
    train_s = time.perf_counter() - t0
    stats = json.loads(gpt2kit("eval", "loss", "--checkpoint", str(run), "--data", str(heldout), "--json",
                               threads=threads, log=log))
    cfg = json.loads((run / "train_config.json").read_text())
    return {"corpus": corpus, "arm": arm, "vocab_size": cfg["vocab_size"], "shape": shape,
            "layers": cfg["n_layer"], "width": cfg["n_embd"], "bytes_per_token": ratio, "step_s": per_step,
            "steps": steps, "train_s": train_s, "heldout_bpb": _bpb(stats), "heldout_loss": _loss(stats)}


def _bpb(stats: Any) -> float:
    for key in ("bpb", "bits_per_byte"):
        if isinstance(stats, dict) and key in stats:
            return float(stats[key])
    raise SystemExit(f"eval loss --json printed no bits per byte: {stats}")


def _loss(stats: Any) -> float:
    return float(stats["loss"])


def encode_speed(root: Path, vocab_size: int = 8192, repeats: int = 3) -> None:
    """Run-time encoding speed of one trained vocabulary through tiktoken (what gpt2kit uses) and through Hugging
    Face ``tokenizers`` (its tokenizer.json), one thread each, on the embedded corpus; best of ``repeats``."""
    import tokenizers

    from gpt2kit.data.builtin import builtin_text
    from gpt2kit.data.tokenizer_train import train_tokenizer

    text = builtin_text("sotu")
    tok = train_tokenizer("builtin:sotu", root / "speed-tok", vocab_size=vocab_size, overwrite=True, progress=False)
    hf = tokenizers.Tokenizer.from_file(str(root / "speed-tok" / "tokenizer.json"))
    mb = len(text.encode("utf-8")) / 1e6
    for name, encode in (("tiktoken", lambda: tok.encode(text)),
                         ("tokenizers", lambda: hf.encode(text, add_special_tokens=False).ids)):
        best = min(_timed(encode) for _ in range(repeats))
        print(f"{name:<11} {mb / best:6.1f} MB/s  ({mb:.1f} MB of builtin:sotu, vocabulary {vocab_size:,}, one thread)")
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), help="gpt2 or bpe-N, optionally -wide")
    p.add_argument("--minutes", type=float, default=2.0, help="wall time of each arm's training run")
    p.add_argument("--parallel", type=int, default=1, help="arms run at the same time")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count(),
                   help="threads of each arm's processes")
    p.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    p.add_argument("--encode-speed", action="store_true", help="only measure run-time encoding (tiktoken, tokenizers)")
    args = p.parse_args()
    if args.encode_speed:
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
        with tempfile.TemporaryDirectory() as tmp:
            encode_speed(Path(tmp))
        return
    for arm in args.arms:
        parse_arm(arm)
    with tempfile.TemporaryDirectory(prefix="gpt2kit-tok-bench-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = []
        for corpus in args.corpora:
            train_file, heldout = split_corpus(corpus, root)
            # the vocabularies first, one process each, so that parallel arms do not train the same one twice
            for vocab in sorted({v for v, _ in map(parse_arm, args.arms) if v is not None}):
                tok_dir = root / corpus / f"tok-{vocab}"
                (root / corpus).mkdir(parents=True, exist_ok=True)
                gpt2kit("tokenizer", "train", str(train_file), "--vocab-size", str(vocab), "--out", str(tok_dir),
                        "--overwrite", threads=args.threads, log=root / corpus / "tokenizers.log")
            with ThreadPoolExecutor(args.parallel) as pool:
                futures = [pool.submit(run_arm, a, corpus, root, train_file, heldout, args.minutes, args.threads)
                           for a in args.arms]
                rows += [f.result() for f in futures]
        print(f"equal wall time: {args.minutes:g} min of training per arm, {args.parallel} arm(s) at a time, "
              f"{args.threads} thread(s) each; held-out text {HELD_OUT_CHARS:,} characters per corpus")
        print("| corpus | arm | vocab | layers x width | bytes/token | s/step | steps | train s | held-out bpb "
              "| vs gpt2 |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            base = next((b for b in rows if b["corpus"] == r["corpus"] and b["arm"] == "gpt2"), None)
            vs = f"{r['heldout_bpb'] / base['heldout_bpb'] - 1:+.1%}" if base else "-"
            print(f"| {r['corpus']} | {r['arm']} | {r['vocab_size']:,} | {r['layers']} x {r['width']} | "
                  f"{r['bytes_per_token']:.2f} | {r['step_s']:.3f} | {r['steps']} | {r['train_s']:.0f} | "
                  f"{r['heldout_bpb']:.4f} | {vs} |")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
