"""The DCS-Attention backward, split: delta, dK/dV and dQ passes (bit-reproducible run to run; the
launcher's choice under ``torch.are_deterministic_algorithms_enabled()`` or
``RIBKERNELS_DCS_BACKWARD=split``). The default is the single pass of ``backward_fused.py``, which
also uses the delta kernel and the store helpers defined here.

* ``dcs_bwd_delta_kernel``: delta = rowsum(dO ⊙ O) (float32 ``[B·H, N]``).
* ``dcs_bwd_dkdv_kernel``: per key block, dv = Pᵀ dO, dk = scale·(dSᵀ(q⊙M))⊙M.
* ``dcs_bwd_dq_kernel``: per query block, dq = scale·(dS(k⊙M))⊙M.

dθ (training, θ needs a grad) is ``dM·soft·(1 − soft)/τ`` with ``dM = dq_raw⊙q + dk_raw⊙k``; the
``soft·(1 − soft)/τ`` factor is evaluated once per element in an epilogue (``noise.dsoft_tile``), never
per tile. ``DTH_MODE``:
* 0: no dθ.
* 1 (θ varies along N): the dK/dV pass writes dM_k = dk_raw⊙k (float32 scratch), the dQ pass reads it
  and writes ``(dM_q + dM_k)·dsoft`` into DTH (θ's dtype when θ is ``[B, H, N, D]``, else float32,
  reduced over θ's other broadcast dims by the launcher).
* 2 (θ broadcast along N, e.g. ``[1, H, 1, D]``): each pass sums ``dM·dsoft`` over its own rows
  in-kernel and writes one float32 ``[D]`` row per program into DTH ``[2, B·H, n_blocks, D]``
  (pass 0: keys, pass 1: queries); no full-size buffer at all.
The mask of a tile is the pre-pass's bytes; the kernels never run Philox in their loops.
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


@triton.jit(do_not_specialize=["H", "N"])  # shape scalars: no recompile per value
def dcs_bwd_delta_kernel(O, DO, DELTA, sob, soh, son, sod, sdob, sdoh, sdon, sdod, H, N,
                         HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """DELTA[bh, n] = Σ_d dO[b, h, n, d]·O[b, h, n, d] in float32."""
    bh64 = tl.program_id(1).to(tl.int64)
    b64 = bh64 // H
    h64 = bh64 % H
    offs_n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_n < N
    o = load_bhnd(O, b64, h64, offs_n, offs_d, valid, sob, soh, son, sod).to(tl.float32)
    do = load_bhnd(DO, b64, h64, offs_n, offs_d, valid, sdob, sdoh, sdon, sdod).to(tl.float32)
    tl.store(DELTA + bh64 * N + offs_n, tl.sum(o * do, 1), mask=valid)


@triton.jit
def _store_contig(PTR, val, bh64, offs_n, offs_d, valid, N, HEAD_DIM: tl.constexpr):
    ptrs = PTR + (bh64 * N + offs_n[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]
    tl.store(ptrs, val.to(PTR.dtype.element_ty), mask=valid[:, None])


@triton.jit
def _store_row_partial(DTH, part, which, bh64, BH, pid, NB_MAX, offs_d, HEAD_DIM: tl.constexpr):
    """Row ``pid`` of ``DTH[which, bh]`` (``[2, BH, NB_MAX, D]``); the last program also zeroes the
    rows past the grid, so the sum over rows never depends on the block size (or on autotuning)."""
    base = (which * BH + bh64) * NB_MAX
    tl.store(DTH + (base + pid) * HEAD_DIM + offs_d, part)
    nprog = tl.num_programs(0)
    if pid == nprog - 1:
        for r in range(nprog, NB_MAX):
            tl.store(DTH + (base + r) * HEAD_DIM + offs_d, tl.zeros_like(part))


@triton.jit(do_not_specialize=["H", "N", "BH", "NB_MAX"])  # shape scalars: no recompile per value
def dcs_bwd_dkdv_kernel(
    Q, K, V, MSK, DO, LSE, DELTA, DK, DV, DMK, TH, NZ, RNG, DTH,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    stb, sth, stn, std, snb, snh, snn, snd,
    H, N, BH, NB_MAX, qk_scale, scale, inv_tau,
    HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr, MODE: tl.constexpr,
    DTH_MODE: tl.constexpr, TAU_ONE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dk, dv (contiguous ``[B, H, N, D]``) for one block of keys; dθ's key side (see module doc)."""
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
        # Widths (columns = ld_threads / BLOCK_M) where ptxas keeps every shipped loop's wgmma pipelined:
        # 4 columns serialise them (C7515) at D=32 (64x64 w4, 32x64 w4) and D=128 (benchmarks/sm90_static).
        ld_threads: tl.constexpr = 512 if HEAD_DIM >= 128 else (2 * BLOCK_M if BLOCK_M >= 64 else 256)
        lse, delta = lse_delta_cols(LSE, DELTA, row_base, offs_m, m_valid, BLOCK_M, ld_threads)
        s_t = tl.dot(km, tl.trans(qm), input_precision=DOT_PREC) * qk_scale  # [BLOCK_N, BLOCK_M]
        p_t = tl.math.exp2(s_t - lse[None, :])
        p_t = tl.where(m_valid[None, :], p_t, 0.0)
        dv_acc += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk_acc += tl.dot(ds_t.to(qm.dtype), qm, input_precision=DOT_PREC)

    dk_raw = dk_acc * scale
    _store_contig(DK, dk_raw.to(DK.dtype.element_ty) * keep_k, bh64, offs_n, offs_d, n_valid, N, HEAD_DIM)
    _store_contig(DV, dv_acc, bh64, offs_n, offs_d, n_valid, N, HEAD_DIM)
    if DTH_MODE != 0:
        k = load_bhnd(K, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd).to(tl.float32)
        dmk = dk_raw * k
        if DTH_MODE == 1:
            _store_contig(DMK, dmk, bh64, offs_n, offs_d, n_valid, N, HEAD_DIM)
        else:
            ds = dsoft_tile(TH, NZ, RNG, b64, h64, bh64, offs_n, offs_d, n_valid,
                            stb, sth, stn, std, snb, snh, snn, snd, N, inv_tau, HEAD_DIM, MODE, TAU_ONE)
            part = tl.sum(tl.where(n_valid[:, None], dmk * ds, 0.0), 0)
            _store_row_partial(DTH, part, 0, bh64, BH, pid_n, NB_MAX, offs_d, HEAD_DIM)


@triton.jit(do_not_specialize=["H", "N", "BH", "NB_MAX"])  # shape scalars: no recompile per value
def dcs_bwd_dq_kernel(
    Q, K, V, MSK, DO, LSE, DELTA, DQ, DMK, TH, NZ, RNG, DTH,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    stb, sth, stn, std, snb, snh, snn, snd,
    H, N, BH, NB_MAX, qk_scale, scale, inv_tau,
    HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr, MODE: tl.constexpr,
    DTH_MODE: tl.constexpr, TAU_ONE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dq (contiguous ``[B, H, N, D]``) for one block of queries; dθ's query side and, in DTH_MODE 1,
    the whole dθ of these elements (see module doc)."""
    pid_m = tl.program_id(0)
    bh64 = tl.program_id(1).to(tl.int64)
    b64 = bh64 // H
    h64 = bh64 % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_valid = offs_m < N
    row_base = bh64 * N
    qm, keep_q = masked_tile(Q, mask_ptrs(MSK, bh64, offs_m, N, HEAD_DIM), b64, h64, offs_m, offs_d, m_valid,
                             sqb, sqh, sqn, sqd, MASKED)
    mk_ptrs = mask_ptrs(MSK, bh64, tl.arange(0, BLOCK_N), N, HEAD_DIM)
    do = load_bhnd(DO, b64, h64, offs_m, offs_d, m_valid, sdob, sdoh, sdon, sdod)
    lse = tl.load(LSE + row_base + offs_m, mask=m_valid, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=m_valid, other=0.0)

    dq_acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
        km, keep_ki = masked_tile(K, mk_ptrs, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd, MASKED)
        mk_ptrs += BLOCK_N * HEAD_DIM
        v = load_bhnd(V, b64, h64, offs_n, offs_d, n_valid, svb, svh, svn, svd)
        s = tl.dot(qm, tl.trans(km), input_precision=DOT_PREC) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(n_valid[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq_acc += tl.dot(ds.to(km.dtype), km, input_precision=DOT_PREC)

    dq_raw = dq_acc * scale
    _store_contig(DQ, dq_raw.to(DQ.dtype.element_ty) * keep_q, bh64, offs_m, offs_d, m_valid, N, HEAD_DIM)
    if DTH_MODE != 0:
        q = load_bhnd(Q, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd).to(tl.float32)
        dm = dq_raw * q
        if DTH_MODE == 1:
            dmk_ptrs = DMK + (row_base + offs_m[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]
            dm += tl.load(dmk_ptrs, mask=m_valid[:, None], other=0.0)
        ds = dsoft_tile(TH, NZ, RNG, b64, h64, bh64, offs_m, offs_d, m_valid,
                        stb, sth, stn, std, snb, snh, snn, snd, N, inv_tau, HEAD_DIM, MODE, TAU_ONE)
        if DTH_MODE == 1:
            _store_contig(DTH, dm * ds, bh64, offs_m, offs_d, m_valid, N, HEAD_DIM)
        else:
            part = tl.sum(tl.where(m_valid[:, None], dm * ds, 0.0), 0)
            _store_row_partial(DTH, part, 1, bh64, BH, pid_m, NB_MAX, offs_d, HEAD_DIM)
