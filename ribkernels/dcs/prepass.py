"""Deprecated alias of :mod:`ribkernels.dcs.cpu_prepass` (the C++ CPU mask pre-pass glue),
kept for one release: ``import ribkernels.dcs.prepass`` gives
that very module (monkeypatching either name patches both)."""
import sys
import warnings

from . import cpu_prepass as _new

warnings.warn("ribkernels.dcs.prepass is renamed ribkernels.dcs.cpu_prepass", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _new
