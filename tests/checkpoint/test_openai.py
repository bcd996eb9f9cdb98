"""OpenAI's original GPT-2 release files, read without TensorFlow, against a checkpoint TensorFlow itself wrote.

The fixture (fixtures/openai_gpt2_tiny/, made by make_fixture.py there) holds the same weights twice: as
TensorFlow's Saver wrote them in OpenAI's variable names, and in Hugging Face's format.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from gpt2kit.checkpoint import load_model, resolve_checkpoint
from gpt2kit.checkpoint.tf_bundle import crc32c, read_bundle_index
from gpt2kit.cli import main
from gpt2kit.errors import UserError

ARCHIVE = Path(__file__).parent / "fixtures" / "openai_gpt2_tiny" / "openai_gpt2_tiny.tar.xz"
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> Path:
    """The archive unpacked: ``openai/`` (TensorFlow's files) and ``hf/`` (the same weights, HF format)."""
    root = tmp_path_factory.mktemp("openai_fixture")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture
def release(unpacked, tmp_path) -> Path:
    """A fresh copy of the OpenAI-format directory that a test may damage."""
    return Path(shutil.copytree(unpacked / "openai", tmp_path / "models" / "124M"))


def _logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


def test_crc32c_known_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    data = bytes(range(256)) * 300  # long enough for the lane-parallel path
    assert crc32c(data) == crc32c(data[:1000] + data[1000:])
    assert crc32c(data) != crc32c(data[:-1] + b"\x00")


def test_openai_files_give_the_logits_of_the_same_weights_in_hf_format(unpacked):
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    ours = load_model(unpacked / "openai")
    assert ours.format == "openai" and ours.config.n_embd == 8 and ours.config.block_size == 16
    want = _logits(load_model(unpacked / "hf").model, idx)
    torch.testing.assert_close(_logits(ours.model, idx), want, atol=1e-5, rtol=0)
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(unpacked / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, want, atol=1e-5, rtol=0)


def test_sample_reads_the_release_directory_its_files_and_the_tf_prefix(unpacked, capsys):
    argv = ["--prompt", "Hello", "--max-new-tokens", "6", "--temperature", "0", "--no-stop"]
    outputs = []
    for spec in (unpacked / "hf", unpacked / "openai", unpacked / "openai" / "model.ckpt.index",
                 unpacked / "openai" / "model.ckpt"):
        assert main(["sample", "--checkpoint", str(spec), *argv]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0].startswith("Hello") and len(set(outputs)) == 1


def test_index_holds_what_tensorflow_wrote(unpacked):
    header, entries = read_bundle_index(unpacked / "openai" / "model.ckpt.index")
    assert header["num_shards"] == 1
    assert entries["model/h1/attn/c_attn/w"]["shape"] == [1, 8, 24]
    assert entries["model/wte"]["size"] == 50257 * 8 * 4


def _one_line(spec: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(spec), "--max-new-tokens", "1"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_truncated_data_file_is_one_line(release, capsys):
    data = release / DATA
    data.write_bytes(data.read_bytes()[:100_000])
    line = _one_line(release, capsys)
    assert DATA in line and "truncated" in line and "re-download" in line


def test_corrupt_data_file_fails_its_checksum(release):
    data = release / DATA
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"checksum mismatch in model/wte; the file is corrupt"):
        load_model(release)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_corrupt_index_is_one_line(release, capsys, damage):
    index = release / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    if damage == "flip a byte":
        raw[40] ^= 0x01
    else:
        raw = raw[: len(raw) // 2]
    index.write_bytes(bytes(raw))
    line = _one_line(release, capsys)
    assert "model.ckpt.index: not a readable TensorFlow checkpoint index" in line
    assert ("checksum mismatch" if damage == "flip a byte" else "wrong magic number") in line


def test_missing_or_wrong_hparams_is_one_line(release, capsys):
    hp = json.loads((release / "hparams.json").read_text())
    (release / "hparams.json").write_text(json.dumps({**hp, "n_layer": 1}))
    assert "has layer h1 but hparams.json says n_layer 1" in _one_line(release, capsys)
    (release / "hparams.json").write_text(json.dumps({**hp, "n_layer": 3}))
    assert "no tensor model/h2/" in _one_line(release, capsys)
    (release / "hparams.json").unlink()
    assert "hparams.json: file not found" in _one_line(release, capsys)


def test_tokenizer_files_must_be_gpt2s(release):
    from gpt2kit.tokenizer import _bytes_to_unicode, get_tokenizer

    char = _bytes_to_unicode()
    vocab = {"".join(char[b] for b in t): r for t, r in get_tokenizer().ranks.items()}
    vocab["<|endoftext|>"] = 50256
    (release / "encoder.json").write_text(json.dumps(vocab))
    (release / "vocab.bpe").write_text("#version: 0.2\nĠ t\nĠ a\nh e\n")  # GPT-2's first merges, then it stops
    with pytest.raises(UserError, match="vocab.bpe: 3 merges, GPT-2 has 50000"):
        load_model(release)
    (release / "vocab.bpe").write_text("#version: 0.2\nĠ t\nh e\n")
    with pytest.raises(UserError, match=r"vocab.bpe: merge 2 \('h e'\) is not GPT-2's"):
        load_model(release)
    (release / "vocab.bpe").unlink()
    assert load_model(release).format == "openai"  # GPT-2's own encoder.json passes
    vocab["Ġthe"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġthe"]
    (release / "encoder.json").write_text(json.dumps(vocab))
    with pytest.raises(UserError, match="encoder.json: not GPT-2's vocabulary"):
        load_model(release)


def test_an_openai_dir_resolves_as_openai(unpacked):
    assert resolve_checkpoint(unpacked / "openai") == ("openai", unpacked / "openai")
    assert resolve_checkpoint(unpacked / "openai" / "hparams.json") == ("openai", unpacked / "openai")
