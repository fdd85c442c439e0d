"""The DCS-Attention forward (FlashAttention-2 shape): one program per (block of queries, b·h).

The kernel's loop is plain attention: K is the pre-pass's k⊙M (``prepass.py``), and Q either its
q⊙M or (``MASK_Q``) raw q, masked once before the loop by a predicated load — masked-out elements
take ``q·0`` (a NaN stays NaN): a load, not a multiply, so Triton keeps q in shared memory as wgmma's
A operand (multiplied in registers it became a register operand: 185 registers against 128,
3 → 2 CTAs per SM). So the loop holds no mask load or multiply and compiles exactly as the mask-off
kernel (on sm_90: its wgmma operands stay in shared memory, one commit group per ``tl.dot``). Called
on raw q and k it is the benchmarks' and the static tool's "mask off" twin. q, k, v, out are
read/written through their ``[B, H, N, D]`` strides. Scores stay in the log2 domain (``qk_scale = scale·log2 e``, ``exp2``); LSE is stored as ``log2 Σ exp2`` (float32
``[B·H, N]``).

Per key tile the loop spends: the scale folded into the exponent's FFMA (``s·qk_scale − m``, the
row max taken on the raw scores and scaled once per row), and no key-padding work at all: the full
key blocks run unmasked, the partial last one (N not a multiple of BLOCK_N) is a peeled iteration
with the bound check and the ``-inf`` select — on a half-width tile when the rest fits in one
(N = 211 = 3·64 + 19: a 32-key tile, 1/8 fewer key columns in both GEMMs).
"""
import triton
import triton.language as tl

from .noise import load_bhnd


@triton.jit
def _fwd_tile(q, K, V, b64, h64, start_n, offs_d, N, skb, skh, skn, skd, svb, svh, svn, svd, qk_scale,
              m_i, l_i, acc, DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr):
    """One key block of the online softmax: (m_i, l_i, acc) updated. m_i is in the scaled log2
    domain; PARTIAL: keys past N are masked (loads and scores), else none is checked."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if PARTIAL:
        n_valid = offs_n < N
        k = load_bhnd(K, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd)
        v = load_bhnd(V, b64, h64, offs_n, offs_d, n_valid, svb, svh, svn, svd)
    else:
        k = load_bhnd_full(K, b64, h64, offs_n, offs_d, skb, skh, skn, skd)
        v = load_bhnd_full(V, b64, h64, offs_n, offs_d, svb, svh, svn, svd)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)  # raw scores
    if PARTIAL:  # scaled before the select: −inf·0 would be NaN at scale 0
        s = tl.where(n_valid[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
    else:  # the scale goes into the exponent's FFMA
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return m_new, l_i, acc


@triton.jit
def load_bhnd_full(PTR, b64, h64, offs_n, offs_d, sb, sh, sn, sd):
    """``load_bhnd`` of a tile whose rows are all in range: no bound check."""
    return tl.load(PTR + b64 * sb + h64 * sh + offs_n[:, None].to(tl.int64) * sn + offs_d[None, :] * sd)


@triton.jit(do_not_specialize=["H", "N"])  # shape scalars: no recompile per value
def dcs_fwd_kernel(
    Q, K, V, O, LSE, QMASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
    H, N, qk_scale,
    HEAD_DIM: tl.constexpr, DOT_PREC: tl.constexpr, MASK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out = softmax(scale·(Q⊙QMASK) Kᵀ) V for one block of queries, and its LSE. K = k⊙M (the
    pre-pass's). MASK_Q: Q is raw q and QMASK the 0/1 mask (contiguous ``[B, H, N, D]``, Q's dtype),
    multiplied into the query tile once, before the key loop; else Q = q⊙M (QMASK unread)."""
    pid_m = tl.program_id(0)
    bh64 = tl.program_id(1).to(tl.int64)
    b64 = bh64 // H
    h64 = bh64 % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_valid = offs_m < N
    q = load_bhnd(Q, b64, h64, offs_m, offs_d, m_valid, sqb, sqh, sqn, sqd)
    if MASK_Q:  # x·1 / x·0 as the pre-pass's q⊙M (a NaN stays NaN); the second q load hits L1
        mrows = (bh64 * N + offs_m[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]
        keep = tl.load(QMASK + mrows, mask=m_valid[:, None], other=0.0) != 0
        qptrs = Q + b64 * sqb + h64 * sqh + offs_m[:, None].to(tl.int64) * sqn + offs_d[None, :] * sqd
        q = tl.load(qptrs, mask=m_valid[:, None] & keep, other=q * 0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        m_i, l_i, acc = _fwd_tile(q, K, V, b64, h64, start_n, offs_d, N, skb, skh, skn, skd, svb, svh, svn, svd,
                                  qk_scale, m_i, l_i, acc, DOT_PREC, BLOCK_N, False)
    if n_full < N:  # the partial last key block: a half-width tile when the rest fits in one
        if BLOCK_N >= 32 and N - n_full <= BLOCK_N // 2:
            m_i, l_i, acc = _fwd_tile(q, K, V, b64, h64, n_full, offs_d, N, skb, skh, skn, skd, svb, svh, svn,
                                      svd, qk_scale, m_i, l_i, acc, DOT_PREC, BLOCK_N // 2, True)
        else:
            m_i, l_i, acc = _fwd_tile(q, K, V, b64, h64, n_full, offs_d, N, skb, skh, skn, skd, svb, svh, svn,
                                      svd, qk_scale, m_i, l_i, acc, DOT_PREC, BLOCK_N, True)

    out = acc / l_i[:, None]
    optrs = O + b64 * sob + h64 * soh + offs_m[:, None].to(tl.int64) * son + offs_d[None, :] * sod
    tl.store(optrs, out.to(O.dtype.element_ty), mask=m_valid[:, None])
    tl.store(LSE + bh64 * N + offs_m, m_i + tl.math.log2(l_i), mask=m_valid)
