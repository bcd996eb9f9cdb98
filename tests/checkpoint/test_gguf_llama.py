"""llama.cpp itself reads the GGUF export: its logits over a teacher-forced sequence match gpt2kit's.

Runs only where llama.cpp's Python bindings are importable (``pip install llama-cpp-python`` compiles
llama.cpp, minutes); the project's CI does not install them. benchmarks/gguf_parity.py measures the same
on a trained model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt2kit import GPT, GPTConfig

pytest.importorskip("gguf", reason="GGUF export needs the gguf package: pip install 'gpt2kit[gguf]'")
llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama.cpp's Python bindings are not installed (pip install llama-cpp-python builds them)")

from gpt2kit.checkpoint.gguf import write_gguf  # noqa: E402  (after the importorskips)

pytestmark = pytest.mark.slow


def llama_logits(path, tokens: list[int], n_ctx: int) -> np.ndarray:
    """llama.cpp's logits (T, V) for ``tokens`` fed at once (teacher forcing)."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=1, n_batch=n_ctx,
                          verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[:len(tokens)], dtype=np.float32)
    finally:
        llm.close()


# max |diff| relative to the largest |logit|: even f32 weights do not match to float32 rounding, since llama.cpp
# keeps its KV cache in f16 and looks GELU up in an f16 table (about 1e-3 here, as for its own converter's files)
@pytest.mark.parametrize("outtype, max_diff, agree", [("f32", 2e-3, 0.99), ("f16", 2e-2, 0.9), ("q8_0", 5e-2, 0.9)])
def test_llama_cpp_logits_match(tmp_path, outtype, max_diff, agree):
    torch.manual_seed(0)
    # a larger init than GPT-2's, so that the logits spread out and argmax is not decided by rounding
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    path = write_gguf(model, tmp_path / f"m-{outtype}.gguf", outtype)
    tokens = torch.randint(0, 50257, (48,), generator=torch.Generator().manual_seed(1)).tolist()
    ours, _ = model(torch.tensor([tokens]))
    ours = ours[0].detach().numpy()  # (T, V)
    theirs = llama_logits(path, tokens, n_ctx=model.config.block_size)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() < max_diff * np.abs(ours).max()
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= agree


def test_llama_cpp_tokenizes_as_gpt2kit(tmp_path):
    from gpt2kit.tokenizer import get_tokenizer

    path = write_gguf(GPT(GPTConfig.from_preset("tiny")), tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    tok = get_tokenizer()
    try:
        for text in ["Call me Ishmael. Some years ago—never mind how long precisely—having little money, 42 ✓.",
                     "  leading spaces, tabs\tand\nnew lines\n\n; don't we'll I'M 1234567 ½ 😀 中文"]:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            assert ids == tok.encode(text)
            assert llm.detokenize(ids).decode("utf-8") == text
        assert llm.token_eos() == llm.token_bos() == 50256
    finally:
        llm.close()


def test_llama_cpp_reads_a_trained_vocabulary(tmp_path, trained_vocab_checkpoint):
    from gpt2kit.checkpoint import load_model

    loaded = load_model(trained_vocab_checkpoint)
    model, tok = loaded.model, loaded.tokenizer
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # logits spread out, as above
    path = write_gguf(model, tmp_path / "m.gguf", tokenizer=tok)
    text = "Call me Ishmael. What is 2 + 3? naïve café 👋🏽"
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    try:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert ids == tok.encode(text) and max(ids) < 300
        assert llm.detokenize(ids).decode("utf-8") == text
        assert llm.token_eos() == llm.token_bos() == 299
    finally:
        llm.close()
    ours, _ = model(torch.tensor([ids]))
    ours = ours[0, :, :300].detach().numpy()  # (T, V): the padded rows are not in the file
    theirs = llama_logits(path, ids, n_ctx=model.config.block_size)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() < 2e-3 * np.abs(ours).max()
