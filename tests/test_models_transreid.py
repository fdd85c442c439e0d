"""TransReID model: shapes, token counts, SIE, JPM shuffle, attention implementations (docs/training.md)."""
import pytest
import torch
from torch import nn

from ribkernels.models import MODEL_NAMES, TransReID, build_model, shuffle_unit
from ribkernels.nn import DCSAttention

TINY = dict(img_size=(64, 32))  # vit_tiny_cpu: stride 12 -> grid (5, 2), 11 tokens


def _tiny(**kw):
    return build_model("vit_tiny_cpu", 7, kw.pop("camera_num", 3), kw.pop("view_num", 0), **{**TINY, **kw})


def test_vit_base_transreid_211_tokens():
    """The paper's configuration: 256x128, stride 12 -> 21x10 patches + cls = 211 tokens."""
    model = build_model("vit_base_transreid", 751, camera_num=6).eval()
    assert model.grid_size == (21, 10) and model.num_tokens == 211
    assert model.pos_embed.shape == (1, 211, 768)
    assert len(model.blocks) == 12 and model.use_jpm and model.sie_embed.shape == (6, 1, 768)
    assert model.eval_feat_dim == 5 * 768 and model.feat_dim == 768
    n_params = sum(p.numel() for p in model.blocks.parameters())
    assert 84e6 < n_params < 86e6  # the 12 ViT-B blocks
    with torch.no_grad():
        x = torch.randn(1, 3, 256, 128)
        assert model.patch_embed(x).shape == (1, 210, 768)
        out = model(x, cam_label=torch.tensor([5]))
    assert out.shape == (1, 5 * 768) and torch.isfinite(out).all()


@pytest.mark.parametrize("img, stride, grid", [((256, 128), 16, (16, 8)), ((128, 64), 12, (10, 5)),
                                               ((128, 64), 16, (8, 4)), ((70, 45), 12, (5, 3))])
def test_patch_grid(img, stride, grid):
    model = build_model("vit_tiny_cpu", 3, img_size=img, stride_size=stride)
    assert model.grid_size == grid
    assert model.num_tokens == grid[0] * grid[1] + 1
    assert model.patch_embed(torch.randn(2, 3, *img)).shape == (2, grid[0] * grid[1], 64)


def test_vit_base_baseline_has_no_sie_no_jpm():
    model = build_model("vit_base", 11, camera_num=6, img_size=(64, 32), depth=2, embed_dim=64, num_heads=2)
    assert model.grid_size == (4, 2) and model.sie_embed is None and not model.use_jpm
    model.train()
    out = model(torch.randn(3, 3, 64, 32))
    assert [t.shape for t in out["logits"]] == [(3, 11)] and [t.shape for t in out["feats"]] == [(3, 64)]
    assert model.eval()(torch.randn(3, 3, 64, 32)).shape == (3, 64)


@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_train_and_eval_outputs(neck_feat):
    model = _tiny(neck_feat=neck_feat)
    assert model.grid_size == (5, 2) and model.num_tokens == 11
    x, cams = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 2, 1])
    model.train()
    out = model(x, cam_label=cams)
    assert set(out) == {"logits", "feats", "global_feat", "global_bn_feat"}
    assert out["global_bn_feat"].shape == out["global_feat"].shape
    assert len(out["logits"]) == len(out["feats"]) == 5
    assert all(t.shape == (4, 7) for t in out["logits"]) and all(t.shape == (4, 64) for t in out["feats"])
    assert out["global_feat"] is out["feats"][0]
    model.eval()
    with torch.no_grad():
        feat = model(x, cam_label=cams)
        tokens = model.forward_tokens(x, cam_label=cams)
        g = model.forward_global(x, cam_label=cams)
        locals_ = model._local_feats(tokens)
    assert feat.shape == (4, model.eval_feat_dim) == (4, 5 * 64)
    necks = [model.neck, *model.local_necks]
    parts = [g, *locals_]
    if neck_feat == "after":
        parts = [n.bn(p) for n, p in zip(necks, parts)]
    expected = torch.cat([parts[0]] + [p / 4 for p in parts[1:]], dim=1)
    torch.testing.assert_close(feat, expected)


def _reference_shuffle_unit(features, shift, group, begin=1):
    """TransReID's shuffle_unit, verbatim (make_model.py)."""
    batchsize = features.size(0)
    dim = features.size(-1)
    feature_random = torch.cat([features[:, begin - 1 + shift:], features[:, begin:begin - 1 + shift]], dim=1)
    x = feature_random
    try:
        x = x.view(batchsize, group, -1, dim)
    except Exception:
        x = torch.cat([x, x[:, -2:-1, :]], dim=1)
        x = x.view(batchsize, group, -1, dim)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, -1, dim)
    return x


@pytest.mark.parametrize("n_patches", [210, 53, 8, 10])
def test_shuffle_unit_matches_transreid(n_patches):
    feats = torch.randn(2, n_patches + 1, 6)
    torch.testing.assert_close(shuffle_unit(feats, 5, 2), _reference_shuffle_unit(feats, 5, 2), rtol=0, atol=0)


def test_sie_embedding_added_with_coefficient():
    model = _tiny(camera_num=3, view_num=2, depth=2).eval()
    assert model.sie_embed.shape == (6, 1, 64)
    model.blocks[0] = nn.Identity()  # forward_tokens then returns the embedded tokens
    x = torch.randn(3, 3, 64, 32)
    cams, views = torch.tensor([0, 2, 1]), torch.tensor([1, 0, 1])
    with torch.no_grad():
        got = model.forward_tokens(x, cam_label=cams, view_label=views)
        base = torch.cat([model.cls_token.expand(3, -1, -1), model.patch_embed(x)], 1) + model.pos_embed
    expected = base + 3.0 * model.sie_embed[cams * 2 + views]
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="cam_label is required"):
        model(x, view_label=views)
    with pytest.raises(ValueError, match="view_label"):
        model(x, cam_label=cams, view_label=torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="3 entries"):
        model(x, cam_label=torch.tensor([0, 1]), view_label=views)


def test_sie_disabled_ignores_labels():
    model = _tiny(camera_num=0).eval()
    assert model.sie_embed is None
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x, cam_label=torch.tensor([5, 9])))


def _copy_weights(src: nn.Module, dst: nn.Module):
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and not missing  # DCS mask logits absent from src: set to their defaults


@pytest.mark.parametrize("mask_mode", ["token", "channel"])
def test_attn_impls_give_same_features(mask_mode):
    """eager / sdpa / dcs (init_logit +3: the eval mask keeps every channel) are the same model."""
    models = {impl: _tiny(attn_impl=impl, dcs_kwargs=dict(mask_mode=mask_mode) if impl == "dcs" else None)
              for impl in ("eager", "sdpa", "dcs")}
    for impl in ("sdpa", "dcs"):
        _copy_weights(models["eager"], models[impl])
    attns = [m for m in models["dcs"].modules() if isinstance(m, DCSAttention)]
    assert len(attns) == 3  # 2 blocks + the JPM block
    assert all(m.fused_attn is False for m in models["eager"].modules() if hasattr(m, "fused_attn"))
    assert all(m.fused_attn is True for m in models["sdpa"].modules() if hasattr(m, "fused_attn"))
    x, cams = torch.randn(3, 3, 64, 32, dtype=torch.float64), torch.tensor([0, 1, 2])
    feats = {}
    for impl, m in models.items():
        _track_keep_fraction(m).double().eval()
        with torch.no_grad():
            feats[impl] = m(x, cam_label=cams)
    torch.testing.assert_close(feats["sdpa"], feats["eager"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(feats["dcs"], feats["eager"], rtol=1e-10, atol=1e-10)
    assert models["dcs"].keep_fraction() == 1.0 and models["sdpa"].keep_fraction() is None


def test_dcs_training_gradients_match_sdpa_when_all_kept():
    """Training mode with logits far above the noise: the mask is all ones, so the loss and the
    backbone gradients equal plain attention's, and θ still receives a gradient."""
    sdpa = _tiny(attn_impl="sdpa").double().train()
    dcs = _track_keep_fraction(_tiny(attn_impl="dcs", dcs_kwargs=dict(init_logit=60.0, tau=30.0))).double().train()
    _copy_weights(sdpa, dcs)
    x, cams, y = torch.randn(4, 3, 64, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 3, 4])
    losses = []
    for m in (sdpa, dcs):
        out = m(x, cam_label=cams)
        loss = sum(nn.functional.cross_entropy(lg, y) for lg in out["logits"]) + out["global_feat"].square().mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-12)
    for name in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight", "jpm_block.attn.proj.weight", "pos_embed"):
        torch.testing.assert_close(sdpa.get_parameter(name).grad, dcs.get_parameter(name).grad, rtol=1e-8, atol=1e-12)
    theta_grad = dcs.get_parameter("blocks.0.attn.mask_logits.weight").grad
    assert theta_grad is not None and theta_grad.abs().sum() > 0
    assert dcs.keep_fraction() == pytest.approx(1.0)


def _track_keep_fraction(model):
    """Ask every DCSAttention to record its keep fraction (off by default: it costs a pass over θ)."""
    for m in model.modules():
        if hasattr(m, "track_keep_fraction"):
            m.track_keep_fraction = True
    return model


def test_keep_fraction_tracks_mask():
    model = _track_keep_fraction(_tiny(attn_impl="dcs", dcs_kwargs=dict(init_logit=-3.0))).eval()
    with torch.no_grad():
        feat = model(torch.randn(2, 3, 64, 32), cam_label=torch.tensor([0, 1]))
    assert torch.isfinite(feat).all()  # all-zero masks attend uniformly, no NaN
    assert model.keep_fraction() == 0.0


def test_model_names_and_errors():
    assert set(MODEL_NAMES) >= {"vit_base_transreid", "vit_base", "vit_small_cpu", "vit_tiny_cpu",
                                "resnet50_se", "resnet50_cbam", "resnet18_se_cpu"}
    with pytest.raises(ValueError, match="unknown model name"):
        build_model("vit_huge", 3)
    with pytest.raises(ValueError, match="attn_impl"):
        build_model("vit_tiny_cpu", 3, attn_impl="flash", **TINY)
    with pytest.raises(TypeError, match="embed_dimm"):
        build_model("vit_tiny_cpu", 3, embed_dimm=32, **TINY)
    with pytest.raises(ValueError, match="dcs_kwargs"):
        build_model("vit_tiny_cpu", 3, dcs_kwargs=dict(tau=0.5), **TINY)
    with pytest.raises(ValueError, match="neck_feat"):
        build_model("vit_tiny_cpu", 3, neck_feat="middle", **TINY)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("vit_tiny_cpu", 0, **TINY)
    with pytest.raises(ValueError, match="attention dropout"):
        build_model("vit_tiny_cpu", 3, attn_impl="dcs", attn_drop_rate=0.1, **TINY)
    with pytest.raises(ValueError, match="JPM needs"):
        build_model("vit_tiny_cpu", 3, img_size=(16, 16))
    model = _tiny()
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 32\].*\(2, 3, 32, 64\)"):
        model(torch.randn(2, 3, 32, 64), cam_label=torch.tensor([0, 1]))
    assert isinstance(model, TransReID)
