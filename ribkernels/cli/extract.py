"""Retrieval features of any images, from a train.py checkpoint, saved as one .npz file.

    python -m ribkernels extract runs/<run>/final.pth photos/ more.jpg --out feats.npz

The .npz holds plain arrays only (read it with ``np.load(path)``, no pickle): ``features``
[N, D] float32 (the model's evaluation feature, not normalised), ``paths`` [N] str (as found),
``camids`` [N] int64 (0-based, -1 when not given) and ``pids`` [N] int64 (from Market-style names,
-1 when a name does not say). Without camera ids (the default) a model trained with camera
embeddings (SIE) uses the mean of its learned camera embeddings for every image.
"""
import os

from . import CommandError
from ._common import (add_camera_argument, add_checkpoint_argument, add_runtime_arguments, camera_ids_from_names,
                      check_checkpoint, check_device, check_output_file)

NAME = "extract"
HELP = "features of your own images from a checkpoint, saved as .npz (features, paths)"


def add_arguments(parser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                        help="image files and/or folders (searched recursively for .jpg/.jpeg/.png/.bmp)")
    parser.add_argument("--out", required=True, metavar="FEATS.npz", help="output file (.npz; must not exist "
                                                                          "unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_camera_argument(parser)
    add_runtime_arguments(parser)


def save_npz(path: str, **arrays) -> None:
    """``np.savez`` to a temp file next to ``path``, then renamed over it."""
    import numpy as np

    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run(args) -> int:
    import numpy as np

    from ..inference import extract_features, list_images, load_model, market_ids

    check_checkpoint(args.checkpoint)
    check_output_file(args.out, "--out", (".npz",), overwrite=args.overwrite)
    check_device(args.device)
    try:
        paths = list_images(args.inputs, "IMAGE_OR_DIR")
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    camids = camera_ids_from_names(paths, "image") if args.camera_ids == "names" else None

    loaded = load_model(args.checkpoint, args.device)
    feats = extract_features(loaded, paths, camids, batch_size=args.batch_size, num_workers=args.num_workers,
                             progress=args.progress)
    ids = [market_ids(p) for p in paths]
    save_npz(args.out, features=feats, paths=np.asarray(paths, dtype=str),
             camids=np.asarray(camids if camids is not None else [-1] * len(paths), dtype=np.int64),
             pids=np.asarray([-1 if i is None else i[0] for i in ids], dtype=np.int64))
    cams = "from file names" if camids is not None else "none (mean camera embedding)"
    print(f"{args.out}: {feats.shape[0]} images, {feats.shape[1]}-d features ({loaded.config['model']['name']}, "
          f"camera ids: {cams}, device {loaded.device})")
    return 0
