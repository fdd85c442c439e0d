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


# ------------------------------------------------------------------ input checks
def test_values_too_large_for_the_dtype_raise_instead_of_one_cluster():
    x = blobs(60, 3, 4) * 1e19  # squared distances overflow float32 (max ~3.4e38)
    with pytest.raises(ValueError, match=r"x holds values too large for k-means in torch.float32: max \|x\| = "):
        kmeans(x, 3, iters=2)
    with pytest.raises(ValueError, match="too large"):
        kmeans(x, 3, iters=2, normalize=True)  # the row norms overflow as well
    res = kmeans(x.double(), 3, iters=5)  # float64 holds them: three real clusters
    assert (res.counts > 0).all()


@pytest.mark.parametrize("seed", ["a", 1.5, True, None])
def test_seed_must_be_an_int(seed):
    with pytest.raises(TypeError, match=f"seed must be an int, got {seed!r}"):
        kmeans(torch.randn(10, 2), 2, seed=seed)


# ------------------------------------------------------------------ progress
def slow_clock(monkeypatch, step=10.0):
    """Every reading of the progress clock is ``step`` seconds after the previous one."""
    from ribkernels.ibb import progress as _progress

    now = [0.0]

    def clock():
        now[0] += step
        return now[0]

    monkeypatch.setattr(_progress, "_clock", clock)


def test_progress_log_lines_with_counts(caplog, monkeypatch):
    x = blobs(60, 3, 4)
    with caplog.at_level("INFO", logger="ribkernels.ibb"):
        kmeans(x, 3, iters=4, tol=-1.0, progress="log")  # fast: shorter than the interval, silent
    assert not [r for r in caplog.records if "IBB k-means" in r.getMessage()]
    slow_clock(monkeypatch)
    with caplog.at_level("INFO", logger="ribkernels.ibb"):
        res = kmeans(x, 3, iters=4, tol=-1.0, progress="log")  # tol < 0: never stops early
    lines = [r.getMessage() for r in caplog.records if "IBB k-means (3 clusters, 60 rows)" in r.getMessage()]
    assert lines[0].startswith("IBB k-means (3 clusters, 60 rows): 1/5, objective ")
    assert lines[-1].startswith("IBB k-means (3 clusters, 60 rows): 5/5, objective ")
    assert f"objective {res.objective[-1]:.6g}" in lines[-1] and "ETA 0.0s" in lines[-1]
    assert any("IBB k-means++ init (3 centres, 60 rows): 1/3" in r.getMessage() for r in caplog.records)


def test_progress_off_by_default_and_only_on_rank_0(caplog, monkeypatch):
    from ribkernels.ibb import progress as _progress

    slow_clock(monkeypatch)
    x = blobs(60, 3, 4)
    with caplog.at_level("INFO", logger="ribkernels.ibb"):
        kmeans(x, 3, iters=2)
        monkeypatch.setattr(_progress, "_rank", lambda: 1)
        kmeans(x, 3, iters=2, progress="log")
    assert not [r for r in caplog.records if "IBB k-means" in r.getMessage()]


def test_progress_log_throttled_by_time_with_a_fake_clock(caplog):
    from ribkernels.ibb.progress import StepProgress

    now = [0.0]
    p = StepProgress(10, "stage", "log", interval=5.0, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="ribkernels.ibb"):
        for i in range(10):
            now[0] = 2.0 * (i + 1)  # each step takes 2 s
            p.step(value=i)
    done = [r.getMessage().split(":")[1].split(",")[0].strip() for r in caplog.records]
    assert done == ["3/10", "6/10", "9/10", "10/10"]  # every >= 5 s, and the last
    assert "(6.0s elapsed, ETA 14.0s)" in caplog.records[0].getMessage()


def test_progress_bar_on_stderr(capsys):
    kmeans(blobs(60, 3, 4), 3, iters=2, progress="bar")
    assert "IBB k-means (3 clusters, 60 rows)" in capsys.readouterr().err


def test_progress_bad_value():
    with pytest.raises(ValueError, match="progress must be one of"):
        kmeans(torch.randn(10, 2), 2, progress="loud")
