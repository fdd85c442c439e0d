"""The mask pre-pass: ``(q⊙M, k⊙M)`` for the training mask of noise contract v2, made once per forward.

On CPU it is one C++ op of ``ribkernels._C`` (``torch.ops.ribkernels.dcs_mask_apply``, csrc/dcs_mask_cpu.cpp:
Philox, the ``u > sigmoid(−θ)`` decision and the products in one threaded, vectorised pass; its backward
regenerates u once per 4 elements for dθ). The op's autograd formula and fake (meta) kernel are
registered here, so ``torch.compile`` sees one node per direction. Without the extension (or on CUDA)
the same contract runs in PyTorch (``mask.seeded_mask``).
"""
from typing import Optional, Tuple, Union

import torch

from .lazy_dynamo import assume_constant_result

_STATE: dict = {}
SeedLike = Union[int, torch.Tensor]


def _fake_apply(q, k, theta, seed, offset, tau):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return (out, torch.empty_like(out), q.new_empty(q.shape, dtype=torch.uint8),
            q.new_empty((), dtype=torch.int64))


def _fake_apply_backward(grad_qm, grad_km, q, k, theta, mask, seed, offset, tau, theta_grad):
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dtheta = q.new_empty(q.shape if theta_grad else (0,), dtype=torch.float32)
    return dq, torch.empty_like(dq), dtheta


def _setup_context(ctx, inputs, output):
    q, k, theta, seed, offset, tau = inputs
    ctx.save_for_backward(q, k, theta, output[2], seed)
    ctx.offset, ctx.tau = offset, tau


def _backward(ctx, grad_qm, grad_km, _grad_mask, _grad_nan):
    q, k, theta, mask, seed = ctx.saved_tensors
    theta_grad = ctx.needs_input_grad[2]
    dq, dk, dtheta = torch.ops.ribkernels.dcs_mask_apply_backward(
        grad_qm.to(q.dtype), grad_km.to(q.dtype), q, k, theta, mask, seed, ctx.offset, ctx.tau, theta_grad)
    return dq, dk, (dtheta if theta_grad else None), None, None, None


@assume_constant_result
def cpu_prepass_available() -> bool:
    """Whether ``ribkernels._C`` is loaded and has the CPU pre-pass (a stale build may lack it)."""
    if "available" not in _STATE:
        from .. import _extension as _ext

        lib = _ext.ops()
        available = lib is not None and hasattr(lib, "dcs_mask_apply")
        if available:
            name = "ribkernels::dcs_mask_apply"
            torch.library.register_fake(name, _fake_apply)
            torch.library.register_fake(name + "_backward", _fake_apply_backward)
            torch.library.register_autograd(name, _backward, setup_context=_setup_context)
        _STATE["available"] = available
    return _STATE["available"]


def draw_seed_tensor() -> torch.Tensor:
    """A 0-d int64 seed in ``[0, 2**63 - 1)`` from torch's global CPU generator (no ``.item()``: traceable)."""
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)


def masked_qk_seeded(q: torch.Tensor, k: torch.Tensor, mask_logits: torch.Tensor, seed: Optional[SeedLike],
                     offset: int, tau: float) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(q⊙M, k⊙M, q_nan_count)`` for the contract-v2 training mask of ``[B, H, N, D]`` q.

    seed: int or 0-d int64 tensor; None draws one from torch's generator (CPU op) — without the C++
    op, None falls back to ``torch.rand`` noise. ``q_nan_count`` (0-d int64, NaN entries of q) comes
    from the C++ op only (None otherwise). Gradients flow to q, k and θ (straight-through, docs/design.md §2).
    """
    from .mask import seeded_mask, torch_logistic_noise, dcs_mask

    if q.device.type == "cpu" and cpu_prepass_available():
        if seed is None:
            seed = draw_seed_tensor()
        elif not isinstance(seed, torch.Tensor):
            seed = torch.tensor(seed, dtype=torch.int64)
        mask_logits_f32 = mask_logits.to(torch.float32).expand(q.shape)
        if mask_logits_f32.stride(-1) not in (0, 1):
            mask_logits_f32 = mask_logits_f32.contiguous()
        qm, km, _, nan_count = torch.ops.ribkernels.dcs_mask_apply(q, k, mask_logits_f32, seed.cpu(), int(offset),
                                                                   float(tau))
        return qm, km, nan_count
    if seed is None:
        acc = torch.promote_types(q.dtype, torch.float32)
        noise = torch_logistic_noise(q.shape, device=q.device)
        mask = dcs_mask(mask_logits.to(acc), tau=tau, noise=noise, check_nan=False)
    else:
        mask = seeded_mask(mask_logits, q.shape, seed, tau=tau, offset=offset)
    return apply_mask(q, k, mask) + (None,)


def apply_mask(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(q⊙M, k⊙M)`` in q's dtype, multiplied in (at least) float32 so the gradient reaching the
    mask, and so θ, is accumulated in float32 even for half-precision q and k."""
    mask = mask.to(torch.promote_types(q.dtype, torch.float32))
    return (q.to(mask.dtype) * mask).to(q.dtype), (k.to(mask.dtype) * mask).to(k.dtype)
