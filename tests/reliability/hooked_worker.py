"""``gpt2kit ARGS`` as a torchrun worker, with the crash suite's fault hooks (tests only).

torchrun starts each rank as a fresh interpreter, so the fork server cannot reach it; this script applies the
same hooks (:func:`forkserver._install_hooks`) from the environment instead. ``GPT2KIT_TEST_HOOKS`` holds JSON:
``{"all": {...}, "rank0": {...}, "rank1": {...}}``; ``all`` applies to every rank in every restart round, the
per-rank hooks only in the first round (``TORCHELASTIC_RESTART_COUNT`` 0), so a restarted group runs clean.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from forkserver import _install_hooks  # noqa: E402


def main() -> int:
    """Install this rank's hooks, then run the command line."""
    spec = json.loads(os.environ.get("GPT2KIT_TEST_HOOKS") or "{}")
    hooks = dict(spec.get("all", {}))
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        hooks.update(spec.get(f"rank{os.environ.get('RANK', '0')}", {}))
    _install_hooks(hooks)
    from gpt2kit.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
