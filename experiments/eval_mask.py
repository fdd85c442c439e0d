"""What the eval mask does to a trained RIB-DCS model: the same checkpoint evaluated with the DCS
eval mask as trained (1[θ > 0]), with every channel kept (θ + 100), and with the training mask
(stochastic 1[θ + L > 0], one draw per forward, seed fixed).

    python -m experiments.eval_mask RUN_DIR [--name demo]

Writes experiments/results/eval_mask_<name>.json.
"""
import argparse
import os

import torch

from .common import write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--name", default="demo")
    args = p.parse_args()
    from ribkernels.engine import build_parser, components, resolve
    from ribkernels.engine import checkpoint as ckpt_io
    from ribkernels.engine.rib_logging import dcs_modules
    import contextlib

    cfg = resolve(build_parser().parse_args(["--config", os.path.join(args.run_dir, "config.yaml")]))
    data = components.build_data(cfg)
    model = components.build_model(cfg, data)
    state = ckpt_io.load(os.path.join(args.run_dir, "final.pth"))
    model.load_state_dict(ckpt_io.model_state_from(state))
    dev = torch.device("cpu")
    auto = contextlib.nullcontext
    mods = dcs_modules(model)
    if not mods:
        raise SystemExit(f"{args.run_dir}: the model has no DCS-Attention")
    rows = {}
    rows["eval mask 1[θ>0] (as trained)"] = components.evaluate(model, data, cfg, dev, auto)
    for m in mods:  # every channel kept
        (m.mask_logits.bias if hasattr(m.mask_logits, "bias") else m.mask_logits).data += 100.0
    rows["all channels kept"] = components.evaluate(model, data, cfg, dev, auto)
    for m in mods:
        (m.mask_logits.bias if hasattr(m.mask_logits, "bias") else m.mask_logits).data -= 100.0
    orig_eval = model.eval

    def eval_with_training_masks():
        orig_eval()
        for m in mods:
            m.train()
        return model
    model.eval = eval_with_training_masks
    torch.manual_seed(0)
    rows["training mask (stochastic)"] = components.evaluate(model, data, cfg, dev, auto)
    out = {"experiment": "eval mask", "run": args.run_dir, "command": f"python -m experiments.eval_mask {args.run_dir} --name {args.name}",
           "rows": {k: {m: 100 * v[m] if m in ("mAP", "rank1", "mAP_se", "rank1_se") else v[m]
                        for m in ("mAP", "rank1", "mAP_se", "rank1_se")} for k, v in rows.items()}}
    for k, v in out["rows"].items():
        print(f"{k}: mAP {v['mAP']:.1f} ± {v['mAP_se']:.1f}, Rank-1 {v['rank1']:.1f} ± {v['rank1_se']:.1f}")
    print(write_json(f"eval_mask_{args.name}.json", out))


if __name__ == "__main__":
    main()
