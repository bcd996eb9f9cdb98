"""``gpt2kit tokenizer train|encode|decode|info|eval``: train and inspect byte-level BPE vocabularies."""

from __future__ import annotations

import argparse
import sys

from gpt2kit.cli.common import HelpFormatter

HELP = "train your own BPE vocabulary on a corpus; encode, decode, inspect and compare tokenizers"
DESCRIPTION = """\
Train a byte-level BPE tokenizer (GPT-2's pre-tokenization regex, so any UTF-8 text round-trips exactly) on
the same sources `gpt2kit prepare` reads, and tokenize data with it: `gpt2kit prepare --tokenizer DIR`.
Training, sampling and export in a trained vocabulary are not wired in yet (`gpt2kit train` refuses such data
in one line).

  gpt2kit tokenizer train builtin:sotu --vocab-size 8192 --out tok/sotu8k
  gpt2kit tokenizer info tok/sotu8k
  gpt2kit tokenizer encode tok/sotu8k --text "Hello world"
  gpt2kit tokenizer decode tok/sotu8k 123 456
  gpt2kit tokenizer eval my.txt --tokenizer gpt2 --tokenizer tok/sotu8k
  gpt2kit prepare builtin:sotu --tokenizer tok/sotu8k --out data/sotu8k

The directory holds tokenizer.tiktoken (ranks, used at run time through tiktoken), gpt2kit_tokenizer.json
(id, vocab size, sha256, training settings, sources) and tokenizer.json/tokenizer_config.json for Hugging Face
(`AutoTokenizer.from_pretrained(DIR)` encodes ordinary text to the same ids).
"""
TOKENIZER_HELP = "gpt2 or a directory written by `gpt2kit tokenizer train`"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Subcommands train (flags from TokenizerTrainConfig), encode, decode, info, eval."""
    from gpt2kit.cli.flags import add_flags
    from gpt2kit.data.builtin import BUILTIN_CORPORA
    from gpt2kit.data.tokenizer_train import TokenizerTrainConfig

    p.formatter_class = HelpFormatter
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a byte-level BPE vocabulary on files, hf:DATASET or builtin:NAME",
                           description=DESCRIPTION, formatter_class=HelpFormatter)
    builtin = ", ".join(f"builtin:{n}" for n in BUILTIN_CORPORA)
    add_flags(train, TokenizerTrainConfig,
              help={"sources": f"what to train on: {builtin}; files, directories, globs, or hf:DATASET"})
    enc = sub.add_parser("encode", help="print the token ids of a text", formatter_class=HelpFormatter)
    enc.add_argument("tokenizer", metavar="TOKENIZER", help=TOKENIZER_HELP)
    enc.add_argument("--text", help="the text (default: read stdin)")
    dec = sub.add_parser("decode", help="print the text of token ids", formatter_class=HelpFormatter)
    dec.add_argument("tokenizer", metavar="TOKENIZER", help=TOKENIZER_HELP)
    dec.add_argument("ids", nargs="*", metavar="ID", help="token ids (default: read them from stdin)")
    info = sub.add_parser("info", help="show a tokenizer's id, vocabulary size and how it was trained",
                          formatter_class=HelpFormatter)
    info.add_argument("tokenizer", metavar="TOKENIZER", help=TOKENIZER_HELP)
    ev = sub.add_parser("eval", help="bytes per token of a text file under several tokenizers, side by side",
                        formatter_class=HelpFormatter)
    ev.add_argument("text_file", metavar="TEXTFILE", help="a UTF-8 text file")
    ev.add_argument("--tokenizer", action="append", dest="tokenizers", metavar="TOKENIZER",
                    help=f"{TOKENIZER_HELP}; repeat to compare (default: gpt2)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    return {"train": _train, "encode": _encode, "decode": _decode, "info": _info, "eval": _eval}[args.action](args)


def _train(args: argparse.Namespace) -> int:
    from gpt2kit.cli.flags import given_flags
    from gpt2kit.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    options = given_flags(args, TokenizerTrainConfig)
    sources, out = options.pop("sources"), options.pop("out_dir")
    tok = train_tokenizer(sources, out, **options)
    print(f"{out}: tokenizer {tok.name}, vocab_size {tok.vocab_size} (<|endoftext|> = {tok.eot})")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from gpt2kit.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    print(" ".join(map(str, tok.encode(text))))
    return 0


def _decode(args: argparse.Namespace) -> int:
    from gpt2kit.errors import UserError
    from gpt2kit.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    words = args.ids or sys.stdin.read().replace(",", " ").split()
    try:
        ids = [int(w) for w in words]
    except ValueError:
        raise UserError("decode: token ids must be integers separated by spaces") from None
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise UserError(f"decode: id {bad[0]} is outside the vocabulary of {tok.name} (0..{tok.vocab_size - 1})")
    sys.stdout.write(tok.decode(ids) + "\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from gpt2kit.tokenizer import load_tokenizer
    from gpt2kit.tokenizer.bpe import read_metadata

    tok = load_tokenizer(args.tokenizer)
    print(f"id          {tok.name}\nvocab_size  {tok.vocab_size}\neot         <|endoftext|> = {tok.eot}\n"
          f"sha256      {tok.sha256}\npath        {tok.path or '(packaged GPT-2 encoding)'}")
    if tok.path is not None:
        meta = read_metadata(tok.path)
        print(f"training    {json.dumps(meta.get('training'))}")
        print(f"sources     {', '.join(s.get('spec', '?') for s in meta.get('sources') or [])}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpt2kit.errors import UserError
    from gpt2kit.tokenizer import compression, load_tokenizer

    path = Path(args.text_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; convert it to UTF-8") from None
    rows = compression([load_tokenizer(t) for t in (args.tokenizers or ["gpt2"])], text)
    base = rows[0]["tokens"]
    print(f"{path}: {rows[0]['bytes']:,} bytes")
    print(f"{'tokenizer':<20} {'vocab':>7} {'tokens':>11} {'bytes/token':>11} {'vs first':>9}")
    for r in rows:
        rel = (r["tokens"] / base - 1) * 100 if base else 0.0
        print(f"{r['tokenizer']:<20} {r['vocab_size']:>7,} {r['tokens']:>11,} {r['bytes_per_token']:>11.3f} "
              f"{rel:>+8.1f}%")
    return 0
