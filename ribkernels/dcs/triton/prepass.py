"""The mask pre-pass: the ``[B, H, N, D]`` DCS mask, made once per forward, saved for the backward.

Stored as 0/1 in the attention inputs' dtype (2 bytes per element for fp16/bf16), not as bits or bytes:
the attention kernels load a mask tile exactly like a q/k tile and apply it with one packed multiply
per 2 elements (HMUL2), no integer work. Measured with ``benchmarks.sm90_static`` (bf16, D=64,
fwd 64x64): an int8 mask applied with ``tl.where`` cost 569 integer ops against 391 without a mask
(1.46×: byte permutes and selects per element), the 0/1-in-dtype mask 436 (1.15×). A bit-packed mask
would add a shift and an and per element on top. The price is bytes: 20.8 MB per layer at B=64, H=12,
N=211, D=64 (bits: 1.3 MB), written once, read by the forward and the two backward kernels.
"""
import triton
import triton.language as tl

from .noise import element_bits, keep_philox, load_bhnd, tile_groups, uniform_open01


@triton.jit(do_not_specialize=["H", "N"])  # shape scalars: no recompile per value
def dcs_mask_prepass_kernel(
    TH, NZ, RNG, MASK,
    stb, sth, stn, std, snb, snh, snn, snd,
    H, N,
    HEAD_DIM: tl.constexpr, MODE: tl.constexpr, BLOCK_R: tl.constexpr, FAST: tl.constexpr,
):
    """MASK (int8, contiguous ``[B, H, N, D]``) for tokens ``[pid·BLOCK_R, +BLOCK_R)`` of head
    ``bh = program_id(1)``. θ / noise are read through the strides of their ``[B, H, N, D]`` views.
    MODE 0: θ > 0; 1: θ + noise > 0; 2: u > sigmoid(−θ) with u of (seed, offset) = RNG[0], RNG[1].
    FAST: inline-PTX exp (False under the interpreter)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    bh64 = bh.to(tl.int64)
    b64 = bh64 // H
    h64 = bh64 % H
    offs_n = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_n < N
    theta = load_bhnd(TH, b64, h64, offs_n, offs_d, valid, stb, sth, stn, std).to(tl.float32)
    if MODE == 0:
        keep = theta > 0
    elif MODE == 1:
        noise = load_bhnd(NZ, b64, h64, offs_n, offs_d, valid, snb, snh, snn, snd).to(tl.float32)
        keep = theta + noise > 0
    else:
        seed = tl.load(RNG)
        offset = tl.load(RNG + 1)
        u = uniform_open01(element_bits(seed, offset, tile_groups(bh64, offs_n, N, HEAD_DIM)))
        keep = keep_philox(u, theta, FAST)
    ptrs = MASK + (bh64 * N + offs_n[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]
    tl.store(ptrs, keep.to(MASK.dtype.element_ty), mask=valid[:, None])
