"""Launchers of the DCS-Attention kernels: block sizes, grids, strides, output buffers.

Block sizes: autotuned on GPU over a small config set keyed by (N, D, mode, dtypes); a fixed config
under ``TRITON_INTERPRET=1`` (the interpreter cannot autotune, and large blocks make it faster).
``RIBKERNELS_DCS_AUTOTUNE=0`` (read at each call) turns autotuning off on GPU too (fixed
heuristic configs). Tests may
force a config with ``config=(BLOCK_M, BLOCK_N)``.
"""
import math
import os
from typing import Optional, Tuple

import torch
import triton

from . import kernels as K

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read when the kernels were defined


def autotune_enabled() -> bool:
    """Autotune on GPU unless ``RIBKERNELS_DCS_AUTOTUNE=0`` (read at each call)."""
    return not INTERPRET and os.environ.get("RIBKERNELS_DCS_AUTOTUNE", "1") != "0"


_KEY = ["N", "HEAD_DIM", "MODE"]  # the autotuner adds the dtypes of the tensor arguments


def _configs(triples):
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in triples]


# (BLOCK_M, BLOCK_N, num_warps, num_stages). Kept small: each config is one more compile per key.
# Larger blocks regenerate the in-kernel mask fewer times (each query block regenerates every key
# block's mask and vice versa), smaller ones give more programs for short sequences.
_FWD_CONFIGS = _configs([(64, 64, 4, 2), (128, 64, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3)])
_DKDV_CONFIGS = _configs([(64, 64, 4, 2), (32, 64, 4, 3), (64, 128, 8, 2)])
_DQ_CONFIGS = _configs([(64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 8, 2)])

if not INTERPRET:
    _fwd_tuned = triton.autotune(_FWD_CONFIGS, key=_KEY)(K.dcs_fwd_kernel)
    _dkdv_tuned = triton.autotune(_DKDV_CONFIGS, key=_KEY + ["NEED_DMASK"])(K.dcs_bwd_dkdv_kernel)
    _dq_tuned = triton.autotune(_DQ_CONFIGS, key=_KEY + ["NEED_DMASK"])(K.dcs_bwd_dq_kernel)


def _fixed_config(N: int, D: int) -> Tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) when not autotuning."""
    if INTERPRET:  # few, big blocks: each loop iteration costs tens of ms in the interpreter
        b = min(128, max(16, triton.next_power_of_2(N)))
        return b, b, 4, 1
    return (64, 64, 4, 2) if D <= 64 else (64, 32, 4, 2)


def _strides4(t: torch.Tensor):
    return tuple(t.stride())


def _bhnd(t: Optional[torch.Tensor], shape) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """θ or noise expanded (a view, strides 0 on broadcast dims) to ``[B, H, N, D]``."""
    e = t.expand(shape)
    return e, _strides4(e)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 is computed in true fp32 (the float64-reference tolerance of SPEC §5 is ~1e-5); the
    # argument is ignored by Triton for 16-bit inputs.
    return "ieee" if dtype == torch.float32 else "tf32"


def mode_of(training: bool, noise: Optional[torch.Tensor]) -> int:
    if not training:
        return K.MODE_EVAL
    return K.MODE_NOISE if noise is not None else K.MODE_PHILOX


def _mask_args(theta, noise, shape, mode):
    th, th_st = _bhnd(theta, shape)
    if mode == K.MODE_NOISE:
        nz, nz_st = _bhnd(noise, shape)
    else:
        nz, nz_st = th, (0, 0, 0, 0)  # unused by the kernel
    return th, nz, th_st + nz_st


def forward(q, k, v, theta, noise, *, seed: int, scale: float, mode: int,
            config: Optional[Tuple[int, int]] = None):
    """out ``[B, H, N, D]`` (q's dtype, contiguous) and LSE ``[B, H, N]`` (float32, log2 domain)."""
    B, H, N, D = q.shape
    out = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    if B * H == 0:
        return out, lse
    th, nz, mst = _mask_args(theta, noise, q.shape, mode)
    args = (q, k, v, th, nz, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mst,
            H, N, int(seed), float(scale) * math.log2(math.e))
    meta = dict(HEAD_DIM=D, MODE=mode, DOT_PREC=_dot_precision(q.dtype))
    if config is None and autotune_enabled():
        grid = lambda m: (triton.cdiv(N, m["BLOCK_M"]), B * H)
        _fwd_tuned[grid](*args, **meta)
    else:
        bm, bn, w, s = _fixed_config(N, D) if config is None else (*config, 4, 1 if INTERPRET else 2)
        K.dcs_fwd_kernel[(triton.cdiv(N, bm), B * H)](*args, **meta, BLOCK_M=bm, BLOCK_N=bn,
                                                      num_warps=w, num_stages=s)
    return out, lse


def backward(dout, q, k, v, theta, noise, out, lse, *, seed: int, scale: float, tau: float,
             mode: int, need_dtheta: bool, config: Optional[Tuple[int, int]] = None):
    """dq, dk, dv (contiguous, q's dtype) and the full-size float32 ``[B, H, N, D]`` dθ (before the
    reduction to θ's shape), or None when ``need_dtheta`` is False or in eval mode."""
    B, H, N, D = q.shape
    if dout.dtype != q.dtype:  # the kernels' dots need dout in q's dtype
        dout = dout.to(q.dtype)
    need_dmask = bool(need_dtheta) and mode != K.MODE_EVAL
    dq = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    if need_dmask:
        dmk = torch.empty((B, H, N, D), dtype=torch.float32, device=q.device)
        dth = torch.empty_like(dmk)
    else:
        dmk = dth = dq  # placeholders, never touched by the kernels
    if B * H == 0:
        return dq, dk, dv, (dth if need_dmask else None)
    delta = (dout.float() * out.float()).sum(-1)  # [B, H, N] contiguous, rowsum(dO ⊙ O)
    th, nz, mst = _mask_args(theta, noise, q.shape, mode)
    common = (*q.stride(), *k.stride(), *v.stride(), *dout.stride(), *mst,
              H, N, int(seed), float(scale) * math.log2(math.e), float(scale))
    meta = dict(HEAD_DIM=D, MODE=mode, DOT_PREC=_dot_precision(q.dtype), NEED_DMASK=need_dmask)
    dkdv_args = (q, k, v, th, nz, dout, lse, delta, dk, dv, dmk, *common)
    dq_args = (q, k, v, th, nz, dout, lse, delta, dq, dmk, dth, *common, 1.0 / float(tau))
    if config is None and autotune_enabled():
        _dkdv_tuned[lambda m: (triton.cdiv(N, m["BLOCK_N"]), B * H)](*dkdv_args, **meta)
        _dq_tuned[lambda m: (triton.cdiv(N, m["BLOCK_M"]), B * H)](*dq_args, **meta)
    else:
        bm, bn, w, s = _fixed_config(N, D) if config is None else (*config, 4, 1 if INTERPRET else 2)
        K.dcs_bwd_dkdv_kernel[(triton.cdiv(N, bn), B * H)](*dkdv_args, **meta, BLOCK_M=bm, BLOCK_N=bn,
                                                           num_warps=w, num_stages=s)
        K.dcs_bwd_dq_kernel[(triton.cdiv(N, bm), B * H)](*dq_args, **meta, BLOCK_M=bm, BLOCK_N=bn,
                                                         num_warps=w, num_stages=s)
    return dq, dk, dv, (dth if need_dmask else None)


def mask_view(theta, noise, shape, *, seed: int, mode: int, what: int = 0, block_n: int = 64):
    """What the attention kernels build for ``[B, H, N, D]`` ``shape``, float32 contiguous:
    what=0 the mask M, 1 the logits z, 2 the uniform u, 3 the noise L."""
    B, H, N, D = shape
    out = torch.empty(shape, dtype=torch.float32, device=theta.device)
    if B * H == 0:
        return out
    th, nz, mst = _mask_args(theta, noise, shape, mode)
    K.dcs_mask_kernel[(triton.cdiv(N, block_n), B * H)](th, nz, out, *mst, H, N, int(seed),
                                                        HEAD_DIM=D, MODE=mode, WHAT=what, BLOCK_N=block_n)
    return out


def flat_noise(numel: int, seed: int, device, *, what: int = 3, block: int = 1024) -> torch.Tensor:
    out = torch.empty(numel, dtype=torch.float32, device=device)
    if numel:
        K.flat_noise_kernel[(triton.cdiv(numel, block),)](out, numel, int(seed), WHAT=what, BLOCK=block)
    return out
