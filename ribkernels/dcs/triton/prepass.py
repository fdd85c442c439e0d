"""The mask pre-pass: the ``[B, H, N, D]`` DCS mask, made once per forward and saved for the backward,
and (``MASK_QK``) the masked operands q⊙M and k⊙M the forward runs plain attention on.

The mask is stored as 0/1 in the attention inputs' dtype (2 bytes per element for fp16/bf16), not as
bits or bytes: the backward kernels load a mask tile exactly like a q/k tile and apply it with one
packed multiply per 2 elements (HMUL2), no integer work. Measured with ``benchmarks.sm90_static``
(bf16, D=64, fwd 64x64, when the forward still applied the mask): an int8 mask applied with
``tl.where`` cost 569 integer ops against 391 without a mask (1.46×: byte permutes and selects per
element), the 0/1-in-dtype mask 436 (1.15×). A bit-packed mask would add a shift and an and per
element on top. The price is bytes: 20.8 MB per layer at B=64, H=12, N=211, D=64 (bits: 1.3 MB).

Why q⊙M and k⊙M are made here and not in the forward's loop: on sm_90 a tile multiplied in registers
must reach wgmma from registers (q: the A operand, loaded back from shared memory every iteration) or
be written back to shared memory (k: B must come from shared memory), and ptxas then serialises every
warpgroup MMA of the loop (one commit group per HGMMA instead of one per ``tl.dot``; see
``benchmarks/results/*-sm90-static/README.md``). With both operands pre-masked, the forward is the
plain FlashAttention loop: its operands go global → shared by ``cp.async``, untouched. (The PyTorch
backends' C++ pre-pass, ``ribkernels/dcs/prepass.py``, makes q⊙M and k⊙M too.)
"""
import triton
import triton.language as tl

from .noise import element_bits, keep_philox, load_bhnd, tile_groups, uniform_open01


@triton.jit(do_not_specialize=["H", "N"])  # shape scalars: no recompile per value
def dcs_mask_prepass_kernel(
    TH, NZ, RNG, MASK, Q, K, QM, KM,
    stb, sth, stn, std, snb, snh, snn, snd, sqb, sqh, sqn, sqd, skb, skh, skn, skd,
    H, N,
    HEAD_DIM: tl.constexpr, MODE: tl.constexpr, BLOCK_R: tl.constexpr, FAST: tl.constexpr,
    MASK_QK: tl.constexpr,
):
    """MASK (contiguous ``[B, H, N, D]``, 0/1) for tokens ``[pid·BLOCK_R, +BLOCK_R)`` of head
    ``bh = program_id(1)``; with MASK_QK also QM = q⊙M and KM = k⊙M (contiguous, MASK's dtype = q's).
    θ, noise, q and k are read through the strides of their ``[B, H, N, D]`` views.
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
    tile = (bh64 * N + offs_n[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]  # contiguous outputs
    keep = keep.to(MASK.dtype.element_ty)
    tl.store(MASK + tile, keep, mask=valid[:, None])
    if MASK_QK:  # x·1 / x·0 as the PyTorch backends' apply_mask (a NaN stays NaN)
        q = load_bhnd(Q, b64, h64, offs_n, offs_d, valid, sqb, sqh, sqn, sqd)
        tl.store(QM + tile, q * keep, mask=valid[:, None])
        k = load_bhnd(K, b64, h64, offs_n, offs_d, valid, skb, skh, skn, skd)
        tl.store(KM + tile, k * keep, mask=valid[:, None])
