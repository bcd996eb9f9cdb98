"""A model built from a ``transformers.GPT2Config`` (the seed-003 story): ``GPTConfig.from_hf``, ``GPT(hf_config)``."""

from __future__ import annotations

import pytest
import torch

from gpt2kit import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


def test_gpt_accepts_a_gpt2config_and_matches_transformers_parameter_count():
    hf_cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    model = GPT(hf_cfg)
    assert model.config == GPTConfig(block_size=64, n_embd=32, n_layer=2, n_head=2, dropout=0.1)
    assert GPTConfig.from_hf(hf_cfg.to_dict()) == model.config
    assert model.num_params() == transformers.GPT2LMHeadModel(hf_cfg).num_parameters()


def test_the_124m_example_counts_like_transformers_without_allocating():
    hf_cfg = transformers.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    with torch.device("meta"):  # shapes only: nothing is allocated
        ours, theirs = GPT(hf_cfg), transformers.GPT2LMHeadModel(hf_cfg)
    assert ours.num_params() == theirs.num_parameters() == 124_439_808


@pytest.mark.parametrize("option, value", [
    ("activation_function", "relu"),
    ("scale_attn_by_inverse_layer_idx", True),
    ("reorder_and_upcast_attn", True),
    ("add_cross_attention", True),
    ("scale_attn_weights", False),
    ("tie_word_embeddings", False),
    ("n_inner", 100),
    ("attn_pdrop", 0.3),
])
def test_unsupported_options_are_refused_naming_the_option(option, value):
    hf_cfg = transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2, **{option: value})
    with pytest.raises(ValueError, match=option) as err:
        GPT(hf_cfg)
    assert "\n" not in str(err.value)


def test_other_model_types_are_refused():
    with pytest.raises(ValueError, match="model_type is 'llama'"):
        GPTConfig.from_hf({"model_type": "llama", "n_embd": 32})
