"""A few SGD steps on a fixed batch lower ID CE + triplet for every model family; RIB-CA shapes."""
import pytest
import torch
from torch.nn import functional as F

from ribkernels.models import ResNetReID, build_model

CONFIGS = {
    "baseline": ("vit_tiny_cpu", dict(jpm=False, sie=False, stride_size=16)),
    "transreid": ("vit_tiny_cpu", {}),
    "dcs": ("vit_tiny_cpu", dict(attn_impl="dcs")),
    "resnet_se": ("resnet18_se_cpu", {}),
    "resnet_cbam": ("resnet18_cbam_cpu", {}),
}


def _triplet_hard(feat, pids, margin=0.3):
    """Batch-hard triplet loss (Euclidean): hardest positive and negative per anchor."""
    dist = torch.cdist(feat, feat)
    same = pids[:, None] == pids[None, :]
    hardest_pos = (dist * same).max(1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def _loss(out, pids):
    ce = sum(F.cross_entropy(lg, pids) for lg in out["logits"]) / len(out["logits"])
    tri = sum(_triplet_hard(f, pids) for f in out["feats"]) / len(out["feats"])
    return ce + tri


@pytest.mark.parametrize("config", list(CONFIGS))
def test_sgd_steps_lower_the_loss(config):
    name, kw = CONFIGS[config]
    num_ids, per_id = 4, 4
    model = build_model(name, num_ids, camera_num=3, img_size=(64, 32), **kw).train()
    for m in model.modules():  # DCSAttention records its keep fraction only when asked
        if hasattr(m, "track_keep_fraction"):
            m.track_keep_fraction = True
    size = (64, 32) if name.startswith("vit") else (32, 16)  # any size for a CNN: keep it cheap
    x = torch.randn(num_ids * per_id, 3, *size)
    pids = torch.arange(num_ids).repeat_interleave(per_id)
    cams = torch.arange(num_ids * per_id) % 3
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step_loss():
        torch.manual_seed(0)  # the same DCS mask noise for every evaluation
        return _loss(model(x, cam_label=cams), pids)

    losses = []
    for _ in range(4):
        loss = step_loss()
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    final = step_loss().item()
    print(config, [round(v, 4) for v in losses], round(final, 4))
    assert final < 0.9 * losses[0], (config, losses, final)
    if config == "dcs":
        assert 0.0 < model.keep_fraction() <= 1.0
        assert model.get_parameter("blocks.0.attn.mask_logits.weight").grad.abs().sum() > 0
    # the BNNeck bias stays frozen at zero
    assert model.neck.bn.bias.requires_grad is False and model.neck.bn.bias.abs().sum() == 0


@pytest.mark.parametrize("name, attn, dim", [("resnet18_se_cpu", "se", 512), ("resnet18_cbam_cpu", "cbam", 512)])
@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_resnet_outputs(name, attn, dim, neck_feat):
    model = build_model(name, 6, camera_num=3, img_size=(64, 32), neck_feat=neck_feat, attn_impl="eager")
    assert isinstance(model, ResNetReID) and model.attn == attn and model.feat_dim == dim
    assert model.keep_fraction() is None
    assert sum(type(m).__name__ == ("SEModule" if attn == "se" else "CbamModule") for m in model.modules()) == 8
    x = torch.randn(3, 3, 64, 32)
    out = model.train()(x, cam_label=torch.tensor([0, 1, 2]))
    assert [t.shape for t in out["logits"]] == [(3, 6)] and [t.shape for t in out["feats"]] == [(3, dim)]
    assert out["global_feat"] is out["feats"][0]
    model.eval()
    with torch.no_grad():
        feat = model(x)
        g = model.forward_global(x)
    assert feat.shape == (3, dim)
    torch.testing.assert_close(feat, model.neck.bn(g) if neck_feat == "after" else g)
    # last stride 1: the final stage keeps 1/16 of the input resolution
    assert model.backbone.forward_features(x).shape[-2:] == (4, 2)


def test_resnet50_variants_build():
    for name, attn in (("resnet50_se", "se"), ("resnet50_cbam", "cbam")):
        model = build_model(name, 751)
        assert model.feat_dim == 2048 and model.attn == attn
        assert model.backbone.layer4[0].conv2.stride == (1, 1)


def test_resnet_rejects_dcs():
    with pytest.raises(ValueError, match="ViT models only"):
        build_model("resnet18_se_cpu", 5, attn_impl="dcs")
    with pytest.raises(TypeError, match="stride_size"):
        build_model("resnet18_se_cpu", 5, stride_size=12)
