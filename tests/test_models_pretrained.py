"""load_pretrained: timm ViT / ResNet weights from a local file into TransReID / RIB-CA models."""
import logging

import numpy as np
import pytest
import timm
import torch
from torch.nn import functional as F
from timm.models.vision_transformer import VisionTransformer

from ribkernels.models import build_model, load_pretrained, resize_pos_embed

# a small timm ViT: 64x64 input, patch 16 -> a 4x4 grid; the same width as vit_tiny_cpu
VIT_KW = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)


def _timm_vit(img=64, **kw):
    vit = VisionTransformer(img_size=img, num_classes=10, **{**VIT_KW, **kw})
    with torch.no_grad():  # timm zero-inits some tensors: make every one distinctive
        for p in vit.parameters():
            p.copy_(torch.randn_like(p))
    return vit


def _check_vit_loaded(model, sd, grid_old):
    for k, v in sd.items():
        if k.startswith("head") or k == "pos_embed":
            continue
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    if model.use_jpm:  # the JPM branch is a copy of the last block and norm
        last = f"blocks.{len(model.blocks) - 1}."
        for k, v in sd.items():
            if k.startswith(last):
                torch.testing.assert_close(model.state_dict()["jpm_block." + k[len(last):]], v, rtol=0, atol=0)
        torch.testing.assert_close(model.jpm_norm.weight, sd["norm.weight"], rtol=0, atol=0)
    pos = sd["pos_embed"]
    torch.testing.assert_close(model.pos_embed[:, :1], pos[:, :1], rtol=0, atol=0)
    grid = pos[:, 1:].reshape(1, *grid_old, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=model.grid_size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.pos_embed[0, 1:], expected.flatten(2)[0].T)


@pytest.mark.parametrize("attn_impl", ["sdpa", "dcs"])
def test_load_timm_vit_state_dict_interpolates_pos_embed(tmp_path, attn_impl, caplog):
    vit = _timm_vit()
    sd = vit.state_dict()
    path = tmp_path / "vit.pth"
    torch.save(sd, path)
    model = build_model("vit_tiny_cpu", 5, camera_num=3, img_size=(64, 32), attn_impl=attn_impl)
    assert model.grid_size == (5, 2)  # stride 12: a different grid from the checkpoint's 4x4
    with caplog.at_level(logging.INFO):
        missing, unexpected = load_pretrained(model, path)
    assert "pos_embed resized" in caplog.text
    _check_vit_loaded(model, sd, (4, 4))
    assert unexpected == []  # the classifier head is skipped, not reported
    new_params = {"sie_embed", "neck.", "local_necks."}  # DCS mask logits take their defaults, not missing
    assert missing and all(any(s in k for s in new_params) for k in missing)
    with torch.no_grad():  # the model still runs, and DCS starts as the plain ViT
        assert torch.isfinite(model.eval()(torch.randn(2, 3, 64, 32), cam_label=torch.tensor([0, 2]))).all()


def test_same_grid_copies_pos_embed_and_matches_timm_features(tmp_path):
    """Stride 16 at the checkpoint's size: pos_embed is copied and the backbone is timm's ViT."""
    vit = _timm_vit(img=(64, 32), class_token=True).eval()
    path = tmp_path / "vit.pth"
    torch.save({"model": {f"module.{k}": v for k, v in vit.state_dict().items()}}, path)  # wrapped + DDP prefix
    model = build_model("vit_base", 5, img_size=(64, 32), pretrained=str(path), **VIT_KW).eval()
    torch.testing.assert_close(model.pos_embed, vit.pos_embed, rtol=0, atol=0)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit.forward_head(vit.forward_features(x), pre_logits=True))


def test_load_safetensors(tmp_path):
    from safetensors.torch import save_file

    sd = _timm_vit().state_dict()
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = build_model("vit_tiny_cpu", 5, img_size=(64, 32), pretrained=str(path))
    _check_vit_loaded(model, sd, (4, 4))


def _save_npz(vit: VisionTransformer, path):
    """Write a timm ViT as a Google (big_vision/augreg) .npz checkpoint: the inverse of timm's loader."""
    H, D = vit.blocks[0].attn.num_heads, vit.embed_dim
    t = lambda x: x.detach().numpy()
    w = {"embedding/kernel": t(vit.patch_embed.proj.weight.permute(2, 3, 1, 0)),
         "embedding/bias": t(vit.patch_embed.proj.bias), "cls": t(vit.cls_token),
         "Transformer/posembed_input/pos_embedding": t(vit.pos_embed),
         "Transformer/encoder_norm/scale": t(vit.norm.weight), "Transformer/encoder_norm/bias": t(vit.norm.bias),
         "head/kernel": t(vit.head.weight.T), "head/bias": t(vit.head.bias)}
    for i, b in enumerate(vit.blocks):
        p = f"Transformer/encoderblock_{i}/"
        for j, name in enumerate(("query", "key", "value")):
            w[f"{p}MultiHeadDotProductAttention_1/{name}/kernel"] = t(b.attn.qkv.weight[j * D:(j + 1) * D].T.reshape(D, H, -1))
            w[f"{p}MultiHeadDotProductAttention_1/{name}/bias"] = t(b.attn.qkv.bias[j * D:(j + 1) * D].reshape(H, -1))
        w[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = t(b.attn.proj.weight.reshape(D, H, -1).permute(1, 2, 0))
        w[f"{p}MultiHeadDotProductAttention_1/out/bias"] = t(b.attn.proj.bias)
        for ln, norm in (("LayerNorm_0", b.norm1), ("LayerNorm_2", b.norm2)):
            w[f"{p}{ln}/scale"], w[f"{p}{ln}/bias"] = t(norm.weight), t(norm.bias)
        for r, fc in enumerate((b.mlp.fc1, b.mlp.fc2)):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"], w[f"{p}MlpBlock_3/Dense_{r}/bias"] = t(fc.weight.T), t(fc.bias)
    np.savez(path, **w)


def test_load_npz(tmp_path):
    vit = _timm_vit()
    path = tmp_path / "vit.npz"
    _save_npz(vit, path)
    model = build_model("vit_tiny_cpu", 5, img_size=(64, 32))
    missing, unexpected = load_pretrained(model, path)
    assert unexpected == []
    _check_vit_loaded(model, vit.state_dict(), (4, 4))


def test_deeper_checkpoint_reports_unexpected_blocks(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(_timm_vit(depth=3).state_dict(), path)
    model = build_model("vit_tiny_cpu", 5, img_size=(64, 32))
    _, unexpected = load_pretrained(model, path)
    assert unexpected and all(k.startswith("blocks.2.") for k in unexpected)


def test_load_errors(tmp_path):
    model = build_model("vit_tiny_cpu", 5, img_size=(64, 32))
    missing_path = tmp_path / "nope" / "vit.pth"
    with pytest.raises(FileNotFoundError, match="nope/vit.pth"):
        load_pretrained(model, missing_path)
    with pytest.raises(FileNotFoundError, match="nope/vit.pth"):
        build_model("vit_tiny_cpu", 5, img_size=(64, 32), pretrained=str(missing_path))
    wide = tmp_path / "wide.pth"
    torch.save(_timm_vit(embed_dim=96, num_heads=2).state_dict(), wide)
    with pytest.raises(ValueError, match=r"wide.pth' \(PyTorch file\): '\w+' has shape \(.*96\), the model expects \(.*64\)"):
        load_pretrained(model, wide)
    other = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="no tensor matched"):
        load_pretrained(model, other)


def test_resize_pos_embed_non_square_needs_grid():
    pos = torch.randn(1, 1 + 6, 8)
    with pytest.raises(ValueError, match="not square"):
        resize_pos_embed(pos, (4, 2))
    out = resize_pos_embed(pos, (3, 2), grid_old=(3, 2))
    torch.testing.assert_close(out, pos)


@pytest.mark.parametrize("name, timm_name", [("resnet18_se_cpu", "seresnet18"), ("resnet18_cbam_cpu", "resnet18")])
def test_load_resnet(tmp_path, name, timm_name):
    src = timm.create_model(timm_name, pretrained=False, num_classes=10)
    path = tmp_path / "r.pth"
    torch.save(src.state_dict(), path)
    model = build_model(name, 5, pretrained=str(path))
    own = model.backbone.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            torch.testing.assert_close(own[k], v, rtol=0, atol=0)
    missing, unexpected = load_pretrained(model, path)
    assert unexpected == []
    if timm_name == "seresnet18":
        assert missing == []
    else:  # plain ResNet weights into the CBAM model: only the attention modules are new
        assert missing and all(".se." in k for k in missing)


def test_pos_embed_without_class_position(tmp_path):
    """timm's no_embed_class ViTs store only grid positions: the class position starts at zero."""
    vit = _timm_vit(no_embed_class=True)
    assert vit.pos_embed.shape == (1, 16, 64)
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    model = build_model("vit_tiny_cpu", 5, img_size=(64, 32), pretrained=str(path))
    assert model.pos_embed[0, 0].abs().sum() == 0
    grid = vit.pos_embed.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(5, 2), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.pos_embed[0, 1:], expected.flatten(2)[0].T)
