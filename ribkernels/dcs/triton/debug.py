"""Debug kernels: the noise stream of the contract as a tensor (not used by the attention path)."""
import triton
import triton.language as tl

from .noise import element_bits, logistic_from_uniform, uniform_open01


@triton.jit(do_not_specialize=["numel"])  # shape scalars: no recompile per value
def flat_noise_kernel(OUT, numel, RNG, WHAT: tl.constexpr, BLOCK: tl.constexpr):
    """Element i (int64) of a flat float32 tensor: WHAT=0 the uniform u, WHAT=1 the logistic noise
    L = log u − log(1 − u), of the contract's Philox group i // 4, lane i % 4. BLOCK % 4 == 0."""
    pid64 = tl.program_id(0).to(tl.int64)
    g = pid64 * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
    u = uniform_open01(element_bits(tl.load(RNG), tl.load(RNG + 1), g))
    offs = pid64 * BLOCK + tl.arange(0, BLOCK)
    if WHAT == 0:
        tl.store(OUT + offs, u, mask=offs < numel)
    else:
        tl.store(OUT + offs, logistic_from_uniform(u), mask=offs < numel)
