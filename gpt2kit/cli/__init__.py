"""The ``gpt2kit`` command line: one entry point, one module per subcommand.

Each module in ``COMMANDS`` defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules import torch and friends inside ``run`` so ``--help`` stays fast.
A :class:`~gpt2kit.errors.UserError` anywhere becomes one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gpt2kit.errors import UserError

COMMANDS: dict[str, str] = {
    "prepare": "gpt2kit.cli.prepare",
    "train": "gpt2kit.cli.train",
    "eval": "gpt2kit.cli.eval",
    "sample": "gpt2kit.cli.sample",
    "export": "gpt2kit.cli.export",
    "finetune": "gpt2kit.cli.finetune",
    "classify": "gpt2kit.cli.classify",
    "chat": "gpt2kit.cli.chat",
    "serve": "gpt2kit.cli.serve",
    "plot": "gpt2kit.cli.plot",
    "demo": "gpt2kit.cli.demo",
}


def _available() -> dict[str, object]:
    mods = {}
    for name, modname in COMMANDS.items():
        try:
            mods[name] = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:  # the command exists but something it imports is missing
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    from gpt2kit import __version__

    parser = argparse.ArgumentParser(
        prog="gpt2kit",
        description="A from-scratch GPT-2 toolkit: prepare data, train, evaluate, sample, export, fine-tune.",
    )
    parser.add_argument("--version", action="version", version=f"gpt2kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available().items():
        p = sub.add_parser(
            name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"gpt2kit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt2kit {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
