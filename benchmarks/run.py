"""The benchmark report (docs/performance.md): every section, one JSON, one Markdown table, PNG bar charts.

    python -m benchmarks.run --device cpu --quick          # any machine
    python -m benchmarks.run --device cuda --quick         # the lent GPU (benchmarks/gpu_check.sh)

Each section module exposes ``run(device: str, quick: bool) -> list[dict]``; a row holds at least
``name``, ``provider`` and ``ms`` (median), and where they apply ``pass`` (fwd/bwd/fwd+bwd),
``dtype``, ``shape``, ``TFLOPs``, ``GBps`` and ``peak_mem_MB``. A section that fails is recorded
with its error and the report goes on. Results go to ``--out`` (default
``benchmarks/results/<date>-<device>``).
"""
import argparse
import datetime
import importlib
import json
import math
import os
import re
import sys
import time
import traceback
from typing import Dict, List

import torch

from .common import environment, markdown_table, measure_peaks

SECTIONS = {
    "dcs_attention": "benchmarks.bench_dcs_attention",
    "ibb": "benchmarks.bench_ibb",
    "evaluate_rank": "benchmarks.bench_evaluate",
    "train_step": "benchmarks.bench_train_step",
}


def markdown(report: Dict) -> str:
    env = report["environment"]
    peaks = report["peaks"]
    lines = [f"# ribkernels benchmarks — {env['device']}", "",
             f"{report['date']} · torch {env['torch']} · triton {env.get('triton')} · python {env['python']}"
             + (f" · CUDA {env['cuda']}" if "cuda" in env else "") + f" · quick={report['quick']}", "",
             f"Measured peaks: copy {peaks.get('copy_GBps', float('nan')):.0f} GB/s, "
             f"{peaks.get('matmul_dtype')} matmul {peaks.get('matmul_TFLOPs', float('nan')):.1f} TFLOP/s", ""]
    for name, sec in report["sections"].items():
        lines += [f"## {name}", ""]
        if "error" in sec:
            lines += [f"FAILED: `{sec['error']}`", ""]
            continue
        rows = sec["rows"]
        if not rows:
            lines += ["(no rows: " + sec.get("note", "nothing measured on this device") + ")", ""]
            continue
        lines.append(markdown_table(rows))
        lines.append("")
    return "\n".join(lines)


def speedup_charts(report: Dict, out_dir: str) -> List[str]:
    """Bar charts: ribkernels' speedup over each other provider, per (name, pass)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for section, ours in (("dcs_attention", "triton"), ("ibb", "ext")):
        rows = report["sections"].get(section, {}).get("rows", [])
        key = lambda r: (r.get("name"), r.get("dtype"), r.get("shape"), r.get("pass"))
        timed = lambda r: isinstance(r.get("ms"), (int, float)) and math.isfinite(r["ms"]) and r["ms"] > 0
        mine = {key(r): r["ms"] for r in rows if r.get("provider") == ours and timed(r)}
        others = sorted({r["provider"] for r in rows if r.get("provider") != ours})
        if not mine or not others:
            continue
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(mine) * len(others)), 4))
        labels = [" ".join(str(x) for x in k if x) for k in mine]
        width = 0.8 / len(others)
        for j, prov in enumerate(others):
            base = {key(r): r["ms"] for r in rows if r.get("provider") == prov and timed(r)}
            vals = [base.get(k, float("nan")) / mine[k] for k in mine]
            ax.bar([i + j * width for i in range(len(mine))], vals, width, label=f"vs {prov}")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(mine))])
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"speedup of {ours} (×)")
        ax.set_title(f"{section}: {report['environment']['device']}")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, f"speedup_{section}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results/<date>-<device>)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")
    env = environment(args.device)
    date = datetime.date.today().isoformat()
    dev_tag = re.sub(r"[^A-Za-z0-9]+", "-", env["device"].split(" (")[0]).strip("-").lower()
    out_dir = args.out or os.path.join("benchmarks", "results", f"{date}-{dev_tag}")
    os.makedirs(out_dir, exist_ok=True)
    report = {"date": date, "device_kind": args.device, "quick": args.quick, "environment": env,
              "peaks": measure_peaks(args.device, args.quick), "sections": {}}
    for name in [s for s in args.sections.split(",") if s]:
        if name not in SECTIONS:
            ap.error(f"unknown section {name!r}; choose from {list(SECTIONS)}")
        t0 = time.time()
        print(f"[benchmarks] {name} ...", flush=True)
        try:
            mod = importlib.import_module(SECTIONS[name])
            rows = mod.run(args.device, args.quick)
            for r in rows:  # fraction of the measured peaks, where the row has the figures
                if "TFLOPs" in r and report["peaks"].get("matmul_TFLOPs"):
                    r["%peak_flops"] = 100 * r["TFLOPs"] / report["peaks"]["matmul_TFLOPs"]
                if "GBps" in r and report["peaks"].get("copy_GBps"):
                    r["%peak_bw"] = 100 * r["GBps"] / report["peaks"]["copy_GBps"]
            report["sections"][name] = {"rows": rows, "seconds": time.time() - t0}
        except Exception as exc:
            traceback.print_exc()
            report["sections"][name] = {"error": f"{type(exc).__name__}: {exc}", "seconds": time.time() - t0}
        print(f"[benchmarks] {name} done in {time.time() - t0:.1f}s", flush=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    md = markdown(report)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(md + "\n")
    charts = speedup_charts(report, out_dir)
    print(md)
    print(f"[benchmarks] wrote {out_dir}/report.json, report.md" + "".join(f", {os.path.basename(c)}" for c in charts))
    return 1 if any("error" in s for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
