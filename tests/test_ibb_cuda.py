"""The CUDA kernels of the extension against the float64 eager reference (and the CPU kernels),
for a session lent a GPU. Everything here is marked ``gpu`` (skipped without CUDA)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from ribkernels.ibb import (extension_status, ibb_loss, kmeans, kmeans_step, soft_assign,
                            soft_counts)
from ribkernels.ibb.reference import ibb_eager, soft_assign_eager, soft_counts_eager

pytestmark = pytest.mark.gpu
SIZES = list(itertools.product([1, 7, 64, 300], [1, 5, 751], [3, 64, 768]))
K = 13


@pytest.fixture(scope="module", autouse=True)
def _cuda_extension():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    st = extension_status()
    assert "cuda" in st["devices"], f"the extension was not built with CUDA: {st}"
    # no TF32 in the references or the kernels' GEMMs: the tolerances below are float32's
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def make_inputs(n, A, D, dtype=torch.float32):
    f = torch.randn(n, D, device="cuda", dtype=dtype)
    c = F.normalize(torch.randn(A, D, device="cuda", dtype=dtype), dim=1)
    lq = torch.log_softmax(torch.randn(A, K, device="cuda", dtype=dtype), 1)
    y = torch.randint(0, K, (n,), device="cuda")
    return f, y, c, lq


def close(got, want, tol):
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all()
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"max abs error {err}"


@pytest.mark.parametrize("n,A,D", SIZES)
def test_ibb_forward_backward_cuda(n, A, D):
    f, y, c, lq = make_inputs(n, A, D)
    g = torch.randn(n, device="cuda")
    x = f.clone().requires_grad_()
    loss = ibb_loss(x, y, c, lq, beta=2.0, reduction="none", impl="ext")
    loss.backward(g)
    x64 = f.double().requires_grad_()
    want = ibb_eager(x64, y, c.double(), lq.double(), 2.0, True)
    want.backward(g.double())
    close(loss, want, 1e-5)
    close(x.grad, x64.grad, 1e-5)


@pytest.mark.parametrize("n,A,D", SIZES)
def test_soft_assign_counts_kmeans_step_cuda(n, A, D):
    f, y, c, _ = make_inputs(n, A, D)
    x = f.clone().requires_grad_()
    phi = soft_assign(x, c, beta=1.5, impl="ext")
    gphi = torch.randn_like(phi)
    phi.backward(gphi)
    x64 = f.double().requires_grad_()
    want = soft_assign_eager(F.normalize(x64, dim=1), c.double(), 1.5, False)
    want.backward(gphi.double())
    close(phi, want, 1e-5)
    close(x.grad, x64.grad, 1e-5)
    close(soft_counts(f, y, c, num_classes=K, beta=1.5, impl="ext"),
          soft_counts_eager(f.double(), y, c.double(), 1.5, K, True), 1e-5)
    assign, sums, counts, mind = kmeans_step(f, c, impl="ext")
    d64 = torch.cdist(f.double(), c.double()) ** 2
    chosen = d64.gather(1, assign[:, None]).squeeze(1)
    scale = (f.double() ** 2).sum(1) + 1.0
    assert ((chosen - d64.min(1).values) <= 1e-5 * scale).all()
    close(mind, chosen, 1e-5 * scale.max().item())
    close(sums, torch.zeros(A, D, dtype=torch.float64, device="cuda").index_add_(0, assign, f.double()), 1e-5)
    assert torch.equal(counts, torch.bincount(assign, minlength=A))


def test_cuda_matches_cpu_kernels_float64():
    f, y, c, lq = make_inputs(50, 33, 40, dtype=torch.float64)
    ops = torch.ops.ribkernels
    gpu = ops.ibb_forward(f, y, c, lq, 1.3, True)
    cpu = ops.ibb_forward(f.cpu(), y.cpu(), c.cpu(), lq.cpu(), 1.3, True)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)
    a = ops.kmeans_step(f, c)
    b = ops.kmeans_step(f.cpu(), c.cpu())
    assert torch.equal(a[0].cpu(), b[0]) and torch.equal(a[2].cpu(), b[2])
    torch.testing.assert_close(a[1].cpu(), b[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_cuda_float64(normalize):
    f, y, c, lq = make_inputs(6, 5, 7, dtype=torch.float64)
    f.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: ibb_loss(x, y, c, lq, beta=1.7, normalize=normalize, reduction="none", impl="ext"), (f,))
    assert torch.autograd.gradcheck(
        lambda x: soft_assign(x, c, beta=0.6, normalize=normalize, impl="ext"), (f,))


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_autocast_cuda_computes_in_float32(dt):
    f, y, c, lq = make_inputs(64, 751, 768)
    x = f.to(dt).requires_grad_()
    with torch.autocast("cuda", dtype=dt):
        loss = ibb_loss(x, y, c, lq, reduction="none", impl="ext")
    assert loss.dtype == torch.float32
    close(loss, ibb_eager(x.detach().double(), y, c.double(), lq.double(), 1.0, True), 1e-5)
    loss.sum().backward()
    assert x.grad.dtype == dt and torch.isfinite(x.grad).all()


def test_many_rows_and_chunks_cuda():
    # more rows than a 1-D grid's y limit would allow, and several soft_counts chunks
    n, A, D = 70000, 300, 16
    f, y, c, lq = make_inputs(n, A, D)
    close(ibb_loss(f, y, c, lq, reduction="none", impl="ext"),
          ibb_eager(f.double(), y, c.double(), lq.double(), 1.0, True), 1e-5)
    close(soft_counts(f, y, c, num_classes=K, impl="ext"),
          soft_counts_eager(f.double(), y, c.double(), 1.0, K, True), 1e-5)


def test_deterministic_cuda():
    f, y, c, lq = make_inputs(3000, 751, 64)
    a = [soft_counts(f, y, c, num_classes=K, impl="ext") for _ in range(2)]
    assert torch.equal(a[0], a[1])
    r1 = kmeans(f, 40, iters=5, seed=7, normalize=True, impl="ext")
    r2 = kmeans(f, 40, iters=5, seed=7, normalize=True, impl="ext")
    assert torch.equal(r1.centroids, r2.centroids)
    obj = r1.objective
    assert all(b <= a * (1 + 1e-5) for a, b in zip(obj, obj[1:]))


def test_bad_labels_cuda_raise_before_kernels():
    f, y, c, lq = make_inputs(8, 5, 6)
    with pytest.raises(ValueError, match="labels must lie"):
        ibb_loss(f, y + K, c, lq, impl="ext")
    with pytest.raises(ValueError, match="device"):
        ibb_loss(f, y.cpu(), c, lq, impl="ext")
    torch.cuda.synchronize()  # no device-side error left behind


def test_ibbloss_module_on_cuda():
    from ribkernels.nn.ibb_loss import IBBLoss

    f = torch.randn(500, 32, device="cuda")
    y = torch.randint(0, 10, (500,), device="cuda")
    m = IBBLoss(10, 32, kmeans_iters=5).cuda()
    m.refresh(f, y)
    m_cpu = IBBLoss(10, 32, kmeans_iters=5)
    m_cpu.refresh(f.cpu(), y.cpu())
    x = f[:64].clone().requires_grad_()
    loss = m(x, y[:64])
    loss.backward()
    assert loss.device.type == "cuda" and torch.isfinite(x.grad).all()
    assert torch.isfinite(m.centroids).all() and torch.isfinite(m.log_q).all()


def test_torch_compile_uses_fake_kernels():
    f, y, c, lq = make_inputs(64, 751, 768)
    x = f.clone().requires_grad_()

    @torch.compile(fullgraph=False)
    def step(x):
        return ibb_loss(x, y, c, lq, impl="ext") * 2.0

    out = step(x)
    out.backward()
    x2 = f.clone().requires_grad_()
    want = ibb_loss(x2, y, c, lq, impl="ext") * 2.0
    want.backward()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(x.grad, x2.grad)
