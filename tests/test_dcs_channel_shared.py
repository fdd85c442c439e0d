"""Channel-shared DCS (one mask per image or per step, shared by all tokens, applied to q alone), the
functions of ``ribkernels.dcs.channel_shared``: float64 against the two-sided eager DCS reference, the
noise contract, the eval mask, errors. The module: test_dcs_channel_shared_module.py; in a model:
test_dcs_channel_shared_pipeline.py; patch_vit: test_dcs_patch_vit.py."""
import pytest
import torch
from torch import nn

import ribkernels as rk
from channel_shared_common import F64, leaves, mixed_theta, two_sided_reference
from ribkernels.dcs import channel_shared as cs
from ribkernels.nn import DCSAttention


@pytest.mark.parametrize("mask_per", ["image", "step"])
@pytest.mark.parametrize("B,H,N,D,tau", [(2, 3, 17, 5, 1.0), (3, 2, 1, 16, 0.5), (1, 4, 53, 8, 2.0)])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_float64_forward_and_gradients_equal_the_two_sided_form(mask_per, B, H, N, D, tau, impl):
    q, k, v = (torch.randn(B, H, N, D, dtype=F64) for _ in range(3))
    theta = mixed_theta(H, D)
    shape = cs.mask_shape(H, D, B, mask_per)
    noise = rk.logistic_noise(shape, seed=7).to(F64)
    grad_out = torch.randn(B, H, N, D, dtype=F64)
    got_in = leaves(q, k, v, theta)
    got = cs.channel_shared_attention(*got_in, noise=noise, tau=tau, mask_per=mask_per, impl=impl)
    got.backward(grad_out)
    want_in = leaves(q, k, v, theta)
    want = two_sided_reference(*want_in, noise, tau=tau)
    want.backward(grad_out)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for name, g, w in zip(["dq", "dk", "dv", "dθ"], got_in, want_in):
        torch.testing.assert_close(g.grad, w.grad, rtol=1e-10, atol=1e-12, msg=name)
    if N > 1:  # (one token: the output is v, no gradient reaches q, k or θ)
        assert want_in[3].grad.abs().sum() > 0  # a real gradient to θ was compared
    mask = cs.channel_shared_mask(theta, B, noise=noise, mask_per=mask_per)
    assert 0 < mask.mean() < 1 and mask.shape == shape


def test_mask_per_image_differs_between_images_and_per_step_does_not():
    B, H, D = 4, 3, 32
    theta = torch.zeros(H, D)
    per_image = cs.channel_shared_mask(theta, B, seed=3)
    per_step = cs.channel_shared_mask(theta, B, seed=3, mask_per="step")
    assert per_image.shape == (B, H, 1, D) and per_step.shape == (1, H, 1, D)
    assert not torch.equal(per_image[0], per_image[1])
    torch.testing.assert_close(per_step, per_image[:1], rtol=0, atol=0)  # the stream's first H·D draws


@pytest.mark.parametrize("mask_per", ["image", "step"])
def test_seeded_call_equals_explicit_contract_noise(mask_per):
    B, H, N, D = 3, 2, 11, 24
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    theta = mixed_theta(H, D, torch.float32)
    seed, offset = 2**62 + 5, 9
    shape = cs.mask_shape(H, D, B, mask_per)
    noise = rk.logistic_noise(shape, seed, offset=offset)
    u = cs.contract_uniform_like(shape, seed, offset)
    mask = cs.channel_shared_mask(theta, B, seed=seed, offset=offset, mask_per=mask_per)
    torch.testing.assert_close(mask, (u > torch.sigmoid(-theta.reshape(1, H, 1, D))).float(), rtol=0, atol=0)
    torch.testing.assert_close(mask, cs.channel_shared_mask(theta, B, noise=noise, mask_per=mask_per), rtol=0, atol=0)
    torch.testing.assert_close(mask, cs.channel_shared_mask(theta, B, seed=torch.tensor(seed), offset=offset,
                                                            mask_per=mask_per), rtol=0, atol=0)
    grad_out = torch.randn(B, H, N, D)
    outs, grads = [], []
    for kw in (dict(seed=seed, offset=offset), dict(noise=noise)):
        ins = leaves(q, k, v, theta)
        out = cs.channel_shared_attention(*ins, mask_per=mask_per, **kw)
        out.backward(grad_out)
        outs.append(out)
        grads.append([t.grad for t in ins])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-6)  # soft from u vs from L in float32
    other = cs.channel_shared_attention(q, k, v, theta, seed=seed, offset=offset + 1, mask_per=mask_per)
    assert not torch.equal(other, outs[0])


def test_unseeded_mask_follows_torch_manual_seed():
    theta = torch.zeros(2, 16)
    torch.manual_seed(1)
    a = cs.channel_shared_mask(theta, 3)
    torch.manual_seed(1)
    torch.testing.assert_close(cs.channel_shared_mask(theta, 3), a, rtol=0, atol=0)


def test_eval_mask_is_theta_positive_and_has_no_gradient():
    theta = mixed_theta(3, 8).requires_grad_(True)
    mask = cs.channel_shared_mask(theta, 5, training=False)
    assert mask.shape == (1, 3, 1, 8) and not mask.requires_grad
    torch.testing.assert_close(mask, (theta.detach() > 0).double().reshape(1, 3, 1, 8), rtol=0, atol=0)


def test_theta_of_the_wrong_shape_for_the_mode_is_a_clear_error():
    q = k = v = torch.randn(2, 3, 5, 8)
    with pytest.raises(ValueError, match=r"mask_logits for mask_mode='channel_shared' must be \[H, D\] = \[3, 8\].*"
                                         r"shape \(1, 3, 1, 8\)"):
        cs.channel_shared_attention(q, k, v, torch.zeros(1, 3, 1, 8))
    with pytest.raises(ValueError, match=r"must be \[H, D\] = \[3, 8\].*shape \(3, 4\)"):
        cs.channel_shared_attention(q, k, v, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"mask_logits for mask_mode='channel_shared' must be \[H, D\].*\(24,\)"):
        cs.channel_shared_mask(torch.zeros(24), 2)
    with pytest.raises(ValueError, match=r"noise .* does not broadcast to the mask's shape \(2, 3, 1, 8\)"):
        cs.channel_shared_mask(torch.zeros(3, 8), 2, noise=torch.zeros(2, 3, 5, 8))
    with pytest.raises(ValueError, match="mask_per must be one of"):
        cs.channel_shared_mask(torch.zeros(3, 8), 2, mask_per="token")
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        cs.channel_shared_mask(torch.zeros(3, 8), 0)
    with pytest.raises(ValueError, match="mask_logits contains NaN"):
        cs.channel_shared_mask(torch.full((3, 8), float("nan")), 2)
    with pytest.raises(ValueError, match="impl must be 'sdpa' or 'eager'"):
        cs.channel_shared_attention(q, k, v, torch.zeros(3, 8), impl="triton")
    # the module: the mode's θ shape on load, the mode's options
    attn = DCSAttention(24, num_heads=3, mask_mode="channel_shared")
    with pytest.raises(RuntimeError, match=r"mask_logits: θ of shape \(1, 3, 1, 8\) does not fit "
                                           r"mask_mode='channel_shared', which expects \[H, D\] = \[3, 8\]"):
        attn.load_state_dict({**attn.state_dict(), "mask_logits": torch.zeros(1, 3, 1, 8)})
    with pytest.raises(ValueError, match="mask_per='step' applies to mask_mode='channel_shared' only"):
        DCSAttention(24, num_heads=3, mask_mode="channel", mask_per="step")
    with pytest.raises(ValueError, match="impl='triton': mask_mode='channel_shared' runs plain attention"):
        DCSAttention(24, num_heads=3, mask_mode="channel_shared", impl="triton")
    attn.mask_logits = nn.Parameter(torch.zeros(3, 4))  # replaced by hand with a wrong shape
    with pytest.raises(ValueError, match=r"must be \[H, D\] = \[3, 8\]"):
        attn(torch.randn(2, 5, 24))
