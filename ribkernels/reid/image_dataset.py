"""``ImageDataset``: (path, pid, camid) items → samples, with worker-safe loading. Unreadable images
are found when the dataset is built (``datasets.check_dataset``); one that fails later raises an error
naming its path — never a silently substituted image."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image
from torch.utils.data import Dataset

from .dataset_types import CorruptImageError

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

    Images were decoded once when the dataset was built (``build_dataset``), so an image that fails
    here changed or became unreadable since: :class:`CorruptImageError` naming the path, never a
    substitute image."""

    def __init__(self, items: Sequence[Tuple[str, int, int]], transform: Optional[Callable] = None):
        self.items: List[Tuple[str, int, int]] = [(str(p), int(pid), int(c)) for p, pid, c in items]
        self.transform = transform

    @property
    def pids(self) -> List[int]:
        return [pid for _, pid, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} images")
        path, pid, camid = self.items[index]
        try:
            img = read_image(path)
        except CorruptImageError as exc:
            raise CorruptImageError(f"{exc} (it passed the check when the dataset was built: it changed or "
                                    "became unreadable since)") from exc
        if self.transform is not None:
            img = self.transform(img)
        return {"img": img, "pid": pid, "camid": camid, "path": path, "index": index}
