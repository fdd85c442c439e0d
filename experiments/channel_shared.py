"""DCS in the authors' channel-shared form (one mask per image, head and channel, shared by all
tokens; ``model.dcs_mask_mode=channel_shared``), without the IBB, at the demo budget — paired by
seed against the ablation's baseline (plain attention) and DCS-only (token mode) runs of the same
seeds, clean and under the occlusion stress test.

    python -m experiments.channel_shared                   # seeds 1234 1 2 (the ablation's)
    python -m experiments.channel_shared --seeds 1234      # one seed (a lead, not a result)
    python -m experiments.channel_shared --report-only     # the paired table from the committed JSON

Writes experiments/results/channel_shared.json; run folders under runs/channel_shared/.
"""
import argparse
import os

from .ablation import OCCLUSION
from .common import budget_overrides, budget_record, command_line, final_row, load_json, train, write_json

VARIANT = ["model.attn_impl=dcs", "model.dcs_mask_mode=channel_shared", "model.dcs_mask_per=image",
           "ibb.enabled=false"]


def by_seed(rows, key="mAP"):
    """``{seed: row[key]}`` of a list of run rows."""
    return {int(r["seed"]): float(r[key]) for r in rows}


def occluded_by_seed(runs, occlusion, ratio, key="mAP"):
    """``{seed: metric at occlusion ratio}`` (percent) for runs whose occlusion table is known."""
    out = {}
    for row, table in zip(runs, occlusion):
        for entry in table or []:
            if abs(float(entry["occlusion"]) - ratio) < 1e-9:
                out[int(row["seed"])] = 100.0 * float(entry[key])
    return out


def report(result) -> str:
    """Paired contrasts (points of mAP / Rank-1) of channel-shared DCS against the ablation's arms."""
    from .summarize import contrast

    abl = load_json("ablation.json")
    lines = ["| contrast | occluded | pairs | mAP: paired mean ± SE | each pair | Rank-1: paired mean ± SE |",
             "|---|---|---|---|---|---|"]
    cs_runs, cs_occ = result["runs"], result["occlusion"]
    for other in ("baseline", "dcs_only"):
        o_runs, o_occ = abl["runs"][other], abl["occlusion"][other]
        for ratio in [0.0] + OCCLUSION:
            if ratio == 0.0:
                a = [by_seed(cs_runs), by_seed(cs_runs, "rank1")]
                b = [by_seed(o_runs), by_seed(o_runs, "rank1")]
            else:
                a = [occluded_by_seed(cs_runs, cs_occ, ratio), occluded_by_seed(cs_runs, cs_occ, ratio, "rank1")]
                b = [occluded_by_seed(o_runs, o_occ, ratio), occluded_by_seed(o_runs, o_occ, ratio, "rank1")]
            if not set(a[0]) & set(b[0]):
                continue
            m, r = contrast([(a[0], b[0])])["pairs"], contrast([(a[1], b[1])])["pairs"]
            fmt = lambda p: f"{p['mean']:+.2f} ± {p['se']:.2f}" if p["n"] > 1 else f"{p['mean']:+.2f} (one seed)"
            lines.append(f"| channel_shared − {other} | {ratio:.0%} | {m['n']} | {fmt(m)} | "
                         f"{' '.join(f'{d:+.2f}' for d in m['diffs'])} | {fmt(r)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2])
    p.add_argument("--run-root", default=os.path.join("runs", "channel_shared"))
    p.add_argument("--report-only", action="store_true", help="print the paired table from the committed JSON")
    args = p.parse_args()
    if args.report_only:
        result = load_json("channel_shared.json")
        if result is None:
            raise SystemExit("experiments/results/channel_shared.json does not exist: run without --report-only")
        print(report(result))
        return
    common = budget_overrides() + ["eval.occlusion=true", f"eval.occlusion_ratios={OCCLUSION}"]
    runs, occlusion = [], []
    for seed in args.seeds:
        m = train(os.path.join(args.run_root, f"dcs_cs_only_seed{seed}"), VARIANT + common + [f"solver.seed={seed}"],
                  reuse=True)
        row = {"seed": seed, **final_row(m)}
        runs.append(row)
        occlusion.append(m["final"].get("occlusion"))
        print(f"channel_shared seed {seed}: mAP {row['mAP']:.2f} Rank-1 {row['rank1']:.2f}", flush=True)
        result = {"experiment": "channel_shared", "variant": VARIANT, "budget": budget_record(),
                  "seeds": [r["seed"] for r in runs], "command": command_line("experiments.channel_shared"),
                  "runs": runs, "occlusion": occlusion,
                  "note": "DCS-only in channel-shared form; pairs with ablation.json's baseline and dcs_only runs "
                          "of the same seed (same data, budget and initial weights of the shared layers)"}
        write_json("channel_shared.json", result)  # after every seed: a partial result is kept
    print(report(result))


if __name__ == "__main__":
    main()
