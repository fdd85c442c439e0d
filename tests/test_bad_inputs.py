"""Bad arguments to the public API get an error naming the argument, its value and what was expected,
before any work (no silent NaN, no empty result, no bare ``int()``/unpacking error)."""
import math

import numpy as np
import pytest
import torch

import ribkernels as rk
from ribkernels.dcs.mask import logistic_noise
from ribkernels.nn.dcs_attention import DCSAttention
from ribkernels.reid.evaluation import evaluate_rank


def _qkv():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    return q, k, v, torch.randn(1, 2, 5, 8, generator=g)


@pytest.mark.parametrize("scale,exc,text", [
    (float("nan"), ValueError, "scale must be a finite number > 0.*nan"),
    (float("inf"), ValueError, "scale must be a finite number > 0.*inf"),
    (0.0, ValueError, "scale must be a finite number > 0.*0.0"),
    (-0.5, ValueError, "scale must be a finite number > 0"),
    ("a", TypeError, "scale must be None or a number.*'a'"),
    (True, TypeError, "scale must be None or a number.*True"),
])
def test_dcs_attention_refuses_a_bad_scale(scale, exc, text):
    q, k, v, theta = _qkv()
    with pytest.raises(exc, match=text):
        rk.dcs_attention(q, k, v, theta, scale=scale, impl="sdpa")


def test_dcs_attention_takes_a_valid_scale():
    q, k, v, theta = _qkv()
    a = rk.dcs_attention(q, k, v, theta, scale=8 ** -0.5, impl="sdpa", training=False)
    b = rk.dcs_attention(q, k, v, theta, scale=None, impl="sdpa", training=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("tau,exc", [("1", TypeError), (True, TypeError), (float("inf"), ValueError),
                                     (float("nan"), ValueError), (0, ValueError)])
def test_a_bad_tau_is_named_by_the_op_and_the_module(tau, exc):
    q, k, v, theta = _qkv()
    with pytest.raises(exc, match="tau must be a positive"):
        rk.dcs_attention(q, k, v, theta, tau=tau, impl="sdpa")
    with pytest.raises(exc, match="tau must be a positive"):
        DCSAttention(8, 2, tau=tau)


def test_meta_inputs_are_refused_by_name():
    q, k, v, theta = (t.to("meta") for t in _qkv())
    with pytest.raises(ValueError, match="q is a meta tensor"):
        rk.dcs_attention(q, k, v, theta)


@pytest.mark.parametrize("shape,exc,text", [((-1, 3), ValueError, r"sizes >= 0, got \(-1, 3\)"),
                                            (("a", 3), TypeError, "size 'a'"),
                                            ((2.5, 3), TypeError, "size 2.5"),
                                            (7, TypeError, "sequence of ints")])
def test_logistic_noise_refuses_a_bad_shape(shape, exc, text):
    with pytest.raises(exc, match=text):
        logistic_noise(shape, seed=1)


def test_logistic_noise_takes_numpy_sizes_and_empty_shapes():
    a = logistic_noise((np.int64(2), 3), seed=1)
    assert a.shape == (2, 3) and torch.equal(a, logistic_noise((2, 3), seed=1))
    assert logistic_noise((0, 3), seed=1).shape == (0, 3)


def test_dcs_attention_module_refuses_a_2d_input():
    m = DCSAttention(8, 2)
    with pytest.raises(ValueError, match=r"x must be a 3-D tensor \[B, N, C\].*\(4, 8\)"):
        m(torch.randn(4, 8))
    assert m(torch.randn(1, 4, 8)).shape == (1, 4, 8)


@pytest.mark.parametrize("chunk", [0, -1, 1.5, True, "8"])
def test_evaluate_rank_refuses_a_bad_chunk_size(chunk):
    d = np.random.default_rng(0).random((3, 5))
    ids = (np.array([0, 1, 2]), np.array([0, 1, 2, 0, 1]), np.zeros(3, int), np.ones(5, int))
    with pytest.raises(ValueError, match=f"chunk_rows must be an int >= 1.*{chunk!r}"):
        evaluate_rank(d, *ids, chunk_rows=chunk)
    whole = evaluate_rank(d, *ids)
    assert math.isclose(evaluate_rank(d, *ids, chunk_rows=1).mAP, whole.mAP) and whole.mAP > 0
