"""``ibb_loss``: the IBB bound of the RIB loss for a batch (SPEC §3)."""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import _ext
from ._dispatch import no_autocast, use_extension
from .checks import (check_beta_arg, check_features_centroids, check_finite, check_label_range,
                     check_log_q, check_same_device, check_tensor, compute_dtype, describe)
from .checks import check_labels as check_labels_meta
from .reference import ibb_eager

REDUCTIONS = ("mean", "sum", "none")


def ibb_loss(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
             log_q: torch.Tensor, *, beta: Union[float, torch.Tensor] = 1.0, input_entropy: Optional[torch.Tensor] = None,
             normalize: bool = True, reduction: str = "mean", impl: str = "auto",
             check_labels: bool = True, check_nan: bool = False) -> torch.Tensor:
    """The IBB bound, per sample ``IBB_i = input_entropy_i - sum_a phi(F_i, a) log_q[a, y_i]``.

    Args:
        features: ``[n, D]`` floating features F (any float dtype; computed in float32, or float64
            when an input is float64). The only input that receives a gradient.
        labels: ``[n]`` integer labels in ``[0, K)``.
        centroids: ``[A, D]`` cluster centroids c_a, used as given (L2-normalise them beforehand).
        log_q: ``[A, K]`` log Q(y | a) (already clamped at a small epsilon before the log).
        beta: softmax temperature of ``phi = softmax_a(-beta ||f̂ - c_a||^2)``: a positive float,
            or a 0-d floating tensor on the features' device (e.g. fitted to the batch by
            :func:`ribkernels.ibb.calibrate.calibrate_beta_batch`), read by the kernels where it
            lives: no host sync. A tensor β gets no gradient (it is a constant of the bound); its
            value is checked on CPU only.
        input_entropy: optional ``[n]``: ``sum_b phi(X_i, b) log phi(X_i, b)`` of the inputs
            (term 1). It adds to the value and carries no gradient (``sum_a phi(F_i, a) = 1``).
        normalize: L2-normalise the features first (``f̂``); centroids never are.
        reduction: ``"mean"`` (the bound, averaged over the batch), ``"sum"`` or ``"none"`` (``[n]``).
        impl: ``"auto"`` (the C++/CUDA extension when it serves the device, else eager PyTorch),
            ``"ext"`` or ``"eager"``.
        check_labels: check that labels lie in ``[0, K)`` before any kernel runs (one device->host
            copy of the labels: a sync on CUDA). ``False`` skips it (no sync, e.g. for CUDA graphs):
            the extension then returns NaN for rows with an out-of-range label (eager indexing
            raises on CPU and fails a device assert on CUDA).
        check_nan: also reject NaN/Inf features (costs a device sync; off by default).

    Shapes, dtypes and devices are always checked (metadata only, no sync).

    Returns:
        A scalar (``"mean"``/``"sum"``) or ``[n]`` (``"none"``) tensor in the compute dtype.
    """
    check_features_centroids(features, centroids)
    check_log_q(log_q, centroids, features)
    check_labels_meta(labels, features.shape[0], features)
    check_beta_arg(beta, features)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if input_entropy is not None:
        check_tensor("input_entropy", input_entropy)
        if not input_entropy.is_floating_point() or input_entropy.shape != (features.shape[0],):
            raise ValueError(f"input_entropy must be a floating tensor of shape ({features.shape[0]},) "
                             f"(one value per row of features), got {describe(input_entropy)}")
        check_same_device("input_entropy", input_entropy, "features", features)
    ext = use_extension(impl, features.device)
    if check_labels and not ext:  # the extension checks inside the op, before its kernels
        check_label_range(labels, log_q.shape[1])
    if check_nan:
        check_finite("features", features)

    dtype = compute_dtype(features, centroids, log_q)
    with no_autocast(features.device):
        f = features.to(dtype)
        c = centroids.detach().to(dtype)
        lq = log_q.detach().to(dtype)
        y = labels.long()
        b = beta.detach().to(dtype) if isinstance(beta, torch.Tensor) else float(beta)
        if ext and isinstance(b, torch.Tensor):
            per_sample = _ext.ops().ibb_forward.beta_tensor(f, y, c, lq, b, bool(normalize),
                                                            bool(check_labels))[0]
        elif ext:
            per_sample = _ext.ops().ibb_forward(f, y, c, lq, b, bool(normalize), bool(check_labels))[0]
        else:
            per_sample = ibb_eager(f, y, c, lq, b, bool(normalize))
    if input_entropy is not None:
        per_sample = per_sample + input_entropy.detach().to(dtype)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
