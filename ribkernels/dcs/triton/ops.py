"""``torch.library`` custom ops of the fused DCS-Attention, with fake (meta) implementations and
autograd, so ``torch.compile`` traces a model that uses them as single nodes.
``backend.dcs_attention_triton`` (what ``impl="triton"`` runs) calls ``dcs_attention_fwd``; its
autograd calls ``dcs_attention_bwd``. Tensors keep the public API's names (``mask_logits``, ...) down
to the calls into the launcher (``launch.py``).

* ``ribkernels::dcs_attention_fwd(q, k, v, mask_logits, noise?, rng, tau, scale, training,
  save_dsoft=False) -> (out [B,H,N,D] q's dtype, lse [B,H,N] float32, mask [B,H,N,D] 0/1 in q's dtype,
  dsoft)``: the mask pre-pass (mask and k⊙M in one pass, q not read; with ``save_dsoft`` in training
  also dsoft = soft·(1 − soft)/τ ``[B,H,N,D]`` in ``launch.dsoft_dtype``, else an empty tensor), then
  the forward kernel on raw q — masked once per query block in its prologue (``q_mask=mask``) — and
  k⊙M (freed when it returns). ``rng`` is the int64 ``[seed, offset]`` device tensor
  (read only in Philox mode).
* ``ribkernels::dcs_attention_bwd(dout, q, k, v, mask_logits, noise?, rng, out, lse, mask, tau, scale,
  training, need_dmask_logits, dsoft?) -> (dq, dk, dv, dmask_logits)``; dmask_logits has mask_logits'
  shape and dtype, or shape ``()`` when not needed (eval, or mask_logits without grad).

There is one backward (one program per head, deterministic: ``launch.backward``); nothing selects it.
The mask made by the forward is saved for the backward (which applies it to raw q, k tiles: dθ needs
them): Philox runs once per forward (pre-pass), which also saves dθ's factor when θ needs a gradient;
called without it (``launch.backward``), the backward's dθ epilogue regenerates it. Never inside the
attention loops.
"""
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import launch


@torch.library.custom_op("ribkernels::dcs_attention_fwd", mutates_args=())
def dcs_attention_fwd(q: Tensor, k: Tensor, v: Tensor, mask_logits: Tensor, noise: Optional[Tensor], rng: Tensor,
                      tau: float, scale: float, training: bool,
                      save_dsoft: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    mode = launch.mode_of(training, noise)
    if save_dsoft and training:
        mask, _, km, dsoft = launch.masked_qk_prepass(q, k, mask_logits, noise, rng, mode, tau=tau, mask_q=False)
    else:
        mask, _, km = launch.masked_qk_prepass(q, k, mask_logits, noise, rng, mode, mask_q=False)
        dsoft = q.new_empty((0,), dtype=launch.dsoft_dtype(q.dtype))
    # q⊙M is made in the forward's prologue (q_mask), never written: the pre-pass moves 10 B/element, not 14
    out, lse = launch.forward(q, km, v, scale=scale, q_mask=mask)
    return out, lse, mask, dsoft


@dcs_attention_fwd.register_fake
def _(q, k, v, mask_logits, noise, rng, tau, scale, training, save_dsoft=False):
    B, H, N, D = q.shape
    ds_shape = (B, H, N, D) if (save_dsoft and training) else (0,)
    return (q.new_empty((B, H, N, D)), q.new_empty((B, H, N), dtype=torch.float32),
            q.new_empty((B, H, N, D)), q.new_empty(ds_shape, dtype=launch.dsoft_dtype(q.dtype)))


@torch.library.custom_op("ribkernels::dcs_attention_bwd", mutates_args=())
def dcs_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, mask_logits: Tensor, noise: Optional[Tensor],
                      rng: Tensor, out: Tensor, lse: Tensor, mask: Tensor, tau: float, scale: float,
                      training: bool, need_dmask_logits: bool,
                      dsoft: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    mode = launch.mode_of(training, noise)
    need = bool(need_dmask_logits and training)
    saved = dsoft if (dsoft is not None and dsoft.numel() > 0) else None
    dq, dk, dv, dmask_logits = launch.backward(dout, q, k, v, mask, out, lse, mask_logits, noise, rng, scale=scale,
                                               tau=tau, mode=mode, need_dmask_logits=need, dsoft=saved)
    return dq, dk, dv, (dmask_logits if need else mask_logits.new_zeros(()))


@dcs_attention_bwd.register_fake
def _(dout, q, k, v, mask_logits, noise, rng, out, lse, mask, tau, scale, training, need_dmask_logits, dsoft=None):
    B, H, N, D = q.shape
    dq, dk, dv = (q.new_empty((B, H, N, D)) for _ in range(3))
    shape = mask_logits.shape if (need_dmask_logits and training) else ()
    return dq, dk, dv, mask_logits.new_empty(shape)


def _setup_context(ctx, inputs, output):
    q, k, v, mask_logits, noise, rng, tau, scale, training = inputs[:9]
    out, lse, mask, dsoft = output
    ctx.save_for_backward(q, k, v, mask_logits, noise, rng, out, lse, mask, dsoft)
    ctx.tau, ctx.scale, ctx.training = tau, scale, training
    ctx.mark_non_differentiable(lse, mask, dsoft)


def _backward(ctx, dout, dlse, dmask, ddsoft):
    q, k, v, mask_logits, noise, rng, out, lse, mask, dsoft = ctx.saved_tensors
    need_dmask_logits = bool(ctx.training and ctx.needs_input_grad[3])
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dmask_logits = dcs_attention_bwd(dout, q, k, v, mask_logits, noise, rng, out, lse, mask, ctx.tau,
                                                 ctx.scale, ctx.training, need_dmask_logits, dsoft)
    return dq, dk, dv, (dmask_logits if need_dmask_logits else None), None, None, None, None, None, None


dcs_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def dcs_attention_fused(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, noise: Optional[Tensor], rng: Tensor, *,
                        tau: float, scale: float, training: bool) -> Tensor:
    """Deprecated, kept for one release: ``backend.dcs_attention_triton`` calls ``dcs_attention_fwd``
    directly. out ``[B, H, N, D]``; inputs assumed validated."""
    warnings.warn("ribkernels.dcs.triton.ops.dcs_attention_fused is deprecated: use "
                  "ribkernels.dcs.triton.backend.dcs_attention_triton (or the op dcs_attention_fwd)",
                  DeprecationWarning, stacklevel=2)
    save_dsoft = bool(training and theta.requires_grad and torch.is_grad_enabled())
    return dcs_attention_fwd(q, k, v, theta, noise if training else None, rng, float(tau), float(scale),
                             bool(training), save_dsoft)[0]


class _PlainAttention(torch.autograd.Function):
    """The same kernels without the mask (forward on raw q, k; backward ``MASKED=False``). The
    benchmarks' and the static tool's "mask off" twin, to show what the mask costs."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        out, lse = launch.forward(q, k, v, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv, _ = launch.backward(dout, q, k, v, None, out, lse, q, None, None, scale=ctx.scale, tau=1.0,
                                        mode=0, need_dmask_logits=False, masked=False)
        return dq, dk, dv, None


def attention_unmasked(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None) -> Tensor:
    """Plain attention through the DCS kernels with the mask compiled out (benchmarks only)."""
    return _PlainAttention.apply(q, k, v, float(q.shape[-1] ** -0.5 if scale is None else scale))
