"""HellaSwag scoring against an independent computation with transformers on a tiny random GPT-2."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2kit.errors import UserError
from gpt2kit.eval.hellaswag import hellaswag_path, load_examples, score_hellaswag
from gpt2kit.tokenizer import get_tokenizer


def hf_ending_losses(hf_model, ctx: str, endings, block_size: int = 64):
    """(total nll, mean nll per token, nll per byte) of each ending, computed with transformers alone."""
    tok = get_tokenizer()
    out = []
    for e in endings:
        c, t = tok.encode(ctx), tok.encode(" " + e)
        c = c[-(block_size + 1 - len(t)):]  # the documented left truncation
        ids = torch.tensor([c + t])
        with torch.no_grad():
            logp = torch.log_softmax(hf_model(ids[:, :-1]).logits.double(), dim=-1)[0]  # (T, V)
        tgt = ids[0, len(c):]
        nll = -logp[len(c) - 1 :, :].gather(1, tgt[:, None]).sum().item()
        out.append((nll, nll / len(t), nll / len(e.encode("utf-8"))))
    return out


def expected_figures(hf_model, examples):
    """acc, acc_norm, acc_norm_bytes from the transformers reference."""
    hits = [0, 0, 0]
    for ex in examples:
        losses = hf_ending_losses(hf_model, ex.ctx, ex.endings)
        for k in range(3):
            pick = min(range(len(losses)), key=lambda i: losses[i][k])
            hits[k] += pick == ex.label
    n = len(examples)
    return {"acc": hits[0] / n, "acc_norm": hits[1] / n, "acc_norm_bytes": hits[2] / n, "n": n}


@pytest.mark.slow  # a whole run or a transformers comparison
def test_matches_transformers_and_batching_does_not_change_scores(tmp_path, gk_model, hf_model, write_hellaswag):
    path = write_hellaswag(tmp_path / "hs.jsonl")
    examples = load_examples(path)
    want = expected_figures(hf_model, examples)
    for bs in (1, 4, 16):
        assert score_hellaswag(gk_model, examples, device="cpu", batch_size=bs) == want, bs


def test_acc_and_acc_norm_differ_where_they_should(tmp_path, gk_model, hf_model, write_hellaswag):
    """Label each example with its lowest-total-loss ending: acc is then 1 and acc_norm is lower exactly
    where the lowest mean-per-token loss picks another (longer or shorter) ending."""

    path = write_hellaswag(tmp_path / "hs0.jsonl")
    examples = load_examples(path)
    labels, norm_agree, bytes_agree = [], 0, 0
    for ex in examples:
        losses = hf_ending_losses(hf_model, ex.ctx, ex.endings)
        by_total = min(range(4), key=lambda i: losses[i][0])
        labels.append(by_total)
        norm_agree += min(range(4), key=lambda i: losses[i][1]) == by_total
        bytes_agree += min(range(4), key=lambda i: losses[i][2]) == by_total
    assert norm_agree < len(examples), "the examples must contain a case where the normalisations disagree"
    path = write_hellaswag(tmp_path / "hs1.jsonl", labels=labels)
    got = score_hellaswag(gk_model, load_examples(path), device="cpu", batch_size=3)
    assert got["acc"] == 1.0
    assert got["acc_norm"] == norm_agree / len(examples) < 1.0
    assert got["acc_norm_bytes"] == bytes_agree / len(examples)


def test_limit_reads_the_first_examples(tmp_path, gk_model, write_hellaswag):
    path = write_hellaswag(tmp_path / "hs.jsonl")
    full = load_examples(path)
    first = load_examples(path, limit=3)
    assert first == full[:3]
    assert score_hellaswag(gk_model, first, device="cpu", batch_size=2) == score_hellaswag(
        gk_model, full[:3], device="cpu", batch_size=8
    )


def test_long_context_is_left_truncated(tmp_path, gk_model, hf_model, write_hellaswag):
    long_ctx = " ".join(["the quick brown fox jumps over the lazy dog."] * 20) + " Then it"
    rows = [{"ctx": long_ctx, "endings": ["sleeps.", "runs away into the woods.", "barks.", "eats a big bone."]}]
    examples = load_examples(write_hellaswag(tmp_path / "long.jsonl", rows=rows, labels=[2]))
    assert len(get_tokenizer().encode(long_ctx)) > 64
    assert score_hellaswag(gk_model, examples, device="cpu") == expected_figures(hf_model, examples)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"ctx": "x", "label": 0}, "missing 'endings'"),
        ({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4}, "out of range"),
        ({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": -1}, "out of range"),
        ({"ctx": "x", "endings": "abcd", "label": 0}, "'endings' must be a list"),
        ({"endings": ["a", "b"], "label": 0}, "missing 'ctx'"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, obj, message):
    good = {"ctx": "A cat", "endings": ["sits.", "runs.", "eats.", "sleeps."], "label": 1}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(UserError) as e:
        load_examples(path)
    assert f"{path}:2:" in str(e.value) and message in str(e.value)


def test_invalid_json_and_empty_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ctx": "a", \n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: not valid JSON"):
        load_examples(path)
    path.write_text("\n")
    with pytest.raises(UserError, match="no examples"):
        load_examples(path)


def test_data_path_download_and_offline_error(tmp_path, write_hellaswag):
    with pytest.raises(UserError, match="--data .*no such file"):
        hellaswag_path(str(tmp_path / "missing.jsonl"))
    src = write_hellaswag(tmp_path / "official.jsonl")
    cache = tmp_path / "cache"
    got = hellaswag_path(None, cache_dir=cache, url=src.as_uri())  # the real download code, from a local URL
    assert got == cache / "hellaswag_val.jsonl" and got.read_bytes() == src.read_bytes()
    assert hellaswag_path(None, cache_dir=cache, url="http://127.0.0.1:9/unused") == got  # cached: no network
    with pytest.raises(UserError, match="pass --data FILE"):
        hellaswag_path(None, cache_dir=tmp_path / "empty", url="http://127.0.0.1:9/hellaswag_val.jsonl")
    assert not (tmp_path / "empty" / "hellaswag_val.jsonl").exists()
