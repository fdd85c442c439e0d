"""Paired-by-seed contrasts for the experiment scripts: runs that differ in one setting but share the
seed (initialisation, data order, the epochs before the difference switches on) pair, and their
difference has a much smaller spread than two unpaired means. Runs evaluated on the same query list
also pair query by query (:func:`per_query_contrast`, bootstrapped over identities)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def paired_contrast(a: Sequence[Dict], b: Sequence[Dict], key: str = "mAP") -> Dict:
    """``a - b`` on ``key`` over the seeds both lists of run rows (dicts with ``"seed"``) have: ``mean``,
    ``sd`` and ``se`` (= sd / sqrt(n)) of the per-seed differences, ``n``, ``positive`` (how many > 0),
    ``diffs`` ({seed: difference}); and, beside it, the unpaired standard error of the difference of
    the two means over those seeds (``unpaired_se``)."""
    by_a = {r["seed"]: r[key] for r in a}
    by_b = {r["seed"]: r[key] for r in b}
    seeds = sorted(set(by_a) & set(by_b))
    d = [by_a[s] - by_b[s] for s in seeds]
    n = len(d)
    out: Dict = {"n": n, "diffs": {str(s): v for s, v in zip(seeds, d)}}
    if n == 0:
        return {**out, "mean": float("nan"), "sd": float("nan"), "se": float("nan"), "positive": 0,
                "unpaired_se": float("nan")}
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")

    def var(vals: List[float]) -> float:
        mu = sum(vals) / len(vals)
        return sum((v - mu) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else float("nan")

    va, vb = var([by_a[s] for s in seeds]), var([by_b[s] for s in seeds])
    return {**out, "mean": m, "sd": sd, "se": sd / math.sqrt(n) if n > 1 else float("nan"),
            "positive": sum(x > 0 for x in d), "unpaired_se": math.sqrt(va / n + vb / n) if n > 1 else float("nan")}


def format_contrast(c: Dict, unit: str = "") -> str:
    """``+1.55 ± 0.18 (paired se, n = 6, 6/6 > 0; unpaired se 1.8)``."""
    if not c["n"]:
        return "— (no paired seeds)"
    return (f"{c['mean']:+.2f}{unit} ± {c['se']:.2f} (paired se, n = {c['n']}, {c['positive']}/{c['n']} > 0; "
            f"unpaired se {c['unpaired_se']:.2f})")


# ------------------------------------------------------------------------------ paired per query
# A run's final evaluation stores each valid query's AP and rank-1 hit (metrics.json
# ``final["per_query"]``: ``query_pids``, ``AP``, ``rank1``; ``occlusion``: the same per occlusion level,
# keyed by ``str(ratio)``, its ``query_pids`` left out when they are the clean ones). Two runs evaluated
# on the same query list pair query by query. Queries of one identity are not independent (same person,
# same gallery matches), so the bootstrap resamples identities, each with all its queries.

def per_query_of(final: Dict, occlusion: Optional[float] = None) -> Dict:
    """``{"query_pids", "AP", "rank1"}`` of a metrics.json ``final`` record: the clean evaluation, or the
    occlusion level ``occlusion`` (a ratio, e.g. 0.4). Raises KeyError naming what is missing."""
    pq = (final or {}).get("per_query")
    if not pq:
        raise KeyError("final['per_query']: this run's metrics.json has no per-query AP (made before it was recorded)")
    if occlusion is None:
        return pq
    level = (pq.get("occlusion") or {}).get(str(float(occlusion)))
    if level is None:
        raise KeyError(f"final['per_query']['occlusion'][{str(float(occlusion))!r}]: no per-query AP at occlusion "
                       f"{occlusion}; levels recorded: {sorted((pq.get('occlusion') or {}))}")
    return {"query_pids": level.get("query_pids", pq["query_pids"]), **{k: level[k] for k in ("AP", "rank1")}}


def _paired_values(a: Dict, b: Dict, key: str, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """(query pids [n], a - b [n]) of two per-query records; refuses different query lists."""
    for name, rec in (("a", a), ("b", b)):
        if key not in rec or "query_pids" not in rec:
            raise KeyError(f"{where}: run {name} has no per-query {key!r} (keys: {sorted(rec)})")
        if len(rec[key]) != len(rec["query_pids"]):
            raise ValueError(f"{where}: run {name} has {len(rec[key])} per-query {key!r} values for "
                             f"{len(rec['query_pids'])} query ids")
    pa, pb = np.asarray(a["query_pids"], np.int64), np.asarray(b["query_pids"], np.int64)
    if len(pa) == 0:
        raise ValueError(f"{where}: run a has no valid query")
    if pa.shape != pb.shape or not np.array_equal(pa, pb):
        first = next((i for i, (x, y) in enumerate(zip(pa, pb)) if x != y), min(len(pa), len(pb)))
        raise ValueError(f"{where}: the two runs' query ids differ ({len(pa)} vs {len(pb)} valid queries, first "
                         f"difference at query {first}); a per-query contrast needs both runs evaluated on the same "
                         "query list")
    return pa, np.asarray(a[key], np.float64) - np.asarray(b[key], np.float64)


def per_query_contrast(pairs: Sequence[Tuple[Dict, Dict]], key: str = "AP", *, n_boot: int = 2000, seed: int = 0,
                       ci_level: float = 0.95) -> Dict:
    """``a - b`` on the per-query ``key`` (``"AP"`` or ``"rank1"``) of runs paired query by query, one
    ``(a, b)`` pair of per-query records (:func:`per_query_of`) per training seed.

    Each seed's effect is the mean over its queries of ``a - b``; the pooled effect (``mean``) is the
    mean of the seeds' effects (``per_seed``). Its percentile confidence interval (``ci``, at level
    ``ci_level``) and ``se`` (sd of the draws) come from ``n_boot`` bootstrap draws of identities with
    replacement, seeded by ``seed``: one draw shared by every seed when all seeds have the same query
    list (``joint``; the test set is then the one source of sampling error), else one per seed. It
    covers the query sample, not the training seeds: with several seeds see also the paired-by-seed
    standard error. Also ``n_seeds``, ``n_queries`` and ``n_identities`` (per seed when they differ:
    the first seed's)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot: expected an int >= 1 (bootstrap draws), got {n_boot!r}")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level: expected a confidence level in (0, 1), got {ci_level!r}")
    if key not in ("AP", "rank1"):
        raise ValueError(f"key: expected 'AP' or 'rank1', got {key!r}")
    if not pairs:
        raise ValueError("pairs: expected at least one (a, b) pair of per-query records, got none")
    paired = [_paired_values(a, b, key, f"pair {i} ({key})") for i, (a, b) in enumerate(pairs)]
    joint = all(np.array_equal(paired[0][0], p) for p, _ in paired[1:])
    rng = np.random.default_rng(seed)
    draws = np.zeros(n_boot)
    weights = None
    for pids, diff in paired:
        ids, cluster = np.unique(pids, return_inverse=True)
        if len(ids) < 2:  # every draw would be the same: a zero-width interval that says nothing
            raise ValueError(f"the queries cover {len(ids)} identity: a bootstrap over identities needs at least 2")
        sums = np.bincount(cluster, weights=diff, minlength=len(ids))
        counts = np.bincount(cluster, minlength=len(ids)).astype(np.float64)
        if weights is None or not joint:
            picks = rng.integers(len(ids), size=(n_boot, len(ids))) + len(ids) * np.arange(n_boot)[:, None]
            # weights[r, i]: how many times draw r took identity i
            weights = np.bincount(picks.ravel(), minlength=n_boot * len(ids)).reshape(n_boot, len(ids))
            weights = weights.astype(np.float64)
        draws += (weights @ sums) / (weights @ counts)
    draws /= len(paired)
    per_seed = [float(d.mean()) for _, d in paired]
    lo, hi = np.quantile(draws, [(1.0 - ci_level) / 2, (1.0 + ci_level) / 2])
    return {"mean": float(np.mean(per_seed)), "per_seed": per_seed, "ci": (float(lo), float(hi)), "ci_level": ci_level,
            "se": float(draws.std(ddof=1)) if n_boot > 1 else float("nan"), "n_boot": n_boot, "seed": seed,
            "joint": joint, "n_seeds": len(paired), "n_queries": len(paired[0][0]),
            "n_identities": len(np.unique(paired[0][0]))}


def format_per_query_contrast(c: Dict, scale: float = 100.0) -> str:
    """``+1.23 [-0.40, +2.85]`` (the pooled per-query effect times ``scale`` and its bootstrap CI)."""
    lo, hi = c["ci"]
    return f"{scale * c['mean']:+.2f} [{scale * lo:+.2f}, {scale * hi:+.2f}]"
