"""Shared set-up of the Triton DCS-Attention tests (``test_dcs_triton*.py``): devices, θ shapes,
the public-op runner and the error checks against the float64 formulas of docs/design.md §2.

``cpu`` runs the kernels under ``TRITON_INTERPRET=1`` (set by conftest) on small shapes, fp32/fp16;
``cuda`` (marked ``gpu``, skipped without CUDA) adds bf16 and TransReID's shapes.
"""
import pytest
import torch

import ribkernels as rk
from ribkernels.dcs.philox import contract_uniform
from ribkernels.dcs.triton import launch

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
def fixed_configs(monkeypatch):
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

