"""Which tokens of a corpus are validation: the train/val split plan of ``gpt2kit prepare``.

Whole documents go to ``val`` when they can give the asked share within ``SPLIT_TOLERANCE``; where they
cannot (one file, a few or very unequal documents), each long document gives its tail to ``val``, as
nanoGPT's 90/10 cut of a single text. ``--val-tokens`` instead takes the first tokens of the corpus, as
build-nanogpt's first shard. The plan is deterministic given the document order and the reference size.
"""

from __future__ import annotations

from typing import Any

DEFAULT_VAL_FRACTION = 0.01
"""The default val share for large corpora; smaller ones get up to ``MAX_DEFAULT_VAL_FRACTION``."""
MAX_DEFAULT_VAL_FRACTION = 0.1  # nanoGPT's and Raschka's share for a single text
DEFAULT_MIN_VAL_TOKENS = 50_000  # the default share gives at least this many val tokens, up to the 10% above
SPLIT_TOLERANCE = 0.1  # the val share lands within 10% (relative) of the asked share


def default_val_fraction(corpus_tokens: int) -> float:
    """The val share used when none is asked: 1%, raised to give 50,000 tokens, at most 10%."""
    if corpus_tokens <= 0:
        return MAX_DEFAULT_VAL_FRACTION
    return max(DEFAULT_VAL_FRACTION, min(MAX_DEFAULT_VAL_FRACTION, DEFAULT_MIN_VAL_TOKENS / corpus_tokens))


def _whole_document_share(lengths: list[int], fraction: float) -> float:
    """The val share that whole documents alone give under :meth:`SplitPlanner.pieces`' rule."""
    total = val = 0
    for n in lengths:
        total += n
        if fraction * total - val >= n / 2:
            val += n
    return val / max(total, 1)


class SplitPlanner:
    """Decides which tokens of each document are validation; deterministic given the order and ``reference``.

    ``reference`` is the size of the held-back head of the corpus (the whole corpus when it fits), so a
    re-run, and a resumed run that reads it back from its checkpoint, decide exactly alike.
    """

    def __init__(self, val_tokens: int | None, val_fraction: float | None, reference: int,
                 head_lengths: list[int] | None, whole_only: bool | None = None) -> None:
        self.val_tokens, self.reference = val_tokens, reference
        self.asked_default = val_tokens is None and val_fraction is None
        self.fraction = default_val_fraction(reference) if self.asked_default else (val_fraction or 0.0)
        if whole_only is None:  # a resumed run passes what the first run decided on the head
            # whole documents only, when they land the share within the tolerance on the head of the corpus
            share = _whole_document_share(head_lengths or [], self.fraction) if self.fraction > 0 else 0.0
            whole_only = self.fraction > 0 and abs(share - self.fraction) <= SPLIT_TOLERANCE * self.fraction
        self.whole_only = whole_only

    def pieces(self, totals: dict[str, int], n: int) -> list[tuple[str, int, int]]:
        """(split, start, end) token ranges of the next document of ``n`` tokens, in document order."""
        if self.val_tokens is not None:
            # the first val_tokens tokens of the corpus, cut inside a document as build-nanogpt's first shard
            take = min(n, max(0, self.val_tokens - totals["val_tokens"]))
            return [p for p in (("val", 0, take), ("train", take, n)) if p[1] < p[2]]
        f = self.fraction
        if f <= 0:
            return [("train", 0, n)]
        owed = f * (totals["tokens"] + n) - totals["val_tokens"]
        # a document so long that, whole, it would throw the share off by more than the tolerance
        long = n > 2 * SPLIT_TOLERANCE * f * max(self.reference, totals["tokens"] + n)
        if long and (not self.whole_only or totals["tokens"] + n > self.reference):
            take = min(n, max(0, round(owed)))  # its tail, so that val is back at the asked share
            return [p for p in (("train", 0, n - take), ("val", n - take, n)) if p[1] < p[2]]
        # whole documents, spread evenly: one goes to val once val is owed at least half of it
        return [("val", 0, n)] if owed >= n / 2 else [("train", 0, n)]

    def record(self, totals: dict[str, int]) -> dict[str, Any]:
        """The manifest's ``split`` record: how the corpus was split, the asked and the actual share."""
        tokens, val = totals["tokens"], totals["val_tokens"]
        if self.val_tokens is not None:
            method, asked = "first_tokens", {"asked_tokens": self.val_tokens}
        else:
            cut = totals.get("split_documents", 0)
            method = ("none" if self.fraction <= 0 else "whole_documents" if cut == 0
                      else "document_tails" if totals["val_documents"] == cut else "whole_documents+document_tails")
            asked = {"asked_share": self.fraction, "default": self.asked_default}
        return {"method": method, **asked, "actual_share": round(val / max(tokens, 1), 6),
                "val_tokens": val, "documents_split": totals.get("split_documents", 0)}

    def describe(self, totals: dict[str, int]) -> str:
        """One line saying how the corpus was split."""
        rec = self.record(totals)
        actual = f"val {rec['actual_share']:.2%} of {totals['tokens']:,} tokens"
        if rec["method"] == "first_tokens":
            return f"{actual}: the first {self.val_tokens:,} tokens (--val-tokens)"
        asked = f"asked {self.fraction:.2%}" + (" by default for this corpus size" if self.asked_default else "")
        how = {"none": "no val split (--val-fraction 0)",
               "whole_documents": f"whole documents ({totals['val_documents']:,} of {totals['documents']:,})",
               "document_tails": f"the tail of each of {rec['documents_split']:,} long document(s), whole documents "
                                 "could not give that share",
               "whole_documents+document_tails": f"the tails of {rec['documents_split']:,} long document(s) and "
                                                 f"{totals['val_documents'] - rec['documents_split']:,} whole "
                                                 "document(s), whole documents alone could not give that share"}
        return f"{actual} ({asked}): {how[rec['method']]}"
