"""Argument checks of the IBB ops. Each error names the argument, what it got and what was
expected. Everything here reads metadata only (shape, dtype, device), except the two functions
marked as syncing: :func:`check_label_range` (one device->host copy of labels' min and max) and
:func:`check_finite` (a full pass plus a copy: used by ``kmeans`` / ``IBBLoss.refresh``, and by
``ibb_loss`` only with ``check_nan=True``)."""
from __future__ import annotations

import torch


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_floating_matrix(name: str, t, layout: str) -> None:
    """``t`` is a floating-point 2-D tensor; ``layout`` (e.g. ``"[n, D]"``) goes into the message."""
    check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor {layout}, got {describe(t)}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D {layout}, got {describe(t)}")


def check_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {describe(t)}")


def check_labels(labels, n: int, ref: torch.Tensor) -> None:
    """labels: integer tensor ``[n]`` on ``ref``'s device (metadata only)."""
    check_tensor("labels", labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor [n] of class indices, got {describe(labels)}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per row of features), got {describe(labels)}")
    check_same_device("labels", labels, "features", ref)


def check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    """labels in [0, num_classes). Syncs: one device->host copy of labels' min and max."""
    if labels.numel() == 0:
        return
    lo, hi = torch.stack([labels.min(), labels.max()]).tolist()
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}] "
                         f"(labels: {describe(labels)})")


def check_finite(name: str, t: torch.Tensor) -> None:
    """No NaN or Inf in ``t``. Syncs (a full pass over ``t`` and a device->host copy)."""
    bad = ~torch.isfinite(t)
    if t.dim() > 1:
        bad = bad.flatten(1).any(1)
    rows = bad.nonzero().flatten()
    if rows.numel():
        first = rows[:5].tolist()
        raise ValueError(f"{name} contains NaN or Inf in {rows.numel()} row(s) (first: {first}); "
                         f"{name}: {describe(t)}")


def check_features_centroids(features, centroids) -> None:
    check_floating_matrix("features", features, "[n, D]")
    check_floating_matrix("centroids", centroids, "[A, D]")
    check_same_device("centroids", centroids, "features", features)
    if centroids.shape[1] != features.shape[1]:
        raise ValueError(f"centroids must have shape [A, {features.shape[1]}] (features are [n, D] "
                         f"with D = {features.shape[1]}), got {describe(centroids)}")
    if centroids.shape[0] < 1:
        raise ValueError(f"centroids must hold at least one cluster [A >= 1, D], got {describe(centroids)}")
    if features.shape[0] < 1:
        raise ValueError(f"features must hold at least one row [n >= 1, D], got {describe(features)}")


def check_log_q(log_q, centroids, features) -> None:
    check_floating_matrix("log_q", log_q, "[A, K]")
    check_same_device("log_q", log_q, "features", features)
    if log_q.shape[0] != centroids.shape[0] or log_q.shape[1] < 1:
        raise ValueError(f"log_q must have shape [A, K] with A = {centroids.shape[0]} (the number of "
                         f"centroids) and K >= 1, got {describe(log_q)}")


def check_batch_fit(what: str, centroids: torch.Tensor, target_entropy, grid) -> None:
    """The arguments of a per-batch β fit: >= 2 centroids, a positive finite ``target_entropy`` (nats),
    an int ``grid`` in [2, 1024]. ``what`` names the caller in the messages."""
    if centroids.shape[0] < 2:
        raise ValueError(f"{what} needs at least 2 centroids, got {describe(centroids)}")
    if isinstance(target_entropy, bool) or not isinstance(target_entropy, (int, float)) \
            or not 0.0 < target_entropy < float("inf"):
        raise ValueError(f"target_entropy must be a positive number of nats, got {target_entropy!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or not 2 <= grid <= 1024:
        raise ValueError(f"grid must be an int in [2, 1024], got {grid!r}")


def check_beta(beta) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0 < beta < float("inf")):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")


def check_beta_arg(beta, features: torch.Tensor) -> None:
    """beta: a positive finite number, or a 0-d floating tensor on the features' device (the
    temperature computed on the device, e.g. fitted to the batch). A tensor's value is checked on
    CPU only: on CUDA that would be a sync (a non-positive β there gives a meaningless loss)."""
    if not isinstance(beta, torch.Tensor):
        check_beta(beta)
        return
    if not beta.is_floating_point() or beta.dim() != 0:
        raise ValueError(f"beta must be a positive finite number or a 0-d floating tensor, got a tensor "
                         f"of {describe(beta)}")
    check_same_device("beta", beta, "features", features)
    if beta.device.type == "cpu":
        v = float(beta.detach())
        if not 0 < v < float("inf"):
            raise ValueError(f"beta must be positive and finite, got a tensor holding {v!r}")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (half types are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
