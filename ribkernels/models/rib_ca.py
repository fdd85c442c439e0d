"""RIB-CA backbone: a timm ResNet with channel attention (SE or CBAM) in every block + BNNeck.

The Re-ID conventions of "Bag of Tricks" / TransReID's ResNet: last stage stride 1 (``last_stride=1``),
global average pooling, BNNeck, bias-free classifier.
"""
from typing import Dict, Optional, Union

import timm
import torch
from torch import nn

from .neck import BNNeck

CHANNEL_ATTENTIONS = ("se", "cbam")
NECK_FEATS = ("before", "after")


class ResNetReID(nn.Module):
    """``x [B, 3, H, W]`` -> training ``dict(logits=[[B, K]], feats=[[B, C]], global_feat=[B, C])``,
    eval ``[B, C]`` (before/after the BNNeck per ``neck_feat``); ``C`` = 2048 for ResNet-50, 512 for 18/34.

    ``arch``: a timm ResNet name (``resnet50``, ``resnet18``…); ``attn``: "se" or "cbam", built with
    timm's ``block_args=dict(attn_layer=attn)``. Cameras/views are not used (no SIE in a CNN).
    """

    def __init__(self, num_classes: int, *, arch: str = "resnet50", attn: str = "se", last_stride: int = 1,
                 neck_feat: str = "before", drop_path_rate: float = 0.0):
        super().__init__()
        if attn not in CHANNEL_ATTENTIONS:
            raise ValueError(f"attn must be one of {CHANNEL_ATTENTIONS}, got {attn!r}")
        if neck_feat not in NECK_FEATS:
            raise ValueError(f"neck_feat must be one of {NECK_FEATS}, got {neck_feat!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.arch, self.attn = arch, attn
        self.neck_feat = neck_feat
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="",
                                          block_args=dict(attn_layer=attn), drop_path_rate=drop_path_rate)
        if last_stride == 1:
            first = self.backbone.layer4[0]
            for conv in (getattr(first, "conv2", None), getattr(first, "conv1", None)):
                if conv is not None and conv.stride != (1, 1):
                    conv.stride = (1, 1)
            if first.downsample is not None:
                for m in first.downsample.modules():
                    if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
                        m.stride = (1, 1)
                    elif isinstance(m, (nn.AvgPool2d,)) and m.stride != 1:
                        raise ValueError(f"last_stride=1 is not supported for {arch} (avg-pool downsample)")
        self.feat_dim = self.eval_feat_dim = self.backbone.num_features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = BNNeck(self.feat_dim, num_classes)

    def keep_fraction(self) -> Optional[float]:
        return None

    def forward_global(self, x: torch.Tensor, cam_label=None, view_label=None) -> torch.Tensor:
        """The pooled feature before the BNNeck, ``[B, C]``."""
        if x.dim() != 4:
            raise ValueError(f"x must be [B, 3, H, W], got {tuple(x.shape)}")
        return self.pool(self.backbone.forward_features(x)).flatten(1)

    def forward(self, x: torch.Tensor, cam_label=None, view_label=None) -> Union[Dict, torch.Tensor]:
        global_feat = self.forward_global(x)
        if self.training:
            bn_feat, logits = self.neck(global_feat)
            return dict(logits=[logits], feats=[global_feat], global_feat=global_feat, global_bn_feat=bn_feat)
        return self.neck.bn(global_feat) if self.neck_feat == "after" else global_feat
