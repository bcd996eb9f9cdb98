"""Argument helpers shared by several subcommands (one definition of each common flag)."""

from __future__ import annotations

import argparse

from gpt2kit.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")


def add_checkpoint_argument(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--checkpoint``: a run dir, a gpt2kit checkpoint file, a Hugging Face dir or hub name."""
    p.add_argument(
        "--checkpoint", required=required,
        help="a gpt2kit run directory (best, else latest checkpoint), a checkpoint .pt file, "
             "a Hugging Face GPT-2 directory, or a hub name such as gpt2",
    )


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (cuda if available)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights and compute precision")


def resolve_device(name: str):
    """A torch.device from ``--device``; a clear error when it is not available (see gpt2kit.distributed)."""
    from gpt2kit.distributed import resolve_device as resolve

    return resolve(name)


def resolve_dtype(name: str):
    """A torch dtype from ``--dtype``."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def nonneg_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n
