"""Feature extraction of train.py: the global feature the IBB clusters, and (feature, pid, camid)
arrays over a loader for evaluation."""
import logging
from typing import Callable, Dict, Optional

import torch

from .data import unpack
from .model import model_inputs

log = logging.getLogger("ribkernels.train")

_warned_slice = False


@torch.no_grad()
def global_features(model: torch.nn.Module, images, cams, views, model_cfg: Dict) -> torch.Tensor:
    """The global feature the IBB clusters, [B, feat_dim], eval mode: before the BNNeck, or after it
    when ``model_cfg["ibb_after_neck"]`` (set by the trainer from ``ibb.feature``)."""
    global _warned_slice
    model.eval()
    labels = model_inputs(model_cfg, cams, views)
    if hasattr(model, "forward_global"):
        f = model.forward_global(images, **labels)
        return model.neck.bn(f) if model_cfg.get("ibb_after_neck") else f
    out = model(images, **labels)
    if isinstance(out, dict):
        return out["global_feat"]
    if model_cfg["neck_feat"] != "before" or out.shape[1] != model.feat_dim:
        if not _warned_slice:
            log.warning("model has no forward_global(): using the first feat_dim columns of the eval feature "
                        "for the IBB refresh")
            _warned_slice = True
    return out[:, : model.feat_dim]


@torch.no_grad()
def extract_global_features(model, loader, device, autocast, model_cfg: Dict, progress=None):
    """(features [N, dim], pids [N]) of ``loader`` (eval mode); ``progress``: a TaskProgress counting images."""
    was_training = model.training
    feats, labels = [], []
    try:
        for batch in loader:
            imgs, pids, cams, views = unpack(batch, device)
            with autocast():
                f = global_features(model, imgs, cams, views, model_cfg)
            feats.append(f.float())
            labels.append(pids)
            if progress is not None:
                progress.update(len(pids))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def extract_features(model, loader, device, autocast, model_cfg: Dict, image_fn: Optional[Callable] = None,
                     progress=None):
    """Retrieval features (eval mode) with pids and camids of a query/gallery loader; ``progress``: a
    TaskProgress counting images."""
    was_training = model.training
    model.eval()
    feats, pids_all, cams_all = [], [], []
    try:
        for batch in loader:
            imgs, pids, cams, views = unpack(batch, device)
            if image_fn is not None:
                imgs = image_fn(imgs, pids)
            with autocast():
                f = model(imgs, **model_inputs(model_cfg, cams, views))
            feats.append(f.float())
            pids_all.append(pids.cpu())
            cams_all.append(cams.cpu())
            if progress is not None:
                progress.update(len(pids))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(pids_all).numpy(), torch.cat(cams_all).numpy()
