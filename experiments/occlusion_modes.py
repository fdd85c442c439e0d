"""The occlusion stress test with every occluder type, for finished runs: query images occluded at each
level by the stress test's textured band (``bottom``), by the synthetic generator's own training
occluder types (``scene``: a vehicle band, a pole or a block, flat-coloured as in training) and by a
confuser (``confuser``: a drawn person of another identity), against the clean gallery. Runs given as
``VARIANT=RUN_DIR`` pair by their training seed: every variant is also reported minus ``baseline`` of
the same seed, per mode and level. Evaluation only (no training).

    python -m experiments.occlusion_modes baseline=runs/ablation/baseline_seed1 rib_dcs=runs/ablation/rib_dcs_seed1 \
        baseline=runs/ablation/baseline_seed2 rib_dcs=runs/ablation/rib_dcs_seed2 [--modes bottom scene confuser]

Writes experiments/results/<--out>.json (default occlusion_modes.json).
"""
import argparse
import os
from typing import Dict, List

import torch

from .common import command_line, write_json
from .paired import format_contrast, paired_contrast

LEVELS = (0.0, 0.2, 0.4)
MODES = ("bottom", "scene", "confuser")


def evaluate_run(run_dir: str, modes=MODES, levels=LEVELS) -> Dict:
    """{"seed", "run", mode: [stress-test rows]} for one finished run (its own config and dataset)."""
    from ribkernels.engine import components
    from ribkernels.inference import load_model
    from ribkernels.reid import feature_extractor, occlusion_stress_test

    loaded = load_model(os.path.join(run_dir, "final.pth"), device="cpu")
    cfg = loaded.config
    data = components.build_data(cfg, train=False)
    extract = feature_extractor(loaded.model, data.test_transform, use_camera=bool(cfg["model"]["sie_camera"]),
                                batch_size=int(cfg["eval"]["batch_size"]))
    out: Dict = {"run": run_dir, "seed": int(cfg["solver"]["seed"])}
    for mode in modes:
        out[mode] = occlusion_stress_test(extract, data.query, data.gallery, levels, mode=mode,
                                          seed=int(cfg["solver"]["seed"]), metric=cfg["eval"]["distance"],
                                          max_rank=int(cfg["eval"]["max_rank"]))
    return out


def contrasts(results: Dict[str, List[Dict]], modes, levels) -> Dict:
    """{"VARIANT - baseline": {mode: {level: paired mAP contrast (points)}}}."""
    out: Dict = {}
    if "baseline" not in results:
        return out
    for name, runs in results.items():
        if name == "baseline":
            continue
        for mode in modes:
            for i, lv in enumerate(levels):
                rows = lambda rs: [{"seed": r["seed"], "mAP": 100 * r[mode][i]["mAP"]} for r in rs]  # noqa: E731
                out.setdefault(f"{name} - baseline", {}).setdefault(mode, {})[f"{lv:g}"] = \
                    paired_contrast(rows(runs), rows(results["baseline"]))
    return out


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="VARIANT=RUN_DIR")
    p.add_argument("--modes", nargs="+", default=list(MODES),
                   choices=["bottom", "top", "side", "block", "scene", "confuser"])
    p.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    p.add_argument("--out", default="occlusion_modes")
    args = p.parse_args(argv)
    for lv in args.levels:
        if not 0.0 <= lv <= 1.0:
            p.error(f"--levels: expected fractions in [0, 1], got {lv}")
    results: Dict[str, List[Dict]] = {}
    with torch.no_grad():
        for item in args.runs:
            if "=" not in item:
                p.error(f"{item!r}: expected VARIANT=RUN_DIR")
            name, run = item.split("=", 1)
            r = evaluate_run(run, args.modes, args.levels)
            results.setdefault(name, []).append(r)
            for mode in args.modes:
                print(f"{name} seed {r['seed']} {mode}: " + ", ".join(
                    f"{100 * row['occlusion']:.0f}% {100 * row['mAP']:.1f}" for row in r[mode]), flush=True)
    con = contrasts(results, args.modes, args.levels)
    for name, by_mode in con.items():
        for mode, by_lv in by_mode.items():
            for lv, c in by_lv.items():
                print(f"{name} {mode} {float(lv) * 100:.0f}%: mAP {format_contrast(c)}")
    out = {"experiment": "occlusion stress test by occluder type", "command": command_line("experiments.occlusion_modes"),
           "modes": args.modes, "levels": args.levels, "results": results, "contrasts": con,
           "note": "mAP of occluded queries against the clean gallery; contrasts in mAP points, paired by training seed"}
    print(write_json(args.out + ".json", out))
    return out


if __name__ == "__main__":
    main()
