"""A ``final.pth`` of the tiny test config without training (random weights, seed 0): the commands'
checks are tested on it in a second; ``edit`` changes the stored dict before it is written."""
import os
from typing import Callable, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic_tiny_test.yaml")


def write_model_file(path, *flags: str, edit: Optional[Callable[[dict], None]] = None) -> str:
    from types import SimpleNamespace

    from ribkernels.engine import components
    from ribkernels.engine.config import build_parser, resolve
    from ribkernels.engine.model_file import model_file_state

    cfg = resolve(build_parser([]).parse_args(["--config", TINY, *flags]))
    torch.manual_seed(0)
    sizes = cfg["data"]["dataset_kwargs"]  # the synthetic data's: 8 training identities, 3 cameras
    model = components.build_model(cfg, SimpleNamespace(num_classes=sizes["num_train_ids"], num_cams=sizes["num_cams"],
                                                        num_views=1))
    state = model_file_state(model, cfg, sizes["num_train_ids"], sizes["num_cams"] if cfg["model"]["sie_camera"] else 0,
                             0, 1)
    if edit is not None:
        edit(state)
    torch.save(state, str(path))
    return str(path)
