"""torchrun (``torch.distributed.run``, the same flags) whose ranks start warm: the launcher imports torch and
gpt2kit once, then torchrun's own ``--run-path --start-method fork`` forks each rank from it (tests only).

Why: a rank started as a fresh interpreter spends about 4 CPU-seconds importing torch, torch._dynamo (which
AdamW's constructor imports) and gpt2kit before its first step, and the multi-rank suite starts dozens of ranks
on two cores. Forked ranks skip that; the launcher, rendezvous, restart rounds and process tree (ranks are
children of the launcher) are torchrun's. The launcher runs no torch op
before it forks, so no OpenMP thread pool is copied. Use as ``python warm_torchrun.py TORCHRUN_FLAGS SCRIPT ARGS``
(``--run-path --start-method fork`` are added).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# what the ranks would import before training (the fork server's list, the FSDP state-dict API included)
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401
import torch.distributed.checkpoint.state_dict  # noqa: E402,F401
import torch.distributed.run  # noqa: E402

import gpt2kit.checkpoint  # noqa: E402,F401
import gpt2kit.cli  # noqa: E402
import gpt2kit.cli.train  # noqa: E402,F401
import gpt2kit.train.pretrain  # noqa: E402,F401
import hooked_worker  # noqa: E402,F401
from gpt2kit.tokenizer import get_tokenizer  # noqa: E402


if __name__ == "__main__":
    gpt2kit.cli.build_parser()
    get_tokenizer()
    script = next(i for i, a in enumerate(sys.argv) if a.endswith(".py") and i > 0)
    sys.exit(torch.distributed.run.main([*sys.argv[1:script], "--run-path", "--start-method", "fork",
                                         *sys.argv[script:]]))
