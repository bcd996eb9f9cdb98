"""``gpt2kit export``: write any checkpoint as a Hugging Face GPT-2 directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2kit.cli.common import add_checkpoint_argument

HELP = "export a checkpoint to Hugging Face format (config.json + model.safetensors)"
DESCRIPTION = (
    "Write config.json and model.safetensors that transformers.GPT2LMHeadModel.from_pretrained loads. "
    "--checkpoint takes a gpt2kit run directory or checkpoint file, or a Hugging Face directory."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(p)
    p.add_argument("--out", required=True,
                   help="output directory (created; existing files of the same name are replaced)")


def run(args: argparse.Namespace) -> int:
    from gpt2kit.checkpoint import export_hf
    from gpt2kit.errors import UserError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    loaded = export_hf(args.checkpoint, out)
    print(f"wrote {out}/config.json and {out}/model.safetensors "
          f"({loaded.model.num_params():,} parameters, from {loaded.source})")
    return 0
