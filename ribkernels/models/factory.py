"""``build_model(name, ...)``: the named TransReID / RIB-CA configurations."""
import inspect
import logging
from typing import Dict, Optional

from torch import nn

from .pretrained import load_pretrained
from .rib_ca import ResNetReID
from .transreid import ATTN_IMPLS, TransReID

logger = logging.getLogger(__name__)

_VIT_B = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, drop_path_rate=0.1)

# "sie": whether camera_num/view_num are used (SIE); the rest are TransReID/ResNetReID arguments.
VIT_CONFIGS: Dict[str, Dict] = {
    # the paper's TransReID*: overlapping patches (stride 12), SIE, JPM
    "vit_base_transreid": dict(_VIT_B, stride_size=12, jpm=True, sie=True),
    # the ViT-B/16 baseline: stride 16, no SIE, no JPM
    "vit_base": dict(_VIT_B, stride_size=16, jpm=False, sie=False),
    # CPU runs at 128x64: a ViT-Tiny-width model (embed 192, 3 heads, 4 blocks) with SIE + JPM
    "vit_small_cpu": dict(patch_size=16, stride_size=16, embed_dim=192, depth=4, num_heads=3,
                          mlp_ratio=4.0, drop_path_rate=0.1, jpm=True, sie=True),
    # the CPU demo (make train): 4 blocks of width 192 on a convolutional stem (4 x Conv3x3/2 + 1x1:
    # an 8x4 token grid at 128x64), JPM; trained from scratch, where 16x16 patches learn nothing
    "vit_small_conv_cpu": dict(stem="conv", stem_depth=4, embed_dim=192, depth=4, num_heads=3,
                               mlp_ratio=4.0, drop_path_rate=0.1, jpm=True, sie=True),
    # tests: 2 blocks of width 64, SIE + JPM, overlapping patches
    "vit_tiny_cpu": dict(patch_size=16, stride_size=12, embed_dim=64, depth=2, num_heads=2,
                         mlp_ratio=2.0, drop_path_rate=0.0, jpm=True, sie=True),
}
CNN_CONFIGS: Dict[str, Dict] = {
    "resnet50_se": dict(arch="resnet50", attn="se"),
    "resnet50_cbam": dict(arch="resnet50", attn="cbam"),
    "resnet18_se_cpu": dict(arch="resnet18", attn="se"),
    "resnet18_cbam_cpu": dict(arch="resnet18", attn="cbam"),
}
MODEL_NAMES = tuple(VIT_CONFIGS) + tuple(CNN_CONFIGS)


def _check_overrides(cls, overrides: Dict, fixed) -> None:
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", *fixed}
    bad = sorted(set(overrides) - allowed - {"sie"})
    if bad:
        raise TypeError(f"build_model: unknown override(s) {bad} for {cls.__name__}; allowed: {sorted(allowed | {'sie'})}")


def build_model(name: str, num_classes: int, camera_num: int = 0, view_num: int = 0, *,
                attn_impl: str = "sdpa", dcs_kwargs: Optional[Dict] = None, img_size=(256, 128),
                pretrained: Optional[str] = None, neck_feat: str = "before", **overrides) -> nn.Module:
    """Build a named model (see ``MODEL_NAMES``); ``overrides`` replace config entries.

    ViT names give a :class:`TransReID` (``attn_impl`` in eager/sdpa/dcs, ``dcs_kwargs`` for
    ``DCSAttention``); ``vit_base`` ignores cameras/views unless ``sie=True`` is passed. ResNet names
    give a :class:`ResNetReID` (``camera_num``/``view_num``/``img_size`` unused; ``attn_impl`` must not
    be "dcs"). ``pretrained``: a local weights file loaded with :func:`load_pretrained`.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
    if name in VIT_CONFIGS:
        _check_overrides(TransReID, overrides, ("num_classes", "camera_num", "view_num", "img_size",
                                                "attn_impl", "dcs_kwargs", "neck_feat"))
        cfg = {**VIT_CONFIGS[name], **overrides}
        if not cfg.pop("sie"):
            if camera_num or view_num:
                logger.info("build_model(%s): SIE off, camera_num=%d view_num=%d ignored", name, camera_num, view_num)
            camera_num = view_num = 0
        model = TransReID(num_classes, camera_num, view_num, img_size=img_size, attn_impl=attn_impl,
                          dcs_kwargs=dcs_kwargs, neck_feat=neck_feat, **cfg)
    elif name in CNN_CONFIGS:
        if attn_impl == "dcs" or dcs_kwargs:
            raise ValueError(f"{name} is a CNN (RIB-CA): attn_impl='dcs'/dcs_kwargs apply to ViT models only")
        _check_overrides(ResNetReID, overrides, ("num_classes", "neck_feat"))
        overrides.pop("sie", None)
        model = ResNetReID(num_classes, neck_feat=neck_feat, **{**CNN_CONFIGS[name], **overrides})
    else:
        raise ValueError(f"unknown model name {name!r}; expected one of {MODEL_NAMES}")
    if pretrained:
        load_pretrained(model, pretrained)
    return model
