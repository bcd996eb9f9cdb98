"""The one multiple-choice scorer: HellaSwag, ARC, MMLU, PIQA and Winogrande all run through it.

A question is a few scored rows, one per choice: each is (context tokens, continuation tokens) and only the
continuation is scored (its summed log-likelihood). The choice picked is the one with the highest
log-likelihood, raw or normalised:

- ``acc``: raw sum;
- ``acc_per_token``: divided by the continuation's tokens (build-nanogpt's HellaSwag ``acc_norm``);
- ``acc_per_char``: divided by the choice's length in characters (lm-evaluation-harness ``acc_norm``,
  ``len(choice)`` without the delimiter before it);
- ``acc_per_byte``: divided by the choice's UTF-8 bytes.

Ties go to the first choice, as ``numpy.argmax`` does in the harness. Rows longer than the model's context
are left-truncated (the context's first tokens are dropped) and counted in ``truncated``, never silently.
Questions are scored on the sharded driver of :mod:`gpt2kit.eval.scoring`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpt2kit.distributed import all_reduce_sum
from gpt2kit.errors import UserError
from gpt2kit.eval.questions import ChoiceItem
from gpt2kit.eval.scoring import fit_row, model_block_size, scored_items
from gpt2kit.tokenizer import EOT_ID

RULES = ("acc", "acc_per_token", "acc_per_char", "acc_per_byte")
"""The ways of picking a choice, in the order :func:`score_choices` reports them."""


def fit_items(items: Sequence[ChoiceItem], block_size: int, eot: int = EOT_ID) -> tuple[list[ChoiceItem], int]:
    """``items`` with every row fitted to ``block_size`` (see :func:`fit_row`; an empty context becomes
    ``[eot]``), and how many were truncated.

    A choice whose continuation alone is longer than the context is a UserError naming the question.
    """
    fitted, truncated = [], 0
    for item in items:
        rows = []
        for ctx, cont in item.rows:
            if not cont:
                raise UserError(f"{item.where}: a choice encodes to no tokens; every choice needs some text")
            row = fit_row(ctx, cont, block_size, eot)
            if row is None:
                raise UserError(
                    f"{item.where}: a choice is {len(cont)} tokens, longer than the model's context "
                    f"(block_size {block_size}); evaluate with a model of a longer context"
                )
            rows.append(row)
        truncated += any(len(r[0]) < len(ctx) for r, (ctx, _) in zip(rows, item.rows))
        fitted.append(ChoiceItem(tuple(rows), item.gold, item.chars, item.nbytes, item.where))
    return fitted, truncated


@torch.no_grad()
def score_choices(
    model: torch.nn.Module,
    items: Sequence[ChoiceItem],
    *,
    device: torch.device | str,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    desc: str = "choice",
    eot: int = EOT_ID,
) -> dict:
    """Accuracy of ``model`` on ``items`` under every rule of :data:`RULES` (fractions), plus ``n`` (questions)
    and ``truncated`` (questions with a left-truncated row).

    ``batch_size`` questions (all their choices) share a forward pass. With ``world_size > 1`` this rank
    scores its share and, when torch.distributed is initialised, the counts are summed over ranks so every
    rank returns the global figures. ``eot`` is the end-of-text id of the tokenizer the items were encoded
    with (it pads rows and stands for an empty context).
    """
    items, truncated = fit_items(items, model_block_size(model), eot)
    hits = [0] * len(RULES)
    scored = scored_items(model, items, lambda it: list(it.rows), batch_size=batch_size, rank=rank,
                          world_size=world_size, device=device, autocast_dtype=autocast_dtype, desc=desc,
                          progress=progress, pad=eot)
    for item, nll, tokens, _ in scored:  # nll: (k,) summed loss of each of the k choices
        divisors = (torch.ones_like(nll), tokens.double(), torch.tensor(item.chars, dtype=torch.float64),
                    torch.tensor(item.nbytes, dtype=torch.float64))
        for r, div in enumerate(divisors):
            hits[r] += int(int((-nll / div).argmax()) == item.gold)
    n = len(items[rank::world_size])
    if world_size > 1:
        *hits, n = (int(round(v)) for v in all_reduce_sum([*hits, n], device))
    out = {rule: (h / n if n else float("nan")) for rule, h in zip(RULES, hits)}
    return {**out, "n": n, "truncated": truncated}
