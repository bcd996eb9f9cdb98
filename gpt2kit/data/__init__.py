"""Data: corpus sources, token shards + manifest, ``gpt2kit prepare``, and the training/eval loader.

Modules (import what you need; nothing here is imported eagerly):

- :mod:`gpt2kit.data.prepare` — ``prepare(sources, out_dir, ...)``: corpus -> verified token shards.
- :mod:`gpt2kit.data.loader` — ``TokenLoader``, ``eval_batches``, ``read_manifest``.
- :mod:`gpt2kit.data.stream` — ``EpochStream``: the resumable shuffled-epoch order that pretraining windows and
  fine-tuning items are drawn in.
- :mod:`gpt2kit.data.sources` — plain text, JSONL/JSON, Parquet, directories, globs, ``hf:``, ``builtin:``.
- :mod:`gpt2kit.data.builtin` — the public-domain corpora shipped inside the package.
- :mod:`gpt2kit.data.shards`, :mod:`gpt2kit.data.manifest` — the on-disk format (see docs/data.md).
"""
