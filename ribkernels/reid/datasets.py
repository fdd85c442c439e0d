"""Re-ID dataset loaders (docs/training.md): Market-1501, DukeMTMC-reID, Occluded-Duke, MSMT17, read from their
standard folder layouts and file names. No downloads: ``root`` comes from the user.

Each loader returns a :class:`ReIDData` with ``train``, ``query`` and ``gallery`` lists of
``(path, pid, camid)``: camids are 0-based, junk images (pid −1) are dropped, distractors (pid 0)
are kept, and train pids are relabelled to ``0..num_train_pids−1`` (query/gallery keep the original
pids). ``build_dataset(name, root)`` is the registry entry point.

Every image is decoded in full once when the dataset is built (:func:`check_dataset`, cached by
path + size + mtime, see :mod:`.image_check`). Unreadable images are listed by path in one
:class:`CorruptImageError`, or, with ``skip_bad_images=True``, left out and counted in
``ReIDData.bad_images``; a training identity left with no image is then dropped and the train
labels are relabelled. Nothing is ever substituted.
"""
from __future__ import annotations

import inspect
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .image_check import ImageCheckResult, check_images

Item = Tuple[str, int, int]

__all__ = ["ReIDData", "DatasetLayoutError", "CorruptImageError", "build_dataset", "register_dataset",
           "DATASETS", "load_market1501", "load_dukemtmc", "load_occluded_duke", "load_msmt17",
           "check_dataset", "IMG_EXTENSIONS"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing or does not have the expected layout (message names both)."""


class CorruptImageError(RuntimeError):
    """An image cannot be opened or decoded (message names the path)."""


@dataclass
class ReIDData:
    """Lists of (path, pid, camid) per split, plus what the image check left out.

    ``bad_images``: (path, reason) of unreadable images left out with ``skip_bad_images``;
    ``dropped_train_pids``: original train pids left with no readable image (dropped, labels
    relabelled); ``checked``: whether every image was decoded (:func:`check_dataset`)."""

    name: str
    root: str
    train: List[Item]
    query: List[Item]
    gallery: List[Item]
    bad_images: List[Tuple[str, str]] = field(default_factory=list)
    dropped_train_pids: List[int] = field(default_factory=list)
    checked: bool = False

    @property
    def skipped(self) -> List[Tuple[str, str]]:
        """The images left out (same as ``bad_images``)."""
        return self.bad_images

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
        if self.bad_images:
            lines.append(f"  skipped {len(self.bad_images)} unreadable image(s), e.g. {self.bad_images[0][0]}")
        return "\n".join(lines)

    def one_line(self) -> str:
        """``name: train a ids/b imgs/c cams | query … | gallery …`` on one line."""
        parts = []
        for split in ("train", "query", "gallery"):
            i, n, c = self._stats(getattr(self, split))
            parts.append(f"{split} {i} ids/{n} imgs/{c} cams")
        return f"{self.name}: " + " | ".join(parts) + (f" | skipped {len(self.bad_images)}" if self.bad_images else "")

    def __str__(self) -> str:
        return self.one_line()


# ----------------------------------------------------------------------------------------------- checks

MAX_LISTED = 100  # bad images shown in an error message; the full list goes to a file beside the cache


def _check_args(verify: str, on_corrupt: Optional[str], skip_bad_images: Optional[bool]) -> bool:
    """Validate the image-check options; returns skip_bad_images (``on_corrupt`` is its older spelling)."""
    if verify not in ("full", "none"):
        raise ValueError(f"verify: expected 'full' (decode every image once, cached) or 'none', got {verify!r}"
                         + (" ('header' checks miss truncated files and are no longer offered)" if verify == "header" else ""))
    if on_corrupt not in (None, "skip", "raise"):
        raise ValueError(f"on_corrupt: expected 'skip' or 'raise', got {on_corrupt!r}")
    if skip_bad_images is not None and not isinstance(skip_bad_images, bool):
        raise TypeError(f"skip_bad_images: expected a bool, got {skip_bad_images!r}")
    if skip_bad_images is None:
        return on_corrupt == "skip"
    if on_corrupt is not None and (on_corrupt == "skip") != skip_bad_images:
        raise ValueError(f"on_corrupt={on_corrupt!r} contradicts skip_bad_images={skip_bad_images}")
    return skip_bad_images


def _bad_list_file(check: ImageCheckResult, root: str, lines: List[str]) -> Optional[str]:
    base = os.path.dirname(check.cache_file) if check.cache_file else root
    path = os.path.join(base, "bad-images.txt")
    try:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
    except OSError:
        return None
    return path


def check_dataset(data: ReIDData, *, skip_bad_images: bool = False, workers: Optional[int] = None,
                  progress: Optional[bool] = None, cache: bool = True) -> ReIDData:
    """Decode every image of ``data`` once (parallel, cached in ``data.root``); returns ``data``.

    Unreadable images raise one :class:`CorruptImageError` listing them all by split and path, or,
    with ``skip_bad_images``, are removed and listed in ``data.bad_images`` (a warning gives the
    count). A training identity left with no image is then dropped (``data.dropped_train_pids``)
    and the train labels relabelled to ``0..n-1``; an empty split is an error."""
    splits = {s: getattr(data, s) for s in ("train", "query", "gallery")}
    check = check_images([p for items in splits.values() for p, _, _ in items], data.root if cache else None,
                         workers=workers, progress=progress)
    data.checked = True
    if not check.bad:
        return data
    listed = [(s, p, check.bad[os.path.abspath(p)]) for s, items in splits.items() for p, _, _ in items
              if os.path.abspath(p) in check.bad]
    lines = [f"{s:<8}{p}  ({why})" for s, p, why in listed]
    if not skip_bad_images:
        more = ""
        if len(lines) > MAX_LISTED:
            full = _bad_list_file(check, data.root, lines)
            more = f"\n  ... and {len(lines) - MAX_LISTED} more" + (f" (full list: {full})" if full else "")
        raise CorruptImageError(
            f"{data.name}: {len(listed)} unreadable image(s) under {data.root} (every image is decoded in full "
            f"when the dataset is built):\n  " + "\n  ".join(lines[:MAX_LISTED]) + more +
            "\nReplace or delete these files, or pass --skip-bad-images (config data.skip_bad_images: true) to "
            "leave them out; they are then listed in the log, and a training identity left with "
            "no image is dropped (train labels relabelled).")
    orig_train_pids = sorted({pid for _, pid, _ in data.train})
    for s, items in splits.items():
        setattr(data, s, [it for it in items if os.path.abspath(it[0]) not in check.bad])
    data.bad_images = [(p, why) for _, p, why in listed]
    left = {pid for _, pid, _ in data.train}
    data.dropped_train_pids = [pid for pid in orig_train_pids if pid not in left]
    data.train = _relabel(data.train)
    msg = (f"{data.name}: skipped {len(listed)} unreadable image(s) (--skip-bad-images): "
           + "; ".join(lines[:3]) + (" ..." if len(lines) > 3 else ""))
    if data.dropped_train_pids:
        msg += (f"; {len(data.dropped_train_pids)} training identit{'y' if len(data.dropped_train_pids) == 1 else 'ies'} "
                f"left with no image dropped (train labels relabelled 0..{data.num_train_pids - 1})")
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
    for s in splits:
        if not getattr(data, s):
            raise CorruptImageError(f"{data.name}: the {s} split has no readable image left after skipping "
                                    f"{len(listed)} unreadable image(s), e.g. {listed[0][1]}")
    return data


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

_PATTERN = re.compile(r"^(-1|\d+)_c(\d+)(?=\D)")  # "<pid>_c<cam>" then a non-digit; pid -1 is junk


def _scan_named_dir(d: str, name: str, root: str, expected: str, num_cams: int, max_pid: Optional[int],
                    example: str) -> List[Item]:
    items: List[Item] = []
    files = sorted(f for f in os.listdir(d) if f.lower().endswith(IMG_EXTENSIONS))
    if not files:
        raise _layout_error(root, name, expected, f"no images in {d}")
    for f in files:
        m = _PATTERN.match(f)
        if m is None:
            raise _layout_error(root, name, expected,
                                f"file name {os.path.join(d, f)!r} does not match the pattern '{example}' "
                                "(<pid>: digits, or -1 for junk; <cam>: digits)")
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
                verify: str, on_corrupt: Optional[str], skip_bad_images: Optional[bool],
                example: str = "<pid>_c<cam>s<seq>_<frame>_<n>.jpg") -> ReIDData:
    skip = _check_args(verify, on_corrupt, skip_bad_images)
    splits = ("bounding_box_train", "query", "bounding_box_test")
    expected = (f"  {root}/[{' | '.join(subdirs)}/]\n" + "".join(f"      {s}/  {example}\n" for s in splits))
    if not os.path.isdir(root):
        raise _layout_error(root, name, expected, "root folder does not exist")
    d = _find_dir(root, subdirs, splits)
    if d is None:
        raise _layout_error(root, name, expected, f"none of {list(subdirs)} (nor root) holds {list(splits)}")
    train, query, gallery = (_scan_named_dir(os.path.join(d, s), name, root, expected, num_cams, max_pid, example)
                             for s in splits)
    return _finish(name, d, train, query, gallery, verify, skip)


def _finish(name: str, d: str, train: List[Item], query: List[Item], gallery: List[Item], verify: str,
            skip_bad_images: bool) -> ReIDData:
    data = ReIDData(name, d, train, query, gallery)
    if verify == "full":  # before relabelling, so dropped_train_pids holds the dataset's own pids
        check_dataset(data, skip_bad_images=skip_bad_images)
    data.train = _relabel(data.train)
    return data


def load_market1501(root: str, *, verify: str = "full", skip_bad_images: Optional[bool] = None,
                  on_corrupt: Optional[str] = None) -> ReIDData:
    """Market-1501: ``root/Market-1501-v15.09.15/`` (or ``Market-1501/``, or root itself) with
    ``bounding_box_train``, ``query``, ``bounding_box_test``; names ``0002_c1s1_000451_03.jpg``,
    cameras 1–6. 751 train ids / 12,936 images; 3,368 query; 15,913 gallery (incl. distractors)."""
    return _load_named(root, "market1501", ("Market-1501-v15.09.15", "Market-1501", "market1501"),
                       num_cams=6, max_pid=1501, verify=verify, on_corrupt=on_corrupt,
                       skip_bad_images=skip_bad_images)


def load_dukemtmc(root: str, *, verify: str = "full", skip_bad_images: Optional[bool] = None,
                  on_corrupt: Optional[str] = None) -> ReIDData:
    """DukeMTMC-reID: ``root/DukeMTMC-reID/`` with the three Market folders; names
    ``0001_c2_f0046182.jpg``, cameras 1–8. 702 ids / 16,522 train; 2,228 query; 17,661 gallery."""
    return _load_named(root, "dukemtmcreid", ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid"),
                       num_cams=8, max_pid=None, verify=verify, on_corrupt=on_corrupt,
                       skip_bad_images=skip_bad_images,
                       example="<pid>_c<cam>_f<frame>.jpg")


def load_occluded_duke(root: str, *, verify: str = "full", skip_bad_images: Optional[bool] = None,
                  on_corrupt: Optional[str] = None) -> ReIDData:
    """Occluded-Duke: ``root/Occluded_Duke/`` with Duke's folders and names. 702 ids / 15,618 train;
    2,210 query; 17,661 gallery."""
    return _load_named(root, "occluded_duke", ("Occluded_Duke", "Occluded-Duke", "occluded_duke"),
                       num_cams=8, max_pid=None, verify=verify, on_corrupt=on_corrupt,
                       skip_bad_images=skip_bad_images,
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


def load_msmt17(root: str, *, verify: str = "full", skip_bad_images: Optional[bool] = None,
                  on_corrupt: Optional[str] = None) -> ReIDData:
    """MSMT17 (V1 or V2): ``root/MSMT17_V1/`` (or ``MSMT17_V2/``, ``MSMT17/``, root itself) with image
    folders ``train/`` and ``test/`` (V2: ``mask_train_v2/``, ``mask_test_v2/``) and the list files
    ``list_train.txt``, ``list_val.txt`` (joined to train, as TransReID does), ``list_query.txt``,
    ``list_gallery.txt``; lines ``0000/0000_000_01_0303morning_0015_0.jpg 0``, cameras 1–15.
    1,041 ids / 32,621 train; 11,659 query; 82,161 gallery."""
    skip = _check_args(verify, on_corrupt, skip_bad_images)
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
    return _finish(name, d, train, query, gallery, verify, skip)


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


BUILTIN_DATASETS = ("market1501", "dukemtmcreid", "occluded_duke", "msmt17", "synthetic", "csv", "folder")


def register_dataset(name: str, loader: Callable[..., ReIDData], *, overwrite: bool = False) -> None:
    """Make ``build_dataset(name, root, **kwargs)`` (and ``--dataset name``) call ``loader(root, **kwargs)``.

    The loader returns a :class:`ReIDData` whose lists hold ``(path, pid, camid)`` with int pids
    (train pids relabelled 0..n-1, e.g. with ``relabel``) and 0-based int camids; ``build_dataset``
    then decodes every image once and applies ``skip_bad_images``. A built-in or already registered
    name is replaced only with ``overwrite=True``."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"register_dataset: name must be letters, digits, '_', '.', '-', got {name!r}")
    if not callable(loader):
        raise TypeError(f"register_dataset({name!r}): loader must be callable, got {type(loader).__name__}")
    key = name.lower()
    if not overwrite and key in DATASETS and DATASETS[key] is not loader:
        raise ValueError(f"register_dataset: {name!r} is already registered ({DATASETS[key].__name__}); "
                         "pass overwrite=True to replace it")
    DATASETS[key] = loader


def relabel(items: Sequence[Item]) -> List[Item]:
    """Map the pids of ``items`` to ``0..n-1`` in sorted order (what a train split needs)."""
    return _relabel(list(items))


def _accepts(fn: Callable, kw: str) -> bool:
    try:
        return kw in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _validate_loaded(name: str, data) -> None:
    if not isinstance(data, ReIDData):
        raise TypeError(f"dataset {name!r}: the loader returned {type(data).__name__}, expected a ReIDData")
    for split in ("train", "query", "gallery"):
        items = getattr(data, split)
        if not items:
            raise DatasetLayoutError(f"dataset {name!r} ({data.root}): the {split} split is empty")
        for it in items[:1] + items[-1:]:
            if not (isinstance(it, tuple) and len(it) == 3 and isinstance(it[0], str)
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in it[1:])):
                raise TypeError(f"dataset {name!r}: {split} items must be (path: str, pid: int, camid: int), "
                                f"got {it!r}")
    pids = sorted({p for _, p, _ in data.train})
    if pids != list(range(len(pids))):
        raise ValueError(f"dataset {name!r}: train pids must be relabelled to 0..{len(pids) - 1} "
                         f"(use ribkernels.reid.datasets.relabel), got {pids[:5]}...")
    if min(c for s in (data.train, data.query, data.gallery) for _, _, c in s) < 0:
        raise ValueError(f"dataset {name!r}: camids must be >= 0")


def build_dataset(name: str, root: Optional[str] = None, *, skip_bad_images: bool = False, verify: str = "full",
                  workers: Optional[int] = None, progress: Optional[bool] = None, **kwargs) -> ReIDData:
    """Load a dataset by name, then decode each of its images once (cached; see :func:`check_dataset`).

    Names: ``market1501``, ``dukemtmcreid``, ``occluded_duke``, ``msmt17`` (root: the folder holding the
    dataset), ``csv`` (root: a CSV file or a folder of train/query/gallery CSVs), ``folder`` (root:
    ``<root>/{train,query,gallery}/<pid>/<camid>/<image>``), ``synthetic`` (root optional: its cache
    folder; generated on first use), or a name given to :func:`register_dataset`.
    ``skip_bad_images``: leave unreadable images out (counted in ``bad_images``) instead of raising
    :class:`CorruptImageError` listing them; ``verify='none'`` skips decoding (not recommended);
    other kwargs go to the loader (e.g. the synthetic sizes)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "synthetic" and "synthetic" not in DATASETS:
        from . import synthetic  # noqa: F401  (registers itself)
    if key in ("csv", "folder") and key not in DATASETS:
        from . import custom  # noqa: F401  (registers itself)
    if key not in DATASETS:
        known = sorted(set(DATASETS) | set(BUILTIN_DATASETS))
        raise ValueError(f"dataset name: unknown {name!r}; choose from {known} or register one with "
                         "ribkernels.reid.register_dataset")
    if key != "synthetic" and not root:
        raise ValueError(f"dataset {name!r}: root is required (no downloads; point it at the folder holding the dataset)")
    skip = _check_args(verify, kwargs.pop("on_corrupt", None), skip_bad_images)
    loader = DATASETS[key]
    if _accepts(loader, "verify") and _accepts(loader, "on_corrupt"):  # the built-in loaders
        kwargs.update(verify=verify, on_corrupt="skip" if skip else "raise")
    data = loader(root, **kwargs)
    _validate_loaded(name, data)
    if verify == "full" and not data.checked:
        data = check_dataset(data, skip_bad_images=skip, workers=workers, progress=progress)
    return data
