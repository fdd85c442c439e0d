"""kmeans / kmeans_step: determinism, a never-increasing objective, empty clusters re-seeded,
the spherical variant, and clear errors (NaN, too few rows)."""
import pytest
import torch
import torch.nn.functional as F

from ribkernels.ibb import extension_status, kmeans, kmeans_step

HAS_EXT = "cpu" in extension_status()["devices"]
IMPLS = ["eager", pytest.param("ext", marks=pytest.mark.skipif(not HAS_EXT, reason="no extension"))]


def blobs(n, k, D, spread=0.3):
    centers = torch.randn(k, D) * 3
    return centers[torch.randint(0, k, (n,))] + spread * torch.randn(n, D)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_same_seed_same_centroids(impl, init):
    x = blobs(500, 8, 16)
    a = kmeans(x, 8, iters=15, seed=3, init=init, impl=impl)
    b = kmeans(x, 8, iters=15, seed=3, init=init, impl=impl)
    assert torch.equal(a.centroids, b.centroids) and a.objective == b.objective
    c = kmeans(x, 8, iters=15, seed=4, init=init, impl=impl)
    assert not torch.equal(a.centroids, c.centroids)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("normalize", [False, True])
def test_objective_never_increases(impl, normalize):
    x = torch.randn(700, 12)
    res = kmeans(x, 37, iters=25, seed=0, normalize=normalize, impl=impl)
    obj = torch.tensor(res.objective, dtype=torch.float64)
    assert len(obj) >= 3
    assert (obj[1:] <= obj[:-1] * (1 + 1e-6)).all(), res.objective
    if normalize:
        torch.testing.assert_close(res.centroids.norm(dim=1), torch.ones(37), rtol=1e-5, atol=1e-5)
    # the reported objective is the true one for the returned centroids
    xs = F.normalize(x, dim=1) if normalize else x
    true = (torch.cdist(xs.double(), res.centroids.double()) ** 2).min(1).values.sum()
    torch.testing.assert_close(torch.tensor(res.objective[-1], dtype=torch.float64), true, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("normalize", [False, True])
def test_empty_clusters_reseeded(impl, normalize):
    x = blobs(300, 5, 6).abs()  # positive orthant
    # two starting centroids in the negative orthant: nobody's nearest, so empty after step one
    far = -torch.stack([torch.ones(6), torch.arange(1.0, 7.0)]) * (1.0 if normalize else 1e3)
    init = torch.cat([x[:5], far])
    first = kmeans_step(F.normalize(x, dim=1) if normalize else x,
                        F.normalize(init, dim=1) if normalize else init, impl=impl)
    n_empty = int((first.counts == 0).sum())
    assert n_empty == 2
    res = kmeans(x, 7, iters=10, init=init, normalize=normalize, impl=impl)
    assert res.reseeded[0] == n_empty
    assert (res.counts > 0).all(), res.counts
    obj = res.objective
    assert all(b <= a * (1 + 1e-6) for a, b in zip(obj, obj[1:])), obj
    assert obj[-1] < obj[0]


def test_init_tensor_shape_checked():
    with pytest.raises(ValueError, match="init centroids"):
        kmeans(torch.randn(20, 4), 3, init=torch.randn(2, 4))


@pytest.mark.parametrize("impl", IMPLS)
def test_kmeans_step_sums_and_counts(impl):
    x = torch.randn(123, 9, dtype=torch.float64)
    c = torch.randn(7, 9, dtype=torch.float64)
    assign, sums, counts, mind = kmeans_step(x, c, impl=impl)
    d = torch.cdist(x, c) ** 2
    assert torch.equal(assign, d.argmin(1))
    torch.testing.assert_close(mind, d.min(1).values)
    for a in range(7):
        torch.testing.assert_close(sums[a], x[assign == a].sum(0))
        assert counts[a] == (assign == a).sum()


@pytest.mark.parametrize("impl", IMPLS)
def test_ties_go_to_lowest_index(impl):
    x = torch.zeros(3, 2)
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert kmeans_step(x, c, impl=impl).assignments.tolist() == [0, 0, 0]


def test_errors():
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.where(x > 1.5, float("nan"), x), 3)
    with pytest.raises(ValueError, match="at least k rows"):
        kmeans(x, 21)
    with pytest.raises(ValueError, match="k must"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 2, init="kmeans||")
    with pytest.raises(TypeError, match="x must be a floating"):
        kmeans(x.long(), 2)
    with pytest.raises(ValueError, match="centroids must have shape"):
        kmeans_step(x, torch.randn(3, 5))
