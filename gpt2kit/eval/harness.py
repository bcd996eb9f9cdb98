"""EleutherAI's lm-evaluation-harness drives gpt2kit models: the ``gpt2kit`` model of ``lm_eval``.

lm-evaluation-harness 0.4 finds models only in its own registry (no entry points), so the model is registered
by running the harness through this module: ``python -m gpt2kit.eval.harness --model gpt2kit --model_args
checkpoint=RUN_OR_FILE --tasks arc_easy`` (or ``gpt2kit lm-eval ...``) takes every flag ``lm_eval`` takes.
From Python, call :func:`register` before ``lm_eval.simple_evaluate(model="gpt2kit", ...)``, or pass a
:class:`GPT2KitLM` instance as ``model``.

Requests are scored as the harness's ``hf`` model scores them: the context's trailing spaces move to the
continuation, the pair is encoded whole and split where the context's encoding ends, the last
``block_size + 1`` tokens are kept; rolling log-likelihoods use the harness's disjoint windows of
``block_size`` tokens after ``<|endoftext|>``; generation is greedy unless the task asks to sample, cut at
the task's stop strings. Requests are batched longest first to keep padding small. Text is encoded in the
model's own tokenizer (``load_model(...).tokenizer``: a trained vocabulary, or GPT-2's).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from gpt2kit.checkpoint import load_model
from gpt2kit.distributed import resolve_device
from gpt2kit.errors import UserError
from gpt2kit.eval.questions import encode_pair
from gpt2kit.eval.scoring import Row, fit_row, score_rows
from gpt2kit.generation import generate
from gpt2kit.tokenizer import EOT_TOKEN

MODEL_NAME = "gpt2kit"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class GPT2KitLM(LM):
    """Any model ``gpt2kit`` loads (run directory, checkpoint file, Hugging Face directory or hub name)."""

    def __init__(self, checkpoint: str, device: str | None = "auto", dtype: str = "float32",
                 batch_size: int | str | None = 8, max_gen_toks: int = 256, **unused: Any) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise UserError(f"--model_args dtype={dtype}: use one of {', '.join(DTYPES)}")
        self._device = resolve_device(device or "auto")
        self.loaded = load_model(str(checkpoint), device=self.device, dtype=DTYPES[dtype])
        self.model = self.loaded.model.eval()
        self.block_size = int(self.model.config.block_size)
        # "auto" (the harness's batch-size search) is served by the fixed default
        self.batch_size = int(batch_size) if str(batch_size or "").isdigit() else 8
        self.max_gen_toks = int(max_gen_toks)
        self.tok = self.loaded.tokenizer  # the model's own vocabulary (a trained one, or GPT-2's)
        self.eot = self.tok.eot

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log-likelihood, is greedy) of each request's continuation after its context."""
        return self._score([encode_pair(*r.args, tokenizer=self.tok) for r in requests], disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole string, in disjoint windows of ``block_size`` tokens."""
        windows, owner = [], []
        for i, r in enumerate(requests):
            tokens = self.tok.encode(r.args[0])
            for w in get_rolling_token_windows(tokens, prefix_token=self.eot, max_seq_len=self.block_size,
                                               context_len=1):
                windows.append(make_disjoint_window(w))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._score(windows, disable_tqdm)):
            totals[i] += ll
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation, generated until a stop string, ``<|endoftext|>`` or ``max_gen_toks``."""
        out: list[str | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(self.tok.encode(requests[i].args[0])))
        for batch in tqdm(_chunks(order, self.batch_size), disable=disable_tqdm, desc="generate_until"):
            for i, text in zip(batch, self._generate([requests[i].args for i in batch])):
                out[i] = text
        return [s or "" for s in out]

    def _generate(self, args: Sequence[tuple[str, dict]]) -> list[str]:
        if any(kw != args[0][1] for _, kw in args):  # a batch shares its settings; else one at a time
            return [t for a in args for t in self._generate([a])]
        texts = []
        kwargs = normalize_gen_kwargs(dict(args[0][1]), self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=EOT_TOKEN)
        max_new = int(kwargs.pop("max_gen_toks"))
        if max_new >= self.block_size:
            raise UserError(f"max_gen_toks {max_new} must be less than the model's context ({self.block_size})")
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        prompts = [(self.tok.encode(c) or [self.eot])[-(self.block_size - max_new):] for c, _ in args]
        T = max(len(p) for p in prompts)
        idx = torch.full((len(prompts), T), self.eot, dtype=torch.long)  # (B, T) left-padded
        mask = torch.zeros((len(prompts), T), dtype=torch.long)
        for b, p in enumerate(prompts):
            idx[b, T - len(p):] = torch.tensor(p)
            mask[b, T - len(p):] = 1
        with torch.no_grad():
            full = generate(self.model, idx.to(self.device), max_new, temperature=temperature,
                            top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"), eos_id=self.eot,
                            attention_mask=mask.to(self.device))
        for row in full[:, T:].tolist():
            if self.eot in row:
                row = row[:row.index(self.eot)]
            texts.append(postprocess_generated_text(self.tok.decode(row), until, None))
        return texts

    def _score(self, pairs: Sequence[Row], disable_tqdm: bool) -> list[tuple[float, bool]]:
        rows = []
        for ctx, cont in pairs:
            row = fit_row(ctx, cont, self.block_size, self.eot) if cont else None
            if row is None:
                raise UserError(f"a continuation of {len(cont)} tokens does not fit the model's context "
                                f"({self.block_size} tokens)" if cont else "a request has an empty continuation")
            rows.append(row)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
        for batch in tqdm(_chunks(order, self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            nll, _, greedy = score_rows(self.model, [rows[i] for i in batch], device=self.device, pad=self.eot)
            for i, n, g in zip(batch, nll.tolist(), greedy.tolist()):
                out[i] = (-n, bool(g))
        return out


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def register() -> None:
    """Register :class:`GPT2KitLM` as the harness's ``gpt2kit`` model (once)."""
    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(GPT2KitLM)


def main(argv: Sequence[str] | None = None) -> None:
    """``lm_eval`` with the ``gpt2kit`` model registered; ``argv`` are lm_eval's flags."""
    from lm_eval.__main__ import cli_evaluate

    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
