"""The DCS-Attention backward in FlashAttention-2's single-pass shape: one pass per key block with
dQ accumulated by atomics, then a small per-query-block finishing kernel.

* ``dcs_bwd_fused_kernel`` (grid: key blocks × B·H): for its keys, loops over all query blocks and
  computes S, P, dv += Pᵀ dO, dP, dS, dk += dSᵀ (q⊙M) as the split dK/dV pass does, and its share
  of dq: ``tl.atomic_add`` of dS (k⊙M) (unscaled, float32) into DQACC ``[B·H, N, D]``.
  5 GEMMs per tile (the split dK/dV + dQ passes: 7, they recompute S and dP).
* ``dcs_bwd_dq_finish_kernel`` (grid: query blocks × B·H): dq = scale·DQACC⊙M in q's dtype and the
  query side of dθ, with ``soft·(1 − soft)/τ`` evaluated once per element (``noise.dsoft_tile``).

Summation order of dq depends on the order the key programs' atomics land: results differ from run
to run by float32 rounding. ``launch.backward`` uses the split (deterministic) passes when
``torch.are_deterministic_algorithms_enabled()`` or when asked (``RIBKERNELS_DCS_BACKWARD=split``).

dθ (``DTH_MODE``, as in ``backward``) needs ``dM = dq_raw⊙q + dk_raw⊙k`` per element:
* 1 (θ varies along N): the key program, the only owner of its tokens' dk_raw, stores its share
  dM_k = dk_raw⊙k into DTH itself (``[B, H, N, D]``, θ's dtype when θ is ``[B, H, N, D]``, else
  float32); the finishing kernel reads it back, adds dq_raw⊙q and overwrites it with dM·dsoft. The
  round trip costs one write + one read in DTH's dtype (4 B per element in fp16/bf16; the split
  passes' float32 dM_k scratch costs 8 B), no atomics, no second Philox; dM_k is rounded to DTH's dtype.
* 2 (θ broadcast along N): each kernel sums its side's ``dM·dsoft`` over its rows in-kernel into one
  float32 row per program of DTH ``[2, B·H, n_blocks, D]`` (0: keys, 1: queries), as the split passes do.
"""
import triton
import triton.language as tl

from .backward import _store_contig, _store_row_partial, lse_delta_cols, mask_ptrs, masked_tile
from .noise import dsoft_tile, load_bhnd


@triton.jit(do_not_specialize=["H", "N", "BH", "NB_MAX"])  # shape scalars: no recompile per value
def dcs_bwd_fused_kernel(
    Q, K, V, MSK, DO, LSE, DELTA, DK, DV, DQACC, TH, NZ, RNG, DTH,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    stb, sth, stn, std, snb, snh, snn, snd,
    H, N, BH, NB_MAX, qk_scale, scale, inv_tau,
    HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr, MODE: tl.constexpr,
    DTH_MODE: tl.constexpr, TAU_ONE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dk, dv (contiguous ``[B, H, N, D]``) of one key block, its atomic share of DQACC (float32,
    contiguous, zeroed by the caller) and dθ's key side (see module doc)."""
    pid_n = tl.program_id(0)
    bh64 = tl.program_id(1).to(tl.int64)
    b64 = bh64 // H
    h64 = bh64 % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    n_valid = offs_n < N
    km, keep_k = masked_tile(K, mask_ptrs(MSK, bh64, offs_n, N, HEAD_DIM), b64, h64, offs_n, offs_d, n_valid,
                             skb, skh, skn, skd, MASKED)
    mq_ptrs = mask_ptrs(MSK, bh64, tl.arange(0, BLOCK_M), N, HEAD_DIM)
    dq_ptrs = mask_ptrs(DQACC, bh64, tl.arange(0, BLOCK_M), N, HEAD_DIM)  # same contiguous layout
    v = load_bhnd(V, b64, h64, offs_n, offs_d, n_valid, svb, svh, svn, svd)

    dk_acc = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv_acc = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    row_base = bh64 * N
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_valid = offs_m < N
        qm, keep_qi = masked_tile(Q, mq_ptrs, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd, MASKED)
        mq_ptrs += BLOCK_M * HEAD_DIM
        do = load_bhnd(DO, b64, h64, offs_m, offs_d, m_valid, sdob, sdoh, sdon, sdod)
        lse, delta = lse_delta_cols(LSE, DELTA, row_base, offs_m, m_valid, BLOCK_M, 256)  # up to 8 warps
        s_t = tl.dot(km, tl.trans(qm), input_precision=DOT_PREC) * qk_scale  # [BLOCK_N, BLOCK_M]
        p_t = tl.math.exp2(s_t - lse[None, :])
        p_t = tl.where(m_valid[None, :], p_t, 0.0)
        dv_acc += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = (p_t * (dp_t - delta[None, :])).to(qm.dtype)
        dk_acc += tl.dot(ds_t, qm, input_precision=DOT_PREC)
        dq_part = tl.dot(tl.trans(ds_t), km, input_precision=DOT_PREC)  # [BLOCK_M, HEAD_DIM], unscaled
        tl.atomic_add(dq_ptrs, dq_part, mask=m_valid[:, None], sem="relaxed")
        dq_ptrs += BLOCK_M * HEAD_DIM

    dk_raw = dk_acc * scale
    _store_contig(DK, dk_raw.to(DK.dtype.element_ty) * keep_k, bh64, offs_n, offs_d, n_valid, N, HEAD_DIM)
    _store_contig(DV, dv_acc, bh64, offs_n, offs_d, n_valid, N, HEAD_DIM)
    if DTH_MODE != 0:
        k = load_bhnd(K, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd).to(tl.float32)
    if DTH_MODE == 1:  # dM_k, finished by dcs_bwd_dq_finish_kernel (same rows of DTH)
        _store_contig(DTH, dk_raw * k, bh64, offs_n, offs_d, n_valid, N, HEAD_DIM)
    if DTH_MODE == 2:
        ds = dsoft_tile(TH, NZ, RNG, b64, h64, bh64, offs_n, offs_d, n_valid,
                        stb, sth, stn, std, snb, snh, snn, snd, N, inv_tau, HEAD_DIM, MODE, TAU_ONE)
        part = tl.sum(tl.where(n_valid[:, None], dk_raw * k * ds, 0.0), 0)
        _store_row_partial(DTH, part, 0, bh64, BH, pid_n, NB_MAX, offs_d, HEAD_DIM)


@triton.jit(do_not_specialize=["H", "N", "BH", "NB_MAX"])  # shape scalars: no recompile per value
def dcs_bwd_dq_finish_kernel(
    DQACC, Q, MSK, DQ, TH, NZ, RNG, DTH,
    sqb, sqh, sqn, sqd, stb, sth, stn, std, snb, snh, snn, snd,
    H, N, BH, NB_MAX, scale, inv_tau,
    HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, MODE: tl.constexpr, DTH_MODE: tl.constexpr,
    TAU_ONE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """dq = scale·DQACC⊙M (contiguous ``[B, H, N, D]``, q's dtype) for one block of queries; dθ's
    query side and, in DTH_MODE 1, the whole dθ of these elements (module doc)."""
    pid_m = tl.program_id(0)
    bh64 = tl.program_id(1).to(tl.int64)
    b64 = bh64 // H
    h64 = bh64 % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_valid = offs_m < N
    tile = (bh64 * N + offs_m[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]  # contiguous buffers
    dq_raw = tl.load(DQACC + tile, mask=m_valid[:, None], other=0.0) * scale
    if MASKED:
        dq = dq_raw.to(DQ.dtype.element_ty) * tl.load(MSK + tile, mask=m_valid[:, None], other=0.0)
    else:
        dq = dq_raw
    tl.store(DQ + tile, dq.to(DQ.dtype.element_ty), mask=m_valid[:, None])
    if DTH_MODE != 0:
        q = load_bhnd(Q, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd).to(tl.float32)
        dm = dq_raw * q
        if DTH_MODE == 1:  # + dM_k, stored here by the key program
            dm += tl.load(DTH + tile, mask=m_valid[:, None], other=0.0).to(tl.float32)
        ds = dsoft_tile(TH, NZ, RNG, b64, h64, bh64, offs_m, offs_d, m_valid,
                        stb, sth, stn, std, snb, snh, snn, snd, N, inv_tau, HEAD_DIM, MODE, TAU_ONE)
        if DTH_MODE == 1:
            _store_contig(DTH, dm * ds, bh64, offs_m, offs_d, m_valid, N, HEAD_DIM)
        else:
            part = tl.sum(tl.where(m_valid[:, None], dm * ds, 0.0), 0)
            _store_row_partial(DTH, part, 1, bh64, BH, pid_m, NB_MAX, offs_d, HEAD_DIM)
