"""Shortcut dose-response: does RIB remove a nuisance tied to identity? The synthetic data with each
training identity shot in its fixed home scene (background, clutter layout, camera colour cast) in a
share p of its training images (``home_scene_frac``), test scenes independent, and the training and
test splits drawn from separate random streams (``split_streams``), so every p has the same test split
file for file. For each seed and p in ``--p`` (default 0 and 0.8): baseline, IBB only and RIB-DCS.

Reported, paired by seed: each variant's cost of the shortcut (mAP at p minus mAP at p = 0), and the
interaction (a variant's cost minus the baseline's: > 0 means the variant loses less to the shortcut).
``--confuser-prob`` adds confuser occlusion (a partial person of another identity covering 20-40% of
the target, in training and test) to every draw, for DCS on that nuisance.

    python -m experiments.shortcut                               # p 0 and 0.8, seeds 1-3, demo budget
    python -m experiments.shortcut --p 0 0.5 0.8 --variants baseline rib_dcs --seeds 1 2
    python -m experiments.shortcut --p 0 --confuser-prob 0.5 --variants baseline dcs_only rib_dcs
    python -m experiments.shortcut --epochs 8 --train-ids 150    # a smaller budget (say so when quoting)

Writes experiments/results/<--out>.json (default shortcut.json); run folders under runs/shortcut/.
"""
import argparse
import os
from typing import Dict, List, Optional

from .ablation import add_budget_flags, budget_record
from .common import VARIANTS, budget_overrides as common_budget_overrides, command_line, demo_settings, final_row, \
    train, write_json
from .paired import format_contrast, paired_contrast


def dataset_override(p: float, confuser_prob: float = 0.0, train_ids: Optional[int] = None) -> str:
    """The ``--set`` of ``data.dataset_kwargs``: the demo's sizes (``train_ids`` training identities if
    given) with separate split streams, home-scene share ``p`` and confuser share ``confuser_prob``."""
    for name, v in (("p", p), ("confuser_prob", confuser_prob)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name}: expected a share in [0, 1], got {v}")
    kw = dict(demo_settings()["dataset_kwargs"])
    if train_ids:
        kw["num_train_ids"] = int(train_ids)
    kw.update(split_streams="true", home_scene_frac=float(p))
    if confuser_prob:
        kw["confuser_prob"] = float(confuser_prob)
    return "data.dataset_kwargs={" + ", ".join(f"{k}: {v}" for k, v in kw.items()) + "}"


def run_name(variant: str, p: float, confuser_prob: float, seed: int) -> str:
    c = f"_conf{confuser_prob:g}" if confuser_prob else ""
    return f"{variant}_p{p:g}{c}_seed{seed}"


def analyse(runs: Dict[str, Dict[str, List[Dict]]], ps: List[float]) -> Dict:
    """{"cost": {variant: {p: paired(mAP at p - mAP at p0)}}, "interaction": {variant: {p: paired(cost -
    baseline's cost)}}} with p0 the smallest p; keys are strings."""
    p0 = f"{min(ps):g}"
    cost, inter = {}, {}
    for v, by_p in runs.items():
        if p0 not in by_p:
            continue
        for p, rows in by_p.items():
            if p == p0:
                continue
            cost.setdefault(v, {})[p] = {k: paired_contrast(rows, by_p[p0], k) for k in ("mAP", "rank1")}
    if "baseline" in runs and p0 in runs["baseline"]:
        base = runs["baseline"]
        for v, by_p in runs.items():
            if v == "baseline" or p0 not in by_p:
                continue
            for p, rows in by_p.items():
                if p == p0 or p not in base:
                    continue
                # per seed: (v_p - v_p0) - (b_p - b_p0) = (v_p - b_p) - (v_p0 - b_p0)
                def diff(a, b):
                    bb = {r["seed"]: r["mAP"] for r in b}
                    return [{"seed": r["seed"], "mAP": r["mAP"] - bb[r["seed"]]} for r in a if r["seed"] in bb]
                inter.setdefault(v, {})[p] = paired_contrast(diff(rows, base[p]), diff(by_p[p0], base[p0]), "mAP")
    return {"p0": p0, "cost": cost, "interaction": inter}


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=float, nargs="+", default=[0.0, 0.8], help="home-scene shares (the smallest is the reference)")
    ap.add_argument("--confuser-prob", type=float, default=0.0, help="share of images with a confuser (all splits)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--variants", nargs="+", default=["baseline", "ibb_only", "rib_dcs"], choices=list(VARIANTS))
    ap.add_argument("--run-root", default=os.path.join("runs", "shortcut"))
    ap.add_argument("--out", default="shortcut", help="result file stem under experiments/results/")
    add_budget_flags(ap)
    args = ap.parse_args(argv)
    for v in args.p + [args.confuser_prob]:
        if not 0.0 <= v <= 1.0:
            ap.error(f"--p / --confuser-prob: expected shares in [0, 1], got {v}")
    common = common_budget_overrides(args.epochs, None)
    if args.num_threads:
        common.append(f"solver.num_threads={args.num_threads}")
    runs: Dict[str, Dict[str, List[Dict]]] = {}
    for seed in args.seeds:  # seed-major: a partial result still pairs
        for p in args.p:
            data = dataset_override(p, args.confuser_prob, args.train_ids)
            for v in args.variants:
                m = train(os.path.join(args.run_root, run_name(v, p, args.confuser_prob, seed)),
                          VARIANTS[v] + common + [data, f"solver.seed={seed}"], reuse=True)
                row = {"seed": seed, **final_row(m)}
                runs.setdefault(v, {}).setdefault(f"{p:g}", []).append(row)
                print(f"{v} p={p:g} seed {seed}: mAP {row['mAP']:.2f} Rank-1 {row['rank1']:.2f}", flush=True)
    res = analyse(runs, args.p)
    out = {"experiment": "shortcut dose-response (home scenes in training, independent test scenes)",
           "budget": {**budget_record(args), "train_ids": args.train_ids or demo_settings()["dataset_kwargs"]["num_train_ids"]},
           "p": args.p, "confuser_prob": args.confuser_prob, "seeds": args.seeds, "variants": args.variants,
           "dataset_kwargs": {f"{p:g}": dataset_override(p, args.confuser_prob, args.train_ids) for p in args.p},
           "command": command_line("experiments.shortcut"), "runs": runs, **res,
           "note": "cost: mAP at p minus mAP at the reference p, paired by seed (same test split, same seed); "
                   "interaction: a variant's cost minus the baseline's, paired by seed (> 0: it loses less)"}
    for v, by_p in res["cost"].items():
        for p, c in by_p.items():
            print(f"{v}: cost of p={p}: mAP {format_contrast(c['mAP'])}")
    for v, by_p in res["interaction"].items():
        for p, c in by_p.items():
            print(f"{v} vs baseline at p={p}: {format_contrast(c)}")
    print(write_json(args.out + ".json", out))
    return out


if __name__ == "__main__":
    main()
