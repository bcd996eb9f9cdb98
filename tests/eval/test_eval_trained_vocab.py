"""Every ``gpt2kit eval`` task on a model over a trained 300-token vocabulary: the text is encoded, padded and
counted in the model's own tokenizer (a GPT-2 id >= 300 would crash its embedding, so a run that passes used it),
bits per byte is nats / ln 2 / UTF-8 bytes, and data prepared in another vocabulary is refused in one line."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from test_eval_choice import ARC_ROWS, MMLU_ROWS, PIQA_ROWS, ROWS, WINOGRANDE_ROWS, write_rows

from gpt2kit.checkpoint import load_model
from gpt2kit.cli import main
from gpt2kit.eval.choice import score_choices
from gpt2kit.eval.hellaswag import load_examples, score_hellaswag
from gpt2kit.eval.lambada import load_lambada, score_lambada
from gpt2kit.eval.tasks import TASKS, choice_items, get_task, load_questions

TEXT = "Call me Ishmael. Emoji 👋🏽 and the naïve café; नमस्ते."
"""Short enough for one 64-token window; its multi-byte characters make bytes differ from characters."""


def run_json(capsys, argv):
    """Run the CLI with --json; stdout must be exactly one JSON object."""
    assert main(argv + ["--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    return json.loads(out)


def eval_argv(task, ckpt, data, tmp_path, *more):
    return ["eval", task, "--checkpoint", str(ckpt), "--data", str(data), "--device", "cpu",
            "--out", str(tmp_path / f"{task}.json"), *more]


@pytest.fixture
def model(trained_vocab_checkpoint):
    return load_model(str(trained_vocab_checkpoint)).model


def test_gpt2_tokens_crash_this_model(model):
    """What the other tests rely on: GPT-2's ids do not fit the model, so scoring that used them would fail."""
    with pytest.raises(IndexError):
        model(torch.tensor([[50256, 400]]))


def test_loss_bpb_of_a_text_is_nats_over_ln2_over_utf8_bytes(tmp_path, capsys, trained_vocab_checkpoint,
                                                            trained_tokenizer, model):
    tok = trained_tokenizer
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    rec = run_json(capsys, eval_argv("loss", trained_vocab_checkpoint, tmp_path / "t.txt", tmp_path))
    ids = tok.encode(TEXT)
    assert len(ids) < 64 and rec["tokens"] == len(ids)
    with torch.no_grad():  # one window: <|endoftext|> then the text; every token of the text scored
        logits, _ = model(torch.tensor([[tok.eot] + ids[:-1]]))
        logp = torch.log_softmax(logits.double(), dim=-1)[0]  # (T, V)
    nats_per_token = -float(logp.gather(1, torch.tensor(ids)[:, None]).mean())
    n_bytes = len(TEXT.encode("utf-8"))
    assert n_bytes > len(TEXT) and rec["bytes"] == n_bytes
    assert rec["loss"] == pytest.approx(nats_per_token, rel=1e-5)
    want = nats_per_token * len(ids) / math.log(2) / n_bytes
    assert rec["bpb"] == rec["bits_per_byte"] == pytest.approx(want, rel=1e-5)
    assert rec["model"]["tokenizer"] == tok.name


def test_loss_on_a_long_jsonl_pads_with_the_models_eot(tmp_path, capsys, trained_vocab_checkpoint,
                                                        trained_tokenizer):
    docs = [TEXT * 4, "User: What is 2 + 3?\nAssistant: 2 + 3 = 5.", TEXT]  # windows of unequal length
    jl = write_rows(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    rec = run_json(capsys, eval_argv("loss", trained_vocab_checkpoint, jl, tmp_path, "--stride", "16",
                                     "--batch-size", "4"))
    assert rec["tokens"] == sum(len(trained_tokenizer.encode(d)) for d in docs)
    assert rec["bytes"] == len("".join(docs).encode("utf-8"))  # every token scored once, its bytes counted
    assert rec["bpb"] == pytest.approx(rec["loss"] * rec["tokens"] / math.log(2) / rec["bytes"], rel=1e-9)


@pytest.fixture
def trained_data(tmp_path, trained_tokenizer):
    """A prepared data directory in the trained tokenizer."""
    from gpt2kit.data.prepare import prepare

    src = write_rows(tmp_path / "src.jsonl", [{"text": f"{i}: {TEXT * 3}"} for i in range(20)])
    out = tmp_path / "prepared"
    prepare([str(src)], out, tokenizer=trained_tokenizer.path, val_fraction=0.2, workers=1, progress=False)
    return out


def test_loss_on_data_prepared_with_the_models_tokenizer(tmp_path, capsys, trained_vocab_checkpoint, trained_data):
    rec = run_json(capsys, eval_argv("loss", trained_vocab_checkpoint, trained_data, tmp_path, "--batch-size", "2"))
    assert rec["tokens"] > 0 and rec["data"]["split"] == "val"
    assert rec["bpb"] == rec["bits_per_byte"] == pytest.approx(
        rec["loss"] * rec["tokens"] / math.log(2) / rec["bytes"], rel=1e-9)
    # the table shows bits_per_byte once (bpb is its second name in the record)
    assert main(eval_argv("loss", trained_vocab_checkpoint, trained_data, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "bits_per_byte" in out and "\nbpb " not in out


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert cap.out == "" and lines[-1].startswith("gpt2kit eval: error:"), cap.err
    return lines[-1]


def test_data_in_another_tokenizer_is_refused_in_one_line(tmp_path, capsys, trained_vocab_checkpoint,
                                                          trained_tokenizer, trained_data, write_prepared_dir,
                                                          tiny_config):
    import numpy as np

    from gpt2kit import GPT
    from gpt2kit.checkpoint import model_state_dict, save_checkpoint
    from gpt2kit.tokenizer import write_tokenizer_files

    gpt2_data = write_prepared_dir(tmp_path / "gpt2_data", np.arange(2000, 2300))
    line = _one_error_line(capsys, eval_argv("loss", trained_vocab_checkpoint, gpt2_data, tmp_path))
    assert f"--data {gpt2_data}: prepared with tokenizer 'gpt2'" in line
    assert f"--checkpoint {trained_vocab_checkpoint} uses '{trained_tokenizer.name}'" in line
    assert "`gpt2kit prepare SOURCE --tokenizer " in line
    # with the run's tokenizer copy beside the checkpoint, the fix names it
    write_tokenizer_files(trained_tokenizer, trained_vocab_checkpoint.parent / "tokenizer")
    line = _one_error_line(capsys, eval_argv("loss", trained_vocab_checkpoint, gpt2_data, tmp_path))
    assert f"--tokenizer {trained_vocab_checkpoint.parent / 'tokenizer'} --out DIR`" in line
    # and a GPT-2 model refuses data in the trained vocabulary
    gpt2_model = tmp_path / "gpt2_model.pt"
    save_checkpoint(gpt2_model, {"model_config": tiny_config.to_dict(), "model": model_state_dict(GPT(tiny_config))})
    line = _one_error_line(capsys, eval_argv("loss", gpt2_model, trained_data, tmp_path))
    assert f"prepared with tokenizer '{trained_tokenizer.name}' (vocab_size 300)" in line
    assert "uses 'gpt2' (vocab_size 50257)" in line and "--tokenizer gpt2 --out DIR`" in line


def test_hellaswag(tmp_path, capsys, trained_vocab_checkpoint, trained_tokenizer, model, write_hellaswag):
    data = write_hellaswag(tmp_path / "hs.jsonl")
    rec = run_json(capsys, eval_argv("hellaswag", trained_vocab_checkpoint, data, tmp_path, "--batch-size", "4"))
    want = score_hellaswag(model, load_examples(data), tokenizer=trained_tokenizer, device="cpu")
    assert {k: rec[k] for k in want} == want and want["n"] == 6


def test_lambada_targets_the_last_words_tokens(tmp_path, capsys, trained_vocab_checkpoint, trained_tokenizer,
                                               model):
    tok = trained_tokenizer
    texts = ["Call me Ishmael. Some years ago, never mind how long precisely", "the naïve café; नमस्ते दुनिया",
             "Assistant: 2 + 3 = 5. Emoji 👋🏽"]
    data = write_rows(tmp_path / "lambada.jsonl", [{"text": t} for t in texts])
    rec = run_json(capsys, eval_argv("lambada", trained_vocab_checkpoint, data, tmp_path))
    words = [t.rpartition(" ")[2] for t in texts]
    n_tok = [len(tok.encode(" " + w)) for w in words]
    assert rec["n"] == 3 and rec["tokens"] == sum(n_tok) and max(n_tok) > 1  # a word of several tokens
    assert {k: rec[k] for k in ("acc", "perplexity", "tokens")} == pytest.approx(
        {k: v for k, v in score_lambada(model, load_lambada(data), device="cpu", tokenizer=tok).items()
         if k in ("acc", "perplexity", "tokens")})
    nll = 0.0  # by hand: every token of each ' word' after its context
    with torch.no_grad():
        for t in texts:
            ctx, _, w = t.rpartition(" ")
            c, x = tok.encode(ctx), tok.encode(" " + w)
            logp = torch.log_softmax(model(torch.tensor([c + x[:-1]]))[0].double(), dim=-1)[0, len(c) - 1:]
            nll -= float(logp.gather(1, torch.tensor(x)[:, None]).sum())
    assert rec["perplexity"] == pytest.approx(math.exp(nll / 3), rel=1e-5)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_choice_tasks(tmp_path, capsys, trained_vocab_checkpoint, trained_tokenizer, model, task):
    data = write_rows(tmp_path / "rows.jsonl", ROWS[task])
    rec = run_json(capsys, eval_argv(task, trained_vocab_checkpoint, data, tmp_path))
    items = choice_items(load_questions(get_task(task), data), trained_tokenizer)
    want = score_choices(model, items, device="cpu", eot=trained_tokenizer.eot)
    assert rec["n"] == len(ROWS[task]) and rec["acc"] == want["acc"]
    assert rec.get("acc_norm", want["acc_per_char"]) == want["acc_per_char"]


def test_suite(tmp_path, capsys, trained_vocab_checkpoint, write_hellaswag):
    files = {"hellaswag": write_hellaswag(tmp_path / "hs.jsonl"),
             **{t: write_rows(tmp_path / f"{t}.jsonl", rows) for t, rows in
                (("arc-easy", ARC_ROWS), ("mmlu", MMLU_ROWS), ("piqa", PIQA_ROWS), ("winogrande", WINOGRANDE_ROWS))}}
    argv = ["eval", "suite", "--checkpoint", str(trained_vocab_checkpoint), "--device", "cpu", "--tasks",
            ",".join(files), "--out", str(tmp_path / "suite.json")]
    for task, path in files.items():
        argv += ["--data", f"{task}={path}"]
    rec = run_json(capsys, argv)
    assert set(rec["tasks"]) == set(files) and math.isfinite(rec["score"])


def test_lm_eval_adapter_encodes_in_the_models_tokenizer(trained_vocab_checkpoint, trained_tokenizer, model):
    pytest.importorskip("lm_eval")
    from gpt2kit.eval.harness import GPT2KitLM

    tok = trained_tokenizer
    lm = GPT2KitLM(str(trained_vocab_checkpoint), device="cpu", batch_size=2)
    assert lm.tok.name == tok.name

    def reqs(*args):
        return [SimpleNamespace(args=a) for a in args]

    ll = lm.loglikelihood(reqs(("Call me", " Ishmael."), ("", "café"), ("Emoji", " 👋🏽 and the naïve")),
                          disable_tqdm=True)
    c, x = tok.encode("Call me"), tok.encode("Call me Ishmael.")[len(tok.encode("Call me")):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([c + x[:-1]]))[0].double(), dim=-1)[0, len(c) - 1:]
    assert ll[0][0] == pytest.approx(float(logp.gather(1, torch.tensor(x)[:, None]).sum()), rel=1e-5)
    text = TEXT * 3  # more than one 64-token window
    with torch.no_grad():
        ids = tok.encode(TEXT)
        logp = torch.log_softmax(model(torch.tensor([[tok.eot] + ids[:-1]]))[0].double(), dim=-1)[0]
    rolling = lm.loglikelihood_rolling(reqs((text,), (TEXT,)), disable_tqdm=True)
    assert len(tok.encode(text)) > 64 and rolling[0] < 0
    assert rolling[1] == pytest.approx(float(logp.gather(1, torch.tensor(ids)[:, None]).sum()), rel=1e-5)
    outs = lm.generate_until(reqs(("Call me", {"until": ["\n"], "max_gen_toks": 5}),
                                  ("The naïve", {"until": ["\n"], "max_gen_toks": 5})), disable_tqdm=True)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
