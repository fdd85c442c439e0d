"""Train and evaluate a Re-ID model: the trainer of ``train.py``, reachable from any install.

    ribkernels train --config synthetic_tiny_test            # a shipped config, by name
    ribkernels train --config market1501_rib_dcs --data-root /data/market1501 --pretrained vit.pth
    ribkernels train --config my_config.yaml                 # or any YAML file
    ribkernels train --help                                  # every flag, with the config's values

Every argument goes to the trainer unchanged (``python train.py ARGS`` in a source tree does the same).
"""
import os

NAME = "train"
HELP = "train (or --eval-only) a Re-ID model from a config: a shipped config's NAME or a YAML PATH"


def add_arguments(parser) -> None:
    """Nothing: ``ribkernels.cli.main`` hands the raw arguments to the trainer's own parser."""


def run_argv(argv) -> int:
    """Run the trainer on ``argv`` (what follows ``train``); its exit status."""
    # Sleeping OpenMP threads on a busy CPU, as train.py sets them (before torch is imported).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..engine import main

    return main(list(argv), prog="ribkernels train")


def run(args) -> int:  # only reached through main's pass-through
    return run_argv([])
