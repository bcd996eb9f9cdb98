import pytest
import torch

from gpt2kit import GPT, load_model
from gpt2kit.device import native_bf16
from gpt2kit.generation import generate, sample_next
from gpt2kit.packed_decode import packed_cpu_linears


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


@pytest.fixture
def two_threads():
    """torch on 2 threads for the test (the packed float32 path splits weights over the threads), then restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_greedy_cache_equals_no_cache(model):
    idx = torch.randint(0, 50257, (2, 7))
    a = generate(model, idx, 20, temperature=0)
    b = generate(model, idx, 20, temperature=0, use_cache=False)
    assert a.shape == (2, 27)
    assert torch.equal(a, b)


def test_sliding_window_past_context(model):
    # block_size is 64: prompt + new tokens overflow it, cached and uncached must still agree
    idx = torch.randint(0, 50257, (1, 50))
    a = generate(model, idx, 40, top_k=1)
    b = generate(model, idx, 40, top_k=1, use_cache=False)
    assert torch.equal(a, b)
    long_prompt = torch.randint(0, 50257, (1, 100))
    c = generate(model, long_prompt, 5, top_k=1)
    assert c.shape == (1, 105)
    assert torch.equal(c[:, :100], long_prompt)


def test_seeded_sampling_reproducible(model):
    idx = torch.randint(0, 50257, (1, 3))
    a = generate(model, idx, 15, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    b = generate(model, idx, 15, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    c = generate(model, idx, 15, temperature=1.0, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stop_at_eos(model):
    idx = torch.randint(0, 50257, (3, 4))
    first = generate(model, idx, 1, temperature=0)[:, -1]
    # make the greedy first token the "eos" for row 0 only: row 0 stops, others continue
    out = generate(model, idx, 10, temperature=0, eos_id=int(first[0]))
    assert (out[0, 4:] == first[0]).all()


def test_left_padded_batch_matches_single(model):
    a = torch.randint(0, 50257, (1, 6))
    b = torch.randint(0, 50257, (1, 3))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], dim=1)])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    out = generate(model, batch, 12, temperature=0, attention_mask=mask)
    ga = generate(model, a, 12, temperature=0)
    gb = generate(model, b, 12, temperature=0)
    assert torch.equal(out[0], ga[0])
    assert torch.equal(out[1, 3:], gb[0])


def test_top_k_and_top_p_truncate():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert seen == {0, 1}
    # p(top) ~ 0.71: top_p 0.5 keeps only the top token
    assert {int(sample_next(logits, 1.0, top_p=0.5, generator=g)) for _ in range(50)} == {0}


def test_temperature_and_top_p_near_zero_pick_the_top_token():
    # a temperature or top_p that float32 cannot scale or compare by still gives probabilities, not NaN
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0], [0.0, 2.0, 9.0, 1.0, 3.0]])
    for temperature, top_p in ((5e-324, None), (1e-40, None), (1.0, 5e-324), (1.0, 1e-50)):
        assert sample_next(logits, temperature, top_p=top_p).tolist() == [0, 2], (temperature, top_p)


def test_matches_transformers_greedy(hf_tiny_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_tiny_dir).eval()
    ours = load_model(str(hf_tiny_dir)).model
    idx = torch.randint(0, 50257, (2, 5))
    theirs = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=20, do_sample=False,
                         pad_token_id=50256)
    assert torch.equal(generate(ours, idx, 20, temperature=0), theirs)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="length >= 1"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), 3, top_p=1.5)


@pytest.mark.parametrize("rows", [1, 3, 16])  # one row reads the bmm slabs, several rows oneDNN's layout
def test_packed_cpu_linears_match_plain_and_restore(model, two_threads, rows):
    x = torch.randint(0, 50257, (rows, 1))
    with torch.inference_mode():
        plain, _ = model(x)
        with packed_cpu_linears(model) as used:
            assert used
            assert "forward" in vars(model.lm_head)
            packed, _ = model(x)
    assert not any("forward" in vars(m) for m in model.modules())  # the class forward is back
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)
    idx = torch.randint(0, 50257, (2, 5))
    assert torch.equal(generate(model, idx, 12, temperature=0),
                       generate(model, idx, 12, temperature=0, packed=False))


@pytest.mark.parametrize("rows", [1, 4])
def test_packed_weights_follow_weight_updates(model, two_threads, rows):
    x = torch.randint(0, 50257, (rows, 1))
    with torch.inference_mode(), packed_cpu_linears(model):
        before, _ = model(x)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(2.0)  # in place, as an optimizer step would
    with torch.inference_mode():
        with packed_cpu_linears(model):
            after, _ = model(x)
        plain, _ = model(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no oneDNN bfloat16")
def test_packed_bfloat16_matches_plain(model):
    model = model.to(torch.bfloat16)
    x = torch.randint(0, 50257, (2, 1))
    with torch.inference_mode():
        plain, _ = model(x)
        with packed_cpu_linears(model) as used:
            packed, _ = model(x)
    assert used
    torch.testing.assert_close(packed, plain, rtol=2e-2, atol=2e-2)


def test_packed_path_skipped_for_float16_and_gradients(model, two_threads):
    with packed_cpu_linears(model.to(torch.float16)) as used:
        assert not used
    model = model.float()
    with packed_cpu_linears(model) as used:
        logits, _ = model(torch.randint(0, 50257, (1, 1)))  # gradients on: the ordinary path
    assert used and logits.requires_grad
    logits.sum().backward()
    assert model.lm_head.weight.grad is not None


def test_packed_linear_with_odd_input_width(two_threads):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3, bias=False))
    x = torch.randn(2, 4, 7)
    with torch.inference_mode():
        plain = net(x)
        with packed_cpu_linears(net) as used:
            packed = net(x)
    assert used
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-6)


def test_package_generate_is_the_function_after_the_module_is_imported():
    import gpt2kit
    import gpt2kit.generation

    assert gpt2kit.generate is gpt2kit.generation.generate and callable(gpt2kit.generate)
