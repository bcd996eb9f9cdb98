"""Argument helpers shared by several subcommands (one definition of each common flag)."""

from __future__ import annotations

import argparse

from gpt2kit.cli.flags import integer
from gpt2kit.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only where it says something.

    No ``(default: None)``/``False``/empty, and none where the help already states its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, "", argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsFormatter):
    """:class:`DefaultsFormatter` that keeps the description's line breaks (for examples)."""


def add_checkpoint_argument(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--checkpoint``: a run dir, a gpt2kit checkpoint file, a Hugging Face dir or hub name."""
    p.add_argument(
        "--checkpoint", required=required,
        help="a gpt2kit run directory (best, else latest checkpoint), a checkpoint .pt file, "
             "a Hugging Face GPT-2 directory, or a hub name such as gpt2",
    )


def loaded_description(spec: str, loaded) -> str:
    """Which weights a ``--checkpoint`` value loaded: the file, and for a run directory best or latest, and the step."""
    from pathlib import Path

    from gpt2kit.checkpoint import best_checkpoint, is_sharded
    from gpt2kit.tokenizer import TOKENIZER_ID

    if loaded.format != "gpt2kit":
        return f"loaded {loaded.source} (Hugging Face weights for --checkpoint {spec})"
    step = loaded.checkpoint.get("step")
    at = f"step {step}" if step is not None else "no step recorded"
    tok = loaded.tokenizer
    if tok.name != TOKENIZER_ID:  # the checkpoint's own vocabulary, not GPT-2's
        at += f"; tokenizer {tok.name}, {tok.vocab_size} tokens"
    if Path(spec).is_dir() and not is_sharded(spec):
        best = best_checkpoint(spec)
        if best is not None and best.resolve() == Path(loaded.source).resolve():
            val = loaded.checkpoint.get("best_val_loss")
            which = "the best by validation loss" + (f" ({val:.4f})" if isinstance(val, float) else "")
        else:
            which = "the latest (the run has no best by validation loss)"
        return f"loaded {loaded.source}: {which}, {at}"
    return f"loaded {loaded.source} ({at})"


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (cuda if available)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="the weights' dtype: the model is cast to it and computes in it (unlike train's --dtype, "
                        "which is autocast precision over float32 weights)")


def add_quantize_argument(p: argparse.ArgumentParser) -> None:
    """``--quantize``: run the model's linear layers from int8 weights (CPU only)."""
    p.add_argument("--quantize", default=None, choices=("int8",),
                   help="run the linear layers (the output projection too) from int8 weights with int8 "
                        "activations: less memory and faster on a CPU; CPU only")


def apply_quantize(args: argparse.Namespace, model, command: str) -> None:
    """Quantize ``model`` in place as ``--quantize`` asks (nothing without it); says what it did on stderr."""
    if getattr(args, "quantize", None) is None:
        return
    import sys

    from gpt2kit.quantization import quantize_and_describe

    print(f"{command}: {quantize_and_describe(model, args.quantize)}", file=sys.stderr, flush=True)


def resolve_dtype(name: str):
    """A torch dtype from ``--dtype``."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(value: str) -> int:
        n = integer(value)
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {n}")
        return n

    return parse


positive_int = _int_at_least(1)
"""argparse type: an integer >= 1."""
nonneg_int = _int_at_least(0)
"""argparse type: an integer >= 0."""


def add_sampling_arguments(p: argparse.ArgumentParser, seed_help: str) -> None:
    """--temperature, --top-k, --top-p and --seed, with the same meaning in sample and chat."""
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with probability >= p")
    p.add_argument("--seed", type=int, default=1337, help=seed_help)


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """One UserError line for a --temperature or --top-p out of range."""
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
