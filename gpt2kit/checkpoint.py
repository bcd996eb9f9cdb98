"""The one checkpoint reader and writer, used by train, sample, eval, export and finetune.

A ``--checkpoint`` argument may name:

- a run directory written by ``gpt2kit train`` (its best checkpoint by validation loss, else the latest),
- a gpt2kit checkpoint file (``*.pt``; loaded with ``torch.load(weights_only=True)``, never unpickling code),
- a sharded gpt2kit checkpoint (a ``step_XXXXXXXX.dcp`` directory of ``torch.distributed.checkpoint`` files, see
  :mod:`gpt2kit.checkpoint_sharded`), consolidated into whole weights in this process,
- a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``),
- OpenAI's original GPT-2 release directory (``hparams.json`` + ``model.ckpt.*``; read without TensorFlow),
- a Hugging Face Hub name such as ``gpt2`` or ``org/name`` (downloaded when the hub is reachable).

A value that looks like a local path (``./x``, ``runs/x`` where ``runs/`` exists, ``x.pt``, ...) is never
sent to the hub: when it does not exist the error says so, with the closest name beside it.

Checkpoint files are dicts with at least ``format_version``, ``kind``, ``model_config`` and ``model``;
the trainer adds optimizer, step, loader and RNG state, resolved config and metrics. A fine-tune adds
``finetune`` (task, labels or prompt template, LoRA settings; see :mod:`gpt2kit.checkpoint_finetune`):
``load_model`` returns its LoRA adapters merged into plain weights, and refuses a classification
checkpoint (a label predictor, not a language model; ``gpt2kit classify`` loads those).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2kit.errors import UserError, first_line, torch_load_error
from gpt2kit.io import atomic_write_text, atomic_write_with
from gpt2kit.checkpoint_finetune import language_model_checkpoint
from gpt2kit.checkpoint_sharded import META_FILE, SUFFIX as SHARDED_SUFFIX, MetadataError, read_tensors
from gpt2kit.model.config import GPTConfig
from gpt2kit.model.gpt import GPT
from gpt2kit.model.hf import is_hf_dir, read_hf_config, read_hf_state_dict, state_dict_from_hf, write_hf_dir
from gpt2kit.model.openai import is_openai_dir, read_openai_dir
from gpt2kit.tokenizer import TOKENIZER_ID

FORMAT_VERSION = 1
CHECKPOINT_KIND = "gpt2kit-checkpoint"
CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best.json"
_STEP_RE = re.compile(r"^step_(\d+)(\.pt|\.dcp)$")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


@dataclass
class LoadedModel:
    """A model and where it came from."""

    model: GPT
    config: GPTConfig
    source: str
    """The file or directory the weights were read from."""
    format: str
    """``gpt2kit``, ``huggingface`` or ``openai``."""
    checkpoint: dict[str, Any] = field(default_factory=dict)
    """The whole checkpoint dict (gpt2kit format), minus the model weights; empty for HF weights."""


def strip_wrapper_prefixes(sd: dict[str, Any]) -> dict[str, Any]:
    """Remove ``torch.compile``/DDP/FSDP wrapper prefixes from state-dict keys."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
                # wrappers can also sit inside the key path (e.g. FSDP-wrapped blocks)
                if f".{p}" in k:
                    k, changed = k.replace(f".{p}", "."), True
        out[k] = v
    return out


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under ``torch.compile`` and DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with wrapper prefixes removed and the tied ``lm_head.weight`` left out."""
    sd = strip_wrapper_prefixes(unwrap_model(model).state_dict())
    sd.pop("lm_head.weight", None)  # tied to transformer.wte.weight; re-tied on load
    return sd


def load_state_dict_checked(model: GPT, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load weights into ``model``; missing, unexpected or mis-shaped keys give one clear UserError."""
    sd = strip_wrapper_prefixes(dict(sd))
    sd.setdefault("lm_head.weight", sd.get("transformer.wte.weight"))
    own = model.state_dict()
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    if missing or unexpected:
        raise UserError(
            f"{source}: weights do not match the model config "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UserError(
                f"{source}: tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}; "
                "was it saved from a different model size?"
            )
    model.load_state_dict(sd)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint dict atomically; ``format_version``, ``kind`` and ``tokenizer`` are filled in."""
    for key in ("model_config", "model"):
        if key not in payload:
            raise ValueError(f"checkpoint payload needs {key!r}")
    payload = {"format_version": FORMAT_VERSION, "kind": CHECKPOINT_KIND, "tokenizer": TOKENIZER_ID, **payload}
    atomic_write_with(path, lambda tmp: torch.save(payload, tmp))


def write_sharded_meta(directory: str | Path, payload: dict[str, Any]) -> None:
    """Write a sharded checkpoint's :data:`~gpt2kit.checkpoint_sharded.META_FILE` (everything but the tensors that
    DCP wrote beside it) into ``directory``, the checkpoint's temporary directory, which is renamed afterwards."""
    if "model_config" not in payload:
        raise ValueError("checkpoint payload needs 'model_config'")
    payload = {"format_version": FORMAT_VERSION, "kind": CHECKPOINT_KIND, "tokenizer": TOKENIZER_ID, **payload}
    atomic_write_with(Path(directory) / META_FILE, lambda tmp: torch.save(payload, tmp))


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a sharded checkpoint directory (``*.dcp``)."""
    path = Path(path)
    return path.suffix == SHARDED_SUFFIX and path.is_dir()


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
    return _check_format(path, _load_file(path))


def _load_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise torch_load_error(path, e, "only gpt2kit checkpoints are accepted") from None


def _read_sharded(path: Path, weights: bool, optimizer: bool) -> dict[str, Any]:
    meta = path / META_FILE
    if not meta.is_file():
        raise UserError(f"{path}: a sharded checkpoint without {META_FILE}; not written by gpt2kit, or damaged")
    ckpt = _check_format(path, _load_file(meta))
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


def _check_format(path: Path, ckpt: Any) -> dict[str, Any]:
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        raise UserError(f"{path}: not a gpt2kit checkpoint (no kind={CHECKPOINT_KIND!r})")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format_version {version!r} is newer than this gpt2kit reads ({FORMAT_VERSION}); upgrade gpt2kit"
        )
    tok = ckpt.get("tokenizer", TOKENIZER_ID)
    if tok != TOKENIZER_ID:
        raise UserError(f"{path}: checkpoint uses tokenizer {tok!r}; gpt2kit supports only {TOKENIZER_ID!r}")
    return ckpt


def list_step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The step checkpoints of a run directory (``step_*.pt`` files and sharded ``step_*.dcp`` directories),
    oldest step first."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir()
             if (m := _STEP_RE.match(p.name)) and p.is_dir() == (m.group(2) == SHARDED_SUFFIX)]
    return [p for _, p in sorted(found)]


def step_checkpoint_path(run_dir: str | Path, step: int, sharded: bool = False) -> Path:
    """Where a run directory keeps the checkpoint of ``step`` (a ``.dcp`` directory when ``sharded``)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}{SHARDED_SUFFIX if sharded else '.pt'}"


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint file, or a sharded checkpoint directory at once: renamed to a temporary name first, so a
    kill during the deletion leaves no partial checkpoint under a step name (the next run removes the rest)."""
    path = Path(path)
    if not path.is_dir():
        path.unlink(missing_ok=True)
        return
    doomed = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        os.replace(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The best-by-validation-loss checkpoint recorded in ``checkpoints/best.json``, if it still exists."""
    f = Path(run_dir) / CHECKPOINT_DIR / BEST_FILE
    try:
        name = json.loads(f.read_text())["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    p = f.parent / Path(name).name
    return p if p.is_file() or is_sharded(p) else None


def write_best(run_dir: str | Path, path: str | Path, step: int, val_loss: float) -> None:
    """Record ``path`` (a step checkpoint of ``run_dir``) as the best by validation loss, atomically."""
    record = {"file": Path(path).name, "step": int(step), "val_loss": float(val_loss)}
    atomic_write_text(Path(run_dir) / CHECKPOINT_DIR / BEST_FILE, json.dumps(record, indent=1) + "\n")


def prune_step_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest step checkpoints, never the best one; returns what was deleted."""
    steps = list_step_checkpoints(run_dir)
    best = best_checkpoint(run_dir)
    doomed = [p for p in steps[: max(0, len(steps) - keep_last)] if best is None or p.name != best.name]
    for p in doomed:
        remove_checkpoint(p)
    return doomed


def resolve_checkpoint(spec: str | Path) -> tuple[str, Path | str]:
    """Classify a ``--checkpoint`` value: ``("gpt2kit", file)``, ``("huggingface"|"openai", dir)`` or ``("hub", name)``."""
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
    if path.is_dir():
        # a run directory first: its checkpoints win over a config.json that may sit beside them
        best = best_checkpoint(path)
        steps = list_step_checkpoints(path)
        if best is not None:
            return "gpt2kit", best
        if steps:
            return "gpt2kit", steps[-1]
        if is_hf_dir(path):
            return "huggingface", path
        if is_openai_dir(path):
            return "openai", path
        if (path / "model.safetensors").exists() or (path / "pytorch_model.bin").exists():
            raise UserError(f"{path}: has weights but no config.json; copy the model's config.json beside them")
        raise UserError(
            f"{path}: not a gpt2kit run directory (no {CHECKPOINT_DIR}/step_*.pt or .dcp), a Hugging Face model directory "
            f"(no config.json) nor an OpenAI GPT-2 release (no hparams.json){_models_inside(path, str(spec))}"
        )
    if Path(f"{path}.index").is_file() and path.parent.is_dir():
        return "openai", path.parent  # the TensorFlow prefix, DIR/model.ckpt, as tf.train.latest_checkpoint gives it
    s = str(spec)
    if _looks_local(s):
        raise UserError(f"no such checkpoint file or directory: {s}{_did_you_mean(path)}")
    return "hub", s


def _models_inside(path: Path, spec: str) -> str:
    """``; it holds ...: pass one`` for a directory of model directories (gpt_download.py's ``gpt2/124M``)."""
    try:
        inside = sorted(p for p in path.iterdir() if p.is_dir() and (is_hf_dir(p) or is_openai_dir(p)))
    except OSError:
        inside = []
    hint = f"; it holds {', '.join(str(p) for p in inside[:4])}: pass one of them" if inside else ""
    if not _looks_local(spec):
        hint += f"; to use the hub's {spec!r}, run from another directory (this one shadows it)"
    return hint


def _is_openai_file(path: Path) -> bool:
    return path.name == "hparams.json" or bool(re.search(r"\.ckpt(\.index|\.meta|\.data-\d+-of-\d+)$", path.name))


def _looks_local(spec: str) -> bool:
    """True unless ``spec`` can only be a hub id: ``name`` or ``org/name`` whose ``org`` is not a local directory."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?", spec):
        return True  # ./x, ../x, /x, ~/x, a/b/c, backslashes: only paths look like that
    if spec.endswith((".pt", ".pth", ".bin", ".safetensors", ".json", ".index", ".ckpt")):
        return True
    return "/" in spec and Path(spec.split("/")[0]).is_dir()  # runs/dmeo beside an existing runs/


def _did_you_mean(path: Path) -> str:
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
    not_local = f"{name}: no such local file or directory{_did_you_mean(Path(name))}"
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


def load_hf_model(directory: Path) -> GPT:
    """A GPT with the weights of a Hugging Face GPT-2 directory."""
    cfg = read_hf_config(directory)
    sd = state_dict_from_hf(read_hf_state_dict(directory), cfg, str(directory))
    model = GPT(cfg)
    load_state_dict_checked(model, sd, str(directory))
    return model


def load_openai_model(directory: Path) -> GPT:
    """A GPT with the weights of OpenAI's original GPT-2 release files (read without TensorFlow)."""
    hf_sd, cfg = read_openai_dir(directory)
    model = GPT(cfg)
    load_state_dict_checked(model, state_dict_from_hf(hf_sd, cfg, str(directory)), str(directory))
    return model


def model_from_checkpoint(ckpt: dict[str, Any], source: str) -> GPT:
    """A GPT built from a checkpoint dict's ``model_config`` with its ``model`` weights loaded."""
    try:
        cfg = GPTConfig.from_dict(ckpt["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: checkpoint has no valid model_config ({e})") from None
    model = GPT(cfg)
    load_state_dict_checked(model, ckpt["model"], source)
    return model


def load_model(
    spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a model from any ``--checkpoint`` value (see the module docstring), in eval mode."""
    kind, where = resolve_checkpoint(spec)
    if kind == "hub":
        where, kind = download_hub_model(str(where)), "huggingface"
    if kind == "huggingface":
        model, ckpt, fmt = load_hf_model(Path(where)), {}, "huggingface"
    elif kind == "openai":
        model, ckpt, fmt = load_openai_model(Path(where)), {}, "openai"
    else:
        full = read_checkpoint(where)
        if "finetune" in full:
            # a fine-tune: LoRA adapters merged into plain weights; a classifier is refused with a clear message

            full = language_model_checkpoint(full, str(where))
        model = model_from_checkpoint(full, str(where))
        ckpt = {k: v for k, v in full.items() if k != "model"}
        fmt = "gpt2kit"
    model.to(device=device, dtype=dtype)
    model.eval()
    return LoadedModel(model=model, config=model.config, source=str(where), format=fmt, checkpoint=ckpt)


def export_hf(spec: str | Path, out_dir: str | Path) -> LoadedModel:
    """Write the model any ``--checkpoint`` value names in Hugging Face GPT-2 format (config.json +
    model.safetensors) to ``out_dir``; returns what was loaded."""
    loaded = load_model(spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_hf_dir(model_state_dict(loaded.model), loaded.config, out_dir)
    return loaded
