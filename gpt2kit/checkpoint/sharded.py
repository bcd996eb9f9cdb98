"""Tensor I/O of sharded checkpoints (``--checkpoint-format sharded``) with ``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint is a directory ``step_XXXXXXXX.dcp`` holding DCP's files (``.metadata`` and one
``__R_0.distcp`` per rank that wrote) for two trees of tensors, ``model`` (weights by parameter name, the tied
``lm_head.weight`` left out) and ``optimizer`` (the optimizer's per-parameter state by parameter name), plus
:data:`META_FILE`, everything else (written by :mod:`gpt2kit.checkpoint.format`). Only tensors go through DCP: DCP
unpickles other values with ``weights_only=False``, and its ``.metadata`` is read here by an unpickler that
accepts DCP's own metadata classes and nothing else, so a sharded checkpoint cannot run code when loaded.

Saving and loading into a live model are collective (every rank calls them, each writes and reads its own
shards; under DDP DCP splits the identical copies among the ranks); :func:`read_tensors` reads a checkpoint
whole in one process, with no process group, for sample, eval, export and a resume on fewer ranks.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from gpt2kit.checkpoint.state_dict import TIED
from gpt2kit.errors import first_line

SUFFIX = ".dcp"
"""The name ending of a sharded checkpoint directory."""
META_FILE = "meta.pt"
"""The file of a sharded checkpoint with everything but the model's and optimizer's tensors."""

# the classes a DCP .metadata pickle is made of (as torch 2.13 writes it); anything else is refused
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a layout by its name (torch.strided)
    "torch": {"Size", "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
              "complex64", "complex128"},
    "collections": {"OrderedDict"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
}


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a sharded checkpoint directory (``*.dcp``)."""
    path = Path(path)
    return path.suffix == SUFFIX and path.is_dir()


class MetadataError(ValueError):
    """A sharded checkpoint's ``.metadata`` holds something other than DCP's metadata classes."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        raise MetadataError(f"refused {module}.{name} in .metadata (only DCP's metadata classes are read)")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # DCP warns on every call without a process group that it assumes one process: that is the intent here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(uninitialized|single process|no_dist).*")
        yield


def _reader(path: Path) -> Any:
    # imported when a sharded checkpoint is touched: torch.distributed.checkpoint takes seconds to import
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        """DCP's file reader with :class:`_MetadataUnpickler` in place of ``pickle.load``."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")  # DCP asks for a rank's own metadata file only when .metadata is missing
            name = ".metadata" if rank is None else f"__{rank}.metadata"
            with self.fs.create_stream(self.fs.concat_path(self.path, name), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    reader = SafeReader(str(path))
    reader.read_metadata()  # refused or missing here, before DCP logs its own traceback for it
    return reader


def _optimizers(optimizer: Any) -> tuple[torch.optim.Optimizer, ...]:
    """The torch optimizers inside ``optimizer`` (Muon and AdamW of a MuonWithAdamW, else itself)."""
    parts = [getattr(optimizer, name, None) for name in ("muon", "adamw")]
    return tuple(parts) if all(isinstance(p, torch.optim.Optimizer) for p in parts) else (optimizer,)


def _live_state(model: nn.Module, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, optimizer) state by parameter name as this rank holds it (DTensor shards under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, _optimizers(optimizer))


def save_tensors(directory: Path, model: nn.Module, optimizer: Any) -> list[dict[str, Any]]:
    """Write this rank's shards of the model and optimizer state into ``directory``; returns the optimizer's
    param groups (plain data for :data:`META_FILE`). Collective; DCP fsyncs every file it writes and returns
    on the coordinator only after every rank has written its part. A failed write on any rank raises
    RuntimeError on every rank."""
    import torch.distributed.checkpoint as dcp

    model_sd, optim_sd = _live_state(model, optimizer)
    model_sd.pop(TIED, None)
    with _quiet(), _plain_errors():
        dcp.save({"model": model_sd, "optimizer": {"state": optim_sd["state"]}}, checkpoint_id=str(directory))
    return optim_sd["param_groups"]


@contextlib.contextmanager
def _plain_errors() -> Iterator[None]:
    # DCP reports a rank's failure as CheckpointException, a BaseException that `except Exception` would miss
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        failures = getattr(e, "failures", {}) or {}
        first = next(iter(failures.values()), e)
        cause = first[0] if isinstance(first, tuple) else first  # (exception, traceback) in some versions
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else first_line(cause)
        raise RuntimeError(f"rank {', '.join(map(str, sorted(failures)))}: {why}") from None


def load_tensors(directory: Path, model: nn.Module, optimizer: Any, param_groups: list[dict[str, Any]]) -> None:
    """Load ``directory``'s model and optimizer state into ``model`` (wrapped or sharded already) and
    ``optimizer``, each rank reading the parts it holds, whatever the world size that wrote them. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    model_sd, optim_sd = _live_state(model, optimizer)  # a fresh optimizer's state is created here, then filled
    tied = model_sd.pop(TIED, None) is not None
    tree = {"model": model_sd, "optimizer": {"state": optim_sd["state"]}}
    with _quiet(), _plain_errors():
        dcp.load(tree, checkpoint_id=str(directory), storage_reader=_reader(directory))
    model_sd = tree["model"]
    if tied:
        model_sd[TIED] = model_sd["transformer.wte.weight"]
    set_state_dict(model, _optimizers(optimizer), model_state_dict=model_sd,
                   optim_state_dict={"state": tree["optimizer"]["state"], "param_groups": param_groups})


def read_tensors(directory: Path, keys: Iterable[str]) -> dict[str, Any]:
    """The trees ``keys`` (``model``, ``optimizer``) of a sharded checkpoint, whole, read by this process alone
    (no process group needed, and none used when one exists: rank 0 exporting at the end of a run)."""
    # DCP's one-process reader (what _load_state_dict_from_keys does, minus its choice of collectives)
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    tree: dict[str, Any] = {}
    with _quiet(), _plain_errors():
        _load_state_dict(tree, storage_reader=_reader(directory), no_dist=True,
                         planner=_EmptyStateDictLoadPlanner(keys=set(keys)))
    return tree
