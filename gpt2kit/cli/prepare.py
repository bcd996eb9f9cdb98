"""``gpt2kit prepare``: tokenize a corpus into verified token shards plus manifest.json."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import HelpFormatter

HELP = "tokenize a corpus (files, hf:DATASET, builtin:NAME) into token shards for training"
DESCRIPTION = """\
Tokenize a corpus with the GPT-2 BPE (or --tokenizer DIR from `gpt2kit tokenizer train`) into uint16
token shards plus manifest.json, ready for
`gpt2kit train`. Every document is preceded by <|endoftext|>; shards are written atomically and
checksummed. Re-running the same command skips the shards already done and verified (an
interrupted run continues where it stopped). One prepare at a time per --out.

Every corpus gets a train and a val split: whole documents where they give the val share within
10%, else the tail of each long document (one .txt file: its last 10%, as nanoGPT). The share is
1% by default, raised for small corpora to give 50,000 val tokens, up to 10%. One line and the
manifest's "split" record say how it was split.

SOURCE may be:
  builtin:sotu | builtin:moby-dick   corpora shipped with gpt2kit (offline)
  FILE.txt / .md                     one document per file
  FILE.jsonl / .json                 one document per record, text in --text-field
  FILE.parquet                       one document per row, text in column --text-field
  DIR, 'GLOB/**/*.jsonl.gz'          every such file below it (.gz .bz2 .xz .zst accepted)
  hf:NAME                            a Hugging Face dataset, streamed (needs gpt2kit[hf])

Examples:
  gpt2kit prepare my.txt --out data/mine
  gpt2kit prepare builtin:sotu --out data/sotu
  gpt2kit prepare hf:HuggingFaceFW/fineweb-edu --hf-config sample-10BT --val-tokens 100000000 --out data/edu10b
  gpt2kit prepare hf:roneneldan/TinyStories --out data/tinystories
  gpt2kit prepare hf:Salesforce/wikitext --hf-config wikitext-103-raw-v1 --out data/wikitext103
  gpt2kit prepare 'corpus/**/*.jsonl.zst' --text-field content --out data/mine
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``gpt2kit prepare``: one per :class:`~gpt2kit.data.prepare.PrepareConfig` field."""
    from gpt2kit.cli.flags import add_flags
    from gpt2kit.data.builtin import BUILTIN_CORPORA
    from gpt2kit.data.prepare import PrepareConfig

    p.formatter_class = HelpFormatter
    builtin = ", ".join(f"builtin:{n} ({c.description})" for n, c in BUILTIN_CORPORA.items())
    add_flags(p, PrepareConfig,
              help={"sources": f"what to tokenize: {builtin}; files, directories, globs, or hf:DATASET"})


def run(args: argparse.Namespace) -> int:
    """Prepare the corpus and print a one-line summary."""
    from gpt2kit.cli.flags import given_flags
    from gpt2kit.data.prepare import PrepareConfig, prepare

    options = given_flags(args, PrepareConfig)
    sources, out = options.pop("sources"), options.pop("out_dir")
    manifest = prepare(sources, out, **options)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    print(f"{out}: {manifest['documents']:,} documents; train {train['tokens']:,} tokens in "
          f"{len(train['shards'])} shard(s), val {val['tokens']:,} tokens in {len(val['shards'])} shard(s)")
    return 0
