"""`gpt2kit sample` and the pipeline's report samples on a model over a trained 300-token vocabulary: prompts are
encoded, and end-of-text is the id, of the checkpoint's own tokenizer (a GPT-2 id >= 300 would crash it)."""

from __future__ import annotations

import shutil

import torch

from gpt2kit.checkpoint import load_model, model_state_dict, read_checkpoint, save_checkpoint, step_checkpoint_path
from gpt2kit.cli import main
from gpt2kit.generation import generate
from gpt2kit.prompts import TEMPLATES


def _greedy(loaded, ids: list[int], n: int) -> list[int]:
    tok = loaded.tokenizer
    out = generate(loaded.model, torch.tensor([ids]), n, temperature=0, eos_id=tok.eot)[0, len(ids):].tolist()
    return [t for t in out if t != tok.eot]


def test_sample_continues_and_starts_in_the_models_vocabulary(trained_vocab_checkpoint, trained_tokenizer, capsys):
    loaded, tok = load_model(trained_vocab_checkpoint), trained_tokenizer
    argv = ["sample", "--checkpoint", str(trained_vocab_checkpoint), "--max-new-tokens", "8", "--temperature", "0"]
    assert main([*argv, "--prompt", "the cat"]) == 0
    out, err = capsys.readouterr()
    assert out == "the cat" + tok.decode(_greedy(loaded, tok.encode("the cat"), 8)) + "\n"
    assert f"tokenizer {tok.name}, 300 tokens" in err  # which vocabulary the weights came with
    assert main(argv) == 0  # unconditional: from the model's <|endoftext|>, 299
    assert capsys.readouterr().out == tok.decode(_greedy(loaded, [tok.eot], 8)) + "\n"


def test_sample_stops_on_the_models_end_of_text(trained_vocab_checkpoint, tmp_path, capsys):
    ckpt = read_checkpoint(trained_vocab_checkpoint)
    model = load_model(trained_vocab_checkpoint).model
    with torch.no_grad():  # every final hidden state is ln_f's bias, pointing at the eot embedding
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.linspace(-1, 1, model.config.n_embd))
        model.lm_head.weight[299] = 10 * model.transformer.ln_f.bias
    save_checkpoint(tmp_path / "eot.pt", {**ckpt, "model": model_state_dict(model)})
    argv = ["sample", "--checkpoint", str(tmp_path / "eot.pt"), "--prompt", "the", "--max-new-tokens", "5",
            "--temperature", "0"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "the\n"  # stopped at once on 299
    assert main([*argv, "--no-stop"]) == 0
    assert capsys.readouterr().out == "the" + "<|endoftext|>" * 5 + "\n"


def test_the_pipeline_samples_in_its_models_vocabulary(trained_vocab_checkpoint, trained_tokenizer, tmp_path):
    from gpt2kit.data.prepare import prepare
    from gpt2kit.distributed import DistEnv
    from gpt2kit.pipeline.config import PipelineConfig
    from gpt2kit.pipeline.run import _samples_and_answers

    run = tmp_path / "run"
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(f"the cat sat on the mat number {i}. the dog ran far away and came home." * 3
                                for i in range(8)))
    prepare([str(text)], run / "data", tokenizer=trained_tokenizer.path, val_fraction=0.25, workers=1,
            progress=False)
    for stage in ("pretrain", "sft"):
        step_checkpoint_path(run / stage, 1).parent.mkdir(parents=True)
        shutil.copy(trained_vocab_checkpoint, step_checkpoint_path(run / stage, 1))
    sft = step_checkpoint_path(run / "sft", 1)
    save_checkpoint(sft, {**read_checkpoint(sft), "finetune": {
        "version": 1, "task": "sft", "base": "base.pt", "lora": None, "template": TEMPLATES["chat"].to_dict(),
        "max_length": 64}})
    got = _samples_and_answers(PipelineConfig(sources=[str(text)], out=str(run), samples=2), run, DistEnv())
    assert [len(s["prompt"].split()) for s in got["samples"]] == [6, 6]
    assert got["samples"][0]["prompt"].startswith("the cat sat on the mat")
    assert len(got["answers"]) == 2 and all(isinstance(a["answer"], str) for a in got["answers"])
