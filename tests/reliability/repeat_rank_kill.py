"""Repeat the "a rank dies" experiment: SIGKILL one rank of a 2-rank ``torchrun --max-restarts 1`` run at a random
step and count how often the restarted group ends bitwise equal to an uninterrupted 2-rank run.

Not collected by pytest (tests/reliability/test_multirank.py runs a few tries); run it by hand, e.g.::

    PYTHONPATH=$PWD python tests/reliability/repeat_rank_kill.py --tries 20

It prints one line per try and a summary; exit 0 only when every try matched. The launchers are plain torchrun
(each rank a fresh interpreter, as users run it); ``--warm`` forks the ranks from a warm launcher instead.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from multirank_harness import MR_FLAGS, Launch, restart_try, resumed_from, torchrun_argv, train_args  # noqa: E402
from reliability_harness import MAX_STEPS, final_state, write_corpus  # noqa: E402


def main() -> int:
    """Run the tries; print one line each and a summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=20)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--flags", default="", help="extra gpt2kit train flags, space-separated")
    p.add_argument("--warm", action="store_true", help="ranks forked from tests/reliability/warm_torchrun.py")
    p.add_argument("--workdir", help="keep the runs and their logs here (default: a temporary directory)")
    args = p.parse_args()
    flags = MR_FLAGS + args.flags.split()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="gpt2kit-rank-kill-") as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        from gpt2kit.data.prepare import prepare

        prepare([write_corpus(root / "corpus.jsonl", num_docs=80, words_per_doc=100)], root / "data",
                val_fraction=0.1, workers=1, progress=False)
        ref_run = root / "reference"
        launch = Launch(torchrun_argv(2, train_args(root / "data", ref_run, flags), warm=args.warm),
                        root / "reference.log")
        assert launch.wait(300) == 0, launch.log[-4000:]
        ref = final_state(ref_run)
        passed = 0
        t0 = time.perf_counter()
        for i in range(args.tries):
            rank, kill_after = rng.randrange(2), rng.randint(1, MAX_STEPS - 2)
            t = time.perf_counter()
            why = restart_try(root / "data", root / f"try{i:02d}", ref, flags, kill=(rank, kill_after), warm=args.warm)
            passed += not why
            log = (root / f"try{i:02d}.log").read_text(errors="replace")
            print(f"try {i + 1:2d}: rank {rank} killed after step {kill_after} logged, restarted from "
                  f"{resumed_from(log)}: {'bitwise equal' if not why else 'FAILED: ' + why} "
                  f"({time.perf_counter() - t:.0f}s)", flush=True)
        print(f"{passed}/{args.tries} restarts ended bitwise equal to the uninterrupted run "
              f"({time.perf_counter() - t0:.0f}s)")
    return 0 if passed == args.tries else 1


if __name__ == "__main__":
    sys.exit(main())
