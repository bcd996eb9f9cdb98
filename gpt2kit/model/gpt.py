"""GPT-2, written from scratch: a pure ``nn.Module`` with an optional preallocated KV cache.

This file knows nothing about devices, files, distributed training or compilation; those wrap it
from outside. Shape letters used in comments:

    B  batch size          T  time (positions in this call)     L  cached length (keys/values)
    C  channels (n_embd)   nh number of heads                   hs head size (C / nh)
    V  real vocab (50257)  Vp padded vocab rows (>= V)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2kit.model.config import GPTConfig


@dataclass
class KVCache:
    """Preallocated keys and values for one block: each (B, nh, max_len, hs)."""

    k: torch.Tensor
    v: torch.Tensor

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, nh, T, hs) at positions [pos, pos+T) and return the filled prefix (B, nh, pos+T, hs)."""
        end = pos + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} positions; writing up to {end}")
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v together
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True  # scaled at init: it adds into the residual stream
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        pos: int = 0,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.size()
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(k, v, pos)  # (B, nh, L, hs) with L = pos + T
        L = k.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is not None:
            # (B, 1, T, L) boolean, True where a query may attend to a key
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        elif L == T:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:
            # one new query sees every cached key: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # a chunk of T queries after L - T cached positions: query i sees keys [0, L - T + i]
            mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(diagonal=L - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> tanh-GELU -> C."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, pos: int = 0,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, pos, attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """GPT-2 language model with tied input and output embeddings."""

    def __init__(self, config: GPTConfig | Any) -> None:
        super().__init__()
        is_hf = hasattr(config, "to_dict") and getattr(config, "model_type", None) == "gpt2"
        if not isinstance(config, GPTConfig) and is_hf:
            # a transformers.GPT2Config, recognised by shape so that the model never imports transformers
            config = GPTConfig.from_hf(config)
        self.config = config
        Vp = config.padded_vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(Vp, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, Vp, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2: N(0, 0.02) everywhere; projections into the residual stream get 0.02 / sqrt(2 L)
        # because each block adds two of them and the stream's variance would otherwise grow with depth.
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_projection", False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters of the real model: tied weights once, padded vocab rows not counted.

        ``non_embedding`` also leaves out token and position embeddings (for 6N flops estimates).
        """
        n = sum(p.numel() for p in self.parameters())
        n -= (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
            n -= self.config.vocab_size * self.config.n_embd
        return n

    def make_cache(
        self, batch_size: int, max_len: int | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> list[KVCache]:
        """A preallocated KV cache per block, for ``max_len`` (default ``block_size``) positions."""
        cfg = self.config
        max_len = cfg.block_size if max_len is None else max_len
        ref = self.transformer.wte.weight  # float even when the linear layers are quantized
        shape = (batch_size, cfg.n_head, max_len, cfg.head_size)
        kw = dict(device=device or ref.device, dtype=dtype or ref.dtype)
        return [KVCache(torch.empty(shape, **kw), torch.empty(shape, **kw)) for _ in range(cfg.n_layer)]

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        cache: list[KVCache] | None = None,
        pos: int = 0,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-LayerNorm hidden states (B, T, C) for token ids ``idx`` (B, T).

        ``pos`` is where ``idx`` starts in the cache; ``positions`` (B, T) overrides the position ids
        (left-padded batches); ``attn_mask`` (B, 1, T, L) is a boolean mask, True = may attend.
        """
        B, T = idx.size()
        if pos + T > self.config.block_size:
            raise ValueError(
                f"sequence of {pos + T} positions exceeds block_size {self.config.block_size}"
            )
        if positions is None:
            positions = torch.arange(pos, pos + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(positions)  # (T, C) or (B, T, C)
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i], pos, attn_mask)
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: list[KVCache] | None = None,
        pos: int = 0,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) over the real vocabulary, and the mean cross-entropy when ``targets`` (B, T) is given.

        Targets equal to -100 are ignored. ``last_only`` computes logits for the last position only
        (B, 1, V), which is all generation needs.
        """
        x = self.hidden_states(idx, cache=cache, pos=pos, positions=positions, attn_mask=attn_mask)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        V = self.config.vocab_size
        logits = self.lm_head(x)[..., :V]  # (B, T, V): padded vocab columns are never scored or sampled
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), ignore_index=-100)
        return logits, loss

