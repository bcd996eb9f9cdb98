"""The pipeline's settings, sizes, state file, flag pass-through and the run directory as a --checkpoint."""

from __future__ import annotations

import json

import pytest

from gpt2kit.errors import UserError
from gpt2kit.pipeline.config import SIZES, PipelineConfig, pick_size
from gpt2kit.pipeline.report import _md
from gpt2kit.pipeline.state import STAGES, PipelineState


def test_bad_settings_name_the_flag():
    with pytest.raises(ValueError, match="--eval 'hellaswag': give TASK=FILE"):
        PipelineConfig(sources=["a.txt"], out="r", eval=["hellaswag"])
    with pytest.raises(ValueError, match="--export 'onnx': choose from hf, gguf"):
        PipelineConfig(sources=["a.txt"], out="r", export="onnx")
    with pytest.raises(ValueError, match="--pretrain-steps must be >= 1"):
        PipelineConfig(sources=["a.txt"], out="r", pretrain_steps=0)
    with pytest.raises(ValueError, match="--sft-args: No closing quotation"):
        PipelineConfig(sources=["a.txt"], out="r", sft_args="--lr '1")
    with pytest.raises(ValueError, match=r"--vocab-size must be in \[257, 65535\], got 100"):
        PipelineConfig(sources=["a.txt"], out="r", tokenizer="train", vocab_size=100)
    with pytest.raises(ValueError, match="--vocab-size: applies to --tokenizer train; --tokenizer gpt2 has its own"):
        PipelineConfig(sources=["a.txt"], out="r", tokenizer="gpt2", vocab_size=4096)


def test_auto_size_and_exports():
    assert pick_size("auto", gpu=False, world_size=1) == "cpu"
    assert pick_size("auto", gpu=True, world_size=1) == "gpu"
    assert pick_size("auto", gpu=True, world_size=8) == "node"
    assert pick_size("auto", gpu=False, world_size=2) == "cpu"  # gloo ranks on CPUs
    assert pick_size("cpu", gpu=True, world_size=8) == "cpu"
    assert PipelineConfig(sources=["a.txt"], out="r").export_formats() == ("hf", "gguf")
    assert PipelineConfig(sources=["a"], out="r", export=" gguf,").export_formats() == ("gguf",)


def test_every_size_names_real_presets_and_settings():
    from gpt2kit.finetune.config import SFTConfig
    from gpt2kit.settings import setting_names
    from gpt2kit.train.config import TrainConfig
    from gpt2kit.train.presets import get_preset

    for make in SIZES.values():
        size = make()
        get_preset(size.preset)
        assert set(size.pretrain) <= set(setting_names(TrainConfig)), size.name
        assert set(size.sft) <= set(setting_names(SFTConfig)), size.name
        SFTConfig.from_dict({"out": "r", **size.sft})
        assert size.tokenizer in ("train", "gpt2") and 257 <= size.vocab_size <= 65_535


def test_command_line_gives_the_settings_back():
    cfg = PipelineConfig(sources=["my text.txt"], out="runs/v", pretrain_steps=40, eval=["hellaswag=h.jsonl"],
                         pretrain_args="--n-layer 2")
    assert cfg.command() == ("gpt2kit pipeline 'my text.txt' --out runs/v --pretrain-steps 40 --eval hellaswag=h.jsonl "
                             "--pretrain-args '--n-layer 2'")


def test_state_records_stages_atomically(tmp_path):
    state = PipelineState.new(tmp_path, {"out": str(tmp_path)}, "cpu")
    state.begin("prepare")
    state.finish("prepare", 1.5, tokens={"train": 10})
    state.begin("pretrain")
    state.finish("pretrain", 2.0, status="interrupted")
    state.begin("pretrain")
    state.finish("pretrain", 3.0, step=8)
    again = PipelineState.read(tmp_path)
    assert again.done("prepare") and again.done("pretrain") and not again.done("sft")
    assert again.info("pretrain")["seconds"] == 5.0 and again.info("pretrain")["attempts"] == 2
    assert again.redo_from("sft") == []
    assert again.redo_from("prepare") == ["prepare", "pretrain"]
    assert not PipelineState.read(tmp_path).done("prepare")
    assert not list(tmp_path.glob(".*tmp*"))
    assert STAGES[:2] == ("tokenizer", "prepare") and STAGES[-1] == "report"


def test_a_pipeline_from_before_the_tokenizer_stage_keeps_gpt2s_vocabulary(tmp_path):
    state = PipelineState.new(tmp_path, {"out": str(tmp_path), "sources": ["x.txt"]}, "cpu")
    state.begin("prepare")
    state.finish("prepare", 1.0)
    again = PipelineState.read(tmp_path)
    assert again.config["tokenizer"] == "gpt2"
    assert again.done("tokenizer") and again.info("tokenizer")["tokenizer"] == "gpt2"


def test_state_refuses_other_files(tmp_path):
    (tmp_path / "pipeline.json").write_text("{not json")
    with pytest.raises(UserError, match="pipeline.json: unreadable .*--fresh"):
        PipelineState.read(tmp_path)
    (tmp_path / "pipeline.json").write_text(json.dumps({"kind": "other"}))
    with pytest.raises(UserError, match="not a gpt2kit pipeline record"):
        PipelineState.read(tmp_path)


def test_run_directory_is_a_checkpoint(tmp_path, tiny_config):
    from gpt2kit.checkpoint import load_model, resolve_checkpoint
    from gpt2kit.checkpoint.format import save_checkpoint
    from gpt2kit.model.gpt import GPT

    state = PipelineState.new(tmp_path, {}, "cpu")
    state.save()
    with pytest.raises(UserError, match="a gpt2kit pipeline with no model yet"):
        resolve_checkpoint(tmp_path)
    model = GPT(tiny_config)
    for sub in ("pretrain", "sft"):
        (tmp_path / sub / "checkpoints").mkdir(parents=True)
        save_checkpoint(tmp_path / sub / "checkpoints" / "step_00000003.pt",
                        {"model": model.state_dict(), "model_config": tiny_config.to_dict(), "step": 3})
    state.set_final("pretrain")
    assert resolve_checkpoint(tmp_path) == ("gpt2kit", tmp_path / "pretrain" / "checkpoints" / "step_00000003.pt")
    state.set_final("sft")
    assert load_model(tmp_path).source.endswith("sft/checkpoints/step_00000003.pt")


def test_resolve_refuses_changed_settings_and_redoes_on_eval_change(tmp_path):
    from gpt2kit.pipeline.run import resolve_pipeline

    given = {"sources": ["a.txt"], "out": str(tmp_path), "pretrain_args": "--n-layer 2 --lr 0.01"}
    cfg, state = resolve_pipeline(given)
    assert state is None
    state = PipelineState.new(tmp_path, cfg.to_dict(), "cpu")
    for stage in STAGES:
        state.finish(stage, 1.0)
    with pytest.raises(UserError, match=r"started with other SOURCE \(sources=\['a.txt'\]\).*--fresh"):
        resolve_pipeline({**given, "sources": ["b.txt"]})
    # the same flags in another order are the same settings
    from gpt2kit.cli.pipeline import stage_flags

    def normalize(key, value):
        return stage_flags("pretrain", value) if key == "pretrain_args" else value

    cfg, state = resolve_pipeline({**given, "pretrain_args": "--lr 0.01 --n-layer 2"}, normalize=normalize)
    assert all(state.done(s) for s in STAGES)
    said = []
    cfg, state = resolve_pipeline({**given, "eval": ["hellaswag=h.jsonl"]}, log=said.append)
    assert cfg.eval == ["hellaswag=h.jsonl"]
    assert state.done("sft") and not state.done("eval") and not state.done("report")
    assert "eval, export, report will run again" in said[0]


def test_stage_flags_parse_with_the_stage_commands_flags():
    from gpt2kit.cli.pipeline import stage_flags

    assert stage_flags("pretrain", "--n-layer 6 --lr 1e-3") == {"n_layer": 6, "lr": 1e-3}
    assert stage_flags("sft", "--lora-rank 8") == {"lora_rank": 8}
    assert stage_flags("prepare", "--val-fraction 0.05") == {"val_fraction": 0.05}
    with pytest.raises(UserError, match=r"--pretrain-args: unrecognized arguments: --n-leyer 3; did you mean --n-lay"):
        stage_flags("pretrain", "--n-leyer 3")
    with pytest.raises(UserError, match=r"--sft-args: .*RUN sets --out, --checkpoint, --train, --resume itself"):
        stage_flags("sft", "--train x.jsonl")
    with pytest.raises(UserError, match=r"--prepare-args: .*RUN sets --sources, --out-dir, --tokenizer itself"):
        stage_flags("prepare", "--tokenizer tok")


def test_report_text_is_inert_markdown():
    assert _md("<script>alert(1)</script> **x** [a](b)") == (
        r"\<script\>alert(1)\</script\> \*\*x\*\* \[a\](b)")
    assert _md("two\nlines") == "two lines"
