"""The CPU demo's ViT with a convolutional stem (vit_small_conv_cpu)."""
import pytest
import torch

from ribkernels.models import build_model
from ribkernels.models.transreid import ConvStem


def test_conv_stem_shapes_and_widths():
    stem = ConvStem((128, 64), 3, 192, depth=4)
    assert stem.grid_size == (8, 4) and stem.num_patches == 32
    assert [m.out_channels for m in stem.convs if isinstance(m, torch.nn.Conv2d)] == [24, 48, 96, 192]
    assert stem(torch.randn(2, 3, 128, 64)).shape == (2, 32, 192)
    with pytest.raises(ValueError, match="multiple of 16"):
        ConvStem((100, 64), 3, 192, depth=4)
    with pytest.raises(ValueError, match=r"x must be \[B, 3, 128, 64\]"):
        stem(torch.randn(2, 3, 64, 32))


def test_vit_small_conv_cpu_trains_and_evaluates():
    model = build_model("vit_small_conv_cpu", 7, attn_impl="dcs", img_size=(64, 32), neck_feat="after")
    assert model.grid_size == (4, 2)
    model.train()
    out = model(torch.randn(4, 3, 64, 32))
    assert len(out["logits"]) == 5 and out["global_bn_feat"].shape == (4, 192)
    sum(o.sum() for o in out["logits"]).backward()
    assert model.patch_embed.convs[0].weight.grad is not None
    model.eval()
    assert model(torch.randn(3, 3, 64, 32)).shape == (3, 192 * 5)
    with pytest.raises(ValueError, match="stem must be"):
        build_model("vit_small_conv_cpu", 7, img_size=(64, 32), stem="pixel")
