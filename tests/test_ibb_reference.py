"""ibb_loss against a direct Python loop over samples and clusters (float64), gradients, term 1,
reductions, and every bad input raising a clear error — for both implementations."""
import math

import pytest
import torch
import torch.nn.functional as F

from ribkernels.ibb import extension_status, ibb_loss

HAS_EXT = "cpu" in extension_status()["devices"]
IMPLS = ["eager", pytest.param("ext", marks=pytest.mark.skipif(not HAS_EXT, reason="no extension"))]


def make_inputs(n, A, D, K, dtype=torch.float64, device="cpu"):
    features = torch.randn(n, D, dtype=dtype, device=device)
    centroids = F.normalize(torch.randn(A, D, dtype=dtype, device=device), dim=1)
    log_q = torch.log_softmax(torch.randn(A, K, dtype=dtype, device=device), dim=1)
    labels = torch.randint(0, K, (n,), device=device)
    return features, labels, centroids, log_q


def loop_bound(features, labels, centroids, log_q, beta, normalize, input_entropy=None):
    """The bound written out sample by sample and cluster by cluster, in float64."""
    out = []
    for i in range(features.shape[0]):
        f = [float(v) for v in features[i]]
        if normalize:
            norm = max(math.sqrt(sum(v * v for v in f)), 1e-12)
            f = [v / norm for v in f]
        logits = [-beta * sum((fv - float(cv)) ** 2 for fv, cv in zip(f, centroids[a]))
                  for a in range(centroids.shape[0])]
        m = max(logits)
        e = [math.exp(s - m) for s in logits]
        phi = [v / sum(e) for v in e]
        h = float(input_entropy[i]) if input_entropy is not None else 0.0
        term1 = sum(p * h for p in phi)
        term2 = -sum(p * float(log_q[a, labels[i]]) for a, p in enumerate(phi))
        out.append(term1 + term2)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n,A,D,K", [(1, 1, 3, 1), (7, 5, 3, 4), (13, 9, 17, 6)])
@pytest.mark.parametrize("beta,normalize", [(1.0, True), (3.5, True), (0.7, False)])
def test_matches_python_loop(impl, n, A, D, K, beta, normalize):
    f, y, c, lq = make_inputs(n, A, D, K)
    want = loop_bound(f, y, c, lq, beta, normalize)
    got = ibb_loss(f, y, c, lq, beta=beta, normalize=normalize, reduction="none", impl=impl)
    assert got.dtype == torch.float64 and got.shape == (n,)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ibb_loss(f, y, c, lq, beta=beta, normalize=normalize, impl=impl),
                               want.mean(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ibb_loss(f, y, c, lq, beta=beta, normalize=normalize, impl=impl,
                                        reduction="sum"), want.sum(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_input_entropy_adds_to_value_not_gradient(impl):
    f, y, c, lq = make_inputs(9, 6, 11, 5)
    phi_x = torch.softmax(torch.randn(9, 4, dtype=torch.float64), 1)
    h = (phi_x * phi_x.log()).sum(1).requires_grad_()  # sum_b phi log phi <= 0
    want = loop_bound(f, y, c, lq, 1.0, True, input_entropy=h.detach())
    f1 = f.clone().requires_grad_()
    with_h = ibb_loss(f1, y, c, lq, input_entropy=h, reduction="none", impl=impl)
    torch.testing.assert_close(with_h, want, rtol=1e-10, atol=1e-10)
    f2 = f.clone().requires_grad_()
    without = ibb_loss(f2, y, c, lq, reduction="none", impl=impl)
    torch.testing.assert_close(with_h - without, h.detach(), rtol=1e-12, atol=1e-12)
    with_h.sum().backward()
    without.sum().backward()
    torch.testing.assert_close(f1.grad, f2.grad, rtol=0, atol=0)
    assert h.grad is None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_float64(impl, normalize):
    f, y, c, lq = make_inputs(6, 5, 7, 4)
    f.requires_grad_()
    fn = lambda x: ibb_loss(x, y, c, lq, beta=1.7, normalize=normalize, reduction="none", impl=impl)
    assert torch.autograd.gradcheck(fn, (f,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_gradient_to_constants(impl):
    f, y, c, lq = make_inputs(5, 4, 6, 3)
    f.requires_grad_()
    c.requires_grad_()
    lq.requires_grad_()
    ibb_loss(f, y, c, lq, impl=impl).backward()
    assert f.grad is not None and c.grad is None and lq.grad is None


@pytest.mark.parametrize("impl", IMPLS)
def test_half_inputs_computed_in_float32(impl):
    f, y, c, lq = make_inputs(8, 5, 16, 4, dtype=torch.float32)
    want = ibb_loss(f.double(), y, c.double(), lq.double(), reduction="none", impl="eager")
    for dt in (torch.float16, torch.bfloat16):
        got = ibb_loss(f.to(dt), y, c, lq, reduction="none", impl=impl)
        assert got.dtype == torch.float32
        # only the input rounding remains: the computation itself is float32
        ref = ibb_loss(f.to(dt).double(), y, c.double(), lq.double(), reduction="none", impl="eager")
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
        assert (got.double() - want).abs().max() < 0.05


def bad_inputs():
    f, y, c, lq = make_inputs(6, 4, 5, 3, dtype=torch.float32)
    cases = {
        "features int": (TypeError, "features", dict(features=f.long())),
        "features 1-D": (ValueError, "features", dict(features=f[0])),
        "features empty": (ValueError, "features", dict(features=f[:0], labels=y[:0])),
        "labels float": (TypeError, "labels", dict(labels=y.float())),
        "labels bool": (TypeError, "labels", dict(labels=y > 0)),
        "labels short": (ValueError, "labels", dict(labels=y[:-1])),
        "labels negative": (ValueError, "labels", dict(labels=torch.where(y == y[0], -1, y))),
        "labels >= K": (ValueError, "labels", dict(labels=torch.full_like(y, 3))),
        "centroids D": (ValueError, "centroids", dict(centroids=c[:, :4])),
        "centroids int": (TypeError, "centroids", dict(centroids=c.int())),
        "log_q A": (ValueError, "log_q", dict(log_q=lq[:3])),
        "log_q 3-D": (ValueError, "log_q", dict(log_q=lq[None])),
        "log_q not tensor": (TypeError, "log_q", dict(log_q=lq.tolist())),
        "centroids device": (ValueError, "centroids", dict(centroids=c.to("meta"))),
        "labels device": (ValueError, "labels", dict(labels=y.to("meta"))),
        "input_entropy shape": (ValueError, "input_entropy", dict(input_entropy=torch.zeros(5))),
        "beta": (ValueError, "beta", dict(beta=0.0)),
        "reduction": (ValueError, "reduction", dict(reduction="max")),
        "nan": (ValueError, "NaN", dict(features=torch.where(f > 1, float("nan"), f), check_nan=True)),
    }
    base = dict(features=f, labels=y, centroids=c, log_q=lq)
    return base, cases


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(bad_inputs()[1]))
def test_bad_inputs_raise(impl, case):
    base, cases = bad_inputs()
    exc, word, override = cases[case]
    args = {**base, **override}
    kwargs = {k: args.pop(k) for k in list(args) if k not in ("features", "labels", "centroids", "log_q")}
    with pytest.raises(exc, match=word):
        ibb_loss(args["features"], args["labels"], args["centroids"], args["log_q"], impl=impl, **kwargs)


def test_bad_impl():
    f, y, c, lq = make_inputs(3, 2, 4, 2)
    with pytest.raises(ValueError, match="impl"):
        ibb_loss(f, y, c, lq, impl="triton")
