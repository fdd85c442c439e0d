"""The binary Gumbel-sigmoid channel mask with a straight-through gradient (SPEC §2)."""
from typing import Optional, Sequence

import torch

from . import checks
from .philox import philox_randint, uniform_open01


def logistic_noise(shape: Sequence[int], seed: int, device=None) -> torch.Tensor:
    """Logistic noise ``L = log(u) - log(1-u)`` of ``shape`` (float32) from Philox ``(seed, offset)``.

    Element ``i`` of the contiguous tensor uses counter ``offset = i``: the same numbers the Triton
    kernels make in-kernel for the same seed, whatever their block sizes.
    """
    shape = tuple(int(s) for s in shape)
    numel = 1
    for s in shape:
        numel *= s
    if numel >= 2**31:
        raise ValueError(f"logistic_noise: {numel} elements exceed the 2**31 offsets of one seed")
    offsets = torch.arange(numel, device=device, dtype=torch.int64)
    u = uniform_open01(philox_randint(seed, offsets))
    return (torch.log(u) - torch.log1p(-u)).reshape(shape)


def torch_logistic_noise(shape: Sequence[int], device=None) -> torch.Tensor:
    """Logistic noise from torch's global generator (``torch.rand``): the fast path when no seed is
    asked for. Reproducible under ``torch.manual_seed``, but not the Philox stream of a seed."""
    u = torch.rand(tuple(shape), device=device, dtype=torch.float32)
    u = u.clamp_(min=2.0**-24, max=1.0 - 2.0**-24)  # never exactly 0 or 1: L stays finite
    return torch.log(u) - torch.log1p(-u)


def draw_seed(generator: Optional[torch.Generator] = None) -> int:
    """A fresh 31-bit seed from torch's (global or given) CPU generator, so ``torch.manual_seed``
    makes the in-kernel noise reproducible."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())


class _StraightThroughMask(torch.autograd.Function):
    """Forward: ``1[z > 0]``; backward: ``d sigmoid(z/τ) / dz``, with ``z = θ + L``."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, tau: float):
        ctx.save_for_backward(z)
        ctx.tau = tau
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_mask):
        (z,) = ctx.saved_tensors
        soft = torch.sigmoid(z / ctx.tau)
        return grad_mask.to(z.dtype) * soft * (1.0 - soft) / ctx.tau, None


def dcs_mask(
    mask_logits: torch.Tensor,
    *,
    tau: float = 1.0,
    training: bool = True,
    seed: Optional[int] = None,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Hard 0/1 channel mask from logits θ, with the straight-through gradient of SPEC §2.

    training: ``M = 1[θ + L > 0]`` with logistic noise ``L`` (``noise`` if given, else Philox noise
    from ``seed``, else ``torch.rand`` noise from torch's global generator); the gradient to θ is
    ``dM · soft · (1 − soft) / τ`` with ``soft = sigmoid((θ + L)/τ)``.
    eval: ``M = 1[θ > 0]``, no gradient to θ.

    Returns a tensor of the broadcast shape of ``mask_logits`` and ``noise`` (just ``mask_logits``'
    shape without noise), in ``mask_logits``' dtype.
    """
    checks.check_floating("mask_logits", mask_logits)
    checks.check_tau(tau)
    if not training:
        return (mask_logits.detach() > 0).to(mask_logits.dtype)
    if noise is None:
        noise = (logistic_noise(mask_logits.shape, seed, device=mask_logits.device) if seed is not None
                 else torch_logistic_noise(mask_logits.shape, device=mask_logits.device))
    else:
        checks.check_floating("noise", noise)
        checks.check_same_device("noise", noise, "mask_logits", mask_logits)
        try:
            torch.broadcast_shapes(noise.shape, mask_logits.shape)
        except RuntimeError:
            raise ValueError(f"noise with {checks.describe(noise)} does not broadcast with "
                             f"mask_logits' shape {tuple(mask_logits.shape)}") from None
    acc = torch.promote_types(mask_logits.dtype, torch.float32)
    z = mask_logits.to(acc) + noise.to(acc)
    return _StraightThroughMask.apply(z, float(tau)).to(mask_logits.dtype)
