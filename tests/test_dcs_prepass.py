"""The C++ CPU mask pre-pass (torch.ops.ribkernels.dcs_mask_apply) against noise contract v2's
PyTorch reference (ribkernels.dcs.philox) and the float64 formulas, on awkward sizes, broadcast θ,
dtypes, offsets, NaN; and the PyTorch fallback used without the extension."""
import os
import subprocess
import sys

import pytest
import torch

import ribkernels as rk
from ribkernels.dcs import cpu_prepass as prepass
from ribkernels.dcs.mask import contract_uniform_like
from dcs_reference import reference_forward_backward

pytestmark = pytest.mark.skipif(not prepass.cpu_prepass_available(),
                                reason="ribkernels._C is not built with the DCS pre-pass")

THETA_SHAPES = {"token": lambda B, H, N, D: (B, H, N, D), "channel": lambda B, H, N, D: (1, H, 1, D),
                "batch_token": lambda B, H, N, D: (B, 1, N, D), "scalar_d": lambda B, H, N, D: (B, H, N, 1)}


def contract_reference(theta, shape, seed, offset):
    """(mask, u) of contract v2 from the PyTorch Philox, and where the float32 decision is so close
    to the threshold (< 4 ulp) that two correct sigmoid implementations may disagree."""
    u = contract_uniform_like(shape, seed, offset)
    threshold = torch.sigmoid(-theta.float().expand(shape))
    ambiguous = (u - threshold).abs() <= 4 * torch.finfo(torch.float32).eps * threshold.clamp(min=2.0**-24)
    return u > threshold, u, ambiguous


def op(q, k, theta, seed, offset=0, tau=1.0):
    theta = theta.float().expand(q.shape)
    return torch.ops.ribkernels.dcs_mask_apply(q, k, theta, torch.tensor(seed), offset, tau)


@pytest.mark.parametrize("N", [1, 17, 53, 211])
@pytest.mark.parametrize("D", [16, 32, 64, 128, 7])
@pytest.mark.parametrize("theta_kind", sorted(THETA_SHAPES))
def test_mask_equals_contract(N, D, theta_kind):
    B, H = 2, 3
    q, k = torch.randn(B, H, N, D), torch.randn(B, H, N, D)
    theta = 2 * torch.randn(THETA_SHAPES[theta_kind](B, H, N, D))
    seed, offset = int(torch.randint(0, 2**62, ())) * 2 + 1, int(torch.randint(0, 2**40, ()))
    qm, km, mask, nan_count = op(q, k, theta, seed, offset)
    want, _, ambiguous = contract_reference(theta, q.shape, seed, offset)
    assert mask.dtype == torch.uint8 and int(nan_count) == 0
    assert ambiguous.float().mean() < 1e-3
    assert torch.equal(mask.bool()[~ambiguous], want[~ambiguous])
    assert torch.equal(qm, q * mask) and torch.equal(km, k * mask)


def test_offset_and_seed_change_the_mask_and_top_seed_works():
    q = torch.randn(2, 2, 9, 16)
    theta = torch.zeros(1)
    masks = [op(q, q, theta, s, o)[2] for s, o in [(5, 0), (6, 0), (5, 1), (2**63 - 1, 2**62)]]
    for i in range(len(masks)):
        for j in range(i):
            assert not torch.equal(masks[i], masks[j])
    want, _, ambiguous = contract_reference(theta, q.shape, 2**63 - 1, 2**62)
    assert torch.equal(masks[3].bool()[~ambiguous], want[~ambiguous])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_make_the_same_mask(dtype):
    q, k = torch.randn(2, 3, 17, 32, dtype=dtype), torch.randn(2, 3, 17, 32, dtype=dtype)
    theta = torch.randn(1, 3, 1, 32)
    qm, km, mask, _ = op(q, k, theta, 77, 3)
    _, _, mask32, _ = op(q.float(), k.float(), theta, 77, 3)
    assert torch.equal(mask, mask32)
    assert qm.dtype == dtype and torch.equal(qm, q * mask.to(dtype)) and torch.equal(km, k * mask.to(dtype))


@pytest.mark.parametrize("tau", [1.0, 0.5])
@pytest.mark.parametrize("theta_kind", ["token", "channel"])
def test_attention_gradients_match_float64_reference(tau, theta_kind):
    B, H, N, D = 2, 3, 53, 32
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) for _ in range(3))
    theta = (2 * torch.randn(THETA_SHAPES[theta_kind](B, H, N, D), dtype=torch.float64))
    theta[..., 0] = 95.0  # e^{±θ} beyond float32's range: soft must stay finite
    theta[..., 1] = -95.0
    grad_out = torch.randn(B, H, N, D, dtype=torch.float64)
    seed, offset = 2**61 + 3, 11
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, theta)]
    out = rk.dcs_attention(*leaves, seed=seed, offset=offset, tau=tau, impl="sdpa")
    out.backward(grad_out)
    # the op's own mask (the decision may differ from torch.sigmoid's within an ulp)
    _, _, mask, _ = op(q, k, theta, seed, offset)
    u = contract_uniform_like(q.shape, seed, offset).double()
    noise = torch.log(u) - torch.log1p(-u)
    want = reference_forward_backward(q, k, v, theta, noise, grad_out, tau=tau, mask=mask)
    for name, g, w in zip(["out", "dq", "dk", "dv"], [out.detach()] + [t.grad for t in leaves[:3]], want[:4]):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")
    assert torch.isfinite(leaves[3].grad).all()
    torch.testing.assert_close(leaves[3].grad, want[4], rtol=1e-5, atol=1e-6)  # soft in float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_close_to_float64(dtype):
    B, H, N, D = 1, 2, 17, 16
    q, k, v = (torch.randn(B, H, N, D).to(dtype) for _ in range(3))
    theta = torch.randn(B, H, N, D)
    grad_out = torch.randn(B, H, N, D).to(dtype)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, theta)]
    out = rk.dcs_attention(*leaves, seed=21, impl="sdpa")
    out.backward(grad_out)
    _, _, mask, _ = op(q, k, theta, 21)
    u = contract_uniform_like(q.shape, 21).double()
    want = reference_forward_backward(q, k, v, theta, torch.log(u) - torch.log1p(-u), grad_out, mask=mask)
    got = [out.detach()] + [t.grad for t in leaves]
    assert got[4].dtype == torch.float32
    for name, g, w in zip(["out", "dq", "dk", "dv", "dtheta"], got, want):
        err = (g.double() - w).abs().max().item()
        assert err <= 0.05 * max(1.0, w.abs().max().item()), f"{dtype} {name}: max error {err}"


def test_gradcheck_float64_through_the_op():
    B, H, N, D = 1, 2, 5, 8
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    theta = torch.randn(1, H, 1, D, dtype=torch.float64)
    fn = lambda q, k, v: rk.dcs_attention(q, k, v, theta, seed=9, impl="sdpa")
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_fallback_without_extension_gives_the_contract(monkeypatch):
    B, H, N, D = 2, 2, 17, 16
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    theta = torch.randn(B, H, N, D)
    with_op = rk.dcs_attention(q, k, v, theta, seed=31, offset=2, impl="sdpa")
    monkeypatch.setattr(prepass, "cpu_prepass_available", lambda: False)
    without = rk.dcs_attention(q, k, v, theta, seed=31, offset=2, impl="sdpa")
    torch.testing.assert_close(with_op, without, rtol=1e-6, atol=1e-6)


def test_package_without_extension_makes_the_same_attention(tmp_path):
    """RIBKERNELS_NO_EXT=1: the PyTorch contract path, in a fresh process, gives the op's result."""
    q, k, v = (torch.randn(1, 2, 9, 16) for _ in range(3))
    theta = torch.randn(1, 2, 1, 16)
    torch.save((q, k, v, theta), tmp_path / "inputs.pt")
    code = ("import torch, ribkernels as rk; from ribkernels.dcs import cpu_prepass as prepass; "
            f"q, k, v, t = torch.load({str(tmp_path / 'inputs.pt')!r}); "
            "assert not prepass.cpu_prepass_available(); "
            f"torch.save(rk.dcs_attention(q, k, v, t, seed=12, impl='sdpa'), {str(tmp_path / 'out.pt')!r})")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, RIBKERNELS_NO_EXT="1", PYTHONPATH=root)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), rk.dcs_attention(q, k, v, theta, seed=12, impl="sdpa"),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("seeded", [True, False])
def test_nan_in_qkv_propagates_like_eager(impl, where, seeded):
    B, H, N, D = 1, 2, 6, 8
    t = {n: torch.randn(B, H, N, D, dtype=torch.float64) for n in "qkv"}
    t[where][0, 1, 2, 3] = float("nan")
    theta = torch.randn(B, H, N, D, dtype=torch.float64)
    kw = dict(seed=4) if seeded else dict(noise=torch.randn(B, H, N, D))
    got = rk.dcs_attention(t["q"], t["k"], t["v"], theta, impl=impl, **kw)
    want = rk.dcs_attention(t["q"], t["k"], t["v"], theta, impl="eager", **kw)
    assert torch.isnan(got).any()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    evaluated = rk.dcs_attention(t["q"], t["k"], t["v"], theta, impl=impl, training=False)
    assert torch.isnan(evaluated).any()


def test_op_errors_name_the_argument():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="theta must be float32 expanded"):
        torch.ops.ribkernels.dcs_mask_apply(q, q, torch.randn(1, 1, 4, 8).double(), torch.tensor(1), 0, 1.0)
    with pytest.raises(RuntimeError, match=r"seed must be in \[0, 2\*\*63\)"):
        torch.ops.ribkernels.dcs_mask_apply(q, q, torch.randn(1, 1, 4, 8), torch.tensor(-1), 0, 1.0)
    with pytest.raises(RuntimeError, match="offset must be >= 0"):
        torch.ops.ribkernels.dcs_mask_apply(q, q, torch.randn(1, 1, 4, 8), torch.tensor(1), -2, 1.0)
