"""The Triton DCS-Attention's dispatch and integration: unsupported inputs refused before any launch,
the interpreter's scalar loop bound, ``why_not``, the custom ops (opcheck), torch.compile and
torch.export."""

import pytest
import torch

pytest.importorskip("triton")

import ribkernels as rk  # noqa: E402
from dcs_reference import reference_forward_backward  # noqa: E402
from dcs_triton_common import (  # noqa: E402,F401 (fixed_configs: the autouse fixture)
    DEVICES, DT, NAMES, assert_same_run, fixed_configs, make_case, randn, run)
from ribkernels.dcs.triton import backend, launch  # noqa: E402


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

