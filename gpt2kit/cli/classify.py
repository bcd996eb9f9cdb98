"""``gpt2kit classify``: predict labels with a classifier trained by ``gpt2kit finetune classify``."""

from __future__ import annotations

import argparse
import sys

from gpt2kit.cli.common import HelpFormatter, add_device_arguments, positive_int
from gpt2kit.errors import UserError

HELP = "predict labels of texts with a checkpoint from `gpt2kit finetune classify`"
DESCRIPTION = """\
Print one line per text: the predicted label, its probability and the text (tab-separated), or JSON lines
with every label's probability (--format jsonl). Texts come from --text (repeatable) or --file: a .txt
file holds one text per line ('-' reads standard input); a .csv/.tsv/.jsonl/.json file is read like the
training data (the text column the classifier was trained with, or --text-column). When such a file also
has the label column, accuracy and macro-F1 against it are printed to standard error.
Texts longer than the classifier's --max-length keep their first tokens, as in training.

  gpt2kit classify --checkpoint runs/spam --text "WIN a FREE prize now" --text "see you at lunch"
  gpt2kit classify --checkpoint runs/spam --file test.csv --format jsonl > predictions.jsonl
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = HelpFormatter
    p.add_argument("--checkpoint", required=True,
                   help="a run directory of `gpt2kit finetune classify` (its best checkpoint) or one of its .pt files")
    p.add_argument("--text", action="append", default=None, help="a text to classify (repeat for several)")
    p.add_argument("--file", default=None, help="texts to classify: .txt (one per line, '-' = stdin), .csv, .tsv, "
                                                ".jsonl or .json")
    p.add_argument("--text-column", default=None, help="column/field of --file holding the text "
                                                       "[default: the one the classifier was trained with]")
    p.add_argument("--format", choices=("tsv", "jsonl"), default="tsv", help="output format")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass")
    add_device_arguments(p)


def _read_texts(args: argparse.Namespace, record: dict) -> tuple[list[str], list | None]:
    """(texts, their labels from the file or None)."""
    from pathlib import Path

    if not args.text and not args.file:
        raise UserError("give --text TEXT (repeatable) or --file FILE with the texts to classify")
    texts = list(args.text or [])
    labels: list | None = None
    if args.file:
        path = Path(args.file)
        if args.file == "-" or path.suffix.lower() in ("", ".txt"):
            if args.file == "-":
                lines = sys.stdin.read().splitlines()
            else:
                if not path.is_file():
                    raise UserError(f"--file {path}: file not found")
                lines = path.read_text(encoding="utf-8").splitlines()
            texts += [line for line in lines if line.strip()]
        else:
            from gpt2kit.finetune.files import read_records

            column = args.text_column or record.get("text_column", "text")
            label_column = record.get("label_column", "label")
            records = read_records(path)
            have_labels = not args.text and all(label_column in rec for _, rec in records)
            labels = [] if have_labels else None
            for where, rec in records:
                if column not in rec:
                    raise UserError(f"{where}: no {column!r} column/field; pass --text-column to name the text column")
                if not isinstance(rec[column], str) or not rec[column].strip():
                    raise UserError(f"{where}: empty text in column {column!r}")
                texts.append(rec[column])
                if labels is not None:
                    labels.append((where, rec[label_column]))
    if not texts:
        raise UserError(f"--file {args.file}: no texts in it")
    return texts, labels


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from gpt2kit.cli.common import resolve_dtype
    from gpt2kit.distributed import resolve_device
    from gpt2kit.finetune.classifier import load_classifier, predict_logits
    from gpt2kit.finetune.classify_data import encode_texts

    if args.file and args.file != "-" and not Path(args.file).is_file():
        # before loading the weights: a mistyped path should not wait for them (a directory is not a file either)
        raise UserError(f"--file {args.file}: file not found")
    device = resolve_device(args.device)
    model, record, source, tok = load_classifier(args.checkpoint, device=device, dtype=resolve_dtype(args.dtype))
    vocab = list(record["labels"])
    texts, labels = _read_texts(args, record)
    ids, truncated = encode_texts(texts, int(record.get("max_length") or model.config.block_size), tokenizer=tok)
    if truncated:
        print(f"note: {truncated} texts are longer than the classifier's max length {record.get('max_length')} tokens; "
              "their first tokens were used", file=sys.stderr)
    logits = predict_logits(model, ids, batch_size=args.batch_size, device=device, pad_id=tok.eot,
                            progress=len(ids) > 4 * args.batch_size)  # (N, K)
    probs = torch.softmax(logits.float(), dim=-1)  # (N, K)
    pred = probs.argmax(dim=-1)  # (N,)
    out = sys.stdout
    try:
        _write_predictions(out, args.format, texts, vocab, probs, pred)
    except BrokenPipeError:  # e.g. piped into `head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if labels is not None:
        from gpt2kit.finetune.classify_data import label_string
        from gpt2kit.finetune.metrics import accuracy, confusion_matrix, macro_f1

        index = {name: k for k, name in enumerate(vocab)}
        truth = []
        for where, raw in labels:
            name = label_string(raw)
            if name not in index:
                raise UserError(f"{where}: label {name!r} is not one the classifier knows ({vocab})")
            truth.append(index[name])
        conf = confusion_matrix(pred, torch.tensor(truth), len(vocab))
        print(f"{len(truth)} labeled texts in {args.file} ({source}): accuracy {accuracy(conf):.4f} "
              f"macro-F1 {macro_f1(conf):.4f}", file=sys.stderr)
    return 0


def _write_predictions(out, fmt: str, texts: list[str], vocab: list[str], probs, pred) -> None:
    """One line per text: tsv (label, probability, text) or jsonl (with every label's probability)."""
    import json

    for i, text in enumerate(texts):
        label, p = vocab[int(pred[i])], float(probs[i, pred[i]])
        if fmt == "jsonl":
            row = {"text": text, "label": label, "probability": round(p, 6),
                   "probabilities": {name: round(float(probs[i, k]), 6) for k, name in enumerate(vocab)}}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            out.write(f"{label}\t{p:.4f}\t{' '.join(text.split())}\n")
    out.flush()
