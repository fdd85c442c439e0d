"""The extension ops (torch.ops.ribkernels) against the float64 eager reference on awkward sizes,
their autograd / fake registrations, autocast, non-contiguous inputs, direct-call errors, and the
package working without the ahead-of-time build. Tests taking ``device`` run on CPU and, marked
``gpu``, on CUDA (skipped without a GPU); a few are CUDA-only (CUDA against the CPU kernels,
torch.compile on CUDA)."""
import itertools
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from ribkernels.ibb import (extension_status, ibb_loss, kmeans, kmeans_step, soft_assign, soft_counts)
from ribkernels.ibb.reference import ibb_eager, kmeans_step_eager, soft_assign_eager, soft_counts_eager

pytestmark = pytest.mark.skipif("cpu" not in extension_status()["devices"],
                                reason="ribkernels._C is not built")
SIZES = list(itertools.product([1, 7, 64, 300], [1, 5, 751], [3, 64, 768]))
K = 13
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cpu":
        yield "cpu"
        return
    assert "cuda" in extension_status()["devices"], \
        f"a CUDA device is present but the extension was not built with CUDA: {extension_status()}"
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 tolerances below: no TF32 GEMMs
    yield "cuda"
    torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    assert "cuda" in extension_status()["devices"], f"the extension was not built with CUDA: {extension_status()}"
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield "cuda"
    torch.backends.cuda.matmul.allow_tf32 = saved


def make_inputs(n, A, D, device="cpu", dtype=torch.float32):
    f = torch.randn(n, D, device=device, dtype=dtype)
    c = F.normalize(torch.randn(A, D, device=device, dtype=dtype), dim=1)
    lq = torch.log_softmax(torch.randn(A, K, device=device, dtype=dtype), 1)
    y = torch.randint(0, K, (n,), device=device)
    return f, y, c, lq


def close(got, want, tol):
    """Max abs error within tol of the reference's scale (float32 kernels vs float64)."""
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all()
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"max abs error {err}"


@pytest.mark.parametrize("n,A,D", SIZES)
def test_ibb_forward_backward(device, n, A, D):
    f, y, c, lq = make_inputs(n, A, D, device)
    g = torch.randn(n, device=device)
    x = f.clone().requires_grad_()
    loss = ibb_loss(x, y, c, lq, beta=2.0, reduction="none", impl="ext")
    loss.backward(g)
    x64 = f.double().requires_grad_()
    want = ibb_eager(x64, y, c.double(), lq.double(), 2.0, True)
    want.backward(g.double())
    close(loss, want, 1e-5)
    close(x.grad, x64.grad, 1e-5)


@pytest.mark.parametrize("n,A,D", SIZES)
def test_soft_assign_and_counts(device, n, A, D):
    f, y, c, _ = make_inputs(n, A, D, device)
    x = f.clone().requires_grad_()
    phi = soft_assign(x, c, beta=1.5, impl="ext")
    g = torch.randn_like(phi)
    phi.backward(g)
    x64 = f.double().requires_grad_()
    want = soft_assign_eager(F.normalize(x64, dim=1), c.double(), 1.5, False)
    want.backward(g.double())
    close(phi, want, 1e-5)
    close(x.grad, x64.grad, 1e-5)
    counts = soft_counts(f, y, c, num_classes=K, beta=1.5, impl="ext")
    close(counts, soft_counts_eager(f.double(), y, c.double(), 1.5, K, True), 1e-5)


@pytest.mark.parametrize("n,A,D", SIZES)
def test_kmeans_step(device, n, A, D):
    x = torch.randn(n, D, device=device)
    c = torch.randn(A, D, device=device)
    assign, sums, counts, mind = kmeans_step(x, c, impl="ext")
    d64 = torch.cdist(x.double(), c.double()) ** 2
    chosen = d64.gather(1, assign[:, None]).squeeze(1)
    scale = (x.double() ** 2).sum(1) + (c.double() ** 2).sum(1).max()
    assert ((chosen - d64.min(1).values) <= 1e-5 * scale).all()  # float32 near-ties may differ
    close(mind, chosen, 1e-5 * scale.max().item())
    want_sums = torch.zeros(A, D, dtype=torch.float64, device=device).index_add_(0, assign, x.double())
    close(sums, want_sums, 1e-5)
    assert counts.dtype == torch.long and torch.equal(counts, torch.bincount(assign, minlength=A))
    e_assign, e_sums, e_counts, _ = kmeans_step_eager(x.double(), c.double())
    assert (assign == e_assign).float().mean() > 0.99


def test_soft_counts_chunked_rows_match(device):
    # enough rows for several chunks of the host loop (2^24 / A rows each)
    n, A, D = 9000, 2000, 8
    f, y, c, _ = make_inputs(n, A, D, device)
    got = soft_counts(f, y, c, num_classes=K, impl="ext")
    close(got, soft_counts_eager(f.double(), y, c.double(), 1.0, K, True), 1e-5)
    torch.testing.assert_close(got.sum().cpu(), torch.tensor(float(n)), rtol=1e-5, atol=0)


def test_many_rows(device):
    # more rows than a 1-D CUDA grid's y limit would allow
    n, A, D = 70000, 300, 16
    f, y, c, lq = make_inputs(n, A, D, device)
    close(ibb_loss(f, y, c, lq, reduction="none", impl="ext"),
          ibb_eager(f.double(), y, c.double(), lq.double(), 1.0, True), 1e-5)
    close(soft_counts(f, y, c, num_classes=K, impl="ext"),
          soft_counts_eager(f.double(), y, c.double(), 1.0, K, True), 1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_ext_ops(device, normalize):
    f, y, c, lq = make_inputs(5, 4, 6, device, dtype=torch.float64)
    f.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: torch.ops.ribkernels.ibb_forward(x, y, c, lq, 1.3, normalize)[0], (f,))
    assert torch.autograd.gradcheck(
        lambda x: torch.ops.ribkernels.soft_assign(x, c, 0.8, normalize)[0], (f,))
    assert torch.autograd.gradcheck(
        lambda x: ibb_loss(x, y, c, lq, beta=1.7, normalize=normalize, reduction="none", impl="ext"), (f,))


def test_large_beta_stays_finite(device):
    f, y, c, lq = make_inputs(16, 751, 64, device)
    out = ibb_loss(f, y, c, lq, beta=200.0, reduction="none", impl="ext")
    close(out, ibb_eager(f.double(), y, c.double(), lq.double(), 200.0, True), 1e-4)


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_autocast_computes_in_float32(device, dt):
    f, y, c, lq = make_inputs(32, 751, 64, device)
    x = f.to(dt).requires_grad_()
    with torch.autocast(device, dtype=dt):
        loss = ibb_loss(x, y, c, lq, reduction="none", impl="ext")
        phi = soft_assign(x, c, impl="ext")
    assert loss.dtype == torch.float32 and phi.dtype == torch.float32
    want = ibb_eager(x.detach().double(), y, c.double(), lq.double(), 1.0, True)
    close(loss, want, 1e-5)  # a half-precision GEMM would be ~1e-3 off
    loss.sum().backward()
    assert x.grad.dtype == dt and torch.isfinite(x.grad).all()


def test_non_contiguous_inputs(device):
    ft = torch.randn(24, 40, device=device).T  # transposed
    ct = F.normalize(torch.randn(24, 30, device=device), dim=0).T
    lqt = torch.log_softmax(torch.randn(K, 30, device=device), 0).T
    ys = torch.randint(0, K, (80,), device=device)[::2]
    got = ibb_loss(ft, ys, ct, lqt, reduction="none", impl="ext")
    want = ibb_eager(ft.double(), ys, ct.double(), lqt.double(), 1.0, True)
    close(got, want, 1e-5)
    close(soft_counts(ft, ys, ct, num_classes=K, impl="ext"),
          soft_counts_eager(ft.double(), ys, ct.double(), 1.0, K, True), 1e-5)


def test_direct_op_errors():
    f, y, c, lq = make_inputs(6, 4, 5)
    ops = torch.ops.ribkernels
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.ibb_forward(f.half(), y, c.half(), lq.half(), 1.0, True)
    with pytest.raises(TypeError, match="dtype"):
        ops.ibb_forward(f, y, c.double(), lq, 1.0, True)
    with pytest.raises(TypeError, match="int64"):
        ops.ibb_forward(f, y.int(), c, lq, 1.0, True)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 13\)"):
        ops.ibb_forward(f, y + K, c, lq, 1.0, True)
    with pytest.raises(ValueError, match="log_q must have shape"):
        ops.ibb_forward(f, y, c, lq[:2], 1.0, True)
    with pytest.raises(ValueError, match="centroids must have shape"):
        ops.soft_counts(f, y, c[:, :3], 1.0, K, True)
    with pytest.raises(ValueError, match="beta"):
        ops.soft_assign(f, c, -1.0, True)
    with pytest.raises(ValueError, match="labels must lie"):
        ops.soft_counts(f, y, c, 1.0, 3, True)


def test_bad_labels_raise_before_kernels(device):
    f, y, c, lq = make_inputs(8, 5, 6, device)
    with pytest.raises(ValueError, match="labels must lie"):
        ibb_loss(f, y + K, c, lq, impl="ext")
    with pytest.raises(ValueError, match="labels must lie"):  # also with a tensor β
        ibb_loss(f, y - K, c, lq, beta=torch.tensor(1.0, device=device), impl="ext")
    if device == "cuda":
        with pytest.raises(ValueError, match="device"):
            ibb_loss(f, y.cpu(), c, lq, impl="ext")
        torch.cuda.synchronize()  # no device-side error left behind


def test_unchecked_labels_give_nan_not_a_crash(device):
    f, y, c, lq = make_inputs(6, 4, 5, device)
    y[2], y[4] = -3, K
    x = f.clone().requires_grad_()
    out = ibb_loss(x, y, c, lq, reduction="none", impl="ext", check_labels=False)
    bad = torch.zeros(6, dtype=torch.bool, device=device)
    bad[[2, 4]] = True
    assert out[bad].isnan().all() and torch.isfinite(out[~bad]).all()
    ok = ibb_eager(f.double(), y.clamp(0, K - 1), c.double(), lq.double(), 1.0, True)
    close(out[~bad], ok[~bad], 1e-5)
    out.sum().backward()
    assert x.grad[bad].isnan().all() and torch.isfinite(x.grad[~bad]).all()


def test_opcheck():
    f, y, c, lq = make_inputs(6, 4, 5)
    f.requires_grad_()
    ops = torch.ops.ribkernels
    torch.library.opcheck(ops.ibb_forward.default, (f, y, c, lq, 1.0, True))
    torch.library.opcheck(ops.ibb_forward.default, (f, y, c, lq, 0.5, False, False))
    torch.library.opcheck(ops.soft_assign.default, (f, c, 2.0, False))
    x = f.detach()
    torch.library.opcheck(ops.soft_counts.default, (x, y, c, 1.0, K, True))
    torch.library.opcheck(ops.kmeans_step.default, (x, c))


def test_deterministic(device):
    f, y, c, lq = make_inputs(300, 751, 64, device)
    a = [torch.ops.ribkernels.soft_counts(f, y, c, 1.0, K, True) for _ in range(2)]
    b = [torch.ops.ribkernels.kmeans_step(f, c) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    assert all(torch.equal(u, v) for u, v in zip(b[0], b[1]))
    b = [torch.ops.ribkernels.ibb_fit_beta(f, c, 1.0, True, 48) for _ in range(2)]
    assert torch.equal(b[0], b[1])
    r1 = kmeans(f, 40, iters=5, seed=7, normalize=True, impl="ext")
    r2 = kmeans(f, 40, iters=5, seed=7, normalize=True, impl="ext")
    assert torch.equal(r1.centroids, r2.centroids)
    obj = r1.objective
    assert all(v <= u * (1 + 1e-5) for u, v in zip(obj, obj[1:]))


def test_ibbloss_module(device):
    from ribkernels.nn.ibb_loss import IBBLoss

    f = torch.randn(500, 32, device=device)
    y = torch.randint(0, 10, (500,), device=device)
    m = IBBLoss(10, 32, kmeans_iters=5).to(device)
    m.refresh(f, y)
    x = f[:64].clone().requires_grad_()
    loss = m(x, y[:64])  # training mode: β fitted to the batch
    loss.backward()
    assert loss.device.type == device and torch.isfinite(x.grad).all()
    assert torch.isfinite(m.centroids).all() and torch.isfinite(m.log_q).all()


# ------------------------------------------------------------------ CUDA only
@pytest.mark.gpu
def test_cuda_matches_cpu_kernels_float64(cuda):
    f, y, c, lq = make_inputs(50, 33, 40, cuda, dtype=torch.float64)
    ops = torch.ops.ribkernels
    gpu = ops.ibb_forward(f, y, c, lq, 1.3, True)
    cpu = ops.ibb_forward(f.cpu(), y.cpu(), c.cpu(), lq.cpu(), 1.3, True)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)
    a = ops.kmeans_step(f, c)
    b = ops.kmeans_step(f.cpu(), c.cpu())
    assert torch.equal(a[0].cpu(), b[0]) and torch.equal(a[2].cpu(), b[2])
    torch.testing.assert_close(a[1].cpu(), b[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ops.ibb_fit_beta(f, c, 1.1, True, 48).cpu(),
                               ops.ibb_fit_beta(f.cpu(), c.cpu(), 1.1, True, 48), rtol=1e-12, atol=0)


@pytest.mark.gpu
def test_torch_compile_uses_fake_kernels(cuda):
    f, y, c, lq = make_inputs(64, 751, 768, cuda)
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


def _run_without_aot(extra_env):
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import ribkernels\n"
        "    from ribkernels.ibb import ibb_loss, extension_status\n"
        "    f = torch.randn(5, 4, dtype=torch.float64); c = torch.randn(3, 4, dtype=torch.float64)\n"
        "    lq = torch.randn(3, 2, dtype=torch.float64); y = torch.tensor([0, 1, 1, 0, 1])\n"
        "    a = ibb_loss(f, y, c, lq); b = ibb_loss(f, y, c, lq)\n"
        "    ref = ibb_loss(f, y, c, lq, impl='eager')\n"
        "msgs = [str(x.message) for x in w if 'ribkernels' in str(x.message)]\n"
        "print(len(msgs), extension_status()['source'], bool(torch.allclose(a, ref)))\n"
    )
    env = {**os.environ, "RIBKERNELS_NO_AOT": "1", **extra_env}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_without_aot_build_falls_back_with_one_warning():
    n_warnings, source, ok = _run_without_aot({"RIBKERNELS_NO_JIT": "1"})
    assert (n_warnings, source, ok) == ("1", "None", "True")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RIBKERNELS_TEST_JIT") != "1",
                    reason="JIT build takes ~1-2 min on 2 cores; set RIBKERNELS_TEST_JIT=1")
def test_without_aot_build_jit_builds(tmp_path):
    n_warnings, source, ok = _run_without_aot({"TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert (n_warnings, source, ok) == ("0", "jit", "True")
