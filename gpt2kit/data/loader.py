"""Batches for training and evaluation from a prepared data directory.

Letters: B micro-batch size, T block size (context length), A gradient-accumulation steps,
W world size (number of ranks), G = B * A * W windows per optimizer step.

A split (``train`` or ``val``) is read as one token stream: its shards, memory-mapped, in manifest
order. A *window* is T+1 consecutive tokens (inputs = the first T, targets = the last T); window i
starts at token i*T, so the split holds (N - 1) // T windows and no window leaves its split.

Training order is one endless stream of window positions, a :class:`~gpt2kit.data.stream.EpochStream`:
epoch e is a permutation of all windows, shuffled by (seed, e), and epoch e+1 follows it directly, so every
window is visited exactly once per epoch and no data is dropped at epoch ends. The global batch of an
optimizer step is the next G positions of that stream whatever W, B and A split it; rank r at micro-step m
takes the B positions starting at (m*W + r)*B. One process with B=8, A=2 and two processes with B=8, A=1
therefore see the same 16 windows in every step. The loader's state is the stream position, the same on
every rank.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2kit.data.manifest import MANIFEST_NAME, read_manifest, split_record, verify_split
from gpt2kit.data.shards import open_shard
from gpt2kit.data.stream import STATE_VERSION, EpochStream, check_layout
from gpt2kit.errors import UserError

STATE_KIND = "gpt2kit-token-loader"

__all__ = ["TokenLoader", "eval_batches", "read_manifest"]


def _data_id(split_rec: dict[str, Any]) -> str:
    """A short fingerprint of a split's exact contents (its shards' checksums)."""
    h = hashlib.sha256()
    for entry in split_rec["shards"]:
        h.update(f"{entry['tokens']}:{entry['sha256']}\n".encode())
    return h.hexdigest()[:16]


class _SplitTokens:
    """A split's shards as one memory-mapped token stream."""

    def __init__(self, data_dir: Path, split_rec: dict[str, Any]) -> None:
        self.sizes = [entry["tokens"] for entry in split_rec["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)])  # (K+1,)
        self.maps = [open_shard(data_dir / entry["file"], entry["tokens"]) for entry in split_rec["shards"]]
        self.num_tokens = int(self.offsets[-1])

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows of ``length`` tokens starting at each stream position in ``starts``: (len(starts), length) int64."""
        out = np.empty((len(starts), length), dtype=np.int64)
        shard_ids = np.searchsorted(self.offsets, starts, side="right") - 1
        for i, (start, k) in enumerate(zip(starts.tolist(), shard_ids.tolist())):
            local = start - int(self.offsets[k])
            if local + length <= self.sizes[k]:
                out[i] = self.maps[k][local:local + length]
                continue
            # documents flow across shard boundaries, so a window may too
            filled = 0
            while filled < length:
                take = min(length - filled, self.sizes[k] - local)
                out[i, filled:filled + take] = self.maps[k][local:local + take]
                filled, k, local = filled + take, k + 1, 0
        return out


def _open_split(data_dir: str | os.PathLike, split: str, block_size: int, rank: int, world_size: int
                ) -> tuple[dict[str, Any], dict[str, Any], _SplitTokens, int]:
    """Read and verify a split; returns (manifest, split record, tokens, number of windows)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    rec = split_record(manifest, split, data_dir / MANIFEST_NAME)
    # every rank checks sizes and headers; the sha256 hashing is shared out among the ranks
    flags = [i % world_size == rank for i in range(len(rec["shards"]))]
    verify_split(data_dir, manifest, split, full_checksum=flags)
    tokens = _SplitTokens(data_dir, rec)
    num_windows = (tokens.num_tokens - 1) // block_size
    if num_windows < 1:
        raise UserError(
            f"{data_dir}: the {split!r} split has {tokens.num_tokens} tokens, fewer than one window of "
            f"block_size+1 = {block_size + 1}; prepare more data or use a smaller block size"
        )
    return manifest, rec, tokens, num_windows


class TokenLoader:
    """Batches of (inputs, targets) int64 (B, T) from a prepared data dir's split, for one rank.

    Every rank of a run must pass the same ``seed`` (and B, A, W): the ranks share one shuffled order,
    an :class:`~gpt2kit.data.stream.EpochStream` over the split's windows.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str = "train", *, block_size: int, micro_batch_size: int,
                 grad_accum_steps: int = 1, rank: int = 0, world_size: int = 1, seed: int = 1337,
                 shuffle: bool = True) -> None:
        check_layout(rank, world_size, block_size=block_size, micro_batch_size=micro_batch_size,
                     grad_accum_steps=grad_accum_steps)
        self.data_dir = Path(data_dir)
        self.split = split
        self.block_size = block_size
        self.manifest, rec, self._tokens, self.num_windows = _open_split(data_dir, split, block_size, rank, world_size)
        self.data_id = _data_id(rec)
        self.stream = EpochStream(self.num_windows, micro_batch_size, seed=seed, shuffle=shuffle,
                                  grad_accum_steps=grad_accum_steps, rank=rank, world_size=world_size)

    @property
    def tokens_per_step(self) -> int:
        """Global tokens per optimizer step = B * T * A * W."""
        return self.stream.global_batch * self.block_size

    @property
    def epoch(self) -> int:
        """Completed passes over the split."""
        return self.stream.epoch

    @property
    def micro_batch_size(self) -> int:
        """B: windows per micro-batch on this rank."""
        return self.stream.micro_batch_size

    def set_layout(self, micro_batch_size: int, grad_accum_steps: int) -> None:
        """Serve each optimizer step's windows in micro-batches of another size (between steps; same global
        batch, so the same windows): what the trainer does after running out of memory."""
        self.stream.set_layout(micro_batch_size, grad_accum_steps)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next micro-batch: inputs and targets, CPU int64 (B, T) each."""
        T = self.block_size
        buf = self._tokens.gather(self.stream.next_items() * T, T + 1)  # (B, T+1)
        x = torch.from_numpy(np.ascontiguousarray(buf[:, :-1]))  # (B, T)
        y = torch.from_numpy(np.ascontiguousarray(buf[:, 1:]))  # (B, T)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """The stream position and what it depends on; plain ints/strings/bools, identical on every rank."""
        return {"kind": STATE_KIND, "format_version": STATE_VERSION, "split": self.split, "data_id": self.data_id,
                "block_size": self.block_size, **self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at exactly the next micro-batch.

        The seed and shuffle setting are taken from the state. Between optimizer steps the batch layout
        (B, A, W) may change; mid-step it must match. Format 1 (before the stream's keys) named N ``num_windows``.
        """
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            raise UserError("loader state: not a gpt2kit token-loader state; the checkpoint is corrupt or from another "
                            "tool")
        if state.get("format_version", 0) > STATE_VERSION:
            raise UserError(f"loader state: format_version {state.get('format_version')} is newer than this gpt2kit; "
                            "upgrade gpt2kit")
        if state["block_size"] != self.block_size:
            raise UserError(
                f"block size {self.block_size} differs from the checkpoint's {state['block_size']}; "
                "windows would not line up, resume with the same block size"
            )
        if state["split"] != self.split or state["data_id"] != self.data_id:
            raise UserError(
                f"{self.data_dir}: the checkpoint's data position was saved for other data (split {state['split']!r}, "
                f"data id {state['data_id']}; this directory's {self.split!r} split is {self.data_id}); "
                "resume with the data directory the run was started with"
            )
        if state.get("format_version") == 1:
            state = {**state, "num_items": state["num_windows"]}
        self.stream.load_state_dict(state)


def eval_batches(data_dir: str | os.PathLike, split: str = "val", *, block_size: int, batch_size: int,
                 max_batches: int | None = None, rank: int = 0, world_size: int = 1, fit_small: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, unshuffled, deterministic (inputs, targets) batches of int64 (B, T); ranks get disjoint batches.

    Batch k holds windows [k*B, (k+1)*B) of the split (full batches only). The first ``max_batches``
    batches (all when None) are dealt round-robin to the ranks, and every rank yields the same number,
    so the same windows are evaluated whatever the world size when that number divides evenly.
    ``fit_small``: a split too small for one batch per rank gives one smaller batch per rank instead, so a
    short story still gets a validation loss (a split shorter than one window stays an error: the model
    would be scored at a context it is not trained for). The data is verified when this function is called.
    """
    check_layout(rank, world_size, block_size=block_size, batch_size=batch_size)
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    _, _, tokens, num_windows = _open_split(data_dir, split, block_size, rank, world_size)
    if fit_small and num_windows < batch_size * world_size:
        batch_size = max(1, num_windows // world_size)
    num_batches = num_windows // batch_size
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    per_rank = num_batches // world_size
    if per_rank < 1:
        raise UserError(
            f"{data_dir}: the {split!r} split has {num_windows} windows of {block_size + 1} tokens, fewer than "
            f"batch_size*world_size = {batch_size * world_size} (max_batches={max_batches}); "
            "prepare a larger validation split (--val-tokens/--val-fraction) or lower the eval batch size"
        )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(per_rank):
            k = i * world_size + rank
            windows = np.arange(k * batch_size, (k + 1) * batch_size, dtype=np.int64)
            buf = tokens.gather(windows * block_size, block_size + 1)  # (B, T+1)
            yield (torch.from_numpy(np.ascontiguousarray(buf[:, :-1])),  # (B, T)
                   torch.from_numpy(np.ascontiguousarray(buf[:, 1:])))  # (B, T)

    return batches()
