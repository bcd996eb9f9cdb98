"""W&B tracking: records, config and samples reach the run (offline mode, as tests run it); a service that cannot be
reached or fails later turns tracking off with one line and never stops the caller."""

from __future__ import annotations

import json
import sys
import types

import pytest

from gpt2kit.errors import UserError
from gpt2kit.train.metrics import MetricsWriter
from gpt2kit.train.tracking import RUN_ID_FILE, WandbTracker


class FakeRun:
    def __init__(self, fail_log=False):
        self.id, self.logged, self.finished, self.fail_log = "abc123", [], False, fail_log

    def log(self, data, step):
        if self.fail_log:
            raise ConnectionError("service unavailable\nlong traceback text")
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def fake_wandb(monkeypatch, *, init_error=None, run=None):
    mod = types.ModuleType("wandb")
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        if init_error:
            raise init_error
        return run

    mod.init, mod.Settings = init, lambda **kw: kw
    mod.Table = lambda columns, data: {"columns": columns, "data": [list(r) for r in data]}
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return calls


def test_records_config_and_samples_reach_the_run(tmp_path, monkeypatch):
    run = FakeRun()
    calls = fake_wandb(monkeypatch, run=run)
    tracker = WandbTracker("proj", run_name="r1", config={"lr": 0.1}, run_dir=tmp_path)
    writer = MetricsWriter(tmp_path, tensorboard=False, tracker=tracker)
    writer.log({"step": 5, "loss": 2.5, "val_loss": 3.0, "hellaswag_acc_norm": 0.3, "lr": float("nan"),
                "note": "text", "compiled": True})
    writer.log_samples(5, ["once upon", "a time"])
    writer.close()
    assert calls[0]["project"] == "proj" and calls[0]["name"] == "r1" and calls[0]["config"] == {"lr": 0.1}
    assert run.logged[0] == (5, {"train/loss": 2.5, "val/loss": 3.0, "hellaswag/acc_norm": 0.3})
    step, table = run.logged[1]
    assert step == 5 and table["samples"]["data"] == [[5, 0, "once upon"], [5, 1, "a time"]]
    assert run.finished and (tmp_path / RUN_ID_FILE).read_text().strip() == "abc123"
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 2.5


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    (tmp_path / RUN_ID_FILE).write_text("abc123\n")
    calls = fake_wandb(monkeypatch, run=FakeRun())
    WandbTracker("proj", run_dir=tmp_path).close()
    assert calls[0]["id"] == "abc123" and calls[0]["resume"] == "allow"


def test_unreachable_service_says_so_once_and_keeps_going(tmp_path, monkeypatch):
    fake_wandb(monkeypatch, init_error=TimeoutError("timed out after 30 seconds"))
    said = []
    tracker = WandbTracker("proj", run_dir=tmp_path, say=said.append)
    writer = MetricsWriter(tmp_path, tensorboard=False, tracker=tracker)
    for step in range(3):
        writer.log({"step": step, "loss": 1.0})
    writer.log_samples(2, ["x"])
    writer.close()
    assert not tracker.active and len(said) == 1
    assert said[0] == ("warning: wandb: could not start a run (timed out after 30 seconds); "
                       "training continues without W&B logging")
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_later_failure_turns_tracking_off_with_one_line(tmp_path, monkeypatch):
    fake_wandb(monkeypatch, run=FakeRun(fail_log=True))
    said = []
    tracker = WandbTracker("proj", run_dir=tmp_path, say=said.append)
    for step in range(3):
        tracker.log({"step": step, "loss": 1.0})
    assert said == ["warning: wandb: logging failed (service unavailable); training continues without W&B logging"]


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(UserError, match=r"--wandb: the wandb package is not installed; pip install 'gpt2kit\[wandb\]'"):
        WandbTracker("proj")


@pytest.mark.slow  # the real wandb client, offline
def test_real_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = WandbTracker("gpt2kit-test", run_name="offline", config={"lr": 0.1}, run_dir=tmp_path)
    assert tracker.active
    tracker.log({"step": 1, "loss": 2.0})
    tracker.log({"step": 2, "loss": 1.5, "val_loss": 1.7})
    tracker.log_samples(3, ["hello"])  # wandb commits a step's data when a later step arrives
    run = tracker._run
    assert run.summary["train/loss"] == 1.5 and run.summary["val/loss"] == 1.7 and run.config["lr"] == 0.1
    tracker.close()
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == run.id
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run.id}/run-{run.id}.wandb")), wandb.__version__


@pytest.mark.slow  # whole runs
def test_train_with_wandb_offline_and_with_an_unreachable_service(tiny_cfg, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    from gpt2kit.train.pretrain import run_pretraining

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    res = run_pretraining(tiny_cfg(max_steps=3, eval_every=2, samples=1, sample_tokens=4, wandb="gpt2kit-test",
                                   wandb_run="tiny"))
    run_dir = tmp_path / "run"
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    assert res.step == 3 and list((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert json.loads((run_dir / "train_config.json").read_text())["wandb"] == "gpt2kit-test"

    monkeypatch.setenv("WANDB_MODE", "online")
    calls = fake_wandb(monkeypatch, init_error=ConnectionError("Network is unreachable"))
    capsys.readouterr()
    res = run_pretraining(tiny_cfg(max_steps=2, wandb="gpt2kit-test", out=str(tmp_path / "run2")))
    out = capsys.readouterr().out  # the loop's messages
    assert res.step == 2 and calls and out.count("warning: wandb: could not start a run (Network is unreachable)") == 1


def test_wandb_flags_on_train_and_finetune():
    from gpt2kit.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    finetune = next(a for a in commands["finetune"]._actions if getattr(a, "choices", None)).choices
    for parser in (commands["train"], finetune["sft"], finetune["classify"]):
        opts = {o for a in parser._actions for o in a.option_strings}
        assert {"--wandb", "--wandb-run"} <= opts


def test_wandb_settings_are_saved_only_when_set():
    """Configs without --wandb keep the keys older versions know; with it, the settings round-trip."""
    from gpt2kit.train.presets import get_preset
    from gpt2kit.train.resolve import apply_overrides, changed_settings

    plain = get_preset("demo-cpu")
    assert "wandb" not in plain.to_dict() and "wandb_run" not in plain.to_dict()
    tracked = apply_overrides(plain, {"wandb": "proj", "wandb_run": "r1"})
    saved = tracked.to_dict()
    assert saved["wandb"] == "proj" and saved["wandb_run"] == "r1"
    assert type(plain).from_dict(saved).logging.wandb == "proj"
    assert changed_settings(plain, tracked) == {"wandb": "proj", "wandb_run": "r1"}
    assert changed_settings(tracked, plain) == {"wandb": None, "wandb_run": None}
