"""Fused Triton kernels of DCS-Attention (SPEC §2): flash-attention forward and backward with the
binary Gumbel channel mask generated in-kernel (Philox) and regenerated, not stored, in backward.

* ``kernels``: the ``@triton.jit`` kernels and the one noise/mask helper they all share.
* ``launch``: block-size policy (autotuned on GPU, fixed under ``TRITON_INTERPRET=1``) and launchers.
* ``ops``: the ``torch.library`` custom ops ``ribkernels::dcs_attention_fwd/bwd`` and their autograd.
* ``backend``: what ``dcs_attention(impl="triton")`` calls (``why_not``, ``dcs_attention_triton``)
  and the debug hooks ``triton_logistic_noise`` / ``triton_dcs_mask``.
"""
