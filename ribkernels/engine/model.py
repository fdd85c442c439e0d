"""The model train.py builds from the config (``model`` section), the keyword inputs it takes besides
the images, and the model a checkpoint's own config describes (shared by training's
evaluate-a-checkpoint and :mod:`ribkernels.inference`)."""
import copy
from types import SimpleNamespace
from typing import Dict, List

import torch

from .data import DataBundle
from .model_file import ModelFile


def build_model(cfg: Dict, data: DataBundle) -> torch.nn.Module:
    from ..models import build_model as _build

    m = cfg["model"]
    kwargs = dict(attn_impl=m["attn_impl"], img_size=tuple(m["img_size"]), pretrained=m["pretrained"],
                  neck_feat=m["neck_feat"])
    if m["attn_impl"] == "dcs":
        kwargs["dcs_kwargs"] = {"mask_mode": m["dcs_mask_mode"], "tau": m["tau"], "impl": m["dcs_impl"],
                                "init_logit": m["dcs_init_logit"], "mask_per": m["dcs_mask_per"]}
    kwargs.update(m["kwargs"] or {})
    return _build(m["name"], data.num_classes, data.num_cams if m["sie_camera"] else 0,
                  data.num_views if m["sie_view"] else 0, **kwargs)


def model_inputs(model_cfg: Dict, cams, views) -> Dict:
    """The camera / view keyword arguments of the model's forward: ``None`` for SIE embeddings off."""
    return dict(cam_label=cams if model_cfg["sie_camera"] else None,
                view_label=views if model_cfg["sie_view"] else None)


def build_model_from_file(mf: ModelFile, cfg: Dict, path: str = "checkpoint") -> torch.nn.Module:
    """The model of ``cfg["model"]`` with the checkpoint's sizes and weights (strict), eval mode, CPU."""
    cfg = copy.deepcopy(cfg)
    cfg["model"]["pretrained"] = None  # the checkpoint holds the weights; the ImageNet file may be gone
    sizes = SimpleNamespace(num_classes=mf.num_classes, num_cams=mf.camera_num, num_views=mf.view_num)
    model = build_model(cfg, sizes)
    try:
        model.load_state_dict(mf.state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path}: its weights do not fit the model its own config describes "
                         f"({cfg['model']['name']}, attn {cfg['model']['attn_impl']}): {exc}") from exc
    return model.eval()


def dcs_modules(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The DCSAttention modules of ``model`` in module order (blocks, then the JPM block)."""
    from ..nn.dcs_attention import DCSAttention

    return [m for m in model.modules() if isinstance(m, DCSAttention)]
