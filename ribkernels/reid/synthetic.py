"""A synthetic Re-ID dataset in Market-1501's layout and file naming, generated on first use (SPEC §4).

Each identity is a drawn pedestrian with its own clothing (upper/lower colours and patterns: solid,
stripes, checks, dots, two-tone), build, hair, hat and bag. Each of the cameras has its own
illumination (colour cast, gain, gamma, contrast), blur, noise and JPEG quality, and its own scene
colours; every image gets random background clutter and, with some probability, a random occluder
(a vehicle/bench band from below, a pole, or a passer-by block). Backgrounds never depend on the
identity, so identity has to be read from the person. Sizes default small enough that a small model
trains on a CPU in minutes. See ``SYNTHETIC.md`` for how hard it is.

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
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .datasets import ReIDData, load_market1501, register_dataset

__all__ = ["SyntheticConfig", "make_synthetic_market", "load_synthetic", "default_cache_dir", "render_identity_image"]

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

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": _VERSION}, sort_keys=True)
        return f"seed{self.seed}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def default_cache_dir() -> str:
    base = os.environ.get("RIBKERNELS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ribkernels"))
    return os.path.join(base, "synthetic_market")


# ------------------------------------------------------------------------------------------- appearance

_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "dots", "twotone")
_SKIN = [(255, 224, 196), (234, 192, 160), (198, 145, 110), (160, 110, 80), (120, 80, 55), (90, 60, 40)]
_HAIR = [(20, 15, 10), (60, 40, 25), (110, 75, 40), (200, 170, 110), (150, 150, 150), (140, 50, 30)]


def _hsv(rng: np.random.Generator, sat=(0.15, 0.95), val=(0.15, 0.95)) -> Tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def _identity(rng: np.random.Generator) -> Dict:
    return {
        "skin": _SKIN[rng.integers(len(_SKIN))],
        "hair": _HAIR[rng.integers(len(_HAIR))],
        "long_hair": bool(rng.uniform() < 0.35),
        "hat": _hsv(rng) if rng.uniform() < 0.2 else None,
        "upper": _hsv(rng), "upper2": _hsv(rng), "upper_pat": _PATTERNS[rng.integers(len(_PATTERNS))],
        "upper_period": int(rng.integers(4, 11)), "long_sleeves": bool(rng.uniform() < 0.6),
        "lower": _hsv(rng, sat=(0.05, 0.8), val=(0.1, 0.85)), "lower2": _hsv(rng),
        "lower_pat": ("solid", "solid", "solid", "hstripes", "checks")[rng.integers(5)],
        "lower_kind": ("trousers", "trousers", "shorts", "skirt")[rng.integers(4)],
        "shoes": _hsv(rng, sat=(0.0, 0.5), val=(0.05, 0.9)),
        "bag": ("none", "none", "backpack", "handbag")[rng.integers(4)], "bag_col": _hsv(rng),
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
        "quality": int(rng.integers(70, 96)), "wall": _hsv(rng, sat=(0.0, 0.5)), "floor": _hsv(rng, sat=(0.0, 0.4)),
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
        col = _hsv(rng)
        kind = rng.integers(3)
        if kind == 0:
            d.rectangle([x0, y0, x1, y1], fill=col)
        elif kind == 1:
            d.ellipse([x0, y0, x1, y1], fill=col)
        else:
            d.line([x0, y0, x1, y1], fill=col, width=int(rng.integers(1, 4)))
    return img


def _draw_person(img: Image.Image, p: Dict, rng: np.random.Generator) -> None:
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


def _occlude(img: Image.Image, rng: np.random.Generator) -> None:
    w, h = img.size
    d = ImageDraw.Draw(img)
    col = _hsv(rng)
    kind = rng.integers(3)
    if kind == 0:  # vehicle / bench from below
        y = int(h * rng.uniform(0.55, 0.8))
        d.rectangle([0, y, w, h], fill=col)
        d.rectangle([0, y, w, y + 3], fill=_hsv(rng))
    elif kind == 1:  # pole
        x = int(rng.integers(w // 5, 4 * w // 5))
        d.rectangle([x, 0, x + int(rng.integers(6, 16)), h], fill=col)
    else:  # passer-by / object block at the side
        x0 = int(rng.integers(-w // 4, w // 2))
        y0 = int(rng.integers(h // 5, h // 2))
        d.rectangle([x0, y0, x0 + int(rng.integers(w // 3, w // 2 + 8)), y0 + int(rng.integers(h // 4, h // 2))], fill=col)


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
    _draw_person(img, person, rng)
    if rng.uniform() < occluder_prob:
        _occlude(img, rng)
    return _camera_look(img, cam, rng)


# -------------------------------------------------------------------------------------------- generator

def _generate(cfg: SyntheticConfig, out: str) -> None:
    rng = np.random.default_rng(cfg.seed)
    cams = [_camera(rng) for _ in range(cfg.num_cams)]
    n_ids = cfg.num_train_ids + cfg.num_test_ids
    people: List[Dict] = []
    while len(people) < n_ids:
        cand = _identity(rng)
        if not _too_close(cand, people) or rng.uniform() < 0.02:
            people.append(cand)
    # non-contiguous pids, as in Market; 0 (distractor) and -1 (junk) are reserved
    pids = np.sort(rng.choice(np.arange(1, 3 * n_ids + 1), size=n_ids, replace=False))
    order = rng.permutation(n_ids)
    train_ids, test_ids = sorted(order[: cfg.num_train_ids]), sorted(order[cfg.num_train_ids:])
    for sub in ("bounding_box_train", "bounding_box_test", "query"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    counter = [0]

    def save(sub: str, pid: int, cam: int, img: Image.Image) -> None:
        counter[0] += 1
        name = f"{pid:04d}" if pid >= 0 else "-1"
        seq = 1 + counter[0] % 6
        img.save(os.path.join(out, sub, f"{name}_c{cam + 1}s{seq}_{counter[0]:06d}_00.jpg"),
                 quality=cams[cam]["quality"])

    def cam_set(k: int) -> np.ndarray:
        return rng.choice(cfg.num_cams, size=min(cfg.num_cams, k), replace=False)

    for i in train_ids:
        cs = cam_set(int(rng.integers(2, cfg.num_cams + 1)))
        for j in range(cfg.train_imgs_per_id):
            c = int(cs[j % len(cs)])
            save("bounding_box_train", int(pids[i]), c,
                 render_identity_image(people[i], cams[c], rng, cfg.height, cfg.width, cfg.occluder_prob))
    for i in test_ids:
        cs = cam_set(int(rng.integers(3, cfg.num_cams + 1)))
        q_cams = cs[: min(cfg.query_imgs_per_id, len(cs) - 1)]
        for c in q_cams:
            save("query", int(pids[i]), int(c), render_identity_image(people[i], cams[c], rng, cfg.height, cfg.width, cfg.occluder_prob))
        for j in range(cfg.gallery_imgs_per_id):  # cycling through cs: every query camera has another camera in the gallery
            c = int(cs[j % len(cs)])
            save("bounding_box_test", int(pids[i]), c,
                 render_identity_image(people[i], cams[c], rng, cfg.height, cfg.width, cfg.occluder_prob))
    for k in range(cfg.num_distractors):  # pid 0: a random person nobody queries for
        c = int(rng.integers(cfg.num_cams))
        save("bounding_box_test", 0, c, render_identity_image(_identity(rng), cams[c], rng, cfg.height, cfg.width, cfg.occluder_prob))
    for k in range(cfg.num_junk):  # pid -1: a background-only crop (a detector false alarm)
        c = int(rng.integers(cfg.num_cams))
        save("bounding_box_test", -1, c, _camera_look(_background(rng, cams[c], cfg.height, cfg.width), cams[c], rng))


def make_synthetic_market(root: Optional[str] = None, seed: int = 0, **sizes) -> str:
    """Generate (once) the synthetic dataset for ``SyntheticConfig(seed=seed, **sizes)`` and return its
    folder, ``<root>/<config key>/`` with ``bounding_box_train``, ``bounding_box_test`` and ``query``.
    ``root`` defaults to ``~/.cache/ribkernels/synthetic_market`` (``$RIBKERNELS_CACHE`` overrides the
    base). Generation goes to a temporary folder renamed into place after the marker file is written,
    so an interrupted run is redone and concurrent processes (DDP ranks) do not collide."""
    cfg = SyntheticConfig(seed=seed, **sizes)
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
