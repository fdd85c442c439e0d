"""The synthetic dataset: deterministic for a seed, in the layout the Market loader reads, atomic
caching (an interrupted generation is redone)."""
import hashlib
import os

import numpy as np
import pytest

from ribkernels.reid import build_dataset, load_market1501, make_synthetic_market
from ribkernels.reid.synthetic import MARKER, SyntheticConfig

TINY = dict(num_train_ids=5, num_test_ids=4, num_cams=3, train_imgs_per_id=3, gallery_imgs_per_id=4,
            query_imgs_per_id=2, num_distractors=2, num_junk=2, height=64, width=32)


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            if f.endswith(".jpg"):
                h.update(os.path.relpath(os.path.join(dirpath, f), folder).encode())
                with open(os.path.join(dirpath, f), "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def test_deterministic_and_market_layout(tmp_path):
    a = make_synthetic_market(str(tmp_path / "a"), seed=3, **TINY)
    b = make_synthetic_market(str(tmp_path / "b"), seed=3, **TINY)
    c = make_synthetic_market(str(tmp_path / "c"), seed=4, **TINY)
    assert _digest(a) == _digest(b) != _digest(c)
    assert os.path.isfile(os.path.join(a, MARKER))
    assert sorted(d for d in os.listdir(a) if not d.startswith(".")) == ["bounding_box_test", "bounding_box_train", "query"]
    names = os.listdir(os.path.join(a, "bounding_box_test"))
    assert any(n.startswith("-1_c") for n in names) and any(n.startswith("0000_c") for n in names)
    data = load_market1501(a)
    assert data.num_train_pids == 5 and len(data.train) == 15
    assert len(data.gallery) == 4 * 4 + 2  # junk dropped, distractors kept
    assert len({p for _, p, _ in data.query}) == 4
    train_pids = {int(os.path.basename(p)[:4]) for p, _, _ in data.train}
    assert train_pids.isdisjoint({p for _, p, _ in data.query})
    assert {c for _, _, c in data.train + data.query + data.gallery} <= {0, 1, 2}
    # every query has a true match from another camera in the gallery
    for _, qp, qc in data.query:
        assert any(gp == qp and gc != qc for _, gp, gc in data.gallery)
    from PIL import Image
    assert Image.open(data.train[0][0]).size == (32, 64)


def test_cache_reuse_and_interrupted_generation(tmp_path):
    root = str(tmp_path)
    folder = make_synthetic_market(root, seed=1, **TINY)
    mtime = os.path.getmtime(os.path.join(folder, MARKER))
    assert make_synthetic_market(root, seed=1, **TINY) == folder
    assert os.path.getmtime(os.path.join(folder, MARKER)) == mtime  # reused, not regenerated
    os.remove(os.path.join(folder, MARKER))  # as if interrupted before the marker was written
    os.remove(os.path.join(folder, "query", sorted(os.listdir(os.path.join(folder, "query")))[0]))
    again = make_synthetic_market(root, seed=1, **TINY)
    assert again == folder and os.path.isfile(os.path.join(folder, MARKER))
    assert len(os.listdir(os.path.join(folder, "query"))) == 8
    assert not [d for d in os.listdir(root) if ".tmp-" in d]  # temporary folders cleaned up
    data = build_dataset("synthetic", root, seed=1, **TINY)
    assert data.name == "synthetic" and data.num_train_pids == 5
    assert SyntheticConfig(seed=1, **TINY).key() in data.root
    with pytest.raises(ValueError, match="num_cams"):
        make_synthetic_market(root, num_cams=1)


def test_default_size_is_small(tmp_path):
    cfg = SyntheticConfig()
    n = (cfg.num_train_ids * cfg.train_imgs_per_id
         + cfg.num_test_ids * (cfg.gallery_imgs_per_id + cfg.query_imgs_per_id) + cfg.num_distractors)
    assert n < 1500 and cfg.height == 128 and cfg.width == 64
