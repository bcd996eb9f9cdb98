"""A run's settings from their sources: a base (preset, defaults or a resumed checkpoint's saved config), a
``--config`` JSON file and the flags given; one implementation for pretraining and fine-tuning.

:func:`resolve_run` finds the checkpoint ``--resume`` names; without one the caller's ``new_run`` builds the
config, with one the saved config plus the given flags does, and the settings that differ from the saved
ones are logged ("resuming with changed settings").
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gpt2kit.checkpoint import ResumePoint, find_resume
from gpt2kit.errors import UserError
from gpt2kit.settings import setting_names


class FlatConfig(Protocol):
    """A config with a flat form (see :mod:`gpt2kit.settings`)."""

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any: ...


C = TypeVar("C", bound=FlatConfig)


def apply_overrides(base: C, overrides: dict[str, Any]) -> C:
    """``base`` with the flat settings ``overrides`` applied and validated; a bad value is a UserError naming its
    flag."""
    fields = base.to_dict()
    unknown = sorted(set(overrides) - set(setting_names(type(base))))
    if unknown:
        raise UserError(f"unknown settings {unknown}")
    try:
        return type(base).from_dict({**fields, **overrides})
    except ValueError as e:
        raise UserError(str(e)) from None


def changed_settings(saved: Any, cfg: Any) -> dict[str, Any]:
    """The flat settings of ``cfg`` that differ from ``saved`` (``resume`` aside: it is how the run continues)."""
    before, after = saved.to_dict(), cfg.to_dict()  # a setting left out at its default reads as absent in both
    return {k: after.get(k) for k in setting_names(type(cfg))
            if k != "resume" and before.get(k) != after.get(k)}


def read_config_file(path: str, cls: type, command: str = "train") -> dict[str, Any]:
    """The settings in a JSON file as ``--print-config`` prints them; a UserError naming --config (and, for an
    unknown key, the closest setting of ``cls``)."""
    p = Path(path)
    write = f"`gpt2kit {command} ... --print-config > {path}`"
    if not p.is_file():
        raise UserError(f"--config {path}: no such file; write one with {write}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: not valid JSON ({e}); write it with `gpt2kit {command} ... "
                        "--print-config`") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a JSON object of settings (as --print-config prints)")
    known = setting_names(cls)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1, cutoff=0.0)
            raise UserError(f"--config {path}: unknown setting {key!r}; did you mean {close[0]!r}?")
    return data


def saved_config(point: ResumePoint, cls: type[FlatConfig], what: str) -> Any:
    """The config ``cls`` a checkpoint was trained with; a UserError saying it does not fit ``what``."""
    try:
        return cls.from_dict(point.checkpoint["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{point.path}: checkpoint settings do not fit {what} ({e})") from None


def resolve_run(cls: type[FlatConfig], out: str | None, overrides: dict[str, Any], new_run: Callable[[], C], *,
                what: str, log: Callable[[str], None] = print,
                check_point: Callable[[ResumePoint], None] | None = None,
                check_saved: Callable[[Any, ResumePoint], None] | None = None) -> tuple[C, ResumePoint | None]:
    """The run's config and the checkpoint it resumes from (None for a new run, whose config ``new_run`` builds).

    A resumed run takes the checkpoint's saved config (``check_point`` may refuse the checkpoint before it is read,
    ``check_saved`` the config read) plus ``overrides``; without
    ``--out`` it writes into the run directory it resumes; settings that differ from the saved ones are logged.
    """
    spec = overrides.get("resume")
    point = find_resume(out, spec) if spec else None
    if point is None:
        return new_run(), None
    if check_point is not None:
        check_point(point)
    base = saved_config(point, cls, what)
    if check_saved is not None:
        check_saved(base, point)
    if "out" not in overrides and spec != "auto":
        overrides = {**overrides, "out": str(point.path.parent.parent)}
    cfg = apply_overrides(base, overrides)
    changed = changed_settings(base, cfg)
    if changed:
        log("resuming with changed settings: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    return cfg, point
