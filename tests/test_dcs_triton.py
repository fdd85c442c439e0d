"""The fused Triton DCS-Attention (``impl="triton"``) against SPEC §2's float64 formulas and the
``"sdpa"`` backend. On CPU this runs the kernels under ``TRITON_INTERPRET=1`` (set by conftest), on
small shapes; the TransReID-size checks are in ``test_dcs_triton_gpu.py``.
"""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import ribkernels as rk  # noqa: E402
from dcs_reference import reference_forward_backward  # noqa: E402
from ribkernels.dcs.philox import philox_randint, uniform_open01  # noqa: E402
from ribkernels.dcs.triton import backend, launch  # noqa: E402
from ribkernels.dcs.triton import kernels as K  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and not launch.INTERPRET,
                                reason="Triton on CPU needs TRITON_INTERPRET=1 before import")



@pytest.fixture(autouse=True)
def _fixed_configs(monkeypatch):
    """On a GPU, skip autotuning for these many small shapes (test_dcs_triton_gpu.py covers it)."""
    monkeypatch.setenv("RIBKERNELS_DCS_AUTOTUNE", "0")


THETA_SHAPES = {
    "token": lambda B, H, N, D: (B, H, N, D),
    "channel": lambda B, H, N, D: (1, H, 1, D),
    "batch_token": lambda B, H, N, D: (B, 1, N, D),
    "head_dim": lambda B, H, N, D: (H, 1, D),  # fewer dims than q: broadcasts over B and N
}
NAMES = ["out", "dq", "dk", "dv", "dtheta"]


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE, dtype=dtype)


def fresh_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()))


def run(impl, q, k, v, theta, grad_out, **kw):
    """Forward + backward of rk.dcs_attention: [out, dq, dk, dv, dθ]."""
    q, k, v, theta = (t.detach().clone().requires_grad_(True) for t in (q, k, v, theta))
    out = rk.dcs_attention(q, k, v, theta, impl=impl, **kw)
    out.backward(grad_out)
    return [out.detach(), q.grad, k.grad, v.grad, theta.grad]


def max_err(got, want) -> float:
    return (got.double() - want.double()).abs().max().item()


def check_fp32(got, want, rtol=2e-5, label=""):
    """Max error relative to the reference's largest magnitude (ieee fp32 dots: ~1e-6)."""
    for name, g, w in zip(NAMES, got, want):
        assert g is not None and g.shape == w.shape, f"{label} {name}: {None if g is None else g.shape}"
        assert torch.isfinite(g).all(), f"{label} {name} not finite"
        tol = rtol * max(w.abs().max().item(), 0.1)  # inputs are O(1): a small absolute floor
        assert max_err(g, w) <= tol, f"{label} {name}: err {max_err(g, w):.3g} > {tol:.3g}"


def check_low_precision(got, baseline, want, label="", slack=1e-3):
    """SPEC §5: error vs float64 at most 2× that of same-precision PyTorch, plus a tiny slack
    relative to the reference's magnitude (default 1e-3, about one fp16 ulp: at these small sizes
    both errors are a few ulp, so their ratio is granular)."""
    for name, g, b, w in zip(NAMES, got, baseline, want):
        assert g.shape == w.shape and g.dtype == b.dtype, f"{label} {name}"
        assert torch.isfinite(g).all(), f"{label} {name} not finite"
        e, e_base = max_err(g, w), max_err(b, w)
        bound = 2 * e_base + slack * max(w.abs().max().item(), 1e-3)
        assert e <= bound, f"{label} {name}: err {e:.3g} > 2×{e_base:.3g} + slack"


def make_case(B, H, N, D, theta_kind, dtype):
    q, k, v = (randn(B, H, N, D, dtype=dtype) for _ in range(3))
    theta = randn(*THETA_SHAPES[theta_kind](B, H, N, D), dtype=dtype)
    noise = rk.logistic_noise(tuple(theta.shape), seed=fresh_seed(), device=DEVICE)  # broadcast like θ
    grad_out = randn(B, H, N, D, dtype=dtype)
    return q, k, v, theta, noise, grad_out


CASES = [(N, D) for N in (1, 17, 53, 64, 211) for D in (16, 32, 64)]
BROADCAST_KINDS = ["channel", "batch_token", "head_dim"]


def _bh(N):
    return (1, 2) if N > 128 else (2, 2)


@pytest.mark.parametrize("N,D", CASES)
@pytest.mark.parametrize("theta_kind", ["token", "broadcast"])
def test_float32_matches_float64_reference_and_sdpa(N, D, theta_kind):
    if theta_kind == "broadcast":
        theta_kind = BROADCAST_KINDS[(N + D) % 3]
    B, H = _bh(N)
    q, k, v, theta, noise, grad_out = make_case(B, H, N, D, theta_kind, torch.float32)
    got = run("triton", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=0.7)
    check_fp32(got, want, label=f"triton N={N} D={D} {theta_kind}")
    sdpa = run("sdpa", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    for name, g, s in zip(NAMES, got, sdpa):
        torch.testing.assert_close(g, s, rtol=1e-4, atol=1e-5, msg=lambda m: f"vs sdpa {name}: {m}")


@pytest.mark.parametrize("N,D", CASES)
@pytest.mark.parametrize("theta_kind", ["token", "broadcast"])
def test_float16_within_twice_eager_error(N, D, theta_kind):
    if theta_kind == "broadcast":
        theta_kind = BROADCAST_KINDS[(N + D + 1) % 3]
    B, H = _bh(N)
    q, k, v, theta, noise, grad_out = make_case(B, H, N, D, theta_kind, torch.float16)
    got = run("triton", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=0.7)
    eager = run("eager", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    check_low_precision(got, eager, want, label=f"triton fp16 N={N} D={D} {theta_kind}")
    sdpa = run("sdpa", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    check_low_precision(got, sdpa, want, label=f"triton fp16 vs sdpa's error N={N} D={D} {theta_kind}")


def test_head_dim_128_and_two_partial_blocks():
    """D = 128 and N = 129 (one token past a block boundary), per-token θ, fp32."""
    B, H, N, D = 1, 2, 129, 128
    q, k, v, theta, noise, grad_out = make_case(B, H, N, D, "token", torch.float32)
    got = run("triton", q, k, v, theta, grad_out, noise=noise, tau=1.3, scale=0.05)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=1.3, scale=0.05)
    check_fp32(got, want, label="D=128 N=129")


def test_in_kernel_noise_matches_reference_and_is_reproducible():
    B, H, N, D = 1, 2, 37, 32
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, "token", torch.float32)
    seed = fresh_seed()
    a = run("triton", q, k, v, theta, grad_out, seed=seed, tau=0.5)
    b = run("triton", q, k, v, theta, grad_out, seed=seed, tau=0.5)
    for name, x, y in zip(NAMES, a, b):
        assert torch.equal(x, y), f"same seed, different {name}"
    noise = rk.logistic_noise((B, H, N, D), seed, device=DEVICE)
    check_fp32(a, reference_forward_backward(q, k, v, theta, noise, grad_out, tau=0.5), label="seeded")
    # The Philox run equals the run with the same noise passed explicitly: same mask, so the same
    # out, dq, dk, dv bit for bit; dθ differs by the float32 rounding of the in-kernel log (in σ').
    explicit = run("triton", q, k, v, theta, grad_out, noise=noise, tau=0.5)
    for name, x, y in zip(NAMES[:4], a, explicit):
        assert torch.equal(x, y), f"explicit noise {name}"
    torch.testing.assert_close(a[4], explicit[4], rtol=1e-5, atol=1e-6)
    c = run("triton", q, k, v, theta, grad_out, seed=seed + 1, tau=0.5)
    for name, x, y in zip(NAMES, a, c):
        assert not torch.equal(x, y), f"seeds {seed} and {seed + 1} gave the same {name}"


def test_torch_manual_seed_makes_default_seed_reproducible():
    B, H, N, D = 1, 2, 17, 16
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, "channel", torch.float32)
    torch.manual_seed(1234)
    a = run("triton", q, k, v, theta, grad_out)
    torch.manual_seed(1234)
    b = run("triton", q, k, v, theta, grad_out)
    for name, x, y in zip(NAMES, a, b):
        assert torch.equal(x, y), name


def test_noise_bits_equal_torch_philox():
    shape, seed = (3, 5, 7, 16), fresh_seed()
    u = backend.triton_uniform(shape, seed, DEVICE)
    want_u = uniform_open01(philox_randint(seed, torch.arange(3 * 5 * 7 * 16, device=DEVICE))).reshape(shape)
    assert torch.equal(u, want_u), "the kernels' uniform bits differ from ribkernels.dcs.philox"
    assert 0 < u.min() and u.max() < 1
    noise = backend.triton_logistic_noise(shape, seed, DEVICE)
    want = rk.logistic_noise(shape, seed, device=DEVICE)
    # Same u; the logs differ at most by float32 rounding (a few ulp of log(u) and log(1-u)).
    torch.testing.assert_close(noise, want, rtol=1e-6, atol=2e-6)
    # What the attention kernels' mask helper sees at each element is the same stream.
    view = backend.triton_dcs_mask(torch.zeros(1, device=DEVICE), seed, shape=shape, what="noise")
    assert torch.equal(view, noise)


def _masks_agree(got_mask, theta, noise):
    """got_mask equals 1[θ + L > 0] except where |θ + L| is at float32 rounding level."""
    z = (theta.float() + noise.float()).expand(got_mask.shape)
    want = (z > 0).float()
    bad = (got_mask != want) & (z.abs() > 1e-5)
    assert not bad.any(), f"{int(bad.sum())} mask elements differ"


@pytest.mark.parametrize("theta_kind", ["token", "channel"])
def test_backward_regenerates_the_forward_mask(theta_kind):
    """The mask each kernel builds, read off the gradients: dq = dq_raw ⊙ M and dk = dk_raw ⊙ M are
    exactly zero where M = 0 (and almost surely nonzero where M = 1)."""
    B, H, N, D = 2, 2, 53, 32
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, theta_kind, torch.float32)
    seed = fresh_seed()
    out, dq, dk, dv, dtheta = run("triton", q, k, v, theta, grad_out, seed=seed)
    noise = rk.logistic_noise((B, H, N, D), seed, device=DEVICE)
    want = rk.dcs_mask(theta.expand(B, H, N, D), noise=noise).float()
    assert torch.equal((dq != 0).float(), want), "dq kernel's mask differs from dcs_mask"
    assert torch.equal((dk != 0).float(), want), "dk/dv kernel's mask differs from dcs_mask"
    hook = backend.triton_dcs_mask(theta, shape=(B, H, N, D), seed=seed)
    assert torch.equal(hook, want)
    # The forward used the same mask: equal to the reference fed with that mask's noise.
    ref = reference_forward_backward(q, k, v, theta, noise, grad_out)
    torch.testing.assert_close(out.double(), ref[0], rtol=2e-5, atol=2e-6)


def test_mask_hook_matches_dcs_mask_and_block_size():
    B, H, N, D = 2, 3, 37, 16
    theta = randn(B, 1, N, D)
    seed = fresh_seed()
    noise = rk.logistic_noise((B, H, N, D), seed, device=DEVICE)
    m64 = backend.triton_dcs_mask(theta, shape=(B, H, N, D), seed=seed, block_n=64)
    m16 = backend.triton_dcs_mask(theta, shape=(B, H, N, D), seed=seed, block_n=16)
    assert torch.equal(m64, m16)
    _masks_agree(m64, theta, noise)
    z = backend.triton_dcs_mask(theta, shape=(B, H, N, D), seed=seed, what="logits")
    torch.testing.assert_close(z, theta.expand(B, H, N, D) + noise, rtol=1e-6, atol=2e-6)
    explicit = randn(1, H, N, 1)  # explicit noise broadcasts too
    m = backend.triton_dcs_mask(theta, shape=(B, H, N, D), noise=explicit)
    assert torch.equal(m, (theta + explicit > 0).float().expand(B, H, N, D))
    ev = backend.triton_dcs_mask(theta, shape=(B, H, N, D), training=False)
    assert torch.equal(ev, (theta > 0).float().expand(B, H, N, D))


def test_kept_frequency_matches_sigmoid_theta():
    """P(M = 1) = P(θ + L > 0) = sigmoid(θ) for logistic L (and does not depend on τ). Each of the
    128 (head, channel) pairs gets n = 1024 samples; tolerance 4.5 binomial standard deviations."""
    B, H, N, D = 8, 2, 128, 64
    theta = torch.linspace(-3, 3, H * D, device=DEVICE).reshape(1, H, 1, D)
    mask = backend.triton_dcs_mask(theta, shape=(B, H, N, D), seed=fresh_seed())
    freq = mask.mean(dim=(0, 2), keepdim=True)
    p = torch.sigmoid(theta)
    n = B * N
    sd = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 4.5 * sd + 1.0 / n).all(), f"max dev {(freq - p).abs().max():.3g}"
    assert (freq - p).abs().mean() < 0.01


def test_block_size_does_not_change_results():
    B, H, N, D = 1, 2, 53, 32
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, "token", torch.float32)
    seed = fresh_seed()
    res = []
    for cfg in [(32, 16), (64, 64)]:
        out, lse = launch.forward(q, k, v, theta, None, seed=seed, scale=D**-0.5, mode=K.MODE_PHILOX, config=cfg)
        grads = launch.backward(grad_out, q, k, v, theta, None, out, lse, seed=seed, scale=D**-0.5, tau=1.0,
                                mode=K.MODE_PHILOX, need_dtheta=True, config=cfg)
        res.append([out, *grads])
    for name, a, b in zip(NAMES, *res):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert torch.equal(res[0][1] != 0, res[1][1] != 0)


def test_eval_mode_mask_is_theta_positive_and_no_theta_grad():
    B, H, N, D = 2, 2, 17, 32
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, "token", torch.float32)
    got = run("triton", q, k, v, theta, grad_out, training=False)
    want = reference_forward_backward(q, k, v, theta, None, grad_out, training=False)
    check_fp32(got[:4] + [torch.zeros_like(theta)], list(want[:4]) + [torch.zeros_like(theta, dtype=torch.float64)])
    assert got[4] is None or not got[4].any()


def test_all_zero_and_all_one_masks():
    B, H, N, D = 2, 2, 33, 16
    q, k, v, _, _, grad_out = make_case(B, H, N, D, "token", torch.float32)
    zero_noise = torch.zeros(1, device=DEVICE)
    # All channels dropped: every score is 0, attention is uniform, no NaN anywhere.
    theta = torch.full((1, H, 1, D), -30.0, device=DEVICE)
    got = run("triton", q, k, v, theta, grad_out, noise=zero_noise)
    for name, g in zip(NAMES, got):
        assert torch.isfinite(g).all(), name
    torch.testing.assert_close(got[0], v.mean(dim=2, keepdim=True).expand_as(v), rtol=1e-5, atol=1e-6)
    assert not got[1].any() and not got[2].any()  # masked q, k get no gradient
    check_fp32(got, reference_forward_backward(q, k, v, theta, zero_noise, grad_out), label="all-zero")
    # All channels kept: plain attention.
    theta = torch.full((1, H, 1, D), 30.0, device=DEVICE)
    out = rk.dcs_attention(q, k, v, theta, noise=zero_noise, impl="triton")
    plain = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(out.double(), plain, rtol=2e-5, atol=2e-6)


def test_non_contiguous_inputs_and_stride0_grad():
    B, H, N, D = 2, 2, 29, 32
    qkv = randn(B, N, 3, H, D).permute(2, 0, 3, 1, 4)  # timm's layout: non-contiguous q, k, v
    q, k, v = qkv.unbind(0)
    theta = randn(B, N, H, D).transpose(1, 2)
    noise = rk.logistic_noise((B, N, H, D), fresh_seed(), device=DEVICE).transpose(1, 2)
    grad_out = randn(B, N, H, D).transpose(1, 2)
    assert not q.is_contiguous() and not theta.is_contiguous() and not grad_out.is_contiguous()
    got = run("triton", q, k, v, theta, grad_out, noise=noise)
    check_fp32(got, reference_forward_backward(q, k, v, theta, noise, grad_out), label="non-contiguous")
    # out.sum() gives the kernels a dout with all-zero strides.
    qq, kk, vv, tt = (t.detach().clone().requires_grad_(True) for t in (q, k, v, theta))
    rk.dcs_attention(qq, kk, vv, tt, noise=noise, impl="triton").sum().backward()
    want = reference_forward_backward(q, k, v, theta, noise, torch.ones(B, H, N, D, device=DEVICE))
    check_fp32([torch.zeros(()), qq.grad, kk.grad, vv.grad, tt.grad], [torch.zeros(()), *want[1:]], label="sum")


def test_outputs_are_fully_written(monkeypatch):
    """Every buffer the launchers allocate starts as NaN: any element a kernel forgets shows up."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poisoned(*a, **kw):
        t = real_empty(*a, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def poisoned_like(*a, **kw):
        t = real_empty_like(*a, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(launch.torch, "empty", poisoned)
    monkeypatch.setattr(launch.torch, "empty_like", poisoned_like)
    B, H, N, D = 1, 3, 71, 16
    q, k, v, theta, noise, grad_out = make_case(B, H, N, D, "token", torch.float32)
    got = run("triton", q, k, v, theta, grad_out, noise=noise)
    monkeypatch.undo()
    check_fp32(got, reference_forward_backward(q, k, v, theta, noise, grad_out), label="poisoned")


def test_theta_dtype_other_than_q():
    """θ in float64 with float32 q: the mask is built from θ rounded to float32 (as in the sdpa
    backend) and dθ comes back in θ's dtype."""
    B, H, N, D = 1, 2, 17, 16
    q, k, v, _, noise, grad_out = make_case(B, H, N, D, "channel", torch.float32)
    theta = randn(1, H, 1, D, dtype=torch.float64)
    got = run("triton", q, k, v, theta, grad_out, noise=noise)
    assert got[4].dtype == torch.float64
    check_fp32(got, reference_forward_backward(q, k, v, theta.float(), noise, grad_out), label="θ fp64")


# ---------------------------------------------------------------------------- bad input / dispatch


def _forbid_launch(monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("a kernel was launched")

    for name in ("forward", "backward", "mask_view", "flat_noise"):
        monkeypatch.setattr(launch, name, boom)


@pytest.mark.parametrize("what", ["head_dim", "dtype", "bf16_cpu"])
def test_unsupported_input_raises_dispatch_error_without_launching(monkeypatch, what):
    B, H, N = 1, 2, 9
    D = 8 if what == "head_dim" else 16
    dtype = {"head_dim": torch.float32, "dtype": torch.float64, "bf16_cpu": torch.bfloat16}[what]
    if what == "bf16_cpu" and DEVICE != "cpu":
        pytest.skip("bfloat16 runs on CUDA")
    q, k, v = (randn(B, H, N, D, dtype=dtype) for _ in range(3))
    theta = randn(1, H, 1, D, dtype=dtype)
    _forbid_launch(monkeypatch)
    expected = {"head_dim": "head dim D=8", "dtype": "dtype torch.float64", "bf16_cpu": "bfloat16"}[what]
    with pytest.raises(ValueError, match="triton") as info:
        rk.dcs_attention(q, k, v, theta, impl="triton", seed=1)
    assert expected in str(info.value) and "sdpa: can run it" in str(info.value)
    assert backend.why_not(q, k, v, theta, None)


def test_why_not_reasons_and_never_launches(monkeypatch):
    _forbid_launch(monkeypatch)
    q = randn(1, 2, 5, 32)
    assert backend.why_not(q, q, q, randn(1, 2, 1, 32), randn(1, 2, 5, 32)) == []
    meta = torch.empty(1, 2, 5, 32, device="meta")
    assert any("device meta" in r for r in backend.why_not(meta, meta, meta, meta, None))
    monkeypatch.setattr(launch, "INTERPRET", False)
    cpu = torch.randn(1, 2, 5, 32)
    assert any("TRITON_INTERPRET" in r for r in backend.why_not(cpu, cpu, cpu, cpu, None))
    big = torch.empty(2**16, 1, 1, 16, device="meta")
    assert any("65535" in r for r in backend.why_not(big, big, big, big[:1], None))
    huge = torch.empty(8, 16, 2**16, 256, device="meta")
    reasons = backend.why_not(huge, huge, huge, huge[:1], None)
    assert any("2**31" in r for r in reasons) and any("D=256" in r for r in reasons)


# ---------------------------------------------------------------------------- custom op / compile


def test_custom_op_opcheck():
    B, H, N, D = 1, 2, 5, 16
    q, k, v = (randn(B, H, N, D).requires_grad_(True) for _ in range(3))
    theta = randn(1, H, 1, D).requires_grad_(True)
    noise = rk.logistic_noise((B, H, N, D), 3, device=DEVICE)
    torch.library.opcheck(torch.ops.ribkernels.dcs_attention_fwd.default,
                          (q, k, v, theta, noise, 0, 0.5, D**-0.5, True))
    torch.library.opcheck(torch.ops.ribkernels.dcs_attention_fwd.default,
                          (q, k, v, theta, None, 11, 1.0, 0.3, True))
    out, lse = torch.ops.ribkernels.dcs_attention_fwd(q.detach(), k.detach(), v.detach(), theta.detach(),
                                                      noise, 0, 0.5, D**-0.5, True)
    torch.library.opcheck(torch.ops.ribkernels.dcs_attention_bwd.default,
                          (randn(B, H, N, D), q.detach(), k.detach(), v.detach(), theta.detach(), noise,
                           out, lse, 0, 0.5, D**-0.5, True, True),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_traces_the_op():
    B, H, N, D = 1, 2, 17, 16
    q, k, v, theta, noise, grad_out = make_case(B, H, N, D, "token", torch.float32)

    def f(q, k, v, theta):
        return rk.dcs_attention(q, k, v, theta, noise=noise, impl="triton", tau=0.8, check_nan=False)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    q1, k1, v1, t1 = (t.detach().clone().requires_grad_(True) for t in (q, k, v, theta))
    out = compiled(q1, k1, v1, t1)
    out.backward(grad_out)
    want = run("triton", q, k, v, theta, grad_out, noise=noise, tau=0.8)
    for name, g, w in zip(NAMES, [out.detach(), q1.grad, k1.grad, v1.grad, t1.grad], want):
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=lambda m: f"compiled {name}: {m}")
