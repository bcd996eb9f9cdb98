"""Command-line polish: start-up without torch, help text, plot, which checkpoint sample loaded, file modes, logs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from gpt2kit.cli import build_parser, main

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

COMMANDS = ["prepare", "train", "eval", "eval loss", "eval hellaswag", "eval lambada", "sample", "export",
            "finetune", "finetune classify", "finetune sft", "classify", "plot", "demo", "pipeline", "serve", "chat"]


def test_help_and_prepare_never_import_torch(tmp_path):
    (tmp_path / "story.txt").write_text("Call me Ishmael. " * 200, encoding="utf-8")
    script = textwrap.dedent(f"""
        import contextlib, io, sys
        from gpt2kit.cli import main
        for argv in [["--help"]] + [cmd.split() + ["--help"] for cmd in {COMMANDS!r}]:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit:
                    pass
        assert main(["prepare", {str(tmp_path / "story.txt")!r}, "--out", {str(tmp_path / "d")!r},
                     "--workers", "1", "--no-progress"]) == 0
        import gpt2kit
        print("torch" in sys.modules, gpt2kit.__version__)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].split()[0] == "False", "help or prepare imported torch"


def test_the_lazy_package_still_gives_its_public_names():
    import gpt2kit

    assert gpt2kit.GPT.__name__ == "GPT" and callable(gpt2kit.get_tokenizer) and "gpt2-xl" in gpt2kit.MODEL_PRESETS
    assert {"GPT", "GPTConfig", "get_tokenizer"} <= set(dir(gpt2kit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gpt2kit.nope  # noqa: B018


def _help(cmd: str) -> str:
    parser = build_parser()
    for word in cmd.split():
        parser = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
        parser = parser.choices[word]
    return parser.format_help()


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_shows_only_meaningful_defaults(cmd):
    text = " ".join(_help(cmd).split())  # help wraps lines; join them to see each flag's text whole
    assert not re.search(r"\(default: [^)]*\) \(default:", text), f"gpt2kit {cmd} --help states a default twice"
    for junk in ("(default: None)", "[default: None]", "[default: ]", "(default: )"):
        assert junk not in text, f"gpt2kit {cmd} --help shows {junk!r}"


def test_finetune_max_steps_help_names_no_missing_flag():
    text = " ".join(_help("finetune sft").split())
    flags = {o for o in text.split() if o.startswith("--")}
    assert "--max-steps" in flags and "schedule_steps" not in text and "--schedule-steps" not in flags


def _metrics_run(tmp_path, hellaswag: bool):
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"step": s, "loss": 10.0 / s, "lr": 1e-3 * s / 40} for s in range(1, 41)]
    for r in recs[9::10]:
        r["val_loss"] = r["loss"] * 1.1
        if hellaswag:
            r["hellaswag_acc"], r["hellaswag_acc_norm"] = 0.25 + r["step"] / 1000, 0.26 + r["step"] / 1000
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def test_plot_draws_hellaswag_and_a_log_scale_loss(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    drawn = {}
    real = Figure.savefig

    def record(fig, path, *a, **kw):
        ax = fig.axes[0]
        name = re.sub(r"^\.(.+)\.tmp\.\d+$", r"\1", os.path.basename(str(path)))  # written atomically
        drawn[name] = (ax.get_yscale(), [ln.get_label() for ln in ax.get_lines()])
        return real(fig, path, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", record)
    run = _metrics_run(tmp_path, hellaswag=True)
    assert main(["plot", str(run), "--log-scale"]) == 0
    assert drawn["loss.png"] == ("log", ["train loss", "val loss"])
    assert drawn["hellaswag.png"][0] == "linear" and drawn["hellaswag.png"][1][:2] == ["acc_norm", "acc"]
    assert all((run / name).stat().st_size > 1000 for name in ("loss.png", "lr.png", "hellaswag.png"))
    # without HellaSwag scores and without the flag: no hellaswag.png, a linear loss axis
    drawn.clear()
    (tmp_path / "b").mkdir()
    other = _metrics_run(tmp_path / "b", hellaswag=False)
    assert main(["plot", str(other), "--logy"]) == 0 and drawn["loss.png"][0] == "log"
    drawn.clear()
    assert main(["plot", str(other)]) == 0
    assert drawn["loss.png"][0] == "linear" and "hellaswag.png" not in drawn and not (other / "hellaswag.png").exists()


def test_plot_draws_val_bpb_and_any_metric_asked_for(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    drawn = {}
    real = Figure.savefig

    def record(fig, path, *a, **kw):
        name = re.sub(r"^\.(.+)\.tmp\.\d+$", r"\1", os.path.basename(str(path)))  # written atomically
        drawn[name] = [(ln.get_label(), list(ln.get_ydata())) for ln in fig.axes[0].get_lines()]
        return real(fig, path, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", record)
    run = _metrics_run(tmp_path, hellaswag=False)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r["grad_norm"] = 1.0 / r["step"]
        if "val_loss" in r:
            r["val_bpb"] = r["val_loss"] / 3
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["plot", str(run)]) == 0  # a run that recorded val_bpb gets bpb.png
    assert drawn["bpb.png"] == [("val bits per byte", [r["val_bpb"] for r in recs if "val_bpb" in r])]
    assert (run / "bpb.png").stat().st_size > 1000 and "grad_norm.png" not in drawn
    assert main(["plot", str(run), "--metric", "val_bpb", "--metric", "grad_norm"]) == 0
    assert drawn["grad_norm.png"] == [("grad_norm", [r["grad_norm"] for r in recs])]
    assert f"wrote {run / 'grad_norm.png'}" in capsys.readouterr().out
    # a key the run did not record, or one a fixed figure shows: one line each
    for flag, message in (("mfu", "records no 'mfu'; it has grad_norm, loss, lr, val_bpb, val_loss"),
                          ("lr", "--metric lr: already drawn in lr.png")):
        assert main(["plot", str(run), "--metric", flag]) == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_sample_says_which_checkpoint_it_loaded(tmp_path, capsys):
    from gpt2kit import GPT, GPTConfig
    from gpt2kit.checkpoint import save_checkpoint, step_checkpoint_path, write_best

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny"))
    run = tmp_path / "run"
    for step in (5, 9):
        save_checkpoint(step_checkpoint_path(run, step), {"model": model.state_dict(), "step": step,
                                                          "model_config": model.config.to_dict(),
                                                          "best_val_loss": 4.25})
    argv = ["sample", "--checkpoint", str(run), "--max-new-tokens", "2", "--prompt", "Hi"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"loaded {step_checkpoint_path(run, 9)}: the latest (the run has no best by validation loss), step 9" in err
    write_best(run, step_checkpoint_path(run, 5), 5, 4.25)
    assert main(argv) == 0
    out = capsys.readouterr()
    assert f"loaded {step_checkpoint_path(run, 5)}: the best by validation loss (4.2500), step 5" in out.err
    assert "loaded" not in out.out, "stdout is the generated text only"


def test_exported_weights_follow_the_umask_like_every_other_file(tmp_path):
    from safetensors.torch import save_file

    from gpt2kit.io import atomic_write_text, atomic_write_with

    old = os.umask(0o027)
    try:
        atomic_write_with(tmp_path / "model.safetensors", lambda tmp: save_file({"w": torch.zeros(2)}, str(tmp)))
        atomic_write_text(tmp_path / "config.json", "{}")
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert modes == {"model.safetensors": 0o640, "config.json": 0o640}  # safetensors alone would give 0o600


def test_a_redirected_log_shows_the_final_progress_line_once(tmp_path, capsys):
    from gpt2kit.data.prepare import prepare

    (tmp_path / "s.txt").write_text("Call me Ishmael. Some years ago, never mind how long. " * 120, encoding="utf-8")
    prepare([tmp_path / "s.txt"], tmp_path / "data", workers=1, progress=False)
    # capsys's stderr is not a terminal, as `> train.log 2>&1`; the messages after the last step (eval, save,
    # done) each made tqdm redraw the finished bar there
    rc = main(["train", "--preset", "demo-cpu", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
               "--max-steps", "3", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
               "--batch-size", "2", "--dtype", "float32", "--samples", "0", "--no-tensorboard", "--eval-every", "3",
               "--eval-batches", "1", "--progress"])
    out, err = capsys.readouterr()
    assert rc == 0 and "step 3: val_loss" in out
    final = [seg for seg in err.replace("\r", "\n").splitlines() if "3/3" in seg and seg.startswith("train")]
    assert len(final) == 1, f"the final progress line appears {len(final)} times:\n{err[-3000:]}"
