"""LAMBADA last-word prediction: accuracy and the perplexity of the last word.

Each line of the JSONL file has a ``text``; its last word is what follows the last space. The model
reads the text before that space and must reproduce the word (with its leading space) token by
token, in the model's own tokenizer: the target is a word, not a token (under a small trained vocabulary
it is often several tokens, all of them scored). ``acc`` counts the examples where greedy decoding
reproduces every token of the word (argmax at every position of the word, given the context and the
word's earlier tokens — exactly what greedy generation yields while it is still right). ``perplexity``
is ``exp`` of the mean negative log-likelihood of the whole last word per example
(lm-evaluation-harness's ``lambada_openai`` perplexity); ``token_perplexity`` divides by tokens instead.

OpenAI's LAMBADA test file (the one GPT-2 was evaluated on) is downloaded from its official location
when no ``--data`` is given. Batched and sharded across ranks like HellaSwag.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2kit.distributed import all_reduce_sum
from gpt2kit.errors import UserError
from gpt2kit.eval.download import cache_root, resolve_data_file
from gpt2kit.eval.scoring import fit_row, model_block_size, safe_exp, scored_items
from gpt2kit.io import iter_jsonl
from gpt2kit.tokenizer import Tokenizer, get_tokenizer

LAMBADA_URL = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"
LAMBADA_FILE = "lambada_test.jsonl"


@dataclass(frozen=True)
class LambadaExample:
    """One passage split into a context and its last word."""

    context: str
    """The text before the last space."""
    word: str
    """The last word, without the space before it."""
    line: int
    """1-based line number in the source file."""


def load_lambada(path: str | os.PathLike, limit: int | None = None, text_field: str = "text") -> list[LambadaExample]:
    """The first ``limit`` (default all) passages of a LAMBADA JSONL file; errors name file and line."""
    path = Path(path)
    out: list[LambadaExample] = []
    for lineno, obj in iter_jsonl(path, "LAMBADA JSONL"):
        if limit is not None and len(out) >= limit:
            break
        if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
            raise UserError(f"{path}:{lineno}: expected a JSON object with a string {text_field!r} field")
        text = obj[text_field].rstrip()
        context, sep, word = text.rpartition(" ")
        if not sep or not context or not word:
            raise UserError(f"{path}:{lineno}: {text_field!r} needs at least two space-separated words")
        out.append(LambadaExample(context=context, word=word, line=lineno))
    if not out:
        raise UserError(f"{path}: no passages found; expected JSONL with a {text_field!r} field per line")
    return out


def lambada_path(data: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None,
                 url: str | None = None) -> Path:
    """The ``--data`` file when given, else OpenAI's LAMBADA test file (``url``, default
    :data:`LAMBADA_URL`), downloaded once into ``cache_dir`` (default ``<cache>/lambada``)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "lambada"
    return resolve_data_file(data, url=url or LAMBADA_URL, filename=LAMBADA_FILE, what="LAMBADA test data",
                             cache_dir=cache_dir)


def lambada_row(ex: LambadaExample, tokenizer: Tokenizer, block_size: int) -> tuple[list[int], list[int]]:
    """(context tokens, tokens of ``" " + word``) of a passage in ``tokenizer``, the context left-truncated to fit."""
    row = fit_row(tokenizer.encode(ex.context), tokenizer.encode(" " + ex.word), block_size, tokenizer.eot)
    if row is None:
        raise UserError(f"LAMBADA passage at line {ex.line}: the last word does not fit block_size {block_size}")
    return row


@torch.no_grad()
def score_lambada(
    model: torch.nn.Module,
    examples: Sequence[LambadaExample],
    *,
    device: torch.device | str,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    tokenizer: Tokenizer | None = None,
) -> dict:
    """``{"acc", "perplexity", "token_perplexity", "n", "tokens"}`` of ``model`` on ``examples``.

    The passages are encoded in ``tokenizer``, the model's (GPT-2's by default); ``tokens`` counts the last
    words' tokens. ``batch_size`` passages share a forward pass; with ``world_size > 1`` and torch.distributed
    initialised, ranks score disjoint passages and every rank returns the global figures.
    """
    block_size = model_block_size(model)
    tok = tokenizer or get_tokenizer()
    correct, nll_sum, tokens = 0, 0.0, 0
    scored = scored_items(model, examples, lambda ex: [lambada_row(ex, tok, block_size)], batch_size=batch_size,
                          rank=rank, world_size=world_size, device=device, autocast_dtype=autocast_dtype,
                          desc="lambada", progress=progress, pad=tok.eot)
    for _, nll, n_tok, greedy in scored:  # each (1,): the passage's one row
        correct += int(greedy.sum())
        nll_sum += float(nll.sum())
        tokens += int(n_tok.sum())
    n = len(examples[rank::world_size])
    if world_size > 1:
        correct_f, nll_sum, tokens_f, n_f = all_reduce_sum([correct, nll_sum, tokens, n], device)
        correct, tokens, n = int(round(correct_f)), int(round(tokens_f)), int(round(n_f))
    if n == 0:
        return {"acc": float("nan"), "perplexity": float("nan"), "token_perplexity": float("nan"), "n": 0, "tokens": 0}
    return {
        "acc": correct / n,
        "perplexity": safe_exp(nll_sum / n),
        "token_perplexity": safe_exp(nll_sum / tokens),
        "n": n,
        "tokens": tokens,
    }
