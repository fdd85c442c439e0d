"""``final.pth``: the inference checkpoint — the model's weights, the config it was trained with and
the sizes needed to rebuild it (classes, cameras, views). No optimizer, no RNG state.

Only tensors and plain containers (dict/list/str/int/float/bool/None), so ``torch.load(path,
weights_only=True)`` reads it::

    {"format": "ribkernels-checkpoint", "version": 2, "kind": "model", "model": {name: tensor},
     "config": {section: {...}}, "num_classes": int, "camera_num": int, "view_num": int, "epoch": int,
     "preprocessing": {...}}

``preprocessing`` (:func:`preprocessing`) spells out what an image goes through before the model, for
readers of the file that do not parse the config; the config stays what the package rebuilds it from.

The format string and version are those of the weights-only training checkpoints (``last.pth``,
``engine/checkpoint.py``), so one format check accepts both; ``"kind": "model"`` and the sizes tell
the model file apart (it has no optimizer, so it cannot be resumed).

``read_model_file`` also accepts a training checkpoint (``last.pth``: it holds ``model`` and
``config``), inferring the sizes from the weights' shapes.
"""
import copy
from typing import Any, Dict, NamedTuple, Sequence

import torch

from . import checkpoint as ckpt_io
from .validate import rename_old_keys

FORMAT = "ribkernels-checkpoint"  # = engine.checkpoint.FORMAT of the weights-only checkpoints
VERSION = 2
KIND = "model"
SIZE_KEYS = ("num_classes", "camera_num", "view_num")


class ModelFile(NamedTuple):
    state: Dict[str, torch.Tensor]   # the model's state dict (no DDP/compile prefixes)
    config: Dict[str, Any]           # the training config ({section: {key: value}}, plus _meta)
    num_classes: int
    camera_num: int                  # what build_model received (0: no SIE on cameras)
    view_num: int
    epoch: int


def preprocessing(cfg: Dict) -> Dict[str, Any]:
    """The test-time preprocessing of a config: an RGB image resized to ``input_size`` [H, W] with
    ``interpolation``, scaled to [0, 1], then ``(x - pixel_mean) / pixel_std`` per channel; NCHW float32."""
    d, m = cfg.get("data") or {}, cfg["model"]
    return {"input_size": [int(v) for v in m["img_size"]], "channel_order": "RGB", "layout": "NCHW",
            "scale": "1/255", "pixel_mean": [float(v) for v in d.get("pixel_mean", (0.5, 0.5, 0.5))],
            "pixel_std": [float(v) for v in d.get("pixel_std", (0.5, 0.5, 0.5))],
            "interpolation": str(d.get("test_interpolation", "bilinear"))}


def model_file_state(model: torch.nn.Module, cfg: Dict, num_classes: int, camera_num: int, view_num: int,
                     epoch: int) -> Dict[str, Any]:
    """The ``final.pth`` dict of ``model`` (weights copied to the CPU)."""
    state = {k: v.detach().cpu().clone() for k, v in ckpt_io.model_state_from(model.state_dict()).items()}
    return {"format": FORMAT, "version": VERSION, "kind": KIND, "model": state,
            "config": ckpt_io.to_plain(cfg, "config"), "num_classes": int(num_classes),
            "camera_num": int(camera_num), "view_num": int(view_num), "epoch": int(epoch),
            "preprocessing": preprocessing(cfg)}


def _infer_sizes(state: Dict[str, torch.Tensor], cfg: Dict, path: str):
    """(num_classes, camera_num, view_num) from the weights of a training checkpoint."""
    classifier = state.get("neck.classifier.weight")
    if classifier is None:
        raise ValueError(f"checkpoint {path}: no 'neck.classifier.weight' to read the number of classes from; "
                         "expected a checkpoint written by train.py (final.pth or last.pth)")
    sie = state.get("sie_embed")
    m = cfg["model"]
    camera_num = view_num = 0
    if sie is not None:
        if m.get("sie_camera") and m.get("sie_view"):
            raise ValueError(f"checkpoint {path}: camera and view counts cannot both be read from sie_embed "
                             f"{tuple(sie.shape)}; re-save it as final.pth with train.py")
        if m.get("sie_camera"):
            camera_num = int(sie.shape[0])
        elif m.get("sie_view"):
            view_num = int(sie.shape[0])
    return int(classifier.shape[0]), camera_num, view_num


def read_model_file(path: str) -> ModelFile:
    """Load ``path`` (through :func:`ribkernels.engine.checkpoint.load`) as a :class:`ModelFile`.

    Raises ValueError naming the path when it is not one of train.py's checkpoints."""
    raw = ckpt_io.load(path)
    if not isinstance(raw, dict) or "model" not in raw or "config" not in raw:
        keys = sorted(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"checkpoint {path}: expected a train.py checkpoint with 'model' and 'config' "
                         f"(final.pth or last.pth), got {keys}; a bare state dict has no config to rebuild "
                         "the model from")
    cfg = raw["config"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ValueError(f"checkpoint {path}: its 'config' has no 'model' section")
    cfg = rename_old_keys(cfg, f"checkpoint {path}: its stored config")  # written before a key was renamed
    state = ckpt_io.model_state_from(raw)
    if raw.get("format") == FORMAT and int(raw.get("version", 0)) > VERSION:
        raise ValueError(f"checkpoint {path}: format version {raw['version']} is newer than this "
                         f"ribkernels reads ({VERSION}); upgrade ribkernels")
    if raw.get("kind") == KIND and all(k in raw for k in SIZE_KEYS):
        sizes = tuple(int(raw[k]) for k in SIZE_KEYS)
    else:
        sizes = _infer_sizes(state, cfg, path)
    return ModelFile(state, cfg, *sizes, epoch=int(raw.get("epoch", 0) or 0))


# Model keys that are choices of evaluation, not of the architecture: a caller may change them.
EVAL_TIME_MODEL_KEYS = ("neck_feat", "dcs_impl")
# Data keys that must match training (the test transform's normalisation).
CHECKPOINT_DATA_KEYS = ("pixel_mean", "pixel_std", "test_interpolation")


def eval_config(stored: Dict, caller: Dict, explicit: Sequence[str] = ()) -> Dict:
    """The config to evaluate a checkpoint with: ``caller``'s (dataset, evaluation, output, device)
    with the checkpoint's ``model`` section and normalisation. ``explicit``: dotted keys the user set
    on the command line; of those, eval-time model keys and the normalisation win over the stored
    ones, and any other ``model.*`` key raises ValueError (the architecture is the checkpoint's)."""
    out = copy.deepcopy(caller)
    if not isinstance(stored.get("model"), dict) or not isinstance(stored.get("data") or {}, dict):
        raise ValueError("the checkpoint's stored config has no 'model' mapping (or a 'data' section that is "
                         "not a mapping)")
    bad = [k for k in explicit if k.startswith("model.") and k.split(".", 1)[1] not in EVAL_TIME_MODEL_KEYS]
    if bad:
        raise ValueError(f"{', '.join(sorted(bad))}: the model is rebuilt from the checkpoint's stored config "
                         f"(model {stored['model'].get('name')!r}); only {', '.join(EVAL_TIME_MODEL_KEYS)} "
                         "may be changed for evaluation")
    model = {**out["model"], **copy.deepcopy(stored["model"]), "pretrained": None}
    for key in EVAL_TIME_MODEL_KEYS:
        if f"model.{key}" in explicit:
            model[key] = caller["model"][key]
    out["model"] = model
    for key in CHECKPOINT_DATA_KEYS:
        if f"data.{key}" not in explicit and key in (stored.get("data") or {}):
            out["data"][key] = copy.deepcopy(stored["data"][key])
    from .config import validate  # what came from the checkpoint passes the command line's rules

    validate(out, sections=["model", "data"])
    return out
