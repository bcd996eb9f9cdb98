"""What a ``--checkpoint`` value names: a local checkpoint of some format, or a Hugging Face Hub model.

A value that looks like a local path (``./x``, ``runs/x`` where ``runs/`` exists, ``x.pt``, ...) is never
sent to the hub: when it does not exist the error says so, with the closest name beside it. Only bare names
(``gpt2``) and ``org/name`` ids whose ``org`` is not a local directory are hub ids.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from gpt2kit.checkpoint.hf import is_hf_dir
from gpt2kit.checkpoint.openai import is_openai_dir
from gpt2kit.checkpoint.run_dir import CHECKPOINT_DIR, PIPELINE_FILE, best_checkpoint, latest_checkpoint, pipeline_model
from gpt2kit.checkpoint.sharded import is_sharded
from gpt2kit.errors import UserError


def resolve_checkpoint(spec: str | Path) -> tuple[str, Path | str]:
    """Classify a ``--checkpoint`` value: ``("gpt2kit", file)``, ``("huggingface"|"openai", dir)`` or
    ``("hub", name)``."""
    path = Path(spec)
    if str(spec).startswith("~"):
        try:
            path = path.expanduser()
        except RuntimeError:  # ~user with no such user: left as typed, and reported missing below
            pass
    if path.is_file() and path.parent.is_dir() and _is_openai_file(path):
        return "openai", path.parent  # a file of an OpenAI release (model.ckpt.index, hparams.json, ...)
    if path.is_file() or is_sharded(path):
        return "gpt2kit", path
    if path.is_dir() and (path / PIPELINE_FILE).exists():
        model = pipeline_model(path)
        if model is None:
            raise UserError(f"{path}: a gpt2kit pipeline with no model yet; let `gpt2kit pipeline` finish pretraining "
                            f"(rerun it with --out {path} to continue)")
        return resolve_checkpoint(model)
    if path.is_dir():
        # a run directory first: its checkpoints win over a config.json that may sit beside them
        best = best_checkpoint(path)
        latest = latest_checkpoint(path)
        if best is not None:
            return "gpt2kit", best
        if latest is not None:
            return "gpt2kit", latest
        if is_hf_dir(path):
            return "huggingface", path
        if is_openai_dir(path):
            return "openai", path
        if (path / "model.safetensors").exists() or (path / "pytorch_model.bin").exists():
            raise UserError(f"{path}: has weights but no config.json; copy the model's config.json beside them")
        raise UserError(
            f"{path}: not a gpt2kit run directory (no {CHECKPOINT_DIR}/step_*.pt or .dcp), "
            "a Hugging Face model directory (no config.json) nor an OpenAI GPT-2 release (no hparams.json)"
            f"{_models_inside(path, str(spec))}"
        )
    if Path(f"{path}.index").is_file() and path.parent.is_dir():
        return "openai", path.parent  # the TensorFlow prefix, DIR/model.ckpt, as tf.train.latest_checkpoint gives it
    s = str(spec)
    if looks_local(s):
        raise UserError(f"no such checkpoint file or directory: {s}{did_you_mean(path)}")
    return "hub", s


def looks_local(spec: str) -> bool:
    """True unless ``spec`` can only be a hub id: ``name`` or ``org/name`` whose ``org`` is not a local directory."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?", spec):
        return True  # ./x, ../x, /x, ~/x, a/b/c, backslashes: only paths look like that
    if spec.endswith((".pt", ".pth", ".bin", ".safetensors", ".json", ".index", ".ckpt")):
        return True
    return "/" in spec and Path(spec.split("/")[0]).is_dir()  # runs/dmeo beside an existing runs/


def did_you_mean(path: Path) -> str:
    """`` (did you mean X?)`` naming the closest existing sibling of a missing path, or nothing."""
    parent = path.parent
    try:
        names = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f" (did you mean {parent / close[0] if str(parent) != '.' else close[0]}?)" if close else ""


def download_hub_model(name: str) -> Path:
    """Fetch a GPT-2 model from the Hugging Face Hub into the local cache; a clear error when offline."""
    # a hub id may still be a mistyped local name: the error says both, and the closest local name
    not_local = f"{name}: no such local file or directory{did_you_mean(Path(name))}"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(
            f"{not_local}, and huggingface_hub is not installed to download it from the hub (pip install 'gpt2kit[hf]')"
        ) from None
    try:
        return Path(
            snapshot_download(name, allow_patterns=["config.json", "model.safetensors", "pytorch_model.bin"])
        )
    except Exception as e:
        raise UserError(
            f"{not_local}, and downloading it from the Hugging Face Hub failed "
            f"({type(e).__name__}); pass a local model directory instead"
        ) from None


def _models_inside(path: Path, spec: str) -> str:
    """``; it holds ...: pass one`` for a directory of model directories (gpt_download.py's ``gpt2/124M``)."""
    try:
        inside = sorted(p for p in path.iterdir() if p.is_dir() and (is_hf_dir(p) or is_openai_dir(p)))
    except OSError:
        inside = []
    hint = f"; it holds {', '.join(str(p) for p in inside[:4])}: pass one of them" if inside else ""
    if not looks_local(spec):
        hint += f"; to use the hub's {spec!r}, run from another directory (this one shadows it)"
    return hint


def _is_openai_file(path: Path) -> bool:
    return path.name == "hparams.json" or bool(re.search(r"\.ckpt(\.index|\.meta|\.data-\d+-of-\d+)$", path.name))
