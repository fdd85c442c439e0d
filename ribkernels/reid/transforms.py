"""Re-ID image transforms (TransReID's recipe, docs/training.md): resize, flip, pad + random crop, normalise, random
erasing (timm's ``RandomErasing``, pixel mode). TransReID resizes training images bicubic and test
images with torchvision's default, bilinear: ``test_interpolation``."""
from __future__ import annotations

from typing import Sequence, Tuple

import torchvision.transforms as T
from timm.data.random_erasing import RandomErasing

__all__ = ["build_transforms", "IMAGENET_MEAN", "IMAGENET_STD", "TRANSREID_MEAN", "TRANSREID_STD",
           "INTERPOLATIONS"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TRANSREID_MEAN, TRANSREID_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # TransReID's ViT configs
INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def build_transforms(height: int = 256, width: int = 128, is_train: bool = True, *, flip_prob: float = 0.5,
                     padding: int = 10, re_prob: float = 0.5, mean: Sequence[float] = TRANSREID_MEAN,
                     std: Sequence[float] = TRANSREID_STD, test_interpolation: str = "bicubic") -> T.Compose:
    """PIL image → normalised float tensor [3, height, width].

    train: Resize (bicubic) → RandomHorizontalFlip(flip_prob) → Pad(padding) → RandomCrop → ToTensor
    → Normalize → RandomErasing(re_prob, pixel mode, one box); test: Resize (``test_interpolation``:
    ``"bilinear"`` is TransReID's, the configs' default ``data.test_interpolation``; this function keeps
    ``"bicubic"``, its earlier behaviour) → ToTensor → Normalize."""
    if height < 1 or width < 1:
        raise ValueError(f"height, width: expected positive sizes, got {height}x{width}")
    if test_interpolation not in INTERPOLATIONS:
        raise ValueError(f"test_interpolation: expected one of {sorted(INTERPOLATIONS)}, got {test_interpolation!r}")
    if not (0.0 <= flip_prob <= 1.0 and 0.0 <= re_prob <= 1.0) or padding < 0:
        raise ValueError(f"flip_prob/re_prob in [0, 1] and padding >= 0 expected, got {flip_prob}, {re_prob}, {padding}")
    size: Tuple[int, int] = (height, width)
    resize = T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)
    norm = [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if not is_train:
        return T.Compose([T.Resize(size, interpolation=INTERPOLATIONS[test_interpolation])] + norm)
    ops = [resize, T.RandomHorizontalFlip(p=flip_prob)]
    if padding > 0:
        ops += [T.Pad(padding), T.RandomCrop(size)]
    ops += norm
    if re_prob > 0:
        ops.append(RandomErasing(probability=re_prob, mode="pixel", max_count=1, device="cpu"))
    return T.Compose(ops)
