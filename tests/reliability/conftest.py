"""Fixtures of the reliability suite (helpers live in reliability_harness.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from multirank_harness import WarmLaunchers
from reliability_harness import HOOKS, MAX_STEPS, SEED, ForkServer, final_state, train_argv, write_corpus

from gpt2kit.data.prepare import prepare


@pytest.fixture(scope="session")
def forkserver(tmp_path_factory):
    """One fork server for the whole session."""
    server = ForkServer(tmp_path_factory.mktemp("forkserver-logs"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def warm_launchers():
    """One server of warm torchrun launchers for the whole session (started at first use)."""
    server = WarmLaunchers()
    yield server
    server.close()


@pytest.fixture
def rng() -> random.Random:
    """The seeded random source for kill points."""
    return random.Random(SEED)


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """A prepared directory of ~10k tokens (10% validation) for tiny training runs."""
    root = tmp_path_factory.mktemp("train-data")
    corpus = write_corpus(root / "corpus.jsonl", num_docs=80, words_per_doc=100)
    prepare([corpus], root / "data", val_fraction=0.1, workers=1, progress=False)
    return root / "data"


@pytest.fixture(scope="session")
def train_reference(forkserver, train_data, tmp_path_factory) -> tuple[dict, float]:
    """The final state of an uninterrupted tiny training run, and how long it took."""
    run = tmp_path_factory.mktemp("ref") / "run"
    r = forkserver.run(train_argv(train_data, run), hooks=HOOKS)
    assert r.returncode == 0, r.log
    state = final_state(run)
    assert state["final checkpoint"]["step"] == MAX_STEPS and state["stray files"] == []
    return state, r.seconds
