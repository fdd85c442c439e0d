"""``IBBLoss``: the IBB bound of the RIB loss as an nn.Module holding its cluster state."""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ibb import ibb_loss, ibb_loss_batch_beta, kmeans, soft_assign, soft_counts
from ..ibb.calibrate import DEFAULT_TARGET_ENTROPY, assignment_stats, calibrate_beta
from ..ibb.checks import (check_beta, check_features_centroids, check_finite, check_label_range, check_labels,
                          check_tensor, describe)
from ..ibb.progress import check_mode
from .._distributed import all_reduce, resolve_group

logger = logging.getLogger("ribkernels.ibb")


class IBBLoss(nn.Module):
    """The IBB bound ``(1/n) sum_i [input_entropy_i - sum_a phi(F_i, a) log Q(y_i | a)]``.

    State (buffers, saved in the state_dict): ``centroids`` [A, D] (L2-normalised feature clusters),
    ``log_q`` [A, K] (log of the label table Q, clamped at ``eps``), ``input_centroids``
    [B, C·h·w] (clusters of down-sampled inputs), the flags ``refreshed`` / ``input_ready``, and
    ``beta_used`` / ``input_beta_used`` (the β of the last refresh / of the input clusters).

    Args:
        num_classes: K, the number of training identities.
        feat_dim: D, the feature size.
        num_clusters: A (default K).
        beta: softmax temperature of phi: ``"auto"`` (default) calibrates it at every refresh with
            :func:`ribkernels.ibb.calibrate.calibrate_beta` so that the mean entropy of phi over the
            training features is ``target_entropy`` nats (the input clusters get their own β by the
            same rule); a positive float fixes it.
        target_entropy: of the ``"auto"`` rule (default log 4; capped at half of log A).
        batch_calibration: with ``beta="auto"``, in training mode (``module.train()``, the default)
            the forward re-fits β to each batch's features by the same rule (no host sync, rank-
            local) and uses an exponential moving average of log β (momentum ``beta_momentum``,
            restarted at each refresh). Why: the refresh sees eval-mode features without
            augmentation; training features (dropout, drop-path, erasing, crops) lie farther from
            the centroids, and a β fitted to the clean spread saturates phi on them (measured on the
            CPU demo: β ≈ 1e5 on collapsed early features, prediction term 3.3 on the refresh
            features but 12.9 ≈ -log eps on the training batches, IBB gradient 17× the task's).
            In eval mode, and with a fixed β, the refresh's β is used.
        kmeans_iters, seed, init: of the k-means in :meth:`refresh` / :meth:`set_input_clusters`.
        eps: Q is clamped at ``eps`` before the log.
        q_smoothing: λ in [0, 1): Q(y|a) is mixed with the uniform distribution, ``(1-λ) Q + λ/K``.
            Any distribution Q keeps term 2 an upper bound (it is a cross-entropy against a
            variational decoder); smoothing keeps samples whose label the clusters have not seen
            (held-out or drifted training features) at ``log K - log λ`` instead of ``-log eps``.
        num_input_clusters: B (default A); ``input_size``: (h, w) images are down-sampled to;
        ``input_channels``: C.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``; ``impl``: ``"auto"`` | ``"ext"`` | ``"eager"``
            (``"auto"``: the C++/CUDA extension's ops when it serves the device, in training mode
            too: ``ribkernels::ibb_forward_fit`` fits β to the batch and computes the bound in one
            op, ``ribkernels::ibb_backward`` its gradient; eager PyTorch only when the extension
            is unavailable, after one warning).
        progress: of :meth:`refresh` / :meth:`set_input_clusters` (k-means++ init, Lloyd
            iterations, the β bisection): ``"off"`` (default), ``"auto"`` (a tqdm bar on a TTY,
            else log lines), ``"bar"`` or ``"log"`` (INFO lines on the ``ribkernels.ibb`` logger
            with counts and an ETA); rank 0 only.

    Under torch.distributed (initialised, more than one process), :meth:`refresh` and
    :meth:`set_input_clusters` all-reduce the k-means sums/counts and the soft counts, so every rank
    ends with the same state. Call them on every rank, each with its own share of the data.
    """

    def __init__(self, num_classes: int, feat_dim: int, num_clusters: Optional[int] = None,
                 beta: Union[float, str] = "auto", *, target_entropy: float = DEFAULT_TARGET_ENTROPY,
                 q_smoothing: float = 0.0, batch_calibration: bool = True, beta_momentum: float = 0.9, kmeans_iters: int = 20, seed: int = 0,
                 init: str = "k-means++", eps: float = 1e-6, normalize: bool = True,
                 num_input_clusters: Optional[int] = None, input_size: Sequence[int] = (16, 8),
                 input_channels: int = 3, reduction: str = "mean", impl: str = "auto", progress="off"):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("feat_dim", feat_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.num_classes, self.feat_dim = num_classes, feat_dim
        self.num_clusters = num_clusters if num_clusters is not None else num_classes
        self.num_input_clusters = num_input_clusters if num_input_clusters is not None else self.num_clusters
        if isinstance(beta, str) and beta != "auto":
            raise ValueError(f"beta must be 'auto' or a positive finite number, got {beta!r}")
        if beta != "auto":
            check_beta(beta)
        if isinstance(target_entropy, bool) or not isinstance(target_entropy, (int, float)) \
                or not 0 < target_entropy < float("inf"):
            raise ValueError(f"target_entropy must be a positive number of nats, got {target_entropy!r}")
        self.beta = "auto" if beta == "auto" else float(beta)
        self.target_entropy = float(target_entropy)
        if isinstance(q_smoothing, bool) or not isinstance(q_smoothing, (int, float)) or not 0.0 <= q_smoothing < 1.0:
            raise ValueError(f"q_smoothing must lie in [0, 1), got {q_smoothing!r}")
        self.q_smoothing = float(q_smoothing)
        if not 0.0 <= beta_momentum < 1.0:
            raise ValueError(f"beta_momentum must lie in [0, 1), got {beta_momentum!r}")
        self.batch_calibration, self.beta_momentum = bool(batch_calibration), float(beta_momentum)
        self.kmeans_iters, self.seed, self.init = kmeans_iters, seed, init
        self.eps, self.normalize, self.reduction, self.impl = eps, normalize, reduction, impl
        self.progress = check_mode(progress)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.input_size = tuple(int(s) for s in input_size)
        self.input_channels = input_channels
        in_dim = input_channels * self.input_size[0] * self.input_size[1]
        self.register_buffer("centroids", torch.zeros(self.num_clusters, feat_dim))
        self.register_buffer("log_q", torch.full((self.num_clusters, num_classes),
                                                 -torch.log(torch.tensor(float(num_classes))).item()))
        self.register_buffer("input_centroids", torch.zeros(self.num_input_clusters, in_dim))
        self.register_buffer("refreshed", torch.tensor(False))
        self.register_buffer("input_ready", torch.tensor(False))
        fixed = 1.0 if self.beta == "auto" else self.beta
        self.register_buffer("beta_used", torch.tensor(fixed, dtype=torch.float64))
        self.register_buffer("input_beta_used", torch.tensor(fixed, dtype=torch.float64))
        self.last_refresh: dict = {}
        self.last_terms: dict = {}
        self._ready = False  # host copy of `refreshed`: forward must not sync on it every batch
        self._beta = fixed  # host copies of beta_used / input_beta_used (no sync per batch)
        self._input_beta = fixed
        self._log_beta_ema: Optional[torch.Tensor] = None  # training-batch β (device tensor), per refresh

    def get_extra_state(self):
        """The training-batch β average (part of the state, so a resumed run continues it exactly)."""
        return {"log_beta_ema": self._log_beta_ema}

    def set_extra_state(self, state) -> None:
        ema = state.get("log_beta_ema") if isinstance(state, dict) else None
        self._log_beta_ema = None if ema is None else ema.to(self.beta_used.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.refreshed)
        self._beta, self._input_beta = float(self.beta_used), float(self.input_beta_used)

    def _target(self, num_clusters: int) -> float:
        return min(self.target_entropy, 0.5 * math.log(num_clusters))

    def _choose_beta(self, x: torch.Tensor, centroids: torch.Tensor, normalize: bool) -> float:
        if self.beta != "auto":
            return self.beta
        if centroids.shape[0] < 2:  # one cluster: phi = 1 whatever β
            return 1.0
        return calibrate_beta(x, centroids, target_entropy=self._target(centroids.shape[0]), normalize=normalize,
                              progress=self.progress)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, "
                f"num_clusters={self.num_clusters}, beta={self.beta}, reduction={self.reduction!r}")

    @torch.no_grad()
    def refresh(self, features: torch.Tensor, labels: torch.Tensor) -> dict:
        """Rebuild centroids (k-means) and Q (soft counts) from this rank's training features
        ``[N, D]`` and labels ``[N]``. NaN/Inf features raise a ValueError. Returns (and logs) the
        k-means objective, the number of empty clusters at the end and how many were re-seeded."""
        check_tensor("features", features)
        if features.dim() != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(f"features must have shape [N, {self.feat_dim}], got {describe(features)}")
        check_labels(labels, features.shape[0], features)
        check_label_range(labels, self.num_classes)
        check_finite("features", features)
        res = kmeans(features, self.num_clusters, self.kmeans_iters, self.seed, init=self.init,
                     normalize=self.normalize, impl=self.impl, progress=self.progress)
        centroids = res.centroids
        beta = self._choose_beta(features, centroids, self.normalize)
        counts = soft_counts(features, labels, centroids, num_classes=self.num_classes,
                             beta=beta, normalize=self.normalize, impl=self.impl)
        all_reduce(counts, resolve_group(None, None))
        q = counts / counts.sum(1, keepdim=True).clamp_min(torch.finfo(counts.dtype).tiny)
        if self.q_smoothing:
            q = (1.0 - self.q_smoothing) * q + self.q_smoothing / self.num_classes
        self.centroids.copy_(centroids)
        self.log_q.copy_(q.clamp_min(self.eps).log())
        self.beta_used.fill_(beta)
        self._beta = beta
        self._log_beta_ema = None
        self.refreshed.fill_(True)
        self._ready = True
        empty = int((res.counts == 0).sum())
        phi = soft_assign(features, centroids, beta=beta, normalize=self.normalize, impl=self.impl)
        stats = assignment_stats(phi, self.log_q)
        # the prediction term over this rank's training features, against the new centroids and Q
        label_term = float(-(phi.double() * self.log_q.double()[:, labels].T).sum(1).mean())
        self.last_refresh = {"objective": res.objective[-1], "iterations": len(res.objective) - 1,
                             "empty_clusters": empty, "reseeded": sum(res.reseeded), "beta": beta,
                             **stats, "label_term": label_term, "log_num_classes": math.log(self.num_classes)}
        logger.info("IBB refresh: %d clusters, %d empty, %d re-seeded during %d iterations, "
                    "k-means objective %.6g; beta %.4g (%s), mean max phi %.3f, mean H(phi) %.3f, "
                    "mean H(Q(.|a)) %.3f, prediction term %.4f (log K = %.4f)", self.num_clusters, empty,
                    sum(res.reseeded), len(res.objective) - 1, res.objective[-1], beta,
                    "auto" if self.beta == "auto" else "fixed", stats["mean_max_phi"], stats["mean_phi_entropy"],
                    stats["mean_q_entropy"], label_term, math.log(self.num_classes))
        return dict(self.last_refresh)

    def _downsample(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor("images", images)
        if images.dim() != 4 or images.shape[1] != self.input_channels or not images.is_floating_point():
            raise ValueError(f"images must be floating [N, {self.input_channels}, H, W], got {describe(images)}")
        small = F.interpolate(images.float(), size=self.input_size, mode="area")
        return F.normalize(small.flatten(1), dim=1)

    @torch.no_grad()
    def set_input_clusters(self, images: torch.Tensor) -> dict:
        """Input clusters from ``images`` [N, C, H, W]: down-sampled to ``input_size``, flattened,
        L2-normalised, k-means into ``num_input_clusters`` (fixed afterwards)."""
        x = self._downsample(images)
        check_finite("images", x)
        res = kmeans(x, self.num_input_clusters, self.kmeans_iters, self.seed, init=self.init,
                     normalize=True, impl=self.impl, progress=self.progress)
        self.input_centroids.copy_(res.centroids)
        beta = self._choose_beta(x, res.centroids, True)
        self.input_beta_used.fill_(beta)
        self._input_beta = beta
        self.input_ready.fill_(True)
        stats = {"objective": res.objective[-1], "empty_clusters": int((res.counts == 0).sum()), "beta": beta}
        logger.info("IBB input clusters: %d clusters, %d empty", self.num_input_clusters,
                    stats["empty_clusters"])
        return stats

    @torch.no_grad()
    def input_entropy(self, images: torch.Tensor) -> torch.Tensor:
        """``sum_b phi(X_i, b) log phi(X_i, b)`` per image ([N]), for ``forward(input_entropy=)``."""
        if not bool(self.input_ready):
            raise RuntimeError("IBBLoss.input_entropy needs input clusters: call set_input_clusters(images) first")
        phi = soft_assign(self._downsample(images), self.input_centroids, beta=self._input_beta,
                          normalize=True, impl=self.impl)
        return torch.xlogy(phi, phi).sum(1)

    def forward(self, features: torch.Tensor, labels: torch.Tensor,
                input_entropy: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The bound for a batch: ``features`` [n, D], ``labels`` [n], optional ``input_entropy`` [n]
        (term 1, no gradient). Raises until :meth:`refresh` has run once."""
        if not self._ready:
            raise RuntimeError("IBBLoss has no clusters yet: call refresh(features, labels) on the "
                               "training features first (the IBB is switched on after the first refresh)")
        check_features_centroids(features, self.centroids)
        if self.beta == "auto" and self.batch_calibration and self.training and self.num_clusters > 1:
            # the training path: β fitted to this batch and averaged in log space, in one extension
            # op with the bound (no host sync; the labels' range is checked on CPU only)
            per_sample, beta, self._log_beta_ema = ibb_loss_batch_beta(
                features, labels, self.centroids, self.log_q, log_beta_ema=self._log_beta_ema,
                momentum=self.beta_momentum, target_entropy=self._target(self.num_clusters),
                normalize=self.normalize, impl=self.impl, check_labels=not features.is_cuda)
        else:
            beta = self._beta
            per_sample = ibb_loss(features, labels, self.centroids, self.log_q, beta=beta,
                                  normalize=self.normalize, reduction="none", impl=self.impl)
        label_term = per_sample.detach().mean()
        if input_entropy is not None:
            per_sample = per_sample + self._check_entropy(input_entropy, per_sample)
        entropy_term = input_entropy.detach().mean() if input_entropy is not None else None
        self.last_terms = {"input_entropy": entropy_term, "label_term": label_term,
                           "beta": beta.detach() if isinstance(beta, torch.Tensor) else beta}
        if logger.isEnabledFor(logging.DEBUG):  # .item() syncs: only when asked for
            logger.debug("IBB terms: input entropy %s, label term %.6g",
                         "n/a" if entropy_term is None else f"{entropy_term.item():.6g}",
                         label_term.item())
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample

    @staticmethod
    def _check_entropy(input_entropy, per_sample: torch.Tensor) -> torch.Tensor:
        check_tensor("input_entropy", input_entropy)
        if not input_entropy.is_floating_point() or input_entropy.shape != per_sample.shape:
            raise ValueError(f"input_entropy must be a floating tensor of shape {tuple(per_sample.shape)}, "
                             f"got {describe(input_entropy)}")
        if input_entropy.device != per_sample.device:
            raise ValueError(f"input_entropy must be on {per_sample.device}, got {describe(input_entropy)}")
        return input_entropy.detach().to(per_sample.dtype)
