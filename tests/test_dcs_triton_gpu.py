"""The fused Triton DCS-Attention on a CUDA device at TransReID's shapes (B=64, H=12, N=211, D=64):
bf16 / fp16 / fp32 against the float64 reference, within 2× the error of same-precision eager
PyTorch (SPEC §5), plus the in-kernel noise and the autotuned configs. Skipped without CUDA."""
import pytest
import torch

pytest.importorskip("triton")

import ribkernels as rk  # noqa: E402
from dcs_reference import reference_forward_backward  # noqa: E402
from ribkernels.dcs.philox import philox_randint, uniform_open01  # noqa: E402
from ribkernels.dcs.triton import backend  # noqa: E402
from test_dcs_triton import NAMES, check_low_precision, run  # noqa: E402

pytestmark = pytest.mark.gpu
TRANSREID = (64, 12, 211, 64)
# The "tiny absolute slack" of the 2× rule, relative to the reference's largest magnitude: about a
# quarter of the dtype's epsilon (errors at rounding level can differ by an ulp either way).
SLACK = {torch.bfloat16: 2e-3, torch.float16: 2.5e-4, torch.float32: 2e-6}


@pytest.fixture
def fixed_configs(monkeypatch):
    monkeypatch.setenv("RIBKERNELS_DCS_AUTOTUNE", "0")


def inputs(B, H, N, D, dtype, theta_shape, seed=None):
    q, k, v, grad_out = (torch.randn(B, H, N, D, device="cuda", dtype=dtype) for _ in range(4))
    theta = torch.randn(theta_shape, device="cuda", dtype=dtype)
    seed = int(torch.randint(0, 2**31 - 1, ())) if seed is None else seed
    noise = rk.logistic_noise((B, H, N, D), seed, device="cuda")
    return q, k, v, theta, noise, grad_out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("theta_kind", ["token", "channel"])
def test_transreid_shape_within_twice_eager_error(dtype, theta_kind, fixed_configs):
    B, H, N, D = TRANSREID
    shape = (B, H, N, D) if theta_kind == "token" else (1, H, 1, D)
    q, k, v, theta, noise, grad_out = inputs(B, H, N, D, dtype, shape)
    got = run("triton", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=0.7)
    eager = run("eager", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    check_low_precision(got, eager, want, label=f"{dtype} {theta_kind}", slack=SLACK[dtype])


def test_transreid_shape_autotuned_in_kernel_noise():
    """Default path (autotuned configs, Philox noise): reproducible, equal to the reference fed with
    the same noise, and the backward kernels rebuild the forward's mask."""
    B, H, N, D = TRANSREID
    q, k, v, theta, _, grad_out = inputs(B, H, N, D, torch.float16, (B, H, N, D))
    seed = 987654
    a = run("triton", q, k, v, theta, grad_out, seed=seed)
    b = run("triton", q, k, v, theta, grad_out, seed=seed)
    for name, x, y in zip(NAMES, a, b):
        assert torch.equal(x, y), f"same seed, different {name}"
    noise = rk.logistic_noise((B, H, N, D), seed, device="cuda")
    want = reference_forward_backward(q, k, v, theta, noise, grad_out)
    eager = run("eager", q, k, v, theta, grad_out, noise=noise)
    check_low_precision(a, eager, want, label="seeded fp16", slack=SLACK[torch.float16])
    z = theta.float() + noise
    ref_mask = z > 0
    near_zero = z.abs() < 1e-5  # only here may a 1-ulp difference of the device log flip the mask
    for name, g in (("dq", a[1]), ("dk", a[2])):
        # dq = dq_raw ⊙ M is exactly 0 where M = 0; where M = 1 an fp16 dq_raw may still round to
        # 0 (rarely: |dq_raw| < 3e-8), so that direction gets a tiny allowance.
        leaked = (g != 0) & ~ref_mask & ~near_zero
        assert not leaked.any(), f"{name}: nonzero at {int(leaked.sum())} masked elements"
        lost = (g == 0) & ref_mask & ~near_zero
        assert lost.sum() <= 1e-5 * g.numel(), f"{name}: zero at {int(lost.sum())} kept elements"
    hook = backend.triton_dcs_mask(theta, shape=(B, H, N, D), seed=seed)
    assert torch.equal(hook.bool() | near_zero, ref_mask | near_zero)


def test_noise_bits_on_device_equal_torch_philox():
    shape, seed = (4, 12, 211, 64), 31337
    u = backend.triton_uniform(shape, seed, "cuda")
    want = uniform_open01(philox_randint(seed, torch.arange(u.numel(), device="cuda"))).reshape(shape)
    assert torch.equal(u, want)
    noise = backend.triton_logistic_noise(shape, seed, "cuda")
    # u is exact; the device log may be an approximation within a few ulp.
    torch.testing.assert_close(noise, rk.logistic_noise(shape, seed, device="cuda"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("N,D", [(1024, 128)])
def test_longer_sequences_bf16(N, D, fixed_configs):
    B, H = 2, 4
    q, k, v, theta, noise, grad_out = inputs(B, H, N, D, torch.bfloat16, (B, 1, N, D))
    got = run("triton", q, k, v, theta, grad_out, noise=noise)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out)
    eager = run("eager", q, k, v, theta, grad_out, noise=noise)
    check_low_precision(got, eager, want, label=f"bf16 N={N} D={D}", slack=SLACK[torch.bfloat16])
