"""Benchmark ``gpt2kit prepare``: tokens/s with 1 and 2 workers against a single-process tiktoken baseline.

All figures come from the same run on the same documents:

- baseline: ``tiktoken`` ``encode_ordinary`` over the documents, already in memory, in one process;
- ``prepare(workers=N)``: the whole pipeline (read JSONL, tokenize, write checksummed shards), each run
  in a fresh subprocess so its peak RSS (main process, and largest worker) is its own;
- memory: the same 2-worker run on a corpus ``--scale`` times larger, to show peak RSS does not grow.

CPU seconds per million tokens are printed too: on a machine shared with other jobs the wall-clock
ratio swings with their load, while the CPU cost per token shows what the pipeline itself adds.

Usage: ``python benchmarks/prepare.py [--repeat 6] [--scale 4] [--trials 2] [--source builtin:sotu]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
from gpt2kit.data.prepare import prepare
src, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
man = prepare([src], out, workers=workers, progress=False, val_fraction=0.0)
dt = time.perf_counter() - t0
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"tokens": man["tokens"], "seconds": dt,
                  "cpu_s": me.ru_utime + me.ru_stime - r0.ru_utime - r0.ru_stime + kids.ru_utime + kids.ru_stime,
                  "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _write_corpus(path: Path, texts: list[str], repeat: int) -> int:
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(repeat):
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
    return path.stat().st_size


def _run_prepare(src: Path, out: Path, workers: int) -> dict:
    res = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(out), str(workers)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="builtin:sotu", help="documents to use (any prepare source)")
    ap.add_argument("--repeat", type=int, default=6, help="copies of the source in the benchmark corpus")
    ap.add_argument("--scale", type=int, default=4, help="size multiple for the memory check (0 = skip)")
    ap.add_argument("--trials", type=int, default=2, help="runs per figure; the best is reported (shared machine)")
    args = ap.parse_args()

    from gpt2kit.data.sources import ReadProgress, SourceOptions, iter_documents, resolve_sources
    from gpt2kit.tokenizer import get_tokenizer

    opts = SourceOptions()
    texts = list(iter_documents(resolve_sources([args.source], opts), opts, ReadProgress()))
    enc = get_tokenizer().encoding
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "corpus.jsonl"
        size = _write_corpus(src, texts, args.repeat)
        docs = texts * args.repeat

        def baseline() -> tuple[int, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            n = sum(len(enc.encode_ordinary(d)) for d in docs)
            base_cpu.append((time.process_time() - c0) / n * 1e6)
            return n, time.perf_counter() - t0

        def numpy_baseline() -> float:
            # what prepare's workers call: the same tokens, returned as arrays instead of Python lists
            t0 = time.perf_counter()
            n = sum(len(enc.encode_to_numpy(d, allowed_special=set(), disallowed_special=())) for d in docs)
            return n / (time.perf_counter() - t0)

        runs: dict[str, list[dict]] = {"1": [], "2": []}
        base, base_np, base_cpu = [], [], []
        for trial in range(args.trials):  # interleaved, so load from other users hits all figures alike
            n, dt = baseline()
            base.append(n / dt)
            base_np.append(numpy_baseline())
            for w in ("1", "2"):
                runs[w].append(_run_prepare(src, tmp / f"out{w}_{trial}", int(w)))
        base_tps = max(base)
        tokens = runs["1"][0]["tokens"]
        assert tokens == n + len(docs), "prepare must yield tiktoken's count plus one <|endoftext|> per document"
        import os

        print(f"corpus: {args.source} x{args.repeat} = {len(docs):,} documents, {size / 2**20:.1f} MiB JSONL, "
              f"{tokens:,} tokens; best of {args.trials} trials; {os.cpu_count()} CPUs, "
              f"load average now {os.getloadavg()[0]:.2f} (other jobs slow the 2-worker run most)")
        print(f"{'baseline: tiktoken encode_ordinary, 1 process':48s} {base_tps / 1e6:6.2f} M tok/s   1.00x   "
              f"CPU {min(base_cpu):.3f} s/M tokens")
        print(f"{'(info: tiktoken encode_to_numpy, 1 process)':48s} {max(base_np) / 1e6:6.2f} M tok/s   "
              f"{max(base_np) / base_tps:4.2f}x")
        for w in ("1", "2"):
            best = min(runs[w], key=lambda r: r["seconds"])
            tps = best["tokens"] / best["seconds"]
            workers = f"{best['rss_worker_mb']:.0f} MiB" if w != "1" else "-"
            cpu = min(r["cpu_s"] / r["tokens"] * 1e6 for r in runs[w])
            print(f"{'prepare --workers ' + w + ' (read+tokenize+write)':48s} {tps / 1e6:6.2f} M tok/s   "
                  f"{tps / base_tps:4.2f}x   CPU {cpu:.3f} s/M tokens (main + workers)   "
                  f"peak RSS main {best['rss_main_mb']:.0f} MiB, worker {workers}")
        if args.scale > 1:
            big = tmp / "big.jsonl"
            big_size = _write_corpus(big, texts, args.repeat * args.scale)
            r = _run_prepare(big, tmp / "big_out", 2)
            small = min(runs["2"], key=lambda r: r["seconds"])
            print(f"memory, --workers 2: {size / 2**20:.0f} MiB corpus -> peak RSS main {small['rss_main_mb']:.0f} "
                  "MiB, "
                  f"worker {small['rss_worker_mb']:.0f} MiB; {big_size / 2**20:.0f} MiB corpus ({r['tokens']:,} "
                  "tokens) -> "
                  f"main {r['rss_main_mb']:.0f} MiB, worker {r['rss_worker_mb']:.0f} MiB "
                  f"({r['tokens'] / r['seconds'] / 1e6:.2f} M tok/s)")


if __name__ == "__main__":
    main()
