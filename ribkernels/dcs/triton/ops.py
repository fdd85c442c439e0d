"""``torch.library`` custom ops of the fused DCS-Attention, with fake (meta) implementations and
autograd, so ``torch.compile`` traces a model that uses them as single nodes.

* ``ribkernels::dcs_attention_fwd(q, k, v, theta, noise?, seed, tau, scale, training)
  -> (out [B,H,N,D] in q's dtype, lse [B,H,N] float32)``
* ``ribkernels::dcs_attention_bwd(dout, q, k, v, theta, noise?, out, lse, seed, tau, scale, training,
  need_dtheta) -> (dq, dk, dv, dtheta)``; dtheta has θ's shape and dtype (the float32 full-size
  gradient reduced over θ's broadcast dimensions by a deterministic ``sum``), or shape ``()`` when
  not needed (eval, or θ without grad).

θ and noise are passed in their own (broadcastable) shapes; the ops expand them (views, no copy).
Gradients: q, k, v and θ (θ only in training); noise never gets one.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import launch


def reduce_to_shape(t: Tensor, shape) -> Tensor:
    """Sum the ``[B, H, N, D]`` ``t`` over the dimensions a tensor of ``shape`` was broadcast along."""
    shape = tuple(shape)
    lead = t.dim() - len(shape)
    if lead:
        t = t.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and t.shape[i] != 1)
    if dims:
        t = t.sum(dim=dims, keepdim=True)
    return t.reshape(shape)


@torch.library.custom_op("ribkernels::dcs_attention_fwd", mutates_args=())
def dcs_attention_fwd(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, noise: Optional[Tensor],
                      seed: int, tau: float, scale: float, training: bool) -> Tuple[Tensor, Tensor]:
    mode = launch.mode_of(training, noise)
    return launch.forward(q, k, v, theta, noise, seed=seed, scale=scale, mode=mode)


@dcs_attention_fwd.register_fake
def _(q, k, v, theta, noise, seed, tau, scale, training):
    B, H, N, D = q.shape
    return q.new_empty((B, H, N, D)), q.new_empty((B, H, N), dtype=torch.float32)


@torch.library.custom_op("ribkernels::dcs_attention_bwd", mutates_args=())
def dcs_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, theta: Tensor, noise: Optional[Tensor],
                      out: Tensor, lse: Tensor, seed: int, tau: float, scale: float, training: bool,
                      need_dtheta: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    mode = launch.mode_of(training, noise)
    need = bool(need_dtheta and training)
    dq, dk, dv, dth = launch.backward(dout, q, k, v, theta, noise, out, lse, seed=seed, scale=scale,
                                      tau=tau, mode=mode, need_dtheta=need)
    if need:
        dtheta = reduce_to_shape(dth, theta.shape).to(theta.dtype)
    else:
        dtheta = theta.new_zeros(())
    return dq, dk, dv, dtheta


@dcs_attention_bwd.register_fake
def _(dout, q, k, v, theta, noise, out, lse, seed, tau, scale, training, need_dtheta):
    B, H, N, D = q.shape
    dq, dk, dv = (q.new_empty((B, H, N, D)) for _ in range(3))
    dtheta = theta.new_empty(theta.shape) if (need_dtheta and training) else theta.new_empty(())
    return dq, dk, dv, dtheta


def _setup_context(ctx, inputs, output):
    q, k, v, theta, noise, seed, tau, scale, training = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, theta, noise, out, lse)
    ctx.seed, ctx.tau, ctx.scale, ctx.training = seed, tau, scale, training
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k, v, theta, noise, out, lse = ctx.saved_tensors
    need_dtheta = bool(ctx.training and ctx.needs_input_grad[3])
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dtheta = dcs_attention_bwd(dout, q, k, v, theta, noise, out, lse, ctx.seed, ctx.tau,
                                           ctx.scale, ctx.training, need_dtheta)
    return dq, dk, dv, (dtheta if need_dtheta else None), None, None, None, None, None


dcs_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def dcs_attention_fused(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, noise: Optional[Tensor], *,
                        seed: int, tau: float, scale: float, training: bool) -> Tensor:
    """The differentiable fused op: out ``[B, H, N, D]``. Inputs are assumed validated."""
    out, _ = dcs_attention_fwd(q, k, v, theta, noise if training else None, int(seed), float(tau),
                               float(scale), bool(training))
    return out
