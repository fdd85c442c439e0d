"""The baseline `make train` prints beside its RIB-DCS result: the same script, data, model size and
budget (configs/synthetic_baseline_cpu.yaml: plain attention, no IBB), run once and committed as
experiments/results/demo_baseline.json.

    python -m experiments.demo_baseline [--run-dir runs/demo_baseline]
"""
import argparse
import os
import time

from .common import BASELINE_CONFIG, budget_of_run, final_row, train, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=os.path.join("runs", "demo_baseline"))
    args = p.parse_args()
    m = train(args.run_dir, config=BASELINE_CONFIG)
    out = {"source": "python -m experiments.demo_baseline (" + m["command"] + ")",
           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "machine": f"{os.cpu_count()} CPU cores, shared with other jobs while it ran",
           "budget": budget_of_run(args.run_dir), **final_row(m),
           "final": {k: v for k, v in m["final"].items() if k != "per_query"}}  # per-query AP stays in the run
    print(write_json("demo_baseline.json", out))


if __name__ == "__main__":
    main()
