"""The mask pre-pass: the ``[B, H, N, D]`` DCS mask, made once per forward and saved for the backward,
and the masked operands of the forward: k⊙M (``MASK_K``) and, unless the forward multiplies the mask
into raw q itself, q⊙M (``MASK_Q``).

The mask is stored as 0/1 in the attention inputs' dtype (2 bytes per element for fp16/bf16), not as
bits or bytes: the backward kernels load a mask tile exactly like a q/k tile and apply it with one
packed multiply per 2 elements (HMUL2), no integer work. Measured with ``benchmarks.sm90_static``
(bf16, D=64, fwd 64x64, when the forward still applied the mask): an int8 mask applied with
``tl.where`` cost 569 integer ops against 391 without a mask (1.46×: byte permutes and selects per
element), the 0/1-in-dtype mask 436 (1.15×). A bit-packed mask would add a shift and an and per
element on top. The price is bytes: 20.8 MB per layer at B=64, H=12, N=211, D=64 (bits: 1.3 MB).

Why k⊙M is made here and not in the forward's loop: on sm_90 a tile multiplied in registers must be
written back to shared memory (k: wgmma's B operand comes from shared memory), and ptxas then
serialises every warpgroup MMA of the loop (one commit group per HGMMA instead of one per ``tl.dot``;
see ``benchmarks/results/*-sm90-static/README.md``). q is loaded once per query block, before the
loop: the forward can take raw q and the mask (``forward.py``, ``MASK_Q``), and the pre-pass then
neither reads q nor writes q⊙M (4 of its 14 bytes per element). With both operands pre-masked, or q
masked by a predicated load, the forward's loop is the plain FlashAttention loop: its operands go
global → shared by ``cp.async``, untouched. (The PyTorch backends' C++ pre-pass,
``ribkernels/dcs/prepass.py``, makes q⊙M and k⊙M.)
"""
import triton
import triton.language as tl

from .noise import dsigmoid, dsoft_philox_tau1, keep_philox, logistic_from_uniform, tile_bits, uniform_open01_mantissa


@triton.jit
def load_block(BASE, rows, offs_d, sn, sd):
    """A ``[len(rows), len(offs_d)]`` tile at ``BASE`` (a pointer, advanced in int64 to the program's
    first token) with in-program offsets ``r·sn + d·sd`` in int32 (the launcher keeps them below 2**31).
    Unmasked: ``rows`` are clamped to the last token, so rows past N (never stored) read a valid row
    instead of a predicated load whose registers ptxas zero-fills first."""
    return tl.load(BASE + (rows[:, None] * sn + offs_d[None, :] * sd))


@triton.jit(do_not_specialize=["H", "N"])  # shape scalars: no recompile per value
def dcs_mask_prepass_kernel(
    TH, NZ, RNG, MASK, Q, K, QM, KM, DS,
    stb, sth, stn, std, snb, snh, snn, snd, sqb, sqh, sqn, sqd, skb, skh, skn, skd,
    H, N, inv_tau,
    HEAD_DIM: tl.constexpr, MODE: tl.constexpr, BLOCK_R: tl.constexpr, FAST: tl.constexpr,
    MASK_Q: tl.constexpr, MASK_K: tl.constexpr, SAVE_DS: tl.constexpr, TAU_ONE: tl.constexpr,
):
    """MASK (contiguous ``[B, H, N, D]``, 0/1) for tokens ``[pid·BLOCK_R, +BLOCK_R)`` of head
    ``bh = program_id(1)``; with MASK_K also KM = k⊙M, with MASK_Q also QM = q⊙M (contiguous, MASK's
    dtype = q's; Q, QM are not touched without MASK_Q, K, KM without MASK_K).
    θ, noise, q and k are read through the strides of their ``[B, H, N, D]`` views.
    MODE 0: θ > 0; 1: θ + noise > 0; 2: u > sigmoid(−θ) with u of (seed, offset) = RNG[0], RNG[1].
    SAVE_DS (MODE 1, 2): also DS = soft·(1 − soft)/τ (contiguous; float16 for 16-bit inputs), the
    factor of dθ the backward then reads instead of regenerating u (``noise.dsoft_tile``).
    FAST: inline-PTX exp (False under the interpreter).
    Addresses: one int64 base per tensor and program (uniform), int32 offsets inside the program
    (``BLOCK_R`` tokens: the launcher checks ``BLOCK_R·|stride| < 2**31``) — one IMAD.WIDE per row
    and tensor instead of 64-bit multiply-adds per row."""
    pid = tl.program_id(0)
    bh64 = tl.program_id(1).to(tl.int64)
    b64 = bh64 // H
    h64 = bh64 % H
    row0 = pid * BLOCK_R
    row064 = row0.to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = row0 + offs_r
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_n < N
    rows = tl.minimum(offs_n, N - 1) - row0  # loads: past-the-end rows read token N − 1
    theta = load_block(TH + (b64 * stb + h64 * sth + row064 * stn), rows, offs_d, stn, std)
    theta = theta.to(tl.float32)
    if MODE == 0:
        keep = theta > 0
    elif MODE == 1:
        noise = load_block(NZ + (b64 * snb + h64 * snh + row064 * snn), rows, offs_d, snn, snd)
        keep = theta + noise.to(tl.float32) > 0
    else:
        seed = tl.load(RNG)
        offset = tl.load(RNG + 1)
        u = uniform_open01_mantissa(tile_bits(seed, offset, bh64, offs_n, N, HEAD_DIM))
        keep = keep_philox(u, theta, FAST)
    out0 = (bh64 * N + row064) * HEAD_DIM  # contiguous outputs
    tile = offs_r[:, None] * HEAD_DIM + offs_d[None, :]
    keep = keep.to(MASK.dtype.element_ty)
    # x·1 / x·0 as the PyTorch backends' apply_mask (a NaN stays NaN). Both products before any
    # store: ptxas then packs each pair of mask values once for the three uses (storing the mask
    # first made it re-pack them after the store)
    if MASK_Q:
        qm = load_block(Q + (b64 * sqb + h64 * sqh + row064 * sqn), rows, offs_d, sqn, sqd) * keep
    if MASK_K:
        km = load_block(K + (b64 * skb + h64 * skh + row064 * skn), rows, offs_d, skn, skd) * keep
    if MASK_Q:
        tl.store(QM + out0 + tile, qm, mask=valid[:, None])
    if MASK_K:
        tl.store(KM + out0 + tile, km, mask=valid[:, None])
    tl.store(MASK + out0 + tile, keep, mask=valid[:, None])
    if SAVE_DS:  # dθ's factor soft·(1 − soft)/τ for the backward (training modes only), in DS's dtype
        if MODE == 1:
            ds = dsigmoid((theta + noise.to(tl.float32)) * inv_tau) * inv_tau
        elif TAU_ONE:
            ds = dsoft_philox_tau1(u, theta)
        else:
            ds = dsigmoid((theta + logistic_from_uniform(u)) * inv_tau) * inv_tau
        tl.store(DS + out0 + tile, ds.to(DS.dtype.element_ty), mask=valid[:, None])
