"""The one flag engine: argparse flags made from a config dataclass's settings (:mod:`gpt2kit.settings`).

Every setting that is a flag becomes ``--flat-name`` with its field's docstring as help, plus its default.
Booleans get ``--x/--no-x``; ``X | None`` settings accept ``none``; ``Literal`` ones list their choices; a
tuple of names is one comma-separated value. A field's ``metadata["flag"]`` may add argparse details
(``name``, ``metavar``, ``positional``, ``nargs``, ``required``). Absent flags leave no attribute, so
:func:`given_flags` returns only what the user typed, which then overrides a preset or a saved config.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any, Literal

from gpt2kit.settings import Setting, flag_name, section_class, settings_of, to_flat

METAVARS = {int: "N", float: "X", str: "VALUE", bool: "BOOL"}


def integer(text: str) -> int:
    """argparse type: an integer, with a one-line error that says so."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def integer_or(*words: str) -> Callable[[str], Any]:
    """argparse type: a positive integer or one of ``words`` (``--batch-size auto``), with a one-line error."""
    def parse(text: str) -> Any:
        if text.lower() in words:
            return text.lower()
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a positive integer or {' or '.join(repr(w) for w in words)}")
        return value

    parse.__name__ = "integer"
    return parse


def _parse_optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        if kind is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"{text!r} is not true/false/none")
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else f"a {kind.__name__}"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (or 'none')") from None

    parse.__name__ = kind.__name__
    return parse


def _defaults(cls: type, defaults_from: Any) -> dict[str, Any]:
    """The flat value each setting has when its flag is not given (for the help text)."""
    if defaults_from is not None:
        return to_flat(defaults_from)
    try:
        return to_flat(cls())
    except TypeError:  # a config with required fields: the fields' plain defaults
        return {s.name: s.field.default for s in settings_of(cls) if s.field.default is not dataclasses.MISSING}


def _type_kwargs(s: Setting) -> dict[str, Any]:
    args = typing.get_args(s.hint)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if optional else [s.hint]
    words = [w for a in args if typing.get_origin(a) is Literal for w in typing.get_args(a)]
    if not optional and len(args) == 2 and int in args and words:  # int | Literal["auto"]
        return {"type": integer_or(*words), "metavar": "N|" + "|".join(words)}
    base = inner[0] if len(inner) == 1 else str
    origin = typing.get_origin(base)
    if origin is Literal:
        return {"choices": list(typing.get_args(base)), "type": str}
    if base is bool and not optional:
        return {"action": argparse.BooleanOptionalAction}
    if origin in (tuple, list):  # a list takes several words (nargs), a tuple one comma-separated value
        return {"type": str, "metavar": "VALUE"}
    kind = _parse_optional(base) if optional else integer if base is int else base
    return {"type": kind, "metavar": METAVARS.get(base, "VALUE")}


def add_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
              defaults_from: Any = None, help: dict[str, str] | None = None) -> None:
    """Add one flag per setting of config ``cls`` (see the module docstring), a help group per section.

    ``defaults_from`` (e.g. a preset) gives the defaults the help shows; ``help`` replaces a setting's docstring
    where this command means something more specific (a help that states its default gets no ``[default: ...]``).
    """
    defaults = _defaults(cls, defaults_from)
    help = help or {}
    groups: dict[str, Any] = {}
    for s in settings_of(cls):
        if not s.flag or s.name in skip:
            continue
        where: Any = parser
        if s.section is not None:
            if s.section not in groups:
                sec = section_class(typing.get_type_hints(cls)[s.section])
                doc = " ".join((sec.__doc__ or "").split()) if sec is not None else ""
                groups[s.section] = parser.add_argument_group(f"{s.section} settings", doc or None)
            where = groups[s.section]
        text = help.get(s.name, s.doc)
        default = defaults.get(s.name)
        if default not in (None, "") and "default" not in help.get(s.name, "").lower():
            text += f" [default: {default}]"
        extra = dict(s.field.metadata.get("flag") or {})
        kw: dict[str, Any] = {**_type_kwargs(s), "help": text.replace("%", "%%"), "default": argparse.SUPPRESS}
        for key in ("metavar", "nargs", "required"):
            if key in extra:
                kw[key] = extra[key]
        if kw.get("action") is argparse.BooleanOptionalAction:
            kw.pop("metavar", None)
        if extra.get("positional"):
            where.add_argument(s.name, **kw)
        else:
            where.add_argument(extra.get("name", flag_name(s.name)), dest=s.name, **kw)


def given_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flat settings of ``cls`` that were given on the command line."""
    return {s.name: getattr(args, s.name) for s in settings_of(cls) if s.flag and hasattr(args, s.name)}
