"""Channel-shared DCS-Attention: one binary channel mask per (image, head, channel) or per (head,
channel) for a whole step, shared by every token.

θ (``mask_logits``) is ``[H, D]``. In training the mask is ``M = 1[u > sigmoid(−θ)]`` for the
noise contract's uniforms ``u`` drawn over the mask's own contiguous shape (``[B, H, 1, D]`` per
image, ``[1, H, 1, D]`` per step), or ``M = 1[θ + noise > 0]`` for explicit logistic noise; in eval
``M = 1[θ > 0]``.

Because M is binary and the same for every token, ``(q⊙M)(k⊙M)ᵀ = (q⊙M)kᵀ``: the mask is applied to
q alone and attention is plain ``scaled_dot_product_attention``. The straight-through gradient is
the two-sided form's, ``dM = Σ_n d(q⊙M)⊙q + Σ_n d(k⊙M)⊙k`` (sums over the tokens sharing M). Let
``dq'`` and ``dk`` be the gradients of ``q' = q⊙M`` and of k in the q-only form (``dS`` the scores'
gradient): ``dq' = s·dS·k`` and ``dk = s·dSᵀ·q'``. Then

* ``d(q⊙M) = s·dS·(k⊙M) = dq'⊙M``, so the q term is ``M⊙Σ_n dq'⊙q``;
* ``d(k⊙M) = s·dSᵀ·(q⊙M) = dk``: the gradient reaching k is the two-sided one (zero where M = 0), and
  per channel ``Σ_n dk⊙k = s·Σ_{i,j} dS_ij q'_ic k_jc = Σ_n dq'⊙q'``, so the k term is also
  ``M⊙Σ_n dq'⊙q``.

Hence ``dM = 2·M⊙Σ_n dq'⊙q``: what autograd delivers to M through ``q·M``, times ``2·M`` — no pass
over k or the scores. dq (``= dq'⊙M``), dk and dv are autograd's. ``dθ = dM · soft · (1 − soft) / τ``
with ``soft = sigmoid((θ + L)/τ)``. A per-step mask may scale the q rows of the qkv projection
instead (``W_q⊙M``, ``b_q⊙M``): autograd then delivers the same ``Σ dq'⊙q`` to M.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from . import checks
from .mask import contract_uniform_like, soft_gate
from .philox import check_offset, check_seed

MASK_PER = ("image", "step")


def check_shared_logits(mask_logits, num_heads: int, head_dim: int, name: str = "mask_logits") -> None:
    """θ of the channel-shared mode: a floating ``[H, D]`` tensor (one logit per head and channel)."""
    checks.check_floating(name, mask_logits)
    if tuple(mask_logits.shape) != (num_heads, head_dim):
        raise ValueError(f"{name} for mask_mode='channel_shared' must be [H, D] = [{num_heads}, {head_dim}] "
                         f"(one logit per head and channel), got {checks.describe(mask_logits)}")


def check_mask_per(mask_per) -> str:
    if mask_per not in MASK_PER:
        raise ValueError(f"mask_per must be one of {MASK_PER} (one mask per image, or one per step), "
                         f"got {mask_per!r}")
    return mask_per


def mask_shape(num_heads: int, head_dim: int, batch: int, mask_per: str) -> Tuple[int, int, int, int]:
    """The training mask's shape: ``[B, H, 1, D]`` (per image) or ``[1, H, 1, D]`` (per step)."""
    return (batch if mask_per == "image" else 1, num_heads, 1, head_dim)


class _SharedMaskFromUniform(torch.autograd.Function):
    """Forward ``M = 1[u > sigmoid(−θ)]``; backward ``dθ = 2·M·dM·soft·(1 − soft)/τ`` (see the module
    docstring: ``dM`` arriving here is the q-only gradient ``Σ dq'⊙q``)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, u: torch.Tensor, tau: float):
        mask = (u > torch.sigmoid(-theta)).to(theta.dtype)
        ctx.save_for_backward(theta, u, mask)
        ctx.tau = tau
        return mask

    @staticmethod
    def backward(ctx, grad_mask):
        theta, u, mask = ctx.saved_tensors
        soft = soft_gate(theta, u, ctx.tau)
        return 2.0 * mask * grad_mask.to(theta.dtype) * soft * (1.0 - soft) / ctx.tau, None, None


class _SharedMaskFromLogits(torch.autograd.Function):
    """Forward ``M = 1[z > 0]`` for ``z = θ + L``; backward ``dz = 2·M·dM·soft·(1 − soft)/τ`` with
    ``soft = sigmoid(z/τ)``."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, tau: float):
        mask = (z > 0).to(z.dtype)
        ctx.save_for_backward(z, mask)
        ctx.tau = tau
        return mask

    @staticmethod
    def backward(ctx, grad_mask):
        z, mask = ctx.saved_tensors
        soft = torch.sigmoid(z / ctx.tau)
        return 2.0 * mask * grad_mask.to(z.dtype) * soft * (1.0 - soft) / ctx.tau, None


def channel_shared_mask(
    mask_logits: torch.Tensor,
    batch: int,
    *,
    tau: float = 1.0,
    training: bool = True,
    mask_per: str = "image",
    seed: Optional[Union[int, torch.Tensor]] = None,
    offset: int = 0,
    noise: Optional[torch.Tensor] = None,
    check_nan: Optional[bool] = None,
) -> torch.Tensor:
    """The mask ``[B, H, 1, D]`` (mask_per="image") or ``[1, H, 1, D]`` (mask_per="step", and eval)
    for θ ``[H, D]``, in θ's dtype promoted to at least float32.

    training: ``noise`` (logistic, broadcastable to the mask's shape) gives ``M = 1[θ + noise > 0]``;
    else ``seed``/``offset`` the contract uniforms of the mask's contiguous shape; else ``torch.rand``
    uniforms (reproducible under ``torch.manual_seed``). Its gradient to θ is the two-sided form's
    straight-through gradient, valid only when the mask multiplies q alone (see the module docstring).
    eval: ``1[θ > 0]``, no gradient.
    """
    checks.check_floating("mask_logits", mask_logits)
    if mask_logits.dim() != 2:
        raise ValueError(f"mask_logits for mask_mode='channel_shared' must be [H, D] (one logit per head "
                         f"and channel), got {checks.describe(mask_logits)}")
    check_mask_per(mask_per)
    checks.check_tau(tau)
    H, D = mask_logits.shape
    if isinstance(batch, bool) or not isinstance(batch, (int, torch.SymInt)) or (isinstance(batch, int) and batch < 1):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if seed is not None:
        seed = check_seed(seed)
    offset = check_offset(offset)
    shape = mask_shape(H, D, batch, mask_per)
    if noise is not None:
        checks.check_floating("noise", noise)
        checks.check_same_device("noise", noise, "mask_logits", mask_logits)
        checks.check_broadcast("noise", noise, "the mask", shape)
    if checks.want_nan_check(check_nan, mask_logits):
        checks.check_no_nan("mask_logits", mask_logits)
        if noise is not None and training:
            checks.check_no_nan("noise", noise)
    theta = mask_logits.reshape(1, H, 1, D)
    if not training:
        return (theta.detach() > 0).to(torch.promote_types(mask_logits.dtype, torch.float32))
    acc = torch.promote_types(mask_logits.dtype, torch.float32)
    if noise is not None:
        z = theta.to(acc) + noise.to(acc)
        return _SharedMaskFromLogits.apply(z.expand(shape), float(tau))
    if seed is not None:
        u = contract_uniform_like(shape, seed, offset, device=mask_logits.device)
    else:
        u = torch.rand(shape, device=mask_logits.device, dtype=torch.float32).clamp_(min=2.0**-24, max=1.0 - 2.0**-24)
    # θ and u in float32 as the contract makes them (like dcs_mask's seeded path)
    mask = _SharedMaskFromUniform.apply(theta.to(torch.float32).expand(shape), u, float(tau))
    return mask.to(acc)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, impl: str = "sdpa") -> torch.Tensor:
    """Plain attention ``softmax(scale · q kᵀ) v``: SDPA, or the ``[B, H, N, N]`` scores for "eager"."""
    if impl == "eager":
        return (q @ k.transpose(-2, -1) * scale).softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def channel_shared_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    tau: float = 1.0,
    training: bool = True,
    mask_per: str = "image",
    seed: Optional[Union[int, torch.Tensor]] = None,
    offset: int = 0,
    noise: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    impl: str = "sdpa",
    check_nan: Optional[bool] = None,
) -> torch.Tensor:
    """``softmax(scale · (q⊙M)(k⊙M)ᵀ) v`` for a channel mask M shared by all tokens, computed as
    ``softmax(scale · (q⊙M) kᵀ) v`` (one scaling of q, then plain attention).

    q, k, v: ``[B, H, N, D]``; mask_logits θ: ``[H, D]``; noise: broadcastable to the mask's shape
    (``[B, H, 1, D]`` per image, ``[1, H, 1, D]`` per step). See :func:`channel_shared_mask` for
    tau/training/mask_per/seed/offset/noise. impl: "sdpa" (``scaled_dot_product_attention``) or
    "eager" (materialised scores). Returns ``[B, H, N, D]`` in q's dtype.
    """
    checks.check_qkv(q, k, v)
    B, H, _, D = q.shape
    check_shared_logits(mask_logits, H, D)
    checks.check_same_device("mask_logits", mask_logits, "q", q)
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"impl must be 'sdpa' or 'eager' for channel-shared DCS, got {impl!r}")
    if scale is None:
        scale = D ** -0.5
    mask = channel_shared_mask(mask_logits, B, tau=tau, training=training, mask_per=mask_per, seed=seed,
                               offset=offset, noise=noise, check_nan=check_nan)
    return attend(q * mask.to(q.dtype), k, v, float(scale), impl)


def q_row_scale(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``[3·dim]``: the ``[1, H, 1, D]`` mask over the q rows of a qkv projection, ones over k and v."""
    ones = torch.ones(2 * dim, dtype=mask.dtype, device=mask.device)
    return torch.cat([mask.reshape(dim), ones])


def masked_qkv_params(weight: torch.Tensor, bias: Optional[torch.Tensor],
                      mask: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The qkv projection's ``weight [3·dim, dim]`` and ``bias [3·dim]`` with the q rows scaled by
    the ``[1, H, 1, D]`` mask (differentiable in all three): ``x Wᵀ + b`` then has ``q⊙M`` for q."""
    dim = weight.shape[1]
    if weight.shape[0] != 3 * dim or mask.numel() != dim:
        raise ValueError(f"qkv weight must be [3*dim, dim] and the mask hold dim={dim} values, got weight "
                         f"{tuple(weight.shape)} and mask {tuple(mask.shape)}")
    rows = q_row_scale(mask.to(weight.dtype), dim)
    return weight * rows[:, None], (bias * rows if bias is not None else None)


def fold_eval_mask(weight: torch.Tensor, bias: Optional[torch.Tensor],
                   mask_logits: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The eval mask ``1[θ > 0]`` folded into the qkv projection (no gradient to θ)."""
    mask = (mask_logits.detach() > 0).to(weight.dtype)
    return masked_qkv_params(weight, bias, mask)
