"""PK samplers: P×K batches of distinct identities, coverage of every image, exact len(),
determinism per (seed, epoch), and the distributed split."""
from collections import Counter

import pytest

from ribkernels.reid import DistributedRandomIdentitySampler, RandomIdentitySampler


def _items(counts):
    items = []
    for pid, n in enumerate(counts):
        items += [(f"{pid}_{k}.jpg", pid * 3 + 1, k % 4) for k in range(n)]  # non-contiguous pids
    return items


COUNTS = [1, 2, 4, 5, 7, 9, 3, 13, 4, 6, 2, 8]


@pytest.mark.parametrize("P,K", [(4, 4), (3, 2), (12, 1), (5, 3)])
def test_pk_batches_and_coverage(P, K):
    items = _items(COUNTS)
    s = RandomIdentitySampler(items, batch_size=P * K, num_instances=K, seed=7)
    for epoch in range(3):
        n = len(s)
        idx = list(iter(s))
        assert len(idx) == n and n % (P * K) == 0
        for b in range(0, n, P * K):
            pids = Counter(items[i][1] for i in idx[b:b + P * K])
            assert len(pids) == P and set(pids.values()) == {K}
            for g in range(b, b + P * K, K):  # each group of K is one identity
                assert len({items[i][1] for i in idx[g:g + K]}) == 1
        assert set(idx) == set(range(len(items)))  # every image seen in every epoch
    assert s.epoch == 3


def test_deterministic_per_seed_and_epoch():
    items = _items(COUNTS)
    a = RandomIdentitySampler(items, 16, 4, seed=1)
    b = RandomIdentitySampler(items, 16, 4, seed=1)
    c = RandomIdentitySampler(items, 16, 4, seed=2)
    ea, eb, ec = list(a), list(b), list(c)
    assert ea == eb and ea != ec
    assert list(a) != ea  # next epoch differs
    a.set_epoch(0)
    assert list(a) == ea


def test_distributed_split():
    items = _items(COUNTS)
    full = RandomIdentitySampler(items, 16, 4, seed=5)
    ranks = [DistributedRandomIdentitySampler(items, 16, 4, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for r in ranks:
        r.set_epoch(3)
    full.set_epoch(3)
    ref = list(full)
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == len(ref) // 2 == len(ranks[0].plan(3)) * 8
    for b in range(len(ref) // 16):  # rank 0 gets the first P/2 identities of each global batch
        assert parts[0][b * 8:(b + 1) * 8] + parts[1][b * 8:(b + 1) * 8] == ref[b * 16:(b + 1) * 16]
        assert not {items[i][1] for i in parts[0][b * 8:(b + 1) * 8]} & {items[i][1] for i in parts[1][b * 8:(b + 1) * 8]}
    with pytest.raises(ValueError, match="divisible"):
        DistributedRandomIdentitySampler(items, 12, 4, num_replicas=2, rank=0)


def test_bad_arguments():
    items = _items(COUNTS)
    with pytest.raises(ValueError, match="multiple"):
        RandomIdentitySampler(items, 10, 4)
    with pytest.raises(ValueError, match="only 12"):
        RandomIdentitySampler(items, 13 * 2, 2)
