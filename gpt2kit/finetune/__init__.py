"""Fine-tuning: classification heads, instruction tuning (SFT) and LoRA, on the shared training loop.

- :mod:`gpt2kit.finetune.data` — classification tables, Alpaca/chat records, prompt templates, batches.
- :mod:`gpt2kit.model.lora` — LoRA adapters applied from outside the model; merging them back.
- :mod:`gpt2kit.finetune.classifier` — ``GPTClassifier`` (head over the last real token), freezing, loading.
- :mod:`gpt2kit.finetune.metrics` — accuracy and macro-F1 from a confusion matrix.
- :mod:`gpt2kit.finetune.evaluate` — classifier and SFT evaluation (distributed-aware).
- :mod:`gpt2kit.checkpoint.finetune` — the ``finetune`` checkpoint record and merged plain weights.
- :mod:`gpt2kit.finetune.config` / :mod:`gpt2kit.finetune.run` — settings and the ``run_classify``/``run_sft`` jobs.
"""
