"""``calibrate_beta``: the IBB's softmax temperature β chosen from the clustering itself.

The rule: β is the value at which the soft assignments ``phi(F_i, ·) = softmax_a(-β ||f̂_i - c_a||²)``
of the training features have a mean entropy of ``target_entropy`` nats (by default log 4: each
feature is shared by about four clusters, "perplexity 4"; on Re-ID-like features, 60 or 751 ids,
within-id cosine 0.8, between 0.3, this puts the prediction term at 0.2-0.35 log K with per-sample
gradients of order 1-5 on unit features, where log 2 gives about half the gradient). The mean entropy falls monotonically as β
grows (dH/dβ = -β Var_phi(d²) <= 0 for every row), so β is found by bisection on log β. β scales as
1 / (distance scale)², so the strength of the bound depends neither on the features' norm (even
without L2-normalisation) nor on the number of clusters A: at β = 1 with hundreds of clusters phi is
nearly uniform and the bound is inert, at a fixed large β it saturates to one-hot and its gradient
vanishes; a fixed entropy keeps it in between. Under torch.distributed the entropy sums are
all-reduced at every bisection step, so every rank gets the same β as one process over all the data.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .progress import StepProgress, check_mode
from .checks import check_batch_fit, check_features_centroids, check_finite, compute_dtype
from .._distributed import all_reduce, resolve_group

DEFAULT_TARGET_ENTROPY = math.log(4.0)


def _sq_dists(features: torch.Tensor, centroids: torch.Tensor, normalize: bool) -> torch.Tensor:
    f = F.normalize(features.double(), dim=1) if normalize else features.double()
    c = centroids.double()
    d2 = ((f * f).sum(1, keepdim=True) + (c * c).sum(1) - 2.0 * f @ c.T).clamp_min(0)
    return d2 - d2.min(1, keepdim=True).values  # softmax is shift-invariant per row


def _mean_entropy(d2: torch.Tensor, beta: float, group) -> float:
    logp = torch.log_softmax(-beta * d2, dim=1)
    sums = torch.stack([-(logp.exp() * logp).sum(), torch.tensor(float(d2.shape[0]), dtype=d2.dtype)])
    all_reduce(sums, group)
    return float(sums[0] / sums[1].clamp_min(1))


@torch.no_grad()
def calibrate_beta(features: torch.Tensor, centroids: torch.Tensor, *,
                   target_entropy: float = DEFAULT_TARGET_ENTROPY, normalize: bool = True,
                   iters: int = 60, max_rows: Optional[int] = 8192, progress=None) -> float:
    """β such that the mean entropy of ``phi(features, centroids)`` is ``target_entropy`` (nats).

    ``features`` [n, D], ``centroids`` [A, D] (A >= 2). ``target_entropy`` must lie in (0, log A);
    ``max_rows``: use the first (evenly strided) rows only, for speed. Computed in float64.
    ``progress``: ``None`` / ``"off"``, ``"auto"``, ``"bar"`` or ``"log"``: one step per bisection
    step with the current β and mean entropy (rank 0 only).
    Returns a positive float (clamped to the bisection bracket if the target is unreachable).
    """
    check_features_centroids(features, centroids)
    progress = check_mode(progress)
    check_finite("features", features)
    A = centroids.shape[0]
    if A < 2:
        raise ValueError(f"calibrate_beta needs at least 2 centroids, got {A}")
    if not (0.0 < target_entropy < math.log(A)):
        raise ValueError(f"target_entropy must lie in (0, log A = {math.log(A):.4g}) nats, got {target_entropy!r}")
    if max_rows is not None and features.shape[0] > max_rows:
        features = features[:: math.ceil(features.shape[0] / max_rows)]
    group = resolve_group(None, None)
    d2 = _sq_dists(features, centroids, normalize)
    scale = d2.sum().reshape(1)
    count = torch.tensor([float(d2.numel())], dtype=d2.dtype, device=d2.device)
    all_reduce(scale, group)
    all_reduce(count, group)
    scale = float(scale / count)  # the mean shifted squared distance: β's natural unit is 1 / scale
    if not scale > 0:  # every feature at the same distance from every centroid: any β gives log A
        return 1.0
    lo, hi = math.log(1e-4 / scale), math.log(1e6 / scale)
    prog = StepProgress(iters, f"IBB beta fit ({d2.shape[0]} rows, {A} clusters, target "
                               f"{target_entropy:.4g} nats)", progress)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        h = _mean_entropy(d2, math.exp(mid), group)
        if h > target_entropy:
            lo = mid  # still too flat: a larger β
        else:
            hi = mid
        prog.step(beta=math.exp(mid), entropy=h)
    prog.close()
    return math.exp(0.5 * (lo + hi))


@torch.no_grad()
def assignment_stats(phi: torch.Tensor, log_q: torch.Tensor) -> Dict[str, float]:
    """Diagnostics of a refresh: mean max phi, mean entropy of phi (nats) over the rows of ``phi``
    [n, A], and the mean entropy of the label table ``H(Q(·|a))`` over its rows ``log_q`` [A, K]."""
    q = log_q.double().exp()
    q = q / q.sum(1, keepdim=True)
    p = phi.double()
    return {"mean_max_phi": float(p.max(1).values.mean()),
            "mean_phi_entropy": float(-(torch.xlogy(p, p)).sum(1).mean()),
            "mean_q_entropy": float(-(torch.xlogy(q, q)).sum(1).mean())}


@torch.no_grad()
def calibrate_beta_batch(features: torch.Tensor, centroids: torch.Tensor, *,
                         target_entropy: float = DEFAULT_TARGET_ENTROPY, normalize: bool = True,
                         grid: int = 48, impl: str = "auto") -> torch.Tensor:
    """The same rule as :func:`calibrate_beta` on one batch, without any host sync (for every
    training step): the mean entropy is evaluated on a log-spaced grid of ``grid`` β values, then on
    a second grid between the two that bracket the target, and log β is interpolated linearly.
    Rank-local (no all-reduce). ``features`` [n, D], ``centroids`` [A, D] (A >= 2); returns a 0-d
    tensor on the features' device, float32 (float64 for float64 inputs); relative error of β
    against the exact root about 1e-3.

    ``impl``: ``"auto"`` runs the extension op ``ribkernels::ibb_fit_beta`` when it serves the
    device (one op: a GEMM and ~2 log2(grid) passes over the n x A distances on CPU, the whole
    grid on CUDA), else :func:`calibrate_beta_batch_eager`; ``"ext"`` / ``"eager"`` force one."""
    check_features_centroids(features, centroids)
    check_batch_fit("calibrate_beta_batch", centroids, target_entropy, grid)
    from ._dispatch import no_autocast, use_extension

    if use_extension(impl, features.device):
        from .. import _extension as _ext

        dtype = compute_dtype(features, centroids)
        with no_autocast(features.device):
            return _ext.ops().ibb_fit_beta(features.detach().to(dtype), centroids.detach().to(dtype),
                                           float(target_entropy), bool(normalize), int(grid))
    return calibrate_beta_batch_eager(features, centroids, target_entropy=target_entropy,
                                      normalize=normalize, grid=grid)


@torch.no_grad()
def calibrate_beta_batch_eager(features: torch.Tensor, centroids: torch.Tensor, *,
                               target_entropy: float = DEFAULT_TARGET_ENTROPY,
                               normalize: bool = True, grid: int = 48) -> torch.Tensor:
    """Eager PyTorch version of :func:`calibrate_beta_batch`: the fallback without the extension
    and, on float64 inputs (computed in float64 throughout), the reference of its tests. Every
    grid point is evaluated as one [grid, n, A] tensor. Returns a 0-d tensor (float32, or float64
    for float64 inputs)."""
    check_features_centroids(features, centroids)
    dtype = compute_dtype(features, centroids)
    d2 = _sq_dists(features, centroids, normalize).to(dtype)
    scale = d2.mean().clamp_min(torch.finfo(dtype).tiny)
    lo = torch.log(1e-4 / scale)
    hi = torch.log(1e6 / scale)
    steps = torch.linspace(0, 1, grid, device=d2.device, dtype=dtype)
    for _ in range(2):
        logb = lo + (hi - lo) * steps                              # [G]
        logp = torch.log_softmax(-logb.exp()[:, None, None] * d2[None], dim=2)
        h = -(logp.exp() * logp).sum(2).mean(1)                    # [G], non-increasing in β
        i = (h > target_entropy).sum().clamp(1, grid - 1)          # first grid point at or below target
        h0, h1 = h[i - 1], h[i]
        w = ((h0 - target_entropy) / (h0 - h1).clamp_min(1e-12)).clamp(0, 1)
        lo, hi = logb[i - 1], logb[i]
        est = lo + w * (hi - lo)
    return est.exp()
