"""Dataset loaders on tiny fake folder trees: counts, junk dropped, distractors kept, camera ids,
relabelling, clear layout errors, corrupt images (one error, or skipped and counted)."""
import os

import numpy as np
import pytest
from PIL import Image

from ribkernels.reid import (CorruptImageError, DatasetLayoutError, ImageDataset, build_dataset, build_transforms,
                             load_dukemtmc, load_market1501, load_msmt17, load_occluded_duke)


def _img(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 255, (16, 8, 3), dtype=np.uint8)
    Image.fromarray(a).save(path, quality=90)


MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_077419_03.jpg",
                           "0010_c6s4_002502_02.jpg", "0010_c1s1_002502_02.jpg", "0010_c5s1_002502_02.jpg"],
    "query": ["0001_c1s1_001051_00.jpg", "0003_c4s1_005501_00.jpg"],
    "bounding_box_test": ["-1_c1s1_000401_03.jpg", "-1_c3s1_000401_03.jpg", "0000_c1s1_000151_01.jpg",
                          "0001_c2s1_000301_01.jpg", "0001_c1s1_000301_01.jpg", "0003_c6s2_000301_01.jpg"],
}


def make_market(root, sub="Market-1501-v15.09.15", tree=MARKET):
    for split, files in tree.items():
        for k, f in enumerate(files):
            _img(os.path.join(root, sub, split, f), k)
    return root


def test_market_counts_junk_cams_relabel(tmp_path):
    data = load_market1501(str(make_market(tmp_path)))
    assert len(data.train) == 6 and len(data.query) == 2 and len(data.gallery) == 4  # 2 junk dropped
    assert sorted({p for _, p, _ in data.train}) == [0, 1, 2]  # 2, 7, 10 relabelled
    assert data.num_train_pids == 3
    assert [c for _, _, c in data.train] == [0, 1, 2, 0, 4, 5]  # sorted file names, 0-based cameras
    assert 0 in {p for _, p, _ in data.gallery}  # distractor kept
    assert {p for _, p, _ in data.query} == {1, 3}  # query/gallery keep original pids
    assert all(os.path.isfile(p) for p, _, _ in data.train + data.query + data.gallery)
    assert data.num_train_cams == 6
    s = data.summary()
    assert "train" in s and "gallery" in s and "|" in s
    assert data.one_line().startswith("market1501: train 3 ids/6 imgs/5 cams")
    # the registry and a root that is the dataset folder itself
    assert len(build_dataset("market", str(tmp_path / "Market-1501-v15.09.15")).train) == 6


@pytest.mark.parametrize("loader,sub,cam_max", [(load_dukemtmc, "DukeMTMC-reID", 8), (load_occluded_duke, "Occluded_Duke", 8)])
def test_duke_style(tmp_path, loader, sub, cam_max):
    tree = {"bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0046300.jpg", "0005_c1_f0000001.jpg"],
            "query": ["0009_c7_f0000100.jpg"],
            "bounding_box_test": ["0009_c1_f0000101.jpg", "0000_c3_f0000003.jpg", "-1_c2_f000001.jpg"]}
    make_market(tmp_path, sub, tree)
    data = loader(str(tmp_path))
    assert [(p, c) for _, p, c in data.train] == [(0, 1), (0, 7), (1, 0)]
    assert len(data.gallery) == 2 and data.query[0][1:] == (9, 6)
    bad = dict(tree, query=["0009_c9_f0000100.jpg"])  # camera 9 does not exist in Duke
    make_market(tmp_path / "x", sub, bad)
    with pytest.raises(DatasetLayoutError, match="camera 9"):
        loader(str(tmp_path / "x"))


def test_msmt17(tmp_path):
    d = tmp_path / "MSMT17_V1"
    train = ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_05_0303morning_0016_0.jpg 0",
             "0003/0003_000_15_0303noon_0020_1.jpg 3"]
    val = ["0004/0004_000_02_0303noon_0021_0.jpg 4"]
    query = ["0000/0000_000_07_0303morning_0015_0.jpg 0"]
    gallery = ["0000/0000_001_08_0303morning_0015_0.jpg 0", "0001/0001_000_07_0303morning_0015_0.jpg 1"]
    for lst, folder, lines in (("list_train.txt", "train", train), ("list_val.txt", "train", val),
                               ("list_query.txt", "test", query), ("list_gallery.txt", "test", gallery)):
        for k, ln in enumerate(lines):
            _img(str(d / folder / ln.split()[0]), k)
        (d / lst).write_text("\n".join(lines) + "\n")
    data = load_msmt17(str(tmp_path))
    assert len(data.train) == 4 and data.num_train_pids == 3  # val joined to train
    assert [c for _, _, c in data.train] == [0, 4, 14, 1]
    assert [p for _, p, _ in data.train] == [0, 0, 1, 2]
    assert data.query[0][1:] == (0, 6) and [g[1:] for g in data.gallery] == [(0, 7), (1, 6)]
    (d / "list_query.txt").write_text("0000/0000_000_07_0303morning_0015_0.jpg\n")
    with pytest.raises(DatasetLayoutError, match="list_query.txt:1: malformed"):
        load_msmt17(str(tmp_path))
    (d / "list_query.txt").write_text("0000/0000_009_07_0303morning_0015_0.jpg 0\n")
    with pytest.raises(DatasetLayoutError, match="is missing"):
        load_msmt17(str(tmp_path))


def test_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="root folder does not exist"):
        load_market1501(str(tmp_path / "nope"))
    tree = dict(MARKET)
    del tree["query"]
    make_market(tmp_path / "a", "Market-1501", tree)
    with pytest.raises(DatasetLayoutError) as e:
        load_market1501(str(tmp_path / "a"))
    assert "bounding_box_train" in str(e.value) and str(tmp_path / "a") in str(e.value)
    make_market(tmp_path / "b", "Market-1501", dict(MARKET, query=["person_1.jpg"]))
    with pytest.raises(DatasetLayoutError, match="does not match"):
        load_market1501(str(tmp_path / "b"))
    with pytest.raises(DatasetLayoutError, match="MSMT17_V1"):
        load_msmt17(str(tmp_path / "b"))
    with pytest.raises(ValueError, match="root is required"):
        build_dataset("market1501", None)
    with pytest.raises(ValueError, match="unknown"):
        build_dataset("cuhk03", str(tmp_path))


def test_corrupt_images(tmp_path):
    """Garbage and truncated files: one error listing both by default; left out and counted with
    skip_bad_images (never replaced by another image); ImageDataset raises with the path."""
    root = make_market(tmp_path)
    d = tmp_path / "Market-1501-v15.09.15"
    garbage = d / "bounding_box_train" / "0007_c3s3_077419_03.jpg"
    garbage.write_bytes(b"not a jpeg")
    qpath = d / "query" / "0001_c1s1_001051_00.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(qpath, quality=90)
    qpath.write_bytes(qpath.read_bytes()[: qpath.stat().st_size * 6 // 10])  # truncated: the header still parses
    with pytest.raises(CorruptImageError) as e:
        load_market1501(str(root))
    assert "2 unreadable" in str(e.value) and str(garbage) in str(e.value) and str(qpath) in str(e.value)
    with pytest.warns(RuntimeWarning, match="0007_c3s3_077419_03.jpg"):
        data = load_market1501(str(root), skip_bad_images=True)
    assert len(data.bad_images) == 2 and len(data.train) == 5 and len(data.query) == 1
    assert data.num_train_pids == 2 and data.dropped_train_pids == [7]  # pid 7 had one image
    assert "skipped 2" in data.summary()
    with pytest.raises(ValueError, match="truncated files"):
        load_market1501(str(root), verify="header")
    data = load_market1501(str(root), verify="none")  # not decoded: the bad files are still listed
    ds = ImageDataset(data.train, transform=build_transforms(32, 16, is_train=True))
    bad_i = [i for i, (p, _, _) in enumerate(ds.items) if p == str(garbage)][0]
    with pytest.raises(CorruptImageError, match="0007_c3s3_077419_03.jpg"):
        ds[bad_i]
    sample = ds[bad_i - 1]
    assert sample["img"].shape == (3, 32, 16) and sample["path"] == ds.items[bad_i - 1][0]


def test_dataloader_workers(tmp_path):
    import torch

    data = load_market1501(str(make_market(tmp_path)))
    ds = ImageDataset(data.train, transform=build_transforms(32, 16, is_train=False))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    assert sum(len(b["pid"]) for b in batches) == 6 and batches[0]["img"].shape == (3, 3, 32, 16)
