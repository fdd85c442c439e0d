"""The data type every Re-ID loader returns (:class:`ReIDData`: train / query / gallery lists of
``(path, pid, camid)``), the errors a loader raises, and :func:`relabel` for train pids."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

Item = Tuple[str, int, int]

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


def relabel(items: Sequence[Item]) -> List[Item]:
    """Map the pids of ``items`` to ``0..n-1`` in sorted order (what a train split needs)."""
    pids = sorted({p for _, p, _ in items})
    lab = {p: i for i, p in enumerate(pids)}
    return [(path, lab[p], c) for path, p, c in items]
