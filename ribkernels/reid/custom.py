"""Custom Re-ID datasets without code: a CSV file or a folder layout.

``--dataset csv --data-root my.csv``: a CSV with a header row and the columns ``path``, ``pid``,
``camid``, ``split`` (``train`` | ``query`` | ``gallery``); or ``--data-root DIR`` holding ``train.csv``,
``query.csv`` and ``gallery.csv`` with the columns ``path``, ``pid``, ``camid``. Relative paths are
relative to the CSV file's folder.

``--dataset folder --data-root DIR``: images in ``DIR/{train,query,gallery}/<pid>/<camid>/<image>``.

Person ids: integers (``-1`` marks junk, dropped as in Market-1501) or names; camera ids: integers
≥ 0 (used as given) or names. Names are numbered in sorted order (pids over query + gallery, camids
over all splits). Train pids are relabelled to ``0..n-1``. Every query pid must appear in the
gallery. Errors name the file (and line), the value and what was expected.
"""
from __future__ import annotations

import csv
import difflib
import os
from typing import Dict, List, Optional, Sequence, Tuple

from .dataset_check import assemble_dataset, check_image_options
from .dataset_types import IMG_EXTENSIONS, DatasetLayoutError, Item, ReIDData
from .registry import register_dataset

__all__ = ["load_csv_dataset", "load_folder_dataset", "CSV_COLUMNS", "SPLITS"]

SPLITS = ("train", "query", "gallery")
CSV_COLUMNS = ("path", "pid", "camid")
MAX_LISTED = 20

Row = Tuple[str, str, str, str, str]  # split, path, pid text, camid text, where (file:line or path)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _numbering(values: Sequence[str], what: str, allow_negative: bool = False) -> Dict[str, int]:
    """All integers: used as given; otherwise every value numbered in sorted order."""
    if all(_is_int(v) for v in values):
        out = {v: int(v) for v in values}
        bad = sorted({v for v, i in out.items() if i < 0 and not (allow_negative and i == -1)})
        if bad:
            raise ValueError(f"{what}: negative ids {bad[:5]} (only -1, junk, is allowed for pids)" if allow_negative
                             else f"{what}: ids must be >= 0, got {bad[:5]}")
        return out
    return {v: i for i, v in enumerate(sorted(set(values)))}


def _assemble(name: str, root: str, rows: List[Row], layout: str, verify: str, skip: bool) -> ReIDData:
    def fail(problem: str) -> DatasetLayoutError:
        return DatasetLayoutError(f"{name} dataset {root!r}: {problem}\nExpected:\n{layout}")

    missing = [(where, p) for _, p, _, _, where in rows if not os.path.isfile(p)]
    if missing:
        shown = "\n  ".join(f"{where}: {p}" for where, p in missing[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise fail(f"{len(missing)} image file(s) not found:\n  {shown}{more}")
    for split in SPLITS:
        if not any(r[0] == split for r in rows):
            raise fail(f"the {split} split has no image")
    try:
        cams = _numbering([r[3] for r in rows], "camid")
        test_pids = _numbering([r[2] for r in rows if r[0] != "train"], "pid (query/gallery)", allow_negative=True)
        train_pids = _numbering([r[2] for r in rows if r[0] == "train"], "pid (train)", allow_negative=True)
    except ValueError as exc:
        raise fail(str(exc)) from None
    splits: Dict[str, List[Item]] = {s: [] for s in SPLITS}
    for split, path, pid, cam, _ in rows:
        p = (train_pids if split == "train" else test_pids)[pid]
        if p == -1 and _is_int(pid):
            continue  # junk
        splits[split].append((path, p, cams[cam]))
    for split in SPLITS:
        if not splits[split]:
            raise fail(f"the {split} split has only junk images (pid -1)")
    gallery_pids = {p for _, p, _ in splits["gallery"]}
    unknown = sorted({pid for split, _, pid, _, _ in rows if split == "query" and test_pids[pid] not in gallery_pids
                      and test_pids[pid] != -1})
    if unknown:
        raise fail(f"{len(unknown)} query person id(s) never appear in the gallery, so those queries cannot be "
                   f"evaluated: {unknown[:MAX_LISTED]}{' ...' if len(unknown) > MAX_LISTED else ''}")
    return assemble_dataset(name, root, splits["train"], splits["query"], splits["gallery"], verify, skip)


# ----------------------------------------------------------------------------------------------------- CSV

_CSV_LAYOUT = ("  my.csv   header 'path,pid,camid,split', one row per image, split in train|query|gallery\n"
               "  or DIR/{train,query,gallery}.csv   header 'path,pid,camid'\n"
               "  (paths relative to the CSV's folder or absolute; pid: int (-1: junk) or a name; "
               "camid: int >= 0 or a name)")


def _read_csv(csv_path: str, split: Optional[str], root: str) -> List[Row]:
    need = CSV_COLUMNS + (("split",) if split is None else ())
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DatasetLayoutError(f"csv dataset: {csv_path} is empty; expected a header row {','.join(need)}"
                                     f"\nExpected:\n{_CSV_LAYOUT}")
        header = [h.strip().lower() for h in header]
        absent = [c for c in need if c not in header]
        if absent:
            hints = [f"{c!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(c, header, 1)) else repr(c)
                     for c in absent]
            raise DatasetLayoutError(f"csv dataset: {csv_path}: missing column(s) {', '.join(hints)}; the header "
                                     f"has {header}\nExpected:\n{_CSV_LAYOUT}")
        col = {c: header.index(c) for c in need}
        rows: List[Row] = []
        for ln, rec in enumerate(reader, 2):
            if not rec or all(not v.strip() for v in rec):
                continue
            where = f"{csv_path}:{ln}"
            if len(rec) < len(header):
                raise DatasetLayoutError(f"csv dataset: {where}: {len(rec)} field(s), the header has {len(header)}: {rec}")
            vals = {c: rec[i].strip() for c, i in col.items()}
            empty = [c for c, v in vals.items() if not v]
            if empty:
                raise DatasetLayoutError(f"csv dataset: {where}: empty {', '.join(empty)} in {rec}")
            s = split or vals["split"].lower()
            if s not in SPLITS:
                raise DatasetLayoutError(f"csv dataset: {where}: split {vals['split']!r}, expected one of {SPLITS}")
            path = vals["path"]
            path = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
            rows.append((s, path, vals["pid"], vals["camid"], where))
    return rows


def load_csv_dataset(root: str, *, verify: str = "full", skip_bad_images: Optional[bool] = None,
                     on_corrupt: Optional[str] = None) -> ReIDData:
    """``root``: a CSV file with the columns path, pid, camid, split, or a folder holding
    ``train.csv``, ``query.csv``, ``gallery.csv`` (columns path, pid, camid). See the module docstring."""
    skip = check_image_options(verify, on_corrupt, skip_bad_images)
    root = os.fspath(root)
    if os.path.isfile(root):
        rows = _read_csv(root, None, root)
        folder = os.path.dirname(os.path.abspath(root))
    elif os.path.isdir(root):
        files = {s: os.path.join(root, f"{s}.csv") for s in SPLITS}
        absent = [p for p in files.values() if not os.path.isfile(p)]
        if absent:
            raise DatasetLayoutError(f"csv dataset: {root!r} is a folder without {', '.join(absent)}"
                                     f"\nExpected:\n{_CSV_LAYOUT}")
        rows = [r for s, p in files.items() for r in _read_csv(p, s, root)]
        folder = os.path.abspath(root)
    else:
        raise DatasetLayoutError(f"csv dataset: {root!r} does not exist\nExpected:\n{_CSV_LAYOUT}")
    return _assemble("csv", folder, rows, _CSV_LAYOUT, verify, skip)


# -------------------------------------------------------------------------------------------------- folder

_FOLDER_LAYOUT = ("  DIR/train/<pid>/<camid>/<image>   (also DIR/query/..., DIR/gallery/...)\n"
                  "  <pid>: int (-1: junk) or a name; <camid>: int >= 0 or a name; images "
                  + "/".join(IMG_EXTENSIONS))


def load_folder_dataset(root: str, *, verify: str = "full", skip_bad_images: Optional[bool] = None,
                        on_corrupt: Optional[str] = None) -> ReIDData:
    """Images in ``root/{train,query,gallery}/<pid>/<camid>/<image>`` (see the module docstring)."""
    skip = check_image_options(verify, on_corrupt, skip_bad_images)
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"folder dataset: {root!r} is not a folder\nExpected:\n{_FOLDER_LAYOUT}")
    absent = [s for s in SPLITS if not os.path.isdir(os.path.join(root, s))]
    if absent:
        raise DatasetLayoutError(f"folder dataset: {root!r} has no {', '.join(s + '/' for s in absent)} "
                                 f"(found {sorted(os.listdir(root))})\nExpected:\n{_FOLDER_LAYOUT}")
    rows: List[Row] = []
    for split in SPLITS:
        top = os.path.join(root, split)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = os.path.relpath(dirpath, top)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            for f in sorted(filenames):
                if f.startswith(".") or not f.lower().endswith(IMG_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, f)
                if depth != 2:
                    raise DatasetLayoutError(f"folder dataset: image {path} is {depth} folder(s) below {top}, "
                                             f"expected 2 (<pid>/<camid>/)\nExpected:\n{_FOLDER_LAYOUT}")
                pid, cam = rel.split(os.sep)
                rows.append((split, path, pid, cam, path))
    return _assemble("folder", root, rows, _FOLDER_LAYOUT, verify, skip)


register_dataset("csv", load_csv_dataset)
register_dataset("folder", load_folder_dataset)
