"""evaluate_rank against a brute-force per-query loop (torchreid's eval_market1501 with a stable
sort and AGW's mINP), hand-made cases, chunked distances and re-ranking."""
import numpy as np
import pytest
import torch

from ribkernels.reid import compute_distance_matrix, evaluate, evaluate_rank, re_ranking


def ranked_matches(distmat, i, q_pids, g_pids, q_camids, g_camids):
    """Query ``i``'s gallery by a full stable argsort, same-camera matches and junk removed: 1.0 where
    the identity matches (float64)."""
    order = np.argsort(distmat[i], kind="stable")
    remove = ((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])) | (g_pids[order] == -1)
    return (g_pids[order] == q_pids[i])[~remove].astype(np.float64)


def brute_force(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Reference: full stable argsort per query, float64 bookkeeping."""
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(distmat.shape[0]):
        raw = ranked_matches(distmat, i, q_pids, g_pids, q_camids, g_camids)
        if not raw.any():
            continue
        cmc = raw.cumsum()
        pos = np.where(raw == 1)[0]
        all_inp.append(cmc[pos.max()] / (pos.max() + 1.0))
        c = cmc.copy()
        c[c > 1] = 1
        c = np.concatenate([c, np.full(max(0, max_rank - len(c)), c[-1])])
        all_cmc.append(c[:max_rank])
        prec = cmc / (np.arange(len(cmc)) + 1.0)
        all_ap.append((prec * raw).sum() / raw.sum())
    if not all_ap:
        return None, 0.0, 0.0, 0
    return np.mean(all_cmc, 0), float(np.mean(all_ap)), float(np.mean(all_inp)), len(all_ap)


def random_case(rng, nq, ng, n_ids, n_cams, integer_dist=False):
    q_pids = rng.integers(0, n_ids, nq)
    g_pids = rng.integers(-1, n_ids, ng)  # includes junk (-1) and distractors (0)
    q_cams = rng.integers(0, n_cams, nq)
    g_cams = rng.integers(0, n_cams, ng)
    if integer_dist:
        d = rng.integers(0, 4, (nq, ng)).astype(np.float32)  # many ties
    else:
        d = rng.standard_normal((nq, ng)).astype(np.float32)
        d += 2.0 * (q_pids[:, None] != g_pids[None, :])  # some signal
    return d, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("integer_dist", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (7, 53), (33, 211), (40, 9)])
def test_matches_brute_force(shape, integer_dist):
    rng = np.random.default_rng(hash((shape, integer_dist)) % 2**32)
    for trial in range(3):
        d, qp, gp, qc, gc = random_case(rng, *shape, n_ids=max(2, shape[1] // 6), n_cams=3, integer_dist=integer_dist)
        ref = brute_force(d, qp, gp, qc, gc, max_rank=20)
        if ref[3] == 0:
            with pytest.warns(RuntimeWarning):
                r = evaluate_rank(d, qp, gp, qc, gc, max_rank=20)
            assert r.num_valid_queries == 0
            continue
        r = evaluate_rank(d, qp, gp, qc, gc, max_rank=20, chunk_rows=5)
        assert r.num_valid_queries == ref[3]
        assert r.cmc.shape == (20,)
        np.testing.assert_allclose(r.cmc, ref[0], rtol=0, atol=1e-12)
        assert r.mAP == pytest.approx(ref[1], abs=1e-12)
        assert r.mINP == pytest.approx(ref[2], abs=1e-12)


def brute_force_per_query(distmat, q_pids, g_pids, q_camids, g_camids):
    """Reference per query (float64): indices of the valid queries, their AP and the 0-based rank of
    their first true match, by a full stable argsort."""
    valid, aps, first = [], [], []
    for i in range(distmat.shape[0]):
        raw = ranked_matches(distmat, i, q_pids, g_pids, q_camids, g_camids)
        if not raw.any():
            continue
        pos = np.where(raw == 1)[0]
        valid.append(i)
        aps.append(float(np.mean((np.arange(len(pos)) + 1.0) / (pos + 1.0))))
        first.append(int(pos[0]))
    return np.array(valid, np.int64), np.array(aps), np.array(first, np.int64)


@pytest.mark.parametrize("integer_dist", [False, True])
def test_per_query_ap_and_rank1_hits_match_brute_force_and_average_to_the_means(integer_dist):
    rng = np.random.default_rng(7 + integer_dist)
    d, qp, gp, qc, gc = random_case(rng, 41, 173, n_ids=25, n_cams=3, integer_dist=integer_dist)
    qp[::5] = 1000  # identities absent from the gallery: skipped queries
    r = evaluate_rank(d, qp, gp, qc, gc, max_rank=10, chunk_rows=6)
    valid, aps, first = brute_force_per_query(d, qp, gp, qc, gc)
    assert 0 < len(valid) < len(qp)  # some queries skipped, so the per-query order is exercised
    np.testing.assert_array_equal(np.flatnonzero(r.valid), valid)
    np.testing.assert_allclose(r.all_AP, aps, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(r.all_first_rank, first)
    np.testing.assert_array_equal(r.all_rank1_hit, first == 0)
    assert r.all_AP.mean() == pytest.approx(r.mAP, abs=1e-15)
    assert r.all_rank1_hit.mean() == pytest.approx(r.cmc[0], abs=1e-15)
    feats = evaluate(rng.standard_normal((41, 8)), rng.standard_normal((173, 8)), qp, gp, qc, gc, max_rank=10)
    assert feats.all_AP.shape == feats.all_first_rank.shape == (feats.num_valid_queries,)
    assert feats.all_AP.mean() == pytest.approx(feats.mAP, abs=1e-15)


def test_hand_made_cases():
    # gallery: idx 0 pid1 cam0 (same cam as query 0: removed), 1 pid2 cam1, 2 pid1 cam1, 3 pid0 (distractor), 4 pid1 cam2
    g_pids = np.array([1, 2, 1, 0, 1])
    g_cams = np.array([0, 1, 1, 2, 2])
    q_pids = np.array([1, 3, 2])
    q_cams = np.array([0, 0, 1])  # query 1: pid 3 absent -> skipped; query 2: pid2's only image is same cam -> skipped
    d = np.array([[0.0, 0.5, 0.7, 0.6, 0.9],
                  [0.1, 0.2, 0.3, 0.4, 0.5],
                  [0.3, 0.0, 0.1, 0.2, 0.4]], dtype=np.float32)
    r = evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, max_rank=4)
    # query 0 kept list by distance: g1 (0.5, neg), g3 (0.6, distractor neg), g2 (0.7, pos), g4 (0.9, pos)
    assert r.num_valid_queries == 1
    np.testing.assert_allclose(r.cmc, [0, 0, 1, 1])
    assert r.mAP == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert r.mINP == pytest.approx(2 / 4)
    assert r.rank1 == 0.0


def test_ties_follow_gallery_order():
    g_pids = np.array([5, 1, 1, 5])
    g_cams = np.array([1, 1, 1, 1])
    d = np.zeros((1, 4), np.float32)  # all tied: stable order is gallery order
    r = evaluate_rank(d, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=4)
    np.testing.assert_allclose(r.cmc, [0, 1, 1, 1])
    assert r.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r.mINP == pytest.approx(2 / 3)
    # reversing the gallery changes the tie order and therefore the result
    r2 = evaluate_rank(d, np.array([1]), g_pids[::-1].copy(), np.array([0]), g_cams, max_rank=4)
    assert r2.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)  # symmetric case: same
    r3 = evaluate_rank(d, np.array([1]), np.array([1, 5, 5, 1]), np.array([0]), g_cams, max_rank=4)
    assert r3.mAP == pytest.approx((1 / 1 + 2 / 4) / 2)


def test_torch_and_float16_input():
    rng = np.random.default_rng(0)
    d, qp, gp, qc, gc = random_case(rng, 20, 60, 8, 3)
    d = d.astype(np.float16).astype(np.float32)
    a = evaluate_rank(d, qp, gp, qc, gc)
    b = evaluate_rank(torch.from_numpy(d).half(), torch.from_numpy(qp), gp.tolist(), qc, gc)
    assert a.mAP == b.mAP and np.array_equal(a.cmc, b.cmc)


def test_bad_inputs():
    d = np.zeros((2, 3), np.float32)
    ids = (np.zeros(2, int), np.zeros(3, int), np.zeros(2, int), np.ones(3, int))
    with pytest.raises(ValueError, match="q_pids"):
        evaluate_rank(d, np.zeros(3, int), *ids[1:])
    with pytest.raises(ValueError, match="distmat"):
        evaluate_rank(np.zeros(3, np.float32), *ids)
    with pytest.raises(TypeError, match="distmat"):
        evaluate_rank(np.zeros((2, 3), np.int64), *ids)
    bad = d.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_rank(bad, *ids)
    with pytest.raises(TypeError, match="g_camids"):
        evaluate_rank(d, ids[0], ids[1], ids[2], np.array([0.5, 1, 2]))


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_chunked_distances_equal_unchunked(metric):
    qf = torch.randn(37, 24, dtype=torch.float64)
    gf = torch.randn(101, 24, dtype=torch.float64)
    full = compute_distance_matrix(qf, gf, metric, chunk_size=10**6, out_dtype=np.float64)
    for cs in (1, 7, 36):
        np.testing.assert_allclose(compute_distance_matrix(qf, gf, metric, chunk_size=cs, out_dtype=np.float64),
                                   full, rtol=0, atol=1e-12)
    qn, gn = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    ref = {"euclidean": torch.cdist(qn, gn), "sqeuclidean": torch.cdist(qn, gn) ** 2, "cosine": 1 - qn @ gn.t()}[metric]
    np.testing.assert_allclose(full, ref.numpy(), atol=1e-7)
    f32 = compute_distance_matrix(qf.float(), gf.float(), metric, chunk_size=5)
    np.testing.assert_allclose(f32, full, atol=2e-5)


def test_evaluate_features_chunked_equals_distmat():
    rng = np.random.default_rng(1)
    n_ids = 15
    centers = rng.standard_normal((n_ids, 32))
    gp = rng.integers(0, n_ids, 300); qp = rng.integers(0, n_ids, 45)
    gf = centers[gp] + 0.8 * rng.standard_normal((300, 32)); qf = centers[qp] + 0.8 * rng.standard_normal((45, 32))
    gc = rng.integers(0, 4, 300); qc = rng.integers(0, 4, 45)
    for metric in ("euclidean", "cosine"):
        d = compute_distance_matrix(qf, gf, metric, out_dtype=np.float64)
        a = evaluate_rank(d, qp, gp, qc, gc)
        b = evaluate(qf, gf, qp, gp, qc, gc, metric=metric, chunk_size=7)
        ref = brute_force(d, qp, gp, qc, gc)
        assert a.mAP == pytest.approx(ref[1], abs=1e-12) and b.mAP == pytest.approx(ref[1], abs=1e-12)
        np.testing.assert_allclose(b.cmc, ref[0])
        assert 0.3 < a.mAP <= 1.0


def test_re_ranking():
    rng = np.random.default_rng(2)
    n_ids = 12
    centers = rng.standard_normal((n_ids, 16))
    gp = np.repeat(np.arange(n_ids), 6); qp = np.arange(n_ids)
    gf = centers[gp] + 0.9 * rng.standard_normal((len(gp), 16)); qf = centers[qp] + 0.9 * rng.standard_normal((n_ids, 16))
    gc = np.tile(np.arange(6), n_ids); qc = np.full(n_ids, 6)
    rr = re_ranking(qf, gf, k1=6, k2=3, lambda_value=0.3)
    assert rr.shape == (n_ids, len(gp)) and rr.dtype == np.float32 and np.isfinite(rr).all()
    # lambda = 1: the original distances, each column of the (q+g) matrix scaled by its max
    orig = re_ranking(qf, gf, k1=6, k2=3, lambda_value=1.0)
    allf = torch.nn.functional.normalize(torch.from_numpy(np.concatenate([qf, gf])).float(), dim=1)
    d2 = torch.cdist(allf, allf) ** 2
    ref = (d2 / d2.max(0).values[None, :]).t()[:n_ids, n_ids:]
    np.testing.assert_allclose(orig, ref.numpy(), atol=1e-5)
    base = evaluate_rank(compute_distance_matrix(qf, gf), qp, gp, qc, gc)
    rer = evaluate(qf, gf, qp, gp, qc, gc, rerank=True, rerank_kwargs=dict(k1=6, k2=3))
    assert rer.mAP >= base.mAP - 0.05  # re-ranking should not wreck a clustered toy case
    with pytest.raises(ValueError, match="max_memory_gb"):
        re_ranking(qf, gf, max_memory_gb=1e-9)
