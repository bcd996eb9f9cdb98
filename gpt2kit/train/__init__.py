"""Training: configs and presets, the shared loop, data parallelism, checkpoints and metrics.

- :mod:`gpt2kit.train.config` — ``LoopConfig``/``TrainConfig``: the sections (optimizer, schedule, checkpoint,
  logging, parallel...) each validating itself; :mod:`gpt2kit.train.presets` — ``PRESETS``, ``get_preset``;
  :mod:`gpt2kit.train.resolve` — a run's settings from preset, saved config, ``--config`` file and flags.
- :mod:`gpt2kit.train.loop` — ``train(cfg, TrainTask, env)``: the one loop (pretraining and fine-tuning).
- :mod:`gpt2kit.train.task` — ``TrainTask``, ``EvalContext``, ``TrainResult``: what a job hands the loop.
- :mod:`gpt2kit.train.checkpointer` — ``Checkpointer``: saving, resuming, pruning, best.json, repairs after a kill
  (the files themselves are :mod:`gpt2kit.checkpoint`'s).
- :mod:`gpt2kit.train.optim` — ``build_optimizer(model, cfg, device)`` (AdamW, or Muon + AdamW as one) and
  ``apply_schedule``; :mod:`gpt2kit.train.schedule` — ``lr_at`` (cosine, linear, constant, wsd).
- :mod:`gpt2kit.train.state` — ``RunState``, RNG state capture.
- torchrun environment, DDP/FSDP wrapping and collectives live below train and eval, in :mod:`gpt2kit.distributed`.
- :mod:`gpt2kit.train.metrics` — ``metrics.jsonl``, TensorBoard, MFU.
- :mod:`gpt2kit.train.pretrain` — ``run_pretraining(cfg)``: what ``gpt2kit train`` runs.
"""

from gpt2kit.train.config import LoopConfig, TrainConfig
from gpt2kit.train.presets import PRESETS, get_preset

__all__ = ["PRESETS", "LoopConfig", "TrainConfig", "get_preset"]
