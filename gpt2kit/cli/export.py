"""``gpt2kit export``: write any checkpoint as a Hugging Face GPT-2 directory or a GGUF file (llama.cpp, Ollama)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2kit.cli.common import add_checkpoint_argument

HELP = "export a checkpoint to Hugging Face format (config.json + model.safetensors) or a GGUF file"
DESCRIPTION = (
    "Write config.json and model.safetensors that transformers.GPT2LMHeadModel.from_pretrained loads, or with "
    "--format gguf one GGUF file for llama.cpp, Ollama and LM Studio (needs pip install 'gpt2kit[gguf]'). "
    "--checkpoint takes a gpt2kit run directory or checkpoint file (sharded ones and LoRA fine-tunes too: "
    "the adapters are merged), or a Hugging Face directory."
)
GGUF_OUTTYPES = ("f32", "f16", "q8_0")
"""--outtype choices: gpt2kit.checkpoint.gguf.OUTTYPES (named here so that --help does not import gguf)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(p)
    p.add_argument("--out", required=True,
                   help="hf: output directory (created; existing files of the same name are replaced); "
                        "gguf: the file to write (replaced)")
    p.add_argument("--format", default="hf", choices=("hf", "gguf"), help="Hugging Face directory or GGUF file")
    p.add_argument("--outtype", default=None, choices=GGUF_OUTTYPES,
                   help="GGUF weight type of the matrices (norms, biases, position embeddings stay f32); "
                        "default f32")


def run(args: argparse.Namespace) -> int:
    from gpt2kit.errors import UserError

    out = Path(args.out)
    if args.format == "gguf":
        return _gguf(args, out)
    if args.outtype is not None:
        raise UserError("--outtype: applies to --format gguf (a Hugging Face export keeps float32)")
    from gpt2kit.checkpoint import export_hf

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    loaded = export_hf(args.checkpoint, out)
    print(f"wrote {out}/config.json and {out}/model.safetensors "
          f"({loaded.model.num_params():,} parameters, from {loaded.source})")
    return 0


def _gguf(args: argparse.Namespace, out: Path) -> int:
    from gpt2kit.errors import UserError

    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; name the file to write, such as {out / 'model.gguf'}")
    try:
        from gpt2kit.checkpoint.gguf import write_gguf
    except ModuleNotFoundError as e:
        if e.name not in ("gguf", "numpy"):
            raise
        raise UserError(f"--format gguf needs the {e.name} package: pip install 'gpt2kit[gguf]'") from None
    from gpt2kit.checkpoint import load_model

    outtype = args.outtype or "f32"
    loaded = load_model(args.checkpoint)
    write_gguf(loaded.model, out, outtype, name=Path(str(args.checkpoint).rstrip("/")).stem or "gpt2kit",
               tokenizer=loaded.tokenizer)
    print(f"wrote {out} ({outtype}, {out.stat().st_size / 1e6:.1f} MB, "
          f"{loaded.model.num_params():,} parameters, from {loaded.source})")
    return 0
