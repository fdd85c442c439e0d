"""The integrity check of a Re-ID dataset: every image decoded once when the dataset is built
(cached by path + size + mtime, see :mod:`.image_check`); unreadable images listed by path in one
:class:`CorruptImageError`, or, with ``skip_bad_images=True``, left out and counted in
``ReIDData.bad_images`` (a training identity left with no image is dropped and the train labels
relabelled). Nothing is ever substituted. Also the last step every loader shares
(:func:`assemble_dataset`)."""
from __future__ import annotations

import os
import warnings
from typing import List, Optional

from .dataset_types import CorruptImageError, Item, ReIDData, relabel
from .image_check import ImageCheckResult, check_images

MAX_LISTED = 100  # bad images shown in an error message; the full list goes to a file beside the cache


def check_image_options(verify: str, on_corrupt: Optional[str], skip_bad_images: Optional[bool]) -> bool:
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
    data.train = relabel(data.train)
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


def assemble_dataset(name: str, d: str, train: List[Item], query: List[Item], gallery: List[Item], verify: str,
                     skip_bad_images: bool) -> ReIDData:
    """The :class:`ReIDData` of a loader's split lists, checked (``verify='full'``) and its train pids
    relabelled; ``skip_bad_images`` as in :func:`check_dataset`."""
    data = ReIDData(name, d, train, query, gallery)
    if verify == "full":  # before relabelling, so dropped_train_pids holds the dataset's own pids
        check_dataset(data, skip_bad_images=skip_bad_images)
    data.train = relabel(data.train)
    return data
