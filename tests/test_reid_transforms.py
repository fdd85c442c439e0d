"""Train/test transforms: shapes, normalisation, determinism of the test transform."""
import numpy as np
import pytest
import torch
from PIL import Image

from ribkernels.reid import build_transforms


def test_shapes_and_normalisation():
    img = Image.fromarray(np.full((37, 19, 3), 255, np.uint8))
    te = build_transforms(32, 16, is_train=False)
    x = te(img)
    assert x.shape == (3, 32, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.ones(3, 32, 16))  # (1 - 0.5) / 0.5
    tr = build_transforms(32, 16, is_train=True, re_prob=1.0)
    torch.manual_seed(0)
    y = tr(img)
    assert y.shape == (3, 32, 16)
    assert not torch.equal(y, x)  # padding zeros and/or erasing changed something
    with pytest.raises(ValueError, match="height"):
        build_transforms(0, 16)
    with pytest.raises(ValueError, match="re_prob"):
        build_transforms(32, 16, re_prob=2.0)
