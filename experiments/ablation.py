"""Experiment (a): ablation on the synthetic dataset — baseline (plain attention), DCS only (η = 0,
i.e. no IBB), IBB only (plain attention + IBB) and RIB-DCS — over several training seeds; mean ±
std over seeds and the standard error of the mean over seeds, plus each run's standard error over
queries. Also evaluates every run under the occlusion stress test (used by experiments.occlusion).

    python -m experiments.ablation                      # the demo budget (configs/synthetic_rib_dcs_cpu.yaml)
    python -m experiments.ablation --epochs 8 --train-ids 150    # a smaller budget (say so when quoting it)
    python -m experiments.ablation --seeds 1234 --variants dcs_only ibb_only \
        --reuse baseline=runs/demo_baseline rib_dcs=runs/demo_rib  # + the demo's two runs (same config, seed)

Writes experiments/results/ablation.json and ablation.png; run folders under runs/ablation/.
"""
import argparse
import os

from .common import VARIANTS, budget_overrides as common_budget_overrides, budget_record as common_budget_record, \
    command_line, final_row, mean_std_se, train, write_json

OCCLUSION = [0.2, 0.4, 0.6, 0.8]


def budget_overrides(args) -> list:
    """The ``--set`` overrides of the budget flags (see :func:`experiments.common.budget_overrides`)."""
    threads = getattr(args, "num_threads", None)
    return common_budget_overrides(args.epochs, args.train_ids) + ([f"solver.num_threads={threads}"] if threads else [])


def budget_record(args) -> dict:
    rec = common_budget_record(args.epochs, args.train_ids)
    if getattr(args, "num_threads", None):
        rec["num_threads"] = args.num_threads
    return rec


def add_budget_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo config's)")
    p.add_argument("--train-ids", type=int, default=None, help="training identities (default: the demo config's)")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch CPU threads per run (two experiments side by side on 2 cores: 1 each)")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["summary"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key in zip(axes, ("mAP", "rank1")):
        means = [results["summary"][n][key]["mean"] for n in names]
        stds = [results["summary"][n][key]["std"] for n in names]
        ax.bar(names, means, yerr=stds, capsize=4, color=["gray", "tab:blue", "tab:orange", "tab:green"][: len(names)])
        for i, n in enumerate(names):
            ax.scatter([i] * len(results["runs"][n]), [r[key] for r in results["runs"][n]], color="black", s=10, zorder=3)
        lo = min(min(r[key] for r in results["runs"][n]) for n in names)
        ax.set_ylim(max(0, lo - 10), None)
        ax.set_ylabel(f"{key} (%)")
        ax.set_title(f"{key}: mean ± std over seeds (dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--run-root", default=os.path.join("runs", "ablation"))
    p.add_argument("--reuse", nargs="*", default=[], metavar="VARIANT=RUN_DIR",
                   help="include finished runs of the same config and budget (their metrics.json) as that variant")
    add_budget_flags(p)
    args = p.parse_args()
    common = budget_overrides(args) + ["eval.occlusion=true", f"eval.occlusion_ratios={OCCLUSION}"]
    runs, occlusion = {}, {}
    import json

    for item in args.reuse:
        name, run_dir = item.split("=", 1)
        if name not in VARIANTS:
            raise SystemExit(f"--reuse {item}: unknown variant {name!r}; expected one of {list(VARIANTS)}")
        with open(os.path.join(run_dir, "metrics.json")) as f:
            m = json.load(f)
        with open(os.path.join(run_dir, "config.yaml")) as f:
            import yaml

            seed = yaml.safe_load(f)["solver"]["seed"]
        row = {"seed": seed, "reused_run": run_dir, **final_row(m)}
        if m["epochs"][-1].get("ibb_term2") is not None:
            row["ibb_term2_last_epoch"] = m["epochs"][-1]["ibb_term2"]
        runs.setdefault(name, []).append(row)
        occlusion.setdefault(name, []).append(m["final"].get("occlusion"))
    for seed in args.seeds:  # seed-major: a partial result still has every variant
        for name in args.variants:
            m = train(os.path.join(args.run_root, f"{name}_seed{seed}"), VARIANTS[name] + common + [f"solver.seed={seed}"])
            row = {"seed": seed, **final_row(m)}
            if m["epochs"][-1].get("ibb_term2") is not None:
                row["ibb_term2_last_epoch"] = m["epochs"][-1]["ibb_term2"]
            runs.setdefault(name, []).append(row)
            occlusion.setdefault(name, []).append(m["final"].get("occlusion"))
            print(f"{name} seed {seed}: mAP {row['mAP']:.2f} Rank-1 {row['rank1']:.2f} ({row['wall_s']:.0f} s)", flush=True)
    summary = {n: {k: mean_std_se([r[k] for r in rs]) for k in ("mAP", "rank1")} for n, rs in runs.items()}
    for n, rs in runs.items():
        summary[n]["mean_query_se"] = {k: sum(r.get(f"{k}_se", float("nan")) for r in rs) / len(rs) for k in ("mAP", "rank1")}
    out = {"experiment": "ablation", "budget": budget_record(args),
           "seeds": args.seeds, "command": command_line("experiments.ablation"), "summary": summary, "runs": runs, "occlusion": occlusion,
           "note": "mean ± std and se over seeds (se = std / sqrt(seeds)); mean_query_se: the runs' mean standard "
                   "error over queries; wall times depend on what else ran on the 2-core machine (num_threads in budget)"}
    print(write_json("ablation.json", out))
    plot(out, os.path.join(os.path.dirname(write_json("ablation.json", out)), "ablation.png"))


if __name__ == "__main__":
    main()
