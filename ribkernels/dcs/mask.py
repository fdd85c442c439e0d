"""The binary Gumbel-sigmoid channel mask with a straight-through gradient (docs/design.md §2, contract v2)."""
from typing import Optional, Sequence

import torch

from . import checks
from .philox import check_offset, check_seed, contract_uniform


def _numel(shape) -> int:
    numel = 1
    for s in shape:
        numel *= int(s)
    return numel


def contract_uniform_like(shape: Sequence[int], seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """The contract-v2 uniforms ``u`` (float32, in (0, 1)) of a contiguous tensor of ``shape``."""
    shape = tuple(int(s) for s in checks.check_shape("shape", shape))
    return contract_uniform(_numel(shape), seed, offset, device=device).reshape(shape)


def logistic_noise(shape: Sequence[int], seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """Logistic noise ``L = log(u) − log1p(−u)`` (float32) of ``shape``, for the contract-v2 uniforms
    ``u`` of ``(seed, offset)``: element ``i`` of the contiguous tensor uses output ``i % 4`` of the
    Philox call with counter ``i // 4 + offset``. Every backend draws exactly this noise for a seed
    (seed in ``[0, 2**63)``, offset ``>= 0`` counted in Philox calls)."""
    u = contract_uniform_like(shape, seed, offset, device=device)
    return torch.log(u) - torch.log1p(-u)


def torch_logistic_noise(shape: Sequence[int], device=None) -> torch.Tensor:
    """Logistic noise from torch's global generator (``torch.rand``): the fast path when no seed is
    asked for. Reproducible under ``torch.manual_seed``, but not the Philox stream of a seed."""
    u = torch.rand(tuple(shape), device=device, dtype=torch.float32)
    u = u.clamp_(min=2.0**-24, max=1.0 - 2.0**-24)  # never exactly 0 or 1: L stays finite
    return torch.log(u) - torch.log1p(-u)


def draw_seed(generator: Optional[torch.Generator] = None) -> int:
    """A fresh 63-bit seed from torch's (global or given) CPU generator, so ``torch.manual_seed``
    makes seeded noise reproducible. Syncs nothing but is a host int: not for traced code."""
    return int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64, generator=generator).item())


def soft_from_uniform(theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``sigmoid(θ + L)`` for ``L = log u − log(1 − u)`` without logs: ``u / (u + (1 − u)·e^{−θ})``,
    written with ``e^{min(θ,0)}`` and ``e^{−max(θ,0)}`` so no exponent is positive (no overflow)."""
    a = torch.exp(torch.clamp(theta, max=0.0))
    b = torch.exp(-torch.clamp(theta, min=0.0))
    ua = u * a
    return ua / (ua + (1.0 - u) * b)


def soft_gate(theta: torch.Tensor, u: torch.Tensor, tau: float) -> torch.Tensor:
    """``soft = sigmoid((θ + L)/τ)`` for the uniforms ``u`` (float32 θ and u, broadcastable)."""
    if tau == 1.0:
        return soft_from_uniform(theta, u)
    return torch.sigmoid((theta + (torch.log(u) - torch.log1p(-u))) / tau)


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


class _UniformMask(torch.autograd.Function):
    """Contract v2 from uniforms: forward ``M = 1[u > sigmoid(−θ)]``; backward
    ``dθ = dM · soft · (1 − soft) / τ`` with ``soft = sigmoid((θ + L)/τ)``. θ and u float32, one shape."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, u: torch.Tensor, tau: float):
        ctx.save_for_backward(theta, u)
        ctx.tau = tau
        return (u > torch.sigmoid(-theta)).to(theta.dtype)

    @staticmethod
    def backward(ctx, grad_mask):
        theta, u = ctx.saved_tensors
        soft = soft_gate(theta, u, ctx.tau)
        return grad_mask.to(theta.dtype) * soft * (1.0 - soft) / ctx.tau, None, None


def seeded_mask(mask_logits: torch.Tensor, shape: Sequence[int], seed: int, *, tau: float = 1.0,
                offset: int = 0) -> torch.Tensor:
    """Training mask of contract v2 for a seed: ``[*shape]`` float32 (θ broadcast to ``shape``), with
    the straight-through gradient to θ (summed over θ's broadcast dimensions by autograd)."""
    shape = tuple(int(s) for s in shape)
    u = contract_uniform_like(shape, seed, offset, device=mask_logits.device)
    theta = mask_logits.to(torch.float32).expand(shape)
    return _UniformMask.apply(theta, u, float(tau))


def dcs_mask(
    mask_logits: torch.Tensor,
    *,
    tau: float = 1.0,
    training: bool = True,
    seed: Optional[int] = None,
    offset: int = 0,
    noise: Optional[torch.Tensor] = None,
    check_nan: Optional[bool] = None,
) -> torch.Tensor:
    """Hard 0/1 channel mask from logits θ, with the straight-through gradient of docs/design.md §2.

    training: with ``noise`` (logistic, broadcastable with θ): ``M = 1[θ + noise > 0]``; with ``seed``
    (in ``[0, 2**63)``; ``offset >= 0``): contract v2, ``M = 1[u > sigmoid(−θ)]`` in float32 for the
    Philox uniforms of θ's contiguous shape; with neither: ``torch.rand`` noise from torch's generator.
    The gradient to θ is ``dM · soft · (1 − soft) / τ`` with ``soft = sigmoid((θ + L)/τ)``.
    eval: ``M = 1[θ > 0]``, no gradient to θ.
    check_nan: raise on NaN in θ / noise (a NaN logit would silently drop its channel). Default: on
    CPU tensors, off on CUDA (it syncs) and always skipped under torch.compile / export tracing.

    Returns a tensor of the broadcast shape of ``mask_logits`` and ``noise`` (just ``mask_logits``'
    shape without noise), in ``mask_logits``' dtype.
    """
    checks.check_floating("mask_logits", mask_logits)
    checks.check_tau(tau)
    if seed is not None:
        seed = check_seed(seed)
    offset = check_offset(offset)
    if noise is not None:
        checks.check_floating("noise", noise)
        checks.check_same_device("noise", noise, "mask_logits", mask_logits)
        try:
            torch.broadcast_shapes(noise.shape, mask_logits.shape)
        except RuntimeError:
            raise ValueError(f"noise with {checks.describe(noise)} does not broadcast with "
                             f"mask_logits' shape {tuple(mask_logits.shape)}") from None
    if checks.want_nan_check(check_nan, mask_logits):
        checks.check_no_nan("mask_logits", mask_logits)
        if noise is not None and training:
            checks.check_no_nan("noise", noise)
    if not training:
        return (mask_logits.detach() > 0).to(mask_logits.dtype)
    acc = torch.promote_types(mask_logits.dtype, torch.float32)
    if noise is None:
        if seed is not None:
            return seeded_mask(mask_logits, mask_logits.shape, seed, tau=tau, offset=offset).to(mask_logits.dtype)
        noise = torch_logistic_noise(mask_logits.shape, device=mask_logits.device)
    z = mask_logits.to(acc) + noise.to(acc)
    return _StraightThroughMask.apply(z, float(tau)).to(mask_logits.dtype)
