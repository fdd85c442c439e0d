"""Re-ID dataset loaders (SPEC §4): Market-1501, DukeMTMC-reID, Occluded-Duke, MSMT17, read from their
standard folder layouts and file names. No downloads: ``root`` comes from the user.

Each loader returns a :class:`ReIDData` with ``train``, ``query`` and ``gallery`` lists of
``(path, pid, camid)``: camids are 0-based, junk images (pid −1) are dropped, distractors (pid 0)
are kept, and train pids are relabelled to ``0..num_train_pids−1`` (query/gallery keep the original
pids). ``build_dataset(name, root)`` is the registry entry point.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

Item = Tuple[str, int, int]

__all__ = ["ReIDData", "DatasetLayoutError", "CorruptImageError", "build_dataset", "register_dataset",
           "DATASETS", "load_market1501", "load_dukemtmc", "load_occluded_duke", "load_msmt17",
           "verify_images", "IMG_EXTENSIONS"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing or does not have the expected layout (message names both)."""


class CorruptImageError(RuntimeError):
    """An image cannot be opened or decoded (message names the path)."""


@dataclass
class ReIDData:
    """Lists of (path, pid, camid) per split, plus what the loader skipped."""

    name: str
    root: str
    train: List[Item]
    query: List[Item]
    gallery: List[Item]
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images

    @staticmethod
    def _stats(items: Sequence[Item]) -> Tuple[int, int, int]:
        return len({p for _, p, _ in items}), len(items), len({c for _, _, c in items})

    @property
    def num_train_pids(self) -> int:
        return self._stats(self.train)[0]

    @property
    def num_train_cams(self) -> int:
        """Number of camera ids the SIE embedding needs: max camid over all splits + 1."""
        cams = [c for split in (self.train, self.query, self.gallery) for _, _, c in split]
        return (max(cams) + 1) if cams else 0

    def summary(self) -> str:
        """A small table: ids, images and cameras per split."""
        lines = [f"{self.name} ({self.root})", f"  {'split':<8}| {'ids':>6} | {'images':>7} | {'cameras':>7}"]
        for split in ("train", "query", "gallery"):
            i, n, c = self._stats(getattr(self, split))
            lines.append(f"  {split:<8}| {i:>6} | {n:>7} | {c:>7}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unreadable image(s), e.g. {self.skipped[0][0]}")
        return "\n".join(lines)

    def one_line(self) -> str:
        """``name: train a ids/b imgs/c cams | query … | gallery …`` on one line."""
        parts = []
        for split in ("train", "query", "gallery"):
            i, n, c = self._stats(getattr(self, split))
            parts.append(f"{split} {i} ids/{n} imgs/{c} cams")
        return f"{self.name}: " + " | ".join(parts) + (f" | skipped {len(self.skipped)}" if self.skipped else "")

    def __str__(self) -> str:
        return self.one_line()


# ----------------------------------------------------------------------------------------------- checks

def verify_images(items: List[Item], mode: str = "header", on_corrupt: str = "skip"
                  ) -> Tuple[List[Item], List[Tuple[str, str]]]:
    """Check that each image opens. mode: ``"none"``, ``"header"`` (open + parse the header: catches
    empty, garbage and wrong-format files; fast) or ``"full"`` (decode every pixel: also catches
    truncated files). on_corrupt: ``"skip"`` (warn once with the count and first paths, drop them)
    or ``"raise"`` (:class:`CorruptImageError` naming the first bad path)."""
    if mode not in ("none", "header", "full"):
        raise ValueError(f"verify: expected 'none', 'header' or 'full', got {mode!r}")
    if on_corrupt not in ("skip", "raise"):
        raise ValueError(f"on_corrupt: expected 'skip' or 'raise', got {on_corrupt!r}")
    if mode == "none":
        return items, []
    from PIL import Image

    good, bad = [], []
    for it in items:
        try:
            with Image.open(it[0]) as im:
                if mode == "full":
                    im.load()
                else:
                    im.verify()
        except Exception as exc:  # PIL raises many types for bad files
            reason = f"{type(exc).__name__}: {exc}"
            if on_corrupt == "raise":
                raise CorruptImageError(f"cannot read image {it[0]}: {reason}") from exc
            bad.append((it[0], reason))
            continue
        good.append(it)
    if bad:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {shown}" + (" ..." if len(bad) > 3 else ""),
                      RuntimeWarning, stacklevel=3)
    return good, bad


def _layout_error(root: str, name: str, expected: str, problem: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{name}: {problem} (root={root!r}). Expected layout:\n{expected}")


def _find_dir(root: str, candidates: Sequence[str], required: Sequence[str]) -> Optional[str]:
    """First of root/<candidate> (or root itself) that holds every entry in ``required``."""
    for sub in list(candidates) + [""]:
        d = os.path.join(root, sub) if sub else root
        if all(os.path.exists(os.path.join(d, r)) for r in required):
            return d
    return None


def _relabel(items: List[Item]) -> List[Item]:
    pids = sorted({p for _, p, _ in items})
    lab = {p: i for i, p in enumerate(pids)}
    return [(path, lab[p], c) for path, p, c in items]


# --------------------------------------------------------------------------- Market / Duke style folders

_PATTERN = re.compile(r"^([-\d]+)_c(\d+)")


def _scan_named_dir(d: str, name: str, root: str, expected: str, num_cams: int, max_pid: Optional[int]) -> List[Item]:
    items: List[Item] = []
    files = sorted(f for f in os.listdir(d) if f.lower().endswith(IMG_EXTENSIONS))
    if not files:
        raise _layout_error(root, name, expected, f"no images in {d}")
    for f in files:
        m = _PATTERN.match(f)
        if m is None:
            raise _layout_error(root, name, expected,
                                f"file name {os.path.join(d, f)!r} does not match '<pid>_c<cam>...'")
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid == -1:
            continue  # junk
        if pid < 0 or (max_pid is not None and pid > max_pid) or not 1 <= cam <= num_cams:
            raise _layout_error(root, name, expected,
                                f"{os.path.join(d, f)!r}: pid {pid} / camera {cam} out of range "
                                f"(pid in 0..{max_pid}, camera in 1..{num_cams})")
        items.append((os.path.join(d, f), pid, cam - 1))
    return items


def _load_named(root: str, name: str, subdirs: Sequence[str], num_cams: int, max_pid: Optional[int],
                verify: str, on_corrupt: str, example: str = "<pid>_c<cam>s<seq>_<frame>_<n>.jpg") -> ReIDData:
    splits = ("bounding_box_train", "query", "bounding_box_test")
    expected = (f"  {root}/[{' | '.join(subdirs)}/]\n" + "".join(f"      {s}/  {example}\n" for s in splits))
    if not os.path.isdir(root):
        raise _layout_error(root, name, expected, "root folder does not exist")
    d = _find_dir(root, subdirs, splits)
    if d is None:
        raise _layout_error(root, name, expected, f"none of {list(subdirs)} (nor root) holds {list(splits)}")
    train = _scan_named_dir(os.path.join(d, splits[0]), name, root, expected, num_cams, max_pid)
    query = _scan_named_dir(os.path.join(d, splits[1]), name, root, expected, num_cams, max_pid)
    gallery = _scan_named_dir(os.path.join(d, splits[2]), name, root, expected, num_cams, max_pid)
    return _finish(name, d, train, query, gallery, verify, on_corrupt)


def _finish(name, d, train, query, gallery, verify, on_corrupt) -> ReIDData:
    skipped: List[Tuple[str, str]] = []
    out = []
    for items in (train, query, gallery):
        good, bad = verify_images(items, verify, on_corrupt)
        out.append(good)
        skipped += bad
    return ReIDData(name, d, _relabel(out[0]), out[1], out[2], skipped)


def load_market1501(root: str, *, verify: str = "header", on_corrupt: str = "skip") -> ReIDData:
    """Market-1501: ``root/Market-1501-v15.09.15/`` (or ``Market-1501/``, or root itself) with
    ``bounding_box_train``, ``query``, ``bounding_box_test``; names ``0002_c1s1_000451_03.jpg``,
    cameras 1–6. 751 train ids / 12,936 images; 3,368 query; 15,913 gallery (incl. distractors)."""
    return _load_named(root, "market1501", ("Market-1501-v15.09.15", "Market-1501", "market1501"),
                       num_cams=6, max_pid=1501, verify=verify, on_corrupt=on_corrupt)


def load_dukemtmc(root: str, *, verify: str = "header", on_corrupt: str = "skip") -> ReIDData:
    """DukeMTMC-reID: ``root/DukeMTMC-reID/`` with the three Market folders; names
    ``0001_c2_f0046182.jpg``, cameras 1–8. 702 ids / 16,522 train; 2,228 query; 17,661 gallery."""
    return _load_named(root, "dukemtmcreid", ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid"),
                       num_cams=8, max_pid=None, verify=verify, on_corrupt=on_corrupt,
                       example="<pid>_c<cam>_f<frame>.jpg")


def load_occluded_duke(root: str, *, verify: str = "header", on_corrupt: str = "skip") -> ReIDData:
    """Occluded-Duke: ``root/Occluded_Duke/`` with Duke's folders and names. 702 ids / 15,618 train;
    2,210 query; 17,661 gallery."""
    return _load_named(root, "occluded_duke", ("Occluded_Duke", "Occluded-Duke", "occluded_duke"),
                       num_cams=8, max_pid=None, verify=verify, on_corrupt=on_corrupt,
                       example="<pid>_c<cam>_f<frame>.jpg")


# ------------------------------------------------------------------------------------------------ MSMT17

def _read_list(list_path: str, img_dir: str, name: str, root: str, expected: str) -> List[Item]:
    items: List[Item] = []
    with open(list_path) as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split()
            try:
                rel, pid = parts[0], int(parts[1])
                cam = int(os.path.basename(rel).split("_")[2])
            except (IndexError, ValueError):
                raise _layout_error(root, name, expected,
                                    f"{list_path}:{ln}: malformed line {line!r} (expected "
                                    "'<pid>/<pid>_<idx>_<cam>_<date>_<n>_<m>.jpg <pid>')") from None
            if pid == -1:
                continue
            if pid < 0 or not 1 <= cam <= 15:
                raise _layout_error(root, name, expected, f"{list_path}:{ln}: pid {pid} / camera {cam} out of range")
            path = os.path.join(img_dir, rel)
            if not os.path.isfile(path):
                raise _layout_error(root, name, expected, f"{list_path}:{ln}: image {path} is missing")
            items.append((path, pid, cam - 1))
    return items


def load_msmt17(root: str, *, verify: str = "header", on_corrupt: str = "skip") -> ReIDData:
    """MSMT17 (V1 or V2): ``root/MSMT17_V1/`` (or ``MSMT17_V2/``, ``MSMT17/``, root itself) with image
    folders ``train/`` and ``test/`` (V2: ``mask_train_v2/``, ``mask_test_v2/``) and the list files
    ``list_train.txt``, ``list_val.txt`` (joined to train, as TransReID does), ``list_query.txt``,
    ``list_gallery.txt``; lines ``0000/0000_000_01_0303morning_0015_0.jpg 0``, cameras 1–15.
    1,041 ids / 32,621 train; 11,659 query; 82,161 gallery."""
    lists = ("list_train.txt", "list_query.txt", "list_gallery.txt")
    expected = (f"  {root}/[MSMT17_V1 | MSMT17_V2 | MSMT17/]\n      train/ test/  (V2: mask_train_v2/ mask_test_v2/)\n"
                "      list_train.txt list_val.txt list_query.txt list_gallery.txt\n"
                "      (lines '<pid>/<pid>_<idx>_<cam>_<date>_<n>_<m>.jpg <pid>', relative to train/ or test/)")
    name = "msmt17"
    if not os.path.isdir(root):
        raise _layout_error(root, name, expected, "root folder does not exist")
    d = _find_dir(root, ("MSMT17_V1", "MSMT17_V2", "MSMT17"), lists)
    if d is None:
        raise _layout_error(root, name, expected, f"no folder under root holds {list(lists)}")
    img_dirs = [(os.path.join(d, a), os.path.join(d, b)) for a, b in (("train", "test"), ("mask_train_v2", "mask_test_v2"))]
    found = [p for p in img_dirs if os.path.isdir(p[0]) and os.path.isdir(p[1])]
    if not found:
        raise _layout_error(root, name, expected, f"{d} has the list files but no train/ and test/ image folders")
    train_dir, test_dir = found[0]
    train = _read_list(os.path.join(d, "list_train.txt"), train_dir, name, root, expected)
    val_path = os.path.join(d, "list_val.txt")
    if os.path.isfile(val_path):
        train += _read_list(val_path, train_dir, name, root, expected)
    query = _read_list(os.path.join(d, "list_query.txt"), test_dir, name, root, expected)
    gallery = _read_list(os.path.join(d, "list_gallery.txt"), test_dir, name, root, expected)
    for split, items in (("train", train), ("query", query), ("gallery", gallery)):
        if not items:
            raise _layout_error(root, name, expected, f"the {split} list is empty")
    return _finish(name, d, train, query, gallery, verify, on_corrupt)


# ---------------------------------------------------------------------------------------------- registry

DATASETS: Dict[str, Callable[..., ReIDData]] = {
    "market1501": load_market1501,
    "dukemtmcreid": load_dukemtmc,
    "occluded_duke": load_occluded_duke,
    "msmt17": load_msmt17,
}
_ALIASES = {"market": "market1501", "market-1501": "market1501", "duke": "dukemtmcreid",
            "dukemtmc": "dukemtmcreid", "dukemtmc-reid": "dukemtmcreid", "occ_duke": "occluded_duke",
            "occluded-duke": "occluded_duke", "msmt": "msmt17"}


def register_dataset(name: str, loader: Callable[..., ReIDData]) -> None:
    DATASETS[name.lower()] = loader


def build_dataset(name: str, root: Optional[str] = None, **kwargs) -> ReIDData:
    """Load a dataset by name: ``market1501``, ``dukemtmcreid``, ``occluded_duke``, ``msmt17`` (root
    required) or ``synthetic`` (root optional: the cache folder; generated on first use).
    kwargs: ``verify`` ('none' | 'header' | 'full'), ``on_corrupt`` ('skip' | 'raise'), and for
    ``synthetic`` the generator's size options."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "synthetic" and "synthetic" not in DATASETS:
        from . import synthetic  # noqa: F401  (registers itself)
    if key not in DATASETS:
        raise ValueError(f"dataset name: unknown {name!r}; choose from {sorted(DATASETS) + ['synthetic']}")
    if key != "synthetic" and not root:
        raise ValueError(f"dataset {name!r}: root is required (no downloads; point it at the folder holding the dataset)")
    return DATASETS[key](root, **kwargs)
