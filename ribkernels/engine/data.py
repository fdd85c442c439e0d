"""The training data train.py builds from the config: the dataset's splits, transforms and PK sampler
(:class:`DataBundle`), this rank's per-epoch indices, and batch unpacking. The loaders underneath are
in :mod:`ribkernels.engine.loaders` (re-exported here, where they used to live)."""
import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..reid import ImageDataset, RandomIdentitySampler, build_dataset, build_transforms
from .loaders import SeededSamples, make_loader, pk_epoch_indices, position_seed, shard  # noqa: F401 (old home)

log = logging.getLogger("ribkernels.train")


def derived_seed(*parts) -> int:
    """A 31-bit seed derived from ``parts`` (stable across runs and machines)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclass
class DataBundle:
    train: List[Tuple[str, int, int]]
    query: List[Tuple[str, int, int]]
    gallery: List[Tuple[str, int, int]]
    num_classes: int
    num_cams: int
    num_views: int
    train_transform: Callable
    test_transform: Callable
    num_workers: int
    pin_memory: bool
    sampler: object  # None when built for evaluation only
    name: str = ""
    bad_images: Tuple[Tuple[str, str], ...] = ()  # (path, reason) left out with data.skip_bad_images
    root: str = ""  # the folder the images were read from (the synthetic dataset's generated folder too)

    def train_loader(self, cfg: Dict, indices: Sequence[int], batch_size: int, seed: int, offset: int = 0):
        """Training batches of ``indices`` (which start at position ``offset`` of the epoch); each
        sample's augmentation is seeded from ``seed`` and its position (exact mid-epoch resume)."""
        return make_loader(ImageDataset(self.train, self.train_transform), indices, batch_size,
                             self.num_workers, seed=seed, drop_last=True, pin_memory=self.pin_memory,
                             sample_seed=seed, offset=offset)

    def train_eval_loader(self, cfg: Dict, rank: int, world: int):
        """This rank's share of the training set with test transforms (for the IBB refresh)."""
        return make_loader(ImageDataset(self.train, self.test_transform), shard(len(self.train), rank, world),
                             cfg["eval"]["batch_size"], self.num_workers, pin_memory=self.pin_memory)

    def test_loader(self, cfg: Dict, items, transform: Optional[Callable] = None):
        return make_loader(ImageDataset(items, transform or self.test_transform), None,
                             cfg["eval"]["batch_size"], self.num_workers, pin_memory=self.pin_memory)


def build_data(cfg: Dict, rank: int = 0, world: int = 1, *, train: bool = True) -> DataBundle:
    """The dataset, its transforms and (``train``) the PK sampler; ``train=False`` (evaluation only)
    builds no sampler, so a training split too small for one PK batch is no error."""
    d = cfg["data"]
    name = d["dataset"]
    kwargs = dict(d["dataset_kwargs"] or {})
    kwargs["skip_bad_images"] = d.get("skip_bad_images", False)  # a bool (checked by build_dataset)
    root = d["root"]
    if name == "synthetic":
        root = root if root not in (None, "", "data") else None
    # Rank 0 first: it generates the synthetic cache and decodes every image once (the verdicts are
    # cached), so the other ranks only read caches. Both are atomic; this just avoids duplicate work.
    from . import distributed as du

    if rank == 0:
        ds = build_dataset(name, root, **kwargs)
    du.barrier()
    if rank != 0:
        ds = build_dataset(name, root, **kwargs)
    if ds.bad_images:
        dropped = (f"; {len(ds.dropped_train_pids)} training identities left with no image dropped (labels "
                   "relabelled)") if ds.dropped_train_pids else ""
        log.warning("dataset %s: skipped %d unreadable image(s) (data.skip_bad_images), e.g. %s%s", ds.name,
                    len(ds.bad_images), ds.bad_images[0][0], dropped)
    h, w = cfg["model"]["img_size"]
    common = dict(mean=d["pixel_mean"], std=d["pixel_std"])
    train_tf = build_transforms(h, w, True, flip_prob=d["flip_prob"], padding=d["padding"],
                                re_prob=d["erasing_prob"], **common)
    test_tf = build_transforms(h, w, False, test_interpolation=d["test_interpolation"], **common)
    sampler = RandomIdentitySampler(ds.train, d["batch_size"], d["num_instances"],
                                    seed=derived_seed(cfg["solver"]["seed"], "pk")) if train else None
    return DataBundle(train=list(ds.train), query=list(ds.query), gallery=list(ds.gallery),
                      num_classes=ds.num_train_pids, num_cams=ds.num_train_cams, num_views=1,
                      train_transform=train_tf, test_transform=test_tf, num_workers=int(d["num_workers"]),
                      pin_memory=torch.cuda.is_available(), sampler=sampler, name=ds.name,
                      bad_images=tuple(ds.bad_images), root=str(ds.root or ""))


def epoch_indices(data: DataBundle, cfg: Dict, seed: int, epoch: int, rank: int, world: int,
                  min_len: int = 0) -> List[int]:
    """This rank's training indices for ``epoch`` (PK batches, P/world identities × K per batch), a
    function of (seed, epoch) only; extended with further PK rounds up to ``min_len``."""
    return pk_epoch_indices(data.sampler, epoch, rank, world, min_len)


def unpack(batch, device: torch.device):
    """(images, pids, camids, viewids) on ``device`` from a loader batch (tuple/list or dict)."""
    if isinstance(batch, dict):
        imgs, pids = batch["img"], batch["pid"]
        cams, views = batch.get("camid"), batch.get("viewid")
    else:
        imgs, pids, cams = batch[0], batch[1], batch[2]
        views = batch[3] if len(batch) > 3 else None
    nb = device.type == "cuda"
    to = lambda t: None if t is None else torch.as_tensor(t).to(device, non_blocking=nb)
    return to(imgs), to(pids).long(), to(cams).long(), (to(views).long() if views is not None else None)
