"""A ``--checkpoint`` that looks like a local path is never sent to the Hugging Face Hub.

A mistyped run directory (``runs/dmeo``) gets one line saying it does not exist, with the closest name
beside it; only bare names and ``org/name`` ids whose ``org`` is not a local directory go to the hub.
"""

from __future__ import annotations

import pytest

import gpt2kit.checkpoint as checkpoint
import gpt2kit.checkpoint.load as checkpoint_load
from gpt2kit.checkpoint import resolve_checkpoint
from gpt2kit.cli import main
from gpt2kit.errors import UserError

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


@pytest.fixture
def in_project(tmp_path, monkeypatch):
    """A working directory with ``runs/demo/`` and ``model.pt``; any hub download fails the test."""
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "model.pt").write_bytes(b"")

    def no_hub(name):
        raise AssertionError(f"{name!r} was sent to the hub")

    monkeypatch.setattr(checkpoint_load, "download_hub_model", no_hub)  # where load_model looks it up
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("spec, hint", [
    ("runs/dmeo", " (did you mean runs/demo?)"),
    ("./modle.pt", " (did you mean model.pt?)"),
    ("model.pth", " (did you mean model.pt?)"),
    ("runs/demo/checkpoints/step_1.pt", ""),
    ("~/no-such-gpt2kit-dir", ""),
    ("/no/such/dir", ""),
    ("hf/org/name", ""),
])
def test_a_missing_local_path_is_one_line_and_never_the_hub(in_project, capsys, spec, hint):
    assert main(["sample", "--checkpoint", spec, "--max-new-tokens", "1"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].endswith(f"no such checkpoint file or directory: {spec}{hint}"), lines


def test_hub_ids_still_go_to_the_hub(in_project):
    assert resolve_checkpoint("gpt2") == ("hub", "gpt2")
    assert resolve_checkpoint("openai-community/gpt2-medium") == ("hub", "openai-community/gpt2-medium")


def test_a_bare_name_that_fails_on_the_hub_says_both(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        checkpoint.load_model("dmeo")
    assert str(err.value).startswith("dmeo: no such local file or directory (did you mean demo?), and downloading "
                                     "it from the Hugging Face Hub failed (OSError)")


def test_a_directory_of_releases_names_them_and_the_hub_name_it_shadows(tmp_path, monkeypatch):
    # gpt_download.py's models_dir="gpt2" holds gpt2/124M, and shadows the hub's "gpt2" in that directory
    (tmp_path / "gpt2" / "124M").mkdir(parents=True)
    (tmp_path / "gpt2" / "124M" / "hparams.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        resolve_checkpoint("gpt2")
    assert str(err.value).endswith("; it holds gpt2/124M: pass one of them; to use the hub's 'gpt2', "
                                   "run from another directory (this one shadows it)")
