"""Test setup: Triton runs in interpreter mode when there is no CUDA device.

TRITON_INTERPRET must be set before any ``@triton.jit`` function is defined, so it happens here,
before the package is imported by any test module.
"""
import os

try:  # decide without importing triton first
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# impl="auto" would time sdpa against eager on each new input key (and write the user's cache file):
# the suite keeps the static rule; tests/test_dcs_backend_choice.py turns the measured choice on.
os.environ.setdefault("RIBKERNELS_DCS_AUTOTUNE_BACKEND", "0")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Each test gets its own deterministic seed (derived from its name) so inputs differ between
    tests but a failure reproduces."""
    import zlib

    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF)
    yield
