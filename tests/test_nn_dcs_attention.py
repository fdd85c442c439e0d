"""DCSAttention and patch_vit on small timm ViTs."""
import pytest
import timm
import torch

import ribkernels as rk
from ribkernels.nn import DCSAttention


def small_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(64, 32),
                             num_classes=5, depth=2, **kw)


@pytest.mark.parametrize("mask_mode", ["token", "channel"])
def test_patched_vit_in_eval_equals_unpatched(mask_mode):
    model = small_vit().eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        want = model(x)
    n = rk.patch_vit(model, mask_mode=mask_mode, impl="sdpa")
    assert n == 2
    assert sum(isinstance(m, DCSAttention) for m in model.modules()) == 2
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_patched_vit_training_step_updates_mask_layer():
    model = small_vit()
    rk.patch_vit(model, impl="sdpa")
    model.train()
    attn = model.blocks[0].attn
    before = attn.mask_logits.weight.detach().clone()
    # θ starts at +3: lower it so the mask is really random and its gradient is not vanishingly small.
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.mask_logits.bias.fill_(0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert attn.mask_logits.weight.grad is not None and attn.mask_logits.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(attn.mask_logits.weight, before)
    assert attn.last_keep_fraction is None  # tracking is off by default: no pass over θ


def test_keep_fraction_tracked_only_when_asked():
    attn = DCSAttention(32, num_heads=2, impl="sdpa", track_keep_fraction=True)
    with torch.no_grad():
        attn.mask_logits.bias.copy_(torch.linspace(-2, 2, 32))
    x = torch.randn(3, 7, 32)
    attn(x)
    theta = attn.compute_mask_logits(x).detach()
    assert attn.last_keep_fraction.dim() == 0 and not attn.last_keep_fraction.requires_grad
    torch.testing.assert_close(attn.last_keep_fraction, torch.sigmoid(theta).mean())  # training: expectation
    attn.eval()
    attn(x)
    torch.testing.assert_close(attn.last_keep_fraction, (theta > 0).float().mean())  # eval: exact
    attn.track_keep_fraction = False
    attn.train()
    attn(x)
    torch.testing.assert_close(attn.last_keep_fraction, (theta > 0).float().mean())  # unchanged


def test_check_nan_is_passed_through():
    attn = DCSAttention(16, num_heads=2, impl="sdpa", mask_mode="channel")
    with torch.no_grad():
        attn.mask_logits[0, 0] = float("nan")
    x = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="mask_logits contains NaN"):
        attn(x)
    attn.check_nan = False
    assert attn(x).shape == x.shape


def test_patch_vit_raises_when_nothing_to_patch_and_takes_attn_types():
    from timm.models.vision_transformer import Attention

    model = small_vit()
    assert rk.patch_vit(model) == 2
    with pytest.raises(ValueError, match=r"no module of type.*Attention.*DCSAttention"):
        rk.patch_vit(model)  # already patched
    with pytest.raises(ValueError, match="no module of type"):
        rk.patch_vit(torch.nn.Sequential(torch.nn.Linear(4, 4)))

    class MyAttention(Attention):
        pass

    wrapper = torch.nn.ModuleDict({"a": MyAttention(32, num_heads=2), "b": Attention(32, num_heads=2)})
    assert rk.patch_vit(wrapper, attn_types=[MyAttention]) == 1
    assert isinstance(wrapper["a"], DCSAttention) and type(wrapper["b"]) is Attention
    with pytest.raises(ValueError, match="attn_types must be"):
        rk.patch_vit(wrapper, attn_types=[])


def test_timm_weights_load_into_dcs_attention():
    from timm.models.vision_transformer import Attention

    src = Attention(64, num_heads=4, qkv_bias=True)
    dst = DCSAttention(64, num_heads=4)
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    # the mask logits are absent from plain weights: set to their defaults, not reported missing
    assert not unexpected and not missing
    assert torch.equal(dst.mask_logits.bias, torch.full((64,), 3.0)) and not dst.mask_logits.weight.any()


def test_init_keeps_every_channel_in_eval():
    attn = DCSAttention(32, num_heads=2, impl="eager", track_keep_fraction=True).eval()
    x = torch.randn(3, 7, 32)
    attn(x)
    assert float(attn.last_keep_fraction) == 1.0


def test_constructor_errors():
    with pytest.raises(ValueError, match="divisible"):
        DCSAttention(30, num_heads=4)
    with pytest.raises(ValueError, match="mask_mode"):
        DCSAttention(32, num_heads=4, mask_mode="head")
    with pytest.raises(ValueError, match="attn_drop"):
        DCSAttention(32, num_heads=4, attn_drop=0.1)
