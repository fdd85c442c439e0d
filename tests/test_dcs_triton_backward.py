"""The Triton DCS-Attention backward — one program per head (``backward.dcs_bwd_kernel``: delta,
dK/dV, dQ by plain load-add-store into a per-head float32 scratch, dθ, in one launch) — against
the float64 formulas of docs/design.md §2, its determinism, and the retired path selection.

``cpu`` runs the kernels under ``TRITON_INTERPRET=1`` (set by conftest), fp32 (and one fp16 case);
``cuda`` (marked ``gpu``) runs fp16. Forced small blocks make several key blocks add into the same
dQ rows and leave partial blocks at the end (N not a multiple of the block, or N < the block).
"""
import warnings

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import ribkernels as rk  # noqa: E402
from dcs_reference import reference_forward_backward  # noqa: E402
from ribkernels.dcs.philox import contract_uniform  # noqa: E402
from ribkernels.dcs.triton import launch  # noqa: E402
from ribkernels.dcs.triton import noise as NZ  # noqa: E402
from ribkernels.dcs.triton.backward import lse_delta_cols  # noqa: E402

DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not launch.INTERPRET, reason="needs TRITON_INTERPRET=1")),
           pytest.param("cuda", marks=pytest.mark.gpu)]
DT = {"cpu": torch.float32, "cuda": torch.float16}
NAMES = ["out", "dq", "dk", "dv", "dtheta"]


@pytest.fixture(autouse=True)
def _fixed_configs(monkeypatch):
    monkeypatch.setenv("RIBKERNELS_DCS_AUTOTUNE", "0")
    monkeypatch.delenv("RIBKERNELS_DCS_BACKWARD", raising=False)


def fresh_seed() -> int:
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def run_backward(q, k, v, theta, grad_out, *, mode, noise=None, seed=0, tau=1.0, config=None, runs=1,
                 saved_dsoft=False, q_mask_in_forward=False):
    """``runs`` × [out, dq, dk, dv, dθ] from the launcher (same mask, same forward), and the mask.
    ``saved_dsoft``: the pre-pass saves dθ's factor and the backward reads it (the public op's path),
    else the backward regenerates it. ``q_mask_in_forward``: the pre-pass writes no q⊙M, the forward
    multiplies the mask into raw q (``forward(..., q_mask=)``)."""
    D = q.shape[-1]
    rng = launch.rng_state(seed, 0, q.device)
    dsoft = None
    if saved_dsoft and mode != NZ.MODE_EVAL:
        mask, qm, km, dsoft = launch.masked_qk_prepass(q, k, theta, noise, rng, mode, tau=tau,
                                                       mask_q=not q_mask_in_forward)
    else:
        mask, qm, km = launch.masked_qk_prepass(q, k, theta, noise, rng, mode, mask_q=not q_mask_in_forward)
    if q_mask_in_forward:
        assert qm is None
        out, lse = launch.forward(q, km, v, scale=D**-0.5, config=config, q_mask=mask)
    else:
        out, lse = launch.forward(qm, km, v, scale=D**-0.5, config=config)
    res = [[out, *launch.backward(grad_out, q, k, v, mask, out, lse, theta, noise, rng, scale=D**-0.5, tau=tau,
                                  mode=mode, need_dmask_logits=mode != NZ.MODE_EVAL, config=config, dsoft=dsoft)]
           for _ in range(runs)]
    return res, mask


def check_close(got, want, rtol, label):
    for name, g, w in zip(NAMES, got, want):
        if g is None:  # no dθ (eval): the reference's is zero
            assert name == "dtheta" and (w is None or not w.any()), f"{label} {name}: missing"
            continue
        assert g.shape == w.shape, f"{label} {name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        assert torch.isfinite(g).all(), f"{label} {name} not finite"
        err = (g.double() - w.double()).abs().max().item()
        tol = rtol * max(w.abs().max().item(), 0.1)
        assert err <= tol, f"{label} {name}: err {err:.3g} > {tol:.3g}"


# (B, H, N, D, θ shape, mode, forced (BLOCK_M, BLOCK_N) or None for the launcher's choice). The
# interpreter costs ~10 ms per loop iteration: N = 211 and 577 run with big blocks (577 = 4·128 + 65).
CASES = [
    (1, 1, 1, 16, "token", "seed", (16, 16)),       # N = 1: one row, every block mostly padding
    (2, 2, 17, 32, "token", "noise", (16, 16)),     # 2 × 2 blocks, the last holding one token
    (1, 2, 37, 64, "channel", "seed", (32, 16)),    # broadcast θ [1, H, 1, D]: in-kernel sums
    (2, 1, 11, 64, "token", "seed", (16, 16)),      # N < every block
    (1, 1, 33, 128, "token", "noise", (16, 32)),
    (1, 2, 29, 32, "token", "eval", (16, 16)),      # eval: M = 1[θ > 0], no dθ
    (1, 1, 211, 64, "channel", "noise", (64, 64)),  # 211 = 3·64 + 19, the TransReID length
    (1, 1, 577, 16, "token", "seed", None),         # the interpreter's own 128-blocks: 5 × 5, 65 rows last
    (1, 1, 70, 32, "token", "seed", None),          # one partial 128-block
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("saved_dsoft,q_mask_in_forward", [(False, False), (True, False), (True, True)],
                         ids=["dsoft-regenerated", "dsoft-saved", "dsoft-saved-q-mask-in-forward"])
@pytest.mark.parametrize("B,H,N,D,theta_kind,mode,config", CASES)
def test_backward_matches_float64_reference(device, B, H, N, D, theta_kind, mode, config, saved_dsoft,
                                            q_mask_in_forward):
    """Every case through both forwards: on the pre-pass's q⊙M, and on raw q with the mask multiplied
    in the forward's prologue (with dθ's factor saved: the path that writes the fewest bytes)."""
    if saved_dsoft and (mode == "eval" or N > 200) and not q_mask_in_forward:
        pytest.skip("eval has no dθ; the long cases run once per forward (interpreter time)")
    dt = DT[device]
    q, k, v, grad_out = (torch.randn(B, H, N, D, device=device, dtype=dt) for _ in range(4))
    theta = torch.randn(*((B, H, N, D) if theta_kind == "token" else (1, H, 1, D)), device=device, dtype=dt)
    seed, noise, tau = fresh_seed(), None, 0.7
    if mode == "noise":
        noise = rk.logistic_noise(tuple(theta.shape), seed=seed, device=device)
        kmode = NZ.MODE_NOISE
    elif mode == "seed":
        kmode, tau = NZ.MODE_PHILOX, 1.0  # τ = 1: soft from u without logs
    else:
        kmode = NZ.MODE_EVAL
    res, mask = run_backward(q, k, v, theta, grad_out, mode=kmode, noise=noise, seed=seed, tau=tau, config=config,
                             saved_dsoft=saved_dsoft, q_mask_in_forward=q_mask_in_forward)
    if mode == "seed":
        u = contract_uniform(B * H * N * D, seed, 0, device=device).reshape(B, H, N, D)
        ref_noise = torch.log(u.double()) - torch.log1p(-u.double())
        want = reference_forward_backward(q, k, v, theta, ref_noise, grad_out, tau=tau, mask=mask)
    else:
        want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=tau, training=mode != "eval")
    rtol = 5e-5 if device == "cpu" else 2e-2
    label = f"N={N} D={D} {theta_kind} {mode} cfg={config} saved_dsoft={saved_dsoft} q_mask={q_mask_in_forward}"
    got = res[0]
    check_close(got, want, rtol, label)
    keep = mask.expand(q.shape) != 0
    assert not got[1][~keep].any() and not got[2][~keep].any(), f"{label}: dq/dk nonzero off the mask"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("theta_kind", ["token", "channel"])
def test_backward_is_bit_identical_across_runs(device, theta_kind):
    """No atomics: two launches on the same inputs give the same bits (dq: key blocks summed in a
    fixed order; dθ: per-head sums in a fixed order), with several key blocks adding into each dQ row."""
    B, H, N, D = 2, 2, 45, 32
    dt = DT[device]
    q, k, v, grad_out = (torch.randn(B, H, N, D, device=device, dtype=dt) for _ in range(4))
    theta = torch.randn(*((B, H, N, D) if theta_kind == "token" else (1, H, 1, D)), device=device, dtype=dt)
    res, _ = run_backward(q, k, v, theta, grad_out, mode=NZ.MODE_PHILOX, seed=fresh_seed(), config=(16, 16),
                          runs=2)
    for name, a, b in zip(NAMES, *res):
        assert torch.equal(a, b), f"{theta_kind}: two runs, different {name}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,tau", [(NZ.MODE_PHILOX, 1.0), (NZ.MODE_PHILOX, 0.6), (NZ.MODE_NOISE, 0.7)])
def test_saved_dsoft_is_the_regenerated_factor(device, mode, tau):
    """The pre-pass's saved soft·(1 − soft)/τ (float16 for 16-bit inputs, else q's float32) gives the
    dθ the backward's regeneration gives: same elements, same formula (every τ branch)."""
    B, H, N, D = 1, 2, 23, 16
    dt = DT[device]
    q, k, v, theta, grad_out = (torch.randn(B, H, N, D, device=device, dtype=dt) for _ in range(5))
    noise = rk.logistic_noise((B, H, N, D), seed=5, device=device) if mode == NZ.MODE_NOISE else None
    kw = dict(mode=mode, noise=noise, seed=fresh_seed(), tau=tau, config=(16, 16))
    regen, _ = run_backward(q, k, v, theta, grad_out, **kw)
    saved, _ = run_backward(q, k, v, theta, grad_out, saved_dsoft=True, **kw)
    for name, a, b in zip(NAMES, regen[0], saved[0]):
        tol = (1e-6 if dt == torch.float32 else 2e-3) * max(a.abs().max().item(), 1e-3)
        assert (a.double() - b.double()).abs().max().item() <= tol, name


def test_dsoft_of_the_wrong_shape_is_refused():
    q = torch.randn(1, 1, 5, 16)
    out, lse = launch.forward(q, q, q, scale=0.25)
    with pytest.raises(ValueError, match=r"dsoft must be a contiguous \[B, H, N, D\]"):
        launch.backward(q, q, q, q, torch.ones_like(q), out, lse, q, None, launch.rng_state(1, 0, "cpu"),
                        scale=0.25, tau=1.0, mode=NZ.MODE_PHILOX, need_dmask_logits=True, dsoft=torch.ones(1, 1, 5, 8))


@pytest.mark.parametrize("device", DEVICES)
def test_float16_per_token_theta_within_twice_eager_error(device):
    """fp16, per-token θ: dM_k = dk_raw⊙k passes through dθ's buffer in θ's dtype (module doc of
    ``backward``); still within the 2× same-precision eager error of docs/design.md §5."""
    B, H, N, D = 1, 2, 45, 32
    q, k, v, theta, grad_out = (torch.randn(B, H, N, D, device=device, dtype=torch.float16) for _ in range(5))
    noise = rk.logistic_noise((B, H, N, D), seed=fresh_seed(), device=device)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=0.7)
    res, _ = run_backward(q, k, v, theta, grad_out, mode=NZ.MODE_NOISE, noise=noise, tau=0.7, config=(16, 32))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, theta)]
    out = rk.dcs_attention(*leaves, noise=noise, tau=0.7, impl="eager")
    out.backward(grad_out)
    eager = [out.detach()] + [t.grad for t in leaves]
    for name, g, e, w in zip(NAMES, res[0], eager, want):
        err, err_eager = (g.double() - w).abs().max().item(), (e.double() - w).abs().max().item()
        assert err <= 2 * err_eager + 1e-3 * w.abs().max().item(), f"{name}: {err:.3g} vs eager {err_eager:.3g}"


# ---------------------------------------------------------------------------- launches and the retired paths


def test_retired_backward_paths_are_validated_and_ignored(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert launch.backward_path() == "head"  # nothing set: no warning
    for path in ("fused", "split", "auto"):
        with pytest.warns(DeprecationWarning, match="path="):
            assert launch.backward_path(path) == "head"
    with pytest.raises(ValueError, match=r"path must be one of .* got 'fast'"):
        launch.backward_path("fast")
    monkeypatch.setenv("RIBKERNELS_DCS_BACKWARD", "split")
    with pytest.warns(DeprecationWarning, match="RIBKERNELS_DCS_BACKWARD"):
        assert launch.backward_path() == "head"
    monkeypatch.setenv("RIBKERNELS_DCS_BACKWARD", "atomic")
    with pytest.raises(ValueError, match=r"RIBKERNELS_DCS_BACKWARD must be one of .* got 'atomic'"):
        launch.backward_path()


def test_bad_backward_env_raises_before_any_launch(monkeypatch):
    if not launch.INTERPRET:
        pytest.skip("CPU dispatch under the interpreter")

    def boom(*a, **kw):
        raise AssertionError("a kernel was launched")

    B, H, N, D = 1, 1, 5, 16
    q, k, v, theta = (torch.randn(B, H, N, D) for _ in range(4))
    out, lse = launch.forward(q, k, v, scale=0.25)
    monkeypatch.setattr(launch, "_launch", boom)
    monkeypatch.setenv("RIBKERNELS_DCS_BACKWARD", "fast")
    with pytest.raises(ValueError, match="RIBKERNELS_DCS_BACKWARD"):
        launch.backward(q, q, k, v, torch.ones_like(q), out, lse, theta, None, None, scale=0.25, tau=1.0,
                        mode=NZ.MODE_EVAL, need_dmask_logits=False)


@pytest.mark.parametrize("device", DEVICES)
def test_public_op_runs_one_backward_launch_per_step(device, monkeypatch):
    """fwd + bwd = pre-pass, forward, one backward launch (no delta, memset or finishing kernel),
    also under ``torch.use_deterministic_algorithms`` (the backward is deterministic)."""
    launched = []
    real_launch = launch._launch
    monkeypatch.setattr(launch, "_launch", lambda kernel, *a, **kw: (launched.append(kernel), real_launch(kernel, *a, **kw)))
    B, H, N, D = 1, 2, 19, 16
    q, k, v, theta = (torch.randn(B, H, N, D, device=device, dtype=DT[device]).requires_grad_(True) for _ in range(4))

    def fwd_bwd():
        launched.clear()
        rk.dcs_attention(q, k, v, theta, impl="triton", seed=3).sum().backward()
        return list(launched)

    assert fwd_bwd() == ["fwd", "bwd"]
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert fwd_bwd() == ["fwd", "bwd"]
    finally:
        torch.use_deterministic_algorithms(was)


def test_backward_grid_is_one_program_per_head(monkeypatch):
    launched = {}

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kw: launched.update(kw, grid=grid)

    monkeypatch.setattr(launch, "INTERPRET", False)
    monkeypatch.setitem(launch.KERNELS, "bwd", Recorder())
    q = torch.empty(3, 5, 211, 64, dtype=torch.bfloat16)
    launch._launch("bwd", q, {}, dict(MASKED=True), None)
    assert launched["grid"] == (15,)
    assert (launched["BLOCK_M"], launched["BLOCK_N"], launched["num_warps"], launched["num_stages"]) == \
        launch.SHIPPED["bwd"][64][0]


def test_backward_kernel_takes_the_rng_as_a_pointer():
    """No recompilation per seed or offset: they are never kernel arguments."""
    from ribkernels.dcs.triton import backward

    kern = backward.dcs_bwd_kernel
    names = getattr(kern, "arg_names", None) or kern.fn.arg_names
    assert "RNG" in names and not {"seed", "offset"} & set(names)


@triton.jit
def _lse_delta_copy_kernel(LSE, DELTA, OUT, N, BLOCK_M: tl.constexpr, THREADS: tl.constexpr):
    """OUT[bh, m] = (lse, delta) as ``lse_delta_cols`` reads them for the block of rows m."""
    bh64 = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    lse, delta = lse_delta_cols(LSE, DELTA, bh64 * N, offs_m, offs_m < N, BLOCK_M, THREADS)
    out = OUT + (bh64 * tl.num_programs(0) * BLOCK_M + offs_m) * 2
    tl.store(out, lse)
    tl.store(out + 1, delta)


@pytest.mark.skipif(not launch.INTERPRET, reason="needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("block_m", [16, 32, 64, 128])
@pytest.mark.parametrize("threads", [1024, 256, 0])
def test_lse_delta_cols_reads_both_rows_of_a_block(block_m, threads):
    """``backward.lse_delta_cols`` (the loops' LSE/DELTA read; ``threads`` > 0: one
    [BLOCK_M, threads // BLOCK_M] load split in registers) returns row ``bh`` of LSE and of DELTA at the block's rows, 0 past N."""
    bh, n = 3, 2 * block_m + 5  # a partial last block
    lse, delta = torch.randn(bh, n), torch.randn(bh, n)
    nb = triton.cdiv(n, block_m)
    out = torch.full((bh, nb * block_m, 2), float("nan"))
    _lse_delta_copy_kernel[(nb, bh)](lse, delta, out, n, BLOCK_M=block_m, THREADS=threads)
    want = torch.zeros(bh, nb * block_m, 2)
    want[:, :n, 0], want[:, :n, 1] = lse, delta
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_head_dim_24_is_refused_by_the_triton_backend():
    """D must be a power of two in 16..128 (the kernels' tiles are ``tl.arange(0, D)``): D = 24 gets a
    reason naming it, before anything launches (``impl="auto"`` then takes another backend)."""
    from ribkernels.dcs.triton import backend

    q = torch.empty(1, 2, 17, 24)
    reasons = backend.why_not(q, q, q, torch.empty(1, 2, 1, 24), None)
    assert any("head dim D=24" in r for r in reasons), reasons


@pytest.mark.parametrize("theta_kind", ["token", "channel"])
def test_backward_reads_the_saved_dsoft(theta_kind):
    """A dsoft of zeros gives dθ = 0 and leaves dq, dk, dv alone: the backward reads what it is given
    (per-token and broadcast θ) rather than regenerating it."""
    if not launch.INTERPRET:
        pytest.skip("interpreter")
    B, H, N, D = 1, 2, 21, 16
    q, k, v, grad_out = (torch.randn(B, H, N, D) for _ in range(4))
    theta = torch.randn(*((B, H, N, D) if theta_kind == "token" else (1, H, 1, D)))
    rng = launch.rng_state(7, 0, "cpu")
    mask, qm, km, dsoft = launch.masked_qk_prepass(q, k, theta, None, rng, NZ.MODE_PHILOX, tau=1.0)
    out, lse = launch.forward(qm, km, v, scale=0.25)
    kw = dict(scale=0.25, tau=1.0, mode=NZ.MODE_PHILOX, need_dmask_logits=True, config=(16, 16))
    a = launch.backward(grad_out, q, k, v, mask, out, lse, theta, None, rng, dsoft=dsoft, **kw)
    z = launch.backward(grad_out, q, k, v, mask, out, lse, theta, None, rng, dsoft=torch.zeros_like(dsoft), **kw)
    assert a[3].abs().max() > 0 and not z[3].any()
    for x, y in zip(a[:3], z[:3]):
        assert torch.equal(x, y)
