"""Decode every image of a dataset once, in parallel, and remember the verdicts.

A header check (``Image.verify()``) passes truncated JPEGs; only a full decode (``Image.load()``
with ``ImageFile.LOAD_TRUNCATED_IMAGES`` off) finds them. Decoding a whole dataset costs seconds to
a minute, so each verdict is cached by absolute path + size + mtime: a second build decodes only
new or changed files. The cache is one JSON file in the dataset folder when it is writable, else
under ``$RIBKERNELS_CACHE`` (default ``~/.cache/ribkernels``)/``image-check/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from .. import _env

__all__ = ["ImageCheckResult", "check_images", "decode_error", "cache_path_for", "CACHE_NAME", "record_bad_image"]

CACHE_NAME = ".ribkernels-image-check.json"
_CACHE_VERSION = 1
PROGRESS_MIN = 2000  # show progress when at least this many images must be decoded


def decode_error(path: str) -> Tuple[Optional[str], bool]:
    """Fully decode ``path``. Returns ``(reason, cacheable)``: ``reason`` is None for a good image,
    else ``"<Exception>: <message>"``; ``cacheable`` is False for errors that may be transient
    (I/O errors with an errno, e.g. a network filesystem hiccup) so they are retried next build."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # every pixel: a truncated file raises here, not in open()/verify()
            if im.width < 1 or im.height < 1:
                return f"empty image ({im.width}x{im.height})", True
    except FileNotFoundError:
        return "file not found", False
    except OSError as exc:  # PIL's UnidentifiedImageError and "image file is truncated" have no errno
        return f"{type(exc).__name__}: {exc}", exc.errno is None
    except Exception as exc:  # decoders raise ValueError/SyntaxError/struct.error on some corrupt files
        return f"{type(exc).__name__}: {exc}", True
    return None, True


@dataclass
class ImageCheckResult:
    """``bad``: path -> reason for every unreadable image (in input order); ``decoded``: images
    decoded by this call; ``cached``: verdicts taken from the cache; ``cache_file``: where the
    verdicts were stored (None when no location was writable)."""

    bad: Dict[str, str] = field(default_factory=dict)
    decoded: int = 0
    cached: int = 0
    cache_file: Optional[str] = None
    seconds: float = 0.0


def _cache_base() -> str:
    return _env.cache_dir()


def _writable_dir(d: str) -> bool:
    return os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)


def cache_path_for(folder: str) -> str:
    """The cache file for a dataset ``folder``: inside it when writable, else in the user cache."""
    folder = os.path.abspath(folder)
    if _writable_dir(folder):
        return os.path.join(folder, CACHE_NAME)
    digest = hashlib.sha1(folder.encode()).hexdigest()[:16]
    return os.path.join(_cache_base(), "image-check", f"{digest}.json")


def _read_cache(path: str) -> Dict[str, list]:
    try:
        with open(path) as f:
            blob = json.load(f)
    except (OSError, ValueError):
        return {}  # absent or damaged: every image is decoded again
    if not isinstance(blob, dict) or blob.get("version") != _CACHE_VERSION or not isinstance(blob.get("images"), dict):
        return {}
    return blob["images"]


def _write_cache(path: str, entries: Dict[str, list]) -> Optional[str]:
    """Atomic write (temp file + rename); returns the path, or None when it cannot be written."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-image-check-", suffix=".json", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _CACHE_VERSION, "images": entries}, f, separators=(",", ":"))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:
        return None
    return path


class _Progress:
    """``checking images: i/n`` on stderr (tqdm when installed), only for long work."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar, self.enabled = total, 0, None, enabled and total > 0
        self.last = 0.0
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="checking images", unit="img", file=sys.stderr, mininterval=1.0)
            except ImportError:
                pass

    def step(self) -> None:
        if not self.enabled:
            return
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif time.monotonic() - self.last > 2.0 or self.done == self.total:
            self.last = time.monotonic()
            print(f"checking images: {self.done}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_images(paths: Iterable[str], cache_folder: Optional[str] = None, *, workers: Optional[int] = None,
                 progress: Optional[bool] = None) -> ImageCheckResult:
    """Decode each image in ``paths`` once (threads: PIL releases the GIL while decoding); verdicts
    of unchanged files come from the cache of ``cache_folder`` (no cache when None).

    progress: None shows a count/bar on stderr when at least ``PROGRESS_MIN`` images are decoded."""
    from PIL import ImageFile

    t0 = time.perf_counter()
    paths = list(dict.fromkeys(os.path.abspath(os.fspath(p)) for p in paths))
    cache_file = cache_path_for(cache_folder) if cache_folder else None
    entries = _read_cache(cache_file) if cache_file else {}
    result = ImageCheckResult(cache_file=cache_file)

    verdicts: Dict[str, Optional[str]] = {}
    todo: List[Tuple[str, int, int]] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            verdicts[p] = "file not found"
            continue
        hit = entries.get(p)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            verdicts[p] = hit[2]
            result.cached += 1
        else:
            todo.append((p, st.st_size, st.st_mtime_ns))

    if todo:
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone turned PIL's tolerance on: it would hide truncation
            raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images "
                               "would pass the check; set it to False before building the dataset")
        n_workers = max(1, min(len(todo), workers or min(16, (os.cpu_count() or 1) * 2)))
        bar = _Progress(len(todo), len(todo) >= PROGRESS_MIN if progress is None else progress)
        try:
            with ThreadPoolExecutor(n_workers) as pool:
                for (p, size, mtime), (reason, cacheable) in zip(todo, pool.map(lambda t: decode_error(t[0]), todo)):
                    verdicts[p] = reason
                    if cacheable:
                        entries[p] = [size, mtime, reason]
                    bar.step()
        finally:
            bar.close()
        result.decoded = len(todo)
        if cache_file:
            result.cache_file = _write_cache(cache_file, entries)

    result.bad = {p: verdicts[p] for p in paths if verdicts[p] is not None}
    result.seconds = time.perf_counter() - t0
    return result


def record_bad_image(path: str, reason: str) -> List[str]:
    """Record ``path`` as unreadable in every image-check cache that lists it (the caches of its parent
    folders), so the next dataset build reports it (or leaves it out with ``skip_bad_images``) even when
    its size and mtime did not change. Returns the cache files updated."""
    path = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(path)
    except OSError:
        return []  # gone: the next build finds it missing anyway
    updated = []
    folder = os.path.dirname(path)
    while True:
        cache_file = cache_path_for(folder)
        if os.path.isfile(cache_file):
            entries = _read_cache(cache_file)
            if path in entries:
                entries[path] = [st.st_size, st.st_mtime_ns, str(reason) or "unreadable"]
                if _write_cache(cache_file, entries):
                    updated.append(cache_file)
        parent = os.path.dirname(folder)
        if parent == folder:
            return updated
        folder = parent
