"""Deprecated alias of :mod:`ribkernels.dcs.backends` (the eager and SDPA backends of DCS-Attention),
kept for one release: ``import ribkernels.dcs.reference`` gives
that very module (monkeypatching either name patches both)."""
import sys
import warnings

from . import backends as _new

warnings.warn("ribkernels.dcs.reference is renamed ribkernels.dcs.backends", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _new
