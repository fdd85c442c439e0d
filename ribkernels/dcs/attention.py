"""``dcs_attention``: the public entry point and the backend dispatch (docs/design.md §2).

A backend is a pair of functions: ``why_not(q, k, v, mask_logits, noise) -> list[str]`` (reasons it
cannot take this input; empty means it can) and ``run(q, k, v, mask_logits, *, tau, training, seed,
offset, noise, scale)``. Besides the names in :data:`BACKENDS`, ``"sdpa:flash"``, ``"sdpa:cudnn"``,
``"sdpa:efficient"`` and ``"sdpa:math"`` run the sdpa backend with one SDPA kernel forced.
``impl="auto"`` takes the fastest backend measured for the input's key (``backend_choice``); where it
may not measure and nothing is cached, the static rule: Triton on CUDA when it can, else SDPA. Asking
for a backend that cannot run an input raises one error listing every backend's reasons.
"""
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch

from . import backend_choice, checks
from .philox import check_offset, check_seed
from .backends import dcs_attention_eager, dcs_attention_sdpa
from .triton import backend as triton_backend  # imports Triton only when its functions run


class Backend(NamedTuple):
    why_not: Callable[..., List[str]]
    run: Callable[..., torch.Tensor]


def _always(*args) -> List[str]:
    return []


BACKENDS: Dict[str, Backend] = {
    "triton": Backend(triton_backend.why_not, triton_backend.dcs_attention_triton),
    "sdpa": Backend(_always, dcs_attention_sdpa),
    "eager": Backend(_always, dcs_attention_eager),
}


logger = logging.getLogger(__name__)

#: ``impl`` names that run the sdpa backend with one SDPA kernel forced (``auto`` times them on CUDA).
SDPA_KERNELS: Dict[str, str] = {"sdpa:flash": "FLASH_ATTENTION", "sdpa:cudnn": "CUDNN_ATTENTION",
                                "sdpa:efficient": "EFFICIENT_ATTENTION", "sdpa:math": "MATH"}


def _sdpa_kernel_enum(name: str):
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, SDPA_KERNELS[name], None)


def known_impls() -> Tuple[str, ...]:
    """Every backend name ``impl`` may take besides ``"auto"``."""
    return (*BACKENDS, *SDPA_KERNELS)


def backend_why_not(name: str, q, k, v, mask_logits, noise) -> List[str]:
    """Reasons backend ``name`` (a :data:`BACKENDS` name or an ``"sdpa:<kernel>"`` name) cannot run
    this input. A forced SDPA kernel's own limits show only when it runs (PyTorch raises then)."""
    if name in SDPA_KERNELS:
        reasons = BACKENDS["sdpa"].why_not(q, k, v, mask_logits, noise)
        if _sdpa_kernel_enum(name) is None:
            reasons = reasons + [f"this torch {torch.__version__} has no SDPA kernel {SDPA_KERNELS[name]}"]
        return reasons
    return BACKENDS[name].why_not(q, k, v, mask_logits, noise)


def run_backend(name: str, q, k, v, mask_logits, **kwargs) -> torch.Tensor:
    """Run backend ``name`` on validated inputs (``kwargs`` as ``Backend.run`` takes them)."""
    if name in SDPA_KERNELS:
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([_sdpa_kernel_enum(name)]):  # the backward follows the forward's kernel
            return BACKENDS["sdpa"].run(q, k, v, mask_logits, **kwargs)
    return BACKENDS[name].run(q, k, v, mask_logits, **kwargs)


def static_choice(q, k, v, mask_logits, noise) -> str:
    """The rule used where nothing is measured or cached: Triton on CUDA when it can, else sdpa."""
    if q.is_cuda and not BACKENDS["triton"].why_not(q, k, v, mask_logits, noise):
        return "triton"
    return "sdpa"


def auto_candidates(q, k, v, mask_logits, noise) -> List[str]:
    """The backends ``auto`` times for this input, the static rule's first: every :data:`BACKENDS`
    entry that can run it, with sdpa split into one entry per SDPA kernel on CUDA. On CPU the Triton
    backends (the interpreter, a debugging tool) are left out."""
    names: List[str] = []
    for name, backend in BACKENDS.items():
        if (not q.is_cuda and name.startswith("triton")) or backend.why_not(q, k, v, mask_logits, noise):
            continue
        if name == "sdpa" and q.is_cuda:
            names += [n for n in SDPA_KERNELS if _sdpa_kernel_enum(n) is not None]
        else:
            names.append(name)
    static = static_choice(q, k, v, mask_logits, noise)
    return sorted(names, key=lambda n: n != static)


def _needs_grad(q, k, v, mask_logits) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, mask_logits))


def _measure_choice(key, q, k, v, mask_logits, noise, *, training: bool, grad: bool,
                    call: dict) -> Optional[backend_choice.Record]:
    """Time every candidate on detached copies of the inputs (forward + ``autograd.grad`` when ``grad``:
    nothing reaches the caller's ``.grad``), inside ``fork_rng`` so the caller's RNG stream is as if
    nothing ran; remember and return the record (None when no candidate ran)."""
    names = auto_candidates(q, k, v, mask_logits, noise)
    if not names:
        return None
    args = [t.detach().requires_grad_(grad and t.requires_grad) for t in (q, k, v, mask_logits)]
    leaves = [t for t in args if t.requires_grad]
    grad_out = torch.ones_like(q) if grad else None
    kwargs = dict(call, training=bool(training), noise=noise.detach() if (training and noise is not None) else None)

    def make(name):
        def once():
            out = run_backend(name, *args, **kwargs)
            if grad:
                torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
        return once

    def sync():
        if q.is_cuda:
            torch.cuda.synchronize(q.device)

    devices = [q.device] if q.is_cuda else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings(), \
            (torch.enable_grad() if grad else torch.no_grad()):
        warnings.simplefilter("ignore")  # a forced SDPA kernel's "not used because ..." warnings
        choice, timings, failed = backend_choice.measure(
            {name: make(name) for name in names}, sync,
            warmup=backend_choice.WARMUP_CUDA if q.is_cuda else backend_choice.WARMUP)
    if choice is None:
        return None
    rec = backend_choice.Record(choice, timings, failed)
    backend_choice.store(key, rec, known_impls())
    logger.info("dcs_attention(impl='auto') chose %s for %s (median ms: %s%s)", choice, backend_choice.key_str(key),
                ", ".join(f"{n} {t:.3g}" for n, t in timings.items()),
                "".join(f"; {n} failed: {why}" for n, why in failed.items()))
    return rec


def choose_auto(q, k, v, mask_logits, noise, *, training: bool, measure: bool = True,
                call: Optional[dict] = None) -> Tuple[str, str]:
    """``(backend, source)`` for ``impl="auto"``; source is ``"measured"``, ``"cache file"``,
    ``"cached"`` (under tracing) or ``"static rule (<why>)"``. Measures (when ``measure`` and allowed)
    on the first call for a key; under tracing only the cached winner or the static rule."""
    grad = _needs_grad(q, k, v, mask_logits)
    tracing = checks.is_tracing()
    if not tracing:
        if not backend_choice.enabled():
            return static_choice(q, k, v, mask_logits, noise), f"static rule ({backend_choice.ENV_VAR}=0)"
        exact = (q.device, q.dtype, q.shape, mask_logits.shape, None if noise is None or not training else noise.shape,
                 bool(training), grad, torch.get_num_threads())
        hit = backend_choice.FAST.get(exact)  # a choice already validated for these exact metadata
        if hit is not None:
            return hit
    key = backend_choice.make_key(q, mask_logits, noise, training=training, grad=grad)
    known = known_impls()
    static = static_choice(q, k, v, mask_logits, noise)
    if tracing:
        name = backend_choice.cached_choice(key, known)  # read at trace time, a constant in the graph
        if name and name in auto_candidates(q, k, v, mask_logits, noise):
            return name, "cached"
        return static, "static rule (tracing, nothing cached)"
    rec = backend_choice.cached(key, known)
    if rec is None or rec.choice not in auto_candidates(q, k, v, mask_logits, noise):
        why = backend_choice.why_no_timing(q)
        if why is None and not measure:
            why = "not measured yet"
        if why is not None:
            return static, f"static rule ({why})"
        if call is None:
            call = dict(tau=1.0, seed=None, offset=0, scale=q.shape[-1] ** -0.5)
        rec = _measure_choice(key, q, k, v, mask_logits, noise, training=training, grad=grad, call=call)
        if rec is None:
            return static, "static rule (no candidate ran)"
    backend_choice.remember_fast(exact, (rec.choice, rec.source))
    return rec.choice, rec.source


@dataclass
class BackendReport:
    """What ``available_backends(..., report=True)`` returns: ``reasons`` (backend -> why it cannot run
    the input, as without report), the ``key`` ``auto`` files the input under, the ``choice`` it
    makes and its ``source``, and the median ms per backend (``timings_ms``) / failures it chose from."""

    reasons: Dict[str, List[str]]
    key: str
    choice: str
    source: str
    timings_ms: Dict[str, float] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)


def available_backends(q, k, v, mask_logits, noise=None, *, report: bool = False, training: bool = True,
                       measure: bool = False):
    """For each backend, the reasons it cannot run this input (an empty list: it can).

    report=True returns a :class:`BackendReport` instead: also the choice ``impl="auto"`` makes for
    this input in mode ``training`` (gradients needed when any input requires grad), where it comes
    from and the cached timings; ``measure=True`` runs the timing now if nothing is cached."""
    reasons = {name: b.why_not(q, k, v, mask_logits, noise) for name, b in BACKENDS.items()}
    if not report:
        return reasons
    checks.check_qkv(q, k, v)
    checks.check_mask_inputs(q, mask_logits, noise)
    choice, source = choose_auto(q, k, v, mask_logits, noise, training=training, measure=measure)
    key = backend_choice.make_key(q, mask_logits, noise, training=training,
                                  grad=_needs_grad(q, k, v, mask_logits))
    rec = backend_choice.cached(key, known_impls())
    return BackendReport(reasons, backend_choice.key_str(key), choice, source,
                         dict(rec.timings_ms) if rec else {}, dict(rec.failed) if rec else {})


def select_backend(impl: str, q, k, v, mask_logits, noise) -> str:
    """The backend ``impl`` names for this input; ``"auto"``: the cached winner or the static rule (no
    timing here: :func:`dcs_attention` measures)."""
    if impl == "auto":
        return choose_auto(q, k, v, mask_logits, noise, training=True, measure=False)[0]
    if impl not in BACKENDS and impl not in SDPA_KERNELS:
        raise ValueError(f"impl must be one of {['auto', *known_impls()]}, got {impl!r}")
    if not backend_why_not(impl, q, k, v, mask_logits, noise):
        return impl
    reasons = available_backends(q, k, v, mask_logits, noise)
    if impl in SDPA_KERNELS:
        reasons[impl] = backend_why_not(impl, q, k, v, mask_logits, noise)
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
    (PyTorch backends without it), so ``torch.manual_seed`` makes runs reproducible.
    training=False uses ``M = 1[θ > 0]`` (no noise, no gradient to θ).
    scale defaults to ``D ** -0.5``. impl: ``"auto" | "triton" | "sdpa" | "eager"``, or
    ``"sdpa:flash" | "sdpa:cudnn" | "sdpa:efficient" | "sdpa:math"`` (sdpa with that SDPA kernel
    forced). ``"auto"``: the backend measured fastest for this input's key on its first call (see
    ``ribkernels.dcs.backend_choice``; the timing runs leave the RNG and the caller's ``.grad`` as
    they were, so the result equals the explicit ``impl`` it chose); never timed under tracing,
    CUDA-graph capture or deterministic algorithms, nor with ``RIBKERNELS_DCS_AUTOTUNE_BACKEND=0``:
    then the cached winner, else Triton on CUDA when it can run the input, else sdpa.
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
    call = dict(tau=float(tau), seed=seed, offset=offset, scale=float(scale))
    if impl == "auto":
        name = choose_auto(q, k, v, mask_logits, noise, training=bool(training), call=call)[0]
    else:
        name = select_backend(impl, q, k, v, mask_logits, noise)
    return run_backend(name, q, k, v, mask_logits, training=bool(training), noise=noise if training else None,
                       **call)
