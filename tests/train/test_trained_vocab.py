"""Training on a trained vocabulary: the model's vocabulary follows the data, checkpoints carry the tokenizer,
and data in another vocabulary than the model's is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2kit.checkpoint import latest_checkpoint, load_model, read_checkpoint, save_checkpoint
from gpt2kit.errors import UserError
from gpt2kit.train.pretrain import padded_vocab, resolve_train_config, run_pretraining

pytestmark = pytest.mark.slow  # whole runs: the slow tier


@pytest.fixture(scope="module")
def trained_data(data_dir, trained_tokenizer, tmp_path_factory):
    """The training tests' documents prepared with the 300-token trained tokenizer."""
    from gpt2kit.data.prepare import prepare

    out = tmp_path_factory.mktemp("trained_data") / "prepared"
    prepare([str(data_dir.parent / "docs.jsonl")], out, tokenizer=trained_tokenizer.path, val_fraction=0.1,
            workers=1, progress=False)
    return out


def test_padded_vocab_rounds_up_to_64():
    assert [padded_vocab(v) for v in (257, 300, 4096, 50257)] == [320, 320, 4096, 50304]


def test_the_model_follows_the_data_and_its_checkpoints_carry_the_tokenizer(tiny_cfg, trained_data,
                                                                            trained_tokenizer, tmp_path):
    out = tmp_path / "run"
    result = run_pretraining(tiny_cfg(data=str(trained_data), out=str(out), max_steps=2, eval_every=2))
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["vocab_size"], saved["padded_vocab_size"]) == (300, 320)
    ckpt = read_checkpoint(result.checkpoint)
    assert ckpt["tokenizer"] == trained_tokenizer.name
    assert ckpt["model"]["transformer.wte.weight"].shape[0] == 320
    loaded = load_model(out)
    assert loaded.tokenizer.name == trained_tokenizer.name and loaded.config.vocab_size == 300
    text = "Call me Ishmael. 👋🏽"
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(text)) == text
    assert loaded.tokenizer.encode(text) == trained_tokenizer.encode(text)
    # the run directory holds a copy of the tokenizer for `prepare --tokenizer RUN/tokenizer`
    from gpt2kit.tokenizer import load_tokenizer

    assert load_tokenizer(out / "tokenizer").name == trained_tokenizer.name
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["val_bpb"] > 0 and last["val_loss"] > last["val_bpb"] * 0  # both recorded
    # resuming on GPT-2 data is refused, naming the checkpoint's tokenizer copy as the fix
    cfg, point = resolve_train_config(None, {"out": str(out), "resume": "auto", "max_steps": 4,
                                             "data": str(tiny_cfg().pretrain.data)})
    with pytest.raises(UserError, match=rf"prepared with tokenizer 'gpt2'.*{trained_tokenizer.name}.*"
                                        rf"--tokenizer {out / 'tokenizer'}"):
        run_pretraining(cfg, point)


def test_init_from_weights_in_another_vocabulary_is_refused(tiny_cfg, trained_data, tmp_path):
    gpt2_run = tmp_path / "gpt2_run"
    run_pretraining(tiny_cfg(out=str(gpt2_run), max_steps=1))
    with pytest.raises(UserError, match=r"--data .*prepared with tokenizer 'bpe-.*--init-from .*'gpt2'.*"
                                        r"--tokenizer gpt2"):
        run_pretraining(tiny_cfg(data=str(trained_data), out=str(tmp_path / "ft"), max_steps=1,
                                 init_from=str(gpt2_run)))


def test_a_checkpoint_with_altered_tokenizer_files_is_refused(trained_vocab_checkpoint, tmp_path):
    ckpt = torch.load(trained_vocab_checkpoint, weights_only=True)
    files = ckpt["tokenizer_files"]
    name = next(n for n in files if n.endswith(".tiktoken"))
    files[name] = files[name].replace(" 280\n", " 281\n", 1)
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, ckpt)
    with pytest.raises(UserError, match=r"bad.pt: the checkpoint's tokenizer 'bpe-.*' is unusable \(.*sha256"):
        load_model(bad)
    del ckpt["tokenizer_files"]
    save_checkpoint(bad, ckpt)
    with pytest.raises(UserError, match="without its files"):
        load_model(bad)


def test_an_old_checkpoint_without_a_tokenizer_record_is_gpt2s(tmp_path, tiny_config):
    from gpt2kit import GPT
    from gpt2kit.checkpoint import model_state_dict

    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "kind": "gpt2kit-checkpoint", "model_config": tiny_config.to_dict(),
                "model": model_state_dict(GPT(tiny_config))}, path)
    assert load_model(path).tokenizer.name == "gpt2"
    assert latest_checkpoint(tmp_path) is None
