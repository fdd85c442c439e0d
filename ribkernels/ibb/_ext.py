"""Lazy access to the C++/CUDA extension ``ribkernels._C`` (ops under ``torch.ops.ribkernels``).

Nothing here runs at ``import ribkernels``: the first op that wants the extension calls
:func:`ops`, which, once per process:

1. imports the ahead-of-time build ``ribkernels._C`` (``pip install -e .``);
2. else JIT-builds the same sources from ``csrc/`` with ``torch.utils.cpp_extension.load`` (ninja;
   the CUDA sources too when a GPU and a toolkit are present);
3. else warns once and returns ``None``: callers then use the eager PyTorch implementation.

It then registers the autograd formulas and fake (meta) kernels of the ops in Python
(``torch.library.register_autograd`` / ``register_fake``), so ``torch.compile`` can trace them.

Environment switches: ``RIBKERNELS_NO_EXT=1`` (never load it: eager only, no warning),
``RIBKERNELS_NO_AOT=1`` (skip step 1), ``RIBKERNELS_NO_JIT=1`` (skip step 2).
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch

_LOCK = threading.Lock()
_STATE: dict = {}  # "ops": namespace or None, "source": "aot" | "jit" | None, "reason": str

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def _load_aot() -> None:
    from ribkernels import _C  # noqa: F401  (loading the library registers the ops)


def _load_jit() -> None:
    from torch.utils import cpp_extension

    sources = sorted(str(p) for p in CSRC.glob("*.cpp"))
    if not sources:
        raise RuntimeError(f"no C++ sources under {CSRC}")
    cuda_sources = sorted(str(p) for p in CSRC.glob("*.cu"))
    with_cuda = bool(cuda_sources) and torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
    cpp_extension.load(
        name="ribkernels_C",
        sources=sources + (cuda_sources if with_cuda else []),
        extra_include_paths=[str(CSRC)],
        extra_cflags=["-O3"] + (["-DWITH_CUDA"] if with_cuda else []),
        extra_cuda_cflags=["-O3", "-DWITH_CUDA"],
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=False,
    )


def ops():
    """``torch.ops.ribkernels`` with the extension loaded, or ``None`` when it is unavailable."""
    if "ops" in _STATE:
        return _STATE["ops"]
    with _LOCK:
        if "ops" in _STATE:
            return _STATE["ops"]
        source, errors = None, []
        if os.environ.get("RIBKERNELS_NO_EXT") == "1":
            errors.append("RIBKERNELS_NO_EXT=1")
        else:
            steps = [("aot", _load_aot, "RIBKERNELS_NO_AOT"), ("jit", _load_jit, "RIBKERNELS_NO_JIT")]
            for name, step, switch in steps:
                if os.environ.get(switch) == "1":
                    errors.append(f"{name}: skipped ({switch}=1)")
                    continue
                try:
                    step()
                    source = name
                    break
                except Exception as exc:  # ImportError, compiler errors, missing toolkit...
                    errors.append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:300]}")
            if source is None:
                warnings.warn(
                    "ribkernels: the C++/CUDA extension ribkernels._C is unavailable ("
                    + "; ".join(errors)
                    + "); the IBB ops use the eager PyTorch implementation.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if source is not None:
            from . import _registrations

            _registrations.register()
        _STATE.update(ops=torch.ops.ribkernels if source else None, source=source,
                      reason="; ".join(errors))
        return _STATE["ops"]


def status() -> dict:
    """Where the extension came from (``"aot"``, ``"jit"`` or ``None``), which devices it serves and,
    when absent, why. Loads it if that has not happened yet."""
    lib = ops()
    devices = []
    if lib is not None:
        devices = ["cpu"] + (["cuda"] if lib.cuda_enabled() else [])
    return {"source": _STATE["source"], "devices": devices, "reason": _STATE["reason"]}


def supports(device: torch.device) -> bool:
    """Whether the extension is loaded and built for ``device``'s type."""
    lib = ops()
    if lib is None:
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        if "cuda" not in _STATE:
            _STATE["cuda"] = bool(lib.cuda_enabled())
        return _STATE["cuda"]
    return False
