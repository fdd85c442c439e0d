"""The Re-ID dataset registry: names → loaders (:func:`register_dataset`), their aliases, and
:func:`build_dataset`, the entry point that loads a dataset by name, validates what the loader returned
and decodes each image once. Loaders register themselves here; this module imports none of them."""
from __future__ import annotations

import importlib
import inspect
import re
from typing import Callable, Dict, Optional

from .dataset_check import check_dataset, check_image_options
from .dataset_types import DatasetLayoutError, ReIDData

DATASETS: Dict[str, Callable[..., ReIDData]] = {}  # filled by register_dataset (the loader modules at import)
ALIASES = {"market": "market1501", "market-1501": "market1501", "duke": "dukemtmcreid",
            "dukemtmc": "dukemtmcreid", "dukemtmc-reid": "dukemtmcreid", "occ_duke": "occluded_duke",
            "occluded-duke": "occluded_duke", "msmt": "msmt17"}


# The built-in names and the module whose import registers each (imported by name on first use, so
# this module imports no loader and no loader module imports back into a circle).
BUILTIN_MODULES = {"market1501": "loaders", "dukemtmcreid": "loaders", "occluded_duke": "loaders",
                   "msmt17": "loaders", "synthetic": "synthetic", "csv": "custom", "folder": "custom"}
BUILTIN_DATASETS = tuple(BUILTIN_MODULES)


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


def find_loader(name: str) -> Optional[Callable[..., ReIDData]]:
    """The loader registered under ``name`` (or its alias), importing a built-in's module on first use;
    None when nothing is registered under it."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in BUILTIN_MODULES and key not in DATASETS:
        importlib.import_module(f"{__package__}.{BUILTIN_MODULES[key]}")  # registers itself
    return DATASETS.get(key)


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
    key = ALIASES.get(name.lower(), name.lower())
    if key in BUILTIN_MODULES and key not in DATASETS:
        importlib.import_module(f"{__package__}.{BUILTIN_MODULES[key]}")  # registers itself
    if key not in DATASETS:
        known = sorted(set(DATASETS) | set(BUILTIN_DATASETS))
        raise ValueError(f"dataset name: unknown {name!r}; choose from {known} or register one with "
                         "ribkernels.reid.register_dataset")
    if key != "synthetic" and not root:
        raise ValueError(f"dataset {name!r}: root is required (no downloads; point it at the folder holding the dataset)")
    skip = check_image_options(verify, kwargs.pop("on_corrupt", None), skip_bad_images)
    loader = DATASETS[key]
    if _accepts(loader, "verify") and _accepts(loader, "on_corrupt"):  # the built-in loaders
        kwargs.update(verify=verify, on_corrupt="skip" if skip else "raise")
    data = loader(root, **kwargs)
    _validate_loaded(name, data)
    if verify == "full" and not data.checked:
        data = check_dataset(data, skip_bad_images=skip, workers=workers, progress=progress)
    return data
