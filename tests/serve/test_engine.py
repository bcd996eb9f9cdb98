"""The batching engine in-process: every request's tokens equal what generate() gives it alone."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gpt2kit import GPTConfig
from gpt2kit.generation import generate
from gpt2kit.model.gpt import GPT
from gpt2kit.serve.engine import Engine, QueueFull, SamplingParams, on_passing_thread


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", block_size=128)).eval()


def _run(engine: Engine, jobs: list[tuple[list[int], SamplingParams]], stagger_s: float = 0.0):
    """Submit every job (optionally spaced out, so they join a running batch) and wait for all of them."""
    outs = [[] for _ in jobs]
    reasons = [None] * len(jobs)
    done = [threading.Event() for _ in jobs]
    for i, (prompt, params) in enumerate(jobs):

        def finish(reason: str, i: int = i) -> None:
            reasons[i] = reason
            done[i].set()

        engine.submit(prompt, params, outs[i].append, finish)
        time.sleep(stagger_s * (i % 3))
    for d in done:
        assert d.wait(120), "engine did not finish a request"
    return outs, reasons


def test_batched_tokens_equal_generate_alone(model):
    g = torch.Generator().manual_seed(1)
    lengths = [1, 3, 5, 7, 9, 11, 2, 4, 6, 8, 16, 30]
    prompts = [torch.randint(0, 50257, (n,), generator=g).tolist() for n in lengths]
    jobs = []
    for i, p in enumerate(prompts):
        max_tokens = 6 + 3 * (i % 5)  # rows leave at different steps
        if i % 2:
            params = SamplingParams(max_tokens, temperature=0)
        else:
            params = SamplingParams(max_tokens, temperature=0.9, top_k=50 if i % 4 == 0 else None,
                                    top_p=0.9 if i % 3 == 0 else None, seed=100 + i)
        jobs.append((p, params))
    expected = []
    for p, sp in jobs:
        out = generate(model, torch.tensor([p]), sp.max_tokens, temperature=sp.temperature, top_k=sp.top_k,
                       top_p=sp.top_p, seed=sp.seed)
        expected.append(out[0, len(p):].tolist())
    engine = Engine(model, max_batch=6, max_queue=32)  # fewer slots than requests: some wait, then join
    engine.start()
    try:
        outs, reasons = _run(engine, jobs, stagger_s=0.002)
    finally:
        engine.stop(timeout=60)
    assert reasons == ["length"] * len(jobs)
    assert outs == expected
    assert engine.peak_active == 6


def test_prompts_joining_together_share_one_prefill(model):
    g = torch.Generator().manual_seed(2)
    lengths = [5, 3, 5, 7, 3, 5]
    jobs = []
    for i, n in enumerate(lengths):
        params = (SamplingParams(8, temperature=0) if i % 2 else
                  SamplingParams(8, temperature=0.8, top_k=40, seed=7 + i))
        jobs.append((torch.randint(0, 50257, (n,), generator=g).tolist(), params))
    expected = [generate(model, torch.tensor([p]), sp.max_tokens, temperature=sp.temperature, top_k=sp.top_k,
                         seed=sp.seed)[0, len(p):].tolist() for p, sp in jobs]
    prefills = []
    hook = model.register_forward_pre_hook(
        lambda mod, args: prefills.append(tuple(args[0].shape)) if args[0].size(1) > 1 else None)
    engine = Engine(model, max_batch=6)
    try:
        outs = [[] for _ in jobs]
        done = [threading.Event() for _ in jobs]
        for i, (p, sp) in enumerate(jobs):  # all queued before the engine runs: they join in one turn
            engine.submit(p, sp, outs[i].append, lambda r, i=i: done[i].set())
        engine.start()
        assert all(d.wait(120) for d in done)
    finally:
        engine.stop(timeout=60)
        hook.remove()
    assert outs == expected
    assert sorted(prefills) == [(1, 7), (2, 3), (3, 5)]  # one forward pass per prompt length


def test_stop_token_cancel_and_queue_limit(model):
    prompt = [464, 3290]
    alone = generate(model, torch.tensor([prompt]), 20, temperature=0)[0, 2:].tolist()
    stop = alone[5]  # the 6th greedy token becomes the stop token: the request ends right after it
    engine = Engine(model, max_batch=1, max_queue=1)
    engine.start()
    try:
        outs, reasons = _run(engine, [(prompt, SamplingParams(20, temperature=0, stop_token=stop))])
        assert outs[0] == alone[:alone.index(stop) + 1] and reasons == ["stop"]

        ended = threading.Event()
        gate = threading.Event()

        def on_token(t: int) -> None:
            gate.wait(30)  # holds the engine thread, so the slot stays taken while the test fills the queue

        busy = engine.submit(prompt, SamplingParams(100, temperature=0), on_token, lambda r: ended.set())
        queued = engine.submit(prompt, SamplingParams(100, temperature=0), lambda t: None, lambda r: None)
        with pytest.raises(QueueFull):
            engine.submit(prompt, SamplingParams(5, temperature=0), lambda t: None, lambda r: None)
        busy.cancel()
        queued.cancel()
        gate.set()
        assert ended.wait(30)
        deadline = time.monotonic() + 30
        while engine.stats()["active"] + engine.stats()["waiting"] and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = engine.stats()
        assert stats["active"] == 0 and stats["waiting"] == 0 and stats["cancelled"] == 2
    finally:
        engine.stop(timeout=60)


def test_requests_that_do_not_fit_are_refused(model):
    engine = Engine(model, max_batch=2)
    with pytest.raises(ValueError, match="context of 128"):
        engine.submit([1] * 100, SamplingParams(29), lambda t: None, lambda r: None)
    with pytest.raises(ValueError, match="at least one token"):
        engine.submit([], SamplingParams(1), lambda t: None, lambda r: None)


def test_on_passing_thread_returns_or_raises_on_the_caller():
    names = []

    def work() -> int:
        names.append(threading.current_thread().name)
        return 7

    assert on_passing_thread(work) == 7
    assert names == ["gpt2kit-load_0"]  # it ran elsewhere, on a thread that has ended
    assert not any(t.name == "gpt2kit-load_0" for t in threading.enumerate())

    def fail() -> None:
        raise FileNotFoundError("no such checkpoint")

    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        on_passing_thread(fail)
