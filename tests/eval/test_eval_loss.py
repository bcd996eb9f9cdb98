"""Validation loss, sliding-window perplexity and bits per byte against transformers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gpt2kit.eval.loss import all_reduce_loss, batch_windows, document_windows, mean_loss, sliding_windows
from gpt2kit.tokenizer import EOT_ID, get_tokenizer

TEXT = (
    "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money in my purse, "
    "and nothing particular to interest me on shore, I thought I would sail about a little and see the watery "
    "part of the world. It is a way I have of driving off the spleen and regulating the circulation. "
    "Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November in my soul."
)


def hf_token_nlls(hf_model, ids, context: int):
    """nll of every token ids[p], p >= 1, given at most ``context`` tokens before it (transformers alone)."""
    out = []
    for p in range(1, len(ids)):
        ctx = ids[max(0, p - context) : p]
        with torch.no_grad():
            logits = hf_model(torch.tensor([ctx])).logits[0, -1].double()  # (V,)
        out.append(-torch.log_softmax(logits, dim=-1)[ids[p]].item())
    return out


def test_mean_loss_ignores_minus_100_and_matches_transformers(gk_model, hf_model):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 50257, (3, 16), generator=g)  # (B, T)
    y = torch.randint(0, 50257, (3, 16), generator=g)  # (B, T)
    y[0, :5] = -100
    y[2, 10:] = -100
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    got = mean_loss(gk_model, batches, device="cpu", count_bytes=True)
    with torch.no_grad():
        logits = hf_model(x).logits  # (B, T, V)
    want = F.cross_entropy(logits.reshape(-1, 50257).double(), y.reshape(-1), ignore_index=-100)
    assert got["tokens"] == int((y != -100).sum()) == 37
    assert got["loss"] == pytest.approx(want.item(), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(want.item()), rel=1e-5)
    from gpt2kit.eval.loss import token_byte_lengths

    n_bytes = sum(len(get_tokenizer().decode_bytes([t])) for t in y[y != -100].tolist())
    assert got["bytes"] == n_bytes == int(token_byte_lengths()[y[y != -100]].sum())
    assert got["bits_per_byte"] == pytest.approx(got["nll_sum"] / math.log(2) / n_bytes)
    again = all_reduce_loss(got)  # not distributed: unchanged
    assert again["loss"] == pytest.approx(got["loss"]) and again["tokens"] == got["tokens"]


@pytest.mark.slow  # a whole run or a transformers comparison
@pytest.mark.parametrize("stride", [64, 1])
def test_sliding_window_matches_transformers(gk_model, hf_model, stride):
    """stride = block: independent chunks; stride 1: every token sees min(p, block) tokens of context."""
    ids = [EOT_ID] + get_tokenizer().encode(TEXT)
    n = len(ids)
    assert n > 64
    if stride == 64:
        ref = []
        for start in range(0, n - 1, 64):  # chunk inputs ids[start:start+64], targets shifted by one
            ref += hf_token_nlls(hf_model, ids[start : start + 65], context=64)
    else:
        ref = hf_token_nlls(hf_model, ids, context=64)
    got = mean_loss(gk_model, batch_windows(sliding_windows(ids, 64, stride), 7), device="cpu", count_bytes=True)
    assert got["tokens"] == n - 1 == len(ref)
    assert got["nll_sum"] == pytest.approx(sum(ref), rel=1e-5)
    # every byte of the text is scored (the <|endoftext|> prefix makes the first token a target too)
    assert got["bytes"] == len(TEXT.encode("utf-8"))
    assert got["bits_per_byte"] == pytest.approx(sum(ref) / math.log(2) / len(TEXT.encode("utf-8")), rel=1e-5)


@pytest.mark.parametrize(
    "n, block, stride", [(2, 4, 1), (5, 4, 4), (100, 16, 5), (100, 16, 16), (17, 16, 8), (18, 16, 3)]
)
def test_every_position_scored_exactly_once(n, block, stride):
    ids = list(range(1000, 1000 + n))
    seen = []
    for inp, tgt in sliding_windows(ids, block, stride):
        assert 1 <= len(inp) <= block and len(inp) == len(tgt)
        start = ids.index(inp[0])
        assert inp == ids[start : start + len(inp)] and all(t in (-100, ids[start + 1 + j]) for j, t in enumerate(tgt))
        scored = [start + 1 + j for j, t in enumerate(tgt) if t != -100]
        # the scored targets are the window's last ones: each sees at least block - stride tokens of context
        assert scored == list(range(start + len(tgt) - len(scored) + 1, start + len(tgt) + 1))
        seen += scored
    assert seen == list(range(1, n))


def test_documents_batching_and_padding_do_not_change_loss(gk_model):
    tok = get_tokenizer()
    docs = [tok.encode(TEXT[:150]), tok.encode(TEXT[150:]), [], tok.encode("Hello world")]
    results = [
        mean_loss(gk_model, batch_windows(document_windows(docs, 64, 32), bs), device="cpu", count_bytes=True)
        for bs in (1, 3, 64)
    ]
    for r in results[1:]:
        assert r["tokens"] == results[0]["tokens"] == sum(len(d) for d in docs)
        assert r["nll_sum"] == pytest.approx(results[0]["nll_sum"], rel=1e-5)
        assert r["bytes"] == len((TEXT + "Hello world").encode())


def test_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        list(sliding_windows([1, 2, 3], 4, 5))
