"""Typed settings: a config is a dataclass of sections, each a small dataclass that validates itself.

Every command's settings are one flat namespace (``--lr``, ``--n-layer``; train_config.json holds the same
flat keys), while the code reads them by section (``cfg.optim.lr``, ``cfg.model.n_layer``). This module maps
between the two and knows each field's docstring, the string literal right after the field, read with
:mod:`ast` once; :mod:`gpt2kit.cli.flags` turns the same description into argparse flags.

- A field whose type is a dataclass (or ``X | None``) is a *section*; its fields are settings of their own.
  :func:`section` metadata gives their flat names a ``prefix``, limits which fields are ``saved`` in the flat
  form and which of those are ``flags``, and for an optional section names the ``off`` field whose value
  ``0`` means "no section" (``--lora-rank 0``: no LoRA).
- Any other field is a setting itself. Its ``metadata["flag"]`` may hold argparse details (``metavar``,
  ``positional``, ``nargs``, ``required``, ``name``) for :mod:`gpt2kit.cli.flags`. ``metadata["omit_default"]``
  leaves it out of the flat form while it holds its default: a setting added after configs were first saved,
  so that a config not using it stays readable by the versions before it.
- Flat names are unique within a config; a duplicate is a TypeError when the config is first described.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Literal


def section(prefix: str = "", saved: tuple[str, ...] | None = None, flags: tuple[str, ...] | None = None,
            off: str | None = None) -> dict[str, Any]:
    """Field metadata for a section: see the module docstring."""
    return {"section": {"prefix": prefix, "saved": saved, "flags": flags, "off": off}}


@dataclass(frozen=True)
class Setting:
    """One flat setting of a config: where it lives, its type and its docstring."""

    name: str
    """Flat name (``total_batch_tokens``): the key in the flat form, and the flag ``--total-batch-tokens``."""
    section: str | None
    """Attribute of the config that holds the section (None: a field of the config itself)."""
    attr: str
    """The field's name in its section (or in the config)."""
    hint: Any
    """The field's resolved type."""
    field: dataclasses.Field
    doc: str
    """The field's docstring, on one line."""
    flag: bool
    """Whether the setting is a command-line flag."""


def flag_name(name: str) -> str:
    """``total_batch_tokens`` -> ``--total-batch-tokens``."""
    return "--" + name.replace("_", "-")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings of a dataclass's fields (the string literal after each field), base classes included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        node = tree.body[0]
        if not isinstance(node, ast.ClassDef):
            continue
        for item, nxt in zip(node.body, node.body[1:]):
            if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[item.target.id] = " ".join(nxt.value.value.split())
    return docs


def section_class(hint: Any) -> type | None:
    """The dataclass of a section field's type (``X`` or ``X | None``), else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
    if len(args) == 1 and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


@functools.cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """Every flat setting of config class ``cls``, in field order (sections expanded in place)."""
    out: list[Setting] = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        sec = section_class(hints[f.name])
        if sec is None:
            out.append(Setting(f.name, None, f.name, hints[f.name], f, docs.get(f.name, ""),
                               bool(f.init) and f.metadata.get("flag", {}) is not None))
            continue
        meta = f.metadata.get("section") or section()["section"]
        sec_hints, sec_docs = typing.get_type_hints(sec), field_docs(sec)
        for sf in dataclasses.fields(sec):
            if meta["saved"] is not None and sf.name not in meta["saved"]:
                continue
            flag = meta["flags"] is None or sf.name in meta["flags"]
            out.append(Setting(meta["prefix"] + sf.name, f.name, sf.name, sec_hints[sf.name], sf,
                               sec_docs.get(sf.name, ""), flag))
    seen: set[str] = set()
    for s in out:
        if s.name in seen:
            raise TypeError(f"{cls.__name__}: two settings named {s.name!r}")
        seen.add(s.name)
    return tuple(out)


def setting_names(cls: type) -> list[str]:
    """The flat names of ``cls``'s settings."""
    return [s.name for s in settings_of(cls)]


def _flat_value(value: Any) -> Any:
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return ",".join(value)  # a tuple of names is comma-separated, as on the command line
    return value


def to_flat(cfg: Any) -> dict[str, Any]:
    """The flat form of config ``cfg`` (JSON safe: what train_config.json and checkpoints hold)."""
    out: dict[str, Any] = {}
    for s in settings_of(type(cfg)):
        holder = cfg if s.section is None else getattr(cfg, s.section)
        if holder is None:  # an optional section that is off: its off field 0, the others their defaults
            meta = _section_meta(type(cfg), s.section)
            value = 0 if s.attr == meta["off"] else _default(s.field)
        else:
            value = getattr(holder, s.attr)
        if s.field.metadata.get("omit_default") and value == _default(s.field):
            continue
        out[s.name] = _flat_value(value)
    return out


def from_flat(cls: type, values: dict[str, Any]) -> Any:
    """Config ``cls`` from flat settings (absent ones take their defaults) or from sections given as dicts
    (``{"optim": {"lr": ...}}``); unknown keys are a ValueError naming them. Sections validate as they are built."""
    flat = dict(values)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in fields:  # nested input: a section's own dict, its keys without the prefix
        if isinstance(flat.get(name), dict) and section_class(hints[name]) is not None:
            prefix = _section_meta(cls, name)["prefix"]
            flat.update({prefix + k: v for k, v in flat.pop(name).items()})
    objects = {n for n in fields if (sec := section_class(hints[n])) is not None and isinstance(flat.get(n), sec)}
    unknown = sorted(set(flat) - set(setting_names(cls)) - objects)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {unknown}")
    kwargs: dict[str, Any] = {}
    by_section: dict[str, dict[str, Any]] = {}
    for s in settings_of(cls):
        if s.name not in flat:
            continue
        if s.section is None:
            kwargs[s.attr] = flat[s.name]
        else:
            by_section.setdefault(s.section, {})[s.attr] = flat[s.name]
    for name, f in fields.items():
        sec = section_class(hints[name])
        if sec is None:
            continue
        given = by_section.get(name)
        meta = _section_meta(cls, name)
        base = flat[name] if name in objects else _default(f)  # a section may be given as an object
        if name in objects and given is None:
            kwargs[name] = base
            continue
        if meta["off"] is not None:
            on = (given or {}).get(meta["off"], None if base is None else getattr(base, meta["off"]))
            if not on:  # the off field's 0 (or no section given at all): no section
                kwargs[name] = None
                continue
        if given is None:
            continue
        if base is None:
            kwargs[name] = sec(**given)
        else:
            kwargs[name] = dataclasses.replace(base, **given)
    return cls(**kwargs)


def replace_flat(cfg: Any, **changes: Any) -> Any:
    """A copy of ``cfg`` with flat settings changed (``replace_flat(cfg, schedule_steps=10)``), validated."""
    return from_flat(type(cfg), {**to_flat(cfg), **changes})


def _section_meta(cls: type, name: str | None) -> dict[str, Any]:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.metadata.get("section") or section()["section"]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# ------------------------------------------------------------------------------------------ validation

def check_positive(cfg: Any, *names: str, prefix: str = "") -> None:
    """ValueError naming the flag unless each field ``names`` of ``cfg`` is an integer >= 1."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{flag_name(prefix + name)} must be an integer >= 1, got {value!r}")


def check_nonneg(cfg: Any, *names: str, prefix: str = "") -> None:
    """ValueError naming the flag unless each field ``names`` of ``cfg`` is a number >= 0."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{flag_name(prefix + name)} must be >= 0, got {value!r}")


def check_choices(cfg: Any) -> None:
    """ValueError naming the flag when a ``Literal`` field of ``cfg`` holds another value."""
    for name, hint in typing.get_type_hints(type(cfg)).items():
        if typing.get_origin(hint) is Literal and getattr(cfg, name) not in typing.get_args(hint):
            raise ValueError(
                f"{flag_name(name)} must be one of {list(typing.get_args(hint))}, got {getattr(cfg, name)!r}")
