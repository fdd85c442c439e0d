"""The two PyTorch backends of DCS-Attention (SPEC §2).

* ``eager``: materialised ``[B, H, N, N]`` scores, the way TransReID writes attention. On float64
  inputs it is the reference every other backend is tested against.
* ``sdpa``: the mask built in PyTorch, then ``scaled_dot_product_attention(q⊙M, k⊙M, v)``.

Both take already-validated inputs (see ``attention.dcs_attention``): q, k, v ``[B, H, N, D]``,
``mask_logits``/``noise`` broadcastable to ``[B, H, N, D]``. Without explicit noise in training,
``seed`` selects the Philox stream the Triton kernels use; ``seed=None`` draws from torch's global
generator instead (``torch.rand``: much faster than Philox emulated with tensor ops).
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .mask import dcs_mask, seeded_mask, torch_logistic_noise


def build_mask(q: torch.Tensor, mask_logits: torch.Tensor, *, tau: float, training: bool,
               seed: Optional[int], noise: Optional[torch.Tensor], offset: int = 0) -> torch.Tensor:
    """The 0/1 mask (float32, or float64 for float64 q) applied to q and k: ``[B, H, N, D]``, or smaller where θ and the noise
    both broadcast (e.g. a ``[1, H, 1, D]`` θ with ``[1, H, 1, D]`` noise is one mask for all tokens).
    Without explicit noise in training, the mask has the full ``[B, H, N, D]`` shape: contract v2 for
    a seed (``u > sigmoid(−θ)``), else ``torch.rand`` noise."""
    acc = torch.promote_types(q.dtype, torch.float32)
    if training and noise is None:
        if seed is not None:
            return seeded_mask(mask_logits, q.shape, seed, tau=tau, offset=offset).to(acc)
        noise = torch_logistic_noise(q.shape, device=q.device)
    return dcs_mask(mask_logits.to(acc), tau=tau, training=training, noise=noise, check_nan=False)


def _masked_qk(q, k, mask):
    # Multiply in (at least) float32 so the gradient reaching the mask, and so θ, is accumulated
    # in float32 even for half-precision q and k.
    return (q.to(mask.dtype) * mask).to(q.dtype), (k.to(mask.dtype) * mask).to(k.dtype)


def dcs_attention_eager(q, k, v, mask_logits, *, tau: float, training: bool, seed: Optional[int],
                        noise: Optional[torch.Tensor], scale: float, offset: int = 0) -> torch.Tensor:
    """``softmax(scale · (q⊙M)(k⊙M)ᵀ) v`` with the ``[B, H, N, N]`` scores in memory."""
    qm, km = _masked_qk(q, k, build_mask(q, mask_logits, tau=tau, training=training, seed=seed,
                                         noise=noise, offset=offset))
    attn = (qm @ km.transpose(-2, -1)) * scale
    attn = attn.softmax(dim=-1)
    return attn @ v


def dcs_attention_sdpa(q, k, v, mask_logits, *, tau: float, training: bool, seed: Optional[int],
                       noise: Optional[torch.Tensor], scale: float, offset: int = 0) -> torch.Tensor:
    """PyTorch composite: mask in PyTorch, then ``scaled_dot_product_attention`` (no dropout)."""
    qm, km = _masked_qk(q, k, build_mask(q, mask_logits, tau=tau, training=training, seed=seed,
                                         noise=noise, offset=offset))
    return F.scaled_dot_product_attention(qm, km, v, scale=scale)
