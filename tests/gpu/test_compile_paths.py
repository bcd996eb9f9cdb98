"""torch.compile on the ``device`` fixture: training, evaluation, HellaSwag and generation after compiling
(build-nanogpt had to switch HellaSwag off under compile), and the fused training loss compiled.

Compiling is slow on a CPU (a C++ compiler builds every kernel), so there are two tests, each compiling the
tiny shape of tests/gpu/gpu_tier_settings.py once per graph and asserting everything on it.
"""

from __future__ import annotations

import json

import pytest
import torch
from gpu_tier_settings import TINY_SHAPE

from gpt2kit import GPT
from gpt2kit.checkpoint import load_model
from gpt2kit.train.pretrain import run_pretraining

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def _losses(records, key="loss"):
    return [r[key] for r in sorted(records, key=lambda r: r["step"]) if r.get(key) is not None]


def test_compiled_training_evaluation_and_generation_match_eager(device, tiny_train_cfg, tiny_hellaswag):
    from gpt2kit.eval.choice import fit_items
    from gpt2kit.eval.hellaswag import hellaswag_items, load_examples, score_hellaswag
    from gpt2kit.eval.scoring import score_rows

    # TF32 off: compile on/off must then agree to float32 rounding (inductor only reorders sums)
    common = dict(device=str(device), max_steps=3, eval_every=3, samples=1, sample_tokens=6, tf32=False,
                  hellaswag=str(tiny_hellaswag), hellaswag_every=3)
    eager = run_pretraining(tiny_train_cfg("eager", **common))
    compiled = run_pretraining(tiny_train_cfg("compiled", compile=True, **common))
    assert len(_losses(compiled.metrics)) == 3
    assert _losses(compiled.metrics) == pytest.approx(_losses(eager.metrics), rel=1e-4)
    # validation loss went through the compiled module, HellaSwag and the samples through the plain one
    assert compiled.val_loss == pytest.approx(eager.val_loss, rel=1e-4)
    by_step = {r["step"]: r for r in compiled.metrics}
    assert by_step[3]["hellaswag_acc_norm"] == {r["step"]: r for r in eager.metrics}[3]["hellaswag_acc_norm"]
    samples = [json.loads((res.checkpoint.parent.parent / "samples.jsonl").read_text())["samples"]
               for res in (eager, compiled)]
    assert samples[0] == samples[1] and len(samples[1][0]) > 0

    # HellaSwag scored by a compiled model (what build-nanogpt could not do) equals the plain model's scores
    model = load_model(compiled.checkpoint, device=device).model
    examples = load_examples(tiny_hellaswag)
    plain = score_hellaswag(model, examples, device=device)
    fitted, _ = fit_items(hellaswag_items(examples), TINY_SHAPE["block_size"])
    rows = [row for item in fitted for row in item.rows]
    nll_plain = score_rows(model, rows, device=device)[0]
    fast = torch.compile(model)
    with torch.no_grad():
        assert score_hellaswag(fast, examples, device=device) == plain
        nll_fast = score_rows(fast, rows, device=device)[0]
    torch.testing.assert_close(nll_fast, nll_plain, rtol=1e-5, atol=1e-4)
    assert plain["n"] == len(examples)


def test_fused_loss_compiled_matches_eager(device):
    from gpt2kit import GPTConfig
    from gpt2kit.train.fused_head_loss import FusedLossGPT

    cfg = GPTConfig(n_layer=TINY_SHAPE["n_layer"], n_head=TINY_SHAPE["n_head"], n_embd=TINY_SHAPE["n_embd"],
                    block_size=TINY_SHAPE["block_size"], padded_vocab_size=50304)
    torch.manual_seed(0)
    a = GPT(cfg).to(device)
    b = GPT(cfg).to(device)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 50257, (TINY_SHAPE["batch_size"], TINY_SHAPE["block_size"]), device=device)
    y = torch.randint(0, 50257, x.shape, device=device)
    y[0, :3] = -100  # ignored positions, as fine-tuning masks prompts
    _, loss_eager = FusedLossGPT(a)(x, y)
    loss_eager.backward()
    _, loss_compiled = torch.compile(FusedLossGPT(b))(x, y)
    loss_compiled.backward()
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-5, atol=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)
    # and the fused loss equals the model's own forward loss
    with torch.no_grad():
        torch.testing.assert_close(a(x, y)[1], loss_eager.detach(), rtol=1e-5, atol=1e-6)
