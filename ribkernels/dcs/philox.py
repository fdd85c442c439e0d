"""Philox-4x32-10 in PyTorch and the noise contract v2 (docs/design.md §2.1), on any device.

Contract v2: element ``i`` (row-major index in the contiguous ``[B, H, N, D]`` mask) takes output
``r_{i % 4}`` of the Philox-4x32-10 call with counter ``(lo32(g + offset), hi32(g + offset), 0, 0)``,
``g = i // 4``, and key ``(lo32(seed), hi32(seed))``; its uniform is ``u = ((r >> 9) + 0.5)·2**-23``.
Every backend (eager, sdpa, the C++ pre-pass, Triton) makes exactly these bits.

Arithmetic is on int64 tensors holding uint32 values; a 32×32-bit product is formed from 16-bit
halves of one factor so no intermediate exceeds 2**49.
"""
from typing import Tuple

import torch

_M32 = 0xFFFFFFFF
_M16 = 0xFFFF
KEY_A = 0x9E3779B9
KEY_B = 0xBB67AE85
ROUND_A = 0xD2511F53
ROUND_B = 0xCD9E8D57
N_ROUNDS = 10
SEED_LIMIT = 2**63  # seeds are integers in [0, SEED_LIMIT) for every backend


def check_seed(seed, what: str = "seed"):
    """``seed``: a Python int in ``[0, 2**63)`` (returned as int), or a 0-d int64 tensor (returned
    as is; its value is checked only for CPU tensors outside tracing, as reading it would sync the
    GPU or break a graph). ValueError naming the argument, its value and the range otherwise."""
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise ValueError(f"{what} tensor must be a 0-d int64 tensor in [0, 2**63), got shape "
                             f"{tuple(seed.shape)}, dtype {seed.dtype}")
        from .checks import is_tracing

        if not seed.is_cuda and not is_tracing() and int(seed) < 0:
            raise ValueError(f"{what} must be an integer in [0, 2**63), got {int(seed)}")
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{what} must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def check_offset(offset):
    """``offset`` (counted in Philox calls): an int in ``[0, 2**63)`` or, like ``seed``, a 0-d int64
    tensor (what a caller advances in place between CUDA-graph replays)."""
    return check_seed(offset, "offset")


def _mul_hi_lo(a: torch.Tensor, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of ``a * b`` for a uint32 tensor ``a`` and a uint32 constant ``b``."""
    p_hi = (a >> 16) * b  # < 2**48
    s = ((p_hi & _M16) << 16) + (a & _M16) * b  # < 2**49
    return (p_hi >> 16) + (s >> 32), s & _M32


def philox4x32(seed: int, c0: torch.Tensor, c1: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The 4 outputs of Philox-4x32-10, counter ``(c0, c1, 0, 0)``, key ``(lo32(seed), hi32(seed))``.

    ``c0``, ``c1``: int64 tensors of uint32 values (one shape); ``seed``: int or 0-d int64 tensor.
    Returns 4 int64 tensors in [0, 2**32).
    """
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(N_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(c2, ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, ROUND_A)
        c0, c2 = hi_b ^ c1 ^ k0, hi_a ^ c3 ^ k1
        c1, c3 = lo_b, lo_a
        k0 = (k0 + KEY_A) & _M32
        k1 = (k1 + KEY_B) & _M32
    return c0, c1, c2, c3


def philox_randint(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Output ``r0`` of Philox-4x32-10 with counter ``(offset, 0, 0, 0)``: Triton's ``tl.randint``
    for 32-bit offsets (kept for comparing Triton's generator; the contract uses all 4 outputs)."""
    return philox4x32(seed, offsets.to(torch.int64) & _M32, torch.zeros_like(offsets, dtype=torch.int64))[0]


def uniform_open01(bits: torch.Tensor) -> torch.Tensor:
    """Map uint32 values to float32 in the open interval (0, 1): ``((bits >> 9) + 0.5) / 2**23``.

    Exact in float32 (the result is an odd multiple of 2**-24), never 0 or 1, so the logistic
    noise ``log(u) - log(1 - u)`` is always finite. The Triton kernels use the same formula.
    """
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)


def contract_uniform(numel: int, seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """The contract's uniforms ``u`` of elements ``0 .. numel-1``: a flat float32 tensor."""
    seed, offset = check_seed(seed), check_offset(offset)
    groups = (int(numel) + 3) // 4
    counter = torch.arange(groups, device=device, dtype=torch.int64)
    # g + offset as a 64-bit unsigned counter, split into 32-bit words without int64 overflow.
    lo = counter + (offset & _M32)
    hi = (lo >> 32) + (offset >> 32)
    r = philox4x32(seed, lo & _M32, hi & _M32)
    return uniform_open01(torch.stack(r, dim=-1).reshape(-1)[:numel])
