"""``export_hf``: the export lands whole or not at all, and never takes files it did not write."""

from __future__ import annotations

import json

import pytest
import torch

import gpt2kit.checkpoint.hf as hf
import gpt2kit.checkpoint.load as load
from gpt2kit.checkpoint import export_hf, load_model, model_state_dict, save_checkpoint
from gpt2kit.errors import UserError
from gpt2kit.model import GPT, GPTConfig

EXPORTED = ["config.json", "generation_config.json", "model.safetensors", "vocab.json"]


@pytest.fixture(autouse=True)
def quick_tokenizer_files(monkeypatch):
    # the real GPT-2 tokenizer files take half a second to derive; tests/checkpoint/test_hf.py exports them
    monkeypatch.setattr(hf, "hf_tokenizer_files", lambda: {"vocab.json": "{}\n"})


def _checkpoint(path, seed: int):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=8)).eval()  # Hugging Face needs GPT-2's vocab
    save_checkpoint(path, {"model_config": model.config.to_dict(), "model": model_state_dict(model)})
    return model


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_an_export_to_a_new_directory_loads_back_the_same_model(tmp_path):
    model = _checkpoint(tmp_path / "m.pt", 0)
    out = tmp_path / "deep" / "hf"
    loaded = export_hf(tmp_path / "m.pt", out)
    assert loaded.source == str(tmp_path / "m.pt") and _names(out) == EXPORTED
    assert _names(out.parent) == ["hf"]  # the temporary directory is gone
    back = load_model(out)
    idx = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        assert back.format == "huggingface" and torch.equal(back.model(idx)[0], model(idx)[0])


def test_an_earlier_export_is_replaced_whole(tmp_path):
    _checkpoint(tmp_path / "a.pt", 0)
    b = _checkpoint(tmp_path / "b.pt", 1)
    out = tmp_path / "hf"
    export_hf(tmp_path / "a.pt", out)
    (out / "vocab.json").unlink()  # an older export, with fewer files
    export_hf(tmp_path / "b.pt", out)
    assert _names(out) == EXPORTED and _names(tmp_path) == ["a.pt", "b.pt", "hf"]
    assert torch.equal(load_model(out).model.transformer.wpe.weight, b.transformer.wpe.weight)


def test_other_files_in_the_directory_stay(tmp_path):
    _checkpoint(tmp_path / "m.pt", 0)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    (out / "config.json").write_text("{}")
    export_hf(tmp_path / "m.pt", out)
    assert _names(out) == sorted(["README.md", *EXPORTED]) and (out / "README.md").read_text() == "my notes\n"
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"


def test_a_symlinked_directory_stays_a_symlink(tmp_path):
    _checkpoint(tmp_path / "m.pt", 0)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    export_hf(tmp_path / "m.pt", tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and _names(tmp_path / "real") == EXPORTED


def test_a_failed_export_leaves_the_directory_as_it_was(tmp_path, monkeypatch):
    _checkpoint(tmp_path / "m.pt", 0)
    out = tmp_path / "hf"
    export_hf(tmp_path / "m.pt", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(sd, cfg, directory, tokenizer=None):
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(load, "write_hf_dir", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_hf(tmp_path / "m.pt", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _names(tmp_path) == ["hf", "m.pt"]


def test_an_export_over_a_file_is_refused(tmp_path):
    (tmp_path / "hf").write_text("not a directory")
    with pytest.raises(UserError, match=r"hf: exists and is not a directory"):
        export_hf(tmp_path / "m.pt", tmp_path / "hf")


def test_the_working_directory_is_exported_into_not_swapped(tmp_path, monkeypatch):
    _checkpoint(tmp_path / "m.pt", 0)
    out = tmp_path / "hf"
    export_hf(tmp_path / "m.pt", out)
    inode = out.stat().st_ino
    monkeypatch.chdir(out)
    export_hf(tmp_path / "m.pt", ".")
    assert out.stat().st_ino == inode and _names(out) == EXPORTED
