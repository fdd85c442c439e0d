"""The DCS-Attention backward: one program per head (b, h), deterministic, one launch.

``dcs_bwd_kernel`` (grid ``[B·H]``) does, for its head:

1. prologue: delta = rowsum(dO ⊙ O) (float32, into DELTA ``[B·H, N]``);
2. for each key block (in order): the FlashAttention-2 inner loop over all query blocks — S, P,
   dv += Pᵀ dO, dP, dS, dk += dSᵀ (q⊙M), and the block's share dS (k⊙M) of dq, added into the
   head's float32 scratch DQACC ``[B·H, N, D]`` by a plain load-add-store (the program is the only
   owner of those rows: no atomics; the first key block's load is predicated off: no memset); then
   dk = scale·dk_raw⊙M, dv and dθ's key side;
3. epilogue, per query block: dq = scale·DQACC⊙M in q's dtype and dθ's query side, while the rows
   are still in L2.

5 GEMMs per tile. dq sums its key blocks in a fixed order, so two runs give the same bits. The
program's threads hand DELTA, DQACC and DTH rows to each other through global memory, ordered by a
CTA barrier (``tl.debug_barrier``) after the prologue and after each key block.

dθ (``DTH_MODE``) needs ``dM = dq_raw⊙q + dk_raw⊙k`` per element and ``soft·(1 − soft)/τ``: saved
by the pre-pass (``DS_SAVED``: 2 bytes per element, the public op's path when θ needs a gradient), or
regenerated here (``noise.dsoft_tile``: θ and the noise reloaded, or u from Philox):
* 0: no dθ.
* 1 (θ varies along N): after its key block the program stores dM_k = dk_raw⊙k into DTH
  (``[B, H, N, D]``, θ's dtype when θ is ``[B, H, N, D]``, else float32; dM_k is rounded to it); the
  epilogue reads it back, adds dq_raw⊙q and overwrites it with dM·dsoft.
* 2 (θ broadcast along N, e.g. ``[1, H, 1, D]``): the program sums ``dM·dsoft`` over all its tokens,
  both sides, in registers and writes one float32 row DTH ``[B·H, D]``.
The mask of a tile is the pre-pass's 0/1 mask in q's dtype, multiplied into raw q/k tiles on load.
"""
import triton
import triton.language as tl

from .noise import dsoft_tile, load_bhnd


@triton.jit
def mask_ptrs(MSK, bh64, offs_n, N, HEAD_DIM: tl.constexpr):
    """Pointers of the mask tile of tokens ``offs_n`` of head ``bh`` (contiguous ``[B, H, N, D]``);
    the loops advance them by ``BLOCK·HEAD_DIM`` instead of recomputing 64-bit addresses per tile."""
    return MSK + (bh64 * N + offs_n[:, None].to(tl.int64)) * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]


@triton.jit
def masked_tile(PTR, mptrs, b64, h64, offs_n, offs_d, valid, sb, sh, sn, sd, MASKED: tl.constexpr):
    """A q/k tile times the DCS mask (0/1 in the tile's dtype, read at ``mptrs``), and the mask tile."""
    x = load_bhnd(PTR, b64, h64, offs_n, offs_d, valid, sb, sh, sn, sd)
    if MASKED:
        keep = tl.load(mptrs, mask=valid[:, None], other=0.0)
        x = x * keep
    else:
        keep = tl.full([1, 1], 1.0, x.dtype)
    return x, keep


@triton.jit
def _first_columns(x, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Columns ``0 … COLS/2 − 1`` of ``x`` (``[ROWS, COLS]``), by a split (no data movement)."""
    halves = tl.permute(tl.reshape(x, [ROWS, 2, COLS // 2]), (0, 2, 1))
    first, _ = tl.split(halves)
    return first


@triton.jit
def lse_delta_cols(LSE, DELTA, row_base, offs_m, m_valid, BLOCK_M: tl.constexpr, THREADS: tl.constexpr):
    """LSE and DELTA of query rows ``offs_m`` (float32 ``[BLOCK_M]`` each) for a loop that uses them
    along the columns of its ``[BLOCK_N, BLOCK_M]`` tiles.

    ``THREADS`` > 0: one ``[BLOCK_M, THREADS // BLOCK_M]`` load (even columns LSE, odd DELTA: an
    element per thread of a program of up to ``THREADS`` threads), split in registers. Two
    ``[BLOCK_M]`` loads have fewer elements than threads, which Triton 3.6's layout pass treats as
    cheap and gives the layout of their use, the wgmma accumulator's column slice (``BLOCK_M/4`` elements per thread, replicated over the warps);
    its pipeliner then issues a 4-byte ``cp.async`` per element and thread, each with its own address,
    bound check and zero-fill select (dK/dV bf16 D=64 ``64x64 w4``: 166 loop integer ops against
    triton 3.8's 92, which re-lays cheap async copies coalesced: ``CoalesceCheapAsyncCopyGlobalToLocal``).
    The wide load keeps its coalesced layout; reading the copy from shared memory gives the slice
    (91 loop integer ops under either version). ``THREADS=0``: the two plain loads.
    """
    if THREADS == 0:
        lse = tl.load(LSE + row_base + offs_m, mask=m_valid, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=m_valid, other=0.0)
    else:
        tl.static_assert(2 * BLOCK_M <= THREADS and THREADS <= 64 * BLOCK_M,
                         "lse_delta_cols: THREADS must be 0 or 2 to 64 times BLOCK_M")
        col = tl.arange(0, THREADS // BLOCK_M)[None, :]
        ptrs = tl.where(col % 2 == 0, LSE, DELTA) + (row_base + offs_m[:, None])
        x = tl.load(ptrs, mask=m_valid[:, None], other=0.0)
        for cols in tl.static_range(6, 1, -1):  # halve the columns down to 2 (both powers of 2)
            if THREADS // BLOCK_M >= 2**cols:
                x = _first_columns(x, BLOCK_M, 2**cols)
        lse, delta = tl.split(x)
    return lse, delta


@triton.jit
def _store_contig(PTR, val, bh64, offs_n, offs_d, valid, N, HEAD_DIM: tl.constexpr):
    ptrs = PTR + (bh64 * N + offs_n[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]
    tl.store(ptrs, val.to(PTR.dtype.element_ty), mask=valid[:, None])


@triton.jit
def _dsoft(TH, NZ, RNG, DS, b64, h64, bh64, offs_n, offs_d, valid, stb, sth, stn, std, snb, snh, snn, snd,
           N, inv_tau, HEAD_DIM: tl.constexpr, MODE: tl.constexpr, TAU_ONE: tl.constexpr, DS_SAVED: tl.constexpr):
    """soft·(1 − soft)/τ of tokens ``offs_n`` (float32 tile): read from DS, or regenerated."""
    if DS_SAVED:
        ptrs = DS + (bh64 * N + offs_n[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]
        ds = tl.load(ptrs, mask=valid[:, None], other=0.0).to(tl.float32)
    else:
        ds = dsoft_tile(TH, NZ, RNG, b64, h64, bh64, offs_n, offs_d, valid,
                        stb, sth, stn, std, snb, snh, snn, snd, N, inv_tau, HEAD_DIM, MODE, TAU_ONE)
    return ds


@triton.jit(do_not_specialize=["H", "N"])  # shape scalars: no recompile per value
def dcs_bwd_kernel(
    Q, K, V, MSK, O, DO, LSE, DELTA, DK, DV, DQ, DQACC, TH, NZ, RNG, DS, DTH,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, sdob, sdoh, sdon, sdod,
    stb, sth, stn, std, snb, snh, snn, snd,
    H, N, qk_scale, scale, inv_tau,
    HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr, MODE: tl.constexpr,
    DTH_MODE: tl.constexpr, TAU_ONE: tl.constexpr, DS_SAVED: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dq, dk, dv (contiguous ``[B, H, N, D]``, q's dtype) and dθ of head ``program_id(0)`` (module
    doc). DELTA ``[B·H, N]`` and DQACC ``[B·H, N, D]`` (float32) are scratch, written before read.
    DS_SAVED: dθ's factor soft·(1 − soft)/τ is read from DS (contiguous, the pre-pass's) instead of
    being regenerated from θ and the noise."""
    bh64 = tl.program_id(0).to(tl.int64)
    b64 = bh64 // H
    h64 = bh64 % H
    offs_d = tl.arange(0, HEAD_DIM)
    row_base = bh64 * N

    for start_m in range(0, N, BLOCK_M):  # prologue: delta of every query row of the head
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_valid = offs_m < N
        o = load_bhnd(O, b64, h64, offs_m, offs_d, m_valid, sob, soh, son, sod).to(tl.float32)
        do = load_bhnd(DO, b64, h64, offs_m, offs_d, m_valid, sdob, sdoh, sdon, sdod).to(tl.float32)
        tl.store(DELTA + row_base + offs_m, tl.sum(o * do, 1), mask=m_valid)
    tl.debug_barrier()  # DELTA rows are read by other threads of the program below

    dth_row = tl.zeros([HEAD_DIM], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
        km, _ = masked_tile(K, mask_ptrs(MSK, bh64, offs_n, N, HEAD_DIM), b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd, MASKED)
        v = load_bhnd(V, b64, h64, offs_n, offs_d, n_valid, svb, svh, svn, svd)
        mq_ptrs = mask_ptrs(MSK, bh64, tl.arange(0, BLOCK_M), N, HEAD_DIM)
        dq_ptrs = mask_ptrs(DQACC, bh64, tl.arange(0, BLOCK_M), N, HEAD_DIM)  # same contiguous layout
        revisit = start_n > 0  # the first key block stores its dq share, the others add to it
        dk_acc = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv_acc = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
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
            dq_prev = tl.load(dq_ptrs, mask=m_valid[:, None] & revisit, other=0.0)
            dq_part = tl.dot(tl.trans(ds_t), km, dq_prev, input_precision=DOT_PREC)  # unscaled
            tl.store(dq_ptrs, dq_part, mask=m_valid[:, None])
            dq_ptrs += BLOCK_M * HEAD_DIM

        dk_raw = dk_acc * scale
        if MASKED:  # the mask tile again (from L2): holding it through the loop costs registers
            keep_k = tl.load(mask_ptrs(MSK, bh64, offs_n, N, HEAD_DIM), mask=n_valid[:, None], other=0.0)
        else:
            keep_k = tl.full([1, 1], 1.0, DK.dtype.element_ty)
        _store_contig(DK, dk_raw.to(DK.dtype.element_ty) * keep_k, bh64, offs_n, offs_d, n_valid, N, HEAD_DIM)
        _store_contig(DV, dv_acc, bh64, offs_n, offs_d, n_valid, N, HEAD_DIM)
        if DTH_MODE != 0:
            k = load_bhnd(K, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd).to(tl.float32)
        if DTH_MODE == 1:  # dM_k, finished in the epilogue (same rows of DTH)
            _store_contig(DTH, dk_raw * k, bh64, offs_n, offs_d, n_valid, N, HEAD_DIM)
        if DTH_MODE == 2:
            ds = _dsoft(TH, NZ, RNG, DS, b64, h64, bh64, offs_n, offs_d, n_valid, stb, sth, stn, std,
                        snb, snh, snn, snd, N, inv_tau, HEAD_DIM, MODE, TAU_ONE, DS_SAVED)
            dth_row += tl.sum(tl.where(n_valid[:, None], dk_raw * k * ds, 0.0), 0)
        tl.debug_barrier()  # DQACC (and DTH) rows are read by other threads of the program next

    for start_m in range(0, N, BLOCK_M):  # epilogue: dq and dθ's query side
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_valid = offs_m < N
        tile = (row_base + offs_m[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]  # contiguous buffers
        dq_raw = tl.load(DQACC + tile, mask=m_valid[:, None], other=0.0) * scale
        if MASKED:
            dq = dq_raw.to(DQ.dtype.element_ty) * tl.load(MSK + tile, mask=m_valid[:, None], other=0.0)
        else:
            dq = dq_raw
        tl.store(DQ + tile, dq.to(DQ.dtype.element_ty), mask=m_valid[:, None])
        if DTH_MODE != 0:
            q = load_bhnd(Q, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd).to(tl.float32)
            dm = dq_raw * q
            if DTH_MODE == 1:  # + dM_k, stored above
                dm += tl.load(DTH + tile, mask=m_valid[:, None], other=0.0).to(tl.float32)
            ds = _dsoft(TH, NZ, RNG, DS, b64, h64, bh64, offs_m, offs_d, m_valid, stb, sth, stn, std,
                        snb, snh, snn, snd, N, inv_tau, HEAD_DIM, MODE, TAU_ONE, DS_SAVED)
            if DTH_MODE == 1:
                tl.store(DTH + tile, (dm * ds).to(DTH.dtype.element_ty), mask=m_valid[:, None])
            else:
                dth_row += tl.sum(tl.where(m_valid[:, None], dm * ds, 0.0), 0)
    if DTH_MODE == 2:
        tl.store(DTH + bh64 * HEAD_DIM + offs_d, dth_row)
