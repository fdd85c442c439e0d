"""Noise contract v2 in Triton (docs/design.md §2): the jit helpers shared by the mask pre-pass, the backward's
dθ epilogue and the debug kernels.

Element ``i`` of the contiguous ``[B, H, N, D]`` mask belongs to Philox group ``g = i // 4``; one
Philox-4x32-10 call with counter ``(lo32(g + offset), hi32(g + offset), 0, 0)`` and key
``(lo32(seed), hi32(seed))`` gives the 4 uint32 ``r0..r3`` of elements ``4g .. 4g+3``. Because D is a
multiple of 4, a group never straddles two tokens: a ``[rows, D // 4]`` tile of groups expands into
the ``[rows, D]`` tile of its elements by interleaving ``r0..r3`` along the channel axis.
"""
import triton
import triton.language as tl

MODE_EVAL = 0  # M = 1[θ > 0]
MODE_NOISE = 1  # M = 1[θ + noise > 0], explicit logistic noise tensor
MODE_PHILOX = 2  # M = 1[u > sigmoid(−θ)], u from (seed, offset)


@triton.jit
def _mul_wide(a, b: tl.constexpr):
    """(hi, lo) 32-bit halves of the 64-bit product of uint32 ``a`` and the constant ``b``: one
    64-bit multiply of zero-extended operands, which ptxas emits as a single IMAD.WIDE.U32 (Triton's
    ``umulhi`` + ``mul`` pair costs two IMADs)."""
    p = a.to(tl.uint64) * b
    return (p >> 32).to(tl.uint32), p.to(tl.uint32)


@triton.jit
def philox_group(seed, offset, g):
    """The 4 uint32 outputs of Philox-4x32-10 for groups ``g`` (int64 tensor), stream ``offset``:
    counter (lo32(g + offset), hi32(g + offset), 0, 0), key (lo32(seed), hi32(seed)); the same
    numbers as ``tl.philox(seed, c0, c1, 0, 0)`` and as triton 3.8's ``tl.randint4x(seed, g + offset)``."""
    c = g + offset
    c0 = c.to(tl.uint32)  # truncation: lo32
    c1 = (c >> 32).to(tl.uint32)
    c2 = c0 * 0
    c3 = c2
    s = seed.to(tl.uint64)
    k0 = s.to(tl.uint32)
    k1 = (s >> 32).to(tl.uint32)
    for _ in tl.static_range(10):
        hi_b, lo_b = _mul_wide(c2, 0xCD9E8D57)
        hi_a, lo_a = _mul_wide(c0, 0xD2511F53)
        c0 = hi_b ^ c1 ^ k0
        c2 = hi_a ^ c3 ^ k1
        c1 = lo_b
        c3 = lo_a
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def element_bits(seed, offset, g):
    """uint32 bits of the elements of groups ``g`` (``[..., G]``) as ``[..., 4·G]``: element
    ``4·j + lane`` gets ``r_lane`` of group ``g[..., j]``."""
    r0, r1, r2, r3 = philox_group(seed, offset, g)
    return tl.interleave(tl.interleave(r0, r2), tl.interleave(r1, r3))


@triton.jit
def tile_bits(seed, offset, bh64, offs_n, N, HEAD_DIM: tl.constexpr):
    """uint32 bits ``[len(offs_n), HEAD_DIM]`` of tokens ``offs_n`` of head ``bh`` (groups
    ``(bh·N + n)·D/4 + j``): the numbers ``element_bits`` gives for those groups, built so that each
    thread's 8 consecutive elements (two groups: one 128-bit access of fp16/bf16) come from two Philox
    tiles ``[rows, D // 8]`` joined in registers. ``element_bits`` on a ``[rows, D // 4]`` tile of
    groups makes Triton hand one group per thread and then move the bits through shared memory to
    the 8-per-thread layout of the loads and stores (a convert_layout: shared stores, loads and
    barriers in every program). HEAD_DIM % 8 == 0."""
    offs_j = tl.arange(0, HEAD_DIM // 8)
    g_even = (bh64 * N + offs_n[:, None].to(tl.int64)) * (HEAD_DIM // 4) + 2 * offs_j[None, :]
    e0, e1, e2, e3 = philox_group(seed, offset, g_even)
    o0, o1, o2, o3 = philox_group(seed, offset, g_even + 1)
    # tl.join's new axis is the innermost: the outermost join picks bit 0 of the element index within
    # 8, the middle one bit 1, the innermost bit 2 (even / odd group): [rows, D/8, 2, 2, 2] → [rows, D]
    lane02 = tl.join(tl.join(e0, o0), tl.join(e2, o2))
    lane13 = tl.join(tl.join(e1, o1), tl.join(e3, o3))
    return tl.reshape(tl.join(lane02, lane13), (offs_n.shape[0], HEAD_DIM))


@triton.jit
def uniform_open01(bits):
    """``((bits >> 9) + 0.5) · 2**-23`` (logical shift of uint32): float32 in (0, 1), exact — one
    FFMA: ``m·2**-23 + 2**-24 = (2m + 1)·2**-24`` needs 24 significant bits, which float32 has."""
    return tl.fma((bits >> 9).to(tl.float32), 1.1920928955078125e-07, 5.9604644775390625e-08)


@triton.jit
def uniform_open01_mantissa(bits):
    """``uniform_open01(bits)``, the same floats, without the int→float conversion: the 23 bits go
    into the mantissa of 1.0 (``f = 1 + m·2**-23``: one shift-add, LEA.HI), then
    ``f − (1 − 2**-24) = (2m + 1)·2**-24`` (exact). One instruction less per element: the pre-pass
    uses it (its ≤ 30 instructions per element); in the backward's epilogues it made ptxas add
    address arithmetic to the attention loop (+5 integer ops), so they keep the FFMA form."""
    f = ((bits >> 9) + 0x3F800000).to(tl.float32, bitcast=True)
    return f - 0.999999940395355224609375


@triton.jit
def exp_ftz(x, FAST: tl.constexpr):
    """e^x; FAST: ``ex2.approx.ftz`` (no denormal fix-up: results below 2**-126 flush to 0), else
    ``tl.exp`` (the interpreter has no inline PTX)."""
    if FAST:
        y = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x * 1.4426950408889634],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        y = tl.exp(x)
    return y


@triton.jit
def keep_philox(u, theta, FAST: tl.constexpr):
    """``u > sigmoid(−θ)`` without a division: ``u·(1 + e^θ) > 1`` (e^θ = inf keeps, 0 drops)."""
    return tl.fma(u, exp_ftz(theta, FAST), u) > 1.0


@triton.jit
def logistic_from_uniform(u):
    """``L = log(u) − log(1 − u)`` (1 − u is exact in float32 for these u)."""
    return tl.log(u) - tl.log(1.0 - u)


@triton.jit
def dsoft_philox_tau1(u, theta):
    """``soft·(1 − soft)`` with ``soft = sigmoid(θ + L) = u / (u + (1 − u)e^{−θ})``, no logs, no
    overflow: with t = e^{−|θ|}, soft = a/(a+b), 1 − soft = b/(a+b), a = u (θ ≥ 0) or u·t, b = (1−u)·t
    (θ ≥ 0) or 1 − u."""
    t = tl.exp(-tl.abs(theta))
    pos = theta >= 0
    a = tl.where(pos, u, u * t)
    b = tl.where(pos, (1.0 - u) * t, 1.0 - u)
    s = a + b
    return (a * b) / (s * s)


@triton.jit
def dsigmoid(x):
    """σ'(x) = e/(1+e)² with e = exp(−|x|): stable for any x."""
    e = tl.exp(-tl.abs(x))
    return e / ((1.0 + e) * (1.0 + e))


@triton.jit
def load_bhnd(PTR, b64, h64, offs_n, offs_d, valid, sb, sh, sn, sd):
    """A ``[len(offs_n), len(offs_d)]`` tile of a strided ``[B, H, N, D]`` view (int64 offsets)."""
    ptrs = PTR + b64 * sb + h64 * sh + offs_n[:, None].to(tl.int64) * sn + offs_d[None, :] * sd
    return tl.load(ptrs, mask=valid[:, None], other=0.0)


@triton.jit
def dsoft_tile(TH, NZ, RNG, b64, h64, bh64, offs_n, offs_d, valid,
               stb, sth, stn, std, snb, snh, snn, snd, N, inv_tau,
               HEAD_DIM: tl.constexpr, MODE: tl.constexpr, TAU_ONE: tl.constexpr):
    """``soft·(1 − soft)/τ`` (float32 tile) for training modes: what dθ = dM·(this) needs. In Philox
    mode u is regenerated here, once per 4 elements (one Philox call per group)."""
    theta = load_bhnd(TH, b64, h64, offs_n, offs_d, valid, stb, sth, stn, std).to(tl.float32)
    if MODE == 1:
        z = theta + load_bhnd(NZ, b64, h64, offs_n, offs_d, valid, snb, snh, snn, snd).to(tl.float32)
        ds = dsigmoid(z * inv_tau) * inv_tau
    else:
        seed = tl.load(RNG)
        offset = tl.load(RNG + 1)
        u = uniform_open01(tile_bits(seed, offset, bh64, offs_n, N, HEAD_DIM))
        if TAU_ONE:
            ds = dsoft_philox_tau1(u, theta)
        else:
            ds = dsigmoid((theta + logistic_from_uniform(u)) * inv_tau) * inv_tau
    return ds
