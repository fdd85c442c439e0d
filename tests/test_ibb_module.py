"""IBBLoss: refresh (k-means + Q), forward, state_dict, input clusters, logging, errors, and a
2-process torch.distributed (gloo, CPU) refresh equal to a single-process run on the union."""
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from ribkernels.ibb import ibb_loss
from ribkernels.ibb.reference import soft_counts_eager
from ribkernels.nn.ibb_loss import IBBLoss

K, D, A = 9, 16, 12


def data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(A, D, generator=g) * 2
    labels = torch.randint(0, K, (n,), generator=g)
    which = (labels * 7 + torch.randint(0, 2, (n,), generator=g)) % A
    feats = centers[which] + 0.3 * torch.randn(n, D, generator=g)
    return feats, labels


def test_forward_before_refresh_raises():
    m = IBBLoss(K, D)
    with pytest.raises(RuntimeError, match="refresh"):
        m(torch.randn(4, D), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("impl", ["eager", "auto"])
def test_refresh_builds_centroids_and_q(impl, caplog):
    f, y = data()
    m = IBBLoss(K, D, num_clusters=A, beta=1.0, kmeans_iters=10, impl=impl)
    with caplog.at_level(logging.INFO, logger="ribkernels.ibb"):
        stats = m.refresh(f, y)
    assert "empty" in caplog.text and stats["empty_clusters"] >= 0
    assert bool(m.refreshed)
    torch.testing.assert_close(m.centroids.norm(dim=1), torch.ones(A), rtol=1e-5, atol=1e-5)
    counts = soft_counts_eager(f.double(), y, m.centroids.double(), 1.0, K, True)
    q = counts / counts.sum(1, keepdim=True)
    torch.testing.assert_close(m.log_q.double(), q.clamp_min(1e-6).log(), rtol=1e-4, atol=1e-4)
    x = f[:32].clone().requires_grad_()
    loss = m(x, y[:32])
    want = ibb_loss(f[:32].double(), y[:32], m.centroids.double(), m.log_q.double(), impl="eager")
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert m.last_terms["input_entropy"] is None
    torch.testing.assert_close(m.last_terms["label_term"], loss.detach())


def test_ext_and_eager_modules_agree():
    f, y = data()
    a = IBBLoss(K, D, num_clusters=A, impl="eager")
    b = IBBLoss(K, D, num_clusters=A, impl="auto")
    a.refresh(f, y)
    b.refresh(f, y)
    torch.testing.assert_close(a.centroids, b.centroids, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.log_q, b.log_q, rtol=1e-4, atol=1e-4)


def test_state_dict_round_trip():
    f, y = data()
    m = IBBLoss(K, D, num_clusters=A)
    m.refresh(f, y)
    m.set_input_clusters(torch.rand(40, 3, 32, 16))
    m2 = IBBLoss(K, D, num_clusters=A)
    m2.load_state_dict(m.state_dict())
    assert bool(m2.refreshed) and bool(m2.input_ready)
    torch.testing.assert_close(m2(f[:8], y[:8]), m(f[:8], y[:8]))
    assert set(m.state_dict()) == {"centroids", "log_q", "input_centroids", "refreshed", "input_ready",
                                   "beta_used", "input_beta_used", "_extra_state"}
    m.train()(f[:8], y[:8])  # a training batch starts the batch-β average; it travels in the extra state
    m3 = IBBLoss(K, D, num_clusters=A)
    m3.load_state_dict(m.state_dict())
    assert m._log_beta_ema is not None and torch.equal(m3._log_beta_ema, m._log_beta_ema)
    assert m2._beta == float(m.beta_used) and m2._input_beta == float(m.input_beta_used)


def test_input_clusters_and_entropy_term():
    f, y = data()
    m = IBBLoss(K, D, num_clusters=A, num_input_clusters=5, input_size=(8, 4))
    m.refresh(f, y)
    with pytest.raises(RuntimeError, match="set_input_clusters"):
        m.input_entropy(torch.rand(2, 3, 16, 8))
    images = torch.rand(30, 3, 32, 16)
    m.set_input_clusters(images)
    assert m.input_centroids.shape == (5, 3 * 8 * 4)
    h = m.input_entropy(images[:6])
    assert h.shape == (6,) and (h <= 1e-6).all() and (h >= -torch.log(torch.tensor(5.0)) - 1e-5).all()
    base = m(f[:6], y[:6])
    with_h = m(f[:6], y[:6], input_entropy=h)
    torch.testing.assert_close(with_h, base + h.mean())
    torch.testing.assert_close(m.last_terms["input_entropy"], h.mean())


def test_refresh_rejects_bad_inputs_and_keeps_state():
    f, y = data()
    m = IBBLoss(K, D, num_clusters=A)
    bad = f.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m.refresh(bad, y)
    assert not bool(m.refreshed) and torch.isfinite(m.centroids).all()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\)"):
        m.refresh(f, y + K)
    with pytest.raises(ValueError, match="features must have shape"):
        m.refresh(f[:, :5], y)
    with pytest.raises(ValueError, match="labels"):
        m.refresh(f, y[:-1])
    m.refresh(f, y)
    with pytest.raises(ValueError, match="centroids must have shape"):
        m(torch.randn(4, D + 1), y[:4])
    with pytest.raises(ValueError, match="images"):
        m.set_input_clusters(torch.rand(10, 1, 8, 8))


WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[5])
    from test_ibb_module import data, IBBLoss, K, D, A
    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world)
    f, y = data()
    lo, hi = [(0, 130), (130, 240)][rank]  # unequal shares
    m = IBBLoss(K, D, num_clusters=A, kmeans_iters=8)
    m.refresh(f[lo:hi], y[lo:hi])
    m.set_input_clusters(torch.rand(40, 3, 16, 8, generator=torch.Generator().manual_seed(1))[lo // 10: hi // 10 + 1])
    torch.save(m.state_dict(), out)
    dist.destroy_process_group()
""")


def test_distributed_refresh_equals_single_process(tmp_path):
    init = tmp_path / "init"
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(r), "2", str(init),
                               str(tmp_path / f"rank{r}.pt"), here], env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for key in s0:
        if key == "_extra_state":  # the training-batch β average: per rank, none after a refresh
            assert s0[key] == s1[key] == {"log_beta_ema": None}
            continue
        assert torch.equal(s0[key], s1[key]), key  # every rank holds the same state
    f, y = data()
    single = IBBLoss(K, D, num_clusters=A, kmeans_iters=8)
    single.refresh(f, y)
    torch.testing.assert_close(s0["centroids"], single.centroids, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s0["log_q"], single.log_q, rtol=1e-4, atol=1e-5)
