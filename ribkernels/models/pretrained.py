"""Load ImageNet weights from a local file into a TransReID or RIB-CA model (no downloads).

ViT: timm ``VisionTransformer`` state dicts (``.pth``/``.pt``/``.bin``/``.safetensors``; also wrapped
in ``{"model": ...}``/``{"state_dict": ...}`` or prefixed ``module.``) and Google ``.npz`` checkpoints.
The position embedding is resampled (bilinear, as TransReID does) to the model's token grid, the
classifier ``head`` is skipped, and the JPM branch is initialised from the last block.
"""
import logging
import math
import os
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

_SKIP_PREFIXES = ("head.", "head_dist.", "fc.", "classifier.", "pre_logits.", "fc_norm.")


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".npz"):
        return _npz_to_timm_state_dict(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path, device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_state"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


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


def _load_vit(model: nn.Module, sd: Dict[str, torch.Tensor], path: str) -> Tuple[List[str], List[str], int]:
    own = model.state_dict()
    num_prefix = 1 + int("dist_token" in sd)
    if "pos_embed" in sd:
        n = sd["pos_embed"].shape[1]
        if math.isqrt(n) ** 2 == n and math.isqrt(n - num_prefix) ** 2 != n - num_prefix:
            num_prefix = 0  # a grid-only position embedding (no_embed_class)
    new: Dict[str, torch.Tensor] = {}
    unexpected: List[str] = []
    for k, v in sd.items():
        if k.startswith(_SKIP_PREFIXES) or k == "dist_token":
            continue
        if k == "pos_embed" and v.shape != own["pos_embed"].shape:
            v = resize_pos_embed(v, model.grid_size, num_prefix)
            logger.info("load_pretrained: pos_embed resized %s -> %s (grid %s)", tuple(sd[k].shape),
                        tuple(v.shape), tuple(model.grid_size))
        if k not in own:
            unexpected.append(k)
            continue
        if v.shape != own[k].shape:
            raise ValueError(f"{path}: '{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)} "
                             "(a different ViT size?)")
        new[k] = v
    if getattr(model, "use_jpm", False):  # the JPM branch is a copy of the last block, as in TransReID
        last = f"blocks.{len(model.blocks) - 1}."
        for k, v in list(new.items()):
            if k.startswith(last) and f"jpm_block.{k[len(last):]}" not in sd:
                new[f"jpm_block.{k[len(last):]}"] = v
            elif k.startswith("norm.") and f"jpm_{k}" not in sd:
                new[f"jpm_{k}"] = v
    missing, extra = model.load_state_dict(new, strict=False)
    return list(missing), unexpected + list(extra), len(new) - len(extra)


def load_pretrained(model: nn.Module, path: str) -> Tuple[List[str], List[str]]:
    """Load local ImageNet weights into ``model`` (TransReID or ResNetReID) in place.

    Returns ``(missing, unexpected)`` key lists (both logged). Missing keys are the model's own new
    parameters (BNNeck heads, SIE, DCS mask logits); unexpected ones are checkpoint keys the model
    has no place for (e.g. deeper blocks). A shape mismatch raises ``ValueError``.
    """
    from .rib_ca import ResNetReID
    from .transreid import TransReID

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {path!r} (pretrained= must be a local file; "
                                "nothing is downloaded)")
    sd = _read_state_dict(path)
    if isinstance(model, TransReID):
        missing, unexpected, loaded = _load_vit(model, sd, path)
    elif isinstance(model, ResNetReID):
        sd = {k: v for k, v in sd.items() if not k.startswith(_SKIP_PREFIXES)}
        if sd and all(k.startswith("backbone.") for k in sd):
            sd = {k[len("backbone."):]: v for k, v in sd.items()}
        own = model.backbone.state_dict()
        for k, v in sd.items():
            if k in own and v.shape != own[k].shape:
                raise ValueError(f"{path}: '{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        missing, unexpected = model.backbone.load_state_dict(sd, strict=False)
        missing, unexpected = [f"backbone.{k}" for k in missing], list(unexpected)
        loaded = len(sd) - len(unexpected)
    else:
        raise TypeError(f"load_pretrained: model must be a TransReID or ResNetReID, got {type(model).__name__}")
    if loaded == 0:
        raise ValueError(f"{path}: no tensor matched the model (unexpected keys: {unexpected[:5]}...)")
    logger.info("load_pretrained(%s): %d tensors loaded; missing %d %s; unexpected %d %s", path, loaded,
                len(missing), missing, len(unexpected), unexpected)
    return missing, unexpected
