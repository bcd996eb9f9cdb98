"""What a ``--checkpoint`` value names, decided from the files alone (nothing is loaded, nothing downloaded)."""

from __future__ import annotations

import pytest

from gpt2kit.checkpoint import resolve_checkpoint, write_best
from gpt2kit.checkpoint.resolve import looks_local
from gpt2kit.errors import UserError


def test_a_run_directory_names_its_best_checkpoint_else_its_latest(tmp_path, write_step):
    run = tmp_path / "run"
    first, _, last = (write_step(run, s) for s in (1, 2, 10))
    assert resolve_checkpoint(run) == ("gpt2kit", last)  # step 10 after step 2: by number, not by name
    write_best(run, first, 1, 3.5)
    assert resolve_checkpoint(run) == ("gpt2kit", first)
    first.unlink()  # best.json naming a pruned file: the latest again
    assert resolve_checkpoint(run) == ("gpt2kit", last)


def test_a_run_directorys_checkpoints_win_over_a_config_json_beside_them(tmp_path, write_step):
    run = tmp_path / "run"
    step = write_step(run, 3)
    (run / "config.json").write_text("{}")
    assert resolve_checkpoint(run) == ("gpt2kit", step)


def test_files_and_sharded_directories_are_gpt2kit_checkpoints(tmp_path):
    (tmp_path / "model.bin.pt").write_bytes(b"")
    sharded = tmp_path / "step_00000004.dcp"
    sharded.mkdir()
    assert resolve_checkpoint(tmp_path / "model.bin.pt") == ("gpt2kit", tmp_path / "model.bin.pt")
    assert resolve_checkpoint(sharded) == ("gpt2kit", sharded)


def test_hugging_face_and_openai_directories(tmp_path):
    hf, release = tmp_path / "hf", tmp_path / "124M"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    release.mkdir()
    for name in ("hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        (release / name).write_bytes(b"")
    assert resolve_checkpoint(hf) == ("huggingface", hf)
    assert resolve_checkpoint(release) == ("openai", release)
    # one of the release's files, or the TensorFlow prefix tf.train.latest_checkpoint gives
    for spec in (release / "model.ckpt.index", release / "hparams.json", release / "model.ckpt"):
        assert resolve_checkpoint(spec) == ("openai", release), spec


def test_a_directory_of_something_else_says_what_it_lacks(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match=r"weights: has weights but no config\.json; copy the model's config"):
        resolve_checkpoint(tmp_path / "weights")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: not a gpt2kit run directory \(no checkpoints/step_\*\.pt or \.dcp\), "
                                        r"a Hugging Face model directory \(no config\.json\) nor an OpenAI"):
        resolve_checkpoint(tmp_path / "empty")


def test_a_mistyped_local_path_names_the_closest_one(tmp_path, monkeypatch, write_step):
    write_step(tmp_path / "runs" / "demo", 1)
    (tmp_path / "model.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    missing = "^no such checkpoint file or directory: "
    with pytest.raises(UserError, match=missing + r"runs/dmeo \(did you mean runs/demo\?\)$"):
        resolve_checkpoint("runs/dmeo")
    with pytest.raises(UserError, match=missing + r"modle\.pt \(did you mean model\.pt\?\)$"):
        resolve_checkpoint("modle.pt")
    with pytest.raises(UserError, match=missing + "/no/such/run$"):
        resolve_checkpoint("/no/such/run")


@pytest.mark.parametrize("spec", ["./gpt2", "../gpt2", "/gpt2", "~/gpt2", "a/b/c", "gpt2.pt", "gpt2.safetensors",
                                  "runs/gpt2", r"runs\gpt2"])
def test_local_looking_values_are_never_hub_ids(tmp_path, monkeypatch, spec):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert looks_local(spec)


@pytest.mark.parametrize("spec", ["gpt2", "gpt2-medium", "openai-community/gpt2", "org/name.v2"])
def test_bare_names_and_org_ids_go_to_the_hub(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    assert not looks_local(spec)
    assert resolve_checkpoint(spec) == ("hub", spec)
