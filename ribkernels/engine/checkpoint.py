"""Checkpoints written atomically (temp file in the same folder, then ``os.replace``) and RNG states."""
import os
import random
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch


def rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch CPU and (if present) CUDA generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_atomic(obj: Dict[str, Any], path: str) -> str:
    """``torch.save`` to a temp file next to ``path`` then rename over it, so a crash or Ctrl-C while
    writing never leaves a truncated checkpoint."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load(path: str, map_location: Optional[Any] = "cpu") -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r}: no such file")
    # Our checkpoints hold RNG states (numpy arrays, tuples), so they are not weights-only.
    return torch.load(path, map_location=map_location, weights_only=False)


def model_state_from(ckpt: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model's state dict from one of our checkpoints or a bare state dict, without DDP's /
    torch.compile's name prefixes."""
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out
