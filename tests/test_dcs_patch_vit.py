"""``patch_vit``: plain ViT weights load strictly into a patched model (every mask mode), a wrong
mask shape raises before anything is copied, patching is atomic, and is logged once."""
import logging

import pytest
import torch
from torch import nn

import ribkernels as rk
from channel_shared_common import small_vit
from ribkernels.nn import DCSAttention


@pytest.mark.parametrize("mask_mode", ["token", "channel", "channel_shared"])
def test_plain_vit_weights_load_strictly_into_a_patched_model(mask_mode):
    vit = small_vit().eval()
    sd = vit.state_dict()
    model = small_vit().eval()
    rk.patch_vit(model, mask_mode=mask_mode, init_logit=2.0)
    for m in model.modules():  # a trained mask, to see it reset to the default
        if isinstance(m, DCSAttention):
            with torch.no_grad():
                (m.mask_logits.bias if mask_mode == "token" else m.mask_logits).fill_(-1.0)
    result = model.load_state_dict(sd)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    for m in model.modules():
        if isinstance(m, DCSAttention):
            theta = m.mask_logits.bias if mask_mode == "token" else m.mask_logits
            assert torch.equal(theta, torch.full_like(theta, 2.0))
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x), rtol=1e-5, atol=1e-5)
    # a patched model's own state dict round-trips (the mask logits are kept, not reset)
    for m in model.modules():
        if isinstance(m, DCSAttention):
            with torch.no_grad():
                (m.mask_logits.bias if mask_mode == "token" else m.mask_logits).fill_(0.5)
    other = small_vit()
    rk.patch_vit(other, mask_mode=mask_mode)
    other.load_state_dict(model.state_dict())
    for a, b in zip(other.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_wrong_mask_shape_raises_before_any_tensor_is_copied():
    model = small_vit()
    rk.patch_vit(model, mask_mode="channel_shared")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = {k: torch.randn_like(v) for k, v in small_vit().state_dict().items()}
    sd["blocks.1.attn.mask_logits"] = torch.zeros(1, 3, 1, 64)  # [1, H, 1, D]: the channel mode's old layout
    with pytest.raises(RuntimeError, match=r"(?s)nothing was loaded.*blocks\.1\.attn\.mask_logits: θ of shape "
                                           r"\(1, 3, 1, 64\) does not fit mask_mode='channel_shared'"):
        model.load_state_dict(sd)
    with pytest.raises(RuntimeError, match="nothing was loaded"):
        model.load_state_dict(sd, strict=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_patch_vit_is_atomic():
    class Odd(nn.Module):  # a timm-like attention whose qkv does not fit DCSAttention
        def __init__(self):
            super().__init__()
            self.num_heads, self.head_dim = 2, 8
            self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
            self.q_norm = self.k_norm = self.norm = nn.Identity()
            self.proj_drop = nn.Dropout(0.0)
            self.extra = nn.Linear(2, 2)

    from timm.models.vision_transformer import Attention

    model = nn.Sequential(Attention(16, num_heads=2), Odd())
    with pytest.raises(RuntimeError, match="weights did not transfer"):
        rk.patch_vit(model, attn_types=[Attention, Odd])
    assert type(model[0]) is Attention and type(model[1]) is Odd  # nothing replaced


def test_patch_vit_logs_once_for_the_same_model_built_twice(caplog, monkeypatch):
    """Trainer(eval_only) and evaluate_checkpoint each build the model: one INFO line."""
    from ribkernels.models import build_model
    from ribkernels.nn import dcs_attention

    monkeypatch.setitem(dcs_attention._LOGGED, "keys", set())  # as in a fresh process

    kw = dict(attn_impl="dcs", dcs_kwargs=dict(mask_mode="channel_shared", tau=0.9), img_size=(64, 32))
    with caplog.at_level(logging.DEBUG, logger="ribkernels.nn.dcs_attention"):
        build_model("vit_tiny_cpu", 5, **kw)
        build_model("vit_tiny_cpu", 5, **kw)
    records = [r for r in caplog.records if r.getMessage().startswith("patch_vit:")]
    assert len(records) == 2 and [r.levelno for r in records] == [logging.INFO, logging.DEBUG]
    assert "mask_mode channel_shared" in records[0].getMessage()
