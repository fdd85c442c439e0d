"""The Triton DCS-Attention (mask pre-pass + FlashAttention-2-shaped kernels) against the float64
formulas of docs/design.md §2 and the sdpa backend: the public op end to end, the forward's paths
(q⊙M from the pre-pass, or raw q with the mask multiplied in its prologue), the kernels' edge cases.

Parametrised over devices (``dcs_triton_common``): ``cpu`` runs the kernels under
``TRITON_INTERPRET=1`` on small shapes, fp32/fp16; ``cuda`` (marked ``gpu``) adds bf16 and
TransReID's shapes (B=64, H=12, N=211, D=64) with the autotuned configs.
"""
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import ribkernels as rk  # noqa: E402
from dcs_reference import reference_forward_backward  # noqa: E402
from dcs_triton_common import (  # noqa: E402,F401 (fixed_configs: the autouse fixture)
    DEVICES, DT, NAMES, SLACK, assert_same_run, check_low_precision, check_ref, close_tol,
    contract_mask, fixed_configs, fresh_seed, make_case, masks_agree, max_err, randn, run)
from ribkernels.dcs.triton import backend, launch  # noqa: E402
from ribkernels.dcs.triton import noise as NZ  # noqa: E402


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
                                mode=NZ.MODE_PHILOX, need_dmask_logits=True, config=cfg)
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,D,mode", [(1, 16, NZ.MODE_PHILOX), (17, 64, NZ.MODE_NOISE), (211, 64, NZ.MODE_PHILOX),
                                      (577, 16, NZ.MODE_EVAL), (53, 128, NZ.MODE_PHILOX)])
def test_forward_multiplying_the_mask_into_raw_q_equals_the_premasked_forward(device, N, D, mode):
    """``masked_qk_prepass(mask_q=False)`` + ``forward(q, k⊙M, v, q_mask=mask)`` (q⊙M made in the
    forward's prologue, never written) gives the same bits as the forward on the pre-pass's q⊙M, and
    matches float64 attention of (q⊙M)(k⊙M)ᵀ; a NaN of q at a dropped element still poisons its row
    (x·0, as the pre-pass and the PyTorch backends)."""
    B, H = 1, 2
    dt = DT[device]
    q, k, v = (randn(B, H, N, D, device=device, dtype=dt) for _ in range(3))
    theta = 0.5 * randn(B, H, N, D, device=device, dtype=dt)
    noise = rk.logistic_noise((B, H, N, D), fresh_seed(), device=device) if mode == NZ.MODE_NOISE else None
    rng = launch.rng_state(fresh_seed(), 0, device)
    dropped = (launch.mask_prepass(theta, noise, q.shape, rng, mode, dt)[0, 1, N // 2] == 0).nonzero()
    assert len(dropped) and len(dropped) < D  # the test can fail: some kept, some dropped
    q[0, 1, N // 2, dropped[0, 0]] = float("nan")  # at a dropped element: NaN·0 turns the row NaN
    mask, qm, km = launch.masked_qk_prepass(q, k, theta, noise, rng, mode)
    mask2, no_qm, km2 = launch.masked_qk_prepass(q, k, theta, noise, rng, mode, mask_q=False)
    assert no_qm is None and torch.equal(mask2, mask) and torch.equal(km2, km)
    scale = D**-0.5
    want_out, want_lse = launch.forward(qm, km, v, scale=scale)
    got_out, got_lse = launch.forward(q, km, v, scale=scale, q_mask=mask)
    for name, g, w in (("out", got_out, want_out), ("lse", got_lse, want_lse)):
        assert torch.equal(torch.isnan(g), torch.isnan(w)) and torch.equal(g.nan_to_num(), w.nan_to_num()), name
    assert torch.isnan(got_out[0, 1, N // 2]).all() and not torch.isnan(got_out[0, 0]).any()
    s = scale * (q.double() * mask.double()) @ (k.double() * mask.double()).transpose(-1, -2)
    ref = torch.softmax(s, -1) @ v.double()
    tol = (1e-5 if device == "cpu" else 2e-3) * max(ref[0, 0].abs().max().item(), 1.0)
    assert max_err(got_out[0, 0], ref[0, 0]) <= tol
    negative = launch.forward(q, km, v, scale=-scale, q_mask=mask)[0]  # the launcher negates q: mask kept
    ref_neg = torch.softmax(-s, -1) @ v.double()
    assert max_err(negative[0, 0], ref_neg[0, 0]) <= tol


def test_forward_refuses_a_q_mask_that_is_not_the_prepass_mask(monkeypatch):
    """A wrong ``q_mask`` is refused before any launch, naming the argument and what it got."""
    monkeypatch.setattr(launch, "_launch", lambda *a, **kw: pytest.fail("a kernel was launched"))
    q = torch.randn(1, 2, 5, 16)
    wrong = {r"shape \(1, 2, 5, 8\)": torch.ones(1, 2, 5, 8),
             "dtype torch.float64": torch.ones(1, 2, 5, 16, dtype=torch.float64),
             "contiguous=False": torch.ones(1, 2, 16, 5).transpose(-1, -2)}
    for what, bad in wrong.items():
        with pytest.raises(ValueError, match="q_mask must be a contiguous .*" + what):
            launch.forward(q, q, q, scale=0.25, q_mask=bad)
