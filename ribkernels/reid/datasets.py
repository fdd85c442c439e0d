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

This module keeps the names it used to hold; they now live in :mod:`.dataset_types` (the data type),
:mod:`.dataset_check` (the integrity check), :mod:`.loaders` (the four benchmark loaders) and
:mod:`.registry` (names → loaders, ``build_dataset``).
"""
from .dataset_check import MAX_LISTED, assemble_dataset, check_dataset, check_image_options
from .dataset_types import IMG_EXTENSIONS, CorruptImageError, DatasetLayoutError, Item, ReIDData, relabel
from .loaders import load_dukemtmc, load_market1501, load_msmt17, load_occluded_duke
from .registry import ALIASES, BUILTIN_DATASETS, DATASETS, build_dataset, register_dataset

__all__ = ["ReIDData", "DatasetLayoutError", "CorruptImageError", "build_dataset", "register_dataset",
           "DATASETS", "load_market1501", "load_dukemtmc", "load_occluded_duke", "load_msmt17",
           "check_dataset", "IMG_EXTENSIONS"]
