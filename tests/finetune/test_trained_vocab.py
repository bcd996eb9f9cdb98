"""Fine-tuning a model over a trained vocabulary: SFT, LoRA and classification encode with the base model's own
tokenizer, every fine-tune checkpoint carries it, and a resumed or continued fine-tune keeps it.

The base is ``trained_vocab_checkpoint`` (300 tokens, 320 embedding rows): a GPT-2 id >= 320 would crash its
embedding, so a run that finishes already shows the tokenizer was carried; the data fingerprint in the
checkpoint's loader state shows which ids were trained on.
"""

from __future__ import annotations

import json

import pytest
import torch

from gpt2kit import generate
from gpt2kit.checkpoint import load_model, read_checkpoint, resolve_checkpoint
from gpt2kit.cli import main
from gpt2kit.finetune.classifier import load_classifier
from gpt2kit.finetune.classify_data import load_classification
from gpt2kit.finetune.sft_data import load_sft
from gpt2kit.prompts import get_template
from gpt2kit.tokenizer import get_tokenizer

from .conftest import alpaca_records, keyword_rows, write_csv, write_jsonl

pytestmark = pytest.mark.slow  # whole fine-tuning runs

# the chat template: Alpaca's long preamble alone is over 64 tokens of this small vocabulary
COMMON = ("--batch-size", "4", "--max-length", "64", "--no-progress", "--no-tensorboard", "--device", "cpu")


def _sft(base, train, val, out, *extra) -> int:
    return main(["finetune", "sft", "--checkpoint", str(base), "--train", str(train), "--val", str(val),
                 "--out", str(out), "--template", "chat", "--lr", "3e-3", "--sample-tokens", "4", *COMMON, *extra])


def _checkpoint(run) -> dict:
    return read_checkpoint(resolve_checkpoint(run)[1])


@pytest.fixture
def sft_files(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", alpaca_records(12, 4)),
            write_jsonl(tmp_path / "val.jsonl", alpaca_records(4, 5)))


def test_sft_encodes_with_the_base_tokenizer_and_its_checkpoint_carries_it(
        trained_vocab_checkpoint, trained_tokenizer, sft_files, tmp_path):
    out = tmp_path / "sft"
    assert _sft(trained_vocab_checkpoint, *sft_files, out, "--max-steps", "2") == 0
    ckpt = _checkpoint(out)
    assert ckpt["tokenizer"] == trained_tokenizer.name and ckpt["tokenizer_files"]
    loaded = load_model(out)
    assert loaded.tokenizer.name == trained_tokenizer.name and loaded.tokenizer.eot == 299
    # the ids trained on are the trained tokenizer's (not GPT-2's, which differ for the same records)
    template = get_template("chat")
    ours = load_sft(sft_files[0], template, max_length=64, tokenizer=trained_tokenizer)
    gpt2 = load_sft(sft_files[0], template, max_length=64, tokenizer=get_tokenizer())
    assert ckpt["loader"]["fingerprint"] == ours.fingerprint() != gpt2.fingerprint()
    assert all(ex.ids[-1] == 299 and max(ex.ids) < 300 for ex in ours.examples)
    # the run's sample is the trained tokenizer's decoding of the model's greedy reply to the first val prompt
    (first,) = load_sft(sft_files[1], template, max_length=64, tokenizer=trained_tokenizer).examples[:1]
    prompt = first.ids[:first.trainable.index(True)]
    reply = generate(loaded.model, torch.tensor([prompt]), 4, temperature=0.0, eos_id=299)[0, len(prompt):].tolist()
    (row,) = map(json.loads, (out / "samples.jsonl").read_text().splitlines())
    assert row["samples"][0] == trained_tokenizer.decode([t for t in reply if t != 299])

    # a fine-tune of the fine-tune starts from its weights and keeps its tokenizer
    again = tmp_path / "sft2"
    assert _sft(out, *sft_files, again, "--max-steps", "1") == 0
    assert load_model(again).tokenizer.name == trained_tokenizer.name


def test_lora_packed_sft_and_its_resume_keep_the_tokenizer(trained_vocab_checkpoint, trained_tokenizer, sft_files,
                                                          tmp_path):
    out = tmp_path / "lora"
    lora = ("--lora-rank", "2", "--pack", "--keep-last", "5")
    assert _sft(trained_vocab_checkpoint, *sft_files, out, *lora, "--epochs", "4", "--max-steps", "1") == 0
    assert _checkpoint(out)["step"] == 1
    # resumed with only --out: the model and tokenizer come from the checkpoint, not from --checkpoint
    assert main(["finetune", "sft", "--out", str(out), "--resume", "auto", "--max-steps", "2",
                 "--no-progress"]) == 0
    ckpt = _checkpoint(out)
    assert ckpt["step"] == 2 and ckpt["finetune"]["lora"]["rank"] == 2
    assert ckpt["tokenizer"] == trained_tokenizer.name
    ours = load_sft(sft_files[0], get_template("chat"), max_length=64, tokenizer=trained_tokenizer)
    assert ckpt["loader"]["fingerprint"] == ours.fingerprint() + "+pack64"
    loaded = load_model(out)  # adapters merged into plain weights
    assert loaded.tokenizer.name == trained_tokenizer.name and not any("lora" in k for k in loaded.model.state_dict())


def test_builtin_chat_encodes_with_the_trained_tokenizer(trained_vocab_checkpoint, trained_tokenizer, tmp_path):
    chat = get_template("chat")
    data = load_sft("builtin:chat", chat, max_length=64, tokenizer=trained_tokenizer)
    assert len(data) + data.dropped == 749 and max(max(ex.ids) for ex in data.examples) == 299
    out = tmp_path / "chat"
    assert main(["finetune", "sft", "--checkpoint", str(trained_vocab_checkpoint), "--train", "builtin:chat",
                 "--template", "chat", "--out", str(out), "--max-steps", "1", "--samples", "1", "--sample-tokens", "3",
                 *COMMON]) == 0
    assert load_model(out).tokenizer.name == trained_tokenizer.name


def test_classify_encodes_with_the_base_tokenizer_and_classify_uses_it(trained_vocab_checkpoint, trained_tokenizer,
                                                                      tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", keyword_rows(24, 1))
    val = write_csv(tmp_path / "val.csv", keyword_rows(8, 2))
    out = tmp_path / "cls"
    assert main(["finetune", "classify", "--checkpoint", str(trained_vocab_checkpoint), "--train", str(train),
                 "--val", str(val), "--test", str(val), "--out", str(out), "--lr", "1e-3", "--max-steps", "2",
                 *COMMON]) == 0
    ckpt = _checkpoint(out)
    assert ckpt["tokenizer"] == trained_tokenizer.name
    ours = load_classification(train, ["neg", "pos"], max_length=64, tokenizer=trained_tokenizer)
    gpt2 = load_classification(train, ["neg", "pos"], max_length=64)
    assert ckpt["loader"]["fingerprint"] == ours.fingerprint() != gpt2.fingerprint()
    _, record, _, tok = load_classifier(out)
    assert tok.name == trained_tokenizer.name and record["labels"] == ["neg", "pos"]
    results = json.loads((out / "results.json").read_text())
    assert results["test_examples"] == 8
    capsys.readouterr()
    # "excellent" is several tokens of the 300-token vocabulary, and GPT-2's id for it would crash the model
    assert main(["classify", "--checkpoint", str(out), "--text", "the cat was excellent", "--device", "cpu"]) == 0
    label, prob, text = capsys.readouterr().out.rstrip("\n").split("\t")
    assert label in ("neg", "pos") and 0.5 <= float(prob) <= 1 and text == "the cat was excellent"


def test_a_base_whose_checkpoint_lacks_its_tokenizer_is_refused_in_one_line(trained_vocab_checkpoint, sft_files,
                                                                          tmp_path, capsys):
    from gpt2kit.checkpoint import save_checkpoint

    raw = read_checkpoint(trained_vocab_checkpoint)
    old = tmp_path / "old.pt"  # as a fine-tune written before checkpoints carried the tokenizer would be
    save_checkpoint(old, {"model_config": raw["model_config"], "model": raw["model"]})
    capsys.readouterr()
    assert _sft(old, *sft_files, tmp_path / "r", "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert "vocabulary has 300 tokens but its checkpoint records tokenizer gpt2 with 50257" in err
    assert err.count("\n") == 1
