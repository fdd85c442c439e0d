"""Does the DCS mask select? RIB-DCS trained with different initial mask logits (``model.dcs_init_logit``:
3 = sigmoid 0.95, the paper-faithful "start as the plain ViT"; lower values start with real channel
dropout) and, optionally, a τ schedule; reports per-block keep fractions in training (expected,
sigmoid(θ)) and in eval (1[θ > 0]) at the last epoch, and mAP / Rank-1.

    python -m experiments.mask_selection [--init-logits 3 1 0] [--epochs 5 --train-ids 150]

Writes experiments/results/mask_selection.json and mask_selection.png.
"""
import argparse
import os

from .ablation import add_budget_flags, budget_overrides, budget_record
from .common import VARIANTS, command_line, final_row, train, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init-logits", type=float, nargs="+", default=[3.0, 1.0, 0.0])
    p.add_argument("--tau-end", type=float, default=None, help="anneal τ from 1 to this (cosine)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-root", default=os.path.join("runs", "mask_selection"))
    p.add_argument("--reuse-from", default=os.path.join("runs", "ablation"),
                   help="take a finished run with a row's exact config from here (the ablation's RIB-DCS run "
                        "is init 3 without a τ schedule); '' to train all")
    add_budget_flags(p)
    args = p.parse_args()
    rows = []
    for logit in args.init_logits:
        over = budget_overrides(args) + [f"solver.seed={args.seed}", f"model.dcs_init_logit={logit}"] + VARIANTS["rib_dcs"]
        if args.tau_end:
            over += ["model.tau_schedule=cosine", f"model.tau_end={args.tau_end}"]
        run_dir = os.path.join(args.run_root, f"init{logit}" + (f"_tau{args.tau_end}" if args.tau_end else ""))
        m = train(run_dir, over, reuse=True, adopt_from=args.reuse_from)
        last = m["epochs"][-1]
        blocks = sorted((k for k in last if k.startswith("keep_fraction_b")), key=lambda k: int(k.rsplit("b", 1)[1]))
        rows.append({"init_logit": logit, **final_row(m), "reused_run": bool(m.get("reused")),
                     "train_keep": {k[len("keep_fraction_"):]: last[k] for k in blocks},
                     "eval_keep": {k[len("keep_fraction_"):]: last.get("eval_" + k) for k in blocks}})
        print(rows[-1], flush=True)
    out = {"experiment": "mask selection", "rows": rows, "seed": args.seed, "tau_end": args.tau_end,
           "budget": budget_record(args),
           "command": command_line("experiments.mask_selection")}
    path = write_json("mask_selection.json", out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        bs = list(r["train_keep"])
        line, = ax.plot(range(len(bs)), [r["train_keep"][b] for b in bs], marker="o", label=f"init {r['init_logit']} train")
        ax.plot(range(len(bs)), [r["eval_keep"][b] for b in bs], marker="s", ls="--", color=line.get_color(),
                label=f"init {r['init_logit']} eval (mAP {r['mAP']:.1f})")
    ax.set_xticks(range(len(bs)), bs)
    ax.set_xlabel("block")
    ax.set_ylabel("kept channels, last epoch")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(os.path.dirname(path), "mask_selection.png"), dpi=110)
    plt.close(fig)
    print(path)


if __name__ == "__main__":
    main()
