"""The Triton backend of ``dcs_attention`` (``impl="triton"``) and its debug hooks.

* :func:`why_not` — reasons the fused kernels cannot take an input (metadata only, never launches).
* :func:`dcs_attention_triton` — what ``impl="triton"`` runs: the RNG state, then the custom op
  ``ribkernels::dcs_attention_fwd`` (``ops.py``: mask pre-pass + forward; its autograd the backward).
* :func:`triton_uniform`, :func:`triton_logistic_noise` — the contract's noise stream, as a tensor.
* :func:`triton_dcs_mask` — the mask the pre-pass makes for an input (float32 0/1).

This module imports Triton (``launch``, ``ops``) only inside its functions, so ``dcs/attention.py``
lists these functions in its backend table without ``import ribkernels`` importing Triton.
"""
from typing import List, Optional, Sequence

import torch

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def why_not(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_logits: torch.Tensor,
            noise: Optional[torch.Tensor]) -> List[str]:
    """Reasons the Triton kernels cannot run this input; ``[]`` means they can. Reads metadata only.
    Assumes the shape/device agreement checks of ``dcs_attention`` have passed."""
    try:
        from . import launch
    except Exception as exc:  # triton missing or broken: say so, never crash the dispatch
        return [f"the Triton backend cannot be imported ({type(exc).__name__}: {exc})"]
    reasons: List[str] = []
    dev = q.device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            reasons.append("CUDA is not available")
        else:
            major, minor = torch.cuda.get_device_capability(dev)
            if (major, minor) < (8, 0):
                reasons.append(f"needs a CUDA device of compute capability >= 8.0, got {major}.{minor}")
        if q.dtype == torch.float32:
            reasons.append("float32 on CUDA goes to the sdpa backend: fp32-accurate (tf32x3) Triton "
                           "kernels spill registers on sm_90 (python -m benchmarks.sm90_static --candidates)")
    elif dev.type == "cpu":
        if not launch.INTERPRET:
            reasons.append("device cpu needs the Triton interpreter (TRITON_INTERPRET=1 set before "
                           "ribkernels is imported); use impl='sdpa' on CPU")
    else:
        reasons.append(f"device {dev} is not supported (CUDA, or CPU under TRITON_INTERPRET=1)")
    if q.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"dtype {q.dtype} is not supported (float32, float16, bfloat16)")
    elif q.dtype == torch.bfloat16 and dev.type == "cpu":
        reasons.append("bfloat16 is not supported by the Triton interpreter (CPU)")
    if q.dim() != 4:
        reasons.append(f"q must be 4-D [B, H, N, D], got shape {tuple(q.shape)}")
        return reasons
    B, H, N, D = q.shape
    if D not in SUPPORTED_HEAD_DIMS:
        reasons.append(f"head dim D={D} is not supported (D in {SUPPORTED_HEAD_DIMS})")
    if B * H > 65535:
        reasons.append(f"B*H = {B * H} exceeds the 65535 programs of the grid's second axis")
    for name, t in (("mask_logits", mask_logits), ("noise", noise)):
        if t is None:
            continue
        if t.dtype not in _MASK_DTYPES:
            reasons.append(f"{name} dtype {t.dtype} is not supported (float64/32/16, bfloat16)")
        elif t.dtype == torch.bfloat16 and dev.type == "cpu":
            reasons.append(f"{name} in bfloat16 is not supported by the Triton interpreter (CPU)")
        if t.dim() > 4:
            reasons.append(f"{name} must have at most 4 dims, got shape {tuple(t.shape)}")
    return reasons


def dcs_attention_triton(q, k, v, mask_logits, *, tau: float, training: bool, seed=None,
                         noise: Optional[torch.Tensor], scale: float, offset=0) -> torch.Tensor:
    """Fused DCS-Attention ``[B, H, N, D]`` (differentiable w.r.t. q, k, v and, in training,
    mask_logits; explicit noise gets no gradient). Inputs as validated by ``dcs_attention``, which
    checks seed and offset (``philox.check_seed``); they are read only in training without noise.

    ``seed``: None (drawn on q's device from torch's generator: no host sync), an int in
    [0, 2**63), or a 1-element int64 tensor; ``offset``: int >= 0 or a 1-element int64 tensor, in
    Philox calls (advance it by ceil(B·H·N·D / 4) for fresh noise, e.g. between CUDA-graph replays).
    In eval mode under ``torch.compile`` / ``torch.export`` tracing the op decomposes to the SDPA
    composite (``M = 1[θ > 0]``, no RNG), which the exporters accept."""
    if not training and torch.compiler.is_compiling():
        from ..backends import dcs_attention_sdpa

        return dcs_attention_sdpa(q, k, v, mask_logits, tau=tau, training=False, seed=None, noise=None,
                                  scale=scale)
    from . import launch
    from .ops import dcs_attention_fwd

    if training and noise is None:
        rng = launch.rng_state(seed, offset, q.device)
    else:  # explicit noise or eval: the RNG is not read
        rng = torch.zeros(2, dtype=torch.int64, device=q.device)
    if noise is not None and noise.requires_grad:
        noise = noise.detach()
    # dθ's factor soft·(1 − soft)/τ is made by the pre-pass and saved (2 bytes per element) when θ
    # will get a gradient: the backward then reads it instead of regenerating it (Philox per element)
    save_dsoft = bool(training and mask_logits.requires_grad and torch.is_grad_enabled())
    return dcs_attention_fwd(q, k, v, mask_logits, noise if training else None, rng, float(tau), float(scale),
                             bool(training), save_dsoft)[0]


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def triton_uniform(shape: Sequence[int], seed, device, offset=0) -> torch.Tensor:
    """The contract's uniform u of every element of a contiguous float32 tensor of ``shape``."""
    from . import launch

    shape = tuple(int(s) for s in shape)
    rng = launch.rng_state(seed, offset, device)
    return launch.flat_noise(_numel(shape), rng, device, what=0).reshape(shape)


def triton_logistic_noise(shape: Sequence[int], seed, device, offset=0) -> torch.Tensor:
    """The contract's logistic noise ``L = log u − log(1 − u)``: the Triton counterpart of
    ``rk.logistic_noise(shape, seed, offset)``."""
    from . import launch

    shape = tuple(int(s) for s in shape)
    rng = launch.rng_state(seed, offset, device)
    return launch.flat_noise(_numel(shape), rng, device, what=1).reshape(shape)


def triton_dcs_mask(mask_logits: torch.Tensor, seed=0, tau: float = 1.0, *,
                    shape: Optional[Sequence[int]] = None, noise: Optional[torch.Tensor] = None,
                    training: bool = True, offset=0) -> torch.Tensor:
    """The mask the pre-pass makes for q of ``shape`` ``[B, H, N, D]`` (default:
    ``mask_logits.shape``), as float32 0/1 ``[B, H, N, D]``. ``tau`` does not change M."""
    shape = tuple(int(s) for s in (mask_logits.shape if shape is None else shape))
    if len(shape) != 4 or shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"shape must be [B, H, N, D] with D in {SUPPORTED_HEAD_DIMS}, got {shape}")
    from . import launch

    mode = launch.mode_of(training, noise)
    rng = launch.rng_state(seed, offset, mask_logits.device)
    return launch.mask_prepass(mask_logits, noise, shape, rng, mode, torch.float32)


def __getattr__(name: str):
    """``attention_unmasked`` (``ops.py``, the benchmarks' mask-off twin) imported on first use."""
    if name == "attention_unmasked":
        from .ops import attention_unmasked

        return attention_unmasked
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["why_not", "dcs_attention_triton", "triton_logistic_noise", "triton_uniform", "triton_dcs_mask",
           "attention_unmasked", "SUPPORTED_HEAD_DIMS", "SUPPORTED_DTYPES"]
