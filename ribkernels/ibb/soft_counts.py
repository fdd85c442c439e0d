"""``soft_counts``: the A x K sums of soft assignments per label that make Q."""
from __future__ import annotations

import torch

from .. import _extension as _ext
from ._dispatch import no_autocast, use_extension
from .checks import (check_beta, check_features_centroids, check_label_range, check_labels,
                     compute_dtype)
from .reference import soft_counts_eager


@torch.no_grad()
def soft_counts(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, *,
                num_classes: int, beta: float = 1.0, normalize: bool = True,
                impl: str = "auto") -> torch.Tensor:
    """``counts[a, k] = sum_{i: y_i = k} phi(F_i, a)``: ``[A, K]`` (no gradient).

    ``Q(y | a) = counts[a, y] / counts[a].sum()``. ``features`` [n, D], ``labels`` [n] in
    ``[0, num_classes)`` (checked: one device sync), ``centroids`` [A, D]. Deterministic (no
    atomics): the extension sums each label's rows in a fixed order.
    """
    check_features_centroids(features, centroids)
    check_labels(labels, features.shape[0], features)
    check_beta(beta)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    ext = use_extension(impl, features.device)
    if not ext:
        check_label_range(labels, num_classes)
    dtype = compute_dtype(features, centroids)
    with no_autocast(features.device):
        f, c, y = features.to(dtype), centroids.to(dtype), labels.long()
        if ext:
            return _ext.ops().soft_counts(f, y, c, float(beta), int(num_classes), bool(normalize))
        return soft_counts_eager(f, y, c, float(beta), int(num_classes), bool(normalize))
