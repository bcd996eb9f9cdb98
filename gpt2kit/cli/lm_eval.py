"""``gpt2kit lm-eval ...``: EleutherAI's lm-evaluation-harness with gpt2kit's ``gpt2kit`` model registered.

Every argument goes to ``lm_eval`` unchanged: ``gpt2kit lm-eval --model gpt2kit --model_args
checkpoint=runs/124m --tasks arc_easy,arc_challenge``. Needs ``pip install 'gpt2kit[lmeval]'``.
"""

from __future__ import annotations

import argparse

from gpt2kit.errors import UserError

HELP = "run EleutherAI's lm-evaluation-harness on a gpt2kit model (--model gpt2kit)"
DESCRIPTION = (
    "Run lm-evaluation-harness with the `gpt2kit` model registered; every argument is passed to lm_eval. "
    "--model_args takes checkpoint=RUN_OR_FILE (anything `gpt2kit sample` loads), device=, dtype= "
    "(float32, bfloat16, float16) and max_gen_toks=. Example: gpt2kit lm-eval --model gpt2kit "
    "--model_args checkpoint=gpt2 --tasks arc_easy --batch_size 16. Needs pip install 'gpt2kit[lmeval]'."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(passthrough=[])  # every argument not gpt2kit's own goes to lm_eval


def run(args: argparse.Namespace) -> int:
    try:
        from gpt2kit.eval.harness import main
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "lm_eval":
            raise UserError("lm-eval is not installed: pip install 'gpt2kit[lmeval]' (or pip install lm-eval)"
                            ) from None
        raise
    main(args.passthrough)
    return 0
