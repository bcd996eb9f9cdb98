"""Everything about checkpoint files: gpt2kit's own format, run directories, and the formats of other programs.

A ``--checkpoint`` value may name:

- a run directory written by ``gpt2kit train`` (its best checkpoint by validation loss, else the latest),
- a gpt2kit checkpoint file (``*.pt``; loaded with ``torch.load(weights_only=True)``, never unpickling code),
- a sharded gpt2kit checkpoint (a ``step_XXXXXXXX.dcp`` directory of ``torch.distributed.checkpoint`` files),
  consolidated into whole weights in this process,
- a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``),
- OpenAI's original GPT-2 release directory (``hparams.json`` + ``model.ckpt.*``; read without TensorFlow),
- a Hugging Face Hub name such as ``gpt2`` or ``org/name`` (downloaded when the hub is reachable).

One module per part:

- :mod:`~gpt2kit.checkpoint.format` — the gpt2kit file: save, read, ``FORMAT_VERSION``, ``kind``, validation.
- :mod:`~gpt2kit.checkpoint.state_dict` — weights in and out of a live model: wrapper prefixes, the tied head,
  the checked load.
- :mod:`~gpt2kit.checkpoint.run_dir` — a run directory's ``checkpoints/``: step paths, listing, pruning,
  ``best.json``, the latest, and where ``--resume`` continues (``ResumePoint``, ``find_resume``).
- :mod:`~gpt2kit.checkpoint.resolve` — what a ``--checkpoint`` value names: a local format, a hub download,
  or a did-you-mean.
- :mod:`~gpt2kit.checkpoint.hf` — Hugging Face directories, read and written (the key table itself is
  :mod:`gpt2kit.model.hf_keys`, beside the model whose names it spells).
- :mod:`~gpt2kit.checkpoint.openai` and :mod:`~gpt2kit.checkpoint.tf_bundle` — OpenAI's release directory and
  the TensorFlow tensor-bundle decoder under it.
- :mod:`~gpt2kit.checkpoint.sharded` — the tensors of ``--checkpoint-format sharded`` through DCP.
- :mod:`~gpt2kit.checkpoint.finetune` — the fine-tune record and LoRA weights merged into plain ones.
- :mod:`~gpt2kit.checkpoint.load` — ``load_model`` for any of the above, and ``export_hf``.

The trainer's save/resume orchestration (optimizer, ranks, repairs after a kill) is
:class:`gpt2kit.train.checkpointer.Checkpointer`, a component of the training loop built on this package.
Importing the package reads no files and imports no optional dependency.
"""

from __future__ import annotations

from gpt2kit.checkpoint.format import (
    CHECKPOINT_KIND,
    FORMAT_VERSION,
    read_checkpoint,
    save_checkpoint,
    write_sharded_meta,
)
from gpt2kit.checkpoint.load import LoadedModel, export_hf, load_model, model_from_checkpoint
from gpt2kit.checkpoint.resolve import resolve_checkpoint
from gpt2kit.checkpoint.run_dir import (
    BEST_FILE,
    CHECKPOINT_DIR,
    ResumePoint,
    best_checkpoint,
    find_resume,
    latest_checkpoint,
    list_step_checkpoints,
    prune_step_checkpoints,
    remove_checkpoint,
    step_checkpoint_path,
    write_best,
)
from gpt2kit.checkpoint.sharded import is_sharded
from gpt2kit.checkpoint.state_dict import (
    load_state_dict_checked,
    model_state_dict,
    strip_wrapper_prefixes,
    unwrap_model,
)

__all__ = [
    "BEST_FILE", "CHECKPOINT_DIR", "CHECKPOINT_KIND", "FORMAT_VERSION", "LoadedModel", "ResumePoint",
    "best_checkpoint", "export_hf", "find_resume", "is_sharded", "latest_checkpoint", "list_step_checkpoints",
    "load_model", "load_state_dict_checked", "model_from_checkpoint", "model_state_dict", "prune_step_checkpoints",
    "read_checkpoint", "remove_checkpoint", "resolve_checkpoint", "save_checkpoint", "step_checkpoint_path",
    "strip_wrapper_prefixes", "unwrap_model", "write_best", "write_sharded_meta",
]
