"""Eager PyTorch implementations of the IBB ops: the fallback when the extension is
unavailable, the baseline of the benchmarks and (on float64 inputs) the reference of the tests.
Inputs are assumed checked and already in the compute dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_assign_eager(features, centroids, beta, normalize: bool) -> torch.Tensor:
    """phi [n, A] = softmax_a(-beta ||f̂_i - c_a||^2), f̂ L2-normalised when ``normalize``; beta a
    float or a 0-d tensor."""
    f = F.normalize(features, dim=1) if normalize else features
    d2 = (f * f).sum(1, keepdim=True) + (centroids * centroids).sum(1) - 2.0 * f @ centroids.T
    return torch.softmax(-beta * d2, dim=1)


def ibb_eager(features, labels, centroids, log_q, beta, normalize: bool) -> torch.Tensor:
    """Per-sample term 2 of the bound, ``-sum_a phi(F_i, a) log_q[a, y_i]``: [n]."""
    phi = soft_assign_eager(features, centroids, beta, normalize)
    return -(phi * log_q[:, labels].T).sum(1)


def soft_counts_eager(features, labels, centroids, beta: float, num_classes: int,
                      normalize: bool) -> torch.Tensor:
    """counts [A, K]: counts[a, k] = sum_{i: y_i = k} phi(F_i, a)."""
    phi = soft_assign_eager(features, centroids, beta, normalize)
    counts = phi.new_zeros(centroids.shape[0], num_classes)
    return counts.index_add_(1, labels, phi.T)


def kmeans_step_eager(features, centroids):
    """One Lloyd assignment: (assignments [n] int64, sums [A, D], counts [A] int64, min_dist [n])."""
    d2 = (features * features).sum(1, keepdim=True) + (centroids * centroids).sum(1) \
        - 2.0 * features @ centroids.T
    min_dist, assign = d2.min(1)  # the first minimum on ties
    A = centroids.shape[0]
    sums = features.new_zeros(A, features.shape[1]).index_add_(0, assign, features)
    counts = torch.bincount(assign, minlength=A)
    return assign, sums, counts, min_dist.clamp_min(0)
