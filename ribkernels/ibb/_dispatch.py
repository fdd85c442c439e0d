"""Choice between the extension and the eager implementation (``impl=`` of the IBB ops)."""
from __future__ import annotations

import contextlib

import torch

from .. import _extension as _ext

IMPLS = ("auto", "ext", "eager")


def use_extension(impl: str, device: torch.device) -> bool:
    """True to run the extension op, False for eager PyTorch. ``"auto"``: the extension when it is
    loaded and built for ``device``; ``"ext"``: the extension or an error saying why not."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "eager":
        return False
    if _ext.supports(device):
        return True
    if impl == "ext":
        st = _ext.status()
        raise RuntimeError(f"impl='ext' but the ribkernels extension does not serve device {device} "
                           f"(loaded: {st['source']}, devices: {st['devices']}; {st['reason']})")
    return False


def no_autocast(device: torch.device):
    """The IBB ops compute in float32 at least: autocast must not cast inside them."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
