"""Re-ID losses (docs/training.md): ID cross-entropy with optional label smoothing, and the batch-hard
triplet loss (margin or soft margin). Device-agnostic: everything follows the inputs' device."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CrossEntropyLabelSmooth", "TripletLoss", "batch_hard_mining", "pairwise_euclidean"]


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against ``(1 − ε)·onehot + ε/num_classes`` (Szegedy et al.; ε = 0: plain CE).
    logits [B, C], targets [B] int64 → scalar (mean over the batch)."""

    def __init__(self, num_classes: int, epsilon: float = 0.1):
        super().__init__()
        if num_classes < 1 or not 0.0 <= epsilon < 1.0:
            raise ValueError(f"num_classes >= 1 and 0 <= epsilon < 1 expected, got {num_classes}, {epsilon}")
        self.num_classes, self.epsilon = num_classes, epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits: expected [B, {self.num_classes}], got {tuple(logits.shape)}")
        if targets.shape != logits.shape[:1] or targets.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"targets: expected int64 [{logits.shape[0]}], got {targets.dtype} {tuple(targets.shape)}")
        logp = F.log_softmax(logits, dim=1)
        nll = -logp.gather(1, targets.long()[:, None]).squeeze(1)
        smooth = -logp.mean(dim=1)
        return ((1.0 - self.epsilon) * nll + self.epsilon * smooth).mean()


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """[B, D] → [B, B] Euclidean distances, sqrt clamped at 1e-12 (TransReID's ``euclidean_dist``)."""
    sq = (x * x).sum(1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * (x @ x.t())
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_mining(dist: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each anchor: hardest positive (largest distance, same label, itself included) and hardest
    negative (smallest distance, other label). Returns (dist_ap [B], dist_an [B], has_neg [B] bool)."""
    same = labels[:, None] == labels[None, :]
    big = torch.finfo(dist.dtype).max
    dist_ap = dist.masked_fill(~same, -big).amax(dim=1)
    dist_an = dist.masked_fill(same, big).amin(dim=1)
    return dist_ap, dist_an, (~same).any(dim=1)


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al.): ``mean(relu(d_ap − d_an + margin))``, or with
    ``margin=None`` the soft margin ``mean(softplus(d_ap − d_an))``. Euclidean distances, optionally
    on L2-normalised features. Anchors without a negative in the batch are left out (all alone: 0).
    forward(features [B, D], labels [B]) → (loss, dist_ap, dist_an)."""

    def __init__(self, margin: Optional[float] = 0.3, normalize_feature: bool = False):
        super().__init__()
        if margin is not None and margin < 0:
            raise ValueError(f"margin: expected >= 0 or None (soft margin), got {margin}")
        self.margin, self.normalize_feature = margin, normalize_feature

    def forward(self, features: torch.Tensor, labels: torch.Tensor):
        if features.dim() != 2 or labels.shape != features.shape[:1]:
            raise ValueError(f"features [B, D] and labels [B] expected, got {tuple(features.shape)} and {tuple(labels.shape)}")
        if self.normalize_feature:
            features = F.normalize(features, dim=1)
        dist = pairwise_euclidean(features)
        dist_ap, dist_an, has_neg = batch_hard_mining(dist, labels.to(features.device))
        diff = (dist_ap - dist_an)[has_neg]
        if diff.numel() == 0:
            return features.sum() * 0.0, dist_ap, dist_an
        loss = F.softplus(diff) if self.margin is None else F.relu(diff + self.margin)
        return loss.mean(), dist_ap, dist_an
