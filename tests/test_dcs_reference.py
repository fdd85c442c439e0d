"""The PyTorch backends of dcs_attention / dcs_mask against the float64 formulas of docs/design.md §2."""
import math

import pytest
import torch

import ribkernels as rk
from ribkernels.dcs.philox import contract_uniform, philox4x32, philox_randint
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


def contract_mask(theta, shape, seed, offset=0):
    """Contract v2's training mask from the pure-Python Philox: 1[u > sigmoid(-θ)] in float32."""
    u = python_contract_uniform(math.prod(shape), seed, offset).reshape(shape)
    return (u > torch.sigmoid(-theta.float().expand(shape))).float(), u


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("theta_kind", ["token", "channel"])
@pytest.mark.parametrize("tau", [1.0, 0.6])
def test_seeded_backend_matches_contract_and_float64_reference(impl, theta_kind, tau):
    B, H, N, D = 2, 3, 17, 16
    shape = {"token": (B, H, N, D), "channel": (1, H, 1, D)}[theta_kind]
    q, k, v, theta, _ = make_inputs(B, H, N, D, shape, dtype=torch.float64)
    theta = theta.double()
    seed, offset = 2**62 + 12345, 7
    mask, u = contract_mask(theta, (B, H, N, D), seed, offset)
    assert 0 < mask.mean() < 1
    noise = torch.log(u.double()) - torch.log1p(-u.double())
    grad_out = torch.randn(B, H, N, D, dtype=torch.float64)
    got = run_seeded(impl, q, k, v, theta, grad_out, seed=seed, offset=offset, tau=tau)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=tau, mask=mask)
    for name, g, w in zip(["out", "dq", "dk", "dv", "dtheta"], got, want):
        # dθ: the contract makes soft in float32 (θ, u float32)
        tol = dict(rtol=1e-5, atol=1e-6) if name == "dtheta" else dict(rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{impl} {name}: {m}")


def run_seeded(impl, q, k, v, theta, grad_out, **kw):
    q, k, v, theta = (t.detach().clone().requires_grad_(True) for t in (q, k, v, theta))
    out = rk.dcs_attention(q, k, v, theta, impl=impl, **kw)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad, theta.grad


def test_seed_reproducible_and_shared_across_backends():
    B, H, N, D = 2, 2, 17, 16
    q, k, v, theta, _ = make_inputs(B, H, N, D, (B, H, N, D))
    a = rk.dcs_attention(q, k, v, theta, seed=123, impl="eager")
    b = rk.dcs_attention(q, k, v, theta, seed=123, impl="sdpa")
    c = rk.dcs_attention(q, k, v, theta, seed=124, impl="sdpa")
    d = rk.dcs_attention(q, k, v, theta, seed=123, offset=1, impl="sdpa")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(b, c) and not torch.allclose(b, d)
    mask, _ = contract_mask(theta, (B, H, N, D), 123)
    torch.testing.assert_close(rk.dcs_mask(theta, seed=123), mask, rtol=0, atol=0)
    explicit = rk.dcs_attention(q, k, v, theta, noise=(2 * mask - 1) * 1e4 - theta, impl="sdpa")
    torch.testing.assert_close(b, explicit, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_tensor_seed_equals_int_seed(impl):
    q, k, v, theta, _ = make_inputs(1, 2, 9, 16, (1, 2, 9, 16))
    a = rk.dcs_attention(q, k, v, theta, seed=2**62 + 1, offset=3, impl=impl)
    b = rk.dcs_attention(q, k, v, theta, seed=torch.tensor(2**62 + 1), offset=3, impl=impl)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(rk.dcs_mask(theta, seed=torch.tensor(5)), rk.dcs_mask(theta, seed=5), rtol=0, atol=0)


def test_dcs_mask_seeded_gradient_is_straight_through():
    theta = (3 * torch.randn(1, 3, 1, 40, dtype=torch.float64)).requires_grad_(True)
    theta.data[0, 0, 0, :2] = torch.tensor([200.0, -200.0], dtype=torch.float64)  # no overflow
    shape, seed, tau = (1, 3, 1, 40), 99, 1.0
    mask = rk.dcs_mask(theta, seed=seed, tau=tau)
    want_mask, u = contract_mask(theta.detach(), shape, seed)
    torch.testing.assert_close(mask, want_mask.double(), rtol=0, atol=0)
    upstream = torch.randn(shape, dtype=torch.float64)
    mask.backward(upstream)
    soft = torch.sigmoid(theta.detach() + torch.log(u.double()) - torch.log1p(-u.double()))
    assert torch.isfinite(theta.grad).all()
    torch.testing.assert_close(theta.grad, upstream * soft * (1 - soft), rtol=1e-5, atol=1e-7)


def test_logistic_noise_is_contract_noise():
    shape, seed = (3, 5, 7), 2**63 - 1
    u = python_contract_uniform(105, seed, offset=2**32 - 3).reshape(shape)
    got = rk.logistic_noise(shape, seed, offset=2**32 - 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.log(u) - torch.log1p(-u), rtol=0, atol=0)
    # offset advanced by ceil(numel / 4) continues the stream without overlap
    whole = rk.logistic_noise((40,), 5)
    torch.testing.assert_close(torch.cat([rk.logistic_noise((20,), 5), rk.logistic_noise((20,), 5, offset=5)]), whole)


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, True, "3", torch.tensor(3.0), torch.tensor([1, 2])])
def test_seed_range_errors(bad):
    q, k, v, theta, _ = make_inputs(1, 1, 4, 8, (1, 1, 4, 8))
    for impl in IMPLS:
        with pytest.raises(ValueError, match=r"seed.*\[0, 2\*\*63\)"):
            rk.dcs_attention(q, k, v, theta, seed=bad, impl=impl)
    with pytest.raises(ValueError, match=r"seed.*\[0, 2\*\*63\)"):
        rk.dcs_mask(theta, seed=bad)
    with pytest.raises(ValueError, match=r"seed.*\[0, 2\*\*63\)"):
        rk.logistic_noise((4,), bad)
    with pytest.raises(ValueError, match=r"offset must be an integer"):
        rk.logistic_noise((4,), 0, offset=-1)
    with pytest.raises(ValueError, match=r"offset must be an integer"):
        rk.logistic_noise((4,), 0, offset=torch.tensor(-1))


def test_offset_as_a_tensor_equals_the_int_offset():
    """A 0-d int64 offset tensor (advanced in place between CUDA-graph replays) draws the same noise."""
    q, k, v, theta, _ = make_inputs(1, 2, 9, 16, (1, 2, 9, 16))
    off = 2**32 - 3
    torch.testing.assert_close(rk.logistic_noise((37,), 11, offset=torch.tensor(off)),
                               rk.logistic_noise((37,), 11, offset=off), rtol=0, atol=0)
    for impl in IMPLS:
        a = rk.dcs_attention(q, k, v, theta, seed=11, offset=torch.tensor(off), impl=impl)
        b = rk.dcs_attention(q, k, v, theta, seed=11, offset=off, impl=impl)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


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


def python_philox4x32(seed, c0, c1):
    """Philox-4x32-10 on Python ints: counter (c0, c1, 0, 0), key (lo32(seed), hi32(seed))."""
    m = 0xFFFFFFFF
    k0, k1, c2, c3 = seed & m, seed >> 32 & m, 0, 0
    for _ in range(10):
        p_b, p_a = 0xCD9E8D57 * c2, 0xD2511F53 * c0
        c0, c2, c1, c3 = (p_b >> 32) ^ c1 ^ k0, (p_a >> 32) ^ c3 ^ k1, p_b & m, p_a & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return [c0, c1, c2, c3]


def python_contract_uniform(numel, seed, offset=0):
    """Contract v2's u for elements 0..numel-1, from Python ints (float32)."""
    bits = []
    for g in range((numel + 3) // 4):
        counter = g + offset
        bits += python_philox4x32(seed, counter & 0xFFFFFFFF, counter >> 32)
    return torch.tensor([((b >> 9) + 0.5) * 2.0**-23 for b in bits[:numel]], dtype=torch.float32)


def test_philox_matches_python_integer_reference():
    lo = torch.tensor([0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1])
    hi = torch.tensor([0, 0, 7, 2**32 - 1, 1, 2**31, 2**32 - 1])
    for seed in (0, 42, 2**40 + 7, 2**63 - 1):
        got = torch.stack(philox4x32(seed, lo, hi), dim=-1).tolist()
        assert got == [python_philox4x32(seed, int(a), int(b)) for a, b in zip(lo, hi)]
        assert philox_randint(seed, lo).tolist() == [python_philox4x32(seed, int(a), 0)[0] for a in lo]
    for numel, seed, offset in [(1, 3, 0), (13, 2**63 - 1, 2**32 - 2), (30, 7, 2**63 - 5)]:
        torch.testing.assert_close(contract_uniform(numel, seed, offset),
                                   python_contract_uniform(numel, seed, offset), rtol=0, atol=0)
    u = contract_uniform(100_000, 1)
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
