"""Classification: last-real-token pooling, freezing, metrics, a run that learns, and gpt2kit classify."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2kit import GPTConfig
from gpt2kit.cli import main
from gpt2kit.finetune.batching import pad_right
from gpt2kit.finetune.classifier import GPTClassifier, last_token_index, load_classifier, set_trainable
from gpt2kit.finetune.metrics import accuracy, confusion_matrix, macro_f1
from gpt2kit.model.gpt import GPT

from .conftest import write_csv

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def _classifier(seed: int = 0, k: int = 3) -> GPTClassifier:
    torch.manual_seed(seed)
    return GPTClassifier(GPT(GPTConfig.from_preset("tiny")), k).eval()


def test_pooling_takes_the_last_real_token_by_mask():
    model = _classifier()
    seqs = [[5, 6, 7, 8, 9], [11, 12], [13]]
    idx, mask = pad_right(seqs, pad_id=50256)
    assert last_token_index(mask).tolist() == [4, 1, 0]
    with torch.no_grad():
        batched, _ = model(idx, mask=mask)  # (3, K)
        alone = torch.cat([model(torch.tensor([s]))[0] for s in seqs])
        naive = model.score(model.hidden_states(idx)[:, -1])  # position -1 reads padding
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(naive[1:], alone[1:], atol=1e-3)
    assert last_token_index(torch.tensor([[False, False, True, True]])).tolist() == [3]  # left padding too


def test_state_dict_is_backbone_plus_head_and_freezing():
    model = _classifier()
    keys = set(model.state_dict())
    assert {"score.weight", "score.bias", "transformer.wte.weight"} <= keys
    assert model.lm_head.weight is model.transformer.wte.weight
    set_trainable(model, train_last_blocks=1)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] if n.startswith("transformer") else n.split(".")[0]
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"transformer.h", "transformer.ln_f", "score"}
    assert not model.transformer.h[0].attn.c_attn.weight.requires_grad
    assert model.transformer.h[1].attn.c_attn.weight.requires_grad
    assert not model.transformer.wte.weight.requires_grad
    with pytest.raises(ValueError, match="--train-last-blocks"):
        set_trainable(model, train_last_blocks=3)


def test_accuracy_and_macro_f1_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 2])
    conf = confusion_matrix(preds, labels, 4)  # label 3 never occurs: left out of the macro average
    assert conf[:3, :3].tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert accuracy(conf) == pytest.approx(4 / 6)
    f1 = [2 * 2 / (2 * 2 + 0 + 1), 2 * 1 / (2 * 1 + 1 + 1), 2 * 1 / (2 * 1 + 1 + 0)]
    assert macro_f1(conf) == pytest.approx(sum(f1) / 3)


@pytest.fixture(scope="module")
def trained(ft_dir, tmp_path_factory):
    """One classification run through the CLI: tiny random model, keyword task, 4 epochs."""
    out = tmp_path_factory.mktemp("clf") / "run"
    argv = ["finetune", "classify", "--checkpoint", str(ft_dir / "base.pt"), "--train", str(ft_dir / "train.csv"),
            "--val", str(ft_dir / "val.csv"), "--test", str(ft_dir / "test.csv"), "--out", str(out),
            "--epochs", "4", "--lr", "3e-3", "--batch-size", "16", "--warmup-steps", "2",
            "--no-progress", "--no-tensorboard", "--device", "cpu"]
    assert main(argv) == 0
    return out


def test_classifier_learns_the_keyword_task(trained, capsys):
    results = json.loads((trained / "results.json").read_text())
    assert results["test_accuracy"] > 0.9, results
    assert 0.0 < results["test_macro_f1"] <= 1.0
    assert [round(e["epoch"]) for e in results["epochs"]] == [1, 2, 3, 4]
    assert all(0.0 <= e["val_accuracy"] <= 1.0 for e in results["epochs"])
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_accuracy" in r for r in records) == 4 and records[-1]["step"] == results["steps"]
    model, record, path, tok = load_classifier(trained)
    assert record["task"] == "classify" and record["labels"] == ["neg", "pos"] and record["lora"] is None
    assert path == results["checkpoint"] and tok.name == "gpt2"  # a GPT-2 base's classifier keeps GPT-2's


def test_classify_command_predicts_and_scores_a_labeled_file(trained, ft_dir, capsys, tmp_path):
    assert main(["classify", "--checkpoint", str(trained), "--text", "the big excellent river",
                 "--text", "a terrible small stone sat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["pos", "neg"]
    assert all(0.5 < float(line.split("\t")[1]) <= 1.0 for line in lines)
    argv = ["classify", "--checkpoint", str(trained), "--file", str(ft_dir / "test.csv"), "--format", "jsonl"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 64 and set(rows[0]["probabilities"]) == {"neg", "pos"}
    acc = float(captured.err.split("accuracy ")[1].split()[0])
    results = json.loads((trained / "results.json").read_text())
    assert acc == pytest.approx(results["test_accuracy"], abs=1e-4)  # the same checkpoint, the same scoring
    (tmp_path / "texts.txt").write_text("excellent tree\n\nterrible tree\n")
    assert main(["classify", "--checkpoint", str(trained), "--file", str(tmp_path / "texts.txt")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_classification_checkpoint_refused_by_language_model_commands(trained, tmp_path, capsys):
    for argv in (["export", "--checkpoint", str(trained), "--out", str(tmp_path / "hf")],
                 ["sample", "--checkpoint", str(trained), "--prompt", "hi", "--max-new-tokens", "2"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "a classification fine-tune" in err and "gpt2kit classify" in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()


def test_classify_errors_are_one_line(trained, ft_dir, tmp_path, capsys):
    write_csv(tmp_path / "val.csv", [("excellent", "pos"), ("hmm", "neutral")])
    cases = [
        (["finetune", "classify", "--checkpoint", str(ft_dir / "base.pt"), "--train", str(ft_dir / "train.csv"),
          "--val", str(tmp_path / "val.csv"), "--out", str(tmp_path / "r")], "label 'neutral' does not occur"),
        (["finetune", "classify", "--train", str(ft_dir / "train.csv"), "--out", str(tmp_path / "r")],
         "--checkpoint: required"),
        (["finetune", "classify", "--checkpoint", str(ft_dir / "base.pt")], "--out: required"),
        (["finetune", "classify", "--checkpoint", str(ft_dir / "base.pt"), "--train", str(ft_dir / "train.csv"),
          "--val", str(ft_dir / "val.csv"), "--out", str(tmp_path / "r"), "--max-length", "999"],
         "longer than the model's context"),
        (["classify", "--checkpoint", str(ft_dir / "base.pt"), "--text", "x"], "not a classification checkpoint"),
        (["classify", "--checkpoint", str(trained), "--text", "  "], "empty"),
        (["classify", "--checkpoint", str(trained)], "give --text"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_lora_classifier_trains_adapters_and_head_only(ft_dir, tmp_path):
    from gpt2kit.checkpoint import read_checkpoint, resolve_checkpoint
    from gpt2kit.finetune.config import ClassifyConfig
    from gpt2kit.finetune.run import run_classify

    out = tmp_path / "lora"
    cfg = ClassifyConfig.from_dict(dict(checkpoint=str(ft_dir / "base.pt"), train=str(ft_dir / "train.csv"),
                                   val=str(ft_dir / "val.csv"), out=str(out), epochs=1, batch_size=32, lora_rank=4,
                                   train_last_blocks=1, progress=False, tensorboard=False, device="cpu"))
    results = run_classify(cfg, log=lambda msg: None)
    ckpt = read_checkpoint(resolve_checkpoint(out)[1])
    base = read_checkpoint(ft_dir / "base.pt")["model"]
    assert ckpt["finetune"]["lora"]["blocks"] == [1]
    lora_keys = sorted(k for k in ckpt["model"] if k.endswith(("lora_A", "lora_B")))
    assert lora_keys and all(k.startswith("transformer.h.1.") for k in lora_keys)
    for k, v in base.items():
        assert torch.equal(ckpt["model"][k], v), k  # the backbone is untouched: only adapters and head moved
    assert not torch.equal(ckpt["model"]["score.weight"], torch.zeros_like(ckpt["model"]["score.weight"]))
    model, _, _, _ = load_classifier(out)
    assert not any(k.endswith("lora_A") for k in model.state_dict())  # merged on load
    assert results["steps"] == 6


def test_two_ddp_ranks_train_like_one_process(ft_dir, tmp_path):
    """torchrun, two gloo ranks with batch 8 each == one process with batch 16: same items per step, same weights."""
    import os
    import subprocess
    import sys

    from gpt2kit.checkpoint import read_checkpoint

    from .conftest import keyword_rows

    write_csv(tmp_path / "train.csv", keyword_rows(64, 7))
    write_csv(tmp_path / "val.csv", keyword_rows(9, 8))  # odd: one rank scores an item more than the other
    args = ["finetune", "classify", "--checkpoint", str(ft_dir / "base.pt"), "--train", str(tmp_path / "train.csv"),
            "--val", str(tmp_path / "val.csv"), "--test", str(tmp_path / "val.csv"), "--epochs", "1", "--lr", "3e-3",
            "--no-progress", "--no-tensorboard", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "one"), "--batch-size", "16"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gpt2kit",
         *args, "--out", str(tmp_path / "two"), "--batch-size", "8"],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = read_checkpoint(tmp_path / "one" / "checkpoints" / "step_00000004.pt")
    two = read_checkpoint(tmp_path / "two" / "checkpoints" / "step_00000004.pt")
    for k in one["model"]:
        torch.testing.assert_close(two["model"][k], one["model"][k], rtol=1e-4, atol=1e-5)
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r2["test_examples"] == r1["test_examples"] == 9
    assert r2["test_confusion"] == r1["test_confusion"]
    assert r2["test_loss"] == pytest.approx(r1["test_loss"], rel=1e-4)


def test_muon_fine_tunes_the_block_matrices_and_refuses_lora_alone(ft_dir, tmp_path):
    from gpt2kit.checkpoint import read_checkpoint, resolve_checkpoint
    from gpt2kit.errors import UserError
    from gpt2kit.finetune.config import ClassifyConfig
    from gpt2kit.finetune.run import run_classify

    common = dict(checkpoint=str(ft_dir / "base.pt"), train=str(ft_dir / "train.csv"), val=str(ft_dir / "val.csv"),
                  epochs=1, batch_size=32, optimizer="muon", muon_lr=0.002, progress=False, tensorboard=False,
                  device="cpu")
    results = run_classify(ClassifyConfig.from_dict(dict(out=str(tmp_path / "full"), **common)), log=lambda msg: None)
    assert results["steps"] == 6
    ckpt = read_checkpoint(resolve_checkpoint(tmp_path / "full")[1])
    assert len(ckpt["optimizer"]["muon"]["state"]) == 8  # 2 blocks x 4 matrices; the head (score) is AdamW's
    base = read_checkpoint(ft_dir / "base.pt")["model"]
    assert not torch.equal(ckpt["model"]["transformer.h.0.mlp.c_fc.weight"], base["transformer.h.0.mlp.c_fc.weight"])
    with pytest.raises(UserError, match=r"--optimizer muon: none of the trained .* use --optimizer adamw"):
        run_classify(ClassifyConfig.from_dict(dict(out=str(tmp_path / "lora"), lora_rank=4, **common)),
                     log=lambda msg: None)
