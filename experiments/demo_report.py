"""What `make train` prints after its run: the RIB-DCS result beside the baseline (plain attention,
no IBB, same data, model size and budget), with standard errors over queries, and the demo's targets
(mAP >= MAP_TARGET, Rank-1 >= RANK1_TARGET, <= 10 minutes, the IBB prediction term below log K in the
last epoch).

    python -m experiments.demo_report RUN_DIR [--started UNIX_SECONDS] [--baseline RUN_DIR]

The baseline comes from experiments/results/demo_baseline.json (written by
``python -m experiments.demo_baseline``, labelled with its source) unless ``--baseline`` names a run.
"""
import argparse
import json
import math
import os
import time

from .common import budget_of_run, final_row, load_json

# The accuracy targets are set from the spread the demo has shown, not from one run. RIB-DCS at the demo
# budget scored 63.2 / 61.9 / 62.7 mAP and 74.1 / 71.5 / 72.6 Rank-1 with seeds 1234 / 1 / 2 on the
# 2-core machine the committed results come from (experiments/results/ablation.json). Seed 1234 printed
# 59.9 / 70.3 on another 2-core machine (results are bit-identical run to run on one machine, not across
# CPUs: MKL/oneDNN choose other kernels): CROSS_MACHINE_DROP below the same seed here. A target is the
# lowest seed here, minus that drop, minus one standard error over queries (1.4 mAP, 2.0 Rank-1),
# rounded down: 61.9 - 3.3 - 1.4 = 57.2 -> 57; 71.5 - 3.8 - 2.0 = 65.7 -> 65.
# tests/test_experiments.py re-derives them from ablation.json.
MAP_TARGET = 57.0
RANK1_TARGET = 65.0
CROSS_MACHINE_DROP = {"mAP": 63.16 - 59.9, "rank1": 74.06 - 70.3}


def _row(name, r):
    se = lambda k: f" ± {r[k]:.1f}" if r.get(k) is not None else ""  # noqa: E731
    wall = f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") else "n/a"
    kf = f"{r['keep_fraction_eval']:.3f}" if r.get("keep_fraction_eval") is not None else "—"
    return f"| {name} | {r['mAP']:.1f}{se('mAP_se')} | {r['rank1']:.1f}{se('rank1_se')} | {kf} | {wall} |"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--started", type=float, default=None, help="unix time the run started (for the wall time)")
    p.add_argument("--baseline", default=None, help="a baseline run folder instead of the committed result")
    args = p.parse_args()
    with open(os.path.join(args.run_dir, "metrics.json")) as f:
        m = json.load(f)
    if not m.get("final"):
        print(f"{args.run_dir}: no final evaluation in metrics.json")
        return 1
    if args.started:
        m["wall_s"] = time.time() - args.started
    rib = final_row(m)
    if args.baseline:
        with open(os.path.join(args.baseline, "metrics.json")) as f:
            base, source = final_row(json.load(f)), args.baseline
    else:
        b = load_json("demo_baseline.json")
        base, source = (b, b["source"] + ", " + b["date_utc"] + " UTC") if b else (None, None)
        if b is not None and b.get("budget") != budget_of_run(args.run_dir):
            mine = budget_of_run(args.run_dir)
            diff = sorted(k for k in set(mine) | set(b.get("budget") or {}) if mine.get(k) != (b.get("budget") or {}).get(k))
            what = f"different settings ({', '.join(diff)})" if b.get("budget") else "no record of its settings"
            print(f"note: the committed baseline has {what} compared with {args.run_dir}; rerun "
                  "python -m experiments.demo_baseline for a like-for-like comparison\n")
    print("| model (synthetic dataset, CPU) | mAP % ± SE | Rank-1 % ± SE | eval keep fraction | wall |")
    print("|---|---|---|---|---|")
    print(_row(f"RIB-DCS (this run: {args.run_dir})", rib))
    if base:
        print(_row("baseline: plain attention, no IBB, same budget", base))
        print(f"\nbaseline source: {source}")
    else:
        print("| baseline | not available: run python -m experiments.demo_baseline | | | |")
    last = m["epochs"][-1]
    log_k = last.get("ibb_refresh_log_num_classes") or next(
        (r["ibb_refresh_log_num_classes"] for r in reversed(m["epochs"]) if "ibb_refresh_log_num_classes" in r), None)
    t2 = last.get("ibb_term2")
    checks = [(f"mAP >= {MAP_TARGET:.0f}%", rib["mAP"] >= MAP_TARGET),
              (f"Rank-1 >= {RANK1_TARGET:.0f}%", rib["rank1"] >= RANK1_TARGET)]
    if rib.get("wall_s"):
        checks.append((f"<= 10 minutes ({rib['wall_s'] / 60:.1f})", rib["wall_s"] <= 600))
    if t2 is not None and log_k is not None:
        checks.append((f"IBB prediction term {t2:.3f} < log K = {log_k:.3f} (last epoch)", t2 < log_k))
    print("\n" + "\n".join(f"[{'met' if ok else 'NOT MET'}] {name}" for name, ok in checks))
    print("\n(the accuracy targets lie below the lowest result seen across seeds and machines; over three seeds "
          "on one 2-core machine RIB-DCS scored 61.9-63.2 mAP, and one seed was 3.3 points lower on another: "
          "experiments/README.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
