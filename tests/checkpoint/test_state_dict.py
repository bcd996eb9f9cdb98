"""Weights between a live model and a checkpoint: wrapper prefixes, the tied head, the checked load."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gpt2kit.checkpoint import load_state_dict_checked, model_state_dict, strip_wrapper_prefixes, unwrap_model
from gpt2kit.errors import UserError
from gpt2kit.model import GPT


class _Compiled(nn.Module):
    """What ``torch.compile`` returns, as far as state dicts go: the module under ``_orig_mod``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


def test_wrapper_prefixes_are_stripped_at_the_front_and_inside_the_path():
    sd = {"_orig_mod.module.transformer.h.0._fsdp_wrapped_module._checkpoint_wrapped_module.ln_1.weight": 1,
          "transformer.wte.weight": 2}
    assert strip_wrapper_prefixes(sd) == {"transformer.h.0.ln_1.weight": 1, "transformer.wte.weight": 2}


def test_a_wrapped_model_saves_plain_names_without_the_tied_head(small_model):
    wrapped = _Compiled(small_model)
    assert unwrap_model(wrapped) is small_model
    sd = model_state_dict(wrapped)
    assert set(sd) == set(small_model.state_dict()) - {"lm_head.weight"}


def test_weights_load_into_a_fresh_model_and_the_head_is_tied_again(small_model):
    fresh = GPT(small_model.config)
    load_state_dict_checked(fresh, {f"module.{k}": v for k, v in model_state_dict(small_model).items()}, "src")
    assert torch.equal(fresh.lm_head.weight, small_model.transformer.wte.weight)
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(idx)[0], small_model(idx)[0])


def test_missing_unexpected_and_misshaped_weights_are_one_line_naming_the_source(small_model):
    sd = model_state_dict(small_model)
    missing = {k: v for k, v in sd.items() if k != "transformer.ln_f.bias"}
    with pytest.raises(UserError, match=r"^src\.pt: weights do not match the model config \(missing "
                                        r"\['transformer\.ln_f\.bias'\], unexpected \[\]\)$"):
        load_state_dict_checked(GPT(small_model.config), missing, "src.pt")
    with pytest.raises(UserError, match=r"unexpected \['extra'\]"):
        load_state_dict_checked(GPT(small_model.config), {**sd, "extra": torch.zeros(1)}, "src.pt")
    wrong = {**sd, "transformer.wpe.weight": torch.zeros(4, 8)}
    with pytest.raises(UserError, match=r"tensor transformer\.wpe\.weight has shape \(4, 8\), the model expects "
                                        r"\(8, 8\); was it saved from a different model size\?"):
        load_state_dict_checked(GPT(small_model.config), wrong, "src.pt")
