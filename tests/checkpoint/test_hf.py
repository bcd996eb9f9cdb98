"""Parity with transformers' GPT-2: load its weights, export ours, compare logits both ways."""

import json

import pytest
import torch

from gpt2kit import GPT
from gpt2kit.checkpoint import load_model, model_state_dict, save_checkpoint
from gpt2kit.checkpoint.hf import write_hf_dir
from gpt2kit.errors import UserError

transformers = pytest.importorskip("transformers")


def _hf_logits(directory, idx):
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(idx).logits


def test_load_hf_matches_transformers(hf_tiny_dir):
    idx = torch.randint(0, 50257, (2, 16))
    ours = load_model(str(hf_tiny_dir)).model.eval()
    with torch.no_grad():
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, _hf_logits(hf_tiny_dir, idx), atol=1e-4, rtol=0)


def test_export_round_trip(hf_tiny_dir, tmp_path):
    idx = torch.randint(0, 50257, (2, 16))
    model = load_model(str(hf_tiny_dir)).model.eval()
    out = tmp_path / "exported"
    write_hf_dir(model_state_dict(model), model.config, out)
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    torch.testing.assert_close(_hf_logits(out, idx), _hf_logits(hf_tiny_dir, idx), atol=1e-4, rtol=0)


def test_export_from_padded_vocab_checkpoint(tmp_path, tiny_config):
    from gpt2kit import GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig.from_preset("tiny", padded_vocab_size=50304)
    model = GPT(cfg).eval()
    save_checkpoint(tmp_path / "m.pt", {"model_config": cfg.to_dict(), "model": model_state_dict(model)})
    loaded = load_model(tmp_path / "m.pt")
    out = tmp_path / "hf"
    write_hf_dir(model_state_dict(loaded.model), loaded.config, out)
    idx = torch.randint(0, 50257, (1, 10))
    with torch.no_grad():
        ours, _ = model(idx)
    torch.testing.assert_close(_hf_logits(out, idx), ours, atol=1e-4, rtol=0)


def test_pytorch_model_bin_and_unprefixed_keys(hf_tiny_dir, tmp_path):
    from safetensors.torch import load_file

    sd = load_file(str(hf_tiny_dir / "model.safetensors"))
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    # OpenAI's original hub files store GPT2Model keys without the "transformer." prefix
    torch.save({k.removeprefix("transformer."): v for k, v in sd.items()}, d / "pytorch_model.bin")
    idx = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        a, _ = load_model(str(d)).model(idx)
    torch.testing.assert_close(a, _hf_logits(hf_tiny_dir, idx), atol=1e-4, rtol=0)


def test_bad_weight_dirs(hf_tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="not a gpt2kit run directory"):
        load_model(empty)

    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    with pytest.raises(UserError, match="no model.safetensors or pytorch_model.bin"):
        load_model(no_weights)

    sd = load_file(str(hf_tiny_dir / "model.safetensors"))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    save_file({k: v for k, v in sd.items() if ".h.1." not in k}, str(partial / "model.safetensors"))
    with pytest.raises(UserError, match="missing"):
        load_model(partial)

    wrong = tmp_path / "wrongshape"
    wrong.mkdir()
    (wrong / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    sd2 = dict(sd)
    sd2["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(32, 64)
    save_file(sd2, str(wrong / "model.safetensors"))
    with pytest.raises(UserError, match="shape"):
        load_model(wrong)

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    data = (hf_tiny_dir / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read weights"):
        load_model(truncated)

    vocab = tmp_path / "vocab"
    vocab.mkdir()
    cfg = json.loads((hf_tiny_dir / "config.json").read_text())
    cfg["vocab_size"] = 32000
    (vocab / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="not GPT-2's 50257"):
        load_model(vocab)


def test_pickled_code_checkpoint_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"kind": "gpt2kit-checkpoint", "payload": Evil()}, path)
    with pytest.raises(UserError, match="refused to load"):
        load_model(path)


def test_hub_name_offline_is_clear():
    with pytest.raises(UserError, match="Hugging Face Hub"):
        load_model("this-org-does-not-exist-gpt2kit/none")
