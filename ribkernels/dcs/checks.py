"""Argument checks shared by the DCS ops: each error names the argument, what it got, and what was
expected. All checks here read only metadata (shape/dtype/device): none syncs with the GPU."""
import math
from typing import Sequence

import torch


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_floating(name: str, t) -> None:
    check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {describe(t)}")


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_tau(tau) -> None:
    """``tau``: a finite number > 0 (an int or float, not a string or bool)."""
    if not _is_real(tau):
        raise TypeError(f"tau must be a positive number (the Gumbel-sigmoid temperature), got "
                        f"{type(tau).__name__} {tau!r}")
    if not 0 < tau < math.inf:  # also refuses NaN; comparisons trace under torch.compile, isfinite does not
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")


def check_scale(scale) -> None:
    """``scale``: None (``D ** -0.5``) or a finite number > 0 multiplying the logits."""
    if scale is None:
        return
    if not _is_real(scale):
        raise TypeError(f"scale must be None or a number (the logits' factor, e.g. D ** -0.5), got "
                        f"{type(scale).__name__} {scale!r}")
    if not 0 < scale < math.inf:  # also refuses NaN
        raise ValueError(f"scale must be a finite number > 0 (or None for D ** -0.5), got {scale!r}")


def check_shape(name: str, shape) -> tuple:
    """``shape`` as a tuple of ints >= 0; TypeError/ValueError naming ``name``, the shape and the bad size."""
    import operator

    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {type(shape).__name__} {shape!r}") from None
    out = []
    for d in dims:
        try:
            if isinstance(d, bool):
                raise TypeError
            out.append(operator.index(d))
        except TypeError:
            raise TypeError(f"{name} must be a sequence of ints, got {dims!r} (size {d!r})") from None
    if any(d < 0 for d in out):
        raise ValueError(f"{name} must have sizes >= 0, got {tuple(out)!r}")
    return tuple(out)


def check_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}: "
                         f"expected the same device ({name}: {describe(t)})")


def check_broadcast(name: str, t: torch.Tensor, ref_name: str, shape: Sequence[int]) -> None:
    """``t`` must broadcast to ``shape`` (without growing it)."""
    shape = tuple(shape)
    try:
        out = torch.broadcast_shapes(tuple(t.shape), shape)
    except RuntimeError:
        out = None
    if out != shape:
        raise ValueError(f"{name} with {describe(t)} does not broadcast to {ref_name}'s shape {shape}")


def check_qkv(q, k, v) -> None:
    """q, k, v: floating tensors ``[B, H, N, D]`` of one shape, dtype and device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_floating(name, t)
        if t.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor ({describe(t)}): dcs_attention computes on real data; "
                             "expected tensors on cpu or cuda")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, N, D], got {describe(t)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)} [B, H, N, D], got {describe(t)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {describe(t)}")
        check_same_device(name, t, "q", q)
    if q.shape[-1] == 0 or q.shape[-2] == 0:
        raise ValueError(f"q must have at least one token and one channel, got {describe(q)}")


def check_mask_inputs(q: torch.Tensor, mask_logits, noise) -> None:
    check_floating("mask_logits", mask_logits)
    check_same_device("mask_logits", mask_logits, "q", q)
    check_broadcast("mask_logits", mask_logits, "q", q.shape)
    if noise is not None:
        check_floating("noise", noise)
        check_same_device("noise", noise, "q", q)
        check_broadcast("noise", noise, "q", q.shape)


def is_tracing() -> bool:
    """True under torch.compile / torch.export (dynamo), FX symbolic tracing or torch.jit tracing:
    data-dependent checks are skipped there on purpose (they would break the graph)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing

    return is_fx_symbolic_tracing()


def want_nan_check(check_nan, t: torch.Tensor) -> bool:
    """Resolve ``check_nan``: None means "on CPU tensors, off on CUDA" (the check syncs the GPU);
    never under tracing (see :func:`is_tracing`)."""
    if is_tracing():
        return False
    if check_nan is None:
        return not t.is_cuda
    return bool(check_nan)


def check_no_nan(name: str, t: torch.Tensor) -> None:
    """Costs a device sync on CUDA: used only where asked (``check_nan=True``). One reduction pass:
    a NaN anywhere makes the sum NaN; only then (or on inf − inf) is the exact test run."""
    if torch.isnan(t.sum()) and torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN ({describe(t)})")
