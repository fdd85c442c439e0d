"""How hard is the synthetic dataset? Reference numbers for ``docs/synthetic.md``.

    python -m experiments.synthetic_baselines [--root DIR] [--seed 0] [--train-epochs 40]

* raw pixels (64×32, L2-normalised),
* a randomly initialised timm ResNet-18 (global-pooled features at 128×64), three init seeds,
* optionally a tiny 4-layer CNN trained from scratch on the train split with ID cross-entropy +
  batch-hard triplet (PK 8×4, Adam) — a learnability check, not the project's TransReID model.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn

from ribkernels.reid import (CrossEntropyLabelSmooth, ImageDataset, RandomIdentitySampler, TripletLoss, build_dataset,
                             build_transforms, evaluate)


def _features(model, items, transform, batch=64):
    ds = ImageDataset(items, transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch)
    model.eval()
    out = []
    with torch.no_grad():
        for b in loader:
            out.append(model(b["img"]))
    return torch.cat(out)


def _ids(items):
    return np.array([p for _, p, _ in items]), np.array([c for _, _, c in items])


def _eval(model, data, transform):
    qf, gf = _features(model, data.query, transform), _features(model, data.gallery, transform)
    (qp, qc), (gp, gc) = _ids(data.query), _ids(data.gallery)
    return evaluate(qf, gf, qp, gp, qc, gc)


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int, dim: int = 128):
        super().__init__()
        chans = [3, 32, 64, 96, dim]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, num_classes, bias=False)

    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return (self.head(self.bn(f)), f) if self.training else f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-epochs", type=int, default=0)
    args = ap.parse_args(argv)
    data = build_dataset("synthetic", args.root, seed=args.seed)
    print(data.summary())
    (qp, qc), (gp, gc) = _ids(data.query), _ids(data.gallery)

    small = build_transforms(64, 32, is_train=False)

    def pix(items):
        ds = ImageDataset(items, small)
        return torch.stack([ds[i]["img"].flatten() for i in range(len(ds))])

    r = evaluate(pix(data.query), pix(data.gallery), qp, gp, qc, gc)
    print(f"raw pixels 64x32:           {r.summary()}")

    import timm

    test_tf = build_transforms(128, 64, is_train=False)
    maps, r1s = [], []
    for s in range(3):
        torch.manual_seed(s)
        m = timm.create_model("resnet18", pretrained=False, num_classes=0)
        r = _eval(m, data, test_tf)
        maps.append(r.mAP); r1s.append(r.rank1)
    print(f"random-init ResNet-18 (3 seeds): mAP {100 * np.mean(maps):.1f}% ± {100 * np.std(maps):.1f}, "
          f"R1 {100 * np.mean(r1s):.1f}% ± {100 * np.std(r1s):.1f}")

    if args.train_epochs > 0:
        torch.manual_seed(0)
        model = TinyCNN(data.num_train_pids)
        print(f"tiny CNN, random init:      {_eval(model, data, test_tf).summary()}")
        ds = ImageDataset(data.train, build_transforms(128, 64, is_train=True))
        sampler = RandomIdentitySampler(ds, 32, 4, seed=0)
        loader = torch.utils.data.DataLoader(ds, batch_size=32, sampler=sampler, drop_last=True)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.train_epochs)
        ce, tri = CrossEntropyLabelSmooth(data.num_train_pids, 0.1), TripletLoss(margin=0.3)
        t0 = time.time()
        for ep in range(args.train_epochs):
            model.train()
            for b in loader:
                logits, f = model(b["img"])
                loss = ce(logits, b["pid"]) + tri(f, b["pid"])[0]
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        print(f"tiny CNN, trained {args.train_epochs} epochs ({time.time() - t0:.0f}s): {_eval(model, data, test_tf).summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
