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
    "baseline": ["model.attn_impl=sdpa", "ibb.enabled=false"],
    "dcs_only": ["model.attn_impl=dcs", "ibb.enabled=false"],
    "ibb_only": ["model.attn_impl=sdpa", "ibb.enabled=true"],
    "rib_dcs": ["model.attn_impl=dcs", "ibb.enabled=true"],
}


# Keys that add reports but change neither training nor the clean final evaluation ("final" in metrics.json).
REPORT_ONLY_KEYS = ("eval.occlusion", "eval.occlusion_ratios")


def train_args(overrides: Sequence[str] = (), config: str = DEMO_CONFIG) -> List[str]:
    """``train.py``'s arguments for ``config`` with ``--set`` ``overrides``."""
    return ["--config", config] + [a for o in overrides for a in ("--set", o)]


def _resolved_config(args: Sequence[str]) -> Dict:
    """The config ``train.py ARGS`` would run with, without its ``output`` section and ``_meta``."""
    from ribkernels.engine.config import build_parser, resolve

    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        cfg = resolve(build_parser(list(args)).parse_args(list(args)))
    finally:
        os.chdir(cwd)
    return {k: v for k, v in cfg.items() if k not in ("output", "_meta")}


def finished_run(run_dir: str, args: Sequence[str]) -> Optional[Dict]:
    """metrics.json of a run in ``run_dir`` that finished (has ``"final"``) with the config ``train.py
    ARGS`` would use (the ``output`` section aside), else None: lets a long experiment continue after an
    interruption, or take a run another experiment already made with the same settings.
    ``REPORT_ONLY_KEYS`` may differ; a run made before a key was renamed has the old name (read as the new)."""
    from ribkernels.engine.config import DEFAULTS, load_yaml

    paths = [os.path.join(run_dir, n) for n in ("metrics.json", "config.yaml")]
    if not all(os.path.isfile(p) for p in paths):
        return None
    with open(paths[0]) as f:
        metrics = json.load(f)
    stored = load_yaml(paths[1], warn=False)
    want = _resolved_config(args)

    for section, keys in DEFAULTS.items():  # a key added since the run was made counts as its default there
        if isinstance(keys, dict) and isinstance(stored.get(section), dict):
            for key, value in keys.items():
                stored[section].setdefault(key, value)
    for cfg in (stored, want):
        for dotted in REPORT_ONLY_KEYS:
            section, key = dotted.split(".")
            cfg.get(section, {}).pop(key, None)
    stored = {k: v for k, v in stored.items() if k not in ("output", "_meta")}
    if not metrics.get("final") or stored != want:
        return None
    return metrics


def adopt_finished_run(run_dir: str, overrides: Sequence[str], search_root: str, config: str = DEMO_CONFIG) -> None:
    """Copy into ``run_dir`` a finished run from a folder under ``search_root`` (e.g. the ablation's) with
    the config ``overrides`` give (see :func:`finished_run`), so the same run is not trained twice."""
    import shutil

    if os.path.isfile(os.path.join(run_dir, "metrics.json")) or not os.path.isdir(search_root):
        return
    args = train_args(overrides, config)
    for name in sorted(os.listdir(search_root)):
        cand = os.path.join(search_root, name)
        if os.path.isdir(cand) and finished_run(cand, args) is not None:
            shutil.copytree(cand, run_dir, dirs_exist_ok=True)
            print(f"{run_dir}: adopted {cand} (same config)", file=sys.stderr, flush=True)
            return


def train(run_dir: str, overrides: Sequence[str] = (), config: str = DEMO_CONFIG,
          log_name: str = "stdout.log", reuse: bool = False, adopt_from: str = "") -> Dict:
    """Run ``train.py --config config --set ...`` into ``run_dir``; returns its metrics.json plus
    ``wall_s`` (the whole process, data set-up included). Raises if train.py fails. ``reuse``: when
    ``run_dir`` holds a finished run with the same config, return its metrics (``"reused": True``,
    ``wall_s`` None) instead of training again; when it holds an interrupted one (``last.pth``, no
    final evaluation), continue it with ``--resume auto`` (``wall_s`` then counts only the continuation).
    ``adopt_from`` (with ``reuse``): first copy a finished run with the same config from a folder under
    this one into ``run_dir``."""
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, "train.py"] + train_args(
        [f"output.dir={run_dir}", "output.progress=log", *overrides], config)
    if reuse:
        if adopt_from:
            adopt_finished_run(run_dir, overrides, adopt_from, config)
        done = finished_run(run_dir, cmd[2:])
        if done is not None:
            done["reused"] = True
            done["wall_s"] = None
            done["command"] = " ".join(cmd[1:])
            print(f"{run_dir}: finished run with the same config, reused", flush=True)
            return done
    interrupted = reuse and os.path.isfile(os.path.join(run_dir, "last.pth"))
    if interrupted:  # train.py checks that the config is the one the checkpoint was trained with
        cmd += ["--resume", "auto"]
        print(f"{run_dir}: continuing an interrupted run (--resume auto)", flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    with open(os.path.join(run_dir, log_name), "a" if interrupted else "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - t0
    if rc:
        raise RuntimeError(f"train.py failed (exit {rc}): {' '.join(cmd)}; see {run_dir}/{log_name}")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    metrics["wall_s"] = wall
    metrics["command"] = " ".join(cmd[1:])
    return metrics


def demo_settings(config: str = DEMO_CONFIG) -> Dict:
    """The demo config's (``configs/synthetic_rib_dcs_cpu.yaml``) epochs and synthetic-dataset sizes:
    the "demo budget" every experiment defaults to."""
    from ribkernels.engine.config import DEFAULTS, load_yaml, merge

    cfg = merge(DEFAULTS, load_yaml(os.path.join(ROOT, config)))
    return {"epochs": cfg["solver"]["epochs"], "dataset_kwargs": dict(cfg["data"]["dataset_kwargs"])}


def budget_overrides(epochs: Optional[int] = None, train_ids: Optional[int] = None) -> List[str]:
    """``--set`` overrides for a smaller budget than the demo's: ``epochs`` (the IBB then starts a third
    of the way in, as in the demo config) and ``train_ids`` training identities (the demo's other
    dataset sizes are kept; the generator's draws depend on every size, so the test split has the same
    size but other people and images than the demo's)."""
    o: List[str] = []
    if epochs:
        o += [f"solver.epochs={epochs}", f"ibb.start_epoch={max(1, epochs // 3)}"]
    if train_ids:
        kw = demo_settings()["dataset_kwargs"]
        kw["num_train_ids"] = train_ids
        o.append("data.dataset_kwargs={" + ", ".join(f"{k}: {v}" for k, v in kw.items()) + "}")
    return o


def budget_record(epochs: Optional[int] = None, train_ids: Optional[int] = None) -> Dict:
    """What a result file says about its budget."""
    demo = demo_settings()
    return {"epochs": epochs or demo["epochs"], "train_ids": train_ids or demo["dataset_kwargs"]["num_train_ids"],
            "demo_budget": not (epochs or train_ids)}


def command_line(module: str) -> str:
    """How this experiment was started: ``python -m MODULE`` and its arguments, shell-quoted."""
    import shlex

    return " ".join(["python", "-m", module] + [shlex.quote(a) for a in sys.argv[1:]])


def budget_of_run(run_dir: str) -> Dict:
    """The settings two runs must share to be compared as "same budget": model, epochs, data sizes."""
    from ribkernels.engine.config import load_yaml

    cfg = load_yaml(os.path.join(run_dir, "config.yaml"), warn=False)
    return {"model": cfg["model"]["name"], "model_kwargs": cfg["model"].get("kwargs") or {},
            "img_size": list(cfg["model"]["img_size"]), "epochs": cfg["solver"]["epochs"],
            "batch_size": cfg["data"]["batch_size"], "dataset": cfg["data"]["dataset"],
            "dataset_kwargs": cfg["data"].get("dataset_kwargs") or {}}


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
