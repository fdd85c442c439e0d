"""The path a training step takes through the IBB: β as a 0-d device tensor in ``ibb_loss`` (forward,
backward, gradcheck), the per-batch β fit ``ribkernels::ibb_fit_beta`` against its float64 eager
reference, and ``IBBLoss`` in training mode against the same computation written in eager PyTorch.
Every test runs on CPU and, marked ``gpu``, on CUDA."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from ribkernels.ibb import extension_status, ibb_loss, ibb_loss_batch_beta
from ribkernels.ibb.calibrate import calibrate_beta_batch, calibrate_beta_batch_eager
from ribkernels.ibb.reference import ibb_eager
from ribkernels.nn.ibb_loss import IBBLoss

pytestmark = pytest.mark.skipif("cpu" not in extension_status()["devices"],
                                reason="ribkernels._C is not built")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
K = 13


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda":
        if "cuda" not in extension_status()["devices"]:
            pytest.fail(f"a CUDA device is present but the extension was not built with CUDA: "
                        f"{extension_status()}")
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 tolerances below
        yield "cuda"
        torch.backends.cuda.matmul.allow_tf32 = saved
        return
    yield "cpu"


def make_inputs(n, A, D, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, D, generator=g, dtype=dtype)
    c = F.normalize(torch.randn(A, D, generator=g, dtype=dtype), dim=1)
    lq = torch.log_softmax(torch.randn(A, K, generator=g, dtype=dtype), 1)
    y = torch.randint(0, K, (n,), generator=g)
    return f.to(device), y.to(device), c.to(device), lq.to(device)


def close(got, want, tol):
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all()
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"max abs error {err}"


# ------------------------------------------------------------------ β as a 0-d tensor
@pytest.mark.parametrize("n,A,D", list(itertools.product([1, 7, 65], [1, 5, 751], [3, 64])))
@pytest.mark.parametrize("normalize", [True, False])
def test_tensor_beta_forward_backward_against_float64_reference(device, n, A, D, normalize):
    f, y, c, lq = make_inputs(n, A, D, device)
    beta = torch.tensor(2.5, device=device)
    g = torch.randn(n, device=device)
    x = f.clone().requires_grad_()
    loss = ibb_loss(x, y, c, lq, beta=beta, normalize=normalize, reduction="none", impl="ext")
    loss.backward(g)
    x64 = f.double().requires_grad_()
    want = ibb_eager(x64, y, c.double(), lq.double(), 2.5, normalize)
    want.backward(g.double())
    tol = 1e-5 if normalize else 1e-4  # raw features: logits of a larger scale in float32
    close(loss, want, tol)
    close(x.grad, x64.grad, tol)
    # the float-β op runs the same kernels: equal results
    x2 = f.clone().requires_grad_()
    loss2 = ibb_loss(x2, y, c, lq, beta=2.5, normalize=normalize, reduction="none", impl="ext")
    loss2.backward(g)
    torch.testing.assert_close(loss, loss2, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)


@pytest.mark.parametrize("normalize", [True, False])
def test_tensor_beta_gradcheck_and_no_beta_gradient(device, normalize):
    f, y, c, lq = make_inputs(6, 5, 7, device, torch.float64)
    beta = torch.tensor(1.7, device=device, dtype=torch.float64, requires_grad=True)
    x = f.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: ibb_loss(x, y, c, lq, beta=beta, normalize=normalize, reduction="none", impl="ext"), (x,))
    ibb_loss(x, y, c, lq, beta=beta, normalize=normalize, impl="ext").backward()
    assert beta.grad is None  # β is a constant of the bound


def test_tensor_beta_opcheck():
    f, y, c, lq = make_inputs(6, 4, 5, "cpu")
    f.requires_grad_()
    ops = torch.ops.ribkernels
    b = torch.tensor(0.7)
    torch.library.opcheck(ops.ibb_forward.beta_tensor, (f, y, c, lq, b, True))
    torch.library.opcheck(ops.ibb_forward.beta_tensor, (f, y, c, lq, b, False, False))
    torch.library.opcheck(ops.ibb_fit_beta.default, (f.detach(), c, 0.5, True, 16))
    torch.library.opcheck(ops.ibb_forward_fit.default, (f, y, c, lq, None, 0.9, 0.5, True))
    torch.library.opcheck(ops.ibb_forward_fit.default, (f, y, c, lq, torch.tensor(0.3), 0.5, 0.7, False, False, 8))


def test_tensor_beta_eager_fallback_matches(device):
    f, y, c, lq = make_inputs(9, 6, 8, device)
    beta = torch.tensor(3.0, device=device)
    a = ibb_loss(f, y, c, lq, beta=beta, impl="ext")
    b = ibb_loss(f, y, c, lq, beta=beta, impl="eager")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tensor_beta_errors():
    f, y, c, lq = make_inputs(4, 3, 5, "cpu")
    for bad, what in ((torch.tensor([1.0]), "0-d"), (torch.tensor(2), "0-d floating"),
                      (torch.tensor(-1.0), "positive"), (torch.tensor(float("inf")), "positive")):
        with pytest.raises(ValueError, match="beta") as e:
            ibb_loss(f, y, c, lq, beta=bad)
        assert what.split()[0] in str(e.value) or "positive" in str(e.value)
    ops = torch.ops.ribkernels
    with pytest.raises(ValueError, match="beta must be a 0-d tensor"):
        ops.ibb_forward.beta_tensor(f, y, c, lq, torch.ones(2), True)
    with pytest.raises(ValueError, match="beta must be a positive"):
        ops.ibb_forward.beta_tensor(f, y, c, lq, torch.tensor(0.0), True)
    with pytest.raises(TypeError, match="beta must be a positive float or a 0-d floating tensor"):
        ops.ibb_forward.beta_tensor(f, y, c, lq, torch.tensor(1), True)


# ------------------------------------------------------------------ the per-batch β fit
FIT_CASES = [(1, 2, 3, 0.3, True), (7, 5, 16, 1.0, True), (64, 751, 768, math.log(4), True),
             (33, 40, 8, 0.05, False), (10, 3, 4, 5.0, True),  # target above log A: clamped bracket
             (20, 50, 8, 2.0, False), (300, 97, 33, 1.2, True)]


@pytest.mark.parametrize("n,A,D,target,normalize", FIT_CASES)
def test_fit_beta_equals_the_eager_fit_in_float64(device, n, A, D, target, normalize):
    f, _, c, _ = make_inputs(n, A, D, device, torch.float64, seed=n + A)
    got = calibrate_beta_batch(f, c, target_entropy=target, normalize=normalize, impl="ext")
    want = calibrate_beta_batch_eager(f, c, target_entropy=target, normalize=normalize)
    assert got.dim() == 0 and got.dtype == torch.float64 and got.device.type == device
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n,A,D,target,normalize", FIT_CASES)
def test_fit_beta_float32_close_to_the_eager_fit(device, n, A, D, target, normalize):
    f, _, c, _ = make_inputs(n, A, D, device, seed=n + A)
    got = calibrate_beta_batch(f, c, target_entropy=target, normalize=normalize, impl="ext")
    want = calibrate_beta_batch_eager(f, c, target_entropy=target, normalize=normalize)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)


def test_fit_beta_reaches_the_target_entropy(device):
    f, _, c, _ = make_inputs(64, 100, 32, device, torch.float64)
    beta = calibrate_beta_batch(f, c, target_entropy=1.0, impl="ext")
    phi = torch.softmax(-beta * torch.cdist(F.normalize(f, dim=1), c) ** 2, dim=1)
    h = -(torch.xlogy(phi, phi)).sum(1).mean()
    assert h.item() == pytest.approx(1.0, abs=2e-3)


def test_fit_beta_errors():
    f, _, c, _ = make_inputs(4, 3, 5, "cpu")
    with pytest.raises(ValueError, match="at least 2 centroids"):
        calibrate_beta_batch(f, c[:1])
    with pytest.raises(ValueError, match="target_entropy"):
        calibrate_beta_batch(f, c, target_entropy=0.0)
    with pytest.raises(ValueError, match="grid"):
        calibrate_beta_batch(f, c, grid=1)
    ops = torch.ops.ribkernels
    with pytest.raises(ValueError, match="ibb_fit_beta: centroids must hold at least 2"):
        ops.ibb_fit_beta(f, c[:1], 1.0, True)
    with pytest.raises(ValueError, match="ibb_fit_beta: target_entropy must be a positive finite"):
        ops.ibb_fit_beta(f, c, float("nan"), True)
    with pytest.raises(ValueError, match=r"ibb_fit_beta: grid must lie in \[2, 1024\], got 1"):
        ops.ibb_fit_beta(f, c, 1.0, True, 1)


# ------------------------------------------------------------------ the fused training op
@pytest.mark.parametrize("n,A,D", [(1, 2, 3), (7, 5, 16), (65, 751, 64)])
@pytest.mark.parametrize("normalize", [True, False])
def test_batch_beta_loss_equals_fit_then_tensor_beta_loss(device, n, A, D, normalize):
    """ibb_forward_fit = ibb_fit_beta, the log-β average, then ibb_loss with that β: same β, the
    same value and gradient (float64), and the eager composition to float64 precision."""
    f, y, c, lq = make_inputs(n, A, D, device, torch.float64, seed=A)
    ema = torch.tensor(0.4, device=device, dtype=torch.float64)
    x = f.clone().requires_grad_()
    loss, beta, new_ema = ibb_loss_batch_beta(x, y, c, lq, log_beta_ema=ema, momentum=0.8, target_entropy=0.6,
                                              normalize=normalize, impl="ext")
    g = torch.randn(n, device=device, dtype=torch.float64)
    loss.backward(g)
    b = calibrate_beta_batch(f, c, target_entropy=0.6, normalize=normalize, impl="ext")
    want_ema = 0.8 * ema + (1 - 0.8) * b.log()
    torch.testing.assert_close(new_ema, want_ema, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(beta, want_ema.exp(), rtol=1e-14, atol=0)
    x2 = f.clone().requires_grad_()
    want = ibb_loss(x2, y, c, lq, beta=beta, normalize=normalize, reduction="none", impl="ext")
    want.backward(g)
    torch.testing.assert_close(loss, want, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-13)
    x3 = f.clone().requires_grad_()
    eager, beta3, ema3 = ibb_loss_batch_beta(x3, y, c, lq, log_beta_ema=ema, momentum=0.8, target_entropy=0.6,
                                             normalize=normalize, impl="eager")
    eager.backward(g)
    torch.testing.assert_close(beta, beta3, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, eager, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, x3.grad, rtol=1e-9, atol=1e-12)
    first, b1, e1 = ibb_loss_batch_beta(f, y, c, lq, target_entropy=0.6, normalize=normalize, impl="ext")
    torch.testing.assert_close(e1, b.log(), rtol=1e-14, atol=1e-14)  # no average yet: log b


def test_batch_beta_loss_errors():
    f, y, c, lq = make_inputs(4, 3, 5, "cpu")
    with pytest.raises(ValueError, match="at least 2 centroids"):
        ibb_loss_batch_beta(f, y, c[:1], lq[:1])
    with pytest.raises(ValueError, match="momentum must lie in"):
        ibb_loss_batch_beta(f, y, c, lq, momentum=1.0)
    with pytest.raises(ValueError, match="log_beta_ema must be a 0-d floating tensor"):
        ibb_loss_batch_beta(f, y, c, lq, log_beta_ema=torch.zeros(2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 13\)"):
        ibb_loss_batch_beta(f, y + K, c, lq)
    ops = torch.ops.ribkernels
    with pytest.raises(ValueError, match="ibb_forward_fit: momentum must lie in"):
        ops.ibb_forward_fit(f, y, c, lq, None, -0.1, 1.0, True)
    with pytest.raises(ValueError, match="ibb_forward_fit: log_beta_ema must be a 0-d"):
        ops.ibb_forward_fit(f, y, c, lq, torch.zeros(1), 0.5, 1.0, True)
    with pytest.raises(ValueError, match="ibb_forward_fit: target_entropy"):
        ops.ibb_forward_fit(f, y, c, lq, None, 0.5, -1.0, True)


# ------------------------------------------------------------------ IBBLoss in training mode
def _module(device, impl, dtype=torch.float32):
    K_, D = 30, 16
    g = torch.Generator().manual_seed(3)
    centres = F.normalize(torch.randn(K_, D, generator=g, dtype=torch.float64), dim=1)
    y = torch.arange(K_).repeat_interleave(5)
    f = F.normalize(centres[y] + 0.3 * torch.randn(len(y), D, generator=g, dtype=torch.float64), dim=1)
    m = IBBLoss(K_, D, kmeans_iters=4, impl=impl).to(device)
    m.refresh(f.float().to(device), y.to(device))
    m.to(dtype)
    return m, f.to(device, dtype), y.to(device)


def test_training_step_equals_the_eager_computation(device):
    """IBBLoss.train() on the extension: two steps (the β average included) equal the same module
    on eager PyTorch, in float64, value and feature gradient."""
    ext, f, y = _module(device, "ext", torch.float64)
    eager, _, _ = _module(device, "eager", torch.float64)
    eager.load_state_dict(ext.state_dict())
    for rows in (slice(0, 40), slice(40, 97)):
        xs = [f[rows].clone().requires_grad_() for _ in range(2)]
        vals = [m(x, y[rows]) for m, x in zip((ext, eager), xs)]
        for v, x in zip(vals, xs):
            v.backward()
        torch.testing.assert_close(vals[0], vals[1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ext.last_terms["beta"], eager.last_terms["beta"], rtol=1e-10, atol=0)
        assert isinstance(ext.last_terms["beta"], torch.Tensor) and ext.last_terms["beta"].device.type == device


def test_training_step_float32_close_to_float64_reference(device):
    m, f, y = _module(device, "ext")
    x = f[:40].clone().requires_grad_()
    val = m(x, y[:40])
    val.backward()
    beta = calibrate_beta_batch_eager(f[:40].double(), m.centroids.double(),
                                      target_entropy=m._target(m.num_clusters))
    x64 = f[:40].double().requires_grad_()
    want = ibb_eager(x64, y[:40], m.centroids.double(), m.log_q.double(), beta, True).mean()
    want.backward()
    close(val, want, 1e-4)
    close(x.grad, x64.grad, 1e-4)


@pytest.mark.gpu
def test_training_step_does_not_sync_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    m, f, y = _module("cuda", "auto")
    x = f[:40].clone().requires_grad_()
    m(x, y[:40]).backward()  # warm-up (first-call allocations)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x.grad = None
        m(x, y[:40]).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x.grad).all()
