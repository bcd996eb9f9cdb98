"""``gpt2kit ARGS`` as a torchrun worker, with the crash suite's fault hooks (tests only).

torchrun starts each rank as a fresh interpreter (or forks it, under :mod:`warm_torchrun`), so the fork server
cannot reach it; this script applies the same hooks (:func:`forkserver._install_hooks`) from the environment
instead. ``GPT2KIT_TEST_HOOKS`` holds JSON: ``{"all": {...}, "rank0": {...}, "round2.rank0": {...}}``; ``all``
applies to every rank in every restart round, ``rankR`` to rank R in the first round (``TORCHELASTIC_RESTART_COUNT``
0), ``roundN.rankR`` to rank R in round N only, so one launcher can be hit by a different fault in each round.

``GPT2KIT_TEST_PID_DIR``: each rank writes its pid to ``DIR/ROUND.RANK`` there, so a test can signal a rank
(a forked rank's /proc/PID/environ shows the launcher's environment, not its RANK).
"""

from __future__ import annotations

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from forkserver import _install_hooks  # noqa: E402


def main() -> int:
    """Install this rank's hooks, then run the command line."""
    # a rank forked from the launcher inherits its handlers (torchrun's raise SignalException): act as a fresh
    # interpreter would, so SIGTERM before the training loop installs its own handler ends the rank
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    round_, rank = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), os.environ.get("RANK", "0")
    if os.environ.get("GPT2KIT_TEST_PID_DIR"):
        with open(os.path.join(os.environ["GPT2KIT_TEST_PID_DIR"], f"{round_}.{rank}"), "w") as f:
            f.write(str(os.getpid()))
    spec = json.loads(os.environ.get("GPT2KIT_TEST_HOOKS") or "{}")
    hooks = dict(spec.get("all", {}))
    if round_ == "0":
        hooks.update(spec.get(f"rank{rank}", {}))
    hooks.update(spec.get(f"round{round_}.rank{rank}", {}))
    _install_hooks(hooks)
    from gpt2kit.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
