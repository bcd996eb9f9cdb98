"""A memory-lean language-model loss for training: output projection + cross-entropy in one autograd step.

The model's own ``GPT.forward(idx, targets)`` materialises logits (N, Vp), slices them to the real
vocabulary (a copy), runs log-softmax (another), and its backward allocates three more (N, V) tensors.
With GPT-2's 50k vocabulary these are the largest tensors of a small model's step and, on a CPU, moving
them through memory costs as much as the matmuls around them. :class:`LMHeadLoss` computes the same loss
and the gradients of the hidden states and the output weights in its forward pass, through one reusable
(N, Vp) buffer that is written once and updated in place (logits -> probabilities -> dloss/dlogits).

:class:`FusedLossGPT` wraps a pure GPT from outside (the model is untouched) so that the training loop,
DDP included, can call ``module(idx, targets) -> (None, loss)``; evaluation (``mean_loss``) works with it
too. It is used for eager (not compiled) DDP or single-process runs; compiled runs let ``torch.compile``
fuse the model's own loss, and FSDP runs use the model directly.

Shapes: B batch, T time, N = B*T rows, C channels, V real vocabulary, Vp padded vocabulary rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


class _Buffers:
    """Scratch (N, Vp) buffers kept between steps, so the largest tensors are not re-allocated every step."""

    def __init__(self) -> None:
        self.store: dict[tuple, torch.Tensor] = {}

    def get(self, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (cols, dtype, device)
        buf = self.store.get(key)
        if buf is None or buf.size(0) < rows:
            self.store.pop(key, None)  # free the old one first
            buf = torch.empty(rows, cols, dtype=dtype, device=device)
            self.store[key] = buf
        return buf[:rows]


def _chunk(hm: torch.Tensor, wm: torch.Tensor, safe_t: torch.Tensor, valid: torch.Tensor, V: int, denom: int,
           buffers: _Buffers, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed NLL of one block of rows and, if asked, its gradients (already divided by ``denom``)."""
    N, Vp = hm.size(0), wm.size(0)
    logits = buffers.get(N, Vp, hm.dtype, hm.device)
    torch.mm(hm, wm.t(), out=logits)  # (N, Vp)
    if hm.dtype == torch.float32:
        z = logits[:, :V]  # (N, V) view: softmax in place, in float32
    else:  # the softmax runs in float32, as autocast runs the model's cross-entropy
        z = buffers.get(N, V, torch.float32, hm.device)
        z.copy_(logits[:, :V])
    target_logit = z.gather(1, safe_t[:, None]).squeeze(1)  # (N,)
    # softmax in place (torch.logsumexp would allocate another (N, V) tensor)
    zmax = z.amax(dim=1, keepdim=True)  # (N, 1)
    z.sub_(zmax).exp_()
    zsum = z.sum(dim=1, keepdim=True)  # (N, 1)
    lse = (zmax + zsum.log()).squeeze(1)  # (N,)
    nll = ((lse - target_logit) * valid).sum()
    if not need_grad:
        return nll, None, None
    # dloss/dlogits = (softmax - onehot(target)) / denom on valid rows, 0 elsewhere
    z.div_(zsum)
    rows = torch.arange(N, device=hm.device)
    z.index_put_((rows, safe_t), -valid.to(z.dtype), accumulate=True)
    if not bool(valid.all()):
        z.mul_(valid[:, None].to(z.dtype))
    scale = 1.0 / denom
    if z.data_ptr() != logits.data_ptr():
        # back to the matmul dtype, scaled first as the model's float32 loss gradient is (in place: an out= of
        # another dtype would allocate an (N, V) float32 temporary every step)
        logits[:, :V].copy_(z.mul_(scale))
        scale = 1.0
    logits[:, V:].zero_()  # padded vocabulary rows: never targets, logits unused
    grad_h = torch.mm(logits, wm).mul_(scale)  # (N, C)
    grad_w = torch.mm(logits.t(), hm).mul_(scale)  # (Vp, C)
    return nll, grad_h, grad_w


class LMHeadLoss(torch.autograd.Function):
    """loss = mean over targets != -100 of cross_entropy(h @ W[:V].T, targets); gradients made in forward.

    Rows are processed in blocks of at most ``max_rows`` so the scratch buffer stays bounded on large batches
    (a GPU micro-batch of 64 x 1024 tokens would otherwise need 20 GB of logits).
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                buffers: _Buffers, max_rows: int) -> torch.Tensor:
        # h (N, C), weight (Vp, C), targets (N,)
        N = h.size(0)
        autocast = torch.is_autocast_enabled(h.device.type)
        mm_dtype = torch.get_autocast_dtype(h.device.type) if autocast else h.dtype
        need_grad = h.requires_grad or weight.requires_grad  # False under no_grad evaluation
        with torch.autocast(h.device.type, enabled=False):
            hm, wm = h.to(mm_dtype), weight.to(mm_dtype)
            valid = targets != -100  # (N,)
            safe_t = targets.clamp(min=0)
            denom = max(int(valid.sum()), 1)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(h) if need_grad else None
            grad_w = None
            for s in range(0, N, max_rows):
                e = min(N, s + max_rows)
                nll, gh, gw = _chunk(hm[s:e], wm, safe_t[s:e], valid[s:e], vocab_size, denom, buffers, need_grad)
                total += nll
                if need_grad:
                    grad_h[s:e] = gh
                    grad_w = gw.to(weight.dtype) if grad_w is None else grad_w.add_(gw)
            loss = total / denom
        ctx.empty = not need_grad
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor):
        if ctx.empty:
            return None, None, None, None, None, None
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None, None


class FusedLossGPT(nn.Module):
    """A GPT whose training loss goes through :class:`LMHeadLoss`: ``forward(idx, targets) -> (None, loss)``.

    Without targets it returns the model's ``(logits, None)``. The wrapped GPT keeps its parameters; this
    module adds none (its state dict keys carry a ``module.`` prefix, which checkpoint code strips).
    """

    def __init__(self, gpt: nn.Module, max_rows: int = 8192) -> None:
        super().__init__()
        self.module = gpt
        self.max_rows = max_rows
        self._buffers_cache = _Buffers()

    @property
    def config(self):
        """The wrapped GPT's config."""
        return self.module.config

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, **kw: Any):
        if targets is None or kw:
            return self.module(idx, targets, **kw)
        gpt = self.module
        h = gpt.hidden_states(idx)  # (B, T, C)
        B, T, C = h.shape
        loss = LMHeadLoss.apply(h.reshape(B * T, C), gpt.lm_head.weight, targets.reshape(B * T),
                                gpt.config.vocab_size, self._buffers_cache, self.max_rows)
        return None, loss
