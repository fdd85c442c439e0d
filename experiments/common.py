"""Shared helpers of the experiment scripts: run train.py as a subprocess, read its metrics, write
results, and standard errors over queries and seeds."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")
DEMO_CONFIG = os.path.join("configs", "synthetic_rib_dcs_cpu.yaml")
BASELINE_CONFIG = os.path.join("configs", "synthetic_baseline_cpu.yaml")

# The four variants of the ablation, as --set overrides of the RIB-DCS demo config.
VARIANTS: Dict[str, List[str]] = {
    "baseline": ["model.attn_impl=sdpa", "ibb.use_ibb=false"],
    "dcs_only": ["model.attn_impl=dcs", "ibb.use_ibb=false"],
    "ibb_only": ["model.attn_impl=sdpa", "ibb.use_ibb=true"],
    "rib_dcs": ["model.attn_impl=dcs", "ibb.use_ibb=true"],
}


def train(run_dir: str, overrides: Sequence[str] = (), config: str = DEMO_CONFIG,
          log_name: str = "stdout.log") -> Dict:
    """Run ``train.py --config config --set ...`` into ``run_dir``; returns its metrics.json plus
    ``wall_s`` (the whole process, data set-up included). Raises if train.py fails."""
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, "train.py", "--config", config, "--set", f"output.output_dir={run_dir}",
           "--set", "output.progress=log"]
    for o in overrides:
        cmd += ["--set", o]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    with open(os.path.join(run_dir, log_name), "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - t0
    if rc:
        raise RuntimeError(f"train.py failed (exit {rc}): {' '.join(cmd)}; see {run_dir}/{log_name}")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    metrics["wall_s"] = wall
    metrics["command"] = " ".join(cmd[1:])
    return metrics


def mean_std_se(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation and standard error of the mean (std / sqrt(n))."""
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return {"mean": m, "std": sd, "se": sd / math.sqrt(n) if n > 1 else float("nan"), "n": n}


def write_json(name: str, data: Dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path


def load_json(name: str) -> Optional[Dict]:
    path = os.path.join(RESULTS, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def final_row(metrics: Dict) -> Dict:
    """mAP / Rank-1 (in %) with their standard errors over queries, the mean keep fraction, wall time."""
    fin = metrics["final"]
    row = {"mAP": 100 * fin["mAP"], "rank1": 100 * fin["rank1"], "wall_s": metrics.get("wall_s")}
    for k in ("mAP_se", "rank1_se"):
        if k in fin:
            row[k] = 100 * fin[k]
    if fin.get("keep_fraction") is not None:
        row["keep_fraction_eval"] = fin["keep_fraction"]
    return row
