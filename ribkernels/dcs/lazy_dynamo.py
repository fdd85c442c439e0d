"""``assume_constant_result`` without importing ``torch._dynamo`` at ``import ribkernels``."""
import sys

import torch


def assume_constant_result(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo`` (≈1-2 s, and
    Triton with it) at ``import ribkernels``: that decorator only marks ``fn`` for dynamo, which reads
    the mark when it traces a call, so the mark is set directly while dynamo is not loaded yet
    (tests/test_import_time.py checks that both mark a function the same way)."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn
