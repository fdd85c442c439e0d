"""Is the IBB's gain an information-bottleneck effect? Plain attention, paired by seed, every arm
switching on at the same epoch (the config's ``ibb.start_epoch``) and refreshing the same way:

* ``baseline``  — no IBB;
* ``ibb``       — the IBB (the demo's η and β; the ablation's ``ibb_only``);
* ``prototype`` — a non-IB control (``ibb.control=prototype``): a cosine-prototype cross-entropy on
  prototypes from the IBB's own refreshed centroids and Q, scaled every step to η·IBB's gradient norm
  on the feature (same clusters, same gradient size, no bottleneck);
* ``shuffled_q`` — the IBB with Q refreshed from shuffled labels (``ibb.control=shuffled_q``): the
  bound's clustering without the label information.

Each arm is reported against the baseline of the same seed (paired difference, its standard error,
how many seeds are positive) and the controls also against the IBB. Runs are reused: a finished run
with the same config in its folder or under ``--adopt-from`` (the ablation's runs by default, so its
baseline and ibb_only runs are not trained again); an interrupted one is continued.

    python -m experiments.ib_control                          # seeds 1-4 at the demo budget
    python -m experiments.ib_control --seeds 1 2 3 4 5 --arms prototype shuffled_q
    python -m experiments.ib_control --epochs 8 --train-ids 150   # a smaller budget (say so when quoting)
    python -m experiments.ib_control --finished-only              # tabulate the finished runs, train nothing

Writes experiments/results/ib_control.json; run folders under runs/ib_control/.
"""
import argparse
import os
from typing import Dict, List, Tuple

from .ablation import add_budget_flags, budget_overrides, budget_record
from .common import command_line, final_row, finished_run, train, train_args, write_json
from .paired import format_contrast, paired_contrast, per_query_contrast, per_query_of

ARMS: Dict[str, List[str]] = {
    "baseline": ["model.attn_impl=sdpa", "ibb.enabled=false"],
    "ibb": ["model.attn_impl=sdpa", "ibb.enabled=true"],
    "prototype": ["model.attn_impl=sdpa", "ibb.enabled=true", "ibb.control=prototype"],
    "shuffled_q": ["model.attn_impl=sdpa", "ibb.enabled=true", "ibb.control=shuffled_q"],
}


def run_row(seed: int, metrics: Dict) -> Dict:
    """A run's row: seed, final mAP / Rank-1 (%), and the mean over IBB-on epochs of the applied term's
    gradient ratio on the feature and (prototype control) its scale."""
    row = {"seed": seed, **final_row(metrics)}
    on = [e for e in metrics.get("epochs", []) if e.get("ibb_on")]
    for key in ("ibb_grad_ratio", "control_scale", "ibb_term2"):
        vals = [e[key] for e in on if e.get(key) is not None]
        if vals:
            row[f"{key}_mean"] = sum(vals) / len(vals)
    return row


def contrast_pairs(arms) -> List[Tuple[str, str]]:
    """The ``(a, b)`` arms contrasted as ``a - b``, of those present: every arm minus the baseline, then
    the IBB minus each control (a positive IBB − control is what the control does not give)."""
    pairs = [(a, "baseline") for a in arms if a != "baseline"] + [("ibb", c) for c in ("prototype", "shuffled_q")]
    return [(a, b) for a, b in pairs if a in arms and b in arms]


def contrasts(runs: Dict[str, List[Dict]]) -> Dict[str, Dict]:
    """Paired contrasts of :func:`contrast_pairs` (mAP and Rank-1)."""
    return {f"{a} - {b}": {k: paired_contrast(runs[a], runs[b], k) for k in ("mAP", "rank1")}
            for a, b in contrast_pairs(runs)}


def per_query_contrasts(finals: Dict[str, Dict[int, Dict]], n_boot: int = 2000) -> Dict[str, Dict]:
    """The contrasts of :func:`contrasts` paired per query (AP and Rank-1 hits, identity bootstrap) on the
    seeds whose two runs both recorded per-query AP (``finals[arm][seed]``: metrics.json's ``final``), so
    the result file carries them (the run folders are not committed)."""
    out = {}
    for a, b in contrast_pairs(finals):
        name = f"{a} - {b}"
        seeds = [s for s in sorted(set(finals[a]) & set(finals[b]))
                 if finals[a][s].get("per_query") and finals[b][s].get("per_query")]
        if seeds:
            pairs = [(per_query_of(finals[a][s]), per_query_of(finals[b][s])) for s in seeds]
            out[name] = {"seeds": seeds, **{k: per_query_contrast(pairs, k, n_boot=n_boot) for k in ("AP", "rank1")}}
    return out


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--run-root", default=os.path.join("runs", "ib_control"))
    p.add_argument("--adopt-from", default=os.path.join("runs", "ablation"),
                   help="take finished runs with the same config from folders under this one (\"\" for none)")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: tabulate the runs that have finished, list the others as not run")
    add_budget_flags(p)
    args = p.parse_args(argv)
    common = budget_overrides(args)
    runs: Dict[str, List[Dict]] = {}
    finals: Dict[str, Dict[int, Dict]] = {}
    not_run: List[str] = []
    for seed in args.seeds:  # seed-major: a partial result still pairs
        for arm in args.arms:
            run_dir, over = os.path.join(args.run_root, f"{arm}_seed{seed}"), ARMS[arm] + common + [f"solver.seed={seed}"]
            if args.finished_only:
                m = finished_run(run_dir, train_args(over))
                if m is None:
                    not_run.append(f"{arm} seed {seed}")
                    print(f"{arm} seed {seed}: not run", flush=True)
                    continue
            else:
                m = train(run_dir, over, reuse=True, adopt_from=args.adopt_from)
            row = run_row(seed, m)
            runs.setdefault(arm, []).append(row)
            finals.setdefault(arm, {})[seed] = m.get("final") or {}
            print(f"{arm} seed {seed}: mAP {row['mAP']:.2f} Rank-1 {row['rank1']:.2f}", flush=True)
    out = {"experiment": "IBB vs matched-gradient non-IB control vs label-shuffled Q (plain attention)",
           "budget": budget_record(args), "seeds": args.seeds, "arms": {a: ARMS[a] for a in args.arms},
           "command": command_line("experiments.ib_control"), "runs": runs, "not_run": not_run,
           "contrasts": contrasts(runs), "per_query_contrasts": per_query_contrasts(finals),
           "note": "contrasts are paired by seed (a - b per seed; se = sd of the differences / sqrt(n)); "
                   "unpaired_se is the standard error of the difference of the two means, for comparison"}
    for name, c in out["contrasts"].items():
        print(f"{name}: mAP {format_contrast(c['mAP'])}; Rank-1 {format_contrast(c['rank1'])}")
    print(write_json("ib_control.json", out))
    return out


if __name__ == "__main__":
    main()
