"""``gpt2kit prepare``: tokenize a corpus into verified token shards plus manifest.json."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import HelpFormatter, nonneg_int, positive_int

HELP = "tokenize a corpus (files, hf:DATASET, builtin:NAME) into token shards for training"
DESCRIPTION = """\
Tokenize a corpus with the GPT-2 BPE into uint16 token shards plus manifest.json, ready for
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


def _fraction(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= f < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {f}")
    return f


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``gpt2kit prepare``."""
    from gpt2kit.data.builtin import BUILTIN_CORPORA
    from gpt2kit.data.prepare import DEFAULT_SHARD_TOKENS
    from gpt2kit.data.split_plan import DEFAULT_VAL_FRACTION, MAX_DEFAULT_VAL_FRACTION

    p.formatter_class = HelpFormatter

    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="what to tokenize: " + ", ".join(f"builtin:{n} ({c.description})" for n, c in BUILTIN_CORPORA.items())
                   + "; files, directories, globs, or hf:DATASET")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the shards and manifest.json")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="JSON field / Parquet or dataset column that holds the text")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=_fraction, default=None, metavar="F",
                     help=f"share of tokens for the val split (default: {DEFAULT_VAL_FRACTION}, up to "
                          f"{MAX_DEFAULT_VAL_FRACTION} for small corpora; 0: no val split)")
    val.add_argument("--val-tokens", type=nonneg_int, default=None, metavar="N",
                     help="instead: the first N tokens form the val split (build-nanogpt style)")
    p.add_argument("--shard-tokens", type=positive_int, default=DEFAULT_SHARD_TOKENS, metavar="N", help="tokens per shard")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="tokenizer processes (default: all CPU cores; 1 = in this process)")
    p.add_argument("--hf-config", default=None, metavar="NAME", help="Hugging Face dataset config, e.g. sample-10BT")
    p.add_argument("--hf-split", default="train", metavar="SPLIT", help="Hugging Face split to stream")
    p.add_argument("--hf-data-files", nargs="+", default=None, metavar="PATH",
                   help="Hugging Face data_files (e.g. with hf:json or hf:parquet for local or remote files)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output in --out that was prepared from another source, tokenizer or settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or messages on stderr")


def run(args: argparse.Namespace) -> int:
    """Prepare the corpus and print a one-line summary."""
    from gpt2kit.data.prepare import prepare
    from gpt2kit.data.tokenize import default_workers

    manifest = prepare(
        args.sources, args.out, text_field=args.text_field, val_fraction=args.val_fraction, val_tokens=args.val_tokens,
        shard_tokens=args.shard_tokens, workers=args.workers or default_workers(), hf_config=args.hf_config,
        hf_split=args.hf_split, hf_data_files=args.hf_data_files, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    print(f"{args.out}: {manifest['documents']:,} documents; train {train['tokens']:,} tokens in "
          f"{len(train['shards'])} shard(s), val {val['tokens']:,} tokens in {len(val['shards'])} shard(s)")
    return 0
