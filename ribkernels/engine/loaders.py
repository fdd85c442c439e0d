"""Data plumbing of train.py on top of ``ribkernels.reid``: per-epoch PK index lists (one rank's
share of the global plan, a pure function of seed and epoch) and deterministic loaders."""
import hashlib
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


def position_seed(seed: int, position: int) -> int:
    """The seed of the sample at ``position`` of an epoch's index list."""
    h = hashlib.sha256(f"{seed}/sample/{position}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class SeededSamples(torch.utils.data.Dataset):
    """Item ``j`` = ``dataset[indices[j]]`` loaded with the torch (CPU) and Python RNGs — what the
    transforms draw from — seeded from ``(seed, offset + j)``; the caller's RNG states are restored
    afterwards. An epoch's augmentations are thus a pure function of the seed and each sample's
    position in the epoch: the same with any number of loader workers and when a resumed epoch starts
    at ``offset``. (NumPy's global RNG is left alone: no transform uses it, and saving it costs
    ~0.2 ms a sample.)"""

    def __init__(self, dataset, indices: Sequence[int], seed: int, offset: int = 0):
        self.dataset, self.indices, self.seed, self.offset = dataset, list(indices), int(seed), int(offset)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        s = position_seed(self.seed, self.offset + j)
        gen = torch.default_generator
        saved_torch, saved_py = gen.get_state(), random.getstate()
        gen.manual_seed(s)  # not torch.manual_seed: that also visits every accelerator (~0.2 ms)
        random.seed(s)
        try:
            return self.dataset[self.indices[j]]
        finally:
            gen.set_state(saved_torch)
            random.setstate(saved_py)


def make_loader(dataset, indices: Optional[Sequence[int]], batch_size: int, num_workers: int, *,
                seed: Optional[int] = None, drop_last: bool = False, pin_memory: bool = False,
                sample_seed: Optional[int] = None, offset: int = 0):
    """A DataLoader over ``indices`` of ``dataset`` in the given order. Worker seeds derive from
    ``seed``; with ``sample_seed`` every sample's randomness derives from it and its position
    ``offset + j`` (:class:`SeededSamples`), so augmentations do not depend on workers or resumes."""
    if sample_seed is not None:
        ds = SeededSamples(dataset, range(len(dataset)) if indices is None else indices, sample_seed, offset)
    else:
        ds = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    g = None
    if seed is not None:
        g = torch.Generator()
        g.manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=drop_last,
        pin_memory=pin_memory, worker_init_fn=_seed_worker if num_workers else None, generator=g)
