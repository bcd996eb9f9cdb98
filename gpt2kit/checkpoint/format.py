"""The gpt2kit checkpoint file format: writing one atomically, reading one safely and checking what it is.

A checkpoint is a dict with at least ``format_version``, ``kind``, ``tokenizer``, ``model_config`` and
``model`` (weights by parameter name, the tied ``lm_head.weight`` left out). ``tokenizer`` is ``gpt2`` or a
trained tokenizer's id, whose directory files ride along under ``tokenizer_files``
(:meth:`gpt2kit.tokenizer.Tokenizer.checkpoint_record`; read back by
:func:`gpt2kit.tokenizer.checkpoint_tokenizer`). The trainer adds optimizer,
step, loader and RNG state, resolved config and metrics; a fine-tune adds ``finetune``
(:mod:`gpt2kit.checkpoint.finetune`). It is stored either as one ``torch.save`` file (``*.pt``) or as a sharded
directory (``*.dcp``: the tensors through ``torch.distributed.checkpoint``, :mod:`gpt2kit.checkpoint.sharded`,
and everything else in its ``meta.pt``). Both are read with ``torch.load(weights_only=True)``, so loading a
checkpoint never runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpt2kit.checkpoint.sharded import META_FILE, MetadataError, is_sharded, read_tensors
from gpt2kit.errors import UserError, first_line, torch_load_error
from gpt2kit.io import atomic_write_with
from gpt2kit.tokenizer import TOKENIZER_ID

FORMAT_VERSION = 1
"""The newest format this gpt2kit writes and reads; files of an older version load too."""
CHECKPOINT_KIND = "gpt2kit-checkpoint"
"""The ``kind`` every gpt2kit checkpoint carries, so that another program's ``.pt`` is told apart."""


def _stamped(payload: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    for key in required:
        if key not in payload:
            raise ValueError(f"checkpoint payload needs {key!r}")
    return {"format_version": FORMAT_VERSION, "kind": CHECKPOINT_KIND, "tokenizer": TOKENIZER_ID, **payload}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint dict atomically; ``format_version`` and ``kind`` are filled in, and ``tokenizer``
    (``gpt2``) unless the payload carries its own record."""
    payload = _stamped(payload, ("model_config", "model"))
    atomic_write_with(path, lambda tmp: torch.save(payload, tmp))


def write_sharded_meta(directory: str | Path, payload: dict[str, Any]) -> None:
    """Write a sharded checkpoint's :data:`~gpt2kit.checkpoint.sharded.META_FILE` (everything but the tensors that
    DCP wrote beside it) into ``directory``, the checkpoint's temporary directory, which is renamed afterwards."""
    payload = _stamped(payload, ("model_config",))
    atomic_write_with(Path(directory) / META_FILE, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | Path, *, weights: bool = True, optimizer: bool = False) -> dict[str, Any]:
    """Read a gpt2kit checkpoint safely (``weights_only=True``) and check its format.

    A checkpoint file is read whole. A sharded checkpoint (``*.dcp`` directory) is consolidated here, in one
    process: its metadata, the whole weights under ``model`` unless ``weights`` is false, and the optimizer
    state (by parameter name, as ``optimizer_format`` ``fqn``) only with ``optimizer`` (it is twice the weights).
    """
    path = Path(path)
    if is_sharded(path):
        return _read_sharded(path, weights, optimizer)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    return check_format(path, _load_file(path))


def check_format(path: str | Path, ckpt: Any) -> dict[str, Any]:
    """``ckpt`` (what ``path`` held) if it is a gpt2kit checkpoint this version reads, else one clear UserError."""
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        raise UserError(f"{path}: not a gpt2kit checkpoint (no kind={CHECKPOINT_KIND!r})")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format_version {version!r} is newer than this gpt2kit reads ({FORMAT_VERSION}); "
            "upgrade gpt2kit"
        )
    tok = ckpt.get("tokenizer", TOKENIZER_ID)
    if not isinstance(tok, str) or (tok != TOKENIZER_ID and not isinstance(ckpt.get("tokenizer_files"), dict)):
        raise UserError(f"{path}: checkpoint records tokenizer {tok!r} without its files; it was not written by "
                        "gpt2kit or is damaged, use another checkpoint")
    return ckpt


def _load_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise torch_load_error(path, e, "only gpt2kit checkpoints are accepted") from None


def _read_sharded(path: Path, weights: bool, optimizer: bool) -> dict[str, Any]:
    meta = path / META_FILE
    if not meta.is_file():
        raise UserError(f"{path}: a sharded checkpoint without {META_FILE}; not written by gpt2kit, or damaged")
    ckpt = check_format(path, _load_file(meta))
    keys = (["model"] if weights else []) + (["optimizer"] if optimizer else [])
    if not keys:
        return ckpt
    try:
        tree = read_tensors(path, keys)
    except MetadataError as e:
        raise UserError(f"{path}: {e}; only gpt2kit checkpoints are accepted") from None
    except Exception as e:  # DCP wraps a missing or cut shard in its own exception types
        raise UserError(f"{path}: the sharded checkpoint's tensors could not be read ({first_line(e, 200)}); "
                        "is a file missing or damaged?") from None
    if weights:
        ckpt["model"] = tree.get("model", {})
    if optimizer:
        ckpt["optimizer"] = {"state": tree.get("optimizer", {}).get("state", {}),
                             "param_groups": ckpt.pop("optimizer_param_groups", [])}
        ckpt["optimizer_format"] = "fqn"
    return ckpt
