"""Loaders of the public Re-ID benchmarks: Market-1501, DukeMTMC-reID, Occluded-Duke, MSMT17, read from
their standard folder layouts and file names. No downloads: ``root`` comes from the user.

Each loader returns a :class:`~.dataset_types.ReIDData` with ``train``, ``query`` and ``gallery`` lists
of ``(path, pid, camid)``: camids are 0-based, junk images (pid −1) are dropped, distractors (pid 0)
are kept, and train pids are relabelled to ``0..num_train_pids−1`` (query/gallery keep the original
pids). Each registers itself in :mod:`.registry` under its name."""
from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence

from .dataset_check import assemble_dataset, check_image_options
from .dataset_types import IMG_EXTENSIONS, DatasetLayoutError, Item, ReIDData
from .registry import register_dataset


def _layout_error(root: str, name: str, expected: str, problem: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{name}: {problem} (root={root!r}). Expected layout:\n{expected}")


def _find_dir(root: str, candidates: Sequence[str], required: Sequence[str]) -> Optional[str]:
    """First of root/<candidate> (or root itself) that holds every entry in ``required``."""
    for sub in list(candidates) + [""]:
        d = os.path.join(root, sub) if sub else root
        if all(os.path.exists(os.path.join(d, r)) for r in required):
            return d
    return None


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
    skip = check_image_options(verify, on_corrupt, skip_bad_images)
    splits = ("bounding_box_train", "query", "bounding_box_test")
    expected = (f"  {root}/[{' | '.join(subdirs)}/]\n" + "".join(f"      {s}/  {example}\n" for s in splits))
    if not os.path.isdir(root):
        raise _layout_error(root, name, expected, "root folder does not exist")
    d = _find_dir(root, subdirs, splits)
    if d is None:
        raise _layout_error(root, name, expected, f"none of {list(subdirs)} (nor root) holds {list(splits)}")
    train, query, gallery = (_scan_named_dir(os.path.join(d, s), name, root, expected, num_cams, max_pid, example)
                             for s in splits)
    return assemble_dataset(name, d, train, query, gallery, verify, skip)


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
    skip = check_image_options(verify, on_corrupt, skip_bad_images)
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
    return assemble_dataset(name, d, train, query, gallery, verify, skip)


register_dataset("market1501", load_market1501)
register_dataset("dukemtmcreid", load_dukemtmc)
register_dataset("occluded_duke", load_occluded_duke)
register_dataset("msmt17", load_msmt17)
