#!/usr/bin/env python
"""Train and evaluate TransReID / RIB-DCS / RIB-CA person Re-ID models (docs/training.md).

    python train.py                                   # synthetic data, small ViT + RIB-DCS, CPU
    python train.py --config configs/market1501_rib_dcs.yaml --data-root /data/market1501
    torchrun --nproc_per_node=4 train.py --config ...  # DDP
    python train.py --resume runs/<run>/last.pth      # continue exactly where it stopped
    python train.py --eval-only --checkpoint runs/<run>/final.pth --occlusion

Flags override the YAML config (``python train.py --help`` lists them all). Everything is written to
the run folder: config.yaml, train.log, metrics.json, checkpoints and PNG curves.
"""
import os
import sys

# OpenMP threads that sleep instead of spinning while they wait: on a CPU shared with other work,
# spinning threads make every op wait for descheduled peers (measured 5x slower on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ribkernels.engine import main  # noqa: E402  (after the OpenMP setting)

if __name__ == "__main__":
    sys.exit(main())
