"""Markdown tables of the committed results under experiments/results/ (what the READMEs quote), with
the ablation's variants compared **paired by seed**.

    python -m experiments.summarize [--runs runs] [--n-boot 2000] [--boot-seed 0]

Runs of the ablation that share a seed share the initialisation, the data order and (before the IBB
switches on) the first epochs, so a contrast between two variants is taken seed by seed: the paired
difference ``d_s = x_s(a) - x_s(b)`` over the seeds ``s`` both have, its mean, its standard error
``sd(d) / sqrt(n)`` and its signs. Beside it, the unpaired standard error of the difference of the
two means, ``sqrt(var(a) / n_a + var(b) / n_b)`` (what reading the variants' means alone allows).

The ablation is a 2 x 2 design (DCS on/off x IBB on/off). A factor's effect pooled over the other
factor has two pairs per seed; it is reported over the pairs (``n = 2 x seeds``) and, more
conservatively, over the seeds with each seed's two pairs averaged (``n = seeds``).

Where run folders ``runs/<experiment>/<arm>_seed<k>/metrics.json`` hold per-query AP (runs made since
the final evaluation records it), the arms of each experiment are also contrasted query by query on
the same query list, with a bootstrap over identities (experiments/paired.py ``per_query_contrast``).
"""
import argparse
import json
import math
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from .common import ROOT, load_json
from .ib_control import contrast_pairs
from .paired import format_per_query_contrast, per_query_contrast, per_query_of

# (DCS, IBB) of each ablation variant
FACTORS = {"baseline": (False, False), "dcs_only": (True, False), "ibb_only": (False, True), "rib_dcs": (True, True)}
METRICS = ("mAP", "rank1")


def _f(x, nd=1):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _sd(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); NaN below two values."""
    n = len(xs)
    if n < 2:
        return float("nan")
    m = sum(xs) / n
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def paired_stats(diffs: Sequence[float]) -> Dict:
    """Mean, sd, standard error ``sd / sqrt(n)`` and signs of paired differences ``diffs``."""
    n = len(diffs)
    if n == 0:
        raise ValueError("paired_stats: no pairs (the two variants share no seed)")
    mean = sum(diffs) / n
    sd = _sd(diffs)
    return {"n": n, "mean": mean, "sd": sd, "se": sd / math.sqrt(n) if n > 1 else float("nan"),
            "positive": sum(d > 0 for d in diffs), "negative": sum(d < 0 for d in diffs), "diffs": list(diffs)}


def unpaired_se(a: Sequence[float], b: Sequence[float]) -> float:
    """Standard error of ``mean(a) - mean(b)`` for independent samples: ``sqrt(var a / n_a + var b / n_b)``."""
    return math.sqrt(_sd(a) ** 2 / len(a) + _sd(b) ** 2 / len(b))


def contrast(pairs: Sequence[Tuple[Dict[int, float], Dict[int, float]]]) -> Dict:
    """``a - b`` for each ``(a, b)`` in ``pairs`` (each a ``{seed: value}``), paired on the seeds both have.

    Returns the paired statistics over all pairs (``"pairs"``), over seeds with each seed's pairs
    averaged (``"seeds"``; the same as ``"pairs"`` for a single ``(a, b)``), and the unpaired standard
    error of the difference of means over every ``a`` and every ``b`` value (``"unpaired_se"``)."""
    diffs, by_seed, a_all, b_all = [], {}, [], []
    for a, b in pairs:
        seeds = [s for s in a if s in b]
        if not seeds:
            raise ValueError(f"contrast: no common seed between {sorted(a)} and {sorted(b)}")
        for s in seeds:
            diffs.append(a[s] - b[s])
            by_seed.setdefault(s, []).append(a[s] - b[s])
        a_all += list(a.values())
        b_all += list(b.values())
    seed_means = [sum(v) / len(v) for v in by_seed.values()]
    return {"pairs": paired_stats(diffs), "seeds": paired_stats(seed_means), "seed_order": list(by_seed),
            "unpaired_se": unpaired_se(a_all, b_all), "mean_a": sum(a_all) / len(a_all),
            "mean_b": sum(b_all) / len(b_all)}


def ablation_by_seed(abl: Dict, metric: str) -> Dict[str, Dict[int, float]]:
    """``{variant: {seed: value}}`` of a final metric (percent) from ablation.json."""
    return {v: {r["seed"]: r[metric] for r in runs if r.get(metric) is not None} for v, runs in abl["runs"].items()}


def occlusion_by_seed(abl: Dict, occ: Optional[Dict]) -> Dict[str, Dict[int, Dict[float, Dict[str, float]]]]:
    """``{variant: {seed: {level: {"mAP": %, "rank1": %}}}}`` from ablation.json's occlusion tables.

    A reused run without an occlusion table there (the demo's own runs) takes the curve that
    occlusion.json measured on the same run folder (``--checkpoints NAME=RUN_DIR``), when its clean mAP
    equals the run's final mAP (the same checkpoint, evaluated by the same code)."""
    from_occ = {}
    if occ:
        for item in (occ.get("budget") or {}).get("checkpoints") or []:
            name, run_dir = item.split("=", 1)
            if name in occ["curves"]:
                from_occ[run_dir] = {p["occlusion"]: {m: p[m]["mean"] for m in METRICS} for p in occ["curves"][name]}
    out: Dict = {}
    for v, runs in abl["runs"].items():
        tables = (abl.get("occlusion") or {}).get(v) or [None] * len(runs)
        for r, t in zip(runs, tables):
            if t:
                curve = {p["occlusion"]: {m: 100 * p[m] for m in METRICS} for p in t}
            else:
                curve = from_occ.get(r.get("reused_run"))
                if curve is None or abs(curve.get(0.0, {}).get("mAP", float("nan")) - r["mAP"]) > 1e-6:
                    continue
            out.setdefault(v, {})[r["seed"]] = curve
    return out


def factor_pairs(by_seed: Dict[str, Dict[int, float]], factor: int) -> List[Tuple[Dict, Dict]]:
    """The (on, off) pairs of variants that differ only in ``factor`` (0: DCS, 1: IBB)."""
    pairs = []
    for on, f_on in FACTORS.items():
        for off, f_off in FACTORS.items():
            if f_on[factor] and not f_off[factor] and f_on[1 - factor] == f_off[1 - factor] \
                    and on in by_seed and off in by_seed:
                pairs.append((by_seed[on], by_seed[off]))
    return pairs


def _row(label: str, c: Dict, c_r1: Dict) -> str:
    p, s, u = c["pairs"], c["seeds"], c["unpaired_se"]
    seeds = f" (seed means: {_f(s['mean'], 2)} ± {_f(s['se'], 2)}, n = {s['n']})" if p["n"] != s["n"] else ""
    return (f"| {label} | {p['n']} | **{_f(p['mean'], 2)} ± {_f(p['se'], 2)}**{seeds} | {_f(p['mean'], 2)} ± {_f(u, 2)} | "
            f"{' '.join(_f(d, 2) for d in p['diffs'])} | {p['positive']} of {p['n']} | "
            f"{_f(c_r1['pairs']['mean'], 2)} ± {_f(c_r1['pairs']['se'], 2)} | {_f(c_r1['unpaired_se'], 2)} |")


HEADER = ("| contrast | pairs | mAP: paired mean ± SE | mAP: same difference ± unpaired SE | mAP: each pair | "
          "pairs > 0 | Rank-1: paired mean ± SE | Rank-1: unpaired SE |\n|---|---|---|---|---|---|---|---|")

SIMPLE = (("RIB-DCS − baseline", "rib_dcs", "baseline"), ("IBB only − baseline", "ibb_only", "baseline"),
          ("DCS only − baseline", "dcs_only", "baseline"), ("RIB-DCS − DCS only (IBB added to DCS)", "rib_dcs", "dcs_only"),
          ("RIB-DCS − IBB only (DCS added to IBB)", "rib_dcs", "ibb_only"))


def paired_ablation(abl: Dict) -> Dict:
    """The ablation's contrasts, ``{label: {metric: contrast}}``, clean final metrics."""
    by = {m: ablation_by_seed(abl, m) for m in METRICS}
    out = {}
    for label, a, b in SIMPLE:
        out[label] = {m: contrast([(by[m][a], by[m][b])]) for m in METRICS}
    out["IBB on − off (both DCS settings)"] = {m: contrast(factor_pairs(by[m], 1)) for m in METRICS}
    out["DCS on − off (both IBB settings)"] = {m: contrast(factor_pairs(by[m], 0)) for m in METRICS}
    # interaction: the IBB's effect with DCS minus without, per seed
    for m in METRICS:
        b = by[m]
        with_dcs = {s: b["rib_dcs"][s] - b["dcs_only"][s] for s in b["rib_dcs"] if s in b["dcs_only"]}
        without = {s: b["ibb_only"][s] - b["baseline"][s] for s in b["ibb_only"] if s in b["baseline"]}
        out.setdefault("interaction: IBB effect with DCS − without", {})[m] = contrast([(with_dcs, without)])
    return out


def paired_occlusion(abl: Dict, occ: Optional[Dict]) -> Tuple[Dict, Dict, Dict]:
    """Per occlusion level: contrasts at that level and occlusion-specific ones (the effect at the level
    minus the same-seed effect on clean queries); and each run's share of its clean mAP kept."""
    curves = occlusion_by_seed(abl, occ)
    levels = sorted({lv for v in curves.values() for c in v.values() for lv in c if lv > 0})
    rows: Dict = {}
    for lv in levels:
        at = {m: {v: {s: c[lv][m] for s, c in cs.items() if lv in c} for v, cs in curves.items()} for m in METRICS}
        # the effect's change from clean to this level: x(level) - x(clean) per run, then contrasted
        drop = {m: {v: {s: c[lv][m] - c[0.0][m] for s, c in cs.items() if lv in c and 0.0 in c}
                    for v, cs in curves.items()} for m in METRICS}
        r = rows.setdefault(lv, {})
        r["RIB-DCS − baseline"] = {m: contrast([(at[m]["rib_dcs"], at[m]["baseline"])]) for m in METRICS}
        r["DCS on − off"] = {m: contrast(factor_pairs(at[m], 0)) for m in METRICS}
        r["DCS on − off, occlusion-specific (minus the clean effect)"] = {m: contrast(factor_pairs(drop[m], 0)) for m in METRICS}
        r["IBB on − off"] = {m: contrast(factor_pairs(at[m], 1)) for m in METRICS}
        r["IBB on − off, occlusion-specific (minus the clean effect)"] = {m: contrast(factor_pairs(drop[m], 1)) for m in METRICS}
    share = {lv: {v: {s: c[lv]["mAP"] / c[0.0]["mAP"] for s, c in cs.items() if lv in c and c[0.0]["mAP"] > 0}
                  for v, cs in curves.items()} for lv in levels}
    return rows, share, curves


def estimator_floor(n_per_label: int, labels: int, cells: int, input_cells: int, reps: int = 20, seed: int = 0) -> Dict:
    """Plug-in (Miller-Madow) I(F;Y) and I(F;X̃) of *independent* uniform variables with the IB-estimate
    experiment's sizes: what the estimator reports when there is nothing to find."""
    import numpy as np

    from .ib_estimate import mutual_info

    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(labels), n_per_label)
    fy, fx = [], []
    for _ in range(reps):
        f = rng.integers(cells, size=len(y))
        fy.append(mutual_info(f, y))
        fx.append(mutual_info(f, rng.integers(input_cells, size=len(y))))
    return {"I_F_Y": float(np.mean(fy)), "I_F_Y_sd": float(np.std(fy)), "I_F_X": float(np.mean(fx)),
            "I_F_X_sd": float(np.std(fx)), "n": len(y), "reps": reps}


def verdict(c: Dict, direction: int = 1) -> str:
    """The rule the claims table uses, on the seed-level paired statistics (independent seeds):
    "supported" when the mean lies at least 2 SE in the claimed direction and every seed agrees,
    "contradicted" when that holds in the opposite direction, else "not supported"."""
    s = c["seeds"]
    if s["n"] < 2 or math.isnan(s["se"]):
        return "not supported (one run)"
    m, se = direction * s["mean"], s["se"]
    same = s["positive"] if direction > 0 else s["negative"]
    other = s["negative"] if direction > 0 else s["positive"]
    if m >= 2 * se and same == s["n"]:
        return "supported"
    if -m >= 2 * se and other == s["n"]:
        return "contradicted"
    return "not supported"


def _effect(c: Dict) -> str:
    s = c["seeds"]
    return f"{_f(s['mean'], 2)} ± {_f(s['se'], 2)} mAP ({s['positive']} of {s['n']} seeds > 0)"


def print_paired(abl: Dict, occ: Optional[Dict]) -> None:
    seeds = sorted({r["seed"] for runs in abl["runs"].values() for r in runs})
    order = [r["seed"] for r in abl["runs"]["baseline"]]
    print(f"ablation paired by seed (seeds {', '.join(map(str, seeds))}; points of mAP / Rank-1, %; \"each pair\" "
          f"in seed order {', '.join(map(str, order))}, pooled rows first with the other factor off, then on)\n")
    print("| variant | seed | mAP % ± SE | Rank-1 % ± SE | eval keep | last-epoch IBB term 2 | run |\n|---|---|---|---|---|---|---|")
    for v, runs in abl["runs"].items():
        for r in runs:
            print(f"| {v} | {r['seed']} | {_f(r['mAP'])} ± {_f(r.get('mAP_se'))} | {_f(r['rank1'])} ± {_f(r.get('rank1_se'))} | "
                  f"{_f(r.get('keep_fraction_eval'), 3)} | {_f(r.get('ibb_term2_last_epoch'), 2)} | "
                  f"{r.get('reused_run') or 'trained by the last command'} |")
    print()
    print(HEADER)
    table = paired_ablation(abl)
    for label, c in table.items():
        print(_row(label, c["mAP"], c["rank1"]))
    print()
    rows, share, curves = paired_occlusion(abl, occ)
    if not rows:
        return
    n_runs = sum(len(v) for v in curves.values())
    print(f"occlusion stress test paired by seed ({n_runs} runs; query body occluded, clean gallery; the "
          "seed-1234 baseline and RIB-DCS curves from occlusion.json, measured on the same run folders)\n")
    print("| occluded | " + " | ".join(f"{v} mAP (seeds {', '.join(map(str, sorted(cs)))})" for v, cs in curves.items()) + " |")
    print("|---|" + "---|" * len(curves))
    for lv in [0.0] + sorted(rows):
        cells = []
        for v, cs in curves.items():
            vals = [cs[s][lv]["mAP"] for s in sorted(cs)]
            cells.append(f"{_f(sum(vals) / len(vals))} ± {_f(_sd(vals))}")
        print(f"| {100 * lv:.0f}% | " + " | ".join(cells) + " |")
    print("\n(mean ± std over seeds)\n")
    print(HEADER.replace("| contrast |", "| occluded: contrast |"))
    for lv, r in rows.items():
        for label, c in r.items():
            print(_row(f"{100 * lv:.0f}%: {label}", c["mAP"], c["rank1"]))
    print()
    print("| occluded | share of clean mAP kept, DCS runs (min–max) | non-DCS runs (min–max) | every DCS run below every non-DCS run |")
    print("|---|---|---|---|")
    for lv, by_v in share.items():
        dcs = [x for v, d in by_v.items() if FACTORS[v][0] for x in d.values()]
        plain = [x for v, d in by_v.items() if not FACTORS[v][0] for x in d.values()]
        print(f"| {100 * lv:.0f}% | {len(dcs)} runs: {_f(min(dcs), 3)}–{_f(max(dcs), 3)} | {len(plain)} runs: "
              f"{_f(min(plain), 3)}–{_f(max(plain), 3)} | {max(dcs) < min(plain)} |")
    print()


def arm_by_seed(rows: Sequence[Dict], metric: str) -> Dict[int, float]:
    """``{seed: value}`` of an experiment's run rows (dicts with ``"seed"`` and ``metric``)."""
    return {int(r["seed"]): float(r[metric]) for r in rows}


def ib_control_contrasts(ibc: Dict) -> Dict[str, Dict[str, Dict]]:
    """The IB-specificity experiment's contrasts (:func:`contrast`, mAP and Rank-1): every arm minus the
    baseline, then the IBB minus each control (a positive IBB − control is the part of the IBB's gain
    that the control's matched cluster-level supervision does not give)."""
    runs = ibc["runs"]
    return {f"{a} − {b}": {m: contrast([(arm_by_seed(runs[a], m), arm_by_seed(runs[b], m))]) for m in METRICS}
            for a, b in contrast_pairs(runs) if _share_a_seed(runs[a], runs[b])}


def _share_a_seed(a: Sequence[Dict], b: Sequence[Dict]) -> bool:
    return bool({int(r["seed"]) for r in a} & {int(r["seed"]) for r in b})


def print_ib_control(ibc: Dict) -> None:
    runs = ibc["runs"]
    print(f"IBB vs non-IB controls (plain attention) — `{ibc['command']}` (budget {ibc['budget']})\n")
    print("| arm | seed | mAP % | Rank-1 % | applied term's gradient ÷ task's (mean over IBB epochs) | control's scale |")
    print("|---|---|---|---|---|---|")
    for arm, rows in runs.items():
        for r in rows:
            print(f"| {arm} | {r['seed']} | {_f(r['mAP'])} | {_f(r['rank1'])} | {_f(r.get('ibb_grad_ratio_mean'), 3)} | "
                  f"{_f(r.get('control_scale_mean'), 3)} |")
    print()
    print(HEADER)
    for label, c in ib_control_contrasts(ibc).items():
        print(_row(label, c["mAP"], c["rank1"]))
    print()
    pq = ibc.get("per_query_contrasts") or {}
    if pq:
        print("paired per query (from the result file; 95% CI: bootstrap over identities, the query sample's "
              "uncertainty only)\n")
        print("| contrast | seeds | mAP: per-query paired mean [95% CI] | Rank-1: per-query paired mean [95% CI] | "
              "queries / identities |\n|---|---|---|---|---|")
        for name, c in pq.items():
            print(f"| {name.replace(' - ', ' − ')} | {', '.join(map(str, c['seeds']))} | **{format_per_query_contrast(c['AP'])}** | "
                  f"{format_per_query_contrast(c['rank1'])} | {c['AP']['n_queries']} / {c['AP']['n_identities']} |")
        print()


def channel_shared_contrasts(cs: Dict, abl: Dict) -> Dict[str, Dict[str, Dict]]:
    """Channel-shared DCS (no IBB) against the ablation's baseline and token-mode DCS of the same seeds."""
    return {f"channel_shared − {other}": {m: contrast([(arm_by_seed(cs["runs"], m), arm_by_seed(abl["runs"][other], m))])
                                          for m in METRICS}
            for other in ("baseline", "dcs_only") if other in abl["runs"] and _share_a_seed(cs["runs"], abl["runs"][other])}


def print_channel_shared(cs: Dict, abl: Dict) -> None:
    print(f"DCS in the authors' form (channel_shared, no IBB) — `{cs['command']}` (budget {cs['budget']}; the other "
          "arms are the ablation's runs of the same seeds; occlusion rows: `python -m experiments.channel_shared "
          "--report-only`)\n")
    print(HEADER)
    for label, c in channel_shared_contrasts(cs, abl).items():
        print(_row(label, c["mAP"], c["rank1"]))
    print()


def print_claims(abl: Dict, occ: Optional[Dict], ib: Optional[Dict], em: Optional[Dict],
                 ibc: Optional[Dict] = None, cs: Optional[Dict] = None) -> None:
    table = paired_ablation(abl)
    rows, _, _ = paired_occlusion(abl, occ)
    n = table["RIB-DCS − baseline"]["mAP"]["seeds"]["n"]
    print(f"RIB's claims against the committed results (effects: paired mean ± SE over {n} seeds, each seed's "
          "pairs averaged; verdict rule: experiments/summarize.py `verdict`)\n")
    print("| claim | paired effect | seeds | verdict |\n|---|---|---|---|")
    for claim, c, d in (("accuracy: RIB-DCS retrieves better than the plain ViT", table["RIB-DCS − baseline"]["mAP"], 1),
                        ("accuracy: the IBB term helps (IBB on − off)", table["IBB on − off (both DCS settings)"]["mAP"], 1),
                        ("accuracy: DCS-Attention helps (DCS on − off)", table["DCS on − off (both IBB settings)"]["mAP"], 1)):
        print(f"| {claim} | {_effect(c)} | {c['seeds']['n']} | {verdict(c, d)} |")
    cs_c = channel_shared_contrasts(cs, abl).get("channel_shared − baseline") if cs else None
    if cs_c:
        c = cs_c["mAP"]
        print(f"| accuracy: DCS in the authors' form (channel-shared) helps (− baseline, no IBB) | {_effect(c)} | "
              f"{c['seeds']['n']} | {verdict(c, 1)} |")
    ctr = ib_control_contrasts(ibc) if ibc else {}
    if "ibb − baseline" in ctr:
        c = ctr["ibb − baseline"]["mAP"]
        print(f"| accuracy: the IBB helps plain attention (IB-control experiment's seeds) | {_effect(c)} | "
              f"{c['seeds']['n']} | {verdict(c, 1)} |")
    shown = False
    for control, what in (("prototype", "a matched-gradient cosine-prototype loss on the same centroids"),
                          ("shuffled_q", "the IBB with a label-shuffled Q")):
        if f"ibb − {control}" in ctr:
            c = ctr[f"ibb − {control}"]["mAP"]
            print(f"| IB-specificity: the IBB beats {what} (IBB − control) | {_effect(c)} | {c['seeds']['n']} | "
                  f"{verdict(c, 1)} |")
            shown = True
    if not shown:
        print("| IB-specificity: the IBB's gain is an information-bottleneck effect | no control run (matched-gradient "
              "non-IB loss, label-shuffled Q) | — | not testable here |")
    for lv in (0.4,):
        if lv in rows:
            c = rows[lv]["DCS on − off, occlusion-specific (minus the clean effect)"]["mAP"]
            print(f"| occlusion robustness: DCS gains more under {100 * lv:.0f}% occlusion than on clean queries | "
                  f"{_effect(c)} | {c['seeds']['n']} | {verdict(c, 1)} |")
            c = rows[lv]["RIB-DCS − baseline"]["mAP"]
            print(f"| occlusion robustness: RIB-DCS beats the baseline at {100 * lv:.0f}% occlusion | {_effect(c)} | "
                  f"{c['seeds']['n']} | {verdict(c, 1)} |")
    if em:
        r = em["rows"]
        keys = list(r)
        print(f"| channel selection: the channels the eval mask drops are uninformative (keeping them all hurts) | "
              f"all kept − eval mask: {_f(r[keys[1]]['mAP'] - r[keys[0]]['mAP'], 2)} mAP on one checkpoint "
              f"(SE over queries {_f(r[keys[0]]['mAP_se'])}, not paired) | 1 | not supported (one run) |")
    if ib:
        print(f"| the bound tracks the IB | Pearson {_f(ib['pearson_levels'], 2)} (levels), "
              f"{_f(ib['pearson_changes'], 2)} (epoch-to-epoch changes), one run; see the estimator floor above | 1 | "
              "not testable here |")
    print()


def print_ib_floor(ib: Dict) -> None:
    first, last = ib["epochs"][0], ib["epochs"][-1]
    t1 = sorted({round(e["ibb_term1"], 4) for e in ib["epochs"]})
    floor = estimator_floor(n_per_label=8, labels=300, cells=ib["bins"], input_cells=300)
    print(f"IB estimate's floor: independent uniform F ({ib['bins']} cells), Y (300 labels × 8) and X̃ (300 cells), "
          f"n = {floor['n']}, {floor['reps']} draws: I(F;Y) = {_f(floor['I_F_Y'], 3)} ± {_f(floor['I_F_Y_sd'], 3)}, "
          f"I(F;X̃) = {_f(floor['I_F_X'], 3)} ± {_f(floor['I_F_X_sd'], 3)} nats. The run: I(F;Y) = "
          f"{_f(first['I_F_Y'], 3)} at epoch {first['epoch']}, I(F;X̃) = {_f(last['I_F_X'], 3)} at epoch {last['epoch']} "
          f"(its X̃ is not uniform: H(X̃) = {_f(last['H_Xtilde'], 3)} < log 300 = {_f(math.log(300), 3)}, so its floor "
          f"is lower than this one). IBB term 1 over the epochs: {', '.join(_f(x, 4) for x in t1)}.\n")


RUN_FOLDER = re.compile(r"^(?P<arm>.+)_seed(?P<seed>\d+)$")


def per_query_runs(runs_root: str) -> Tuple[Dict[str, Dict[str, Dict[int, Dict]]], int]:
    """``({experiment: {arm: {seed: final record}}}, folders without per-query AP)`` of the finished run
    folders ``runs_root/<experiment>/<arm>_seed<k>/metrics.json`` whose final record has per-query AP."""
    found: Dict[str, Dict[str, Dict[int, Dict]]] = {}
    without = 0
    if not os.path.isdir(runs_root):
        return found, without
    for experiment in sorted(os.listdir(runs_root)):
        folder = os.path.join(runs_root, experiment)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            match, path = RUN_FOLDER.match(name), os.path.join(folder, name, "metrics.json")
            if not match or not os.path.isfile(path):
                continue
            with open(path) as f:
                final = json.load(f).get("final")
            if not final:
                continue
            if not final.get("per_query"):
                without += 1
                continue
            found.setdefault(experiment, {}).setdefault(match["arm"], {})[int(match["seed"])] = final
    return found, without


CONTROLS_THEN_IBB = ("prototype", "shuffled_q", "ibb")  # the IB-control experiment: "ibb − control"


def _arm_order(arms) -> List[str]:
    """The ablation's variants in their usual order, the IB-control arms with the IBB after its
    controls (so its rows read IBB − control, as everywhere else), then any other arm alphabetically."""
    known = [a for a in (*FACTORS, *CONTROLS_THEN_IBB) if a in arms]
    return known + sorted(a for a in arms if a not in known)


def per_query_table(by_arm: Dict[str, Dict[int, Dict]], n_boot: int, seed: int) -> List[str]:
    """Markdown rows: every later arm minus every earlier one (:func:`_arm_order`), on the seeds both
    have, clean and at every occlusion level both recorded, paired per query."""
    lines = []
    arms = _arm_order(by_arm)
    for j, a in enumerate(arms):
        for b in arms[:j]:
            seeds = sorted(set(by_arm[a]) & set(by_arm[b]))
            if not seeds:
                continue
            levels = [None] + sorted(set.intersection(*[
                {float(k) for k in (by_arm[arm][s]["per_query"].get("occlusion") or {})}
                for arm in (a, b) for s in seeds]))
            for level in levels:
                label = f"{a} − {b}" + ("" if level is None else f", {100 * level:.0f}% occluded")
                pairs = [(per_query_of(by_arm[a][s], level), per_query_of(by_arm[b][s], level)) for s in seeds]
                try:
                    c = {key: per_query_contrast(pairs, key, n_boot=n_boot, seed=seed) for key in ("AP", "rank1")}
                except ValueError as exc:
                    lines.append(f"| {label} | {', '.join(map(str, seeds))} | not paired: {exc} | | | |")
                    continue
                ap = c["AP"]
                lines.append(f"| {label} | {', '.join(map(str, seeds))} | **{format_per_query_contrast(ap)}** | "
                             f"{' '.join(f'{100 * d:+.2f}' for d in ap['per_seed'])} | "
                             f"{format_per_query_contrast(c['rank1'])} | {ap['n_queries']} / {ap['n_identities']} |")
    return lines


def print_per_query(runs_root: str, n_boot: int = 2000, seed: int = 0) -> None:
    """Contrasts paired per query, from run folders whose metrics.json has per-query AP (or a line
    saying there are none)."""
    found, without = per_query_runs(runs_root)
    shown = os.path.relpath(runs_root, ROOT)
    if shown.startswith(os.pardir):
        shown = runs_root
    if not any(len(arms) > 1 for arms in found.values()):
        print(f"contrasts paired per query: no two arms of one experiment under {shown}/<experiment>/<arm>_seed<k>/ "
              f"have per-query AP in their metrics.json ({without} finished run folder(s) there predate it); the "
              "contrasts above are paired by seed only\n")
        return
    for experiment, by_arm in found.items():
        if len(by_arm) < 2:
            continue
        print(f"{experiment}: contrasts paired per query ({shown}/{experiment}; points of mAP / Rank-1; per-query "
              f"mean of a − b, averaged over seeds; [95% CI]: {n_boot} bootstrap draws of identities, seed {seed}, "
              "the query sample's uncertainty only)\n")
        print("| contrast | seeds | mAP: per-query paired mean [95% CI] | mAP: each seed | "
              "Rank-1: paired mean [95% CI] | queries / identities |\n|---|---|---|---|---|---|")
        for line in per_query_table(by_arm, n_boot, seed):
            print(line)
        print()


def main(argv: Sequence[str] = ()) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=os.path.join(ROOT, "runs"),
                   help="run folders <experiment>/<arm>_seed<k>/ for the contrasts paired per query (default: runs/)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws of identities (default 2000)")
    p.add_argument("--boot-seed", type=int, default=0, help="the bootstrap's random seed (default 0)")
    args = p.parse_args(list(argv))
    if args.n_boot < 1:
        p.error(f"--n-boot: expected an int >= 1 (bootstrap draws), got {args.n_boot}")
    demo_b = load_json("demo_baseline.json")
    if demo_b:
        print(f"demo baseline: mAP {_f(demo_b['mAP'])} ± {_f(demo_b['mAP_se'])}, Rank-1 {_f(demo_b['rank1'])} ± "
              f"{_f(demo_b['rank1_se'])}, {demo_b['wall_s'] / 60:.1f} min — {demo_b['source']}\n")
    abl = load_json("ablation.json")
    occ = load_json("occlusion.json")
    if abl:
        print(f"ablation — `{abl['command']}` (budget {abl['budget']})\n")
        print("| variant | seeds | mAP % (mean ± std over seeds) | Rank-1 % | SE over queries (mAP / R1) | last-epoch IBB term 2 | eval keep |")
        print("|---|---|---|---|---|---|---|")
        for name, s in abl["summary"].items():
            runs = abl["runs"][name]
            t2 = [r.get("ibb_term2_last_epoch") for r in runs if r.get("ibb_term2_last_epoch") is not None]
            kf = [r.get("keep_fraction_eval") for r in runs if r.get("keep_fraction_eval") is not None]
            print(f"| {name} | {len(runs)} | {_f(s['mAP']['mean'])} ± {_f(s['mAP']['std'])} | {_f(s['rank1']['mean'])} ± "
                  f"{_f(s['rank1']['std'])} | {_f(s['mean_query_se']['mAP'])} / {_f(s['mean_query_se']['rank1'])} | "
                  f"{_f(sum(t2) / len(t2), 2) if t2 else '—'} | {_f(sum(kf) / len(kf), 3) if kf else '—'} |")
        print()
        print_paired(abl, occ)
    sw = load_json("sweep.json")
    if sw:
        print(f"η × β sweep — `{sw['command']}` (budget {sw['budget']}, seed {sw['seed']})\n")
        print("| η | β | mAP % ± SE | Rank-1 % ± SE | β used (last refresh) | last-epoch IBB term 2 / log K | IBB/task grad ratio |")
        print("|---|---|---|---|---|---|---|")
        eta0_shown = False
        for c in sw["cells"]:
            if c["eta"] == 0:  # η = 0 trains no IBB: one run, shown once
                if eta0_shown:
                    continue
                eta0_shown = True
            if c.get("not_run"):
                print(f"| {c['eta']} | {c['beta']} | not run | | | | |")
                continue
            t2 = f"{_f(c.get('ibb_term2_last_epoch'), 2)} / {_f(c.get('log_k'), 2)}" if c.get("log_k") else "—"
            print(f"| {c['eta']} | {c['beta'] if c['eta'] > 0 else '— (no IBB)'} | {_f(c['mAP'])} ± {_f(c.get('mAP_se'))} | {_f(c['rank1'])} ± {_f(c.get('rank1_se'))} | "
                  f"{_f(c.get('beta_used_last'), 2)} | {t2} | {_f(c.get('grad_ratio_last'), 2)} |")
        print()
        if abl:
            same = {v: next((r for r in abl["runs"].get(v, []) if r["seed"] == sw["seed"]), None)
                    for v in ("baseline", "ibb_only", "dcs_only")}
            if all(same.values()):
                print(f"sweep cells against the ablation's runs of the same seed ({sw['seed']}; one run each, no SE "
                      "across seeds)\n")
                print("| η | β | mAP % | − baseline | − IBB only | − DCS only (η = 0) |\n|---|---|---|---|---|---|")
                for c in sw["cells"]:
                    if c["eta"] > 0 and not c.get("not_run"):
                        print(f"| {c['eta']} | {c['beta']} | {_f(c['mAP'])} | "
                              + " | ".join(f"{c['mAP'] - same[v]['mAP']:+.1f}" for v in ("baseline", "ibb_only", "dcs_only"))
                              + " |")
                print()
    if occ:
        print(f"occlusion (one seed) — `{occ.get('command', '')}` ({occ['source']})\n")
        names = list(occ["curves"])
        print("| occluded | " + " | ".join(f"{n} mAP / R1" for n in names) + " |")
        print("|---|" + "---|" * len(names))
        for i, p in enumerate(occ["curves"][names[0]]):
            cells = [f"{_f(occ['curves'][n][i]['mAP']['mean'])} / {_f(occ['curves'][n][i]['rank1']['mean'])}" for n in names]
            print(f"| {100 * p['occlusion']:.0f}% | " + " | ".join(cells) + " |")
        print()
    ib_main = load_json("ib_estimate.json")
    for ib in (load_json("ib_estimate_demo.json"), ib_main):
        if not ib:
            continue
        print(f"IBB vs IB estimate — `{ib['command']}` (budget {ib['budget']}); estimator: {ib['estimator']}\n")
        print("| epoch | IBB on | IBB | bound IBB + H(X̃) − H(Y) | estimate I(F;X̃) − I(F;Y) | I(F;X̃) | I(F;Y) | holds |")
        print("|---|---|---|---|---|---|---|---|")
        for r in ib["epochs"]:
            print(f"| {r['epoch']} | {r['ibb_on']} | {_f(r['ibb'], 3)} | {_f(r['bound_rhs'], 3)} | {_f(r['ib_estimate'], 3)} | "
                  f"{_f(r['I_F_X'], 3)} | {_f(r['I_F_Y'], 3)} | {r['ib_estimate'] <= r['bound_rhs']} |")
        print(f"\nbound holds every epoch: {ib['bound_holds_every_epoch']}; Pearson (levels) {_f(ib['pearson_levels'], 2)}, "
              f"Spearman (levels) {_f(ib['spearman_levels'], 2)}, Pearson (epoch-to-epoch changes) {_f(ib['pearson_changes'], 2)}; "
              f"final mAP {_f(100 * ib['final']['mAP'])} Rank-1 {_f(100 * ib['final']['rank1'])}\n")
    if ib_main:
        print_ib_floor(ib_main)
    ms = load_json("mask_selection.json")
    if ms:
        print(f"mask selection — `{ms['command']}` (budget {ms['budget']}, seed {ms['seed']}, τ end {ms['tau_end']})\n")
        print("| initial mask logit | mAP % ± SE | Rank-1 % ± SE | kept in training, per block | kept at eval, per block |")
        print("|---|---|---|---|---|")
        for r in ms["rows"]:
            keeps = [" ".join(_f(v, 2) for v in r[k].values()) for k in ("train_keep", "eval_keep")]
            print(f"| {r['init_logit']} | {_f(r['mAP'])} ± {_f(r.get('mAP_se'))} | {_f(r['rank1'])} ± {_f(r.get('rank1_se'))} | "
                  f"{keeps[0]} | {keeps[1]} |")
        print()
    em = load_json("eval_mask_demo.json")
    if em:
        print(f"eval mask — `{em['command']}`\n")
        print("| eval mask | mAP % ± SE | Rank-1 % ± SE |\n|---|---|---|")
        for k, v in em["rows"].items():
            print(f"| {k} | {_f(v['mAP'])} ± {_f(v['mAP_se'])} | {_f(v['rank1'])} ± {_f(v['rank1_se'])} |")
        print()
    ibc, cs = load_json("ib_control.json"), load_json("channel_shared.json")
    if ibc:
        print_ib_control(ibc)
    if cs and abl:
        print_channel_shared(cs, abl)
    if abl:
        print_claims(abl, occ, ib_main, em, ibc, cs)
    print_per_query(args.runs, args.n_boot, args.boot_seed)


if __name__ == "__main__":
    main(sys.argv[1:])
