"""The DCS-Attention forward (FlashAttention-2 shape): one program per (block of queries, b·h).

q, k, v, out are read/written through their ``[B, H, N, D]`` strides; the mask is the pre-pass's
contiguous ``[B, H, N, D]`` 0/1 tensor in q's dtype, multiplied into q and k tiles as they are
loaded (``MASKED=False`` skips it: plain attention, the benchmarks' and the static tool's "mask
off" twin). Scores stay in the log2
domain (``qk_scale = scale·log2 e``, ``exp2``); LSE is stored as ``log2 Σ exp2`` (float32 ``[B·H, N]``).
"""
import triton
import triton.language as tl

from .noise import load_bhnd


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


@triton.jit(do_not_specialize=["H", "N"])  # shape scalars: no recompile per value
def dcs_fwd_kernel(
    Q, K, V, MSK, O, LSE,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
    H, N, qk_scale,
    HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """out = softmax(scale·(q⊙M)(k⊙M)ᵀ) v for one block of queries, and its LSE."""
    pid_m = tl.program_id(0)
    bh64 = tl.program_id(1).to(tl.int64)
    b64 = bh64 // H
    h64 = bh64 % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_valid = offs_m < N
    q, keep_q = masked_tile(Q, mask_ptrs(MSK, bh64, offs_m, N, HEAD_DIM), b64, h64, offs_m, offs_d, m_valid,
                            sqb, sqh, sqn, sqd, MASKED)
    mk_ptrs = mask_ptrs(MSK, bh64, tl.arange(0, BLOCK_N), N, HEAD_DIM)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
        k, keep_k = masked_tile(K, mk_ptrs, b64, h64, offs_n, offs_d, n_valid, skb, skh, skn, skd, MASKED)
        mk_ptrs += BLOCK_N * HEAD_DIM
        v = load_bhnd(V, b64, h64, offs_n, offs_d, n_valid, svb, svh, svn, svd)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        s = tl.where(n_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    out = acc / l_i[:, None]
    optrs = O + b64 * sob + h64 * soh + offs_m[:, None].to(tl.int64) * son + offs_d[None, :] * sod
    tl.store(optrs, out.to(O.dtype.element_ty), mask=m_valid[:, None])
    tl.store(LSE + bh64 * N + offs_m, m_i + tl.math.log2(l_i), mask=m_valid)
