"""CSV and folder datasets through build_dataset (and train.py's data path), their
errors, and register_dataset."""
import os

import numpy as np
import pytest
from PIL import Image

from ribkernels.reid import (DATASETS, CorruptImageError, DatasetLayoutError, ReIDData, build_dataset,
                             register_dataset)
from ribkernels.reid.datasets import relabel

# (split, pid, camid) of each image: names as pids in the test splits, ints in train
ROWS = [("train", "7", "0"), ("train", "7", "1"), ("train", "12", "0"), ("train", "12", "2"), ("train", "3", "1"),
        ("train", "3", "2"), ("train", "-1", "0"),
        ("query", "alice", "0"), ("query", "bob", "1"),
        ("gallery", "alice", "1"), ("gallery", "alice", "2"), ("gallery", "bob", "0"), ("gallery", "carol", "2")]


def _img(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path)


def make_csv(tmp_path, rows=ROWS, header="path,pid,camid,split"):
    lines = [header]
    for k, (split, pid, cam) in enumerate(rows):
        rel = os.path.join("imgs", f"{k:03d}.png")
        _img(str(tmp_path / rel), k)
        lines.append(f"{rel},{pid},{cam},{split}")
    (tmp_path / "my.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "my.csv"


def _check_contents(data: ReIDData):
    assert data.checked and len(data.train) == 6 and len(data.query) == 2 and len(data.gallery) == 4
    assert sorted({p for _, p, _ in data.train}) == [0, 1, 2]  # 3, 7, 12 relabelled; junk dropped
    assert [p for _, p, _ in data.query] == [0, 1]  # alice, bob numbered in sorted order
    assert [p for _, p, _ in data.gallery] == [0, 0, 1, 2]
    assert [c for _, _, c in data.gallery] == [1, 2, 0, 2] and data.num_train_cams == 3
    assert all(os.path.isfile(p) for p, _, _ in data.train + data.query + data.gallery)


def test_csv_end_to_end(tmp_path):
    path = make_csv(tmp_path)
    data = build_dataset("csv", str(path))
    _check_contents(data)
    assert data.name == "csv" and data.train[0][0] == str(tmp_path / "imgs" / "000.png")


def test_csv_folder_of_split_files(tmp_path):
    make_csv(tmp_path)
    lines = (tmp_path / "my.csv").read_text().splitlines()[1:]
    for split in ("train", "query", "gallery"):
        keep = [ln.rsplit(",", 1)[0] for ln in lines if ln.endswith("," + split)]
        (tmp_path / f"{split}.csv").write_text("path,pid,camid\n" + "\n".join(keep) + "\n")
    _check_contents(build_dataset("csv", str(tmp_path)))


def test_folder_end_to_end_and_through_build_data(tmp_path):
    for k, (split, pid, cam) in enumerate(ROWS):
        _img(str(tmp_path / "ds" / split / pid / cam / f"{k}.jpg"), k)
    _check_contents(build_dataset("folder", str(tmp_path / "ds")))

    from ribkernels.engine import components
    from ribkernels.engine.config import build_parser, resolve

    cfg = resolve(build_parser().parse_args(["--config", "", "--dataset", "folder", "--data-root",
                                             str(tmp_path / "ds"), "--batch-size", "4", "--num-instances", "2"]))
    bundle = components.build_data(cfg)
    assert bundle.num_classes == 3 and bundle.num_cams == 3 and len(bundle.gallery) == 4 and bundle.bad_images == ()
    (tmp_path / "ds" / "train" / "7" / "stray.jpg").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match=r"stray.jpg is 1 folder\(s\) below .*expected 2"):
        build_dataset("folder", str(tmp_path / "ds"))
    os.remove(tmp_path / "ds" / "train" / "7" / "stray.jpg")
    os.rename(tmp_path / "ds" / "gallery", tmp_path / "ds" / "test")
    with pytest.raises(DatasetLayoutError, match="has no gallery/"):
        build_dataset("folder", str(tmp_path / "ds"))


def test_csv_errors(tmp_path):
    path = make_csv(tmp_path, header="image,pid,cam,split")
    with pytest.raises(DatasetLayoutError, match=r"missing column\(s\) 'path', 'camid' \(did you mean 'cam'\?\)"):
        build_dataset("csv", str(path))
    path = make_csv(tmp_path)
    text = path.read_text()
    path.write_text(text.replace("imgs/003.png", "imgs/nope.png"))
    with pytest.raises(DatasetLayoutError, match=r"my.csv:5: .*imgs/nope.png"):
        build_dataset("csv", str(path))
    path.write_text(text.replace(",query\n", ",test\n", 1))
    with pytest.raises(DatasetLayoutError, match=r"my.csv:9: split 'test', expected one of"):
        build_dataset("csv", str(path))
    path.write_text(text.replace("bob,1,query", "dave,1,query"))
    with pytest.raises(DatasetLayoutError, match=r"query person id\(s\) never appear in the gallery.*'dave'"):
        build_dataset("csv", str(path))
    path.write_text("\n".join(ln for ln in text.splitlines() if not ln.endswith(",gallery")) + "\n")
    with pytest.raises(DatasetLayoutError, match="the gallery split has no image"):
        build_dataset("csv", str(path))
    path.write_text(text.replace("imgs/003.png,12,2", "imgs/003.png,12,-2"))
    with pytest.raises(DatasetLayoutError, match=r"camid: ids must be >= 0"):
        build_dataset("csv", str(path))
    path.write_text(text.replace("imgs/003.png,12,2,train", "imgs/003.png,,2,train"))
    with pytest.raises(DatasetLayoutError, match=r"my.csv:5: empty pid"):
        build_dataset("csv", str(path))
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_dataset("csv", str(tmp_path / "other.csv"))
    with pytest.raises(DatasetLayoutError, match="is a folder without"):
        build_dataset("csv", str(tmp_path / "imgs"))


def test_csv_bad_image_is_listed(tmp_path):
    path = make_csv(tmp_path)
    (tmp_path / "imgs" / "008.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(CorruptImageError, match="008.png"):
        build_dataset("csv", str(path))
    with pytest.warns(RuntimeWarning):
        data = build_dataset("csv", str(path), skip_bad_images=True)
    assert [os.path.basename(p) for p, _ in data.bad_images] == ["008.png"] and len(data.query) == 1


def test_register_dataset(tmp_path):
    for k, (split, pid, cam) in enumerate(ROWS):
        _img(str(tmp_path / f"{k}.png"), k)

    def load_mine(root, *, flip=False):
        items = {s: [(os.path.join(root, f"{k}.png"), k // 2, int(c)) for k, (sp, _, c) in enumerate(ROWS) if sp == s]
                 for s in ("train", "query", "gallery")}
        return ReIDData("mine", root, relabel(items["train"]), items["query"], items["gallery"])

    register_dataset("mine_test", load_mine)
    try:
        data = build_dataset("mine_test", str(tmp_path), flip=True)
        assert data.checked and len(data.train) == 7 and data.num_train_pids == 4
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("mine_test", lambda root: None)
        register_dataset("mine_test", lambda root: None, overwrite=True)
        with pytest.raises(TypeError, match="returned NoneType, expected a ReIDData"):
            build_dataset("mine_test", str(tmp_path))
        register_dataset("mine_test", lambda root: ReIDData("m", root, [(str(tmp_path / "0.png"), 5, 0)],
                                                            [(str(tmp_path / "1.png"), 1, 0)],
                                                            [(str(tmp_path / "2.png"), 1, 1)]), overwrite=True)
        with pytest.raises(ValueError, match="train pids must be relabelled"):
            build_dataset("mine_test", str(tmp_path))
    finally:
        DATASETS.pop("mine_test", None)
    with pytest.raises(ValueError, match="unknown 'mine_test'.*register_dataset"):
        build_dataset("mine_test", str(tmp_path))
