"""The one flag engine (gpt2kit.cli.flags): every command's flags come from its config's settings, with the names
gpt2kit always had, and only the flags given override anything."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from gpt2kit.cli import build_parser
from gpt2kit.cli.flags import add_flags, given_flags, integer
from gpt2kit.data.prepare import PrepareConfig
from gpt2kit.finetune.config import ClassifyConfig, SFTConfig
from gpt2kit.settings import field_docs, section, settings_of
from gpt2kit.train.config import TrainConfig

FLAGS_V1 = Path(__file__).parent / "train" / "fixtures" / "flags_v1.json"


def _parser(cls, **kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_flags(p, cls, **kw)
    return p


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}


def test_every_flag_the_commands_had_is_still_there():
    old = json.loads(FLAGS_V1.read_text())  # the option strings of each command before the flag engine
    commands = _subparsers(build_parser())
    finetune = _subparsers(commands["finetune"])
    now = {"train": commands["train"], "prepare": commands["prepare"], "finetune classify": finetune["classify"],
           "finetune sft": finetune["sft"]}
    for name, flags in old.items():
        assert set(flags) <= _options(now[name]), (name, sorted(set(flags) - _options(now[name])))
    assert "--schedule-steps" not in _options(finetune["sft"])  # fine-tuning derives the loop's cadence


def test_only_the_flags_given_are_returned_typed():
    p = _parser(TrainConfig)
    args = p.parse_args(["--lr", "3e-4", "--n-layer", "4", "--no-progress", "--max-steps", "none",
                         "--lr-schedule", "wsd"])
    assert given_flags(args, TrainConfig) == {"lr": 3e-4, "n_layer": 4, "progress": False, "max_steps": None,
                                              "lr_schedule": "wsd"}
    assert given_flags(p.parse_args([]), TrainConfig) == {}
    with pytest.raises(SystemExit):
        p.parse_args(["--lr-schedule", "step"])  # a Literal's choices
    with pytest.raises(argparse.ArgumentTypeError, match="'many' is not an integer"):
        integer("many")
    assert "--preset" not in _options(p)  # recorded, not a flag of its own here (cli/train.py adds --preset)


def test_help_is_the_docstring_with_the_default_and_a_group_per_section():
    text = _parser(TrainConfig).format_help()
    assert "Peak learning rate. [default: 0.0006]" in " ".join(text.split())
    assert "optim settings:" in text and "model settings:" in text
    ft = " ".join(_parser(ClassifyConfig, help=ClassifyConfig.HELP).format_help().split())
    assert "Peak learning rate (default: 0.001 with LoRA, 5e-05 otherwise)." in ft  # no second default appended
    assert "[default: 0.01]" in ft and "--lora-rank" in ft and "(0: no LoRA" in ft


def test_prepare_flags_keep_their_shape():
    p = _parser(PrepareConfig)
    args = p.parse_args(["a.txt", "b.txt", "--out", "d", "--val-tokens", "30", "--hf-data-files", "x", "y",
                         "--no-progress"])
    assert given_flags(args, PrepareConfig) == {"sources": ["a.txt", "b.txt"], "out_dir": Path("d"),
                                                "val_tokens": 30, "hf_data_files": ["x", "y"], "progress": False}
    with pytest.raises(SystemExit):
        p.parse_args(["a.txt"])  # --out is required
    assert "--out DIR" in p.format_help() and "SOURCE" in p.format_help()


@dataclass
class _Inner:
    """An inner section."""

    rank: int = 4
    """Rank."""
    names: tuple[str, ...] = ("a", "b")
    """Names."""
    hidden: int = 0
    """Not saved."""


@dataclass
class _Outer:
    """A config for the engine's own rules."""

    mode: Literal["x", "y"] = "x"
    """Mode."""
    inner: _Inner | None = field(default=None, metadata=section(prefix="in_", saved=("rank", "names"), off="rank"))


def test_sections_prefixes_and_optional_sections():
    assert [s.name for s in settings_of(_Outer)] == ["mode", "in_rank", "in_names"]
    assert field_docs(_Inner)["names"] == "Names."
    args = _parser(_Outer).parse_args(["--in-rank", "2", "--in-names", "c,d"])
    assert given_flags(args, _Outer) == {"in_rank": 2, "in_names": "c,d"}
    with pytest.raises(TypeError, match="two settings named 'rank'"):
        @dataclass
        class _Clash:
            rank: int = 1
            inner: _Inner = field(default_factory=_Inner)

        settings_of(_Clash)


def test_finetune_commands_share_the_train_flags_for_the_shared_sections():
    shared = {s.name for s in settings_of(TrainConfig) if s.section in ("optim", "schedule", "run", "logging")}
    for cls in (ClassifyConfig, SFTConfig):
        assert shared <= {s.name for s in settings_of(cls)}
