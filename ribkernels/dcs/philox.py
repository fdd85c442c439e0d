"""Philox-4x32-10 in PyTorch, bit-identical to Triton's ``tl.randint(seed, offset)``.

The fused Triton kernels draw the mask noise in-kernel from ``(seed, element offset)``; this file
reproduces the same bits on any device so that every backend makes the same mask for a seed.
All arithmetic is done on int64 tensors holding uint32 values (16-bit limbs for the products).
"""
import torch

_M32 = 0xFFFFFFFF
_M16 = 0xFFFF
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
N_ROUNDS = 10


def _mul_hi_lo(a: torch.Tensor, b: int):
    """(hi, lo) 32-bit halves of the 64-bit product of uint32 tensor ``a`` and constant ``b``."""
    al, ah = a & _M16, a >> 16
    bl, bh = b & _M16, b >> 16
    ll, lh, hl, hh = al * bl, al * bh, ah * bl, ah * bh
    mid = (ll >> 16) + (lh & _M16) + (hl & _M16)
    hi = hh + (lh >> 16) + (hl >> 16) + (mid >> 16)
    lo = ((mid & _M16) << 16) | (ll & _M16)
    return hi & _M32, lo


def philox_randint(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """First uint32 output of Philox-4x32-10 with counter ``(offset, 0, 0, 0)`` and key ``seed``.

    ``offsets``: integer tensor of non-negative values < 2**31. Returns int64 values in [0, 2**32).
    """
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c0 = offsets.to(torch.int64)
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(N_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(c2, _ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _ROUND_A)
        c0, c2 = hi_b ^ c1 ^ k0, hi_a ^ c3 ^ k1
        c1, c3 = lo_b, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0


def uniform_open01(bits: torch.Tensor) -> torch.Tensor:
    """Map uint32 values to float32 in the open interval (0, 1): ``((bits >> 9) + 0.5) / 2**23``.

    Exact in float32 (the result is an odd multiple of 2**-24), never 0 or 1, so the logistic
    noise ``log(u) - log(1 - u)`` is always finite. The Triton kernels use the same formula.
    """
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)
