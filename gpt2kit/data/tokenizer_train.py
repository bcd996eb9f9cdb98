"""Train a byte-level BPE tokenizer on the sources ``gpt2kit prepare`` reads (``gpt2kit tokenizer train``).

Documents come from :mod:`gpt2kit.data.sources` (files, globs, JSONL/Parquet, ``hf:``, ``builtin:``), read in
order behind a progress bar; :func:`gpt2kit.tokenizer.train_ranks` learns the merges and
:func:`gpt2kit.tokenizer.save_tokenizer_dir` writes the directory atomically.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2kit.data.sources import ReadProgress, SourceOptions, iter_documents, resolve_sources
from gpt2kit.errors import UserError
from gpt2kit.tokenizer import Tokenizer, save_tokenizer_dir, train_ranks, vocab_size_problem


@dataclass
class TokenizerTrainConfig(SourceOptions):
    """Everything ``tokenizer train`` needs; validated on creation (ValueError naming the flag)."""

    sources: list[str] = field(metadata={"flag": {"positional": True, "nargs": "+", "metavar": "SOURCE"}})
    """What to train on: files, directories, globs, hf:DATASET or builtin:NAME."""
    out_dir: Path = field(metadata={"flag": {"name": "--out", "required": True, "metavar": "DIR"}})
    """Output tokenizer directory."""
    vocab_size: int = field(default=8192, metadata={"flag": {"metavar": "N"}})
    """Vocabulary size including <|endoftext|> (256 bytes + merges + 1)."""
    max_chars: int | None = field(default=None, metadata={"flag": {"metavar": "N"}})
    """Train on at most the first N characters of the corpus (default: all of it)."""
    min_frequency: int = field(default=2, metadata={"flag": {"metavar": "N"}})
    """A pair must occur this often to be merged."""
    overwrite: bool = False
    """Replace an existing tokenizer directory at --out."""
    progress: bool = True
    """Show a progress bar and messages on stderr (--no-progress: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.out_dir = Path(self.out_dir)
        self.sources = [str(s) for s in self.sources]
        problem = vocab_size_problem(self.vocab_size)
        if problem:
            raise ValueError(problem)
        if self.max_chars is not None and self.max_chars < 1:
            raise ValueError(f"--max-chars must be >= 1, got {self.max_chars}")
        if self.min_frequency < 1:
            raise ValueError(f"--min-frequency must be >= 1, got {self.min_frequency}")


def train_tokenizer(sources: str | list[str], out_dir: str | Path, **options: Any) -> Tokenizer:
    """Train a tokenizer on ``sources`` into ``out_dir``; ``options`` are the other config fields."""
    if isinstance(sources, str):
        sources = [sources]
    try:
        cfg = TokenizerTrainConfig(list(sources), Path(out_dir), **options)
    except ValueError as e:
        raise UserError(str(e)) from None
    return run_train_tokenizer(cfg)


def run_train_tokenizer(cfg: TokenizerTrainConfig) -> Tokenizer:
    """:func:`train_tokenizer` for a ready config."""
    from tqdm import tqdm

    log = (lambda msg: print(f"tokenizer: {msg}", file=sys.stderr)) if cfg.progress else (lambda msg: None)
    if cfg.out_dir.exists() and not cfg.overwrite:  # before reading a corpus that may take hours
        raise UserError(f"--out {cfg.out_dir}: already exists; choose another --out or pass --overwrite")
    opts = cfg.source_options
    srcs = resolve_sources(cfg.sources, opts)
    read = ReadProgress()
    sized = all(s.size_bytes is not None for s in srcs)
    bar = tqdm(total=sum(s.size_bytes for s in srcs) if sized else None, unit="B" if sized else "doc",
               unit_scale=True, unit_divisor=1024 if sized else 1000, desc="tokenizer train",
               disable=not cfg.progress, dynamic_ncols=True)
    counted = {"chars": 0, "documents": 0}

    def texts() -> Iterator[str]:
        for text in iter_documents(srcs, opts, read):
            if cfg.max_chars is not None:
                text = text[:cfg.max_chars - counted["chars"]]
            counted["chars"] += len(text)
            counted["documents"] += 1
            bar.update((read.bytes if sized else read.documents) - bar.n)
            yield text
            if cfg.max_chars is not None and counted["chars"] >= cfg.max_chars:
                return

    t0 = time.perf_counter()
    try:
        ranks = train_ranks(texts(), cfg.vocab_size, min_frequency=cfg.min_frequency)
    finally:
        bar.close()
    if counted["chars"] == 0:
        raise UserError(f"{', '.join(cfg.sources)}: no documents found (the corpus is empty); check the source and "
                        "--text-field")
    elapsed = time.perf_counter() - t0
    training = {"vocab_size_asked": cfg.vocab_size, "min_frequency": cfg.min_frequency, "max_chars": cfg.max_chars,
                "text_field": cfg.text_field, "documents": counted["documents"], "chars": counted["chars"],
                "trainer": "huggingface tokenizers BpeTrainer (byte-level, GPT-2 regex)", "seconds": round(elapsed, 2)}
    tok = save_tokenizer_dir(ranks, cfg.out_dir, training=training, sources=[s.describe(opts) for s in srcs],
                             overwrite=cfg.overwrite)
    if tok.vocab_size < cfg.vocab_size:
        log(f"the corpus gave only {tok.vocab_size - 257} merges (no more pairs occur {cfg.min_frequency}+ times): "
            f"vocab_size {tok.vocab_size}, not {cfg.vocab_size}; train on more text for a larger vocabulary")
    log(f"{counted['documents']:,} documents, {counted['chars']:,} characters in {elapsed:.1f}s -> {cfg.out_dir}")
    return tok
