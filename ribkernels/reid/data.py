"""``ImageDataset``: (path, pid, camid) items → samples, with worker-safe loading and a policy for
unreadable images (SPEC §4: reported with their path, skipped with a warning and counted, or fatal
by flag — never a crash mid-epoch)."""
from __future__ import annotations

import time
import warnings
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image
from torch.utils.data import Dataset

from .datasets import CorruptImageError

__all__ = ["ImageDataset", "read_image"]


def read_image(path: str, retries: int = 2, wait_s: float = 0.05) -> Image.Image:
    """Open and fully decode ``path`` as RGB. Each call opens its own file handle (safe in DataLoader
    workers); transient ``OSError``s (network filesystems) are retried ``retries`` times; a file that
    still fails raises :class:`CorruptImageError` naming the path."""
    last: Optional[BaseException] = None
    for attempt in range(retries + 1):
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()
                return img.convert("RGB")
        except FileNotFoundError as exc:
            raise CorruptImageError(f"cannot read image {path}: file not found") from exc
        except OSError as exc:  # includes PIL's UnidentifiedImageError and truncated files
            last = exc
            if exc.errno is None or attempt == retries:  # a decoding error: retrying will not help
                break
            time.sleep(wait_s)
        except Exception as exc:  # decoders raise ValueError/SyntaxError on some corrupt files
            last = exc
            break
    raise CorruptImageError(f"cannot read image {path}: {type(last).__name__}: {last}") from last


class ImageDataset(Dataset):
    """Samples ``{"img", "pid", "camid", "path", "index"}`` (img transformed when ``transform`` is
    given, else a PIL image).

    on_corrupt: ``"skip"`` — warn with the path, count it in ``num_skipped`` / ``skipped_paths``
    (per process: DataLoader workers keep their own counts) and return another image of the same pid
    (so PK batches keep their shape); ``"raise"`` — :class:`CorruptImageError` naming the path."""

    def __init__(self, items: Sequence[Tuple[str, int, int]], transform: Optional[Callable] = None,
                 on_corrupt: str = "skip"):
        if on_corrupt not in ("skip", "raise"):
            raise ValueError(f"on_corrupt: expected 'skip' or 'raise', got {on_corrupt!r}")
        self.items: List[Tuple[str, int, int]] = [(str(p), int(pid), int(c)) for p, pid, c in items]
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.skipped_paths: List[str] = []
        by_pid: Dict[int, List[int]] = defaultdict(list)
        for i, (_, pid, _) in enumerate(self.items):
            by_pid[pid].append(i)
        self._by_pid = dict(by_pid)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_paths)

    @property
    def pids(self) -> List[int]:
        return [pid for _, pid, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def _candidates(self, index: int) -> List[int]:
        same = self._by_pid[self.items[index][1]]
        k = same.index(index)
        return same[k:] + same[:k]  # the image itself first, then the rest of its identity in order

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} images")
        for j in self._candidates(index):
            path, pid, camid = self.items[j]
            try:
                img = read_image(path)
            except CorruptImageError as exc:
                if self.on_corrupt == "raise":
                    raise
                if path not in self.skipped_paths:
                    self.skipped_paths.append(path)
                    warnings.warn(f"{exc} — skipped, using another image of pid {pid} "
                                  f"({len(self.skipped_paths)} skipped so far in this process)", RuntimeWarning)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return {"img": img, "pid": pid, "camid": camid, "path": path, "index": j}
        raise CorruptImageError(f"every image of pid {self.items[index][1]} is unreadable "
                                f"(first: {self.items[index][0]})")
