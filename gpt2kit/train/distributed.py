"""Moved to :mod:`gpt2kit.distributed` (evaluation uses it too); kept so existing imports work."""

from gpt2kit.distributed import (  # noqa: F401
    DistEnv, all_reduce_mean, all_reduce_sum, any_rank, barrier, distributed, gather_objects, gradient_sync, is_fsdp,
    resolve_device, setup_distributed, teardown, wrap_model,
)
