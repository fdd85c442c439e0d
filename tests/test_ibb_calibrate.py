"""The calibrated β of the IBB (beta="auto", the default): the bound is live on clustered Re-ID-like
features whatever the feature scale and the number of clusters; the rule against a float64 brute force."""
import math

import pytest
import torch
import torch.nn.functional as F

from ribkernels.ibb.calibrate import assignment_stats, calibrate_beta, calibrate_beta_batch
from ribkernels.ibb.reference import soft_assign_eager
from ribkernels.nn.ibb_loss import IBBLoss


def reid_like(K: int, per: int, D: int, seed: int = 0):
    """Features with within-identity cosine ~0.8 and between-identity cosine ~0.3 (unit norm)."""
    g = torch.Generator().manual_seed(seed)
    shared = F.normalize(torch.randn(D, generator=g), dim=0)
    ids = F.normalize(torch.randn(K, D, generator=g), dim=1)
    y = torch.arange(K).repeat_interleave(per)
    noise = F.normalize(torch.randn(K * per, D, generator=g), dim=1)
    f = math.sqrt(0.3) * shared + math.sqrt(0.5) * ids[y] + math.sqrt(0.2) * noise
    return F.normalize(f, dim=1), y


def test_reid_like_features_have_the_intended_cosines():
    f, y = reid_like(60, 6, 128)
    cos = f @ f.T
    same = y[:, None] == y[None]
    off = ~torch.eye(len(y), dtype=torch.bool)
    assert 0.75 < cos[same & off].mean() < 0.85 and 0.25 < cos[~same].mean() < 0.35


@pytest.mark.parametrize("K", [60, 301])
@pytest.mark.parametrize("norm", [1.0, 20.0])
@pytest.mark.parametrize("normalize", [True, False])
def test_default_ibb_is_live_at_both_feature_scales(K, norm, normalize):
    f, y = reid_like(K, 6, 128)
    m = IBBLoss(K, 128, kmeans_iters=8, normalize=normalize)
    assert m.beta == "auto"
    stats = m.refresh(norm * f, y)
    x = (norm * f).clone().requires_grad_()
    loss = m(x, y)
    # the prediction term sits clearly below its uniform value log K ...
    assert loss.item() < 0.5 * math.log(K), (loss.item(), math.log(K))
    assert stats["label_term"] < 0.5 * math.log(K)
    # ... and is not saturated: phi spreads over a few clusters, as targeted
    assert 0.4 < stats["mean_max_phi"] < 0.95
    assert stats["mean_phi_entropy"] == pytest.approx(math.log(4), rel=1e-3)
    # per-sample feature gradient, made scale-free (times the norm: d/dx of a function of x/|x|
    # or of x/scale is 1/scale of the gradient on the unit features): it does not vanish
    grad = torch.autograd.grad(loss * len(y), x)[0].norm(dim=1) * norm
    assert grad.median() > 0.5 and (grad > 1e-2).float().mean() > 0.95, grad.median()


def test_fixed_beta_one_is_inert_on_the_same_features():
    """What the calibration fixes: β = 1 on unit features leaves the bound at ~log K."""
    K = 301
    f, y = reid_like(K, 6, 128)
    m = IBBLoss(K, 128, beta=1.0, kmeans_iters=8)
    m.refresh(f, y)
    assert m(f, y).item() > 0.95 * math.log(K)
    assert m.last_refresh["beta"] == 1.0


def test_auto_beta_scales_with_the_features():
    f, y = reid_like(60, 6, 64)
    m1 = IBBLoss(60, 64, kmeans_iters=6, normalize=False)
    m2 = IBBLoss(60, 64, kmeans_iters=6, normalize=False)
    b1 = m1.refresh(f, y)["beta"]
    b2 = m2.refresh(20.0 * f, y)["beta"]
    assert b2 == pytest.approx(b1 / 400.0, rel=1e-6)  # β scales as 1 / distance²
    assert m1.last_refresh["mean_max_phi"] == pytest.approx(m2.last_refresh["mean_max_phi"], rel=1e-5)


def test_calibrate_beta_hits_the_target_entropy_float64():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(77, 5, generator=g, dtype=torch.float64)
    c = F.normalize(torch.randn(13, 5, generator=g, dtype=torch.float64), dim=1)
    for target in (0.3, 1.0, 2.0):
        beta = calibrate_beta(f, c, target_entropy=target)
        phi = soft_assign_eager(F.normalize(f, dim=1), c, beta, False)
        h = -(torch.xlogy(phi, phi)).sum(1).mean()
        assert h.item() == pytest.approx(target, abs=1e-6)


def test_calibrate_beta_rejects_bad_targets():
    f, c = torch.randn(10, 4), F.normalize(torch.randn(3, 4), dim=1)
    with pytest.raises(ValueError, match=r"target_entropy must lie in \(0, log A"):
        calibrate_beta(f, c, target_entropy=math.log(3))
    with pytest.raises(ValueError, match="at least 2 centroids"):
        calibrate_beta(f, c[:1], target_entropy=0.1)
    with pytest.raises(ValueError, match="beta must be 'auto' or a positive"):
        IBBLoss(3, 4, beta="automatic")
    with pytest.raises(ValueError, match="beta must be a positive"):
        IBBLoss(3, 4, beta=-1.0)
    with pytest.raises(ValueError, match="target_entropy must be a positive"):
        IBBLoss(3, 4, target_entropy=0.0)


def test_assignment_stats_against_hand_values():
    phi = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    log_q = torch.tensor([[0.0, -30.0], [math.log(0.5), math.log(0.5)]])
    s = assignment_stats(phi, log_q)
    assert s["mean_max_phi"] == pytest.approx(0.75)
    assert s["mean_phi_entropy"] == pytest.approx(0.5 * math.log(2))
    assert s["mean_q_entropy"] == pytest.approx(0.5 * math.log(2), abs=1e-9)


def test_batch_calibration_matches_the_bisection():
    f, y = reid_like(60, 6, 64)
    m = IBBLoss(60, 64, kmeans_iters=6)
    m.refresh(f, y)
    for rows in (slice(0, 32), slice(100, 197)):
        want = calibrate_beta(f[rows], m.centroids, target_entropy=math.log(4))
        got = calibrate_beta_batch(f[rows], m.centroids, target_entropy=math.log(4))
        assert got.dtype == torch.float32 and got.dim() == 0
        assert got.item() == pytest.approx(want, rel=5e-3)


def test_training_batches_noisier_than_the_refresh_stay_live():
    """The refresh sees clean features; training features are noisier. With the refresh's β the
    prediction term on them rises (towards -log eps when phi saturates on wrong clusters); the
    batch-fitted β keeps it at its calibrated level."""
    K = 60
    f, y = reid_like(K, 6, 64)
    m = IBBLoss(K, 64, kmeans_iters=6)
    m.refresh(f, y)
    g = torch.Generator().manual_seed(5)
    noisy = F.normalize(f + 0.12 * torch.randn(f.shape, generator=g), dim=1)
    x = noisy.clone().requires_grad_()
    live = m(x, y)                           # training mode: β re-fitted to this batch
    assert m.last_terms["beta"].item() != pytest.approx(m.last_refresh["beta"], rel=1e-2)
    (grad,) = torch.autograd.grad(live * len(y), x)
    m.eval()
    stale = m(noisy, y)                      # eval mode: the refresh's β
    assert live.item() < stale.item() and live.item() < math.log(K)
    assert grad.norm(dim=1).median() > 0.5
    m.train()
    m.batch_calibration = False
    torch.testing.assert_close(m(noisy, y), stale)


def test_q_smoothing_mixes_with_the_uniform_and_caps_unseen_labels():
    f, y = reid_like(20, 6, 32)
    m = IBBLoss(21, 32, num_clusters=20, kmeans_iters=5, q_smoothing=0.1)  # label 20 never seen
    m.refresh(f, y)
    q = m.log_q.double().exp()
    torch.testing.assert_close(q.sum(1), torch.ones(20, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert (q >= 0.1 / 21 - 1e-7).all()
    unseen = m(f[:4], torch.full((4,), 20))
    assert unseen.item() == pytest.approx(math.log(21) - math.log(0.1), rel=1e-4)
    with pytest.raises(ValueError, match="q_smoothing"):
        IBBLoss(3, 4, q_smoothing=1.0)


def test_refresh_progress_logs_the_beta_fit(caplog, monkeypatch):
    from ribkernels.ibb import progress as _progress

    now = [0.0]
    monkeypatch.setattr(_progress, "_clock", lambda: now.__setitem__(0, now[0] + 10.0) or now[0])
    f, y = reid_like(20, 6, 32)
    m = IBBLoss(20, 32, kmeans_iters=3, progress="log")
    with caplog.at_level("INFO", logger="ribkernels.ibb"):
        m.refresh(f, y)
    msgs = [r.getMessage() for r in caplog.records]
    fit = [s for s in msgs if s.startswith("IBB beta fit (120 rows, 20 clusters")]
    assert fit[0].split(": ")[1].startswith("1/60, beta ") and fit[-1].split(": ")[1].startswith("60/60, beta ")
    assert any(s.startswith("IBB k-means (20 clusters, 120 rows): ") for s in msgs)
    with pytest.raises(ValueError, match="progress must be one of"):
        IBBLoss(20, 32, progress="verbose")
