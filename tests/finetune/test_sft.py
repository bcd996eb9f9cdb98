"""Instruction tuning: the loss is over response tokens only, packing changes nothing, LoRA runs merge on
load and export, sample --instruction uses the stored template, and a stopped run resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from gpt2kit import GPTConfig, generate
from gpt2kit.cli import main
from gpt2kit.errors import UserError
from gpt2kit.finetune.batching import packed_batch, sft_batch
from gpt2kit.finetune.files import hold_out
from gpt2kit.finetune.run import sft_loss
from gpt2kit.finetune.sft_data import SFTExample, encode_pieces, load_sft
from gpt2kit.model.gpt import GPT
from gpt2kit.prompts import TEMPLATES, get_template, record_pieces
from gpt2kit.tokenizer import EOT_ID, get_tokenizer

from .conftest import alpaca_records, write_jsonl

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

ALPACA = TEMPLATES["alpaca"]


def _examples() -> list[SFTExample]:
    tok = get_tokenizer()
    recs = [{"instruction": "Name a color.", "output": "Deep blue"},
            {"instruction": "Add.", "input": "2 + 3", "output": "5"},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}]
    return [encode_pieces(record_pieces(r, f"rec{i}", ALPACA), tok) for i, r in enumerate(recs)]


def test_sft_loss_equals_hand_computed_loss_over_response_tokens_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", block_size=128)).eval()
    tok = get_tokenizer()
    examples = _examples()
    losses = []
    for ex in examples:  # by hand, one unpadded example at a time
        logits, _ = model(torch.tensor([ex.ids]))  # (1, T, V)
        logp = F.log_softmax(logits[0].double(), dim=-1)  # (T, V)
        for i in range(len(ex.ids) - 1):
            if ex.trainable[i + 1]:
                losses.append(-logp[i, ex.ids[i + 1]])
    expected = torch.stack(losses).mean()
    assert len(losses) == sum(len(tok.encode(r)) + 1 for r in ("Deep blue", "5", "Hello there"))
    with torch.no_grad():
        padded = sft_loss(model, sft_batch(examples, EOT_ID))
        packed = sft_loss(model, packed_batch([examples], EOT_ID))  # all three in one row
    torch.testing.assert_close(padded.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed.double(), expected, rtol=1e-5, atol=1e-5)
    # the prompt is not in the loss: changing the prompt's targets' logits cannot matter, but the response's does
    batch = sft_batch(examples, EOT_ID)
    assert int((batch["targets"] != -100).sum()) == len(losses)


@pytest.fixture(scope="module")
def sft_files(ft_dir):
    write_jsonl(ft_dir / "sft_train.jsonl", alpaca_records(24, 4))
    (ft_dir / "sft_val.json").write_text(json.dumps(alpaca_records(8, 5)))  # Alpaca's .json list format
    return ft_dir / "sft_train.jsonl", ft_dir / "sft_val.json"


def _sft_argv(ft_dir, train, val, out, *extra):
    return ["finetune", "sft", "--checkpoint", str(ft_dir / "base.pt"), "--train", str(train), "--val", str(val),
            "--out", str(out), "--batch-size", "8", "--lr", "3e-3", "--max-length", "64", "--sample-tokens", "4",
            "--no-progress", "--no-tensorboard", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def lora_run(ft_dir, sft_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    assert main(_sft_argv(ft_dir, *sft_files, out, "--epochs", "2", "--lora-rank", "4", "--lora-targets",
                          "attn,mlp", "--pack")) == 0
    return out


def test_lora_sft_run_records_template_and_loads_merged(lora_run):
    from gpt2kit.checkpoint import load_model, read_checkpoint, resolve_checkpoint
    from gpt2kit.model.lora import LoRAConfig, apply_lora

    results = json.loads((lora_run / "results.json").read_text())
    assert results["task"] == "sft" and len(results["epochs"]) == 2 and results["val_loss"] is not None
    path = resolve_checkpoint(lora_run)[1]
    raw = read_checkpoint(path)
    assert raw["finetune"]["template"] == ALPACA.to_dict() and raw["finetune"]["lora"]["rank"] == 4
    assert any(k.endswith("lora_B") for k in raw["model"])
    # the adapted model as trained (adapters separate) vs load_model's merged plain GPT
    adapted = GPT(GPTConfig.from_dict(raw["model_config"]))
    apply_lora(adapted, LoRAConfig.from_dict(raw["finetune"]["lora"]))
    adapted.load_state_dict({**raw["model"], "lm_head.weight": raw["model"]["transformer.wte.weight"]})
    adapted.eval()
    loaded = load_model(lora_run)
    assert loaded.checkpoint["finetune"]["task"] == "sft"
    assert not any("lora" in k for k in loaded.model.state_dict())
    x = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], adapted(x)[0], rtol=1e-5, atol=1e-5)
    assert (lora_run / "samples.jsonl").is_file()


def test_sample_instruction_uses_the_stored_template(lora_run, capsys):
    from gpt2kit.checkpoint import load_model

    assert main(["sample", "--checkpoint", str(lora_run), "--instruction", "Repeat the word.", "--input", "cat",
                 "--temperature", "0", "--max-new-tokens", "5", "--no-stop"]) == 0
    out = capsys.readouterr().out
    tok = get_tokenizer()
    prompt = tok.encode(ALPACA.format_prompt("Repeat the word.", "cat"))
    model = load_model(lora_run).model
    ids = generate(model, torch.tensor([prompt]), 5, temperature=0)[0, len(prompt):].tolist()
    assert out == tok.decode(ids) + "\n"  # the response only, from the template-formatted prompt
    assert main(["sample", "--checkpoint", str(lora_run), "--instruction", "x", "--prompt", "y"]) == 2


def test_export_merges_adapters_into_plain_hf_weights(lora_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from gpt2kit.checkpoint import load_model

    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(lora_run), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    assert not any("lora" in k for k in load_file(out / "model.safetensors"))
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ours = load_model(lora_run).model
    x = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x)[0], rtol=1e-4, atol=1e-4)


def test_stopped_run_resumes_to_the_same_weights(ft_dir, sft_files, tmp_path):
    """A run stopped at step 2 (mid-epoch; 3 steps an epoch) and resumed with --resume auto ends bitwise equal to
    one that never stopped."""
    from gpt2kit.checkpoint import read_checkpoint

    full, part = tmp_path / "full", tmp_path / "part"
    common = ("--epochs", "2", "--lora-rank", "2", "--keep-last", "5", "--template", "chat", "--samples", "0",
              "--max-length", "32")
    assert main(_sft_argv(ft_dir, *sft_files, full, *common)) == 0
    assert main(_sft_argv(ft_dir, *sft_files, part, *common, "--max-steps", "2")) == 0
    stopped = json.loads((part / "results.json").read_text())
    assert stopped["steps"] == 2
    # resume with only --out: the saved settings (data, LoRA, template) come from the checkpoint
    assert main(["finetune", "sft", "--out", str(part), "--resume", "auto", "--max-steps", "none",
                 "--no-progress"]) == 0
    a = read_checkpoint(sorted((full / "checkpoints").glob("step_*.pt"))[-1])
    b = read_checkpoint(sorted((part / "checkpoints").glob("step_*.pt"))[-1])
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert json.loads((part / "results.json").read_text())["steps"] == 6
    losses_full = [r["loss"] for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines())
                   if r["step"] == 6]
    losses_part = [r["loss"] for r in map(json.loads, (part / "metrics.jsonl").read_text().splitlines())
                   if r["step"] == 6]
    assert losses_full == losses_part
    # resuming another task's run is refused
    assert main(["finetune", "classify", "--out", str(part), "--resume", "auto"]) == 2


def test_sft_data_errors_are_one_line(ft_dir, sft_files, tmp_path, capsys):
    write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "Do.", "output": "ok"}, {"instruction": "No output"}])
    assert main(_sft_argv(ft_dir, tmp_path / "bad.jsonl", sft_files[1], tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2: record has no 'output'" in err and err.count("\n") == 1
    assert main(_sft_argv(ft_dir, *sft_files, tmp_path / "r", "--template", "nope")) == 2
    assert "not a built-in template" in capsys.readouterr().err
    assert main(_sft_argv(ft_dir, *sft_files, tmp_path / "r", "--lora-targets", "q_proj", "--lora-rank", "2")) == 2
    assert "unknown target 'q_proj'" in capsys.readouterr().err


def test_without_val_a_seeded_share_of_train_is_held_out(ft_dir, sft_files, tmp_path, capsys):
    train, _ = sft_files
    template = get_template("alpaca")
    data = load_sft(train, template, max_length=64)
    kept, held = hold_out(data, 0.1, seed=7, path=str(train))
    assert (len(kept), len(held)) == (22, 2)  # round(24 x 0.1), the rest in file order
    where = {id(e): i for i, e in enumerate(data.examples)}
    kept_at, held_at = [where[id(e)] for e in kept.examples], [where[id(e)] for e in held.examples]
    assert sorted(kept_at + held_at) == list(range(24)) and kept_at == sorted(kept_at)
    again = hold_out(data, 0.1, seed=7, path=str(train))[1]
    assert [e.ids for e in again.examples] == [e.ids for e in held.examples]  # a resumed run splits the same
    with pytest.raises(UserError, match="too few to hold out a validation share; give --val FILE"):
        hold_out(data.subset([0]), 0.1, seed=7, path="one.jsonl")

    argv = [a for a in _sft_argv(ft_dir, train, "-", tmp_path / "run", "--max-steps", "2") if a not in ("--val", "-")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"no --val: 2 of 24 examples of {train} are held out for validation" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert math.isfinite(results["best_val_loss"])
