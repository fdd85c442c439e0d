"""A synthetic Re-ID dataset in Market-1501's layout and file naming, generated on first use (docs/training.md).

Each identity is a drawn pedestrian with its own clothing (upper/lower colours and patterns: solid,
stripes, checks, dots, two-tone), build, hair, hat and bag. Each of the cameras has its own
illumination (colour cast, gain, gamma, contrast), blur, noise and JPEG quality, and its own scene
colours; every image gets random background clutter and, with some probability, a random occluder
(a vehicle/bench band from below, a pole, or a passer-by block). Backgrounds never depend on the
identity, so identity has to be read from the person. Sizes default small enough that a small model
trains on a CPU in minutes. See ``docs/synthetic.md`` for how hard it is.

    root = make_synthetic_market()             # ~/.cache/ribkernels/synthetic_market/<config>/
    data = build_dataset("synthetic")          # generated on first use, then read by the Market loader
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .. import _env
from .dataset_types import ReIDData
from .loaders import load_market1501
from .registry import register_dataset

__all__ = ["SyntheticConfig", "make_synthetic_market", "load_synthetic", "default_cache_dir", "render_identity_image",
           "check_options", "load_metadata", "load_ground_truth", "OCCLUDER_KINDS"]

MARKER = ".complete"
_VERSION = 1  # bump when the images change, so caches regenerate


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the synthetic dataset. Defaults: 60 train ids, 40 test ids, 6 cameras, ~8 images
    per id per split at 128×64 (about 950 images, a few seconds to generate)."""

    seed: int = 0
    num_train_ids: int = 60
    num_test_ids: int = 40
    num_cams: int = 6
    train_imgs_per_id: int = 8
    gallery_imgs_per_id: int = 8
    query_imgs_per_id: int = 2
    num_distractors: int = 12
    num_junk: int = 6
    height: int = 128
    width: int = 64
    occluder_prob: float = 0.3
    # Nuisance options (all off by default; off, the draw is bit-for-bit the one without them):
    home_scene_frac: float = 0.0    # share of a training identity's images shot in its fixed home scene
    confuser_prob: float = 0.0      # share of images (all splits) with a partial person of another identity
    confuser_coverage: Tuple[float, float] = (0.2, 0.4)  # share of the target's body pixels it covers
    ground_truth: bool = False      # write ground_truth.npz: per-patch occluder / background pixel shares
    patch_size: int = 16            # the ground truth's patch grid (the model's 16x16 patches)
    split_streams: bool = False     # the test split from its own random stream (grows without redrawing train)

    def options(self) -> Dict:
        """The nuisance options that differ from their defaults (what enters :meth:`key` beyond the sizes)."""
        return {k: v for k, v in asdict(self).items()
                if k in _OPTION_DEFAULTS and _as_list(v) != _as_list(_OPTION_DEFAULTS[k])}

    def key(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in _OPTION_DEFAULTS}
        d.update(self.options())  # options at their defaults leave the key (and cache folder) unchanged
        blob = json.dumps({**d, "version": _VERSION}, sort_keys=True)
        return f"seed{self.seed}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


_OPTION_NAMES = ("home_scene_frac", "confuser_prob", "confuser_coverage", "ground_truth", "patch_size", "split_streams")
_OPTION_DEFAULTS = {f.name: f.default for f in fields(SyntheticConfig) if f.name in _OPTION_NAMES}
GROUND_TRUTH = "ground_truth.npz"
METADATA = "metadata.json"


def _as_list(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def check_options(cfg: "SyntheticConfig") -> None:
    """Raise ``ValueError`` naming the option, its value and what was expected for a bad nuisance option."""
    def num(name, lo, hi):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
            raise ValueError(f"synthetic option {name}: expected a number in [{lo}, {hi}], got {v!r}")

    num("home_scene_frac", 0.0, 1.0)
    num("confuser_prob", 0.0, 1.0)
    cov = cfg.confuser_coverage
    if (not isinstance(cov, (tuple, list)) or len(cov) != 2 or any(isinstance(c, bool) or not isinstance(c, (int, float)) for c in cov)
            or not 0.0 < float(cov[0]) <= float(cov[1]) < 1.0):
        raise ValueError(f"synthetic option confuser_coverage: expected [lo, hi] with 0 < lo <= hi < 1, got {cov!r}")
    for name in ("ground_truth", "split_streams"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"synthetic option {name}: expected true or false, got {getattr(cfg, name)!r}")
    ps = cfg.patch_size
    if isinstance(ps, bool) or not isinstance(ps, int) or ps < 1:
        raise ValueError(f"synthetic option patch_size: expected a positive integer, got {ps!r}")
    if cfg.ground_truth and (cfg.height % ps or cfg.width % ps):
        raise ValueError(f"synthetic option patch_size: expected a divisor of height {cfg.height} and width "
                         f"{cfg.width} (ground_truth is on), got {ps}")


def default_cache_dir() -> str:
    return os.path.join(_env.cache_dir(), "synthetic_market")


# ------------------------------------------------------------------------------------------- appearance

_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "dots", "twotone")
_SKIN = [(255, 224, 196), (234, 192, 160), (198, 145, 110), (160, 110, 80), (120, 80, 55), (90, 60, 40)]
_HAIR = [(20, 15, 10), (60, 40, 25), (110, 75, 40), (200, 170, 110), (150, 150, 150), (140, 50, 30)]


def hsv_color(rng: np.random.Generator, sat=(0.15, 0.95), val=(0.15, 0.95)) -> Tuple[int, int, int]:
    """A random RGB colour (uniform hue, saturation and value in the given ranges)."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def random_identity(rng: np.random.Generator) -> Dict:
    """A random person's appearance (skin, hair, hat, clothes and their patterns, shoes): what
    :func:`draw_person` draws."""
    return {
        "skin": _SKIN[rng.integers(len(_SKIN))],
        "hair": _HAIR[rng.integers(len(_HAIR))],
        "long_hair": bool(rng.uniform() < 0.35),
        "hat": hsv_color(rng) if rng.uniform() < 0.2 else None,
        "upper": hsv_color(rng), "upper2": hsv_color(rng), "upper_pat": _PATTERNS[rng.integers(len(_PATTERNS))],
        "upper_period": int(rng.integers(4, 11)), "long_sleeves": bool(rng.uniform() < 0.6),
        "lower": hsv_color(rng, sat=(0.05, 0.8), val=(0.1, 0.85)), "lower2": hsv_color(rng),
        "lower_pat": ("solid", "solid", "solid", "hstripes", "checks")[rng.integers(5)],
        "lower_kind": ("trousers", "trousers", "shorts", "skirt")[rng.integers(4)],
        "shoes": hsv_color(rng, sat=(0.0, 0.5), val=(0.05, 0.9)),
        "bag": ("none", "none", "backpack", "handbag")[rng.integers(4)], "bag_col": hsv_color(rng),
        "height": float(rng.uniform(0.80, 0.94)), "build": float(rng.uniform(0.82, 1.2)),
    }


def _too_close(a: Dict, others: List[Dict]) -> bool:
    ca = np.array(a["upper"] + a["lower"], float)
    for b in others:
        if a["upper_pat"] == b["upper_pat"] and a["lower_kind"] == b["lower_kind"]:
            if np.abs(ca - np.array(b["upper"] + b["lower"], float)).max() < 45:
                return True
    return False


def _camera(rng: np.random.Generator) -> Dict:
    return {
        "gain": rng.uniform(0.7, 1.3, size=3), "gamma": float(rng.uniform(0.75, 1.35)),
        "contrast": float(rng.uniform(0.7, 1.15)), "offset": float(rng.uniform(-0.08, 0.1)),
        "blur": float(rng.choice([0.0, 0.4, 0.8, 1.2])), "noise": float(rng.uniform(0.01, 0.05)),
        "quality": int(rng.integers(70, 96)), "wall": hsv_color(rng, sat=(0.0, 0.5)), "floor": hsv_color(rng, sat=(0.0, 0.4)),
        "horizon": float(rng.uniform(0.45, 0.8)),
    }


def _pattern(h: int, w: int, c1, c2, kind: str, period: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    ph = int(rng.integers(period))
    if kind == "hstripes":
        m = ((yy + ph) // max(1, period // 2)) % 2 == 0
    elif kind == "vstripes":
        m = ((xx + ph) // max(1, period // 2)) % 2 == 0
    elif kind == "checks":
        m = (((yy + ph) // period) + (xx // period)) % 2 == 0
    elif kind == "dots":
        m = ((yy + ph) % period - period // 2) ** 2 + ((xx % period) - period // 2) ** 2 > (period / 3.5) ** 2
    elif kind == "twotone":
        m = xx < w // 2
    else:
        m = np.ones((h, w), bool)
    out = np.empty((h, w, 3), np.uint8)
    out[m] = c1
    out[~m] = c2
    return out


def _background(rng, cam: Dict, h: int, w: int) -> Image.Image:
    img = Image.new("RGB", (w, h), cam["wall"])
    d = ImageDraw.Draw(img)
    hz = int(h * (cam["horizon"] + rng.uniform(-0.06, 0.06)))
    jit = lambda c: tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in c)  # noqa: E731
    d.rectangle([0, hz, w, h], fill=jit(cam["floor"]))
    for _ in range(int(rng.integers(3, 9))):  # clutter: not tied to the identity
        x0, y0 = int(rng.integers(-10, w)), int(rng.integers(-10, h))
        x1, y1 = x0 + int(rng.integers(4, w // 2)), y0 + int(rng.integers(4, h // 2))
        col = hsv_color(rng)
        kind = rng.integers(3)
        if kind == 0:
            d.rectangle([x0, y0, x1, y1], fill=col)
        elif kind == 1:
            d.ellipse([x0, y0, x1, y1], fill=col)
        else:
            d.line([x0, y0, x1, y1], fill=col, width=int(rng.integers(1, 4)))
    return img


def draw_person(img: Image.Image, p: Dict, rng: np.random.Generator) -> None:
    """Draw the person of appearance ``p`` (:func:`random_identity`) on ``img``, in place."""
    w, h = img.size
    scale = rng.uniform(0.93, 1.05)
    ph = p["height"] * h * scale
    top = (h - ph) / 2 + rng.uniform(-3, 3)
    cx = w / 2 + rng.uniform(-5, 5)
    view = ("front", "back", "side")[rng.integers(3)]
    flip = rng.uniform() < 0.5
    bw = 0.36 * w * p["build"] * (0.72 if view == "side" else 1.0)
    r = 0.065 * ph
    y_sh, y_hip, y_foot = top + 2.1 * r, top + 0.52 * ph, top + ph
    stride = rng.uniform(0.0, 0.22) * w
    d = ImageDraw.Draw(img)
    # legs / lower garment
    leg_w = 0.42 * bw
    knee = y_hip + 0.5 * (y_foot - y_hip)
    for s in (-1, 1):
        hx = cx + s * 0.24 * bw
        fx = cx + s * (0.2 * bw + stride / 2)
        leg = [(hx - leg_w / 2, y_hip), (hx + leg_w / 2, y_hip), (fx + leg_w / 2.4, y_foot - 3), (fx - leg_w / 2.4, y_foot - 3)]
        d.polygon(leg, fill=p["skin"] if p["lower_kind"] != "trousers" else p["lower"])
        if p["lower_kind"] == "shorts":
            d.polygon([leg[0], leg[1], (hx + leg_w / 2, knee - 2), (hx - leg_w / 2, knee - 2)], fill=p["lower"])
        d.ellipse([fx - leg_w / 1.6, y_foot - 5, fx + leg_w / 1.6, y_foot], fill=p["shoes"])
    if p["lower_kind"] == "skirt":
        d.polygon([(cx - 0.45 * bw, y_hip), (cx + 0.45 * bw, y_hip), (cx + 0.62 * bw, knee + 4), (cx - 0.62 * bw, knee + 4)],
                  fill=p["lower"])
    if p["lower_pat"] != "solid" and p["lower_kind"] == "trousers":
        mask = Image.new("L", img.size, 0)
        md = ImageDraw.Draw(mask)
        for s in (-1, 1):
            hx, fx = cx + s * 0.24 * bw, cx + s * (0.2 * bw + stride / 2)
            md.polygon([(hx - leg_w / 2, y_hip), (hx + leg_w / 2, y_hip), (fx + leg_w / 2.4, y_foot - 5), (fx - leg_w / 2.4, y_foot - 5)], fill=255)
        pat = _pattern(h, w, p["lower"], p["lower2"], p["lower_pat"], p["upper_period"] + 2, rng)
        img.paste(Image.fromarray(pat), (0, 0), mask)
    # arms (behind the torso edges), swinging with the stride
    arm_col = p["upper"] if p["long_sleeves"] else p["skin"]
    arm_w = 0.2 * bw
    for s in (-1, 1):
        if view == "side" and s == (1 if flip else -1):
            continue
        ax = cx + s * (bw / 2 + arm_w / 2 - 1)
        swing = s * rng.uniform(-0.12, 0.12) * w
        d.polygon([(ax - arm_w / 2, y_sh + 1), (ax + arm_w / 2, y_sh + 1), (ax + arm_w / 2 + swing, y_hip + 2), (ax - arm_w / 2 + swing, y_hip + 2)],
                  fill=arm_col)
        d.ellipse([ax + swing - arm_w / 2, y_hip, ax + swing + arm_w / 2, y_hip + arm_w], fill=p["skin"])
    # torso with its pattern
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).polygon([(cx - bw / 2, y_sh), (cx + bw / 2, y_sh), (cx + 0.44 * bw, y_hip + 2), (cx - 0.44 * bw, y_hip + 2)], fill=255)
    pat = _pattern(h, w, p["upper"], p["upper2"], p["upper_pat"], p["upper_period"], rng)
    img.paste(Image.fromarray(pat), (0, 0), mask)
    # bag
    if p["bag"] == "backpack" and view != "front":
        bx = cx + (-1 if flip else 1) * (bw / 2 if view == "side" else 0)
        d.rectangle([bx - 0.3 * bw, y_sh + 3, bx + 0.3 * bw, y_sh + 0.45 * (y_hip - y_sh) + 8], fill=p["bag_col"])
    elif p["bag"] == "handbag":
        bx = cx + (1 if flip else -1) * (bw / 2 + arm_w)
        d.rectangle([bx - 4, y_hip - 4, bx + 4, y_hip + 8], fill=p["bag_col"])
    # head, hair, hat
    d.rectangle([cx - r * 0.4, top + 1.6 * r, cx + r * 0.4, y_sh + 1], fill=p["skin"])
    d.ellipse([cx - r, top, cx + r, top + 2 * r], fill=p["skin"] if view != "back" else p["hair"])
    d.chord([cx - r, top - 1, cx + r, top + 2 * r], 180, 360, fill=p["hair"])
    if p["long_hair"]:
        d.rectangle([cx - r, top + r, cx + r, top + 3.2 * r], fill=p["hair"]) if view == "back" else \
            d.rectangle([cx - r * 1.05, top + r, cx - r * 0.6, top + 3 * r], fill=p["hair"])
    if p["hat"] is not None:
        d.rectangle([cx - r * 1.1, top - 2, cx + r * 1.1, top + 0.7 * r], fill=p["hat"])


OCCLUDER_KINDS = ("vehicle", "pole", "block")


def _occlude(img: Image.Image, rng: np.random.Generator) -> int:
    """Draw one random occluder on ``img``; returns its kind (index into ``OCCLUDER_KINDS``)."""
    w, h = img.size
    d = ImageDraw.Draw(img)
    col = hsv_color(rng)
    kind = rng.integers(3)
    if kind == 0:  # vehicle / bench from below
        y = int(h * rng.uniform(0.55, 0.8))
        d.rectangle([0, y, w, h], fill=col)
        d.rectangle([0, y, w, y + 3], fill=hsv_color(rng))
    elif kind == 1:  # pole
        x = int(rng.integers(w // 5, 4 * w // 5))
        d.rectangle([x, 0, x + int(rng.integers(6, 16)), h], fill=col)
    else:  # passer-by / object block at the side
        x0 = int(rng.integers(-w // 4, w // 2))
        y0 = int(rng.integers(h // 5, h // 2))
        d.rectangle([x0, y0, x0 + int(rng.integers(w // 3, w // 2 + 8)), y0 + int(rng.integers(h // 4, h // 2))], fill=col)
    return int(kind)


def _camera_look(img: Image.Image, cam: Dict, rng: np.random.Generator) -> Image.Image:
    if cam["blur"] > 0:
        img = img.filter(ImageFilter.GaussianBlur(cam["blur"]))
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = np.power(a, cam["gamma"]) * cam["gain"] * (1 + rng.uniform(-0.1, 0.1))
    a = (a - 0.5) * cam["contrast"] + 0.5 + cam["offset"] + rng.normal(0, cam["noise"], a.shape)
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))


def render_identity_image(person: Dict, cam: Dict, rng: np.random.Generator, height: int = 128, width: int = 64,
                          occluder_prob: float = 0.3) -> Image.Image:
    """One image of ``person`` seen by ``cam``: background clutter, the person, maybe an occluder,
    then the camera's illumination, blur and noise."""
    img = _background(rng, cam, height, width)
    draw_person(img, person, rng)
    if rng.uniform() < occluder_prob:
        _occlude(img, rng)
    return _camera_look(img, cam, rng)


# ------------------------------------------------------------------------------------ nuisance options

def _clone(rng: np.random.Generator) -> np.random.Generator:
    r = np.random.Generator(type(rng.bit_generator)())
    r.bit_generator.state = rng.bit_generator.state
    return r


def footprint(draw, size: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """The pixels ``draw(img, rng)`` paints: (mask [h, w] bool, their colours [h, w, 3] uint8, 0 elsewhere),
    found by drawing on a black and a white canvas with copies of ``rng`` (``rng`` is not advanced)."""
    hit, black = None, None
    for fill in (0, 255):
        c = Image.new("RGB", size, (fill, fill, fill))
        draw(c, _clone(rng))
        a = np.asarray(c)
        m = (a != fill).any(-1)
        hit = m if hit is None else hit | m
        if fill == 0:
            black = a
    return hit, np.where(hit[..., None], black, 0).astype(np.uint8)


def shift_array(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) pixels along its first two axes, zero-filled."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def _home_scene(rng: np.random.Generator) -> Dict:
    """A training identity's fixed home scene: wall/floor colours, horizon, a clutter layout (its seed)
    and a camera colour cast (gain, offset)."""
    return {"wall": hsv_color(rng, sat=(0.0, 0.5)), "floor": hsv_color(rng, sat=(0.0, 0.4)), "horizon": float(rng.uniform(0.45, 0.8)),
            "gain": rng.uniform(0.7, 1.3, size=3), "offset": float(rng.uniform(-0.08, 0.1)),
            "clutter_seed": int(rng.integers(2 ** 31))}


def _add_confuser(img: Image.Image, target: np.ndarray, other: Dict, rng: np.random.Generator,
                  coverage: Tuple[float, float]) -> Tuple[np.ndarray, float]:
    """Paste ``other`` (a person) in front of the target, shifted sideways (and a little vertically) so
    that it covers a share of the target's pixels (``target`` [h, w] bool) drawn in ``coverage``, the
    closest reachable. Returns (the confuser's pixels [h, w] bool, the share of the target it covers)."""
    w, h = img.size
    mask, pix = footprint(lambda c, r: draw_person(c, other, r), img.size, rng)
    draw_person(Image.new("RGB", img.size), other, rng)  # advance rng as the drawing did
    lo, hi = float(coverage[0]), float(coverage[1])
    want = float(rng.uniform(lo, hi))
    dy = int(rng.integers(-h // 16, h // 16 + 1))
    area = max(int(target.sum()), 1)
    best, best_err = 0, None
    for dx in range(-w, w + 1):
        cov = float((shift_array(mask, dy, dx) & target).sum()) / area
        err = abs(cov - want) if lo <= cov <= hi else 1.0 + abs(cov - want)
        if best_err is None or err < best_err:
            best, best_err = dx, err
    m = shift_array(mask, dy, best)
    a = np.asarray(img).copy()
    a[m] = shift_array(pix, dy, best)[m]
    img.paste(Image.fromarray(a))
    return m, float((m & target).sum()) / area


def _patch_shares(mask: np.ndarray, patch: int) -> np.ndarray:
    """Share of True pixels in each ``patch`` x ``patch`` cell of ``mask`` [h, w] -> [h/patch, w/patch] float32."""
    h, w = mask.shape
    return mask.reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3)).astype(np.float32)


def _render(person: Dict, cam: Dict, rng: np.random.Generator, cfg: "SyntheticConfig", *, home: Optional[Dict] = None,
            confusers: Sequence[Tuple[int, Dict]] = ()) -> Tuple[Image.Image, Dict]:
    """:func:`render_identity_image` with the nuisance options: ``home`` (a home scene: its background,
    clutter and colour cast replace the camera's), a confuser from ``confusers`` ((pid, person) pairs)
    with probability ``cfg.confuser_prob``, and the pixel masks for the ground truth. With no option on
    it draws exactly what :func:`render_identity_image` draws. Returns (image, metadata)."""
    h, w = cfg.height, cfg.width
    info: Dict = {"home": home is not None, "occluder": None}
    if home is not None:
        img = _background(np.random.default_rng(home["clutter_seed"]), home, h, w)
        look = {**cam, "gain": home["gain"], "offset": home["offset"]}
    else:
        img = _background(rng, cam, h, w)
        look = cam
    masks = cfg.ground_truth or cfg.confuser_prob > 0
    body = footprint(lambda c, r: draw_person(c, person, r), img.size, rng)[0] if masks else None
    draw_person(img, person, rng)
    nuisance = np.zeros((h, w), bool) if masks else None
    if cfg.confuser_prob > 0 and confusers and rng.uniform() < cfg.confuser_prob:
        pid, other = confusers[int(rng.integers(len(confusers)))]
        m, cov = _add_confuser(img, body, other, rng, cfg.confuser_coverage)
        nuisance |= m
        info.update(confuser_pid=int(pid), confuser_coverage=cov)
    if rng.uniform() < cfg.occluder_prob:
        if masks:
            nuisance |= footprint(_occlude, img.size, rng)[0]
        info["occluder"] = OCCLUDER_KINDS[_occlude(img, rng)]
    if cfg.ground_truth:
        info["_shares"] = (_patch_shares(nuisance, cfg.patch_size), _patch_shares(~body & ~nuisance, cfg.patch_size))
    return _camera_look(img, look, rng), info


# -------------------------------------------------------------------------------------------- generator

def _draw_people(rng: np.random.Generator, n: int, people: List[Dict]) -> List[Dict]:
    """``n`` new identities, each rejected (mostly) when too close to one in ``people`` or drawn before."""
    new: List[Dict] = []
    while len(new) < n:
        cand = random_identity(rng)
        if not _too_close(cand, people + new) or rng.uniform() < 0.02:
            new.append(cand)
    return new


def _generate(cfg: SyntheticConfig, out: str) -> None:
    rng = np.random.default_rng(cfg.seed)
    cams = [_camera(rng) for _ in range(cfg.num_cams)]
    n_ids = cfg.num_train_ids + cfg.num_test_ids
    if cfg.split_streams:
        # cameras from the seed's stream; the training split (people, pids, images) from its own stream and
        # the test split from another, so test sizes never change the training draw
        tr_rng, te_rng = np.random.default_rng([cfg.seed, 1]), np.random.default_rng([cfg.seed, 2])
        people = _draw_people(tr_rng, cfg.num_train_ids, [])
        people += _draw_people(te_rng, cfg.num_test_ids, people)
        pids = np.concatenate([np.sort(tr_rng.choice(np.arange(1, 3 * cfg.num_train_ids + 1), size=cfg.num_train_ids, replace=False)),
                               3 * cfg.num_train_ids + np.sort(te_rng.choice(np.arange(1, 3 * cfg.num_test_ids + 1),
                                                                             size=cfg.num_test_ids, replace=False))])
        train_ids, test_ids = list(range(cfg.num_train_ids)), list(range(cfg.num_train_ids, n_ids))
    else:
        tr_rng = te_rng = rng
        people = _draw_people(rng, n_ids, [])
        # non-contiguous pids, as in Market; 0 (distractor) and -1 (junk) are reserved
        pids = np.sort(rng.choice(np.arange(1, 3 * n_ids + 1), size=n_ids, replace=False))
        order = rng.permutation(n_ids)
        train_ids, test_ids = sorted(order[: cfg.num_train_ids]), sorted(order[cfg.num_train_ids:])
    # home scenes (shortcut option): their own stream, one scene per training identity
    home_rng = np.random.default_rng([cfg.seed, 3])
    homes = {int(i): _home_scene(home_rng) for i in train_ids} if cfg.home_scene_frac > 0 else {}
    train_conf = [(int(pids[i]), people[i]) for i in train_ids]
    test_conf = [(int(pids[i]), people[i]) for i in test_ids]
    for sub in ("bounding_box_train", "bounding_box_test", "query"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    counter = [0]
    records: List[Dict] = []
    shares: List[Tuple[np.ndarray, np.ndarray]] = []

    def save(sub: str, pid: int, cam: int, img: Image.Image, info: Optional[Dict] = None) -> None:
        counter[0] += 1
        name = f"{pid:04d}" if pid >= 0 else "-1"
        seq = 1 + counter[0] % 6
        fname = f"{name}_c{cam + 1}s{seq}_{counter[0]:06d}_00.jpg"
        img.save(os.path.join(out, sub, fname), quality=cams[cam]["quality"])
        info = dict(info or {"home": False, "occluder": None})
        gt = info.pop("_shares", None)
        records.append({"file": f"{sub}/{fname}", "pid": int(pid), "cam": int(cam), **info})
        if cfg.ground_truth:
            gh, gw = cfg.height // cfg.patch_size, cfg.width // cfg.patch_size
            shares.append(gt if gt is not None else (np.zeros((gh, gw), np.float32), np.ones((gh, gw), np.float32)))

    def cam_set(r, k: int) -> np.ndarray:
        return r.choice(cfg.num_cams, size=min(cfg.num_cams, k), replace=False)

    def others(pool, pid):  # confusers of another identity (only built when the option is on)
        return [c for c in pool if c[0] != pid] if cfg.confuser_prob > 0 else ()

    for i in train_ids:
        cs = cam_set(tr_rng, int(tr_rng.integers(2, cfg.num_cams + 1)))
        for j in range(cfg.train_imgs_per_id):
            c = int(cs[j % len(cs)])
            home = homes[int(i)] if homes and home_rng.uniform() < cfg.home_scene_frac else None
            save("bounding_box_train", int(pids[i]), c,
                 *_render(people[i], cams[c], tr_rng, cfg, home=home, confusers=others(train_conf, int(pids[i]))))
    for i in test_ids:
        cs = cam_set(te_rng, int(te_rng.integers(3, cfg.num_cams + 1)))
        q_cams = cs[: min(cfg.query_imgs_per_id, len(cs) - 1)]
        for c in q_cams:
            save("query", int(pids[i]), int(c), *_render(people[i], cams[c], te_rng, cfg, confusers=others(test_conf, int(pids[i]))))
        for j in range(cfg.gallery_imgs_per_id):  # cycling through cs: every query camera has another camera in the gallery
            c = int(cs[j % len(cs)])
            save("bounding_box_test", int(pids[i]), c,
                 *_render(people[i], cams[c], te_rng, cfg, confusers=others(test_conf, int(pids[i]))))
    for k in range(cfg.num_distractors):  # pid 0: a random person nobody queries for
        c = int(te_rng.integers(cfg.num_cams))
        save("bounding_box_test", 0, c, *_render(random_identity(te_rng), cams[c], te_rng, cfg, confusers=test_conf))
    for k in range(cfg.num_junk):  # pid -1: a background-only crop (a detector false alarm)
        c = int(te_rng.integers(cfg.num_cams))
        save("bounding_box_test", -1, c, _camera_look(_background(te_rng, cams[c], cfg.height, cfg.width), cams[c], te_rng))
    if cfg.options():  # the default folder stays as it was (images and marker only)
        with open(os.path.join(out, METADATA), "w") as f:
            json.dump({"config": {**asdict(cfg), "version": _VERSION}, "images": records}, f)
    if cfg.ground_truth:
        np.savez_compressed(os.path.join(out, GROUND_TRUTH), files=np.array([r["file"] for r in records]),
                            occluder=np.stack([a for a, _ in shares]), background=np.stack([b for _, b in shares]),
                            patch_size=np.int64(cfg.patch_size))


def load_metadata(folder: str) -> List[Dict]:
    """Per-image records a generation wrote (``metadata.json``): ``file`` (relative path), ``pid``,
    ``cam`` (0-based), ``home`` (shot in the identity's home scene), ``occluder`` (kind or None),
    ``confuser_pid`` / ``confuser_coverage`` (share of the target's body pixels covered) when a confuser
    was drawn. Written only when a nuisance option is on (the default folder is unchanged); otherwise
    ``FileNotFoundError``."""
    path = os.path.join(folder, METADATA)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metadata (written only when a nuisance option is on, e.g. split_streams=True)")
    with open(path) as f:
        return json.load(f)["images"]


def load_ground_truth(folder: str) -> Dict[str, np.ndarray]:
    """``ground_truth.npz`` of a dataset generated with ``ground_truth=True``: ``files`` [n] (relative
    paths), ``occluder`` and ``background`` [n, H/patch, W/patch] (share of each patch's pixels covered by
    an occluder or confuser, and by background; the rest is the target person), ``patch_size``.
    Shares are of the drawing before the camera's blur/noise; junk crops are all background."""
    path = os.path.join(folder, GROUND_TRUTH)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (generate the dataset with ground_truth=True)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def make_synthetic_market(root: Optional[str] = None, seed: int = 0, **sizes) -> str:
    """Generate (once) the synthetic dataset for ``SyntheticConfig(seed=seed, **sizes)`` and return its
    folder, ``<root>/<config key>/`` with ``bounding_box_train``, ``bounding_box_test`` and ``query``.
    ``root`` defaults to ``~/.cache/ribkernels/synthetic_market`` (``$RIBKERNELS_CACHE`` overrides the
    base). Generation goes to a temporary folder renamed into place after the marker file is written,
    so an interrupted run is redone and concurrent processes (DDP ranks) do not collide."""
    cfg = SyntheticConfig(seed=seed, **sizes)
    check_options(cfg)
    if cfg.num_train_ids < 2 or cfg.num_test_ids < 1 or cfg.num_cams < 2:
        raise ValueError(f"synthetic sizes: need num_train_ids >= 2, num_test_ids >= 1, num_cams >= 2; got {cfg}")
    if cfg.height < 32 or cfg.width < 16:
        raise ValueError(f"synthetic sizes: height >= 32 and width >= 16 expected, got {cfg.height}x{cfg.width}")
    root = os.path.abspath(os.path.expanduser(root or default_cache_dir()))
    final = os.path.join(root, cfg.key())
    if os.path.isfile(os.path.join(final, MARKER)):
        return final
    os.makedirs(root, exist_ok=True)
    if os.path.isdir(final):  # left by an interrupted or older run without the marker
        shutil.rmtree(final, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".{cfg.key()}.tmp-", dir=root)
    try:
        _generate(cfg, tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({**asdict(cfg), "version": _VERSION}, f, indent=1)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, MARKER)):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_synthetic(root: Optional[str] = None, *, seed: int = 0, verify: str = "none", on_corrupt: str = "skip",
                   **sizes) -> ReIDData:
    """The synthetic dataset (generated on first use) read by the Market-1501 loader. ``sizes``: fields
    of :class:`SyntheticConfig` (ValueError naming any other)."""
    unknown = sorted(set(sizes) - set(SIZE_KEYS))
    if unknown:
        raise ValueError(f"synthetic dataset: unknown size argument(s) {unknown}; expected some of {list(SIZE_KEYS)}")
    folder = make_synthetic_market(root, seed=seed, **sizes)
    data = load_market1501(folder, verify=verify, on_corrupt=on_corrupt)
    data.name = "synthetic"
    return data


SIZE_KEYS = tuple(f.name for f in fields(SyntheticConfig) if f.name != "seed")
# What data.dataset_kwargs may hold for this loader (it takes **sizes): checked with the config.
load_synthetic.accepted_kwargs = ("seed",) + SIZE_KEYS
register_dataset("synthetic", load_synthetic)

# the drawing helpers' old private names that tests still reach for
_footprint, _shift = footprint, shift_array
