"""BNNeck (Luo et al., "Bag of Tricks"): BatchNorm1d with a frozen bias, then a bias-free classifier."""
from typing import Tuple

import torch
from torch import nn


class BNNeck(nn.Module):
    """``feat [B, C]`` -> ``(bn_feat [B, C], logits [B, num_classes])``.

    The BatchNorm bias is frozen at 0 (``requires_grad=False``), the classifier has no bias and is
    initialised N(0, 0.001²), as TransReID's ``weights_init_classifier``.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.bn = nn.BatchNorm1d(in_features)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_features, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        bn_feat = self.bn(feat)
        return bn_feat, self.classifier(bn_feat)
