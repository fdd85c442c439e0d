"""The DCS mask temperature τ over training (``model.tau``, ``model.tau_end``, ``model.tau_schedule``):
its value at an epoch, and setting it on every DCS-Attention block of a model."""
import math
from typing import Optional

import torch

from .model import dcs_modules

TAU_SCHEDULES = ("constant", "linear", "cosine", "exp")


def tau_at(epoch: int, epochs: int, tau_start: float, tau_end: Optional[float], schedule: str) -> float:
    """τ for 0-based ``epoch`` of ``epochs``: from ``tau_start`` at the first epoch to ``tau_end`` at the
    last, linearly, along a half cosine, or geometrically (``exp``); ``constant`` keeps ``tau_start``."""
    if schedule not in TAU_SCHEDULES:
        raise ValueError(f"model.tau_schedule must be one of {TAU_SCHEDULES}, got {schedule!r}")
    if schedule == "constant" or tau_end is None or epochs <= 1:
        return float(tau_start)
    p = min(max(epoch / (epochs - 1), 0.0), 1.0)
    if schedule == "linear":
        return tau_start + (tau_end - tau_start) * p
    if schedule == "cosine":
        return tau_end + (tau_start - tau_end) * 0.5 * (1 + math.cos(math.pi * p))
    return tau_start * (tau_end / tau_start) ** p


def set_tau(model: torch.nn.Module, tau: float) -> None:
    """Set τ on every DCS-Attention block of ``model``."""
    for m in dcs_modules(model):
        m.tau = float(tau)
