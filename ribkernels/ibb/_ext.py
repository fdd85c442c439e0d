"""The extension loader moved to :mod:`ribkernels._extension` (it serves every room); this name is the very
same module, kept for code that imported it."""
import sys

from .. import _extension

sys.modules[__name__] = _extension
