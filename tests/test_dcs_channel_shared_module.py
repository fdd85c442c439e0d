"""``DCSAttention(mask_mode="channel_shared")``: training and eval (the folded qkv weights, their
cache, ``to_plain_attention``) in float64 against the module computed the long way, compiling, and
the forward's seed/noise in the per-token modes."""
import copy

import pytest
import torch
from torch import nn

import ribkernels as rk
from channel_shared_common import F64, leaves, mixed_theta, module_reference
from ribkernels.dcs import channel_shared as cs
from ribkernels.nn import DCSAttention
from ribkernels.nn.dcs_attention import fold_eval_masks


@pytest.mark.parametrize("mask_per,qk_norm,qkv_bias", [("image", False, True), ("step", False, True),
                                                      ("step", True, True), ("image", True, True),
                                                      ("step", False, False), ("image", False, False)])
def test_module_training_float64_equals_reference(mask_per, qk_norm, qkv_bias):
    """The per-step mask goes through the qkv weights (no qk_norm) or scales q (qk_norm)."""
    B, N, C, H = 3, 13, 24, 3
    attn = DCSAttention(C, num_heads=H, mask_mode="channel_shared", mask_per=mask_per, qk_norm=qk_norm,
                        qkv_bias=qkv_bias, tau=0.7).double()
    with torch.no_grad():
        attn.mask_logits.copy_(mixed_theta(H, C // H))
    ref = copy.deepcopy(attn)
    x = torch.randn(B, N, C, dtype=F64)
    noise = rk.logistic_noise(cs.mask_shape(H, C // H, B, mask_per), seed=2).double()
    grad_out = torch.randn(B, N, C, dtype=F64)
    xs = leaves(x, x)
    got = attn(xs[0], noise=noise)
    want = module_reference(ref, xs[1], noise)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got.backward(grad_out)
    want.backward(grad_out)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-10, atol=1e-12)
    for (name, p), (_, r) in zip(attn.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert ref.mask_logits.grad.abs().sum() > 0
    # a seed gives the contract's mask: equal to the explicit noise of the mask's shape
    torch.testing.assert_close(attn(x, seed=5, offset=2),
                               attn(x, noise=rk.logistic_noise(cs.mask_shape(H, C // H, B, mask_per), 5, 2).double()),
                               rtol=0, atol=0)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_module_eval_fold_equals_the_unfolded_computation(qk_norm):
    B, N, C, H = 2, 9, 32, 4
    attn = DCSAttention(C, num_heads=H, mask_mode="channel_shared", qk_norm=qk_norm).double().eval()
    with torch.no_grad():
        attn.mask_logits.copy_(mixed_theta(H, C // H))
    x = torch.randn(B, N, C, dtype=F64)
    with torch.no_grad():
        got = attn(x)
        want = module_reference(attn, x, None, training=False)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        unmasked = DCSAttention(C, num_heads=H, mask_mode="channel_shared", qk_norm=qk_norm).double().eval()
        unmasked.load_state_dict({k: v for k, v in attn.state_dict().items() if k != "mask_logits"})
        assert not torch.allclose(unmasked(x), got)  # the mask matters here
        if not qk_norm:
            w, b = cs.fold_eval_mask(attn.qkv.weight, attn.qkv.bias, attn.mask_logits)
            dim = C
            keep = (attn.mask_logits > 0).reshape(dim)
            assert not w[:dim][~keep].any() and torch.equal(w[dim:], attn.qkv.weight[dim:])
            torch.testing.assert_close(w[:dim][keep], attn.qkv.weight[:dim][keep], rtol=0, atol=0)
            assert torch.equal(b[:dim], attn.qkv.bias[:dim] * keep)
    # eval with gradients enabled (not cached): same output, gradient reaches the weights
    xg = x.clone().requires_grad_(True)
    out = attn(xg)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert attn.qkv.weight.grad is not None and attn.mask_logits.grad is None


def test_eval_fold_cache_follows_changes_of_theta_and_weights():
    attn = DCSAttention(16, num_heads=2, mask_mode="channel_shared").eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        attn.mask_logits.copy_(mixed_theta(2, 8, torch.float32))
        first = attn(x)
        cached = attn._fold_cache
        assert attn(x) is not None and attn._fold_cache is cached  # reused
        attn.mask_logits.mul_(-1)  # in place, as an optimizer step
        flipped = attn(x)
        torch.testing.assert_close(flipped, module_reference(attn, x, None, training=False), rtol=1e-5, atol=1e-6)
        attn.mask_logits.data.mul_(-1)  # through .data (no version bump): θ is compared too
        torch.testing.assert_close(attn(x), first, rtol=0, atol=0)
        attn.qkv.weight.add_(1.0)  # the weights change
        torch.testing.assert_close(attn(x), module_reference(attn, x, None, training=False), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(attn(x), module_reference(attn, x, None, training=False), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_to_plain_attention_and_fold_eval_masks(qkv_bias):
    from timm.models.vision_transformer import Attention

    attn = DCSAttention(32, num_heads=4, mask_mode="channel_shared", qkv_bias=qkv_bias).eval()
    with torch.no_grad():
        attn.mask_logits.copy_(mixed_theta(4, 8, torch.float32))
    x = torch.randn(2, 7, 32)
    plain = attn.to_plain_attention()
    assert type(plain) is Attention and (plain.qkv.bias is not None) == qkv_bias
    with torch.no_grad():
        torch.testing.assert_close(plain(x), attn(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(plain(x), module_reference(attn, x, None, training=False), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be folded"):
        DCSAttention(32, num_heads=4, mask_mode="token").to_plain_attention()
    with pytest.raises(ValueError, match="with qk_norm cannot be folded"):
        DCSAttention(32, num_heads=4, mask_mode="channel", qk_norm=True).to_plain_attention()
    model = nn.Sequential(attn, DCSAttention(32, num_heads=4, mask_mode="token"),
                          DCSAttention(32, num_heads=4, mask_mode="channel")).eval()
    assert fold_eval_masks(model) == 2
    assert [type(m).__name__ for m in model] == ["Attention", "DCSAttention", "Attention"]


@pytest.mark.parametrize("mask_per", ["image", "step"])
def test_compiles_without_graph_breaks_in_training_and_eval(mask_per):
    torch._dynamo.reset()
    attn = DCSAttention(16, num_heads=2, mask_mode="channel_shared", mask_per=mask_per)
    compiled = torch.compile(attn, fullgraph=True, backend="eager")
    x = torch.randn(2, 5, 16)
    noise = rk.logistic_noise(cs.mask_shape(2, 8, 2, mask_per), seed=1)
    torch.testing.assert_close(compiled(x, noise=noise), attn(x, noise=noise))
    attn.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), attn(x))
        compiled(torch.randn(3, 7, 16))  # another batch and length


@pytest.mark.parametrize("mask_mode", ["token", "channel"])
def test_forward_seed_and_noise_reach_the_per_token_modes(mask_mode):
    attn = DCSAttention(16, num_heads=2, mask_mode=mask_mode, impl="sdpa", init_logit=0.0)
    x = torch.randn(2, 5, 16)
    a = attn(x, seed=11, offset=3)
    torch.testing.assert_close(attn(x, noise=rk.logistic_noise((2, 2, 5, 8), 11, offset=3)), a, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(attn(x, seed=12, offset=3), a)
