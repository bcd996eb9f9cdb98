"""Exports of a model over a trained vocabulary: the Hugging Face directory's tokenizer encodes as gpt2kit does and
its weights give gpt2kit's logits; the GGUF file holds the model's own vocabulary; both read back into gpt2kit."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2kit.checkpoint import export_hf, load_model
from gpt2kit.cli import main
from gpt2kit.errors import UserError

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # transformers loads in seconds: the slow tier

TEXTS = ["Call me Ishmael.", "User: What is 2 + 3?\nAssistant: 2 + 3 = 5.", "naïve café 👋🏽 नमस्ते", "  two  spaces\n\n"]


def test_hf_export_encodes_and_predicts_as_gpt2kit(trained_vocab_checkpoint, trained_tokenizer, tmp_path):
    out = tmp_path / "hf"
    export_hf(trained_vocab_checkpoint, out)
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"]) == (300, 299)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        ids = trained_tokenizer.encode(text)
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == trained_tokenizer.eot
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ours = load_model(trained_vocab_checkpoint).model
    idx = torch.tensor([trained_tokenizer.encode(TEXTS[1])])
    with torch.no_grad():
        want, _ = ours(idx)
        got = hf_model(idx).logits
    torch.testing.assert_close(got, want[..., :300], atol=1e-4, rtol=0)
    # gpt2kit reads its export back with the same tokenizer
    back = load_model(out)
    assert back.tokenizer.name == trained_tokenizer.name and back.config.vocab_size == 300


def test_hf_export_without_its_tokenizer_files_is_refused(trained_vocab_checkpoint, tmp_path):
    out = tmp_path / "hf"
    export_hf(trained_vocab_checkpoint, out)
    (out / "gpt2kit_tokenizer.json").unlink()
    with pytest.raises(UserError, match=r"config.json: vocab_size is 300, not GPT-2's 50257.*gpt2kit_tokenizer.json"):
        load_model(out)


def test_gguf_export_holds_the_models_vocabulary(trained_vocab_checkpoint, trained_tokenizer, tmp_path):
    gguf = pytest.importorskip("gguf")
    from gpt2kit.tokenizer import byte_level_vocab_of

    path = tmp_path / "m.gguf"
    assert main(["export", "--checkpoint", str(trained_vocab_checkpoint), "--format", "gguf", "--out",
                 str(path)]) == 0
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tokens, merges = byte_level_vocab_of(trained_tokenizer.ranks)
    assert fields["tokenizer.ggml.tokens"] == list(tokens)
    assert fields["tokenizer.ggml.merges"] == list(merges)
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.bos_token_id"] == 299
    assert fields["tokenizer.ggml.token_type"][299] == gguf.TokenType.CONTROL
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert [int(n) for n in emb.shape] == [32, 300]  # the real vocabulary's rows, not the 320 padded ones
