"""Paired-by-seed contrasts for the experiment scripts: runs that differ in one setting but share the
seed (initialisation, data order, the epochs before the difference switches on) pair, and their
difference has a much smaller spread than two unpaired means."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence


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
