"""Inference from a train.py checkpoint: rebuild the model from the config stored in it, find
images, read Market-style ids from file names, extract retrieval features in batches.

    loaded = load_model("runs/x/final.pth", device="cpu")
    paths = list_images(["my_images/"])
    feats = extract_features(loaded, paths)            # [N, D] float32 numpy

Camera ids: a model trained with SIE adds a learned embedding per camera. Without camera ids
(``camids=None``) the mean of the learned camera (and view) embeddings is used for every image —
no camera is favoured — by folding it into the position embedding (:func:`without_camera_ids`);
with camera ids (0-based, e.g. from Market-style names via :func:`ids_from_names`) each image uses
its own camera's embedding, as in training and evaluation.
"""
import contextlib
import copy
import os
import re
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .engine.config import DEFAULTS, rename_old_keys
from .engine.model import build_model_from_file  # noqa: F401 (public here too)
from .engine.model_file import ModelFile, read_model_file

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


class LoadedModel(NamedTuple):
    model: torch.nn.Module   # eval mode, on ``device``
    config: Dict             # the stored training config, completed with today's defaults
    file: ModelFile
    device: torch.device


def stored_config(mf: ModelFile, path: str = "checkpoint") -> Dict:
    """The checkpoint's config with keys it lacks (older versions) taken from ``DEFAULTS`` and old key
    names read as the new ones (``engine.config_keys.RENAMED_KEYS``). Raises ValueError naming ``path``
    when a section is not a mapping. Nothing here is validated: callers check what they use
    (:func:`check_model_config`, or the whole config for evaluation)."""
    cfg, stored_cfg = {}, rename_old_keys(mf.config, f"checkpoint {path}: its stored config")
    for section, keys in DEFAULTS.items():
        stored = stored_cfg.get(section) or {}
        if not isinstance(stored, dict):
            raise ValueError(f"checkpoint {path}: its config section {section!r} is a {type(stored).__name__}, "
                             "expected a mapping")
        cfg[section] = {**keys, **stored}
    meta = mf.config.get("_meta")
    cfg["_meta"] = dict(meta) if isinstance(meta, dict) else {"config_name": "checkpoint", "config_path": None}
    return cfg


def check_model_config(cfg: Dict, path: str) -> None:
    """What rebuilding the model uses from a stored config (the ``model`` section and the
    normalisation), checked with train.py's rules before anything is built; ValueError naming ``path``."""
    from .engine.config import validate
    from .engine.validate import RULES, ConfigError

    try:
        validate(cfg, sections=["model"])
        bad = [f"data.{k} = {cfg['data'][k]!r}: expected {RULES['data.' + k].allowed}"
               for k in ("pixel_mean", "pixel_std") if not RULES["data." + k](cfg["data"][k])]
        if bad:
            raise ConfigError("invalid config:\n  " + "\n  ".join(bad))
    except ConfigError as exc:
        raise ValueError(f"checkpoint {path}: its stored config is not valid ({exc})") from None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return dev


def load_model(path: str, device: str = "cpu", dcs_impl: Optional[str] = None) -> LoadedModel:
    """Rebuild the model stored in ``path`` (``final.pth`` or ``last.pth``) from its own config.

    ``dcs_impl`` overrides the DCS-Attention backend (e.g. ``"sdpa"`` for export)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    dev = resolve_device(device)
    mf = read_model_file(path)
    cfg = stored_config(mf, path)
    if dcs_impl is not None:
        cfg["model"]["dcs_impl"] = dcs_impl
    check_model_config(cfg, path)
    check_finite_weights(mf.state, path)
    model = build_model_from_file(mf, cfg, path).to(dev)
    return LoadedModel(model, cfg, mf, dev)


def without_camera_ids(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a SIE model that needs no camera/view ids: the mean of its SIE embeddings, times the
    SIE coefficient, is added to the position embedding (the same for every token), so the forward
    equals the one with the mean embedding. Models without SIE are returned unchanged."""
    if getattr(model, "sie_embed", None) is None:
        return model
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.pos_embed.add_(out.sie_coef * out.sie_embed.mean(dim=0, keepdim=True))  # [1,1,D] onto [1,N,D]
    out.sie_embed = None
    out.camera_num = out.view_num = 0
    return out


def uses_camera_ids(model: torch.nn.Module) -> int:
    """Number of cameras the model's SIE embeds (0: camera ids are not used)."""
    return int(getattr(model, "camera_num", 0) or 0) if getattr(model, "sie_embed", None) is not None else 0


def list_images(inputs: Sequence[str], what: str = "input") -> List[str]:
    """Image files of ``inputs`` (files, or folders searched recursively), sorted per folder.
    Raises FileNotFoundError naming a missing input, ValueError when nothing is found."""
    out: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
            if not found:
                raise ValueError(f"{what} {item}: folder holds no image ({'/'.join(IMG_EXTENSIONS)})")
            out += found
        elif os.path.isfile(item):
            if not item.lower().endswith(IMG_EXTENSIONS):
                raise ValueError(f"{what} {item}: not an image file (expected {'/'.join(IMG_EXTENSIONS)})")
            out.append(item)
        else:
            raise FileNotFoundError(f"{what} {item}: no such file or folder")
    if not out:
        raise ValueError(f"{what}: no images given")
    return out


def market_ids(path: str) -> Optional[Tuple[int, int]]:
    """(pid, 0-based camid) from a Market-style name ``<pid>_c<cam>...`` (``0002_c1s1_000451_03.jpg``),
    or None."""
    m = _MARKET_NAME.match(os.path.basename(path))
    if m is None or int(m.group(2)) < 1:
        return None
    return int(m.group(1)), int(m.group(2)) - 1


def ids_from_names(paths: Sequence[str]) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(pids, 0-based camids) of all ``paths`` from Market-style names, or (None, None) when any name
    does not follow that pattern."""
    ids = [market_ids(p) for p in paths]
    if not ids or any(i is None for i in ids):
        return None, None
    return (np.asarray([i[0] for i in ids], dtype=np.int64), np.asarray([i[1] for i in ids], dtype=np.int64))


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths, camids, transform):
        self.paths, self.camids, self.transform = list(paths), camids, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from .reid.image_dataset import read_image  # raises CorruptImageError naming the path

        cam = -1 if self.camids is None else int(self.camids[i])
        return self.transform(read_image(self.paths[i])), cam


def eval_transform(cfg: Dict):
    from .reid.transforms import build_transforms

    h, w = cfg["model"]["img_size"]
    d = cfg["data"]
    return build_transforms(int(h), int(w), False, mean=d["pixel_mean"], std=d["pixel_std"],
                            test_interpolation=d["test_interpolation"])


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return contextlib.nullcontext(None)
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


@torch.no_grad()
def extract_features(loaded: LoadedModel, paths: Sequence[str], camids: Optional[Sequence[int]] = None, *,
                     batch_size: int = 64, num_workers: int = 0, progress: bool = True,
                     desc: str = "extract") -> np.ndarray:
    """Retrieval features ``[len(paths), D]`` (float32, not normalised) of the images at ``paths``:
    the model's eval feature (what evaluation ranks with). ``camids``: 0-based camera ids, or None
    (mean camera embedding, see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = loaded.model
    n_cams = uses_camera_ids(model)
    if camids is not None:
        camids = np.asarray(camids, dtype=np.int64)
        if camids.shape != (len(paths),):
            raise ValueError(f"camids: expected {len(paths)} ids, got shape {camids.shape}")
        if n_cams and (camids.min() < 0 or camids.max() >= n_cams):
            raise ValueError(f"camera ids must lie in [0, {n_cams}) for this model (trained with {n_cams} "
                             f"cameras), got [{camids.min()}, {camids.max()}]; omit them to use the mean "
                             "camera embedding")
    if camids is None or not n_cams:
        model = without_camera_ids(model)
    model.eval()
    dev = loaded.device
    amp = loaded.config["solver"].get("amp")
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
                if dev.type == "cuda" and amp in ("bf16", "fp16") else contextlib.nullcontext())
    loader = torch.utils.data.DataLoader(_Images(paths, camids, eval_transform(loaded.config)),
                                         batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=dev.type == "cuda")
    feats = []
    with _progress(len(paths), progress, desc) as bar:
        for images, cams in loader:
            images = images.to(dev, non_blocking=True)
            kwargs = {}
            if camids is not None and n_cams:
                kwargs["cam_label"] = cams.to(dev)
            with autocast:
                f = model(images, **kwargs)
            feats.append(f.float().cpu())
            if bar is not None:
                bar.update(len(images))
    out = torch.cat(feats).numpy().astype(np.float32, copy=False)
    check_finite_features(out, paths, desc)
    return out


def check_finite_features(feats: np.ndarray, paths: Sequence[str], what: str = "features") -> None:
    """ValueError naming the images (up to 5) whose feature rows ``feats`` [N, D] hold NaN or inf."""
    bad = np.flatnonzero(~np.isfinite(feats).all(axis=1)) if feats.ndim == 2 else np.arange(0)
    if len(bad):
        names = ", ".join(str(paths[i]) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{what}: the features of {len(bad)} of {len(feats)} image(s) are not finite (NaN or inf): "
                         f"{names}; a model with NaN weights, or images it overflows on? Nothing was written")


def check_finite_weights(state: Dict[str, torch.Tensor], path: str) -> None:
    """ValueError naming the (up to 5) floating-point tensors of ``state`` that hold NaN or inf."""
    bad = [k for k, v in state.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"checkpoint {path}: {len(bad)} weight tensor(s) hold NaN or inf, e.g. {', '.join(bad[:5])} "
                         "(a diverged run?); its features would not be finite")
