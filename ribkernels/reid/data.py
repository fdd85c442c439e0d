"""Deprecated alias of :mod:`ribkernels.reid.image_dataset` (ImageDataset and read_image),
kept for one release: ``import ribkernels.reid.data`` gives
that very module (monkeypatching either name patches both)."""
import sys
import warnings

from . import image_dataset as _new

warnings.warn("ribkernels.reid.data is renamed ribkernels.reid.image_dataset", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _new
