"""Experiment (c): occlusion stress test, baseline vs RIB-DCS: mAP / Rank-1 when a synthetic occluder
covers 20-80% of each query's body (clean gallery), as curves. By default it reads the runs of
experiments.ablation (which evaluates every run at these levels) and averages over their seeds;
``--train`` trains its own pair instead.

    python -m experiments.occlusion                 # from experiments/results/ablation.json
    python -m experiments.occlusion --train [--epochs 8 --train-ids 150] [--seeds 1 2 3]
    python -m experiments.occlusion --checkpoints baseline=runs/demo_baseline rib_dcs=runs/demo_rib
        # evaluate finished runs' final.pth (train.py --eval-only --occlusion)

Writes experiments/results/occlusion.json and occlusion.png.
"""
import argparse
import os

from .ablation import OCCLUSION, add_budget_flags, budget_overrides, budget_record
from .common import VARIANTS, load_json, mean_std_se, train, write_json

NAMES = ("baseline", "rib_dcs")


def curves(per_variant: dict) -> dict:
    """{variant: [{occlusion, mAP: mean/std/se, rank1: ...}]} from per-seed occlusion tables."""
    out = {}
    for name, tables in per_variant.items():
        tables = [t for t in tables if t]
        if not tables:
            continue
        levels = [r["occlusion"] for r in tables[0]]
        out[name] = [{"occlusion": lv, **{k: mean_std_se([100 * t[i][k] for t in tables]) for k in ("mAP", "rank1")}}
                     for i, lv in enumerate(levels)]
    return out


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("mAP", "rank1")):
        for name, pts in out["curves"].items():
            ax.errorbar([100 * p["occlusion"] for p in pts], [p[key]["mean"] for p in pts],
                        yerr=[p[key]["std"] if p[key]["n"] > 1 else 0 for p in pts], marker="o", capsize=3, label=name)
        ax.set_xlabel("occluded fraction of the query body (%)")
        ax.set_ylabel(f"{key} (%), mean ± std over seeds")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true", help="train baseline and RIB-DCS here instead of reading the ablation")
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--checkpoints", nargs="*", default=None, metavar="VARIANT=RUN_DIR",
                   help="evaluate these runs' final.pth under occlusion instead of training or reading the ablation")
    p.add_argument("--run-root", default=os.path.join("runs", "occlusion"))
    add_budget_flags(p)
    args = p.parse_args()
    if args.checkpoints:
        import json
        import subprocess
        import sys

        from .common import ROOT

        tables = {}
        for item in args.checkpoints:
            name, run_dir = item.split("=", 1)
            out_dir = os.path.join(args.run_root, f"eval_{name}")
            cmd = [sys.executable, "train.py", "--config", os.path.join(run_dir, "config.yaml"), "--eval-only",
                   "--checkpoint", os.path.join(run_dir, "final.pth"), "--set", f"output.dir={out_dir}",
                   "--set", "eval.occlusion=true", "--set", f"eval.occlusion_ratios={OCCLUSION}",
                   "--set", "output.progress=log"]
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "stdout.log"), "w") as log:
                if subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT):
                    raise SystemExit(f"eval failed: {' '.join(cmd)}")
            # --eval-only writes eval-<timestamp>.json (never metrics.json): take the newest
            evals = sorted(f for f in os.listdir(out_dir) if f.startswith("eval-") and f.endswith(".json"))
            if not evals:
                raise SystemExit(f"eval of {run_dir} wrote no eval-*.json in {out_dir}; see {out_dir}/stdout.log")
            with open(os.path.join(out_dir, evals[-1])) as f:
                tables[name] = [json.load(f)["final"]["occlusion"]]
        source = "final.pth of " + ", ".join(args.checkpoints)
        budget = {"checkpoints": args.checkpoints}
    elif args.train:
        tables = {n: [] for n in NAMES}
        over = budget_overrides(args) + ["eval.occlusion=true", f"eval.occlusion_ratios={OCCLUSION}"]
        for seed in args.seeds:
            for n in NAMES:
                m = train(os.path.join(args.run_root, f"{n}_seed{seed}"), VARIANTS[n] + over + [f"solver.seed={seed}"])
                tables[n].append(m["final"]["occlusion"])
        source = "trained here"
        budget = {**budget_record(args), "seeds": args.seeds}
    else:
        abl = load_json("ablation.json")
        if abl is None:
            raise SystemExit("experiments/results/ablation.json not found: run python -m experiments.ablation "
                             "first, or pass --train")
        tables = {n: abl["occlusion"][n] for n in NAMES if n in abl["occlusion"]}
        source = "experiments/results/ablation.json (" + abl["command"] + ")"
        budget = {**abl["budget"], "seeds": abl["seeds"]}
    out = {"experiment": "occlusion stress test", "source": source, "budget": budget,
           "command": "python -m experiments.occlusion" + (" --checkpoints " + " ".join(args.checkpoints)
                                                           if args.checkpoints else (" --train" if args.train else "")),
           "levels": [0.0] + OCCLUSION, "curves": curves(tables)}
    path = write_json("occlusion.json", out)
    plot(out, os.path.join(os.path.dirname(path), "occlusion.png"))
    print(path)


if __name__ == "__main__":
    main()
