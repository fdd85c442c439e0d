"""The ``@triton.jit`` kernels of DCS-Attention (SPEC §2).

Layout: q, k, v, out, dout ``[B, H, N, D]`` read through their strides; θ and explicit noise through
the strides of their ``expand(B, H, N, D)`` views (0 along broadcast dimensions, nothing
materialised). One program handles one (batch·head, block of tokens): ``program_id(0)`` is the token
block, ``program_id(1)`` the batch·head index ``bh = b·H + h``.

The mask of token n, channel c of head bh is ``M = 1[z > 0]`` with ``z = θ + L`` (training) or
``z = θ`` (eval). In-kernel noise L uses Philox counter ``offset = (bh·N + n)·D + c`` (int32), the
offset of the element in a contiguous ``[B, H, N, D]`` tensor: the same numbers as
``ribkernels.dcs.mask.logistic_noise`` for any block size. Every kernel builds its masks with
:func:`mask_logits_tile`, so backward regenerates bit-identically the forward's mask.

Scores are kept in the log2 domain (``scale·log2(e)`` folded in, ``exp2``); the stored row LSE is
``log2 Σ exp2``. Accumulation is fp32; ``P`` and ``dS`` are cast to the input dtype for their dots,
as in flash-attention.
"""
import triton
import triton.language as tl

MODE_EVAL = 0  # z = θ
MODE_NOISE = 1  # z = θ + explicit noise tensor
MODE_PHILOX = 2  # z = θ + logistic noise from tl.randint(seed, offset)


@triton.jit
def uniform_open01(seed, offsets):
    """``((bits >> 9) + 0.5) · 2**-23`` of ``bits = tl.randint(seed, offsets)`` (uint32, so the shift
    is logical): float32 in the open interval (0, 1), exact."""
    bits = tl.randint(seed, offsets)
    return ((bits >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def logistic_noise(seed, offsets):
    """``L = log(u) − log(1 − u)`` (1 − u is exact in float32 for these u)."""
    u = uniform_open01(seed, offsets)
    return tl.log(u) - tl.log(1.0 - u)


@triton.jit
def mask_logits_tile(TH, NZ, b64, h64, bh, offs_n, offs_d, valid,
                     stb, sth, stn, std, snb, snh, snn, snd, N, seed,
                     HEAD_DIM: tl.constexpr, MODE: tl.constexpr):
    """``z`` (float32 ``[len(offs_n), HEAD_DIM]``) for tokens ``offs_n`` of head ``bh``; M = z > 0."""
    th_ptrs = TH + b64 * stb + h64 * sth + offs_n[:, None].to(tl.int64) * stn + offs_d[None, :] * std
    z = tl.load(th_ptrs, mask=valid[:, None], other=0.0).to(tl.float32)
    if MODE == 1:
        nz_ptrs = NZ + b64 * snb + h64 * snh + offs_n[:, None].to(tl.int64) * snn + offs_d[None, :] * snd
        z += tl.load(nz_ptrs, mask=valid[:, None], other=0.0).to(tl.float32)
    elif MODE == 2:
        offsets = (bh * N + offs_n[:, None]) * HEAD_DIM + offs_d[None, :]
        z += logistic_noise(seed, offsets)
    return z


@triton.jit
def _load_rows(PTR, b64, h64, offs_n, offs_d, valid, sb, sh, sn, sd):
    ptrs = PTR + b64 * sb + h64 * sh + offs_n[:, None].to(tl.int64) * sn + offs_d[None, :] * sd
    return tl.load(ptrs, mask=valid[:, None], other=0.0)


@triton.jit
def _store_rows(PTR, val, b64, h64, offs_n, offs_d, valid, sb, sh, sn, sd):
    ptrs = PTR + b64 * sb + h64 * sh + offs_n[:, None].to(tl.int64) * sn + offs_d[None, :] * sd
    tl.store(ptrs, val.to(PTR.dtype.element_ty), mask=valid[:, None])


@triton.jit
def dcs_fwd_kernel(
    Q, K, V, TH, NZ, O, LSE,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
    stb, sth, stn, std, snb, snh, snn, snd,
    H, N, seed, qk_scale,
    HEAD_DIM: tl.constexpr, MODE: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """out = softmax(scale·(q⊙M)(k⊙M)ᵀ) v for one block of queries; LSE (log2 domain, [B·H, N])."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_valid = offs_m < N

    q = _load_rows(Q, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd)
    zq = mask_logits_tile(TH, NZ, b64, h64, bh, offs_m, offs_d, m_valid,
                          stb, sth, stn, std, snb, snh, snn, snd, N, seed, HEAD_DIM, MODE)
    qm = tl.where(zq > 0, q, tl.zeros_like(q))

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
        k = _load_rows(K, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd)
        v = _load_rows(V, b64, h64, offs_n, offs_d, n_valid, svb, svh, svn, svd)
        zk = mask_logits_tile(TH, NZ, b64, h64, bh, offs_n, offs_d, n_valid,
                              stb, sth, stn, std, snb, snh, snn, snd, N, seed, HEAD_DIM, MODE)
        km = tl.where(zk > 0, k, tl.zeros_like(k))
        s = tl.dot(qm, tl.trans(km), input_precision=DOT_PREC) * qk_scale
        s = tl.where(n_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    out = acc / l_i[:, None]
    _store_rows(O, out, b64, h64, offs_m, offs_d, m_valid, sob, soh, son, sod)
    tl.store(LSE + bh.to(tl.int64) * N + offs_m, m_i + tl.math.log2(l_i), mask=m_valid)


@triton.jit
def dcs_bwd_dkdv_kernel(
    Q, K, V, TH, NZ, DO, LSE, DELTA, DK, DV, DMK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    stb, sth, stn, std, snb, snh, snn, snd,
    H, N, seed, qk_scale, scale,
    HEAD_DIM: tl.constexpr, MODE: tl.constexpr, DOT_PREC: tl.constexpr, NEED_DMASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """For one block of keys: dv = Pᵀ dO, dk = scale·(dSᵀ(q⊙M))⊙M and, if NEED_DMASK, the key-side
    mask gradient dM_k = scale·(dSᵀ(q⊙M))⊙k (fp32, contiguous [B, H, N, D] in DMK).
    dk, dv are written contiguous [B, H, N, D]."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    n_valid = offs_n < N

    k = _load_rows(K, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd)
    v = _load_rows(V, b64, h64, offs_n, offs_d, n_valid, svb, svh, svn, svd)
    zk = mask_logits_tile(TH, NZ, b64, h64, bh, offs_n, offs_d, n_valid,
                          stb, sth, stn, std, snb, snh, snn, snd, N, seed, HEAD_DIM, MODE)
    km = tl.where(zk > 0, k, tl.zeros_like(k))

    dk_acc = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv_acc = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    row_base = bh.to(tl.int64) * N
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_valid = offs_m < N
        q = _load_rows(Q, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd)
        do = _load_rows(DO, b64, h64, offs_m, offs_d, m_valid, sdob, sdoh, sdon, sdod)
        zq = mask_logits_tile(TH, NZ, b64, h64, bh, offs_m, offs_d, m_valid,
                              stb, sth, stn, std, snb, snh, snn, snd, N, seed, HEAD_DIM, MODE)
        qm = tl.where(zq > 0, q, tl.zeros_like(q))
        lse = tl.load(LSE + row_base + offs_m, mask=m_valid, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=m_valid, other=0.0)
        s_t = tl.dot(km, tl.trans(qm), input_precision=DOT_PREC) * qk_scale  # [BLOCK_N, BLOCK_M]
        p_t = tl.math.exp2(s_t - lse[None, :])
        p_t = tl.where(m_valid[None, :], p_t, 0.0)
        dv_acc += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk_acc += tl.dot(ds_t.to(q.dtype), qm, input_precision=DOT_PREC)

    dk_raw = dk_acc * scale
    mk = zk > 0
    dk = tl.where(mk, dk_raw, 0.0)
    _store_rows(DK, dk, b64 * 0, bh.to(tl.int64), offs_n, offs_d, n_valid, 0, N * HEAD_DIM, HEAD_DIM, 1)
    _store_rows(DV, dv_acc, b64 * 0, bh.to(tl.int64), offs_n, offs_d, n_valid, 0, N * HEAD_DIM, HEAD_DIM, 1)
    if NEED_DMASK:
        dmk = dk_raw * k.to(tl.float32)
        _store_rows(DMK, dmk, b64 * 0, bh.to(tl.int64), offs_n, offs_d, n_valid, 0, N * HEAD_DIM, HEAD_DIM, 1)


@triton.jit
def dcs_bwd_dq_kernel(
    Q, K, V, TH, NZ, DO, LSE, DELTA, DQ, DMK, DTH,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    stb, sth, stn, std, snb, snh, snn, snd,
    H, N, seed, qk_scale, scale, inv_tau,
    HEAD_DIM: tl.constexpr, MODE: tl.constexpr, DOT_PREC: tl.constexpr, NEED_DMASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """For one block of queries: dq = scale·(dS(k⊙M))⊙M and, if NEED_DMASK, the full-size
    ``dθ = (dM_q + dM_k)·σ'(z/τ)/τ`` with dM_q = scale·(dS(k⊙M))⊙q and dM_k read from DMK
    (fp32, contiguous [B, H, N, D]). dq is written contiguous [B, H, N, D]."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_valid = offs_m < N
    row_base = bh.to(tl.int64) * N

    q = _load_rows(Q, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd)
    do = _load_rows(DO, b64, h64, offs_m, offs_d, m_valid, sdob, sdoh, sdon, sdod)
    zq = mask_logits_tile(TH, NZ, b64, h64, bh, offs_m, offs_d, m_valid,
                          stb, sth, stn, std, snb, snh, snn, snd, N, seed, HEAD_DIM, MODE)
    qm = tl.where(zq > 0, q, tl.zeros_like(q))
    lse = tl.load(LSE + row_base + offs_m, mask=m_valid, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=m_valid, other=0.0)

    dq_acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
        k = _load_rows(K, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd)
        v = _load_rows(V, b64, h64, offs_n, offs_d, n_valid, svb, svh, svn, svd)
        zk = mask_logits_tile(TH, NZ, b64, h64, bh, offs_n, offs_d, n_valid,
                              stb, sth, stn, std, snb, snh, snn, snd, N, seed, HEAD_DIM, MODE)
        km = tl.where(zk > 0, k, tl.zeros_like(k))
        s = tl.dot(qm, tl.trans(km), input_precision=DOT_PREC) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(n_valid[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq_acc += tl.dot(ds.to(k.dtype), km, input_precision=DOT_PREC)

    dq_raw = dq_acc * scale
    dq = tl.where(zq > 0, dq_raw, 0.0)
    zero = b64 * 0
    bh64 = bh.to(tl.int64)
    _store_rows(DQ, dq, zero, bh64, offs_m, offs_d, m_valid, 0, N * HEAD_DIM, HEAD_DIM, 1)
    if NEED_DMASK:
        dmk = _load_rows(DMK, zero, bh64, offs_m, offs_d, m_valid, 0, N * HEAD_DIM, HEAD_DIM, 1)
        # σ'(x) = e/(1+e)² with e = exp(−|x|): stable for any x.
        e = tl.exp(-tl.abs(zq * inv_tau))
        dsoft = e / ((1.0 + e) * (1.0 + e)) * inv_tau
        dth = (dq_raw * q.to(tl.float32) + dmk) * dsoft
        _store_rows(DTH, dth, zero, bh64, offs_m, offs_d, m_valid, 0, N * HEAD_DIM, HEAD_DIM, 1)


@triton.jit
def dcs_mask_kernel(
    TH, NZ, OUT,
    stb, sth, stn, std, snb, snh, snn, snd,
    H, N, seed,
    HEAD_DIM: tl.constexpr, MODE: tl.constexpr, WHAT: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Debug view of what the attention kernels build, into contiguous ``[B, H, N, D]`` float32:
    WHAT=0 the mask M (0/1), WHAT=1 the logits z, WHAT=2 the uniform u, WHAT=3 the noise L (both of
    the Philox stream at this element's offset)."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_n < N
    if WHAT == 0:
        z = mask_logits_tile(TH, NZ, b64, h64, bh, offs_n, offs_d, valid,
                             stb, sth, stn, std, snb, snh, snn, snd, N, seed, HEAD_DIM, MODE)
        val = (z > 0).to(tl.float32)
    elif WHAT == 1:
        val = mask_logits_tile(TH, NZ, b64, h64, bh, offs_n, offs_d, valid,
                               stb, sth, stn, std, snb, snh, snn, snd, N, seed, HEAD_DIM, MODE)
    elif WHAT == 2:
        val = uniform_open01(seed, (bh * N + offs_n[:, None]) * HEAD_DIM + offs_d[None, :])
    else:
        val = logistic_noise(seed, (bh * N + offs_n[:, None]) * HEAD_DIM + offs_d[None, :])
    _store_rows(OUT, val, b64 * 0, bh.to(tl.int64), offs_n, offs_d, valid, 0, N * HEAD_DIM, HEAD_DIM, 1)


@triton.jit
def flat_noise_kernel(OUT, numel, seed, WHAT: tl.constexpr, BLOCK: tl.constexpr):
    """Element i of a flat float32 tensor: WHAT=2 the uniform u, WHAT=3 the logistic noise L, of
    Philox offset i (what :func:`logistic_noise` gives every attention kernel)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    if WHAT == 2:
        val = uniform_open01(seed, offs)
    else:
        val = logistic_noise(seed, offs)
    tl.store(OUT + offs, val, mask=valid)
