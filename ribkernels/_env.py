"""Every ``RIBKERNELS_*`` environment variable: its name, meaning and default, in one table, and the one
accessor that reads them (:func:`get`, :func:`is_set`; :func:`cache_dir` for the cache folder).

The values are read at each call (never cached at import), so a test or a user can change them in a
running process. This module imports nothing but the standard library: ``setup.py`` loads it by path
before anything is built. :func:`markdown` renders the table as ``docs/environment.md`` (a test checks
the two match).
"""
import os
from typing import NamedTuple, Optional

__all__ = ["EnvVar", "VARIABLES", "get", "is_set", "cache_dir", "markdown"]


class EnvVar(NamedTuple):
    name: str
    default: Optional[str]  # the value used when the variable is not set (None: unset means off)
    meaning: str  # one line for the docs table
    read_by: str  # where it is read: the module, setup.py, or the tests


VARIABLES = (
    EnvVar("RIBKERNELS_CACHE", None,
           "base folder of the caches: the synthetic dataset, image checks, the measured DCS backend choice "
           "(unset: `~/.cache/ribkernels`)", "ribkernels (reid, dcs.backend_choice)"),
    EnvVar("RIBKERNELS_DCS_AUTOTUNE_BACKEND", "1",
           "`0` (or off/false/no): `dcs_impl=\"auto\"` uses the static rule, no timing and no cache file; "
           "`1`: measure and cache the fastest backend per shape", "ribkernels.dcs.backend_choice"),
    EnvVar("RIBKERNELS_DCS_AUTOTUNE", "1",
           "`0`: no autotuning of the Triton block sizes on GPU (the first shipped config); read at each call",
           "ribkernels.dcs.triton.launch"),
    EnvVar("RIBKERNELS_DCS_BACKWARD", "auto",
           "deprecated: the Triton backward is one deterministic path; `fused` / `split` / `auto` are accepted "
           "and ignored with a DeprecationWarning, anything else is an error", "ribkernels.dcs.triton.launch"),
    EnvVar("RIBKERNELS_DEBUG", None,
           "`1`: the `ribkernels` commands show the traceback of an error instead of one line",
           "ribkernels.cli"),
    EnvVar("RIBKERNELS_NO_EXT", None,
           "`1`: never load the C++/CUDA extension (eager PyTorch only, no warning); for `setup.py`: build no "
           "extension", "ribkernels._extension, setup.py"),
    EnvVar("RIBKERNELS_NO_AOT", None, "`1`: do not load the ahead-of-time built extension",
           "ribkernels._extension"),
    EnvVar("RIBKERNELS_NO_JIT", None, "`1`: do not JIT-build the extension when no ahead-of-time build loads",
           "ribkernels._extension"),
    EnvVar("RIBKERNELS_JIT_VERBOSE", None, "`1`: show the compiler's commands and output of the JIT build",
           "ribkernels._extension"),
    EnvVar("RIBKERNELS_NO_CUDA", None, "`1`: `setup.py` builds the CPU part of the extension only",
           "setup.py"),
    EnvVar("RIBKERNELS_TEST_JIT", None,
           "`1`: the tests also prove the JIT build of the extension (~1-2 min; CI sets it)", "tests"),
)
_BY_NAME = {v.name: v for v in VARIABLES}


def _entry(name: str) -> EnvVar:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a declared ribkernels environment variable; add it to "
                       f"ribkernels/_env.py VARIABLES (known: {sorted(_BY_NAME)})") from None


def get(name: str) -> Optional[str]:
    """The value of the declared variable ``name`` now, else its default (None: unset, no default)."""
    return os.environ.get(name, _entry(name).default)


def is_set(name: str) -> bool:
    """Whether the declared switch ``name`` is ``1`` now."""
    return get(name) == "1"


def cache_dir() -> str:
    """``$RIBKERNELS_CACHE``, else ``~/.cache/ribkernels`` (the package's cache convention)."""
    return get("RIBKERNELS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ribkernels")


def markdown() -> str:
    """``docs/environment.md``: the table above as markdown."""
    rows = ["# Environment variables", "",
            "Every `RIBKERNELS_*` variable the package, `setup.py` and the tests read, generated from "
            "`ribkernels/_env.py` (`python -c \"from ribkernels._env import markdown; print(markdown(), end='')\" > "
            "docs/environment.md`; a test checks they match). "
            "Values are read at each use.", "",
            "| variable | default | effect | read by |", "|---|---|---|---|"]
    for v in VARIABLES:
        rows.append(f"| `{v.name}` | {'`' + v.default + '`' if v.default is not None else 'unset'} | {v.meaning} "
                    f"| {v.read_by} |")
    rows += ["", "Also `TRITON_INTERPRET=1` (Triton's own switch): run the Triton kernels on CPU in Triton's "
             "interpreter (tests; slow)."]
    return "\n".join(rows) + "\n"
