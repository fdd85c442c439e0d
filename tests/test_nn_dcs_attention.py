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
    assert 0 < float(attn.last_keep_fraction) < 1


def test_timm_weights_load_into_dcs_attention():
    from timm.models.vision_transformer import Attention

    src = Attention(64, num_heads=4, qkv_bias=True)
    dst = DCSAttention(64, num_heads=4)
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"mask_logits.weight", "mask_logits.bias"}


def test_init_keeps_every_channel_in_eval():
    attn = DCSAttention(32, num_heads=2, impl="eager").eval()
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
