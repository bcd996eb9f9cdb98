"""Shared fixtures: tiny models only, so the whole suite runs on a 2-core CPU.

Tests that take the ``device`` fixture form the GPU tier: they run on ``GPT2KIT_TEST_DEVICE`` (default cpu),
so ``GPT2KIT_TEST_DEVICE=cuda pytest -m device`` runs them on a GPU (``make gpu-check`` does).
"""

from __future__ import annotations

import os

import pytest
import torch

TEST_DEVICE = os.environ.get("GPT2KIT_TEST_DEVICE", "cpu")
if TEST_DEVICE.startswith("cuda"):
    # cuBLAS is run-to-run deterministic only with a fixed workspace; it must be set before cuBLAS starts, and the
    # GPU tier compares resumed runs bitwise
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: takes the device fixture (the GPU tier; GPT2KIT_TEST_DEVICE)")


# The slow tier (whole runs, subprocesses, torchrun, the crash suite) is the modules that say
# ``pytestmark = pytest.mark.slow``; `make test-fast` (pytest -m "not slow") runs the rest for the edit-run loop.


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device of the GPU tier: GPT2KIT_TEST_DEVICE (cpu, cuda, cuda:N), default cpu."""
    try:
        dev = torch.device(TEST_DEVICE)
    except RuntimeError:
        pytest.fail(f"GPT2KIT_TEST_DEVICE={TEST_DEVICE!r} is not a device name; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"GPT2KIT_TEST_DEVICE={TEST_DEVICE} but torch.cuda.is_available() is False; unset it on a CPU")
    return dev


@pytest.fixture
def tiny_config():
    """A 2-layer, 32-dim GPT-2 config with the real vocabulary."""
    from gpt2kit import GPTConfig

    return GPTConfig.from_preset("tiny")


@pytest.fixture
def hf_tiny_dir(tmp_path):
    """A randomly initialised transformers GPT-2 (2 layers, 32 dims) saved as a Hugging Face directory."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path / "hf_tiny"
    model.save_pretrained(d)
    return d


TRAINED_VOCAB_TEXT = (
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money in my purse, and nothing "
    "particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.\n"
    "User: What is 2 + 3?\nAssistant: 2 + 3 = 5.\n"
    "Emoji 👋🏽 and the naïve café; नमस्ते दुनिया.\n"
) * 20
"""The text the ``trained_tokenizer`` fixture learns its vocabulary from."""


@pytest.fixture(scope="session")
def trained_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer with a 300-token vocabulary (``<|endoftext|>`` = 299), trained in well under a
    second; returns its :class:`~gpt2kit.tokenizer.Tokenizer` (``.path`` is its directory)."""
    from gpt2kit.data.tokenizer_train import train_tokenizer

    src = tmp_path_factory.mktemp("tok_src") / "corpus.txt"
    src.write_text(TRAINED_VOCAB_TEXT, encoding="utf-8")
    return train_tokenizer([str(src)], tmp_path_factory.mktemp("tok") / "t300", vocab_size=300, progress=False)


@pytest.fixture
def trained_vocab_checkpoint(tmp_path, trained_tokenizer):
    """A tiny GPT (2 layers, 32 wide, 64-token context) over ``trained_tokenizer``'s vocabulary, saved as a
    gpt2kit checkpoint carrying that tokenizer: ``tmp_path / "trained_vocab.pt"``."""
    from gpt2kit import GPT, GPTConfig
    from gpt2kit.checkpoint import model_state_dict, save_checkpoint

    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=trained_tokenizer.vocab_size, padded_vocab_size=320, n_layer=2,
                    n_head=2, n_embd=32)
    path = tmp_path / "trained_vocab.pt"
    save_checkpoint(path, {"model_config": cfg.to_dict(), "model": model_state_dict(GPT(cfg)),
                           **trained_tokenizer.checkpoint_record()})
    return path
