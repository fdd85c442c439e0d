"""The Triton interpreter's ``tensor.__index__`` under NumPy >= 2.4 (CPU, ``TRITON_INTERPRET=1`` only).

The interpreter holds a scalar kernel argument (``N``, ``H``, ...) as a 1-element 1-D NumPy array.
In triton 3.6 (fixed by 3.8) its ``tensor.__index__`` is ``int(handle.data)``, which NumPy >= 2.4
refuses ("only 0-dimensional arrays can be converted to Python scalars"): every
``for start in range(0, N, BLOCK)`` over a kernel argument then fails. :func:`fix_tensor_index`
probes that behaviour and, only where it fails, wraps the interpreter's tensor patcher so that
``__index__`` reads the one element. Compiled kernels (GPU) never go through the interpreter.
"""
import operator


def _index_fails(interp, tl, np) -> bool:
    """True when the interpreter's ``__index__`` of a scalar (1-element) tensor raises TypeError."""
    scope = interp._LangPatchScope()
    try:
        interp._patch_lang_tensor(tl.core.tensor, scope)
        scalar = tl.core.tensor(interp.TensorHandle(np.array([3], dtype=np.int32), tl.int32), tl.int32)
        try:
            operator.index(scalar)
        except TypeError:
            return True
        return False
    finally:
        scope.restore()


def fix_tensor_index() -> bool:
    """Make the interpreter's scalar ``__index__`` work where it fails; True when the fix is in place.
    A no-op (False) where ``__index__`` works, or where the interpreter's internals are not the
    ones probed here (another Triton layout: left alone)."""
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter as interp

        if getattr(interp._patch_lang_tensor, "ribkernels_index_fix", False):
            return True
        if not _index_fails(interp, tl, np):
            return False
    except (ImportError, AttributeError, TypeError):
        return False
    patch_tensor = interp._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor.ribkernels_index_fix = True
    interp._patch_lang_tensor = patch_lang_tensor
    return True
