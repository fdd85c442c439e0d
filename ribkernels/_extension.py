"""Lazy access to the C++/CUDA extension ``ribkernels._C`` (ops under ``torch.ops.ribkernels``).

Nothing here runs at ``import ribkernels``: the first op that wants the extension calls
:func:`ops`, which, once per process:

1. imports the ahead-of-time build ``ribkernels._C`` (``pip install --no-build-isolation .`` / ``-e .``);
2. else JIT-builds the same sources with ``torch.utils.cpp_extension.load`` (ninja): the copy shipped
   inside the package (``ribkernels/csrc``, any install: wheel, sdist, ``pip install git+...``) or the
   source tree's ``csrc/``; the CUDA sources too when a GPU and a toolkit are present (for the visible
   GPU's architecture unless ``TORCH_CUDA_ARCH_LIST`` says otherwise). It prints one line when a build
   starts, a heartbeat every 30 s and the time it took; the result is cached under
   ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), so later processes load it in
   about a second;
3. else warns once, naming the command that fixes it, and returns ``None``: callers then use the
   eager PyTorch implementation.

It then registers the autograd formulas and fake (meta) kernels of the ops in Python
(``torch.library.register_autograd`` / ``register_fake``), so ``torch.compile`` can trace them.

Environment switches: ``RIBKERNELS_NO_EXT=1`` (never load it: eager only, no warning),
``RIBKERNELS_NO_AOT=1`` (skip step 1), ``RIBKERNELS_NO_JIT=1`` (skip step 2),
``RIBKERNELS_JIT_VERBOSE=1`` (show the compiler's commands and output).
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import List, Optional

import torch

from . import _env

_LOCK = threading.Lock()
_STATE: dict = {}  # "ops": namespace or None, "source": "aot" | "jit" | None, "reason": str, "build_dir"

_ON_LOAD: list = []  # callables run once the extension's ops exist (the IBB's autograd registrations)
_PACKAGE = Path(__file__).resolve().parent
# The sources: shipped inside the package (installed), else the source tree's csrc/ (checkout, -e).
CSRC_CANDIDATES = [_PACKAGE / "csrc", _PACKAGE.parent / "csrc"]
HEARTBEAT_S = 30.0


class ExtensionUnavailable(RuntimeError):
    """The JIT build cannot run here; the message names what is missing and the command that fixes it."""


def csrc_dir() -> Optional[Path]:
    """The folder of the extension's C++ sources (``*.cpp``), or None when no install carries them."""
    for folder in CSRC_CANDIDATES:
        if folder.is_dir() and any(folder.glob("*.cpp")):
            return folder
    return None


def _say(msg: str) -> None:
    print(f"ribkernels: {msg}", file=sys.stderr, flush=True)


def _load_aot() -> None:
    from ribkernels import _C  # noqa: F401  (loading the library registers the ops)


def _check_toolchain(cpp_extension) -> None:
    """Raise :class:`ExtensionUnavailable` naming the fix when the JIT build cannot start."""
    missing = []
    if not cpp_extension.is_ninja_available():
        missing.append("ninja (fix: pip install ninja)")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        missing.append(f"a C++ compiler ({cxx!r} not on PATH; fix: apt-get install g++ on Debian/Ubuntu, "
                       "or conda install -c conda-forge cxx-compiler)")
    if missing:
        raise ExtensionUnavailable("cannot JIT-build it: missing " + " and ".join(missing)
                                   + "; the next process builds it once they are installed")


def _is_built(build_dir: str, name: str, sources: List[str]) -> bool:
    """Whether the cached library is newer than the sources and this torch (else ninja rebuilds it)."""
    lib = os.path.join(build_dir, f"{name}.so")
    if not os.path.exists(lib):
        return False
    return os.path.getmtime(lib) >= max(os.path.getmtime(s) for s in sources + [torch.__file__])


def _load_jit() -> None:
    from torch.utils import cpp_extension

    csrc = csrc_dir()
    if csrc is None:
        raise ExtensionUnavailable(
            f"no C++ sources in {' or '.join(str(c) for c in CSRC_CANDIDATES)} (an install without them; "
            "fix: pip install --force-reinstall --no-deps ribkernels, from a wheel or source that has csrc/)")
    sources = sorted(str(p) for p in csrc.glob("*.cpp"))
    cuda_sources = sorted(str(p) for p in csrc.glob("*.cu"))
    with_cuda = bool(cuda_sources) and torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
    _check_toolchain(cpp_extension)
    # CPU-only and CUDA builds cached side by side: a machine that sometimes sees a GPU rebuilds neither.
    name = "ribkernels_C_cuda" if with_cuda else "ribkernels_C_cpu"
    all_sources = sources + (cuda_sources if with_cuda else [])
    verbose = _env.is_set("RIBKERNELS_JIT_VERBOSE")
    build_dir = cpp_extension._get_build_directory(name, verbose=False)
    _STATE["build_dir"] = build_dir
    building = not _is_built(build_dir, name, all_sources + [str(p) for p in csrc.glob("*.h")])
    done = threading.Event()
    start = time.monotonic()
    if building:
        _say(f"building the C++{'/CUDA' if with_cuda else ''} extension ribkernels._C from {csrc} "
             f"(first use; ~1-2 min{', several with CUDA' if with_cuda else ''}); cached in {build_dir}")

        def heartbeat():
            while not done.wait(HEARTBEAT_S):
                _say(f"still building ribkernels._C ({time.monotonic() - start:.0f} s)")

        threading.Thread(target=heartbeat, name="ribkernels-jit-heartbeat", daemon=True).start()
    try:
        cpp_extension.load(
            name=name,
            sources=all_sources,
            extra_include_paths=[str(csrc)],
            extra_cflags=["-O3"] + (["-DWITH_CUDA"] if with_cuda else []),
            extra_cuda_cflags=["-O3", "-DWITH_CUDA"],
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as exc:
        if building:
            raise RuntimeError("the build failed (rerun with RIBKERNELS_JIT_VERBOSE=1 to see the compiler "
                               f"output): {str(exc).strip()[:250]}") from exc
        raise
    finally:
        done.set()
    if building:
        _say(f"built ribkernels._C in {time.monotonic() - start:.0f} s")


FIX_HINT = ("to get it: a C++ compiler and ninja (pip install ninja) let the next process JIT-build it, "
            "or build it ahead of time with pip install --no-build-isolation . in the source tree")


def ops():
    """``torch.ops.ribkernels`` with the extension loaded, or ``None`` when it is unavailable."""
    if "ops" in _STATE:
        return _STATE["ops"]
    with _LOCK:
        if "ops" in _STATE:
            return _STATE["ops"]
        source, errors = None, []
        if _env.is_set("RIBKERNELS_NO_EXT"):
            errors.append("RIBKERNELS_NO_EXT=1")
        else:
            steps = [("aot", _load_aot, "RIBKERNELS_NO_AOT"), ("jit", _load_jit, "RIBKERNELS_NO_JIT")]
            for name, step, switch in steps:
                if _env.is_set(switch):
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
                    + "); the IBB ops and the CPU mask pre-pass use the slower eager PyTorch "
                    "implementation; " + FIX_HINT,
                    RuntimeWarning,
                    stacklevel=3,
                )
        if source is not None:
            for hook in _ON_LOAD:
                hook()
        _STATE.update(ops=torch.ops.ribkernels if source else None, source=source,
                      reason="; ".join(errors))
        return _STATE["ops"]


def on_load(hook) -> None:
    """Run ``hook()`` once the extension is loaded (now, if it already is): a room registers the autograd
    formulas and fake kernels of its ops here, so this loader imports no room."""
    with _LOCK:
        _ON_LOAD.append(hook)
        loaded = _STATE.get("ops") is not None
    if loaded:
        hook()


def status() -> dict:
    """Where the extension came from (``"aot"``, ``"jit"`` or ``None``), which devices it serves and,
    when absent, why. Loads it if that has not happened yet."""
    lib = ops()
    devices = []
    if lib is not None:
        devices = ["cpu"] + (["cuda"] if lib.cuda_enabled() else [])
    out = {"source": _STATE["source"], "devices": devices, "reason": _STATE["reason"]}
    if _STATE.get("source") == "jit":
        out["build_dir"] = _STATE.get("build_dir")
    return out


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
