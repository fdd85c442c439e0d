"""Triton kernels of DCS-Attention (docs/design.md §2), noise contract v2: a mask pre-pass makes the
``[B, H, N, D]`` mask once per forward (0/1 in the inputs' dtype) and, in the same pass, k⊙M (and
q⊙M, unless the forward masks raw q in its prologue); the FlashAttention-2-shaped forward is plain
attention on those, the backward kernels apply the saved mask to q/k tiles on load; none of them
runs Philox in a loop.

* ``noise``: the contract's jit helpers (Philox group → 4 elements, uniform, keep decision, dsoft).
* ``prepass``: the mask pre-pass kernel (mask, k⊙M, q⊙M).  ``forward``: the forward kernel (plain attention).
* ``backward``: the backward, one program per head (delta, dK/dV, dQ, dθ in one launch; no atomics,
  deterministic).
* ``debug``: the flat noise kernel.
* ``launch``: the one launcher (configs, RNG state, device guard).  ``ops``: custom ops + autograd.
* ``backend``: what ``dcs_attention(impl="triton")`` calls, and the debug hooks.
"""
