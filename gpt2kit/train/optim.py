"""Optimizers for the training loop: AdamW (the GPT-2/GPT-3 recipe) or Muon for the hidden matrices with AdamW
for the rest, built by one function, :func:`build_optimizer`, that the loop calls once per run (pretraining and
fine-tuning alike), and :func:`apply_schedule`, which sets their learning rates (and Muon's momentum) each step.

``--optimizer muon`` follows the split Muon's authors prescribe (Keller Jordan's post; modded-nanogpt;
nanochat): ``torch.optim.Muon`` orthogonalizes the update of every 2-D weight inside a transformer block
(``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``), and AdamW trains the token and position
embeddings, the output layer (tied to the token embedding), LayerNorm gains, biases, classification heads
and LoRA adapters. LoRA's factors stay on AdamW because the update that matters is their product
``B @ A``; orthogonalizing each rank-r factor on its own does not orthogonalize that product, and the LoRA
learning rates in use were tuned for AdamW. The two optimizers step together as one
:class:`MuonWithAdamW` whose state dict holds both.

``torch.optim.Muon`` runs its Newton-Schulz iterations in bfloat16, which is right where the device multiplies
bfloat16 natively (CUDA with bf16, CPUs with AVX-512 BF16 or AMX) and many times slower than float32 where it
is emulated (most laptop CPUs, MPS). There :class:`Float32Muon` runs the same update with the iterations in
float32; its state dict is torch's, so a checkpoint resumes on either kind of machine.

Every group's learning rate is ``base * lr_factor``: ``base`` is ``--lr`` (AdamW groups) or ``--muon-lr``
(Muon groups) times the group's ``lr_scale``, read from the config at every step rather than stored in the
group, so that ``--lr``/``--muon-lr`` given when resuming take effect (``load_state_dict`` restores the
saved group values).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from gpt2kit.device import default_fused_adamw, native_bf16
from gpt2kit.errors import UserError
from gpt2kit.train.schedule import lr_factor, muon_momentum_at

if TYPE_CHECKING:
    from gpt2kit.train.config import LoopConfig

ParamGroups = Callable[[nn.Module, float], list[dict[str, Any]]]
"""(model, weight_decay) -> optimizer param groups; a group may carry ``lr_scale`` (a factor on the scheduled lr)."""

HIDDEN_MATRIX = re.compile(r"(^|\.)h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
"""Parameter names of the 2-D weights inside transformer blocks: what Muon trains."""


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on 2-D parameters (matmul weights, embeddings), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """Whether Muon trains this parameter: a 2-D weight of a block's attention or MLP (not embeddings, heads, LoRA)."""
    return param.dim() == 2 and HIDDEN_MATRIX.search(name) is not None


def muon_split(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters (Muon's, AdamW's) under ``--optimizer muon``; tied weights once."""
    muon, adamw = [], []
    for name, p in model.named_parameters():  # named_parameters yields a tied weight once
        if p.requires_grad:
            (muon if is_hidden_matrix(name, p) else adamw).append(name)
    return muon, adamw


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Newton-Schulz quintic coefficients of Keller Jordan's Muon (torch.optim.Muon's defaults)."""


def orthogonalize(grad: torch.Tensor, dtype: torch.dtype, steps: int = 5, eps: float = 1e-7,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> torch.Tensor:
    """Muon's Newton-Schulz approximation of ``U V^T`` for ``grad = U S V^T``, computed in ``dtype``.

    With ``dtype=torch.bfloat16`` this is ``torch.optim.Muon``'s iteration operation for operation; the result
    keeps ``dtype`` (the caller's ``add_`` casts it to the parameter's).
    """
    a, b, c = coefficients
    x = grad.to(dtype)  # (rows, cols)
    wide = grad.size(0) > grad.size(1)
    if wide:
        x = x.T  # (small, large): the Gram matrix is the smaller one
    x.div_(x.norm().clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T  # (small, small)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if wide else x


def _muon_lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's learning-rate factor for a matrix of ``shape`` (``original`` or ``match_rms_adamw``)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))


class Float32Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with the Newton-Schulz iterations in float32, for devices that emulate bfloat16.

    Same settings, same state (``momentum_buffer`` per parameter) and the same update as torch's step; only the
    precision of :func:`orthogonalize` differs.
    """

    ns_dtype = torch.float32

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One Muon update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, self.ns_dtype, group["ns_steps"], group["eps"],
                                       group["ns_coefficients"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * _muon_lr_ratio(group["adjust_lr_fn"], p.shape))
        return loss


def muon_class(device: torch.device) -> type[torch.optim.Muon]:
    """torch's Muon where ``device`` multiplies bfloat16 natively, else :class:`Float32Muon`."""
    return torch.optim.Muon if native_bf16(device.type) else Float32Muon


class MuonWithAdamW:
    """Muon for the hidden matrices and AdamW for everything else, stepped, zeroed and saved as one optimizer."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon = muon
        self.adamw = adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Muon's groups, then AdamW's (the dicts themselves: setting ``lr`` on them takes effect)."""
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        """One update of every parameter."""
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient."""
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' state (momentum buffers, AdamW moments and step counts) as plain data and tensors."""
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; ValueError when ``state`` is not a Muon+AdamW state."""
        if not _is_muon_state(state):
            raise ValueError("the checkpoint holds AdamW state, this run uses --optimizer muon; "
                             "resume with --optimizer adamw")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


Optimizer = torch.optim.Optimizer | MuonWithAdamW
"""What :func:`build_optimizer` returns: AdamW, or Muon and AdamW as one."""


def _is_muon_state(state: Any) -> bool:
    return isinstance(state, dict) and set(state) == {"muon", "adamw"}


def load_optimizer_state(optimizer: Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``; ValueError naming --optimizer when the state is the other kind's."""
    if not isinstance(optimizer, MuonWithAdamW) and _is_muon_state(state):
        raise ValueError("the checkpoint holds Muon+AdamW state, this run uses --optimizer adamw; "
                         "resume with --optimizer muon")
    optimizer.load_state_dict(state)


def build_optimizer(model: nn.Module, cfg: LoopConfig, device: torch.device,
                    param_groups: ParamGroups = decay_param_groups) -> Optimizer:
    """The optimizer ``cfg.optim.optimizer`` names over ``param_groups(model, cfg.optim.weight_decay)`` (AdamW fused
    by default).

    Groups may carry ``lr_scale`` (multiplies the base learning rate). Under ``muon`` each group is split by
    :func:`is_hidden_matrix` into a Muon group (``--muon-*`` settings) and an AdamW group (the group's own).
    """
    groups = param_groups(model, cfg.optim.weight_decay)
    fused = cfg.optim.fused_adamw if cfg.optim.fused_adamw is not None else default_fused_adamw(device)
    adamw_kw: dict[str, Any] = dict(lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    if fused:
        adamw_kw["fused"] = True
    if cfg.optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, **adamw_kw)
    if not hasattr(torch.optim, "Muon"):
        raise UserError(f"--optimizer muon needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}; "
                        "upgrade torch or use --optimizer adamw")
    names = {id(p): n for n, p in model.named_parameters()}
    muon_groups, adamw_groups = [], []
    for g in groups:
        hidden = [p for p in g["params"] if is_hidden_matrix(names.get(id(p), ""), p)]
        rest = [p for p in g["params"] if not is_hidden_matrix(names.get(id(p), ""), p)]
        scale = g.get("lr_scale", 1.0)
        if hidden:
            muon_groups.append({"params": hidden, "lr": cfg.optim.muon_lr * scale, "lr_scale": scale,
                                "muon": True, "weight_decay": cfg.optim.muon_weight_decay})
        if rest:
            adamw_groups.append({**g, "params": rest})
    if not muon_groups:
        raise UserError("--optimizer muon: none of the trained parameters is a hidden matrix (a block's attention "
                        "or MLP weight; LoRA adapters, embeddings and heads train with AdamW); use --optimizer adamw")
    muon = muon_class(device)(muon_groups, lr=cfg.optim.muon_lr, momentum=cfg.optim.muon_momentum,
                              nesterov=True, adjust_lr_fn=cfg.optim.muon_adjust_lr_fn)
    return MuonWithAdamW(muon, torch.optim.AdamW(adamw_groups, **adamw_kw))


def apply_schedule(optimizer: Optimizer, step: int, cfg: LoopConfig) -> float:
    """Set every group's learning rate (and Muon's momentum) for step ``step``; returns the AdamW peak-lr's value."""
    factor = lr_factor(step, cfg)
    momentum = muon_momentum_at(step, cfg)
    for group in optimizer.param_groups:
        base = cfg.optim.muon_lr if group.get("muon") else cfg.optim.lr
        group["lr"] = base * group.get("lr_scale", 1.0) * factor
        if group.get("muon"):
            group["momentum"] = momentum
    return cfg.optim.lr * factor
