"""The pipeline's settings and its sizes: what each stage runs with on a CPU, one GPU or a node of GPUs.

A size is a function returning a :class:`PipelineSize`: the pretraining preset and the overrides each stage's
own command takes (``gpt2kit train``'s and ``gpt2kit finetune sft``'s flat settings). Flags of
:class:`PipelineConfig` then override the size, and ``--pretrain-args`` / ``--sft-args`` / ``--prepare-args``
reach every other flag of those commands.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from gpt2kit.settings import check_choices, to_flat
from gpt2kit.tokenizer import vocab_size_problem

BUILTIN_SFT = "builtin:chat"
"""The instruction set shipped with gpt2kit: what instruction tuning uses without ``--sft FILE``."""

EXPORTS = ("hf", "gguf")


@dataclass
class PipelineConfig:
    """``gpt2kit pipeline``: every stage's settings, flat as the flags are."""

    sources: list[str] = field(metadata={"flag": {"positional": True, "nargs": "+", "metavar": "SOURCE"}})
    """What to pretrain on, as `gpt2kit prepare` reads it: files, directories, globs, hf:DATASET or builtin:NAME."""
    out: str = field(metadata={"flag": {"required": True, "metavar": "RUN"}})
    """Run directory: RUN/data, RUN/pretrain, RUN/sft, RUN/export, RUN/report.md; itself a --checkpoint for chat,
    serve, sample, eval and export (the instruction-tuned model)."""
    size: Literal["auto", "cpu", "gpu", "node"] = "auto"
    """cpu (a laptop, about 15 minutes on 2 cores), gpu (one GPU, a few hours), node (8 GPUs under torchrun: the
    GPT-2 124M reproduction); auto: node under torchrun with several GPU ranks, gpu with one GPU, else cpu."""
    device: str = "auto"
    """cpu, cuda, mps or auto, for every stage."""
    tokenizer: str = "auto"
    """train (a byte-level BPE vocabulary of --vocab-size tokens learned from SOURCE into RUN/tokenizer, as
    `gpt2kit tokenizer train` does), gpt2 (GPT-2's 50,257 tokens), a directory written by `gpt2kit tokenizer train`,
    or auto: the size's (gpt2 for every size: in benchmarks/vocabularies.py a trained vocabulary was not 10% better
    at equal time)."""
    vocab_size: int | None = None
    """Tokens of the vocabulary --tokenizer train learns, <|endoftext|> included (default: the size's, 8192 on cpu,
    32768 on gpu and node)."""
    preset: str | None = None
    """Pretraining preset (gpt2kit train --preset; default: the size's)."""
    pretrain_steps: int | None = None
    """Pretraining optimizer steps (the learning-rate schedule's length; default: the size's)."""
    sft: str | None = None
    """Instruction data for the tuning stage (Alpaca or chat records, .json/.jsonl; default: the small set shipped
    with gpt2kit, builtin:chat, which teaches the chat turn format and nothing more)."""
    sft_epochs: int | None = None
    """Passes over the instruction data (default: the size's)."""
    sft_steps: int | None = None
    """Stop instruction tuning after this many steps (default: all of --sft-epochs)."""
    eval: list[str] = field(default_factory=list, metadata={"flag": {"nargs": "+", "metavar": "TASK=FILE"}})
    """Benchmarks scored on the pretrained and the tuned model besides validation loss, each with its local data
    file: hellaswag=FILE, arc-easy=FILE, arc-challenge=FILE, mmlu=FILE, piqa=FILE, winogrande=FILE,
    lambada=FILE (see gpt2kit eval --help for the formats)."""
    eval_limit: int | None = None
    """Score at most this many examples of each --eval task."""
    export: str = "hf,gguf"
    """Comma-separated exports of the tuned model: hf (RUN/export/hf, for transformers), gguf (RUN/export/model.gguf,
    f16, for llama.cpp and Ollama)."""
    samples: int = 3
    """Samples of the pretrained model and chat answers of the tuned one in the report."""
    prepare_args: str = ""
    """More `gpt2kit prepare` flags, as one quoted string (e.g. "--val-fraction 0.05")."""
    pretrain_args: str = ""
    """More `gpt2kit train` flags, as one quoted string (e.g. "--n-layer 6 --lr 1e-3")."""
    sft_args: str = ""
    """More `gpt2kit finetune sft` flags, as one quoted string (e.g. "--lora-rank 8 --batch-size 4")."""

    def __post_init__(self) -> None:
        self.sources = [str(s) for s in self.sources]
        if not self.sources:
            raise ValueError("SOURCE: give at least one file, directory, glob, hf:DATASET or builtin:NAME")
        if not self.out:
            raise ValueError("--out: required; the pipeline's run directory")
        check_choices(self)
        if not self.tokenizer:
            raise ValueError("--tokenizer: give train, gpt2, auto or a tokenizer directory")
        if self.vocab_size is not None:
            problem = vocab_size_problem(self.vocab_size)
            if problem:
                raise ValueError(problem)
            if self.tokenizer not in ("train", "auto"):
                raise ValueError(f"--vocab-size: applies to --tokenizer train; --tokenizer {self.tokenizer} has its "
                                 "own vocabulary")
        for name in ("pretrain_steps", "sft_epochs", "sft_steps", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.samples < 0:
            raise ValueError(f"--samples must be >= 0, got {self.samples}")
        self.eval = list(self.eval)
        for item in self.eval:
            task, sep, path = item.partition("=")
            if not sep or not task or not path:
                raise ValueError(f"--eval {item!r}: give TASK=FILE, e.g. hellaswag=hellaswag_val.jsonl")
        self.export_formats()
        for name in ("prepare_args", "pretrain_args", "sft_args"):
            try:
                shlex.split(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"--{name.replace('_', '-')}: {e}") from None

    def eval_data(self) -> dict[str, str]:
        """``--eval`` as ``{task: file}``."""
        return dict(item.split("=", 1) for item in self.eval)

    def export_formats(self) -> tuple[str, ...]:
        """The exports to write."""
        names = tuple(n.strip() for n in self.export.split(",") if n.strip())
        unknown = [n for n in names if n not in EXPORTS]
        if unknown or not names:
            raise ValueError(f"--export {self.export!r}: choose from {', '.join(EXPORTS)} (comma-separated)")
        return names

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON (pipeline.json)."""
        return to_flat(self)

    def command(self) -> str:
        """The command line that gives these settings (the ones that differ from the defaults)."""
        flat = self.to_dict()
        words = ["gpt2kit pipeline", *map(shlex.quote, self.sources), "--out", shlex.quote(self.out)]
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        for name, value in flat.items():
            if name in ("sources", "out") or value == defaults.get(name) or value in ([], None):
                continue
            values = value if isinstance(value, list) else [value]
            words += [f"--{name.replace('_', '-')}", *(shlex.quote(str(v)) for v in values)]
        return " ".join(words)


@dataclass(frozen=True)
class PipelineSize:
    """What one size runs: the pretraining preset and each stage's overrides."""

    name: str
    preset: str
    """gpt2kit train --preset."""
    tokenizer: str
    """``train`` (a vocabulary of ``vocab_size`` tokens learned from the source) or ``gpt2``."""
    vocab_size: int
    pretrain: dict[str, Any]
    """Flat TrainConfig overrides on top of the preset."""
    sft: dict[str, Any]
    """Flat SFTConfig overrides (gpt2kit finetune sft's settings)."""
    launch: str
    """How this size is meant to be started."""
    expect: str
    """How long it takes where it was meant for."""


def cpu() -> PipelineSize:
    """A laptop CPU: the demo-cpu model (4 layers, 96 wide) pretrained 1,600 steps, then tuned on the shipped set."""
    return PipelineSize(
        name="cpu", preset="demo-cpu", tokenizer="gpt2", vocab_size=8192, pretrain={},
        sft={"template": "chat", "epochs": 3, "lr": 1e-3, "batch_size": 8, "weight_decay": 0.0,
             "evals_per_epoch": 1, "samples": 1, "sample_tokens": 32},
        launch="gpt2kit pipeline SOURCE --out RUN",
        expect="about 15 minutes on 2 CPU cores",
    )


def gpu() -> PipelineSize:
    """One GPU: GPT-2 124M (the gpt2 preset's recipe) on 2.5B tokens, then tuned two epochs."""
    return PipelineSize(
        name="gpu", preset="gpt2", tokenizer="gpt2", vocab_size=32_768,
        pretrain={"schedule_steps": 4_768, "warmup_steps": 300},
        sft={"template": "chat", "epochs": 2, "lr": 5e-5, "batch_size": 16},
        launch="gpt2kit pipeline SOURCE --size gpu --out RUN",
        expect="a few hours on one H100/A100 (not measured: no GPU has been lent to this project)",
    )


def node() -> PipelineSize:
    """Eight GPUs under torchrun: the GPT-2 124M reproduction (10B tokens, 19,073 steps), then tuned."""
    return PipelineSize(
        name="node", preset="gpt2", tokenizer="gpt2", vocab_size=32_768, pretrain={},
        sft={"template": "chat", "epochs": 2, "lr": 5e-5, "batch_size": 16},
        launch="torchrun --standalone --nproc_per_node=8 -m gpt2kit pipeline SOURCE --size node --out RUN",
        expect="about 2-3 hours on 8 H100s, as llm.c and nanoGPT report for this recipe (not measured here)",
    )


SIZES: dict[str, Callable[[], PipelineSize]] = {"cpu": cpu, "gpu": gpu, "node": node}


def pick_size(requested: str, *, gpu: bool, world_size: int) -> str:
    """``--size auto`` made concrete: node under torchrun with several GPU ranks, gpu on one GPU, else cpu."""
    if requested != "auto":
        return requested
    if not gpu:  # CPU ranks under torchrun (gloo) train the CPU size, not GPT-2 124M's 524,288-token steps
        return "cpu"
    return "node" if world_size > 1 else "gpu"
