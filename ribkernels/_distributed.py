"""The distributed helpers every room uses: the process group to reduce over, and an all-reduce that is
a no-op in a single-process run."""
from typing import Optional

import torch


def resolve_group(distributed: Optional[bool], process_group):
    """The process group to all-reduce over, or None for a single-process run."""
    import torch.distributed as dist

    ready = dist.is_available() and dist.is_initialized()
    if distributed is False or (distributed is None and not ready):
        return None
    if not ready:
        raise RuntimeError("distributed=True but torch.distributed is not initialised")
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    """Sum ``t`` in place over ``group`` (a no-op for None: a single-process run); returns ``t``."""
    if group is not None:
        import torch.distributed as dist

        dist.all_reduce(t, group=group)
    return t
