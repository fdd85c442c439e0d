"""Evaluate a checkpoint on a Re-ID dataset's query/gallery split (mAP, CMC, mINP), with the model
and the settings of the config stored in the checkpoint — what ``train.py --eval-only`` does.

    python -m ribkernels evaluate runs/<run>/final.pth --dataset market1501 --data-root /data/market1501

Without ``--dataset``/``--data-root`` the dataset the model was trained on is used (its stored
``data`` settings, checked with train.py's rules; a stored ``data.root`` must be an existing folder, and
the synthetic dataset is made in its default cache, never where the checkpoint says). Results go to a
folder (``--output-dir``, which may be the training run's own folder: nothing there is rewritten;
default ``runs/<config>-eval-<timestamp>``): ``eval-<timestamp>.json``
(the metrics, the checkpoint's path and the config used) and ``eval-<timestamp>.log``. The checkpoint's
stored config name only labels the default folder: characters outside ``[A-Za-z0-9._-]`` become ``_``,
and the folder stays under ``./runs``.
"""
import copy
import os

from . import CommandError
from ._common import add_checkpoint_argument, check_checkpoint, check_device, non_negative_int, positive_int

NAME = "evaluate"
HELP = "mAP / CMC / mINP of a checkpoint on a dataset, with the checkpoint's own config"


def add_arguments(parser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--dataset", default=None,
                        help="dataset name (market1501, dukemtmc, msmt17, occluded_duke, synthetic, or a registered "
                             "one); default: the one in the checkpoint's config")
    parser.add_argument("--data-root", default=None, help="dataset folder; default: the checkpoint's")
    parser.add_argument("--output-dir", default=None, help="run folder for the results")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="evaluation batch size")
    parser.add_argument("--num-workers", type=non_negative_int, default=None, help="data-loading workers")
    parser.add_argument("--neck-feat", choices=("before", "after"), default=None,
                        help="retrieval feature before/after the BNNeck (default: the checkpoint's)")
    parser.add_argument("--distance", choices=("euclidean", "cosine"), default=None,
                        help="default: the checkpoint's eval.distance")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    parser.add_argument("--occlusion", action="store_true", help="add the occlusion stress-test table")


def evaluation_config(stored, args):
    """The stored config with this command's choices applied."""
    cfg = copy.deepcopy(stored)
    d = cfg["data"]
    if args.dataset is not None and args.dataset != d["dataset"]:
        d["dataset"], d["dataset_kwargs"] = args.dataset, {}  # the stored kwargs belong to the other dataset
    if args.data_root is not None:
        d["root"] = args.data_root
    if args.num_workers is not None:
        d["num_workers"] = args.num_workers
    e = cfg["eval"]
    if args.batch_size is not None:
        e["batch_size"] = args.batch_size
    if args.distance is not None:
        e["distance"] = args.distance
    e["rerank"] = bool(args.rerank)
    e["occlusion"] = bool(args.occlusion)
    if args.neck_feat is not None:
        cfg["model"]["neck_feat"] = args.neck_feat
    cfg["solver"]["device"] = args.device
    cfg["output"]["dir"] = args.output_dir
    cfg["output"]["tensorboard"] = False
    from ..engine.run_folder import safe_config_name

    stored_name = (cfg.get("_meta") or {}).get("config_name")
    # The stored name only labels the default folder runs/<name>-eval-<timestamp>: made safe, never a path.
    cfg["_meta"] = {"config_name": f"{safe_config_name(stored_name or 'checkpoint')}-eval", "config_path": None}
    return cfg


def check_stored_config(cfg, args) -> None:
    """The config to evaluate with, checked with train.py's rules. A stored ``data.root`` (not given on
    the command line) must be an existing folder, and the synthetic dataset (which writes its images)
    goes to its default cache: the checkpoint does not choose where anything is written."""
    from ..engine.config import validate
    from ..engine.validate import ConfigError

    checked = {**cfg, "solver": {**cfg["solver"], "device": "auto"}}  # --device is checked by check_device
    try:
        validate(checked)
    except ConfigError as exc:
        given = "" if args.dataset is None else f" with --dataset {args.dataset}"
        raise CommandError(f"CHECKPOINT {args.checkpoint}: its stored config{given} is not valid ({exc}); "
                           "give --dataset/--data-root, or re-save the checkpoint with train.py") from None
    root = cfg["data"]["root"]
    if args.data_root is None and cfg["data"]["dataset"] == "synthetic":
        cfg["data"]["root"] = None  # generated from its stored sizes and seed into the default cache
        return
    if args.data_root is None and root not in (None, "", "data") and not os.path.isdir(root):
        raise CommandError(f"CHECKPOINT {args.checkpoint}: its stored data.root {root!r} is not a folder on "
                           "this machine; give --data-root")


def run(args) -> int:
    from ..engine import Trainer
    from ..engine.model_file import read_model_file
    from ..inference import stored_config

    check_checkpoint(args.checkpoint)
    check_device(args.device)
    if args.output_dir is not None and os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise CommandError(f"--output-dir {args.output_dir}: exists and is not a folder (expected a run folder)")
    if args.data_root is not None and not os.path.isdir(args.data_root):
        raise CommandError(f"--data-root {args.data_root}: no such folder")
    if args.dataset is not None:
        from ..reid.registry import DATASETS

        if args.dataset not in DATASETS:
            raise CommandError(f"--dataset {args.dataset!r}: unknown; known: {sorted(DATASETS)}")
    model_file = read_model_file(args.checkpoint)
    try:
        cfg = evaluation_config(stored_config(model_file, args.checkpoint), args)
    except (KeyError, TypeError) as exc:  # sections that are not mappings, keys missing
        raise CommandError(f"CHECKPOINT {args.checkpoint}: its stored config cannot be used ({exc!r})") from None
    check_stored_config(cfg, args)
    trainer = Trainer(cfg, eval_only=True)
    try:
        trainer.evaluate_checkpoint(args.checkpoint, model_file)
    finally:
        trainer.close()
    return 0
