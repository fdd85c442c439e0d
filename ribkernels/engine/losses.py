"""The identity and triplet losses train.py builds from the config (``loss`` section)."""
from typing import Dict, Optional

import torch

from ..reid import CrossEntropyLabelSmooth, TripletLoss


class TripletLossOnly(torch.nn.Module):
    """``ribkernels.reid.TripletLoss`` returning the loss only."""

    def __init__(self, margin: Optional[float]):
        super().__init__()
        self.inner = TripletLoss(margin)

    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        return self.inner(feats, pids)[0]


def build_losses(cfg: Dict, num_classes: int):
    l = cfg["loss"]
    return CrossEntropyLabelSmooth(num_classes, float(l["label_smoothing"] or 0.0)), TripletLossOnly(l["triplet_margin"])
