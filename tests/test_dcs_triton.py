"""The Triton DCS-Attention (mask pre-pass + FlashAttention-2-shaped kernels, noise contract v2)
against the float64 formulas of docs/design.md §2, the PyTorch contract reference and the sdpa backend.

Parametrised over devices: ``cpu`` runs the kernels under ``TRITON_INTERPRET=1`` (set by conftest)
on small shapes, fp32/fp16; ``cuda`` (marked ``gpu``, skipped without CUDA) adds bf16 and
TransReID's shapes (B=64, H=12, N=211, D=64) with the autotuned configs.
"""
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import ribkernels as rk  # noqa: E402
from dcs_reference import reference_forward_backward  # noqa: E402
from ribkernels.dcs.philox import contract_uniform  # noqa: E402
from ribkernels.dcs.triton import backend, launch  # noqa: E402
from ribkernels.dcs.triton import noise as NZ  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not launch.INTERPRET, reason="needs TRITON_INTERPRET=1")),
           pytest.param("cuda", marks=pytest.mark.gpu)]
THETA_SHAPES = {
    "token": lambda B, H, N, D: (B, H, N, D),
    "channel": lambda B, H, N, D: (1, H, 1, D),
    "batch_token": lambda B, H, N, D: (B, 1, N, D),
    "head_dim": lambda B, H, N, D: (H, 1, D),  # fewer dims than q: broadcasts over B and N
}
NAMES = ["out", "dq", "dk", "dv", "dtheta"]
# fp16/bf16: the "tiny absolute slack" of the 2× rule of docs/design.md §5, relative to the reference's magnitude.
SLACK = {torch.bfloat16: 2e-3, torch.float16: 1e-3, torch.float32: 2e-6}


@pytest.fixture(autouse=True)
def _fixed_configs(monkeypatch):
    """Small shapes: skip autotuning on GPU (the TransReID tests run the autotuned path); no
    (deprecated) backward-path variable."""
    monkeypatch.setenv("RIBKERNELS_DCS_AUTOTUNE", "0")
    monkeypatch.delenv("RIBKERNELS_DCS_BACKWARD", raising=False)


def randn(*shape, device, dtype=torch.float32):
    return torch.randn(*shape, device=device, dtype=dtype)


def fresh_seed() -> int:
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def run(impl, q, k, v, theta, grad_out, **kw):
    """Forward + backward of rk.dcs_attention: [out, dq, dk, dv, dθ]."""
    q, k, v, theta = (t.detach().clone().requires_grad_(True) for t in (q, k, v, theta))
    out = rk.dcs_attention(q, k, v, theta, impl=impl, **kw)
    out.backward(grad_out)
    return [out.detach(), q.grad, k.grad, v.grad, theta.grad]


def assert_same_run(device, name, a, b, label=""):
    """Two runs with the same inputs: bit-identical (the backward has no atomics: dq sums its key
    blocks in a fixed order), on every device."""
    assert torch.equal(a, b), f"{label} different {name}"


def max_err(got, want) -> float:
    return (got.double() - want.double()).abs().max().item()


def check_fp32(got, want, rtol=2e-5, label=""):
    """Max error relative to the reference's largest magnitude (fp32 dots: ~1e-6)."""
    for name, g, w in zip(NAMES, got, want):
        assert g is not None and g.shape == w.shape, f"{label} {name}: {None if g is None else g.shape}"
        assert torch.isfinite(g).all(), f"{label} {name} not finite"
        tol = rtol * max(w.abs().max().item(), 0.1)
        assert max_err(g, w) <= tol, f"{label} {name}: err {max_err(g, w):.3g} > {tol:.3g}"


def check_low_precision(got, baseline, want, label="", slack=1e-3):
    """docs/design.md §5: error vs float64 at most 2× that of same-precision PyTorch, plus a tiny slack."""
    for name, g, b, w in zip(NAMES, got, baseline, want):
        assert g.shape == w.shape and g.dtype == b.dtype, f"{label} {name}"
        assert torch.isfinite(g).all(), f"{label} {name} not finite"
        e, e_base = max_err(g, w), max_err(b, w)
        bound = 2 * e_base + slack * max(w.abs().max().item(), 1e-3)
        assert e <= bound, f"{label} {name}: err {e:.3g} > 2×{e_base:.3g} + slack"


# The kernels' dtype per device: fp32 under the interpreter (checked against float64 at ~1e-5);
# fp16 on CUDA (fp32 goes to the sdpa backend there), checked by the 2×-eager rule of docs/design.md §5.
DT = {"cpu": torch.float32, "cuda": torch.float16}


def check_ref(device, got, want, eager_args=None, rtol=2e-5, label="", first=0):
    """CPU: ``check_fp32``. CUDA: ``check_low_precision`` against eager PyTorch run on
    ``eager_args = (q, k, v, theta, grad_out, kwargs)`` in the same dtype. ``got``/``want`` are
    ``[out, dq, dk, dv, dθ][first:first + len(got)]``."""
    if device == "cpu":
        check_fp32(got, want, rtol=rtol, label=label)
        return
    q, k, v, theta, grad_out, kw = eager_args
    eager = run("eager", q, k, v, theta, grad_out, **kw)[first:first + len(got)]
    check_low_precision(got, eager, want, label=label, slack=SLACK[q.dtype])


def close_tol(device):
    return dict(rtol=1e-5, atol=1e-6) if device == "cpu" else dict(rtol=2e-3, atol=2e-3)


def make_case(B, H, N, D, theta_kind, dtype, device):
    q, k, v = (randn(B, H, N, D, device=device, dtype=dtype) for _ in range(3))
    theta = randn(*THETA_SHAPES[theta_kind](B, H, N, D), device=device, dtype=dtype)
    noise = rk.logistic_noise(tuple(theta.shape), seed=fresh_seed(), device=device)  # broadcast like θ
    grad_out = randn(B, H, N, D, device=device, dtype=dtype)
    return q, k, v, theta, noise, grad_out


def contract_mask(theta, shape, seed, offset=0):
    """The contract's mask ``1[u > sigmoid(−θ)]`` (float32) and its uniforms, from the PyTorch
    reference (``ribkernels.dcs.philox``)."""
    numel = 1
    for s in shape:
        numel *= s
    u = contract_uniform(numel, seed, offset, device=theta.device).reshape(shape)
    th = theta.float().expand(shape)
    return (u > torch.sigmoid(-th)).float(), u


def masks_agree(got, want, theta, u, label=""):
    """Equal except where u is within float32 rounding of sigmoid(−θ) (the kernels decide
    u·(1 + e^θ) > 1 with a hardware exp; the reference u > sigmoid(−θ) with torch's)."""
    tie = (u.double() - torch.sigmoid(-theta.double().expand(u.shape))).abs() < 1e-6
    bad = (got != want) & ~tie
    assert not bad.any(), f"{label}: {int(bad.sum())} of {got.numel()} mask elements differ"


# ---------------------------------------------------------------------------- float64 reference

CASES = [(1, 16, "token"), (17, 32, "channel"), (53, 64, "batch_token"), (129, 16, "head_dim"),
         (17, 64, "token"), (53, 32, "channel"), (129, 64, "token")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,D,theta_kind", CASES)
def test_float32_matches_float64_reference_and_sdpa(device, N, D, theta_kind):
    B, H = (1, 2) if N > 64 else (2, 2)
    q, k, v, theta, noise, grad_out = make_case(B, H, N, D, theta_kind, DT[device], device)
    got = run("triton", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=0.7)
    check_ref(device, got, want, (q, k, v, theta, grad_out, dict(noise=noise, tau=0.7)),
              label=f"triton N={N} D={D} {theta_kind}")
    if device != "cpu":
        return
    sdpa = run("sdpa", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    for name, g, s in zip(NAMES, got, sdpa):
        torch.testing.assert_close(g, s, rtol=1e-4, atol=1e-5, msg=lambda m: f"vs sdpa {name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,D,theta_kind", [(17, 16, "token"), (53, 64, "channel"), (129, 32, "batch_token")])
def test_float16_within_twice_eager_error(device, N, D, theta_kind):
    B, H = (1, 2) if N > 64 else (2, 2)
    q, k, v, theta, noise, grad_out = make_case(B, H, N, D, theta_kind, torch.float16, device)
    got = run("triton", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=0.7)
    eager = run("eager", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    check_low_precision(got, eager, want, label=f"fp16 N={N} D={D} {theta_kind}")


# ---------------------------------------------------------------------------- noise contract v2


def python_philox(seed, c0, c1):
    """Philox-4x32-10 on Python ints (independent of every ribkernels implementation)."""
    m = 0xFFFFFFFF
    k0, k1, c2, c3 = seed & m, (seed >> 32) & m, 0, 0
    for _ in range(10):
        pb, pa = 0xCD9E8D57 * c2, 0xD2511F53 * c0
        c0, c1, c2, c3 = (pb >> 32) ^ c1 ^ k0, pb & m, (pa >> 32) ^ c3 ^ k1, pa & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return c0, c1, c2, c3


@pytest.mark.parametrize("device", DEVICES)
def test_uniform_bits_follow_the_contract(device):
    """One Philox call per 4 elements, counter (lo32, hi32) of g + offset, key = 64-bit seed:
    against Python ints (a few elements, across the 2**32 counter word) and the torch reference."""
    seed, offset = 2**63 - 12345, 2**32 - 3  # top of the seed range; g + offset crosses 2**32
    u = backend.triton_uniform((2, 3, 5, 16), seed, device, offset=offset).flatten()
    for i in (0, 1, 2, 3, 4, 11, 12, 13, 479):
        g = i // 4 + offset
        r = python_philox(seed, g & 0xFFFFFFFF, g >> 32)[i % 4]
        assert u[i].item() == ((r >> 9) + 0.5) * 2.0**-23, f"element {i}"
    assert torch.equal(u.cpu(), contract_uniform(u.numel(), seed, offset))
    noise = backend.triton_logistic_noise((7, 12), seed, device, offset=5)
    want = rk.logistic_noise((7, 12), seed, offset=5, device=device)
    torch.testing.assert_close(noise, want, rtol=1e-5, atol=1e-5)  # same u; logs to rounding


@pytest.mark.parametrize("device", DEVICES)
def test_mantissa_uniform_equals_the_ffma_uniform(device):
    """The pre-pass's u (the 23 bits in 1.0's mantissa, minus 1 − 2**-24) is the contract's
    ((bits >> 9) + 0.5)·2**-23 bit for bit, extremes included."""
    import triton
    import triton.language as tl

    @triton.jit
    def both(BITS, OUT_FFMA, OUT_MANT, BLOCK: tl.constexpr):
        bits = tl.load(BITS + tl.arange(0, BLOCK)).to(tl.uint32, bitcast=True)
        tl.store(OUT_FFMA + tl.arange(0, BLOCK), NZ.uniform_open01(bits))
        tl.store(OUT_MANT + tl.arange(0, BLOCK), NZ.uniform_open01_mantissa(bits))

    edges = torch.tensor([0, 1, 511, 512, 2**31 - 1, 2**31, 2**32 - 512, 2**32 - 1], dtype=torch.int64)
    bits = torch.cat([edges, torch.randint(0, 2**32, (1016,), dtype=torch.int64)])
    bits32 = (bits - (bits >= 2**31).long() * 2**32).to(torch.int32).to(device)
    ffma, mant = (torch.empty(1024, device=device) for _ in range(2))
    both[(1,)](bits32, ffma, mant, BLOCK=1024)
    want = ((bits >> 9).double() + 0.5) * 2.0**-23
    assert torch.equal(ffma.cpu().double(), want) and torch.equal(mant.cpu().double(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_offset_advances_the_stream(device):
    seed = fresh_seed()
    full = backend.triton_uniform((64,), seed, device)
    assert torch.equal(backend.triton_uniform((40,), seed, device, offset=6), full[24:])
    off = torch.tensor([6], dtype=torch.int64, device=device)  # offset as a device tensor
    assert torch.equal(backend.triton_uniform((40,), seed, device, offset=off), full[24:])
    assert not torch.equal(backend.triton_uniform((64,), seed, device, offset=16), full)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("theta_kind", ["token", "channel"])
def test_prepass_mask_is_the_contract_mask(device, theta_kind):
    B, H, N, D = 2, 3, 37, 16
    theta = 2 * randn(*THETA_SHAPES[theta_kind](B, H, N, D), device=device)
    seed, offset = fresh_seed(), 1000
    got = backend.triton_dcs_mask(theta, seed, shape=(B, H, N, D), offset=offset)
    want, u = contract_mask(theta, (B, H, N, D), seed, offset)
    masks_agree(got, want, theta, u, label=theta_kind)
    eval_mask = backend.triton_dcs_mask(theta, shape=(B, H, N, D), training=False)
    assert torch.equal(eval_mask, (theta > 0).float().expand(B, H, N, D))
    explicit = randn(1, H, N, 1, device=device)  # explicit noise broadcasts too
    m = backend.triton_dcs_mask(theta, shape=(B, H, N, D), noise=explicit)
    assert torch.equal(m, (theta + explicit > 0).float().expand(B, H, N, D))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", [NZ.MODE_EVAL, NZ.MODE_NOISE, NZ.MODE_PHILOX])
def test_masked_qk_prepass_writes_exact_masked_operands(device, mode):
    """One pass makes the mask and q⊙M, k⊙M (the forward's operands): the same mask as the mask-only
    pre-pass, q·M and k·M exactly, contiguous, from strided q, k (timm's qkv layout), over a partial
    second pre-pass program (N = 300 tokens, 256 per program at D = 16)."""
    B, H, N, D = 1, 2, 300, 16
    dt = DT[device]
    q, k, _ = randn(B, N, 3, H, D, device=device, dtype=dt).permute(2, 0, 3, 1, 4).unbind(0)
    theta = torch.linspace(-1.5, 1.5, H * D, device=device, dtype=dt).reshape(1, H, 1, D)
    noise = rk.logistic_noise((B, H, N, 1), fresh_seed(), device=device) if mode == NZ.MODE_NOISE else None
    rng = launch.rng_state(fresh_seed(), 7, device)
    assert launch.prepass_rows(D) < N < 2 * launch.prepass_rows(D) and not q.is_contiguous()
    mask, qm, km = launch.masked_qk_prepass(q, k, theta, noise, rng, mode)
    alone = launch.mask_prepass(theta, noise, q.shape, rng, mode, dt)
    for name, t in (("mask", mask), ("q⊙M", qm), ("k⊙M", km)):
        assert t.shape == q.shape and t.dtype == dt and t.is_contiguous(), name
    assert torch.equal(mask, alone)
    assert 0.2 < mask.float().mean().item() < 0.8  # neither all kept nor all dropped: the test can fail
    assert torch.equal(qm, q * mask) and torch.equal(km, k * mask)


def test_prepass_copies_views_whose_in_program_offsets_overflow_int32():
    """The pre-pass indexes inside a program in int32 (r·stride_n + d·stride_d, r < rows): views with a
    token stride too large for that are made contiguous first, the others pass through untouched
    (meta tensors: the check reads strides only)."""
    rows = launch.prepass_rows(64)
    ok = torch.empty_strided((1, 1, 300, 64), (0, 0, (2**31 - 64) // (rows - 1) - 1, 1), device="meta")
    too_far = torch.empty_strided((1, 1, 300, 64), (0, 0, (2**31 - 64) // (rows - 1) + 1, 1), device="meta")
    broadcast = torch.empty_strided((2, 12, 300, 64), (0, 64, 0, 1), device="meta")
    assert launch._int32_rows(ok, rows) is ok and launch._int32_rows(broadcast, rows) is broadcast
    copied = launch._int32_rows(too_far, rows)
    assert copied is not too_far and copied.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("theta_kind,tau", [("token", 1.0), ("channel", 1.0), ("token", 0.5), ("head_dim", 1.0)])
def test_seeded_run_matches_contract_reference(device, theta_kind, tau):
    """Philox mode end to end: the forward uses the contract mask, dq/dk vanish exactly off it, and
    dθ (τ = 1: soft from u without logs; else through L) matches the float64 reference."""
    B, H, N, D = 2, 2, 37, 32
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, theta_kind, DT[device], device)
    seed = fresh_seed()
    got = run("triton", q, k, v, theta, grad_out, seed=seed, tau=tau)
    mask, u = contract_mask(theta, (B, H, N, D), seed)
    pre = backend.triton_dcs_mask(theta, seed, shape=(B, H, N, D))
    masks_agree(pre, mask, theta, u, label="pre-pass")
    noise = (torch.log(u.double()) - torch.log1p(-u.double()))
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=tau, mask=pre)
    check_ref(device, got, want, (q, k, v, theta, grad_out, dict(noise=noise.float(), tau=tau)), rtol=5e-5,
              label=f"seeded {theta_kind} tau={tau}")
    assert torch.equal((got[1] != 0).float(), pre) and torch.equal((got[2] != 0).float(), pre)
    again = run("triton", q, k, v, theta, grad_out, seed=seed, tau=tau)
    for name, a, b in zip(NAMES, got, again):
        assert_same_run(device, name, a, b, "same seed,")
    other = run("triton", q, k, v, theta, grad_out, seed=seed, offset=(B * H * N * D) // 4, tau=tau)
    assert not torch.equal(other[0], got[0]), "advancing the offset gave the same output"


@pytest.mark.parametrize("device", DEVICES)
def test_seed_as_tensor_equals_int_seed_and_is_no_kernel_argument(device):
    B, H, N, D = 1, 2, 17, 16
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, "token", DT[device], device)
    seed = fresh_seed()
    a = run("triton", q, k, v, theta, grad_out, seed=seed)
    b = backend.dcs_attention_triton(q, k, v, theta, tau=1.0, training=True, noise=None, scale=D**-0.5,
                                     seed=torch.tensor([seed], dtype=torch.int64, device=device))
    assert torch.equal(a[0], b)
    # No recompilation per seed or offset: they are never kernel arguments, only the RNG pointer.
    from ribkernels.dcs.triton import backward, prepass

    for kern in (prepass.dcs_mask_prepass_kernel, backward.dcs_bwd_kernel):
        names = getattr(kern, "arg_names", None) or kern.fn.arg_names
        assert "RNG" in names and not {"seed", "offset"} & set(names)


@pytest.mark.parametrize("device", DEVICES)
def test_seed_none_draws_on_device_and_follows_manual_seed(device):
    B, H, N, D = 1, 2, 17, 16
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, "channel", DT[device], device)
    torch.manual_seed(1234)
    a = run("triton", q, k, v, theta, grad_out)
    torch.manual_seed(1234)
    b = run("triton", q, k, v, theta, grad_out)
    for name, x, y in zip(NAMES, a, b):
        assert_same_run(device, name, x, y, "manual_seed")
    rng = launch.rng_state(None, 3, device)
    assert rng.device.type == torch.device(device).type and rng.dtype == torch.int64 and rng[1].item() == 3


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, True])
def test_seed_out_of_range_raises_naming_seed(bad):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        launch.rng_state(bad, 0, "cpu")
    with pytest.raises(ValueError, match="offset"):
        launch.rng_state(0, -1, "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_kept_frequency_matches_sigmoid_theta(device):
    """P(M = 1) = P(u > sigmoid(−θ)) = sigmoid(θ). 128 (head, channel) pairs × 1024 samples;
    tolerance 4.5 binomial standard deviations."""
    B, H, N, D = 8, 2, 128, 64
    theta = torch.linspace(-3, 3, H * D, device=device).reshape(1, H, 1, D)
    mask = backend.triton_dcs_mask(theta, fresh_seed(), shape=(B, H, N, D))
    freq = mask.mean(dim=(0, 2), keepdim=True)
    p = torch.sigmoid(theta)
    n = B * N
    sd = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 4.5 * sd + 1.0 / n).all(), f"max dev {(freq - p).abs().max():.3g}"


# ---------------------------------------------------------------------------- kernels' edge cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("theta_kind", ["token", "channel"])
def test_block_size_does_not_change_results(device, theta_kind):
    """Forced configs with different BLOCK_M/BLOCK_N: same out/dq/dk/dv to rounding and the same
    channel dθ (its per-block partial rows are summed whatever the number of blocks)."""
    B, H, N, D = 1, 2, 53, 32
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, theta_kind, DT[device], device)
    rng = launch.rng_state(fresh_seed(), 0, device)
    mask, qm, km = launch.masked_qk_prepass(q, k, theta, None, rng, NZ.MODE_PHILOX)
    res = []
    for cfg in [(16, 32), (64, 16)]:
        out, lse = launch.forward(qm, km, v, scale=D**-0.5, config=cfg)
        grads = launch.backward(grad_out, q, k, v, mask, out, lse, theta, None, rng, scale=D**-0.5, tau=1.0,
                                mode=NZ.MODE_PHILOX, need_dtheta=True, config=cfg)
        res.append([out, *grads])
    for name, a, b in zip(NAMES, *res):
        torch.testing.assert_close(a, b, **close_tol(device), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_eval_mode_mask_is_theta_positive_and_no_theta_grad(device):
    B, H, N, D = 2, 2, 17, 32
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, "token", DT[device], device)
    got = run("triton", q, k, v, theta, grad_out, training=False)
    want = reference_forward_backward(q, k, v, theta, None, grad_out, training=False)
    check_ref(device, got[:4], want[:4], (q, k, v, theta, grad_out, dict(training=False)), label="eval")
    assert got[4] is None or not got[4].any()


@pytest.mark.parametrize("device", DEVICES)
def test_all_zero_and_all_one_masks(device):
    B, H, N, D = 2, 2, 33, 16
    q, k, v, _, _, grad_out = make_case(B, H, N, D, "token", DT[device], device)
    zero_noise = torch.zeros(1, device=device)
    theta = torch.full((1, H, 1, D), -30.0, device=device, dtype=q.dtype)  # all dropped: uniform attention
    got = run("triton", q, k, v, theta, grad_out, noise=zero_noise)
    for name, g in zip(NAMES, got):
        assert torch.isfinite(g).all(), name
    torch.testing.assert_close(got[0], v.mean(dim=2, keepdim=True).expand_as(v), **close_tol(device))
    assert not got[1].any() and not got[2].any()
    check_ref(device, got, reference_forward_backward(q, k, v, theta, zero_noise, grad_out),
              (q, k, v, theta, grad_out, dict(noise=zero_noise)), label="all-zero")
    theta = torch.full((1, H, 1, D), 30.0, device=device, dtype=q.dtype)  # all kept: plain attention
    out = rk.dcs_attention(q, k, v, theta, noise=zero_noise, impl="triton")
    plain = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    tol = dict(rtol=2e-5, atol=2e-6) if device == "cpu" else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(out.double(), plain, **tol)
    seeded = rk.dcs_attention(q, k, v, theta, seed=5, impl="triton")  # Philox mode, θ = 30: all kept
    torch.testing.assert_close(seeded.double(), plain, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_and_stride0_grad(device):
    B, H, N, D = 2, 2, 29, 32
    dt = DT[device]
    qkv = randn(B, N, 3, H, D, device=device, dtype=dt).permute(2, 0, 3, 1, 4)  # timm's layout
    q, k, v = qkv.unbind(0)
    theta = randn(B, N, H, D, device=device, dtype=dt).transpose(1, 2)
    noise = rk.logistic_noise((B, N, H, D), fresh_seed(), device=device).transpose(1, 2)
    grad_out = randn(B, N, H, D, device=device, dtype=dt).transpose(1, 2)
    assert not q.is_contiguous() and not theta.is_contiguous() and not grad_out.is_contiguous()
    got = run("triton", q, k, v, theta, grad_out, noise=noise)
    check_ref(device, got, reference_forward_backward(q, k, v, theta, noise, grad_out),
              (q, k, v, theta, grad_out, dict(noise=noise)), label="non-contiguous")
    qq, kk, vv, tt = (t.detach().clone().requires_grad_(True) for t in (q, k, v, theta))
    rk.dcs_attention(qq, kk, vv, tt, noise=noise, impl="triton").sum().backward()  # dout strides all 0
    ones = torch.ones(B, H, N, D, device=device, dtype=dt).expand(B, H, N, D)
    want = reference_forward_backward(q, k, v, theta, noise, ones)
    check_ref(device, [qq.grad, kk.grad, vv.grad, tt.grad], list(want[1:]), (q, k, v, theta, ones, dict(noise=noise)),
              label="sum", first=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("theta_kind", ["token", "channel"])
def test_outputs_are_fully_written(device, theta_kind, monkeypatch):
    """Every buffer the launchers allocate starts as NaN (or 0x5A bytes): any element a kernel
    forgets to write — including the dθ partial rows past the grid — shows up."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(0x5A)

    monkeypatch.setattr(launch.torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(launch.torch, "empty_like", lambda *a, **kw: poison(real_empty_like(*a, **kw)))
    B, H, N, D = 1, 3, 71, 16
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, theta_kind, DT[device], device)
    seed = fresh_seed()
    got = run("triton", q, k, v, theta, grad_out, seed=seed)
    monkeypatch.undo()
    mask, u = contract_mask(theta, (B, H, N, D), seed)
    noise = torch.log(u.double()) - torch.log1p(-u.double())
    pre = backend.triton_dcs_mask(theta, seed, shape=(B, H, N, D))
    check_ref(device, got, reference_forward_backward(q, k, v, theta, noise, grad_out, mask=pre),
              (q, k, v, theta, grad_out, dict(noise=noise.float())), rtol=5e-5, label="poisoned")


@pytest.mark.parametrize("device", DEVICES)
def test_theta_dtype_other_than_q(device):
    B, H, N, D = 1, 2, 17, 16
    q, k, v, _, noise, grad_out = make_case(B, H, N, D, "channel", DT[device], device)
    theta = randn(1, H, 1, D, device=device, dtype=torch.float64)
    got = run("triton", q, k, v, theta, grad_out, noise=noise)
    assert got[4].dtype == torch.float64
    check_ref(device, got, reference_forward_backward(q, k, v, theta.float(), noise, grad_out),
              (q, k, v, theta, grad_out, dict(noise=noise)), label="θ fp64")


@pytest.mark.parametrize("device", DEVICES)
def test_unmasked_twin_is_plain_attention(device):
    B, H, N, D = 1, 2, 33, 32
    q, k, v, _, _, grad_out = make_case(B, H, N, D, "token", DT[device], device)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = backend.attention_unmasked(*leaves)
    out.backward(grad_out)
    ref = [t.double().requires_grad_(True) for t in (q, k, v)]
    want = F.scaled_dot_product_attention(*ref)
    want.backward(grad_out.double())
    tol = dict(rtol=2e-5, atol=2e-6) if device == "cpu" else dict(rtol=1e-2, atol=1e-2)
    for g, w in zip([out] + [t.grad for t in leaves], [want] + [t.grad for t in ref]):
        torch.testing.assert_close(g.double(), w.detach(), **tol)


# ---------------------------------------------------------------------------- bad input / dispatch


def _forbid_launch(monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("a kernel was launched")

    for name in ("forward", "backward", "mask_prepass", "flat_noise"):
        monkeypatch.setattr(launch, name, boom)


@pytest.mark.parametrize("what", ["head_dim", "dtype", "bf16_cpu"])
def test_unsupported_input_raises_dispatch_error_without_launching(monkeypatch, what):
    if not launch.INTERPRET:
        pytest.skip("CPU dispatch under the interpreter")
    B, H, N = 1, 2, 9
    D = 8 if what == "head_dim" else 16
    dtype = {"head_dim": torch.float32, "dtype": torch.float64, "bf16_cpu": torch.bfloat16}[what]
    q, k, v = (randn(B, H, N, D, device="cpu", dtype=dtype) for _ in range(3))
    theta = randn(1, H, 1, D, device="cpu", dtype=dtype)
    _forbid_launch(monkeypatch)
    expected = {"head_dim": "head dim D=8", "dtype": "dtype torch.float64", "bf16_cpu": "bfloat16"}[what]
    with pytest.raises(ValueError, match="triton") as info:
        rk.dcs_attention(q, k, v, theta, impl="triton", seed=1)
    assert expected in str(info.value) and "sdpa: can run it" in str(info.value)


def test_interpreter_loops_over_a_scalar_kernel_argument():
    """``range(0, N, BLOCK)`` over a scalar argument runs under the interpreter: triton 3.6's
    ``tensor.__index__`` fails on NumPy >= 2.4 unless ``interpreter_compat.fix_tensor_index`` (applied
    by the launcher) is in place."""
    if not launch.INTERPRET:
        pytest.skip("the Triton interpreter only")
    import triton
    import triton.language as tl

    @triton.jit
    def count_blocks(OUT, N, BLOCK: tl.constexpr):
        blocks = 0
        for start in range(0, N, BLOCK):
            blocks += 1
        tl.store(OUT + tl.program_id(0), blocks)

    out = torch.zeros(2, dtype=torch.int32)
    count_blocks[(2,)](out, 37, BLOCK=16)
    assert out.tolist() == [3, 3]


def test_why_not_reasons_and_never_launches(monkeypatch):
    _forbid_launch(monkeypatch)
    meta = torch.empty(1, 2, 5, 32, device="meta")
    assert any("device meta" in r for r in backend.why_not(meta, meta, meta, meta, None))
    monkeypatch.setattr(launch, "INTERPRET", False)
    cpu = torch.randn(1, 2, 5, 32)
    assert any("TRITON_INTERPRET" in r for r in backend.why_not(cpu, cpu, cpu, cpu, None))
    big = torch.empty(2**16, 1, 1, 16, device="meta")
    assert any("65535" in r for r in backend.why_not(big, big, big, big[:1], None))
    huge = torch.empty(8, 16, 2**16, 256, device="meta")  # > 2**31 elements: fine (int64), D is not
    reasons = backend.why_not(huge, huge, huge, huge[:1], None)
    assert any("D=256" in r for r in reasons) and not any("2**31" in r for r in reasons)


# ---------------------------------------------------------------------------- custom op / tracing


@pytest.mark.parametrize("device", DEVICES)
def test_custom_op_opcheck(device):
    B, H, N, D = 1, 2, 5, 16
    q, k, v = (randn(B, H, N, D, device=device, dtype=DT[device]).requires_grad_(True) for _ in range(3))
    theta = randn(1, H, 1, D, device=device, dtype=DT[device]).requires_grad_(True)
    noise = rk.logistic_noise((B, H, N, D), 3, device=device)
    rng = launch.rng_state(11, 0, device)
    op = torch.ops.ribkernels.dcs_attention_fwd
    torch.library.opcheck(op.default, (q, k, v, theta, noise, rng, 0.5, D**-0.5, True))
    torch.library.opcheck(op.default, (q, k, v, theta, None, rng, 1.0, 0.3, True))
    torch.library.opcheck(op.default, (q, k, v, theta, noise, rng, 0.5, D**-0.5, True, True))  # + dsoft
    out, lse, mask, dsoft = op(q.detach(), k.detach(), v.detach(), theta.detach(), noise, rng, 0.5, D**-0.5,
                               True, True)
    assert dsoft.shape == (B, H, N, D)
    for ds in (dsoft, None):  # the saved dθ factor, or regenerated
        torch.library.opcheck(torch.ops.ribkernels.dcs_attention_bwd.default,
                              (randn(B, H, N, D, device=device, dtype=DT[device]), q.detach(), k.detach(),
                               v.detach(), theta.detach(), noise, rng, out, lse, mask, 0.5, D**-0.5, True, True,
                               ds),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_traces_the_op(device):
    B, H, N, D = 1, 2, 17, 16
    q, k, v, theta, noise, grad_out = make_case(B, H, N, D, "token", DT[device], device)

    def f(q, k, v, theta):
        return rk.dcs_attention(q, k, v, theta, noise=noise, impl="triton", tau=0.8, check_nan=False)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, theta)]
    out = compiled(*leaves)
    out.backward(grad_out)
    want = run("triton", q, k, v, theta, grad_out, noise=noise, tau=0.8)
    for name, g, w in zip(NAMES, [out.detach()] + [t.grad for t in leaves], want):
        assert_same_run(device, name, g, w, "compiled")


def test_eval_mode_exports_as_the_sdpa_composite():
    """In eval mode under torch.export the op decomposes to the SDPA composite (no custom op)."""
    B, H, N, D = 1, 2, 9, 16
    q, k, v, theta, _, _ = make_case(B, H, N, D, "channel", torch.float32, "cpu")

    class M(torch.nn.Module):
        def forward(self, q, k, v, theta):
            return backend.dcs_attention_triton(q, k, v, theta, tau=1.0, training=False, noise=None,
                                                scale=D**-0.5)

    ep = torch.export.export(M(), (q, k, v, theta))
    assert "ribkernels" not in str(ep.graph)
    want = reference_forward_backward(q, k, v, theta, None, torch.zeros_like(q), training=False)[0]
    torch.testing.assert_close(ep.module()(q, k, v, theta).double(), want, rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("theta_kind", ["token", "channel"])
def test_transreid_shape_within_twice_eager_error(dtype, theta_kind):
    B, H, N, D = 64, 12, 211, 64
    q, k, v, theta, noise, grad_out = make_case(B, H, N, D, theta_kind, dtype, "cuda")
    got = run("triton", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=0.7)
    eager = run("eager", q, k, v, theta, grad_out, noise=noise, tau=0.7)
    check_low_precision(got, eager, want, label=f"{dtype} {theta_kind}", slack=SLACK[dtype])


@pytest.mark.gpu
def test_transreid_shape_autotuned_seeded(monkeypatch):
    """Default path (autotuned configs, Philox pre-pass): reproducible, the contract's mask,
    dq/dk exactly zero off the mask, within 2× eager's error."""
    monkeypatch.setenv("RIBKERNELS_DCS_AUTOTUNE", "1")
    B, H, N, D = 64, 12, 211, 64
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, "token", torch.float16, "cuda")
    seed = 987654321987
    a = run("triton", q, k, v, theta, grad_out, seed=seed)
    b = run("triton", q, k, v, theta, grad_out, seed=seed)
    for name, x, y in zip(NAMES, a, b):
        assert_same_run("cuda", name, x, y, "same seed,")
    mask, u = contract_mask(theta, (B, H, N, D), seed)
    pre = backend.triton_dcs_mask(theta, seed, shape=(B, H, N, D))
    masks_agree(pre, mask, theta, u, label="pre-pass")
    assert not ((a[1] != 0) & (pre == 0)).any() and not ((a[2] != 0) & (pre == 0)).any()
    noise = torch.log(u.double()) - torch.log1p(-u.double())
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, mask=pre)
    eager = run("eager", q, k, v, theta, grad_out, noise=noise.float())
    check_low_precision(a[:4], eager[:4], want[:4], label="seeded fp16", slack=SLACK[torch.float16])


@pytest.mark.gpu
def test_no_recompile_across_seeds_and_offsets():
    from ribkernels.dcs.triton import prepass

    B, H, N, D = 2, 4, 77, 64
    q, k, v, theta, _, grad_out = make_case(B, H, N, D, "token", torch.float16, "cuda")
    run("triton", q, k, v, theta, grad_out, seed=16)
    kern = prepass.dcs_mask_prepass_kernel
    count = lambda: sum(len(c[0]) if isinstance(c, tuple) else len(c) for c in kern.device_caches.values())
    before = count()
    for seed, off in [(1, 0), (17, 5), (2**40 + 3, 2**33), (32, 1)]:
        run("triton", q, k, v, theta, grad_out, seed=seed, offset=off)
    assert count() == before, "a new seed or offset compiled a new pre-pass kernel"


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_device_guard_launches_on_the_inputs_device():
    B, H, N, D = 1, 2, 33, 64
    with torch.cuda.device(0):
        q, k, v, theta, noise, grad_out = make_case(B, H, N, D, "token", torch.float16, "cuda:1")
        got = run("triton", q, k, v, theta, grad_out, noise=noise)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out)
    eager = run("eager", q, k, v, theta, grad_out, noise=noise)
    check_low_precision(got, eager, want, label="cuda:1", slack=SLACK[torch.float16])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,scale,config", [(32, 0.3, (16, 16)), (37, 0.3, (16, 16)), (37, -0.4, (16, 16)),
                                            (5, 0.0, (16, 16)), (69, 0.3, (16, 32)), (83, 0.3, (16, 32))])
def test_forward_full_and_peeled_key_blocks_any_scale(device, N, scale, config):
    """The forward's unmasked full key blocks and peeled partial last block (N a multiple of the
    key block or not; 69 = 2·32 + 5: a half-width 16-key last tile, 83 = 2·32 + 19: a full-width
    one), and a negative or zero scale (the launcher flips q's sign for < 0: the
    kernel scales the row max of raw scores), against float64 softmax attention with its LSE."""
    B, H, D = 1, 2, 16
    q, k, v = (randn(B, H, N, D, device=device, dtype=DT[device]) for _ in range(3))
    out, lse = launch.forward(q, k, v, scale=scale, config=config)
    s = scale * q.double() @ k.double().transpose(-1, -2)
    want = torch.softmax(s, -1) @ v.double()
    assert max_err(out, want) <= 1e-5 * max(want.abs().max().item(), 1.0)
    assert max_err(lse, torch.logsumexp(s, -1) / math.log(2)) <= 1e-5 * max(s.abs().max().item(), 1.0)
