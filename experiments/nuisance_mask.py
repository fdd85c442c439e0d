"""Does the model look at the nuisance, and do its DCS masks drop it? For finished runs on the synthetic
data: the CLS token's attention mass on occluder / background / person pixels against their share of
the image, and (DCS) the eval mask's keep rate of each, per block, measured against the generator's
per-patch ground truth (``ground_truth.npz``).

The run's dataset is redrawn with ``ground_truth: true`` added to its ``data.dataset_kwargs``: the
ground truth does not change the draw (tested), so these are the run's own test images.
Evaluation only (no training): a few seconds per run on a CPU.

    python -m experiments.nuisance_mask runs/shortcut/rib_dcs_p0_conf0.5_seed1 runs/shortcut/baseline_p0_conf0.5_seed1
    python -m experiments.nuisance_mask RUN ... --split gallery --max-images 512 --out nuisance_mask_gallery

Writes experiments/results/<--out>.json (default nuisance_mask.json).
"""
import argparse
import os
from typing import Dict, List

import torch

from .common import command_line, write_json


def measure_run(run_dir: str, split: str = "query", max_images: int = 512, batch: int = 64) -> Dict:
    from ribkernels.engine.model import model_inputs
    from ribkernels.engine.rib_logging import nuisance_token_stats
    from ribkernels.inference import eval_transform, load_model
    from ribkernels.reid.image_dataset import read_image
    from ribkernels.reid.synthetic import load_ground_truth, make_synthetic_market

    path = os.path.join(run_dir, "final.pth")
    loaded = load_model(path, device="cpu")
    cfg = loaded.config
    if cfg["data"]["dataset"] != "synthetic":
        raise ValueError(f"{run_dir}: trained on {cfg['data']['dataset']!r}; the ground truth exists for the synthetic data only")
    kw = dict(cfg["data"].get("dataset_kwargs") or {})
    kw["ground_truth"] = True
    root = cfg["data"]["root"]
    folder = make_synthetic_market(None if root in (None, "", "data") else root, **kw)
    gt = load_ground_truth(folder)
    sub = {"query": "query", "gallery": "bounding_box_test", "train": "bounding_box_train"}[split]
    files = [str(f) for f in gt["files"]]
    idx = [i for i, f in enumerate(files) if f.startswith(sub + "/") and not os.path.basename(f).startswith("-1_")]
    idx = idx[:max_images]
    tf = eval_transform(cfg)
    model = loaded.model.eval()
    sums: Dict[str, float] = {}
    n = 0
    for s in range(0, len(idx), batch):
        chunk = idx[s:s + batch]
        images = torch.stack([tf(read_image(os.path.join(folder, files[i]))) for i in chunk])
        cams = torch.as_tensor([int(os.path.basename(files[i]).split("_c")[1].split("s")[0]) - 1 for i in chunk])
        labels = model_inputs(cfg["model"], cams, None)
        rec = nuisance_token_stats(model, images, torch.as_tensor(gt["occluder"][chunk]),
                                   torch.as_tensor(gt["background"][chunk]), **labels)
        for k, v in rec.items():  # image-weighted means over batches (keep rates: pixel-weighted within a batch)
            sums[k] = sums.get(k, 0.0) + v * len(chunk)
        n += len(chunk)
    return {"run": run_dir, "split": split, "images": n, "dataset_kwargs": kw,
            "attn_impl": cfg["model"]["attn_impl"], **{k: v / max(n, 1) for k, v in sums.items()}}


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run folders (with final.pth) trained on the synthetic data")
    p.add_argument("--split", choices=("query", "gallery", "train"), default="query")
    p.add_argument("--max-images", type=int, default=512)
    p.add_argument("--out", default="nuisance_mask")
    args = p.parse_args(argv)
    if args.max_images < 1:
        p.error(f"--max-images: expected >= 1, got {args.max_images}")
    with torch.no_grad():
        rows: List[Dict] = [measure_run(r, args.split, args.max_images) for r in args.runs]
    for r in rows:
        blocks = sorted({int(k.rsplit("_b", 1)[1]) for k in r if k.startswith("attn_occluder_b")})
        print(f"{r['run']} ({r['attn_impl']}, {r['images']} {args.split} images; occluder share "
              f"{100 * r['share_occluder']:.1f}%, background {100 * r['share_background']:.1f}%)")
        for b in blocks:
            keep = (f"; keep occluder {r[f'keep_occluder_b{b}']:.3f} background {r[f'keep_background_b{b}']:.3f} "
                    f"person {r[f'keep_person_b{b}']:.3f}") if f"keep_occluder_b{b}" in r else ""
            print(f"  block {b}: CLS attention on occluder {100 * r[f'attn_occluder_b{b}']:.1f}% background "
                  f"{100 * r[f'attn_background_b{b}']:.1f}% person {100 * r[f'attn_person_b{b}']:.1f}%{keep}")
    out = {"experiment": "attention and DCS keep rate on nuisance pixels (per-patch ground truth)",
           "command": command_line("experiments.nuisance_mask"), "runs": rows,
           "note": "attn_*: share of the CLS token's attention over the patches (mean over heads) on each part's "
                   "pixels, against share_* (uniform attention); keep_*: the eval DCS mask's keep fraction of the "
                   "patch tokens weighted by each part's pixels"}
    print(write_json(args.out + ".json", out))
    return out


if __name__ == "__main__":
    main()
