"""The ``gpt2kit`` command line: one entry point, one module per subcommand.

Each module in ``COMMANDS`` defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules import torch and friends inside ``run`` so ``--help`` stays fast.
A :class:`~gpt2kit.errors.UserError` anywhere becomes one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
import typing

from gpt2kit.errors import UserError

COMMANDS: dict[str, str] = {
    "prepare": "gpt2kit.cli.prepare",
    "train": "gpt2kit.cli.train",
    "eval": "gpt2kit.cli.eval",
    "lm-eval": "gpt2kit.cli.lm_eval",
    "sample": "gpt2kit.cli.sample",
    "export": "gpt2kit.cli.export",
    "finetune": "gpt2kit.cli.finetune",
    "classify": "gpt2kit.cli.classify",
    "chat": "gpt2kit.cli.chat",
    "serve": "gpt2kit.cli.serve",
    "plot": "gpt2kit.cli.plot",
    "pipeline": "gpt2kit.cli.pipeline",
    "demo": "gpt2kit.cli.demo",
    "tokenizer": "gpt2kit.cli.tokenizer",
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


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block) with a pointer to ``--help``."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"{self.prog}: error: {_with_guess(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _with_guess(message: str) -> str:
    """argparse's ``invalid choice`` message with the closest choices as a did-you-mean."""
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not found:
        return message
    choices = re.findall(r"'([^']*)'", found.group(2)) or [c.strip() for c in found.group(2).split(",")]
    close = difflib.get_close_matches(found.group(1), choices, n=2, cutoff=0.5)
    return message + (f"; did you mean {' or '.join(close)}?" if close else "")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    from gpt2kit import __version__
    from gpt2kit.cli.common import DefaultsFormatter

    parser = Parser(
        prog="gpt2kit",
        description="A from-scratch GPT-2 toolkit: prepare data, train, evaluate, sample, export, fine-tune.",
    )
    parser.add_argument("--version", action="version", version=f"gpt2kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available().items():
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=DefaultsFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand parser that ``args`` went through (``gpt2kit finetune sft``: sft's)."""
    current = parser
    while True:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs and subs[0].dest else None
        if chosen is None or chosen not in subs[0].choices:
            return current
        current = subs[0].choices[chosen]


def unknown_flag_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """One line for arguments the command does not take, with the closest real flag where there is one."""
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    bad = next((x for x in extras if x.startswith("-")), extras[0])
    name = bad.split("=", 1)[0]
    if not name.startswith("-"):
        return f"unexpected argument {bad!r}; {parser.prog} takes no more positional arguments"
    # --n_layer -> --n-layer: the flags are the config fields' names with dashes
    spelled = "--" + name.lstrip("-").replace("_", "-")
    close = difflib.get_close_matches(spelled, flags, n=1, cutoff=0.6)
    guess = spelled if spelled in flags else next(iter(close), None)
    hint = f"; did you mean {guess}?" if guess else ""
    return f"unknown flag {name}{hint}"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if getattr(args, "passthrough", None) is not None:  # a command that hands its arguments to another tool
        args.passthrough = extras
    elif extras:
        chosen = _chosen_parser(parser, args)
        chosen.error(unknown_flag_message(chosen, extras))
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
