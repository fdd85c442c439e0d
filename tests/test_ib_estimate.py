"""The IB-estimate experiment's estimators on synthetic arrays with known answers: independent variables
sit at their permutation floor, a deterministic relation sits far above it (at the entropy), the soft
plug-in equals the hard one on one-hot rows and the IBB's prediction term is H(Y|A) of its joint, and
the held-out probe finds ~0 nats for noise and ~H(Y) for a separable code."""
import math

import numpy as np
import pytest

from experiments.ib_estimate import (above_floor, entropy_counts, mutual_info, one_hot, permutation_floor,
                                     probe_mutual_info, soft_mutual_info, stratified_halves)

N, CELLS, K = 2400, 64, 300  # the demo's training set, the estimator's cells, the identities


def _plain_mi(a, b):
    """Plug-in I(A;B) without a bias correction, by counting (float64 reference)."""
    ja = {v: i for i, v in enumerate(np.unique(a))}
    jb = {v: i for i, v in enumerate(np.unique(b))}
    c = np.zeros((len(ja), len(jb)))
    for x, y in zip(a, b):
        c[ja[x], jb[y]] += 1
    p = c / c.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())


def test_independent_variables_sit_at_the_floor_and_a_function_far_above():
    rng = np.random.default_rng(0)
    f = rng.integers(CELLS, size=N)
    y = np.repeat(np.arange(K), N // K)
    floor = permutation_floor(mutual_info, f, y, reps=20, seed=1)
    # the floor at this n and these cells is far from 0 (what the committed I(F;Y) at epoch 1 equalled)
    assert floor["mean"] > 0.3 and floor["sd"] > 0 and floor["max"] >= floor["mean"] and floor["reps"] == 20
    mi_ind = mutual_info(f, y)
    assert abs(mi_ind - floor["mean"]) < 4 * floor["sd"] + 1e-9 and not above_floor(mi_ind, floor)
    g = y % CELLS  # deterministic: the cell is a function of the identity
    mi_det = mutual_info(g, y)
    assert above_floor(mi_det, permutation_floor(mutual_info, g, y, reps=20, seed=2))
    assert mi_det == pytest.approx(entropy_counts(np.bincount(g)), abs=0.05)  # I = H(G) when G = h(Y)
    with pytest.raises(ValueError, match="reps"):
        permutation_floor(mutual_info, f, y, reps=1)


def test_soft_mutual_info_known_values():
    rng = np.random.default_rng(3)
    a = rng.integers(7, size=500)
    b = (a + (rng.uniform(size=500) < 0.3) * rng.integers(1, 5, size=500)) % 9
    # one-hot rows: the soft plug-in is the hard plug-in (no bias correction)
    assert soft_mutual_info(one_hot(a), one_hot(b)) == pytest.approx(_plain_mi(a, b), rel=1e-10)
    # uniform rows carry no information
    assert soft_mutual_info(np.full((500, 4), 0.25), one_hot(b)) == pytest.approx(0.0, abs=1e-12)
    # two perfectly coupled binary soft variables: I = log 2
    pa = one_hot(np.arange(400) % 2)
    assert soft_mutual_info(pa, pa) == pytest.approx(math.log(2), rel=1e-12)
    with pytest.raises(ValueError, match="pa, pb"):
        soft_mutual_info(pa, pa[:10])


def test_ibb_prediction_term_is_the_soft_conditional_entropy():
    """With Q(y|a) the soft counts of the same samples (unsmoothed), -mean_i sum_a phi_ia log Q(y_i|a) =
    H(Y|A) of the soft joint, so H(Y) - term2 = I(A;Y): the bound and the soft estimate share variables."""
    rng = np.random.default_rng(4)
    n, A, k = 600, 12, 20
    y = rng.integers(k, size=n)
    logits = rng.normal(size=(n, A)) + 2.0 * one_hot(y % A)[:, :A]
    phi = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    counts = phi.T @ one_hot(y)
    q = counts / counts.sum(1, keepdims=True)
    term2 = -(phi * np.log(q[:, y].T)).sum(1).mean()
    h_y = -(np.bincount(y) / n * np.log(np.bincount(y) / n)).sum()
    assert h_y - term2 == pytest.approx(soft_mutual_info(phi, one_hot(y)), rel=1e-9)


def test_probe_noise_is_near_zero_and_a_code_near_the_entropy():
    rng = np.random.default_rng(5)
    k, n, d = 10, 1000, 16
    y = np.repeat(np.arange(k), n // k)
    noise = probe_mutual_info(rng.normal(size=(n, d)), y, seed=0)
    assert noise["n_fit"] + noise["n_held"] == n and noise["n_held"] == n // 2
    assert noise["I_probe"] < 0.15  # independent: nothing on held-out data (overfitting pushes it below 0)
    code = rng.normal(size=(k, d)) * 3.0
    det = probe_mutual_info(code[y] + 0.1 * rng.normal(size=(n, d)), y, seed=0)
    assert det["I_probe"] > 0.9 * math.log(k) and det["ce_prior"] == pytest.approx(math.log(k), rel=0.01)
    with pytest.raises(ValueError, match="feats, labels"):
        probe_mutual_info(np.zeros((5, 2)), np.zeros(4))


def test_stratified_halves_keep_every_label_on_both_sides():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 5])
    fit, held = stratified_halves(y, seed=0)
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(10))
    assert set(y[held]) <= set(y[fit]) and set(y[fit]) == {0, 1, 2, 5}
    assert (y[fit] == 0).sum() == 2 and (y[held] == 0).sum() == 2
