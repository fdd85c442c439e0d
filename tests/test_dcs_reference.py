"""The PyTorch backends of dcs_attention / dcs_mask against SPEC §2's float64 formulas."""
import math

import pytest
import torch

import ribkernels as rk
from ribkernels.dcs.philox import philox_randint, uniform_open01
from dcs_reference import manual_mask_gradient, reference_forward_backward

IMPLS = ["eager", "sdpa"]


def make_inputs(B, H, N, D, theta_shape, dtype=torch.float32, noise_shape=None):
    q, k, v = (torch.randn(B, H, N, D, dtype=dtype) for _ in range(3))
    theta = torch.randn(theta_shape, dtype=torch.float32)
    noise = rk.logistic_noise(noise_shape or (B, H, N, D), seed=int(torch.randint(0, 2**31 - 1, ())))
    return q, k, v, theta, noise


def run_backend(impl, q, k, v, theta, noise, grad_out, **kw):
    q, k, v, theta = (t.detach().clone().requires_grad_(True) for t in (q, k, v, theta))
    out = rk.dcs_attention(q, k, v, theta, noise=noise, impl=impl, **kw)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad, theta.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("N,D", [(1, 16), (17, 32), (53, 64), (129, 16), (211, 128)])
@pytest.mark.parametrize("theta_kind", ["token", "channel", "batch_token"])
def test_backend_matches_float64_formulas(impl, N, D, theta_kind):
    B, H = 2, 3
    shape = {"token": (B, H, N, D), "channel": (1, H, 1, D), "batch_token": (B, 1, N, D)}[theta_kind]
    q, k, v, theta, noise = make_inputs(B, H, N, D, shape, dtype=torch.float64)
    grad_out = torch.randn(B, H, N, D, dtype=torch.float64)
    got = run_backend(impl, q, k, v, theta.double(), noise, grad_out, tau=0.7)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=0.7)
    for name, g, w in zip(["out", "dq", "dk", "dv", "dtheta"], got, want):
        assert g.shape == w.shape, name
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=f"{impl} {name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_close_to_float64(impl):
    B, H, N, D = 2, 2, 53, 32
    q, k, v, theta, noise = make_inputs(B, H, N, D, (B, H, N, D))
    grad_out = torch.randn(B, H, N, D)
    got = run_backend(impl, q, k, v, theta, noise, grad_out)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out)
    for name, g, w in zip(["out", "dq", "dk", "dv", "dtheta"], got, want):
        assert g.dtype == (torch.float32), name
        torch.testing.assert_close(g.double(), w, rtol=2e-5, atol=2e-5, msg=f"{impl} {name}")


def test_spec_closed_form_mask_gradient_matches_autograd():
    B, H, N, D = 2, 2, 19, 16
    q, k, v, theta, noise = make_inputs(B, H, N, D, (B, H, N, D), dtype=torch.float64)
    grad_out = torch.randn(B, H, N, D, dtype=torch.float64)
    z = theta.double() + noise.double()
    mask, soft = (z > 0).double(), torch.sigmoid(z)
    _, _, _, _, dtheta = reference_forward_backward(q, k, v, theta, noise, grad_out)
    dmask = manual_mask_gradient(q, k, v, mask, grad_out, D ** -0.5)
    torch.testing.assert_close(dmask * soft * (1 - soft), dtheta, rtol=1e-10, atol=1e-12)


def test_gradcheck_sdpa_float64_with_fixed_noise():
    B, H, N, D = 1, 2, 5, 4
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    theta = torch.randn(1, H, 1, D, dtype=torch.float64)
    noise = rk.logistic_noise((B, H, N, D), seed=3).double()
    fn = lambda q, k, v: rk.dcs_attention(q, k, v, theta, noise=noise, impl="sdpa")
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_straight_through_gradient_of_dcs_mask():
    theta = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(4, 7, dtype=torch.float64)
    tau = 0.5
    mask = rk.dcs_mask(theta, tau=tau, noise=noise)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(mask, ((theta + noise) > 0).double())
    upstream = torch.randn(4, 7, dtype=torch.float64)
    mask.backward(upstream)
    t = theta.detach().clone().requires_grad_(True)
    torch.sigmoid((t + noise) / tau).backward(upstream)
    torch.testing.assert_close(theta.grad, t.grad)


def test_dcs_mask_broadcast_noise_reduces_gradient():
    theta = torch.randn(1, 3, 1, 8, requires_grad=True)
    noise = rk.logistic_noise((2, 3, 5, 8), seed=11)
    mask = rk.dcs_mask(theta, noise=noise)
    assert mask.shape == (2, 3, 5, 8)
    mask.sum().backward()
    soft = torch.sigmoid(theta.detach() + noise)
    torch.testing.assert_close(theta.grad, (soft * (1 - soft)).sum(dim=(0, 2), keepdim=True))


@pytest.mark.parametrize("impl", IMPLS)
def test_eval_mode_uses_sign_of_theta_and_no_theta_gradient(impl):
    B, H, N, D = 2, 2, 9, 16
    q, k, v, theta, _ = make_inputs(B, H, N, D, (B, H, N, D))
    theta.requires_grad_(True)
    q.requires_grad_(True)
    out = rk.dcs_attention(q, k, v, theta, training=False, impl=impl)
    grad_out = torch.randn_like(out)
    want, *_ = reference_forward_backward(q, k, v, theta, None, grad_out, training=False)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    out.backward(grad_out)
    assert theta.grad is None or torch.count_nonzero(theta.grad) == 0
    mask = rk.dcs_mask(theta, training=False)
    torch.testing.assert_close(mask, (theta > 0).float())
    assert not mask.requires_grad


def test_mask_frequency_matches_sigmoid():
    # 200k draws per logit: the std of a frequency is <= 0.5/sqrt(2e5) ~ 1.1e-3; allow 5 sigma.
    values = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])
    n = 200_000
    theta = values.repeat(n, 1)
    for seed in (0, 1):
        freq = rk.dcs_mask(theta, seed=seed).mean(0)
        sigma = torch.sqrt(torch.sigmoid(values) * (1 - torch.sigmoid(values)) / n)
        assert torch.all((freq - torch.sigmoid(values)).abs() < 5 * sigma + 1e-6), (freq, torch.sigmoid(values))


@pytest.mark.parametrize("impl", IMPLS)
def test_all_zero_mask_attends_uniformly(impl):
    B, H, N, D = 2, 3, 17, 16
    q, k, v, _, _ = make_inputs(B, H, N, D, (1,))
    theta = torch.full((1, 1, 1, D), -50.0, requires_grad=True)
    out = rk.dcs_attention(q, k, v, theta, seed=0, impl=impl)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand_as(v), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(theta.grad).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_all_one_mask_is_plain_attention(impl):
    B, H, N, D = 2, 3, 17, 16
    q, k, v, _, _ = make_inputs(B, H, N, D, (1,))
    theta = torch.full((B, H, N, D), 50.0)
    out = rk.dcs_attention(q, k, v, theta, seed=1, impl=impl)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_seed_reproducible_and_shared_across_backends():
    B, H, N, D = 2, 2, 17, 16
    q, k, v, theta, _ = make_inputs(B, H, N, D, (B, H, N, D))
    a = rk.dcs_attention(q, k, v, theta, seed=123, impl="eager")
    b = rk.dcs_attention(q, k, v, theta, seed=123, impl="sdpa")
    c = rk.dcs_attention(q, k, v, theta, seed=124, impl="sdpa")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(b, c)
    explicit = rk.dcs_attention(q, k, v, theta, noise=rk.logistic_noise((B, H, N, D), 123), impl="sdpa")
    torch.testing.assert_close(b, explicit, rtol=0, atol=0)


def test_global_generator_makes_runs_reproducible():
    q, k, v, theta, _ = make_inputs(1, 2, 9, 16, (1, 2, 9, 16))
    torch.manual_seed(5)
    a = rk.dcs_attention(q, k, v, theta)
    torch.manual_seed(5)
    b = rk.dcs_attention(q, k, v, theta)
    c = rk.dcs_attention(q, k, v, theta)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(b, c)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_inputs(impl):
    B, H, N, D = 2, 3, 17, 32
    base = torch.randn(B, N, 3, H, D)  # timm's qkv layout, permuted views are non-contiguous
    q, k, v = base.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    theta = torch.randn(B, N, H, D).transpose(1, 2)
    noise = rk.logistic_noise((B, H, N, D), 9)
    grad_out = torch.randn(B, H, N, D)
    got = run_backend(impl, q, k, v, theta, noise, grad_out)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_float16_error_bounded(impl):
    B, H, N, D = 2, 2, 53, 64
    q, k, v, theta, noise = make_inputs(B, H, N, D, (B, H, N, D), dtype=torch.float16)
    out = rk.dcs_attention(q, k, v, theta, noise=noise, impl=impl)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    want, *_ = reference_forward_backward(q, k, v, theta, noise, torch.zeros(B, H, N, D))
    assert (out.double() - want).abs().max() < 1e-2


def test_philox_matches_python_integer_reference():
    def philox_py(seed, c0):
        m = 0xFFFFFFFF
        k0, k1, c1, c2, c3 = seed & m, seed >> 32 & m, 0, 0, 0
        for _ in range(10):
            p_b, p_a = 0xCD9E8D57 * c2, 0xD2511F53 * c0
            c0, c2, c1, c3 = (p_b >> 32) ^ c1 ^ k0, (p_a >> 32) ^ c3 ^ k1, p_b & m, p_a & m
            k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
        return c0

    offsets = torch.tensor([0, 1, 2, 12345, 2**31 - 1])
    for seed in (0, 42, 2**40 + 7):
        got = philox_randint(seed, offsets).tolist()
        assert got == [philox_py(seed, int(o)) for o in offsets]
    u = uniform_open01(philox_randint(1, torch.arange(100_000)))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01


BAD_CASES = {
    "k_shape": (lambda q, k, v, t: (q, k[:, :, :-1], v, t), ValueError, "k must have q's shape"),
    "v_dtype": (lambda q, k, v, t: (q, k, v.double(), t), TypeError, "v must have q's dtype"),
    "q_3d": (lambda q, k, v, t: (q[0], k[0], v[0], t), ValueError, "q must be 4-D"),
    "q_int": (lambda q, k, v, t: (q.long(), k.long(), v.long(), t), TypeError, "q must be a floating-point"),
    "theta_broadcast": (lambda q, k, v, t: (q, k, v, t[..., :3]), ValueError, "mask_logits with shape"),
    "theta_int": (lambda q, k, v, t: (q, k, v, t.long()), TypeError, "mask_logits must be a floating-point"),
    "theta_nan": (lambda q, k, v, t: (q, k, v, t.index_fill(0, torch.tensor([0]), float("nan"))), ValueError, "mask_logits contains NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_inputs_raise_clear_errors(case):
    make, exc, text = BAD_CASES[case]
    q, k, v, theta, _ = make_inputs(2, 2, 5, 8, (2, 2, 5, 8))
    with pytest.raises(exc, match=text):
        rk.dcs_attention(*make(q, k, v, theta), impl="sdpa")


def test_bad_tau_noise_impl():
    q, k, v, theta, _ = make_inputs(2, 2, 5, 8, (2, 2, 5, 8))
    with pytest.raises(ValueError, match="tau must be a positive"):
        rk.dcs_attention(q, k, v, theta, tau=0.0)
    with pytest.raises(ValueError, match="noise with shape"):
        rk.dcs_attention(q, k, v, theta, noise=torch.randn(3, 2, 5, 8))
    with pytest.raises(ValueError, match="impl must be one of"):
        rk.dcs_attention(q, k, v, theta, impl="flash")
    with pytest.raises(ValueError, match="tau must be a positive"):
        rk.dcs_mask(theta, tau=-1)
    with pytest.raises(ValueError, match="does not broadcast"):
        rk.dcs_mask(theta, noise=torch.randn(3, 1, 1, 1))


def test_unrunnable_backend_lists_every_reason(monkeypatch):
    from ribkernels.dcs import attention

    monkeypatch.setitem(attention.BACKENDS, "triton", attention.Backend(lambda *a: ["needs CUDA (got cpu)"], None))
    q, k, v, theta, _ = make_inputs(1, 1, 4, 8, (1, 1, 4, 8))
    with pytest.raises(ValueError, match=r"(?s)impl='triton' cannot run.*triton: needs CUDA.*sdpa: can run it"):
        rk.dcs_attention(q, k, v, theta, impl="triton")
    assert rk.dcs_attention(q, k, v, theta, seed=0).shape == q.shape  # auto falls back without error
