"""The gpt2kit checkpoint file: round trip, what is refused (one line naming the file), and old files still load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt2kit.checkpoint import (
    CHECKPOINT_KIND,
    FORMAT_VERSION,
    find_resume,
    load_model,
    model_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from gpt2kit.errors import UserError
from gpt2kit.tokenizer import TOKENIZER_ID

V1 = Path(__file__).parent / "fixtures" / "format_v1.pt"


def _one_line(err: pytest.ExceptionInfo, path: Path) -> str:
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)), text
    return text


def test_a_checkpoint_reads_back_what_was_saved_with_its_format_stamped(tmp_path, small_model):
    path = tmp_path / "m.pt"
    sd = model_state_dict(small_model)
    save_checkpoint(path, {"model_config": small_model.config.to_dict(), "model": sd, "step": 7})
    ckpt = read_checkpoint(path)
    assert (ckpt["format_version"], ckpt["kind"], ckpt["tokenizer"], ckpt["step"]) == (
        FORMAT_VERSION, CHECKPOINT_KIND, TOKENIZER_ID, 7)
    assert "lm_head.weight" not in ckpt["model"]  # tied: saved once, as transformer.wte.weight
    assert all(torch.equal(ckpt["model"][k], v) for k, v in sd.items())
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert torch.equal(load_model(path).model(idx)[0], small_model(idx)[0])
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # written under a temporary name, then renamed


def test_a_payload_without_weights_or_config_is_a_programming_error(tmp_path, small_model):
    with pytest.raises(ValueError, match="'model'"):
        save_checkpoint(tmp_path / "m.pt", {"model_config": small_model.config.to_dict()})
    with pytest.raises(ValueError, match="'model_config'"):
        save_checkpoint(tmp_path / "m.pt", {"model": {}})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("change, message", [
    ({"format_version": FORMAT_VERSION + 1}, f"is newer than this gpt2kit reads ({FORMAT_VERSION}); upgrade gpt2kit"),
    ({"kind": "someone-else"}, f"not a gpt2kit checkpoint (no kind={CHECKPOINT_KIND!r})"),
    ({"tokenizer": "llama"}, "records tokenizer 'llama' without its files"),
])
def test_version_kind_and_tokenizer_are_checked(tmp_path, change, message):
    path = tmp_path / "x.pt"
    torch.save({"format_version": FORMAT_VERSION, "kind": CHECKPOINT_KIND, "model_config": {}, "model": {},
                **change}, path)
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert message in _one_line(err, path)


def test_a_plain_state_dict_or_tensor_is_not_a_checkpoint(tmp_path):
    for i, obj in enumerate(({"transformer.wte.weight": torch.zeros(2)}, torch.zeros(3))):
        path = tmp_path / f"{i}.pt"
        torch.save(obj, path)
        with pytest.raises(UserError, match="not a gpt2kit checkpoint"):
            read_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("ran code from a checkpoint",))


def test_loading_never_unpickles_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"kind": CHECKPOINT_KIND, "format_version": 1, "payload": _RunsCode()}, path)
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert "refused to load" in _one_line(err, path)
    assert "ran code" not in capsys.readouterr().out


def test_a_missing_or_cut_file_is_one_line(tmp_path, small_model):
    with pytest.raises(UserError) as err:
        read_checkpoint(tmp_path / "none.pt")
    assert _one_line(err, tmp_path / "none.pt").endswith("checkpoint file not found")
    path = tmp_path / "cut.pt"
    save_checkpoint(path, {"model_config": small_model.config.to_dict(), "model": model_state_dict(small_model)})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert "it may be truncated or corrupt" in _one_line(err, path)


def test_a_format_1_trainer_checkpoint_still_loads_and_resumes():
    # written once by fixtures/make_format_v1.py; a later format must keep reading it
    ckpt = read_checkpoint(V1)
    assert ckpt["format_version"] == 1 and ckpt["step"] == 1
    loaded = load_model(V1)
    probe = ckpt["probe"]
    with torch.no_grad():
        assert torch.allclose(loaded.model(probe["idx"])[0], probe["logits"], atol=1e-5, rtol=0)
    point = find_resume("unused", str(V1))
    assert point is not None and point.path == V1 and point.checkpoint["optimizer"]["state"]
