"""Experiment (b): η × β sweep of RIB-DCS on the synthetic dataset: η ∈ {0, 0.1 (the demo's), 0.25, 0.5, 1, 2} and β ∈
{auto (calibrated at every refresh), fixed values}; one seed per cell (η = 0 trains no IBB, so its β
column repeats one run). Reports mAP / Rank-1 with standard errors over queries, the β the auto rule
chose, and the last epoch's IBB prediction term against log K.

    python -m experiments.sweep                                  # demo budget: 16 cells, 14 runs (~1.8 h on 2 cores)
    python -m experiments.sweep --epochs 6 --train-ids 100       # a smaller budget (say so when quoting it)
    python -m experiments.sweep --finished-only                  # tabulate what has finished, train nothing

Finished runs are reused and interrupted ones continued, so a stopped sweep picks up where it was.

Writes experiments/results/sweep.json and sweep.png; run folders under runs/sweep/.
"""
import argparse
import os

from .ablation import add_budget_flags, budget_overrides, budget_record
from .common import VARIANTS, command_line, final_row, finished_run, train, train_args, write_json


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in zip(axes, ("mAP", "rank1")):
        for beta in out["betas"]:
            cells = [c for c in out["cells"] if c["beta"] == beta and not c.get("not_run")]
            ax.errorbar([c["eta"] for c in cells], [c[key] for c in cells], yerr=[c.get(f"{key}_se", 0) for c in cells],
                        marker="o", capsize=3, label=f"β = {beta}")
        ax.set_xlabel("η")
        ax.set_ylabel(f"{key} (%) ± SE over queries")
        ax.set_title(key)
        ax.legend()
    ax = axes[2]  # what predicts the cost: the IBB's gradient on the feature relative to the task loss's
    for beta in out["betas"]:
        cells = [c for c in out["cells"] if c["beta"] == beta and c.get("grad_ratio_last")]
        ax.errorbar([c["grad_ratio_last"] for c in cells], [c["mAP"] for c in cells],
                    yerr=[c.get("mAP_se", 0) for c in cells], marker="o", ls="none", capsize=3, label=f"β = {beta}")
    eta0 = next((c for c in out["cells"] if c["eta"] == 0 and not c.get("not_run")), None)
    if eta0:
        ax.axhline(eta0["mAP"], color="gray", ls="--", label="η = 0")
    ax.set_xscale("log")
    ax.set_xlabel("‖∇ η·IBB‖ / ‖∇ task loss‖ on the feature (last refresh)")
    ax.set_ylabel("mAP (%) ± SE over queries")
    ax.set_title("mAP against the IBB's gradient share")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 1.0, 2.0])
    p.add_argument("--betas", nargs="+", default=["auto", "2", "20"],
                   help="auto picks about 7-8 at the demo budget, so 2 and 20 bracket it")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-root", default=os.path.join("runs", "sweep"))
    p.add_argument("--reuse-from", default=os.path.join("runs", "ablation"),
                   help="take a finished run with a cell's exact config from here (the ablation's "
                        "'DCS only' and 'RIB-DCS' runs are the cells eta 0 and eta 0.1 / beta auto); '' to train all")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: tabulate the cells whose runs have finished, the others as not run")
    add_budget_flags(p)
    args = p.parse_args()
    common = budget_overrides(args) + [f"solver.seed={args.seed}"]
    cells, eta0 = [], None
    for eta in args.etas:
        for beta in args.betas:
            if eta == 0 and eta0 is not None:  # η = 0: the IBB does not train; one run serves every β
                cells.append({**eta0, "beta": beta})
                continue
            # η = 0 is the ablation's "DCS only" (no IBB: η and β are not read), so its run can be reused
            over = common + (VARIANTS["dcs_only"] if eta == 0 else
                             VARIANTS["rib_dcs"] + [f"loss.eta={eta}", f"ibb.beta={beta}"])
            run_dir = os.path.join(args.run_root, f"eta{eta}_beta{beta}_seed{args.seed}")
            if args.finished_only:
                m = finished_run(run_dir, train_args(over))
                if m is None:
                    cells.append({"eta": eta, "beta": beta, "not_run": True})
                    print(f"eta {eta} beta {beta}: not run", flush=True)
                    continue
                m["reused"] = True
            else:
                m = train(run_dir, over, reuse=True, adopt_from=args.reuse_from)
            cell = {"eta": eta, "beta": beta, **final_row(m), "reused_run": bool(m.get("reused"))}
            refreshes = [r for r in m["epochs"] if "ibb_refresh_beta" in r]
            if refreshes:
                cell.update(beta_used_last=refreshes[-1]["ibb_refresh_beta"],
                            mean_max_phi_last=refreshes[-1]["ibb_refresh_mean_max_phi"],
                            log_k=refreshes[-1]["ibb_refresh_log_num_classes"],
                            ibb_term2_last_epoch=m["epochs"][-1].get("ibb_term2"),
                            grad_ratio_last=refreshes[-1].get("ibb_grad_ratio"))
            cells.append(cell)
            if eta == 0:
                eta0 = {k: v for k, v in cell.items() if k != "beta"}
            print(f"eta {eta} beta {beta}: mAP {cell['mAP']:.2f} Rank-1 {cell['rank1']:.2f}", flush=True)
    out = {"experiment": "eta x beta sweep", "seed": args.seed, "etas": args.etas, "betas": args.betas,
           "budget": budget_record(args),
           "command": command_line("experiments.sweep"),
           "cells": cells,
           "note": "one seed per cell: compare differences with the ablation's seed-to-seed std; SE = over queries"}
    path = write_json("sweep.json", out)
    plot(out, os.path.join(os.path.dirname(path), "sweep.png"))
    print(path)


if __name__ == "__main__":
    main()
