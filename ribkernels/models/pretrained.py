"""Load weights from a local file into a TransReID or RIB-CA model (no downloads).

Understood (every PyTorch file is read with ``torch.load(weights_only=True)``):

* timm ``VisionTransformer`` / ResNet state dicts (``.pth``/``.pt``/``.bin``/``.safetensors``; also
  wrapped in ``{"model": ...}``/``{"state_dict": ...}``, prefixed ``module.`` or ``_orig_mod.``) and
  Google ViT ``.npz`` checkpoints;
* ``timm:<model name>:<file>``: the file read as the weights of that timm model (timm's own key
  conversion for CLIP, DINOv2, DeiT, ... checkpoints), then loaded as above;
* train.py's own checkpoints (``last.pth`` / ``final.pth``): their model weights;
* checkpoints trained by the TransReID repository (``base.*``, ``b1``/``b2`` JPM branches,
  ``bottleneck*``, ``classifier*``): key names mapped onto ours (:func:`convert_transreid_repo_state_dict`).

The position embedding is resampled (bilinear, as TransReID does) to the model's token grid, an
ImageNet classifier ``head`` is skipped, and the JPM branch is initialised from the last block when
the file has none. Re-ID heads whose size depends on the dataset (ID classifiers, the SIE camera
table) are skipped with a log line when their size differs. Anything unreadable raises
:class:`WeightsFileError` naming the path and what was expected.
"""
import logging
import math
import os
import pickle
import re
import zipfile
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

_SKIP_PREFIXES = ("head.", "head_dist.", "fc.", "classifier.", "pre_logits.", "fc_norm.")
# re-ID heads sized by the dataset (classes, cameras): skipped when their size differs
_DATASET_SIZED = re.compile(r"^(neck\.classifier\.weight|local_necks\.\d+\.classifier\.weight|sie_embed)$")

EXPECTED_FORMATS = ("a PyTorch state dict saved with torch.save (.pth/.pt/.bin; also {'model': ...} / "
                    "{'state_dict': ...}, train.py's last.pth/final.pth, a TransReID-repository checkpoint), "
                    "a .safetensors file, a Google ViT .npz, or timm:<model name>:<file>")


_KIND_NAMES = {"torch": "PyTorch file", "safetensors": "safetensors file", "npz": "Google ViT .npz"}


class WeightsFileError(ValueError):
    """A weights file cannot be read or does not fit the model (message: path, problem, expectation)."""


def _numpy_safe_globals() -> list:
    """The numpy types train.py checkpoints hold (RNG states), allowed by ``weights_only`` loading."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.int32, np.float64, np.float32, np.bool_, np.uint8)]
    return [np.ndarray, np.dtype, _reconstruct] + dtypes


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "numpy" not in str(exc):
            raise
    with torch.serialization.safe_globals(_numpy_safe_globals()):  # still weights-only: numpy arrays allowed
        return torch.load(path, map_location="cpu", weights_only=True)


def _file_kind(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "torch"  # a damaged zip: torch.load reports it
        return "npz" if names and all(n.endswith(".npy") for n in names) else "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte little-endian header length, then a JSON header
    return "torch"


def _read_raw(path: str):
    size = os.path.getsize(path)
    if size == 0:
        raise WeightsFileError(f"weights file {path!r} is empty (0 bytes): an interrupted copy or write? "
                               f"Expected {EXPECTED_FORMATS}")
    kind = "npz" if path.endswith(".npz") else "safetensors" if path.endswith(".safetensors") else _file_kind(path)
    try:
        if kind == "npz":
            return _npz_to_timm_state_dict(path), kind
        if kind == "safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu"), kind
        return _torch_load(path), kind
    except WeightsFileError:
        raise
    except Exception as exc:  # pickle, zip, EOF, safetensors and numpy errors: say which file and what was expected
        raise WeightsFileError(f"weights file {path!r} ({size} bytes) cannot be read as {_KIND_NAMES[kind]} "
                               f"({_explain(exc, path)}); truncated or not a weights file? "
                               f"Expected {EXPECTED_FORMATS}") from exc


def _explain(exc: Exception, path: str) -> str:
    """The informative part of a load error (torch's weights-only message starts with advice to
    load unsafely, which is not ours to give)."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if m:
            return f"it holds a Python object of type {m.group(1)}, refused by weights-only loading"
        m = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n\n|$)", text, re.S)
        return f"not a pickle of tensors: {m.group(1).strip() if m else 'invalid data'}"
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        return "a damaged zip archive: the end of the file is missing"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else 'no message'}"


def _strip_prefixes(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def read_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """``(state dict, description)`` of a weights file (see the module docstring for the formats).

    The description says what the file was (e.g. "train.py checkpoint (model vit_small_cpu, epoch 3)")."""
    raw, kind = _read_raw(path)
    desc = _KIND_NAMES[kind]
    sd = raw
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and ("optimizer" in raw or "config" in raw):
        cfg = raw.get("config") if isinstance(raw.get("config"), dict) else {}
        name = (cfg.get("model") or {}).get("name") if isinstance(cfg.get("model"), dict) else None
        desc = f"train.py checkpoint (model {name or '?'}, epoch {raw.get('epoch', '?')})"
    for key in ("model", "state_dict", "model_state"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise WeightsFileError(f"weights file {path!r}: expected a state dict (name -> tensor), got "
                               f"{type(sd).__name__}{' (empty)' if isinstance(sd, dict) else ''}. "
                               f"Expected {EXPECTED_FORMATS}")
    not_tensors = [(k, type(v).__name__) for k, v in sd.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise WeightsFileError(f"weights file {path!r}: expected a state dict of tensors, but {len(not_tensors)} "
                               f"entr(ies) are not tensors, e.g. {not_tensors[:3]} (top-level keys: "
                               f"{sorted(map(str, raw))[:8] if isinstance(raw, dict) else type(raw).__name__}). "
                               f"Expected {EXPECTED_FORMATS}")
    return _strip_prefixes(sd), desc


# ------------------------------------------------------------------------------ TransReID repository

def is_transreid_repo_state_dict(sd: Dict[str, torch.Tensor]) -> bool:
    """Whether ``sd`` comes from the TransReID repository's ``make_model`` (ViT backbone under ``base.``)."""
    return "base.cls_token" in sd and "base.patch_embed.proj.weight" in sd


def convert_transreid_repo_state_dict(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Map a TransReID-repository state dict onto this package's :class:`TransReID` names.

    ``base.{cls_token,pos_embed,patch_embed.proj,sie_embed,blocks.i,norm}`` -> the same names without
    ``base.``; with JPM, ``b1.0``/``b1.1`` (global branch: a copy of the last block and norm) -> the
    last block and ``norm``, ``b2.0``/``b2.1`` (jigsaw branch) -> ``jpm_block``/``jpm_norm``;
    ``bottleneck``/``classifier`` -> ``neck.bn``/``neck.classifier``; ``bottleneck_i``/``classifier_i``
    -> ``local_necks.{i-1}.bn``/``.classifier``. Returns ``(converted, ignored keys)``: ignored are
    ``base.fc`` (an ImageNet head) and, with JPM, ``base``'s last block and norm, which TransReID's
    JPM model never runs."""
    if not is_transreid_repo_state_dict(sd):
        raise ValueError("not a TransReID-repository state dict (no base.cls_token / base.patch_embed.proj.weight)")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"base\.blocks\.(\d+)\.", k)))
    jpm = any(k.startswith("b1.") for k in sd)
    out: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    rules = [(r"^b1\.0\.", f"blocks.{depth - 1}."), (r"^b1\.1\.", "norm."), (r"^b2\.0\.", "jpm_block."),
             (r"^b2\.1\.", "jpm_norm."), (r"^bottleneck_(\d+)\.", None), (r"^classifier_(\d+)\.", None),
             (r"^bottleneck\.", "neck.bn."), (r"^classifier\.", "neck.classifier.")]
    for k, v in sd.items():
        if k.startswith("base."):
            rest = k[len("base."):]
            if rest.startswith(("fc.", "head.")) or (jpm and (rest.startswith((f"blocks.{depth - 1}.", "norm.")))):
                ignored.append(k)
            else:
                out[rest] = v
            continue
        for pattern, repl in rules:
            m = re.match(pattern, k)
            if m is None:
                continue
            if repl is None:  # the i-th local head, 1-based in TransReID
                part = "bn" if k.startswith("bottleneck") else "classifier"
                repl = f"local_necks.{int(m.group(1)) - 1}.{part}."
            out[repl + k[m.end():]] = v
            break
        else:
            out[k] = v  # not a TransReID name: left for the loader to report as unexpected
    return out, ignored


# ------------------------------------------------------------------------------------------------- timm

def timm_state_dict(model_name: str, path: str) -> Dict[str, torch.Tensor]:
    """Read ``path`` as the weights of the timm ViT ``model_name`` (timm's key conversion applied, the
    classifier dropped) and return that ViT's state dict. Nothing is downloaded."""
    import timm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    try:
        vit = timm.create_model(model_name, pretrained=False, num_classes=0)
    except Exception as exc:  # unknown names raise RuntimeError
        raise ValueError(f"timm model name {model_name!r} (for weights {path!r}): {exc}; list names with "
                         "timm.list_models('vit_*')") from None
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"timm model {model_name!r} is a {type(vit).__name__}; timm:<name>:<file> takes a "
                         "VisionTransformer (ResNet weights load directly from the file)")
    if path.endswith(".npz"):
        try:
            vit.load_pretrained(path)
        except Exception as exc:
            raise WeightsFileError(f"weights file {path!r}: not a .npz checkpoint of timm {model_name!r} "
                                   f"({type(exc).__name__}: {exc})") from exc
        return vit.state_dict()
    raw, _ = read_state_dict(path)
    try:
        sd = checkpoint_filter_fn(raw, vit)
    except Exception as exc:
        raise WeightsFileError(f"weights file {path!r}: timm could not convert it for {model_name!r} "
                               f"({type(exc).__name__}: {exc})") from exc
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_dist."))}
    own = vit.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in sd]
    if wrong or missing:
        raise WeightsFileError(f"weights file {path!r} does not hold timm {model_name!r} weights: "
                               + (f"shape mismatches {wrong[:3]}" if wrong else f"missing {len(missing)} keys, e.g. {missing[:3]}"))
    vit.load_state_dict(sd, strict=False)
    return vit.state_dict()


def _npz_to_timm_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Convert a Google ViT ``.npz`` to a timm state dict via a matching timm ViT and timm's loader."""
    import numpy as np
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    with np.load(path) as w:
        keys = set(w.files)
        prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in keys), None)
        if prefix is None:
            raise ValueError(f"{path}: not a ViT .npz checkpoint (no 'embedding/kernel')")
        kernel = w[f"{prefix}embedding/kernel"].shape  # [p, p, C_in, D]
        pos = w[f"{prefix}Transformer/posembed_input/pos_embedding"].shape  # [1, N, D]
        q = w[f"{prefix}Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape
        mlp = w[f"{prefix}Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape
    depth = len({k.split("/")[1] for k in keys if k.startswith(f"{prefix}Transformer/encoderblock_")})
    class_token = f"{prefix}cls" in keys
    grid = math.isqrt(pos[1] - int(class_token))
    if grid * grid != pos[1] - int(class_token):
        raise ValueError(f"{path}: position embedding of {pos[1]} tokens is not a square grid")
    vit = VisionTransformer(img_size=grid * kernel[0], patch_size=kernel[0], in_chans=kernel[2],
                            embed_dim=kernel[3], depth=depth, num_heads=q[1], mlp_ratio=mlp[1] / kernel[3],
                            class_token=class_token, num_classes=0)
    _load_weights(vit, path, prefix)
    return vit.state_dict()


def resize_pos_embed(posemb: torch.Tensor, grid_new: Tuple[int, int], num_prefix: int = 1,
                     grid_old: Tuple[int, int] = None) -> torch.Tensor:
    """``posemb [1, num_prefix + gh*gw, D]`` -> ``[1, 1 + gh'*gw', D]`` (bilinear on the grid part).

    Only the first prefix token (the class token's) is kept (zeros when ``num_prefix=0``).
    ``grid_old`` defaults to a square grid.
    """
    n_grid = posemb.shape[1] - num_prefix
    if grid_old is None:
        g = math.isqrt(n_grid)
        if g * g != n_grid:
            raise ValueError(f"pos_embed with {n_grid} grid tokens is not square: give grid_old")
        grid_old = (g, g)
    # without a class-token position (timm's no_embed_class) the class token starts at position 0
    tok = posemb[:, :1] if num_prefix else posemb.new_zeros(1, 1, posemb.shape[-1])
    grid = posemb[:, num_prefix:]
    grid = grid.reshape(1, grid_old[0], grid_old[1], -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(grid_new), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_new[0] * grid_new[1], -1).to(posemb.dtype)
    return torch.cat([tok, grid], dim=1)


def _shape_error(path: str, desc: str, k: str, v: torch.Tensor, want: torch.Size, hint: str) -> WeightsFileError:
    return WeightsFileError(f"weights file {path!r} ({desc}): '{k}' has shape {tuple(v.shape)}, the model expects "
                            f"{tuple(want)} ({hint})")


def _match(model: nn.Module, sd: Dict[str, torch.Tensor], path: str, desc: str, hint: str
           ) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Checkpoint tensors the model takes: ``(to load, unexpected keys, skipped dataset-sized heads)``."""
    own = model.state_dict()
    new: Dict[str, torch.Tensor] = {}
    unexpected, skipped = [], []
    for k, v in sd.items():
        if k not in own:
            unexpected.append(k)
        elif v.shape == own[k].shape:
            new[k] = v
        elif _DATASET_SIZED.match(k):
            skipped.append(f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}")
        else:
            raise _shape_error(path, desc, k, v, own[k].shape, hint)
    return new, unexpected, skipped


def _load_vit(model: nn.Module, sd: Dict[str, torch.Tensor], path: str, desc: str = "state dict"
              ) -> Tuple[List[str], List[str], int, List[str]]:
    own = model.state_dict()
    num_prefix = 1 + int("dist_token" in sd)
    if "pos_embed" in sd:
        n = sd["pos_embed"].shape[1]
        if math.isqrt(n) ** 2 == n and math.isqrt(n - num_prefix) ** 2 != n - num_prefix:
            num_prefix = 0  # a grid-only position embedding (no_embed_class)
    sd = {k: v for k, v in sd.items() if not k.startswith(_SKIP_PREFIXES) and k != "dist_token"}
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape:
        if pos.dim() != 3 or pos.shape[-1] != own["pos_embed"].shape[-1]:
            raise _shape_error(path, desc, "pos_embed", pos, own["pos_embed"].shape, "a different ViT width?")
        try:
            sd["pos_embed"] = resize_pos_embed(pos, model.grid_size, num_prefix)
        except ValueError as exc:
            raise WeightsFileError(f"weights file {path!r} ({desc}): pos_embed has {pos.shape[1]} tokens, the model "
                                   f"{own['pos_embed'].shape[1]} (grid {tuple(model.grid_size)}); {exc}. A Re-ID "
                                   "checkpoint loads at the img_size and stride it was trained with") from None
        logger.info("load_pretrained: pos_embed resized %s -> %s (grid %s)", tuple(pos.shape),
                    tuple(sd["pos_embed"].shape), tuple(model.grid_size))
    new, unexpected, skipped = _match(model, sd, path, desc, "a different ViT size?")
    if getattr(model, "use_jpm", False):  # the JPM branch is a copy of the last block, as in TransReID
        last = f"blocks.{len(model.blocks) - 1}."
        for k, v in list(new.items()):
            if k.startswith(last) and f"jpm_block.{k[len(last):]}" not in sd:
                new[f"jpm_block.{k[len(last):]}"] = v
            elif k.startswith("norm.") and f"jpm_{k}" not in sd:
                new[f"jpm_{k}"] = v
    missing, extra = model.load_state_dict(new, strict=False)
    return list(missing), unexpected + list(extra), len(new) - len(extra), skipped


def _load_resnet(model: nn.Module, sd: Dict[str, torch.Tensor], path: str, desc: str
                 ) -> Tuple[List[str], List[str], int, List[str]]:
    if any(k.startswith("neck.") for k in sd):  # one of our own ResNetReID checkpoints: the whole model
        new, unexpected, skipped = _match(model, sd, path, desc, "a different ResNet?")
        missing, _ = model.load_state_dict(new, strict=False)
        return list(missing), unexpected, len(new), skipped
    sd = {k: v for k, v in sd.items() if not k.startswith(_SKIP_PREFIXES)}
    if sd and all(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items()}
    own = model.backbone.state_dict()
    for k, v in sd.items():
        if k in own and v.shape != own[k].shape:
            raise _shape_error(path, desc, k, v, own[k].shape, "a different ResNet?")
    missing, unexpected = model.backbone.load_state_dict(sd, strict=False)
    return [f"backbone.{k}" for k in missing], list(unexpected), len(sd) - len(unexpected), []


def parse_spec(path) -> Tuple[Optional[str], str]:
    """``"timm:<name>:<file>"`` -> (name, file); anything else -> (None, path)."""
    if isinstance(path, str) and path.startswith("timm:"):
        name, sep, file = path[len("timm:"):].partition(":")
        if not name or not sep or not file:
            raise ValueError(f"pretrained={path!r}: expected 'timm:<timm model name>:<local weights file>' "
                             "(nothing is downloaded), e.g. timm:vit_base_patch16_224.augreg2_in21k_ft_in1k:"
                             "/models/vit_b16.safetensors")
        return name, file
    return None, os.fspath(path)


def load_pretrained(model: nn.Module, path: str, *, timm_name: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """Load local weights into ``model`` (TransReID or ResNetReID) in place: any format of the module
    docstring; ``path`` may be ``"timm:<name>:<file>"`` (or give ``timm_name``).

    Returns ``(missing, unexpected)`` key lists (both logged). Missing keys are the model's own new
    parameters (BNNeck heads, SIE, DCS mask logits); unexpected ones are checkpoint keys the model
    has no place for (e.g. deeper blocks). An unreadable file or a shape mismatch raises
    :class:`WeightsFileError` (a ``ValueError``) naming the path, the key and both shapes.
    """
    from .rib_ca import ResNetReID
    from .transreid import TransReID

    spec_name, path = parse_spec(path)
    timm_name = timm_name or spec_name
    if not isinstance(model, (TransReID, ResNetReID)):
        raise TypeError(f"load_pretrained: model must be a TransReID or ResNetReID, got {type(model).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {path!r} (pretrained= must be a local file; "
                                "nothing is downloaded)")
    if timm_name:
        sd, desc = timm_state_dict(timm_name, path), f"timm {timm_name}"
    else:
        sd, desc = read_state_dict(path)
    ignored: List[str] = []
    if is_transreid_repo_state_dict(sd):
        sd, ignored = convert_transreid_repo_state_dict(sd)
        desc = "TransReID-repository checkpoint"
        logger.info("load_pretrained(%s): TransReID-repository names mapped; ignored %s", path, ignored)
    if isinstance(model, TransReID):
        missing, unexpected, loaded, skipped = _load_vit(model, sd, path, desc)
    else:
        missing, unexpected, loaded, skipped = _load_resnet(model, sd, path, desc)
    if loaded == 0:
        own = list(model.state_dict())
        raise WeightsFileError(f"weights file {path!r} ({desc}): no tensor matched the model (file keys e.g. "
                               f"{list(sd)[:5]}; model keys e.g. {own[:5]}). Expected {EXPECTED_FORMATS}")
    if skipped:
        logger.warning("load_pretrained(%s): dataset-sized heads left at their initialisation (sizes differ): %s",
                       path, skipped)
    logger.info("load_pretrained(%s, %s): %d tensors loaded; missing %d %s; unexpected %d %s", path, desc, loaded,
                len(missing), missing, len(unexpected), unexpected)
    return missing, unexpected
