"""``gpt2kit eval``: tables, --json, results files, gpt2kit and Hugging Face checkpoints alike, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gpt2kit.cli import main
from gpt2kit.eval.hellaswag import load_examples, score_hellaswag
from gpt2kit.eval.loss import batch_windows, document_windows, mean_loss
from gpt2kit.tokenizer import EOT_ID, get_tokenizer

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def run_json(capsys, argv):
    """Run the CLI with --json; stdout must be exactly one JSON object."""
    assert main(argv + ["--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n"), out
    return json.loads(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, hf_model_dir):
    """A private copy of the HF model directory (results files get written into it)."""
    d = tmp_path_factory.mktemp("m") / "hf"
    shutil.copytree(hf_model_dir, d)
    return d


def test_hellaswag_json_table_and_results_file(tmp_path, capsys, model_dir, gk_model, write_hellaswag):
    data = write_hellaswag(tmp_path / "hs.jsonl")
    rec = run_json(capsys, ["eval", "hellaswag", "--checkpoint", str(model_dir), "--data", str(data),
                            "--device", "cpu", "--batch-size", "3"])
    want = score_hellaswag(gk_model, load_examples(data), device="cpu")
    assert {k: rec[k] for k in want} == want
    assert rec["task"] == "hellaswag" and rec["model"]["format"] == "huggingface"
    import hashlib

    assert rec["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert rec["settings"]["batch_size"] == 3 and rec["settings"]["limit"] is None
    saved = model_dir / "eval-hellaswag.json"
    assert rec["results_file"] == str(saved) and json.loads(saved.read_text())["acc"] == rec["acc"]
    # the readable table
    assert main(["eval", "hellaswag", "--checkpoint", str(model_dir), "--data", str(data), "--device", "cpu",
                 "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "acc_norm_bytes" in out and f"{100 * want['acc_norm']:.2f}%" in out
    assert json.loads((tmp_path / "r.json").read_text())["acc_norm"] == want["acc_norm"]


def test_limit_and_batch_size_do_not_change_scores(tmp_path, capsys, model_dir, gk_model, write_hellaswag):
    data = write_hellaswag(tmp_path / "hs.jsonl")
    base = ["eval", "hellaswag", "--checkpoint", str(model_dir), "--data", str(data), "--device", "cpu",
            "--out", str(tmp_path / "r.json")]
    a = run_json(capsys, base + ["--limit", "4", "--batch-size", "1"])
    b = run_json(capsys, base + ["--limit", "4", "--batch-size", "8"])
    want = score_hellaswag(gk_model, load_examples(data)[:4], device="cpu")
    for r in (a, b):
        assert {k: r[k] for k in want} == want and r["n"] == 4


def test_gpt2kit_checkpoint_scores_like_its_hf_source(tmp_path, capsys, model_dir, gk_model, write_hellaswag):
    from gpt2kit.checkpoint import model_state_dict, save_checkpoint, step_checkpoint_path

    run = tmp_path / "run"
    ckpt = step_checkpoint_path(run, 10)
    save_checkpoint(ckpt, {"model_config": gk_model.config.to_dict(), "model": model_state_dict(gk_model),
                           "step": 10})
    data = write_hellaswag(tmp_path / "hs.jsonl")
    rec = run_json(capsys, ["eval", "hellaswag", "--checkpoint", str(run), "--data", str(data), "--device", "cpu"])
    want = score_hellaswag(gk_model, load_examples(data), device="cpu")
    assert {k: rec[k] for k in want} == want
    assert rec["model"]["format"] == "gpt2kit" and rec["model"]["step"] == 10
    assert rec["results_file"] == str(ckpt.with_name("step_00000010.eval-hellaswag.json"))
    assert (run / "checkpoints" / "step_00000010.eval-hellaswag.json").is_file()


def test_loss_on_text_and_jsonl(tmp_path, capsys, model_dir, gk_model):
    tok = get_tokenizer()
    docs = ["It was the best of times, it was the worst of times, it was the age of wisdom. " * 3,
            "Stately, plump Buck Mulligan came from the stairhead, bearing a bowl of lather.", "Ünïcödé ✓ text"]
    jl = tmp_path / "docs.jsonl"
    jl.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    rec = run_json(capsys, ["eval", "loss", "--checkpoint", str(model_dir), "--data", str(jl), "--text-field",
                            "body", "--stride", "16", "--device", "cpu", "--out", str(tmp_path / "r.json")])
    want = mean_loss(gk_model, batch_windows(document_windows(tok.encode_batch(docs), 64, 16), 8), device="cpu",
                     count_bytes=True)
    assert rec["tokens"] == want["tokens"] == sum(len(tok.encode(d)) for d in docs)
    assert rec["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert rec["bits_per_byte"] == pytest.approx(want["nll_sum"] / np.log(2) / len("".join(docs).encode()), rel=1e-6)
    assert rec["settings"]["stride"] == 16 and rec["data"]["documents"] == 3
    # --limit takes the first documents
    lim = run_json(capsys, ["eval", "loss", "--checkpoint", str(model_dir), "--data", str(jl), "--text-field", "body",
                            "--stride", "16", "--limit", "2", "--device", "cpu", "--out", str(tmp_path / "r.json")])
    assert lim["tokens"] == sum(len(tok.encode(d)) for d in docs[:2])
    # a plain text file is one document
    txt = tmp_path / "doc.txt"
    txt.write_text(docs[0])
    rec = run_json(capsys, ["eval", "loss", "--checkpoint", str(model_dir), "--data", str(txt), "--device", "cpu"])
    assert rec["tokens"] == len(tok.encode(docs[0])) and rec["settings"]["stride"] == 32
    assert (model_dir / "eval-loss-doc.txt.json").is_file()


def test_loss_on_prepared_split_matches_transformers(tmp_path, capsys, model_dir, hf_model, write_prepared_dir):
    tok = get_tokenizer()
    text = "Whenever I find myself growing grim about the mouth, I account it high time to get to sea. " * 8
    val = np.array(([EOT_ID] + tok.encode(text)) * 2, dtype=np.int64)
    data = write_prepared_dir(tmp_path / "prepared", val)
    rec = run_json(capsys, ["eval", "loss", "--checkpoint", str(model_dir), "--data", str(data), "--split", "val",
                            "--batch-size", "2", "--device", "cpu"])
    T, B = 64, 2
    n_batches = (len(val) - 1) // T // B
    x = torch.tensor(np.stack([val[k * T : k * T + T] for k in range(n_batches * B)]))  # (N, T)
    y = torch.tensor(np.stack([val[k * T + 1 : k * T + T + 1] for k in range(n_batches * B)]))  # (N, T)
    with torch.no_grad():
        logp = torch.log_softmax(hf_model(x).logits.double(), dim=-1)
    want = -logp.gather(2, y[..., None]).mean().item()
    assert rec["tokens"] == y.numel() and rec["loss"] == pytest.approx(want, rel=1e-5)
    lengths = [len(tok.decode_bytes([t])) if t != EOT_ID else 0 for t in y.flatten().tolist()]
    assert rec["bytes"] == sum(lengths)
    assert rec["data"]["split"] == "val" and rec["results_file"].endswith("eval-loss-prepared-val.json")
    lim = run_json(capsys, ["eval", "loss", "--checkpoint", str(model_dir), "--data", str(data), "--limit", "1",
                            "--batch-size", "2", "--device", "cpu"])
    assert lim["tokens"] == 2 * T


def test_lambada_cli(tmp_path, capsys, model_dir):
    data = tmp_path / "lambada.jsonl"
    data.write_text('{"text": "the cat sat on the mat"}\n{"text": "a dog ran in the park"}\n')
    rec = run_json(capsys, ["eval", "lambada", "--checkpoint", str(model_dir), "--data", str(data),
                            "--device", "cpu", "--out", str(tmp_path / "r.json")])
    assert rec["task"] == "lambada" and rec["n"] == 2 and {"acc", "perplexity"} <= set(rec)
    assert rec["perplexity"] > 1


@pytest.mark.parametrize("argv_tail, message", [
    (["hellaswag", "--data", "{bad}"], "bad.jsonl:2: 'label' 7 is out of range"),
    (["hellaswag", "--data", "{missing}"], "no such file"),
    (["loss", "--data", "{missing}"], "no such file"),
    (["loss", "--data", "{bad}", "--text-field", "text"], "bad.jsonl:1: no string field 'text'"),
    (["loss", "--data", "{txt}", "--stride", "65"], "--stride 65 exceeds"),
    (["loss", "--data", "{txt}", "--block-size", "128"], "exceeds the model's block_size 64"),
    (["lambada", "--data", "{bad}"], "bad.jsonl:1: expected a JSON object with a string 'text'"),
])
def test_errors_are_one_line_with_exit_2(tmp_path, capsys, model_dir, argv_tail, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 1}) + "\n"
                   + json.dumps({"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 7}) + "\n")
    (tmp_path / "t.txt").write_text("hello there")
    paths = {"{bad}": str(bad), "{missing}": str(tmp_path / "nope.jsonl"), "{txt}": str(tmp_path / "t.txt")}
    argv = ["eval", argv_tail[0], "--checkpoint", str(model_dir), "--device", "cpu",
            *[paths.get(a, a) for a in argv_tail[1:]]]
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert lines[-1].startswith("gpt2kit eval: error:") and message in lines[-1], cap.err


def test_offline_without_data_asks_for_data(tmp_path, capsys, model_dir, monkeypatch):
    import gpt2kit.eval.hellaswag as hs

    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hs, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")  # an unreachable network
    assert main(["eval", "hellaswag", "--checkpoint", str(model_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "downloading HellaSwag validation data from http://127.0.0.1:9" in err and "pass --data FILE" in err


def test_help_explains_each_task(capsys):
    for task, words in (("loss", "bits per byte"), ("hellaswag", "acc_norm_bytes"), ("lambada", "last word")):
        with pytest.raises(SystemExit) as e:
            main(["eval", task, "--help"])
        assert e.value.code == 0
        assert words in capsys.readouterr().out
