"""``dcs_attention``: the public entry point and the backend dispatch (SPEC §2).

A backend is a pair of functions: ``why_not(q, k, v, mask_logits, noise) -> list[str]`` (reasons it
cannot take this input; empty means it can) and ``run(q, k, v, mask_logits, *, tau, training, seed,
offset, noise, scale)``. ``impl="auto"`` takes Triton on CUDA when it can, else SDPA. Asking for a backend
that cannot run an input raises one error listing every backend's reasons.
"""
from typing import Callable, Dict, List, NamedTuple, Optional, Union

import torch

from . import checks
from .philox import check_offset, check_seed
from .reference import dcs_attention_eager, dcs_attention_sdpa


class Backend(NamedTuple):
    why_not: Callable[..., List[str]]
    run: Callable[..., torch.Tensor]


def _always(*args) -> List[str]:
    return []


def _triton_why_not(q, k, v, mask_logits, noise) -> List[str]:
    try:
        from .triton import backend
    except Exception as exc:  # triton missing or broken: say so, never crash the dispatch
        return [f"the Triton backend cannot be imported ({type(exc).__name__}: {exc})"]
    return backend.why_not(q, k, v, mask_logits, noise)


def _triton_run(q, k, v, mask_logits, **kwargs):
    from .triton.backend import dcs_attention_triton

    return dcs_attention_triton(q, k, v, mask_logits, **kwargs)


BACKENDS: Dict[str, Backend] = {
    "triton": Backend(_triton_why_not, _triton_run),
    "sdpa": Backend(_always, dcs_attention_sdpa),
    "eager": Backend(_always, dcs_attention_eager),
}


def available_backends(q, k, v, mask_logits, noise=None) -> Dict[str, List[str]]:
    """For each backend, the reasons it cannot run this input (an empty list: it can)."""
    return {name: b.why_not(q, k, v, mask_logits, noise) for name, b in BACKENDS.items()}


def select_backend(impl: str, q, k, v, mask_logits, noise) -> str:
    if impl == "auto":
        if q.is_cuda and not BACKENDS["triton"].why_not(q, k, v, mask_logits, noise):
            return "triton"
        return "sdpa"
    if impl not in BACKENDS:
        raise ValueError(f"impl must be one of {['auto', *BACKENDS]}, got {impl!r}")
    if not BACKENDS[impl].why_not(q, k, v, mask_logits, noise):
        return impl
    reasons = available_backends(q, k, v, mask_logits, noise)
    lines = [f"  {name}: " + ("; ".join(r) if r else "can run it") for name, r in reasons.items()]
    raise ValueError(f"dcs_attention: impl={impl!r} cannot run q with {checks.describe(q)} "
                     f"(mask_logits: {checks.describe(mask_logits)}). Backends:\n" + "\n".join(lines))


def dcs_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    tau: float = 1.0,
    training: bool = True,
    seed: Optional[Union[int, torch.Tensor]] = None,
    offset: int = 0,
    noise: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    impl: str = "auto",
    check_nan: Optional[bool] = None,
) -> torch.Tensor:
    """DCS-Attention: ``softmax(scale · (q⊙M)(k⊙M)ᵀ) v`` with the binary Gumbel channel mask M.

    q, k, v: ``[B, H, N, D]``. mask_logits θ: broadcastable to ``[B, H, N, D]`` (``[B, H, N, D]``
    per token, ``[1, H, 1, D]`` static per channel, ...). noise: explicit logistic noise,
    broadcastable like θ, replacing the RNG (``M = 1[θ + noise > 0]``); else, with ``seed`` (an
    integer in ``[0, 2**63)``) and ``offset`` (``>= 0``, in Philox calls), noise contract v2: the same
    mask in every backend, ``M = 1[u > sigmoid(−θ)]`` (seed may be a 0-d int64 tensor); else a seed
    tensor drawn from torch's global generator (Triton; the C++ CPU pre-pass) or ``torch.rand`` noise
    (PyTorch backends without it), so ``torch.manual_seed`` makes runs reproducible. training=False uses ``M = 1[θ > 0]`` (no noise, no gradient to θ).
    scale defaults to ``D ** -0.5``. impl: ``"auto" | "triton" | "sdpa" | "eager"``.
    check_nan: check θ and noise for NaN (a NaN logit would silently drop its channel). Default: on
    CPU tensors (cheap), off on CUDA (it would sync); True/False forces it. Skipped under
    torch.compile / torch.export tracing (data-dependent).
    Returns ``[B, H, N, D]`` in q's dtype.
    """
    checks.check_qkv(q, k, v)
    checks.check_mask_inputs(q, mask_logits, noise)
    checks.check_tau(tau)
    checks.check_scale(scale)
    if seed is not None:
        seed = check_seed(seed)
    offset = check_offset(offset)
    if checks.want_nan_check(check_nan, q):
        checks.check_no_nan("mask_logits", mask_logits)
        if noise is not None and training:
            checks.check_no_nan("noise", noise)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    name = select_backend(impl, q, k, v, mask_logits, noise)
    return BACKENDS[name].run(q, k, v, mask_logits, tau=float(tau), training=bool(training), seed=seed,
                              offset=offset, noise=noise if training else None, scale=float(scale))
