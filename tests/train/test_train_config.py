"""Training settings: sections validate themselves, the flat form round-trips, old train_config.json files load,
and resolution (preset, saved config, flags) is one implementation for pretraining and fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2kit.checkpoint import ResumePoint
from gpt2kit.errors import UserError
from gpt2kit.finetune.config import LOOP_DERIVED, ClassifyConfig, SFTConfig
from gpt2kit.finetune.run import resolve_finetune_config
from gpt2kit.model.lora_config import LoRAConfig
from gpt2kit.settings import check_nonneg, check_positive, from_flat, replace_flat, to_flat
from gpt2kit.train import resolve
from gpt2kit.train.config import (
    CadenceSettings,
    DistSettings,
    LoopConfig,
    OptimSettings,
    RunSettings,
    ScheduleSettings,
    TrainConfig,
)
from gpt2kit.train.presets import PRESET_ALIASES, PRESETS, get_preset
from gpt2kit.train.pretrain import resolve_train_config

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("make, flag", [
    (lambda: OptimSettings(lr=0.0), "--lr must be > 0"),
    (lambda: OptimSettings(beta2=1.0), r"--beta2 must be in \[0, 1\)"),
    (lambda: OptimSettings(optimizer="sgd"), "--optimizer must be one of"),
    (lambda: ScheduleSettings(decay_fraction=0.0), "--decay-fraction"),
    (lambda: ScheduleSettings(warmup_steps=-1), "--warmup-steps must be >= 0"),
    (lambda: CadenceSettings(save_every=0), "--save-every must be an integer >= 1"),
    (lambda: CadenceSettings(total_batch_tokens=0), "--total-batch-tokens must be > 0"),
    (lambda: DistSettings(dist_timeout=float("inf")), "--dist-timeout"),
    (lambda: RunSettings(max_steps=-1), "--max-steps must be >= 0"),
    (lambda: LoopConfig(optim=OptimSettings(optimizer="muon"), dist=DistSettings(parallel="fsdp")),
     "use --parallel ddp or --optimizer adamw"),
    (lambda: LoopConfig(schedule=ScheduleSettings(warmup_steps=20), cadence=CadenceSettings(schedule_steps=10)),
     r"--warmup-steps \(20\) must be <= --schedule-steps \(10\)"),
    (lambda: TrainConfig.from_dict({"n_embd": 30, "n_head": 4}), "--n-embd"),
    (lambda: ClassifyConfig.from_dict({"lora_rank": 4, "lora_targets": "nope"}), "--lora-targets"),
    (lambda: SFTConfig.from_dict({"sample_tokens": 0}), "--sample-tokens"),
])
def test_each_section_refuses_bad_values_naming_the_flag(make, flag):
    with pytest.raises(ValueError, match=flag):
        make()


def test_check_helpers_name_the_flag_with_its_prefix():
    class S:
        rank, alpha = 0, -1.0

    with pytest.raises(ValueError, match="--lora-rank must be an integer >= 1, got 0"):
        check_positive(S(), "rank", prefix="lora_")
    with pytest.raises(ValueError, match="--lora-alpha must be >= 0"):
        check_nonneg(S(), "alpha", prefix="lora_")


def test_flat_form_round_trips_and_sections_may_be_given_nested():
    cfg = TrainConfig.from_dict({"lr": 1e-3, "n_layer": 3, "max_steps": 7, "samples": 0})
    assert (cfg.optim.lr, cfg.model.n_layer, cfg.run.max_steps, cfg.evals.samples) == (1e-3, 3, 7, 0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    nested = TrainConfig.from_dict({"optim": {"lr": 1e-3}, "model": {"n_layer": 3}, "run": {"max_steps": 7},
                                    "evals": {"samples": 0}})
    assert nested == cfg
    assert replace_flat(cfg, schedule_steps=200).cadence.schedule_steps == 200
    with pytest.raises(ValueError, match=r"unknown TrainConfig settings \['n_layers'\]"):
        TrainConfig.from_dict({"n_layers": 3})


def test_old_flat_pretraining_config_loads_unchanged():
    old = fixture("train_config_v1_pretrain.json")  # written by gpt2kit before the sections
    cfg = TrainConfig.from_dict(old)
    assert cfg.to_dict() == old  # the same keys and values: today's files stay loadable by older versions too
    assert (cfg.model.n_layer, cfg.run.max_steps, cfg.optim.optimizer, cfg.preset) == (3, 300, "muon", "demo-cpu")
    # and the same preset and flags resolve to the same settings today
    new, point = resolve_train_config("demo-cpu", {"out": "runs/old-demo", "data": "data/sotu", "max_steps": 300,
                                                   "n_layer": 3}, log=lambda msg: None)
    assert point is None and new.to_dict() == old


@pytest.mark.parametrize("name, cls", [("train_config_v1_classify_lora.json", ClassifyConfig),
                                       ("train_config_v1_sft.json", SFTConfig)])
def test_old_flat_finetune_configs_load(name, cls):
    old = fixture(name)  # a fine-tune's saved config, with the loop fields it derived (schedule_steps ...)
    cfg = cls.from_dict(old)
    flat = cfg.to_dict()
    assert set(flat) == set(old) - set(LOOP_DERIVED)
    same = {k: v for k, v in old.items() if k not in LOOP_DERIVED and k != "lora_targets"}
    assert {k: flat[k] for k in same} == same
    if cls is ClassifyConfig:
        assert cfg.lora == LoRAConfig(rank=4, alpha=16.0, targets="attn", dropout=0.0)
        assert cfg.lora_for_blocks((1,)).blocks == (1,) and cfg.classify.labels == "ham,spam"
    else:
        assert cfg.lora is None and cfg.sft.pack and cfg.finetune.epochs == 2
    assert cls.from_dict(flat) == cfg


def test_finetune_composes_the_shared_sections_and_derives_the_cadence():
    cfg = SFTConfig.from_dict({"out": "r", "epochs": 3, "evals_per_epoch": 2, "max_steps": 5, "lr": 2e-5})
    loop = cfg.loop_config(steps_per_epoch=10)
    assert (loop.cadence.schedule_steps, loop.cadence.eval_every, loop.cadence.save_every) == (30, 5, 5)
    assert loop.optim is cfg.optim and loop.run is cfg.run and loop.last_step == 5
    assert "schedule_steps" not in cfg.to_dict() and "eval_every" not in cfg.to_dict()
    # the default learning rate follows --lora-rank; --lora-rank 0 means no LoRA section at all
    assert ClassifyConfig.from_dict({"lora_rank": 8}).optim.lr == 1e-3
    assert ClassifyConfig.from_dict({}).optim.lr == 5e-5 and ClassifyConfig.from_dict({"lora_rank": 0}).lora is None
    assert to_flat(ClassifyConfig())["lora_rank"] == 0


def test_presets_are_functions_over_flat_settings():
    for name, make in PRESETS.items():
        cfg = make()
        assert cfg.preset == name and TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert all(get_preset(alias) == get_preset(target) for alias, target in PRESET_ALIASES.items())
    with pytest.raises(UserError, match="--preset 'gpt3' is unknown"):
        get_preset("gpt3")


def _saved_point(tmp_path, config: dict, record: dict | None = None) -> ResumePoint:
    ckpt = {"config": config, **({"finetune": record} if record else {})}
    return ResumePoint(tmp_path / "run" / "checkpoints" / "step_00000004.pt", ckpt)


def test_resolve_run_is_one_rule_for_resumed_pretraining_and_finetuning(tmp_path, monkeypatch):
    saved = TrainConfig.from_dict({"out": str(tmp_path / "run"), "n_layer": 2, "n_head": 2, "n_embd": 32,
                                   "lr": 1e-3}).to_dict()
    monkeypatch.setattr(resolve, "find_resume", lambda out, spec: _saved_point(tmp_path, saved))
    said: list[str] = []
    cfg, point = resolve_train_config(None, {"resume": str(tmp_path / "run"), "lr": 5e-4}, log=said.append)
    assert point is not None and cfg.model.n_layer == 2 and cfg.optim.lr == 5e-4
    assert cfg.run.out == str(tmp_path / "run")  # no --out: the run directory it resumes
    assert said == ["resuming with changed settings: lr=0.0005"]

    old = fixture("train_config_v1_classify_lora.json")
    monkeypatch.setattr(resolve, "find_resume",
                        lambda out, spec: _saved_point(tmp_path, old, {"task": "classify", "version": 1}))
    said.clear()
    cfg, point = resolve_finetune_config(ClassifyConfig, {"out": "runs/old-spam", "resume": "auto", "epochs": 5},
                                         log=said.append)
    assert cfg.finetune.epochs == 5 and cfg.lora.rank == 4
    assert said == ["resuming with changed settings: epochs=5"]  # the old file's spelling of its settings is no change
    with pytest.raises(UserError, match="resume it with the command that wrote it"):
        resolve_finetune_config(SFTConfig, {"out": "runs/old-spam", "resume": "auto"}, log=said.append)
    monkeypatch.setattr(resolve, "find_resume", lambda out, spec: _saved_point(tmp_path, old))
    with pytest.raises(UserError, match="not a fine-tuning checkpoint"):
        resolve_finetune_config(ClassifyConfig, {"out": "runs/old-spam", "resume": "auto"})


def test_apply_overrides_and_config_files_name_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="--lr must be > 0"):
        resolve.apply_overrides(LoopConfig(), {"lr": -1.0})
    with pytest.raises(UserError, match=r"unknown settings \['lrr'\]"):
        resolve.apply_overrides(LoopConfig(), {"lrr": 1.0})
    bad = tmp_path / "cfg.json"
    bad.write_text(json.dumps({"n_layers": 4}))
    with pytest.raises(UserError, match="unknown setting 'n_layers'; did you mean 'n_layer'"):
        resolve.read_config_file(str(bad), TrainConfig)
    assert from_flat(LoopConfig, {}) == LoopConfig()
