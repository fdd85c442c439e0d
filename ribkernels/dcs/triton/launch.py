"""The one launcher of the DCS-Attention kernels: RNG state, the mask pre-pass, forward, backward.

Block sizes: a pruned list per (kernel, D) for fp16/bf16 — the configs ``benchmarks.sm90_static``
compiles for sm_90 without spills — autotuned on GPU (keyed by N, ≤ 2 configs each); the first config when
``RIBKERNELS_DCS_AUTOTUNE=0`` (read at each call); a fixed big-block config under
``TRITON_INTERPRET=1``. Tests may force ``config=(BLOCK_M, BLOCK_N)``.

Backward: one launch, one program per head (``backward.py``): deterministic (dq sums its key
blocks in a fixed order, no atomics), bit-reproducible run to run. The former ``"fused"`` (dQ by
float32 atomics + a finishing kernel) and ``"split"`` (dK/dV and dQ passes) paths are retired:
``backward(..., path=...)`` and ``RIBKERNELS_DCS_BACKWARD`` are still accepted (validated) and
ignored, with a ``DeprecationWarning``.

Kernel arguments are passed by name: one name per tensor (the kernels' upper-case parameters: ``Q``,
``K``, ``MSK`` …) and its ``[B, H, N, D]`` strides as ``s<tensor>b … s<tensor>d`` (``strides``).
Names: ``mask_logits`` is the tensor the public API calls so (θ in the paper); the kernels take it
as ``TH`` (its gradient ``DTH``, the noise ``NZ``), short because every stride argument repeats the
prefix (``stb … std``).

Every launch runs under ``torch.cuda.device(q.device)``; all index arithmetic in the kernels is int64.
The seed and the offset reach the kernels as a device tensor ``rng = [seed, offset]`` (int64), never as
scalars: no recompilation per seed, and a CUDA graph replays with whatever the caller wrote there.
"""
import contextlib
import math
import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import triton

from ..philox import check_offset, check_seed
from . import noise as NZ
from .backward import dcs_bwd_kernel
from .debug import flat_noise_kernel
from .forward import dcs_fwd_kernel
from .interpreter_compat import fix_tensor_index
from .prepass import dcs_mask_prepass_kernel

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read when the kernels were defined
if INTERPRET:  # triton 3.6's interpreter under NumPy >= 2.4 (interpreter_compat.py)
    fix_tensor_index()
PREPASS_ELEMS = 4096  # mask elements per pre-pass program (4 warps: 32 per thread, 8 Philox calls)
RETIRED_BACKWARD_PATHS = ("fused", "split", "auto")  # accepted, ignored (one backward now)

Config = Tuple[int, int, int, int]  # (BLOCK_M, BLOCK_N, num_warps, num_stages)

# The shipped configs, per kernel and head dim (fp16/bf16). Each compiles for sm_90 without spills in
# its attention loop, without serialised wgmma, and none is dominated (``python -m benchmarks.sm90_static --check``, run by CI;
# tables in benchmarks/results/*-sm90-static/).
SHIPPED: Dict[str, Dict[int, List[Config]]] = {
    "fwd": {16: [(64, 64, 4, 3)], 32: [(64, 64, 4, 3), (128, 64, 4, 3)],
            64: [(64, 64, 4, 3), (128, 64, 8, 3)], 128: [(64, 64, 4, 2)]},
    "bwd": {16: [(64, 64, 4, 2)], 32: [(64, 64, 4, 2)], 64: [(64, 64, 4, 2), (64, 64, 4, 1)],
            128: [(64, 64, 8, 2)]},
}
# The backward at D >= 64 with 2 stages keeps a few values on the stack outside its query loop
# (reloaded once per key block, ≤ 56 B; ``sm90_static`` shows where each spill sits); 1 stage is
# spill-free but loads each tile without prefetch: the autotuner times both.
# The mask-off twins' own configs (``MASKED=False``: ``attention_unmasked``, the benchmarks'
# baseline) where the masked kernel's do not suit them: the mask-off backward at D=64 compiles
# spill-free with 2 stages, so its 1-stage config is dominated (more instructions, no prefetch).
SHIPPED_NOMASK: Dict[str, Dict[int, List[Config]]] = {"bwd": {64: [(64, 64, 4, 2)]}}
# float32 on GPU is routed to the SDPA backend (``backend.why_not``): with tf32x3 dots (fp32-class
# accuracy) these, the smallest sensible tiles, still spill on sm_90 (see the sm90-static results'
# fp32 rows: 255 registers and stack frames). Kept so the static
# tool shows the evidence (``--candidates``); under the interpreter fp32 runs with the 16-bit lists.
FP32_TF32X3_TRIED: Dict[str, Dict[int, List[Config]]] = {
    "fwd": {32: [(64, 32, 4, 2)], 64: [(64, 32, 4, 2)], 128: [(32, 32, 4, 2)]},
    "bwd": {32: [(32, 32, 4, 1)], 64: [(32, 32, 4, 1)], 128: [(16, 32, 4, 1)]},
}
KERNELS = {"fwd": dcs_fwd_kernel, "bwd": dcs_bwd_kernel}
AUTOTUNE_KEYS = {"fwd": ["N", "MASK_Q"], "bwd": ["N", "MASKED"]}  # each variant tunes its own config
# The grid of each kernel: forward over query blocks × B·H, backward one program per head.
GRID_AXIS = {"fwd": "BLOCK_M", "bwd": None}


def shipped_configs(kernel: str, head_dim: int, dtype: torch.dtype, masked: bool = True) -> List[Config]:
    """The configs the launcher may pick; ``masked=False``: those of the mask-off twin."""
    if not masked and head_dim in SHIPPED_NOMASK.get(kernel, {}):
        return SHIPPED_NOMASK[kernel][head_dim]
    return SHIPPED[kernel][head_dim]


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots: "ieee" under the interpreter (fp32 never reaches the GPU kernels), "tf32x3" when
    compiled (only the static tool does: the evidence for routing fp32 to SDPA)."""
    if dtype == torch.float32:
        return "ieee" if INTERPRET else "tf32x3"
    return "tf32"  # ignored by Triton for 16-bit inputs


def autotune_enabled() -> bool:
    return not INTERPRET and os.environ.get("RIBKERNELS_DCS_AUTOTUNE", "1") != "0"


_TUNED: Dict[tuple, object] = {}


def _tuned(kernel: str, head_dim: int, dtype: torch.dtype, masked: bool):
    key = (kernel, head_dim, dtype, masked)
    if key not in _TUNED:
        cfgs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in shipped_configs(kernel, head_dim, dtype, masked)]
        _TUNED[key] = triton.autotune(cfgs, key=AUTOTUNE_KEYS[kernel])(KERNELS[kernel])
    return _TUNED[key]


def _grid(kernel: str, B: int, H: int, N: int, meta) -> tuple:
    axis = GRID_AXIS[kernel]
    return (B * H,) if axis is None else (triton.cdiv(N, meta[axis]), B * H)


def strides(prefix: str, t: Optional[torch.Tensor]) -> Dict[str, int]:
    """The kernels' stride arguments of the ``[B, H, N, D]`` view ``t``: ``{prefix}b``, ``{prefix}h``,
    ``{prefix}n``, ``{prefix}d`` (e.g. ``sqb … sqd`` of q); all 0 for an unused (None) tensor."""
    values = (0, 0, 0, 0) if t is None else t.stride()
    return {prefix + axis: st for axis, st in zip("bhnd", values)}


def _launch(kernel: str, q: torch.Tensor, args: Dict[str, object], meta: Dict[str, object],
            config: Optional[Tuple[int, int]]):
    """Launch ``kernel`` (grid ``GRID_AXIS``) with a shipped, forced or interpreter config; ``args``:
    the kernel's tensor and scalar arguments by name, ``meta``: its constexprs but the block sizes."""
    B, H, N, D = q.shape
    masked = bool(meta.get("MASKED", True))
    if config is None and autotune_enabled():
        fn = _tuned(kernel, D, q.dtype, masked)
        fn[lambda m: _grid(kernel, B, H, N, m)](**args, **meta)
        return
    if config is not None:
        bm, bn, w, s = (*config, 4, 1 if INTERPRET else 2)
    elif INTERPRET:  # few, big blocks: each loop iteration costs tens of ms in the interpreter
        b = min(128, max(16, triton.next_power_of_2(N)))
        bm, bn, w, s = b, b, 4, 1
    else:
        bm, bn, w, s = shipped_configs(kernel, D, q.dtype, masked)[0]
    KERNELS[kernel][_grid(kernel, B, H, N, dict(BLOCK_M=bm, BLOCK_N=bn))](
        **args, **meta, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)


def device_guard(t: torch.Tensor):
    """``torch.cuda.device(t.device)`` for CUDA tensors (launches go to t's device, not the current one)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def rng_state(seed, offset, device) -> torch.Tensor:
    """``[seed, offset]`` as an int64 tensor on ``device``. ``seed``: None (drawn on the device from
    torch's generator, no host sync) or what ``philox.check_seed`` accepts (an int in [0, 2**63) or an
    int64 tensor; here a 1-element one too); ``offset``: the same, counted in Philox calls. Device
    tensors' values are not checked (that would sync): the caller keeps them in range."""
    device = torch.device(device)

    def one(x, what):
        if isinstance(x, torch.Tensor) and x.dim() == 1 and x.numel() == 1 and x.dtype == torch.int64:
            x = x.reshape(())  # a [1] int64 tensor counts as 0-d; anything else is reported as given
        x = (check_offset if what == "offset" else check_seed)(x)
        return x.reshape(1).to(device) if isinstance(x, torch.Tensor) else x

    seed = torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64, device=device) if seed is None else one(seed, "seed")
    offset = one(offset, "offset")
    if not isinstance(seed, torch.Tensor) and not isinstance(offset, torch.Tensor):
        return torch.tensor([seed, offset], dtype=torch.int64).to(device, non_blocking=True)
    return torch.cat([t if isinstance(t, torch.Tensor) else torch.full((1,), t, dtype=torch.int64).to(device, non_blocking=True)
                      for t in (seed, offset)])


def mode_of(training: bool, noise: Optional[torch.Tensor]) -> int:
    if not training:
        return NZ.MODE_EVAL
    return NZ.MODE_NOISE if noise is not None else NZ.MODE_PHILOX


def _mask_logits_noise_args(mask_logits, noise, shape) -> Dict[str, object]:
    """The kernels' θ and noise arguments: ``TH``, ``NZ`` as ``[B, H, N, D]`` views (stride 0 along
    broadcast dims; NZ = TH, unread, without noise) and their strides ``stb … std``, ``snb … snd``."""
    th = mask_logits.expand(shape)
    nz = noise.expand(shape) if noise is not None else None
    return dict(TH=th, NZ=th if nz is None else nz, **strides("st", th), **strides("sn", nz))


def prepass_rows(head_dim: int) -> int:
    """Tokens per pre-pass program: PREPASS_ELEMS elements (amortises the per-program set-up; the
    static tool shows, bf16 on sm_90 at this size, 25.4 SASS instructions per mask element for the
    mask alone, 27.9 with k⊙M, 29.7 with q⊙M and k⊙M, 50.0 with k⊙M and dθ's factor: memory-bound
    each time)."""
    return PREPASS_ELEMS // head_dim


def _int32_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` (``[B, H, N, D]``), or a contiguous copy if the pre-pass's int32 in-program offsets
    ``r·stride_n + d·stride_d`` (r < rows) would not fit."""
    return t if (rows - 1) * t.stride(2) + (t.shape[3] - 1) * t.stride(3) < 2**31 else t.contiguous()


def dsoft_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the saved dθ factor soft·(1 − soft)/τ: float16 for 16-bit inputs (2 bytes, 11
    significant bits, values ≤ 0.25/τ; below 6e-8 it flushes, where dθ is that small too), else float32."""
    return torch.float16 if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _prepass(mask_logits, noise, shape, rng, mode: int, dtype: torch.dtype, q=None, k=None, tau=None):
    """Launch the pre-pass: the 0/1 mask in ``dtype``, given q also q⊙M, given k also k⊙M (all
    contiguous); given ``tau`` (a training mode), also dθ's factor soft·(1 − soft)/τ in
    ``dsoft_dtype(dtype)``. Returns ``(mask, q⊙M or None, k⊙M or None, dsoft or None)``."""
    B, H, N, D = shape
    mask = torch.empty(shape, dtype=dtype, device=mask_logits.device)
    qm, km = (None if t is None else torch.empty_like(mask) for t in (q, k))
    save_ds = tau is not None and mode != NZ.MODE_EVAL
    ds = torch.empty(shape, dtype=dsoft_dtype(dtype), device=mask_logits.device) if save_ds else None
    if B * H == 0:
        return mask, qm, km, ds
    rows = prepass_rows(D)
    # The kernel's offsets inside a program are int32 (r·stride_n + d·stride_d, r < rows): a view
    # whose token stride is too large for that (> 2**31 / rows elements) is copied first.
    th, nz = (None if t is None else _int32_rows(t.expand(shape), rows) for t in (mask_logits, noise))
    q, k = (None if t is None else _int32_rows(t, rows) for t in (q, k))
    unused = mask  # a valid pointer for the tensors a variant does not touch
    args = dict(**_mask_logits_noise_args(th, nz, shape), RNG=rng, MASK=mask,
                Q=unused if q is None else q, QM=unused if qm is None else qm, **strides("sq", q),
                K=unused if k is None else k, KM=unused if km is None else km, **strides("sk", k),
                DS=ds if save_ds else unused, H=H, N=N, inv_tau=1.0 / float(tau) if save_ds else 1.0)
    with device_guard(mask_logits):
        dcs_mask_prepass_kernel[(triton.cdiv(N, rows), B * H)](
            **args, HEAD_DIM=D, MODE=mode, BLOCK_R=rows, FAST=not INTERPRET, MASK_Q=q is not None,
            MASK_K=k is not None, SAVE_DS=save_ds, TAU_ONE=save_ds and float(tau) == 1.0, num_warps=4)
    return mask, qm, km, ds


def mask_prepass(mask_logits, noise, shape, rng: torch.Tensor, mode: int, dtype: torch.dtype) -> torch.Tensor:
    """The 0/1 mask alone in ``dtype``, contiguous ``[B, H, N, D]`` (``triton_dcs_mask``)."""
    return _prepass(mask_logits, noise, shape, rng, mode, dtype)[0]


def masked_qk_prepass(q, k, mask_logits, noise, rng: torch.Tensor, mode: int, tau: Optional[float] = None,
                      mask_q: bool = True):
    """One pass over q, k, θ (and noise): ``(mask, q⊙M, k⊙M)``, contiguous ``[B, H, N, D]`` in q's
    dtype. The mask is what the backward saves; q⊙M and k⊙M are the forward's operands (freed after it).
    Given ``tau`` (θ needs a gradient, training mode): ``(mask, q⊙M, k⊙M, dsoft)``, dsoft = dθ's factor
    soft·(1 − soft)/τ (``dsoft_dtype``), for ``backward(..., dsoft=)``.
    ``mask_q=False``: q is neither read nor q⊙M written (4 of 14 bytes per element; the q⊙M slot is
    None): the forward then takes raw q and the mask, ``forward(q, k⊙M, v, q_mask=mask)``."""
    out = _prepass(mask_logits, noise, q.shape, rng, mode, q.dtype, q if mask_q else None, k, tau)
    return out if tau is not None else out[:3]


def forward(q, k, v, *, scale: float, config: Optional[Tuple[int, int]] = None,
            q_mask: Optional[torch.Tensor] = None):
    """Attention: out ``[B, H, N, D]`` (q's dtype, contiguous) and LSE ``[B, H, N]`` (float32, log2
    domain) of (q⊙q_mask)·kᵀ. DCS-Attention passes the pre-pass's k⊙M as k and either its q⊙M as q,
    or raw q with ``q_mask`` = the pre-pass's mask (``masked_qk_prepass(..., mask_q=False)``: q⊙M is
    made in the forward's prologue, once per query block, and never written)."""
    B, H, N, D = q.shape
    if q_mask is not None and (tuple(q_mask.shape) != (B, H, N, D) or q_mask.dtype != q.dtype
                               or not q_mask.is_contiguous()):
        raise ValueError(f"q_mask must be a contiguous [B, H, N, D] = {[B, H, N, D]} tensor in q's dtype "
                         f"{q.dtype} (the pre-pass's mask), got shape {tuple(q_mask.shape)}, dtype {q_mask.dtype}, "
                         f"contiguous={q_mask.is_contiguous()}")
    out = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    if B * H == 0:
        return out, lse
    if scale < 0:  # the kernel takes the row max of raw scores, then scales: needs qk_scale >= 0
        q, scale = -q, -scale  # (−q)·kᵀ·|scale| = q·kᵀ·scale: same out and LSE
    args = dict(Q=q, K=k, V=v, O=out, LSE=lse, QMASK=out if q_mask is None else q_mask,
                **strides("sq", q), **strides("sk", k), **strides("sv", v), **strides("so", out),
                H=H, N=N, qk_scale=float(scale) * math.log2(math.e))
    meta = dict(HEAD_DIM=D, DOT_PREC=dot_precision(q.dtype), MASK_Q=q_mask is not None)
    with device_guard(q):
        _launch("fwd", q, args, meta, config)
    return out, lse


def backward_path(path: Optional[str] = None) -> str:
    """The backward the launcher runs: always ``"head"`` (one program per head, deterministic).
    ``path`` and ``RIBKERNELS_DCS_BACKWARD`` (the retired ``"fused"`` / ``"split"`` choice) are
    validated — one of ``RETIRED_BACKWARD_PATHS`` — and ignored with a ``DeprecationWarning``."""
    if path is not None:
        if path not in RETIRED_BACKWARD_PATHS:
            raise ValueError(f"path must be one of {RETIRED_BACKWARD_PATHS} or None, got {path!r}")
        warnings.warn(f"launch.backward(path={path!r}) is deprecated and ignored: there is one backward "
                      "(one program per head, deterministic)", DeprecationWarning, stacklevel=3)
    env = os.environ.get("RIBKERNELS_DCS_BACKWARD")
    if env is not None:
        if env not in RETIRED_BACKWARD_PATHS:
            raise ValueError(f"RIBKERNELS_DCS_BACKWARD must be one of {RETIRED_BACKWARD_PATHS} (it is "
                             f"deprecated and ignored), got {env!r}")
        warnings.warn("RIBKERNELS_DCS_BACKWARD is deprecated and ignored: there is one backward "
                      "(one program per head, deterministic)", DeprecationWarning, stacklevel=3)
    return "head"


def backward(dout, q, k, v, mask, out, lse, mask_logits, noise, rng, *, scale: float, tau: float, mode: int,
             need_dmask_logits: bool, masked: bool = True, config: Optional[Tuple[int, int]] = None,
             path: Optional[str] = None, dsoft: Optional[torch.Tensor] = None):
    """dq, dk, dv (contiguous, q's dtype) and dθ in θ's shape and dtype (None unless
    ``need_dmask_logits`` in a training mode); one launch of ``backward.dcs_bwd_kernel``. ``dsoft``: the
    pre-pass's soft·(1 − soft)/τ (``masked_qk_prepass(..., tau=)``), read instead of regenerated.
    ``path``: deprecated, validated and ignored (``backward_path``)."""
    backward_path(path)
    B, H, N, D = q.shape
    if dout.dtype != q.dtype:  # the kernels' dots need dout in q's dtype
        dout = dout.to(q.dtype)
    dq = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    need = bool(need_dmask_logits) and mode != NZ.MODE_EVAL and masked
    if B * H == 0:
        return dq, dk, dv, (torch.zeros_like(mask_logits) if need else None)
    logits_noise = _mask_logits_noise_args(mask_logits, noise, q.shape)
    per_token = mask_logits.shape == q.shape
    if not need:
        dth_mode, dth = 0, dq
    elif logits_noise["stn"] == 0 and N > 1:  # θ broadcast along tokens: one row per head, summed in-kernel
        dth_mode = 2
        dth = torch.empty((B * H, D), dtype=torch.float32, device=q.device)
    else:
        dth_mode = 1
        dth = torch.empty((B, H, N, D), dtype=mask_logits.dtype if per_token else torch.float32, device=q.device)
    # Scratch, written before it is read (no memset): delta per row, dq's float32 accumulator.
    delta = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    dqacc = torch.empty((B, H, N, D), dtype=torch.float32, device=q.device)
    msk = mask if masked else q
    rng = q if rng is None else rng  # placeholder pointer: read only in Philox mode
    ds_saved = dth_mode != 0 and dsoft is not None
    if ds_saved and (tuple(dsoft.shape) != (B, H, N, D) or not dsoft.is_contiguous()):
        raise ValueError(f"dsoft must be a contiguous [B, H, N, D] = {[B, H, N, D]} tensor (the pre-pass's), "
                         f"got shape {tuple(dsoft.shape)}")
    args = dict(Q=q, K=k, V=v, MSK=msk, O=out, DO=dout, LSE=lse, DELTA=delta, DK=dk, DV=dv, DQ=dq,
                DQACC=dqacc, RNG=rng, DS=dsoft if ds_saved else dq, DTH=dth, **logits_noise,
                **strides("sq", q), **strides("sk", k), **strides("sv", v), **strides("so", out),
                **strides("sdo", dout), H=H, N=N, qk_scale=float(scale) * math.log2(math.e),
                scale=float(scale), inv_tau=1.0 / float(tau))
    meta = dict(HEAD_DIM=D, MASKED=bool(masked), DOT_PREC=dot_precision(q.dtype), MODE=mode,
                DTH_MODE=dth_mode, TAU_ONE=float(tau) == 1.0, DS_SAVED=ds_saved)
    with device_guard(q):
        _launch("bwd", q, args, meta, config)
    if dth_mode == 0:
        return dq, dk, dv, None
    dmask_logits = dth.reshape(B, H, 1, D) if dth_mode == 2 else dth
    if not per_token:
        dmask_logits = reduce_to_shape(dmask_logits, mask_logits.shape)
    return dq, dk, dv, dmask_logits.to(mask_logits.dtype)


def reduce_to_shape(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum the ``[B, H, n, D]`` ``t`` over the dims a tensor of ``shape`` was broadcast along."""
    shape = tuple(shape)
    lead = t.dim() - len(shape)
    if lead:
        t = t.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and t.shape[i] != 1)
    if dims:
        t = t.sum(dim=dims, keepdim=True)
    return t.reshape(shape)


def flat_noise(numel: int, rng: torch.Tensor, device, *, what: int = 1, block: int = 1024) -> torch.Tensor:
    """Flat float32 noise of the contract: what=0 the uniform u, what=1 the logistic noise L."""
    out = torch.empty(numel, dtype=torch.float32, device=device)
    if numel:
        with device_guard(out):
            flat_noise_kernel[(triton.cdiv(numel, block),)](OUT=out, numel=numel, RNG=rng, WHAT=what, BLOCK=block)
    return out
