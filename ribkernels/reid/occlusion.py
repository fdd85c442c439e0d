"""Occlusion stress test (the seed's "next check"): evaluate with query images whose body is covered
20/40/60/80% by a synthetic occluder, against the unoccluded gallery, and tabulate mAP / Rank-1.

``extract(images: list[PIL.Image], camids: np.ndarray) -> [n, dim]`` is any feature extractor;
:func:`feature_extractor` builds one from a Re-ID model and its test transform.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from .image_dataset import read_image
from .evaluation import evaluate

__all__ = ["add_occluder", "occlusion_stress_test", "format_occlusion_table", "feature_extractor", "BODY_BOX"]

# Fraction of the crop taken by the body in Market-style detections (x0, y0, x1, y1).
BODY_BOX = (0.15, 0.02, 0.85, 0.98)
MODES = ("bottom", "top", "side", "block", "scene", "confuser")


def add_occluder(img: Image.Image, fraction: float, *, seed: int = 0, mode: str = "bottom",
                 body_box: Sequence[float] = BODY_BOX) -> Image.Image:
    """A copy of ``img`` with a textured occluder covering ``fraction`` of the body box (relative
    coordinates ``body_box``). mode: ``"bottom"`` (a band from the feet up, like a car or bench,
    Occluded-Duke's common case), ``"top"``, ``"side"`` (a vertical band from a random side) or
    ``"block"`` (a rectangle of the body box's aspect at a random place inside it). The occluder's
    colour and texture come from ``seed``; ``fraction`` 0 returns an unchanged copy.
    The synthetic dataset's training occluder types: ``"scene"`` (a flat-coloured vehicle band from
    below with its stripe, a pole, or a block, the kind drawn from ``seed``, as the generator draws
    them) and ``"confuser"`` (a drawn person of a random other identity moved sideways until it covers
    the share of the body box closest to ``fraction``; a person covers at most about half of the box,
    so larger fractions saturate there)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: expected a value in [0, 1], got {fraction}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    img = img.convert("RGB").copy()
    if fraction == 0.0:
        return img
    w, h = img.size
    bx0, by0, bx1, by1 = body_box[0] * w, body_box[1] * h, body_box[2] * w, body_box[3] * h
    bw, bh = bx1 - bx0, by1 - by0
    rng = np.random.default_rng(seed)
    if mode in ("scene", "confuser"):
        return _training_like(img, fraction, rng, mode, (bx0, by0, bx1, by1))
    if mode == "bottom":
        box = (0, by1 - fraction * bh, w, h)
    elif mode == "top":
        box = (0, 0, w, by0 + fraction * bh)
    elif mode == "side":
        if rng.uniform() < 0.5:
            box = (0, 0, bx0 + fraction * bw, h)
        else:
            box = (bx1 - fraction * bw, 0, w, h)
    else:
        s = np.sqrt(fraction)
        ow, oh = s * bw, s * bh
        x0 = bx0 + rng.uniform(0, bw - ow)
        y0 = by0 + rng.uniform(0, bh - oh)
        box = (x0, y0, x0 + ow, y0 + oh)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    if x1 <= x0 or y1 <= y0:
        return img
    base = rng.integers(0, 256, size=3)
    tex = np.clip(base[None, None, :] + rng.normal(0, 18, size=(y1 - y0, x1 - x0, 3)), 0, 255).astype(np.uint8)
    img.paste(Image.fromarray(tex), (x0, y0))
    ImageDraw.Draw(img).rectangle([x0, y0, x1 - 1, y1 - 1], outline=tuple(int(v) for v in 255 - base))
    return img


def _training_like(img: Image.Image, fraction: float, rng: np.random.Generator, mode: str,
                   box: Tuple[float, float, float, float]) -> Image.Image:
    """``add_occluder``'s ``"scene"`` and ``"confuser"`` modes (``img`` is already a copy)."""
    from .synthetic import draw_person, footprint, hsv_color, random_identity, shift_array

    w, h = img.size
    bx0, by0, bx1, by1 = box
    bw, bh = bx1 - bx0, by1 - by0
    if mode == "confuser":
        other = random_identity(rng)
        mask, pix = footprint(lambda c, r: draw_person(c, other, r), img.size, rng)
        inside = np.zeros((h, w), bool)
        inside[int(round(by0)):int(round(by1)), int(round(bx0)):int(round(bx1))] = True
        area = max(int(inside.sum()), 1)
        dx = min(range(-w, w + 1), key=lambda d: (abs((shift_array(mask, 0, d) & inside).sum() / area - fraction), abs(d)))
        m = shift_array(mask, 0, dx)
        a = np.asarray(img).copy()
        a[m] = shift_array(pix, 0, dx)[m]
        return Image.fromarray(a)
    d = ImageDraw.Draw(img)
    col, kind = hsv_color(rng), int(rng.integers(3))
    if kind == 0:  # vehicle / bench band from below, with its stripe
        y = int(round(by1 - fraction * bh))
        d.rectangle([0, y, w, h], fill=col)
        d.rectangle([0, y, w, y + 3], fill=hsv_color(rng))
    elif kind == 1:  # pole: a full-height band
        pw = fraction * bw
        x0 = bx0 + rng.uniform(0, bw - pw)
        d.rectangle([int(round(x0)), 0, int(round(x0 + pw)) - 1, h], fill=col)
    else:  # passer-by / object block
        sq = np.sqrt(fraction)
        ow, oh = sq * bw, sq * bh
        x0, y0 = bx0 + rng.uniform(0, bw - ow), by0 + rng.uniform(0, bh - oh)
        d.rectangle([int(round(x0)), int(round(y0)), int(round(x0 + ow)) - 1, int(round(y0 + oh)) - 1], fill=col)
    return img


def feature_extractor(model: torch.nn.Module, transform: Callable, *, device=None, batch_size: int = 64,
                      use_camera: bool = True) -> Callable[[List[Image.Image], np.ndarray], np.ndarray]:
    """``extract(images, camids)`` for a Re-ID model: applies ``transform`` (the test transform), runs
    ``model(x, cam_label=camids)`` (or ``model(x)`` when ``use_camera`` is False) in eval mode without
    gradients, ``batch_size`` images at a time, on ``device`` (default: the model's)."""
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")

    def extract(images: List[Image.Image], camids: np.ndarray) -> np.ndarray:
        was_training = model.training
        model.eval()
        feats = []
        try:
            with torch.no_grad():
                for s in range(0, len(images), batch_size):
                    x = torch.stack([transform(im) for im in images[s:s + batch_size]]).to(device)
                    if use_camera:
                        cams = torch.as_tensor(np.asarray(camids[s:s + batch_size]), dtype=torch.long, device=device)
                        f = model(x, cam_label=cams)
                    else:
                        f = model(x)
                    feats.append(f.float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(feats).numpy()

    return extract


def _extract_items(extract, items, occlude: Optional[Tuple[float, str, int]] = None, batch: int = 256) -> np.ndarray:
    feats = []
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        imgs = [read_image(p) for p, _, _ in chunk]
        if occlude is not None:
            frac, mode, seed = occlude
            imgs = [add_occluder(im, frac, seed=seed + s + k, mode=mode) for k, im in enumerate(imgs)]
        f = extract(imgs, np.array([c for _, _, c in chunk], dtype=np.int64))
        feats.append(f.detach().float().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, np.float32))
    return np.concatenate(feats)


def occlusion_stress_test(extract: Callable, query: Sequence[Tuple[str, int, int]], gallery: Sequence[Tuple[str, int, int]],
                          levels: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8), *, mode: str = "bottom", seed: int = 0,
                          metric: str = "euclidean", max_rank: int = 50, per_query: bool = False) -> List[Dict]:
    """mAP / Rank-1 / Rank-5 / mINP with query images occluded at each level (fraction of the body
    box) against the clean gallery. Gallery features are extracted once. Occluders are the same
    for every model given the same ``seed`` (fair comparisons). Returns one dict per level; with
    ``per_query`` each also holds its :class:`~ribkernels.reid.evaluation.RankResult` (``"rank_result"``:
    per-query AP and first-match ranks)."""
    query, gallery = list(query), list(gallery)
    gf = _extract_items(extract, gallery)
    q_pids = np.array([p for _, p, _ in query]); q_cams = np.array([c for _, _, c in query])
    g_pids = np.array([p for _, p, _ in gallery]); g_cams = np.array([c for _, _, c in gallery])
    rows = []
    for lv in levels:
        qf = _extract_items(extract, query, occlude=(float(lv), mode, seed))
        r = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric, max_rank=max_rank)
        rows.append({"occlusion": float(lv), "mode": mode, "mAP": r.mAP, "rank1": float(r.cmc[0]),
                     "rank5": float(r.cmc[min(4, len(r.cmc) - 1)]), "rank10": float(r.cmc[min(9, len(r.cmc) - 1)]),
                     "mINP": r.mINP, "valid_queries": r.num_valid_queries, **({"rank_result": r} if per_query else {})})
    return rows


def format_occlusion_table(rows: List[Dict]) -> str:
    """Markdown table of :func:`occlusion_stress_test` rows (percentages)."""
    lines = ["| occlusion | mAP | Rank-1 | Rank-5 | mINP |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {100 * r['occlusion']:.0f}% ({r['mode']}) | {100 * r['mAP']:.1f} | {100 * r['rank1']:.1f} | "
                     f"{100 * r['rank5']:.1f} | {100 * r['mINP']:.1f} |")
    return "\n".join(lines)
