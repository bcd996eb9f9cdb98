"""Fine-tuning: classification heads, instruction tuning (SFT) and LoRA, on the shared training loop.

- :mod:`gpt2kit.finetune.files` — data files; the over-long policy, fingerprint and hold-out all data sets share.
- :mod:`gpt2kit.finetune.classify_data` — classification tables: label vocabulary, checked and tokenized texts.
- :mod:`gpt2kit.finetune.sft_data` — Alpaca/chat records as token ids with the trained (response) tokens marked.
- :mod:`gpt2kit.finetune.batching` — padding, packing and the shuffled epoch order of fine-tuning batches.
- :mod:`gpt2kit.prompts` — the prompt templates (shared with sample, chat and serve).
- :mod:`gpt2kit.model.lora` — LoRA adapters applied from outside the model; merging them back.
- :mod:`gpt2kit.finetune.classifier` — ``GPTClassifier`` (head over the last real token), freezing, loading.
- :mod:`gpt2kit.finetune.metrics` — accuracy and macro-F1 from a confusion matrix.
- :mod:`gpt2kit.finetune.evaluate` — classifier and SFT evaluation (distributed-aware).
- :mod:`gpt2kit.checkpoint.finetune` — the ``finetune`` checkpoint record and merged plain weights.
- :mod:`gpt2kit.finetune.config` / :mod:`gpt2kit.finetune.run` — settings and the ``run_classify``/``run_sft`` jobs.
"""
