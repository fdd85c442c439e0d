"""Triton kernels of DCS-Attention (SPEC §2), noise contract v2: a mask pre-pass makes the
``[B, H, N, D]`` mask once per forward (one byte per element), FlashAttention-2-shaped forward and
backward kernels apply it to q/k tiles on load and never run Philox.

* ``noise``: the contract's jit helpers (Philox group → 4 elements, uniform, keep decision, dsoft).
* ``prepass``: the mask pre-pass kernel.  ``forward``: the forward kernel.
* ``backward_fused``: the default backward, one pass per key block (dQ by float32 atomics) and a dq
  finishing kernel.  ``backward``: delta, and the split dK/dV and dQ passes (deterministic).
* ``debug``: the flat noise kernel.
* ``launch``: the one launcher (configs, RNG state, device guard).  ``ops``: custom ops + autograd.
* ``backend``: what ``dcs_attention(impl="triton")`` calls, and the debug hooks.
"""
