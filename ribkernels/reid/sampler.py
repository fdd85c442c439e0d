"""PK identity samplers (docs/training.md): batches of P identities × K images, for the triplet loss.

Use with ``DataLoader(dataset, batch_size=P*K, sampler=sampler, drop_last=True)`` (the distributed
variant: ``batch_size=(P // world_size) * K`` per rank). An epoch's plan is a pure function of
``(seed, epoch)``, so ``len()`` is exact and every rank builds the same plan.

Plan of an epoch: each identity's images are shuffled and cut into groups of K (a short last group
is topped up with other images of the same identity; an identity with fewer than K images is
topped up with replacement); batches take one group from each of P distinct identities chosen at
random among those with groups left; when fewer than P identities have groups left, the last
batches are completed with fresh groups of other identities. So every image is seen at least once
per epoch and every batch has exactly P distinct identities with K images each.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["RandomIdentitySampler", "DistributedRandomIdentitySampler"]


def _pids_of(data_source) -> List[int]:
    if hasattr(data_source, "pids"):
        return [int(p) for p in data_source.pids]
    return [int(item[1]) for item in data_source]  # (path, pid, camid) items


class RandomIdentitySampler(Sampler[int]):
    """Yields dataset indices, P×K per batch (``batch_size = P*K``). ``data_source``: an
    :class:`~ribkernels.reid.image_dataset.ImageDataset` or a list of (path, pid, camid). ``seed`` defaults to
    torch's initial seed; call :meth:`set_epoch` (or just iterate again) for a new epoch."""

    def __init__(self, data_source, batch_size: int, num_instances: int, seed: Optional[int] = None):
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ValueError(f"batch_size={batch_size}, num_instances={num_instances}: expected "
                             "batch_size a positive multiple of num_instances (P×K)")
        self.pids = _pids_of(data_source)
        self.K = num_instances
        self.P = batch_size // num_instances
        index: Dict[int, List[int]] = defaultdict(list)
        for i, pid in enumerate(self.pids):
            index[pid].append(i)
        self.index = dict(sorted(index.items()))
        if len(self.index) < self.P:
            raise ValueError(f"batch_size={batch_size} needs P={self.P} identities per batch but the data has "
                             f"only {len(self.index)}")
        self.seed = int(torch.initial_seed() % 2**63) if seed is None else int(seed)
        self.epoch = 0
        self._cache: Optional[tuple] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _groups(self, rng: np.random.Generator, pid: int) -> List[List[int]]:
        idxs = list(self.index[pid])
        if len(idxs) < self.K:  # every image once, topped up with replacement
            idxs = idxs + [int(i) for i in rng.choice(idxs, size=self.K - len(idxs), replace=True)]
        idxs = [idxs[i] for i in rng.permutation(len(idxs))]
        rem = len(idxs) % self.K
        if rem:
            extra = rng.choice(idxs[: len(idxs) - rem], size=self.K - rem, replace=False) \
                if len(idxs) - rem >= self.K - rem else rng.choice(idxs, size=self.K - rem)
            idxs += [int(e) for e in extra]
        return [[int(x) for x in idxs[i:i + self.K]] for i in range(0, len(idxs), self.K)]

    def plan(self, epoch: Optional[int] = None) -> List[List[List[int]]]:
        """Batches of the epoch: a list of batches, each a list of P groups of K indices."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        pids = list(self.index)
        left = {pid: self._groups(rng, pid) for pid in pids}
        batches: List[List[List[int]]] = []
        while left:
            avail = list(left)
            if len(avail) >= self.P:
                chosen = [avail[i] for i in rng.choice(len(avail), size=self.P, replace=False)]
                batch = [left[p].pop() for p in chosen]
            else:
                others = [p for p in pids if p not in left]
                extra = [others[i] for i in rng.choice(len(others), size=self.P - len(avail), replace=False)]
                batch = [left[p].pop() for p in avail] + [self._groups(rng, p)[0] for p in extra]
            for p in list(left):
                if not left[p]:
                    del left[p]
            order = rng.permutation(self.P)
            batches.append([batch[i] for i in order])
        self._cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[int]:
        batches = self.plan()
        self.epoch += 1
        for b in batches:
            for g in b:
                yield from g

    def __len__(self) -> int:
        return len(self.plan()) * self.P * self.K


class DistributedRandomIdentitySampler(RandomIdentitySampler):
    """The DDP variant: all ranks build the same global P×K plan (same seed and epoch; call
    :meth:`set_epoch` every epoch) and rank r takes identities ``[r·P/W, (r+1)·P/W)`` of each
    batch, so ranks see disjoint identities and per-rank batches are (P/W)×K. ``batch_size`` is the
    global P×K; P must be divisible by the world size."""

    def __init__(self, data_source, batch_size: int, num_instances: int, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, seed: int = 0):
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            if not dist.is_available() or not dist.is_initialized():
                raise ValueError("num_replicas/rank not given and torch.distributed is not initialised")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        super().__init__(data_source, batch_size, num_instances, seed=seed)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank}: expected 0 <= rank < num_replicas={num_replicas}")
        if self.P % num_replicas:
            raise ValueError(f"P={self.P} identities per global batch is not divisible by num_replicas={num_replicas}")
        self.num_replicas, self.rank = num_replicas, rank
        self.local_P = self.P // num_replicas

    def __iter__(self) -> Iterator[int]:
        batches = self.plan()
        self.epoch += 1
        lo = self.rank * self.local_P
        for b in batches:
            for g in b[lo:lo + self.local_P]:
                yield from g

    def __len__(self) -> int:
        return len(self.plan()) * self.local_P * self.K
