"""The two PyTorch backends of DCS-Attention (docs/design.md §2).

* ``eager``: materialised ``[B, H, N, N]`` scores, the way TransReID writes attention. On float64
  inputs it is the reference every other backend is tested against.
* ``sdpa``: the mask applied to q and k, then ``scaled_dot_product_attention(q⊙M, k⊙M, v)``.

Both take already-validated inputs (see ``attention.dcs_attention``): q, k, v ``[B, H, N, D]``,
``mask_logits``/``noise`` broadcastable to ``[B, H, N, D]``. In training without explicit noise the
mask pre-pass (``cpu_prepass.py``) makes ``q⊙M, k⊙M`` of noise contract v2 for ``seed``/``offset``; with
``seed=None`` it uses a seed drawn from torch's generator (the C++ op) or ``torch.rand`` noise (no
extension), so the seeded and unseeded paths cost the same on CPU.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .checks import is_tracing
from .mask import dcs_mask
from .cpu_prepass import apply_mask, masked_qk_seeded


def masked_qk(q, k, mask_logits, *, tau: float, training: bool, seed, offset: int,
              noise: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(q⊙M, k⊙M, q_nan_count)`` in q's dtype; ``q_nan_count`` (0-d int64) when the C++ pre-pass
    counted NaN in q, else None. With explicit noise or in eval the mask is made by ``dcs_mask``
    (``[B, H, N, D]`` or smaller where θ and the noise both broadcast)."""
    if training and noise is None:
        return masked_qk_seeded(q, k, mask_logits, seed, offset, tau)
    acc = torch.promote_types(q.dtype, torch.float32)
    mask = dcs_mask(mask_logits.to(acc), tau=tau, training=training, noise=noise, check_nan=False)
    return apply_mask(q, k, mask) + (None,)


def restore_nan_rows(out: torch.Tensor, q: torch.Tensor, q_nan_count: Optional[torch.Tensor]) -> torch.Tensor:
    """PyTorch's CPU SDPA returns a zero row for a query row holding NaN where eager attention gives
    NaN: put the NaN back (CPU only, outside tracing; free unless q has NaN when the pre-pass counted)."""
    if q.is_cuda or is_tracing():
        return out
    has_nan = bool(q_nan_count > 0) if q_nan_count is not None else bool(torch.isnan(q).any())
    if not has_nan:
        return out
    return out + torch.where(torch.isnan(q).any(dim=-1, keepdim=True), float("nan"), 0.0).to(out.dtype)


def dcs_attention_eager(q, k, v, mask_logits, *, tau: float, training: bool, seed, noise: Optional[torch.Tensor],
                        scale: float, offset: int = 0) -> torch.Tensor:
    """``softmax(scale · (q⊙M)(k⊙M)ᵀ) v`` with the ``[B, H, N, N]`` scores in memory."""
    qm, km, _ = masked_qk(q, k, mask_logits, tau=tau, training=training, seed=seed, offset=offset, noise=noise)
    attn = (qm @ km.transpose(-2, -1)) * scale
    attn = attn.softmax(dim=-1)
    return attn @ v


def dcs_attention_sdpa(q, k, v, mask_logits, *, tau: float, training: bool, seed, noise: Optional[torch.Tensor],
                       scale: float, offset: int = 0) -> torch.Tensor:
    """Mask pre-pass, then ``scaled_dot_product_attention`` (no dropout); NaN rows of q stay NaN."""
    qm, km, q_nan_count = masked_qk(q, k, mask_logits, tau=tau, training=training, seed=seed, offset=offset,
                                    noise=noise)
    out = F.scaled_dot_product_attention(qm, km, v, scale=scale)
    return restore_nan_rows(out, q, q_nan_count)
