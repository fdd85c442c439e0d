"""Data plumbing of train.py on top of ``ribkernels.reid``: per-epoch PK index lists (one rank's
share of the global plan, a pure function of seed and epoch) and deterministic loaders."""
import random
from typing import List, Optional, Sequence

import numpy as np
import torch


def pk_epoch_indices(sampler, epoch: int, rank: int, world: int, min_len: int = 0) -> List[int]:
    """This rank's dataset indices for ``epoch`` from a :class:`ribkernels.reid.RandomIdentitySampler`
    plan: of each global P×K batch, rank r takes identities ``[r·P/W, (r+1)·P/W)``. Extended with
    batches of further plans (derived keys) up to ``min_len``, so every epoch has the same length."""
    if sampler.P % world:
        raise ValueError(f"P = batch_size / num_instances = {sampler.P} identities per batch must be divisible "
                         f"by the number of processes ({world})")
    local_p = sampler.P // world
    out: List[int] = []
    r = 0
    while r == 0 or len(out) < min_len:
        for batch in sampler.plan(epoch + r * 1_000_003):
            for group in batch[rank * local_p:(rank + 1) * local_p]:
                out.extend(group)
        r += 1
    return out


def shard(n: int, rank: int, world: int) -> List[int]:
    """Indices of this rank's strided share of ``range(n)`` (no padding, no duplicates)."""
    return list(range(rank, n, world))


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loader(dataset, indices: Optional[Sequence[int]], batch_size: int, num_workers: int, *,
                seed: Optional[int] = None, drop_last: bool = False, pin_memory: bool = False):
    """A DataLoader over ``indices`` of ``dataset`` in the given order. Worker seeds derive from
    ``seed`` so an epoch's augmentations are reproducible."""
    ds = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    g = None
    if seed is not None:
        g = torch.Generator()
        g.manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=drop_last,
        pin_memory=pin_memory, worker_init_fn=_seed_worker if num_workers else None, generator=g)
