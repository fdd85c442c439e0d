"""``ibb_loss``: the IBB bound of the RIB loss for a batch."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .. import _extension as _ext
from ._dispatch import no_autocast, use_extension
from .checks import (check_batch_fit, check_beta_arg, check_features_centroids, check_finite, check_label_range,
                     check_log_q, check_same_device, check_tensor, compute_dtype, describe)
from .checks import check_labels as check_labels_meta
from .calibrate import DEFAULT_TARGET_ENTROPY, calibrate_beta_batch_eager
from .reference import ibb_eager

REDUCTIONS = ("mean", "sum", "none")


def _operands(features, centroids, log_q, labels, dtype):
    """The ops' operands in the compute dtype: features (with grad), the detached centroids and log Q,
    int64 labels."""
    return features.to(dtype), centroids.detach().to(dtype), log_q.detach().to(dtype), labels.long()


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
        f, c, lq, y = _operands(features, centroids, log_q, labels, dtype)
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


def ibb_loss_batch_beta(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
                        log_q: torch.Tensor, *, log_beta_ema: Optional[torch.Tensor] = None,
                        momentum: float = 0.9, target_entropy: float = DEFAULT_TARGET_ENTROPY,
                        normalize: bool = True, grid: int = 48, impl: str = "auto",
                        check_labels: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bound per sample ``[n]`` with β fitted to this batch: what ``IBBLoss`` computes at every
    training step with ``beta="auto"``.

    ``log b`` = the rule of :func:`ribkernels.ibb.calibrate.calibrate_beta_batch` on ``features``
    [n, D] against ``centroids`` [A, D] (A >= 2); ``log β = momentum * log_beta_ema + (1 -
    momentum) * log b`` (``log b`` when ``log_beta_ema``, a 0-d tensor, is None); then
    ``-sum_a phi(F_i, a) log_q[a, y_i]`` with that β, which gets no gradient. Returns
    ``(per_sample [n], beta, log_beta)`` (0-d tensors on the features' device, for the next call).

    On the extension it is one op, ``ribkernels::ibb_forward_fit`` (one GEMM shared by the fit and
    the bound, no host sync; its backward is ``ribkernels::ibb_backward``); ``impl="eager"`` or no
    extension: :func:`calibrate_beta_batch_eager` and the eager bound. ``check_labels`` as in
    :func:`ibb_loss` (a sync on CUDA)."""
    check_features_centroids(features, centroids)
    check_log_q(log_q, centroids, features)
    check_labels_meta(labels, features.shape[0], features)
    check_batch_fit("a batch-fitted beta", centroids, target_entropy, grid)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
    if log_beta_ema is not None:
        check_tensor("log_beta_ema", log_beta_ema)
        if not log_beta_ema.is_floating_point() or log_beta_ema.dim() != 0:
            raise ValueError(f"log_beta_ema must be a 0-d floating tensor, got {describe(log_beta_ema)}")
        check_same_device("log_beta_ema", log_beta_ema, "features", features)
    ext = use_extension(impl, features.device)
    if check_labels and not ext:
        check_label_range(labels, log_q.shape[1])

    dtype = compute_dtype(features, centroids, log_q)
    with no_autocast(features.device):
        f, c, lq, y = _operands(features, centroids, log_q, labels, dtype)
        ema = None if log_beta_ema is None else log_beta_ema.detach().to(dtype)
        if ext:
            loss, _, _, beta, ema = _ext.ops().ibb_forward_fit(
                f, y, c, lq, ema, float(momentum), float(target_entropy), bool(normalize),
                bool(check_labels), int(grid))
        else:
            logb = calibrate_beta_batch_eager(f.detach(), c, target_entropy=float(target_entropy),
                                              normalize=bool(normalize), grid=int(grid)).log()
            ema = logb if ema is None else momentum * ema + (1 - momentum) * logb
            beta = ema.exp()
            loss = ibb_eager(f, y, c, lq, beta, bool(normalize))
    return loss, beta, ema
