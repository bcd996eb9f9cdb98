"""The GPU tier's one model shape (a module of its own: importing from "conftest" depends on which conftest
was imported last)."""

from __future__ import annotations

# 1 layer, 32 wide, 16-token windows, micro-batch 2: every compile test and the gpu-check dry run use it, so the
# kernels torch.compile caches on disk are compiled once
TINY_SHAPE = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 2}
