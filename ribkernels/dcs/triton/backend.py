"""The Triton backend of ``dcs_attention`` (what ``impl="triton"`` dispatches to) and debug hooks.

* :func:`why_not` — reasons the fused kernels cannot take an input (metadata only, never launches).
* :func:`dcs_attention_triton` — the fused forward/backward (custom op + autograd, see ``ops``).
* :func:`triton_logistic_noise`, :func:`triton_uniform` — the kernels' in-kernel noise, as a tensor.
* :func:`triton_dcs_mask` — the mask (or logits z) the attention kernels build for an input.
"""
from typing import List, Optional, Sequence

import torch

from . import launch
from .ops import dcs_attention_fused

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return launch.INTERPRET


def why_not(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_logits: torch.Tensor,
            noise: Optional[torch.Tensor]) -> List[str]:
    """Reasons the Triton kernels cannot run this input; ``[]`` means they can. Reads metadata only.
    Assumes the shape/device agreement checks of ``dcs_attention`` have passed."""
    reasons: List[str] = []
    dev = q.device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            reasons.append("CUDA is not available")
        else:
            major, minor = torch.cuda.get_device_capability(dev)
            if (major, minor) < (7, 0):
                reasons.append(f"needs a CUDA device of compute capability >= 7.0, got {major}.{minor}")
            elif q.dtype == torch.bfloat16 and major < 8:
                reasons.append(f"bfloat16 needs compute capability >= 8.0, got {major}.{minor}")
    elif dev.type == "cpu":
        if not _interpreting():
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
    if B * H * N * D >= 2**31:
        reasons.append(f"B*H*N*D = {B * H * N * D} elements: the Philox offsets need < 2**31")
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


def dcs_attention_triton(q, k, v, mask_logits, *, tau: float, training: bool, seed: Optional[int],
                         noise: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """Fused DCS-Attention ``[B, H, N, D]`` (differentiable w.r.t. q, k, v and, in training,
    mask_logits; the explicit noise gets no gradient). Inputs as validated by ``dcs_attention``;
    ``seed`` must be an int when training without explicit noise (drawn from torch's generator if
    None)."""
    if training and noise is None:
        if seed is None:
            from ..mask import draw_seed

            seed = draw_seed()
    else:
        seed = 0
    if noise is not None and noise.requires_grad:
        noise = noise.detach()
    return dcs_attention_fused(q, k, v, mask_logits, noise if training else None, seed=int(seed),
                               tau=float(tau), scale=float(scale), training=bool(training))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def triton_uniform(shape: Sequence[int], seed: int, device) -> torch.Tensor:
    """The kernels' uniform ``u = ((randint(seed, i) >> 9) + 0.5)·2**-23`` for element i of a
    contiguous float32 tensor of ``shape``."""
    shape = tuple(int(s) for s in shape)
    return launch.flat_noise(_numel(shape), seed, device, what=2).reshape(shape)


def triton_logistic_noise(shape: Sequence[int], seed: int, device) -> torch.Tensor:
    """The kernels' logistic noise ``log(u) − log(1 − u)`` for element i (Philox offset i) of a
    contiguous float32 tensor of ``shape``: the in-kernel counterpart of ``mask.logistic_noise``."""
    shape = tuple(int(s) for s in shape)
    return launch.flat_noise(_numel(shape), seed, device, what=3).reshape(shape)


def triton_dcs_mask(mask_logits: torch.Tensor, seed: int = 0, tau: float = 1.0, *,
                    shape: Optional[Sequence[int]] = None, noise: Optional[torch.Tensor] = None,
                    training: bool = True, what: str = "mask", block_n: int = 64) -> torch.Tensor:
    """What the attention kernels build, through the same jit helper, for q of ``shape``
    ``[B, H, N, D]`` (default: ``mask_logits.shape``, then 4-D): ``what="mask"`` the 0/1 mask M,
    ``"logits"`` z = θ + L (θ in eval), ``"uniform"`` / ``"noise"`` the Philox u / L at each
    element's offset. Float32 ``[B, H, N, D]``. ``tau`` does not change M (accepted for symmetry
    with ``dcs_mask``); ``block_n`` (a power of two >= 16) changes only the tiling, never the values."""
    whats = {"mask": 0, "logits": 1, "uniform": 2, "noise": 3}
    if what not in whats:
        raise ValueError(f"what must be one of {list(whats)}, got {what!r}")
    shape = tuple(int(s) for s in (mask_logits.shape if shape is None else shape))
    if len(shape) != 4 or shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"shape must be [B, H, N, D] with D in {SUPPORTED_HEAD_DIMS}, got {shape}")
    mode = launch.mode_of(training, noise)
    return launch.mask_view(mask_logits, noise, shape, seed=int(seed), mode=mode, what=whats[what],
                            block_n=block_n)


__all__ = ["why_not", "dcs_attention_triton", "triton_logistic_noise", "triton_uniform", "triton_dcs_mask",
           "SUPPORTED_HEAD_DIMS", "SUPPORTED_DTYPES"]
