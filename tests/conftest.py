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
