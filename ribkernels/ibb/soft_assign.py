"""``soft_assign``: phi, the soft cluster assignment of the IBB bound."""
from __future__ import annotations

import torch

from .. import _extension as _ext
from ._dispatch import no_autocast, use_extension
from .checks import check_beta, check_features_centroids, compute_dtype
from .reference import soft_assign_eager


def soft_assign(features: torch.Tensor, centroids: torch.Tensor, *, beta: float = 1.0,
                normalize: bool = True, impl: str = "auto") -> torch.Tensor:
    """``phi[i, a] = softmax_a(-beta ||f̂_i - c_a||^2)``: ``[n, A]`` in float32 (float64 for float64
    inputs). ``features`` [n, D] (L2-normalised first when ``normalize``), ``centroids`` [A, D] used
    as given. Differentiable with respect to ``features``."""
    check_features_centroids(features, centroids)
    check_beta(beta)
    ext = use_extension(impl, features.device)
    dtype = compute_dtype(features, centroids)
    with no_autocast(features.device):
        f, c = features.to(dtype), centroids.detach().to(dtype)
        if ext:
            return _ext.ops().soft_assign(f, c, float(beta), bool(normalize))[0]
        return soft_assign_eager(f, c, float(beta), bool(normalize))
