"""The Triton DCS-Attention's randomness and mask pre-pass: noise contract v2 (Philox bits, uniforms,
offsets), the pre-pass's mask and masked operands, the seed and offset as device tensors, the kept
frequency, and the Philox-mode run end to end against the contract reference."""

import pytest
import torch

pytest.importorskip("triton")

import ribkernels as rk  # noqa: E402
from dcs_reference import reference_forward_backward  # noqa: E402
from dcs_triton_common import (  # noqa: E402,F401 (fixed_configs: the autouse fixture)
    DEVICES, DT, NAMES, THETA_SHAPES, assert_same_run, check_ref, contract_mask, fixed_configs,
    fresh_seed, make_case, masks_agree, randn, run)
from ribkernels.dcs.philox import contract_uniform  # noqa: E402
from ribkernels.dcs.triton import backend, launch  # noqa: E402
from ribkernels.dcs.triton import noise as NZ  # noqa: E402


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
    second pre-pass program (N = 300 tokens, 256 per program at D = 16); with ``mask_q=False`` the
    same mask, k⊙M and dθ factor without q⊙M."""
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
    # without q⊙M (the forward multiplies the mask into raw q): the same mask and k⊙M, no q⊙M
    mask2, no_qm, km2 = launch.masked_qk_prepass(q, k, theta, noise, rng, mode, mask_q=False)
    assert no_qm is None and torch.equal(mask2, mask) and torch.equal(km2, km)
    if mode != NZ.MODE_EVAL:  # and the same dθ factor
        ds = launch.masked_qk_prepass(q, k, theta, noise, rng, mode, tau=0.7)[3]
        ds2 = launch.masked_qk_prepass(q, k, theta, noise, rng, mode, tau=0.7, mask_q=False)[3]
        assert ds.shape == q.shape and torch.equal(ds2, ds)


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

