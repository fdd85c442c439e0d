"""Every image decoded once at dataset build (cached), truncated/corrupt images listed
in one error or skipped and counted (never substituted), bad file names named, identities left
without images dropped and relabelled."""
import copy
import os

import numpy as np
import pytest
from PIL import Image, ImageFile

from ribkernels.reid import CorruptImageError, DatasetLayoutError, ImageDataset, build_dataset, check_images
from ribkernels.reid import image_check

TREE = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_077419_03.jpg",
                           "0007_c4s3_077419_03.jpg", "0010_c6s4_002502_02.jpg", "0010_c1s1_002502_02.jpg",
                           "0010_c5s1_002502_02.jpg"],
    "query": ["0001_c1s1_001051_00.jpg", "0003_c4s1_005501_00.jpg"],
    "bounding_box_test": ["-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg", "0001_c2s1_000301_01.jpg",
                          "0001_c3s1_000301_01.jpg", "0003_c6s2_000301_01.jpg", "0003_c5s2_000301_01.jpg"],
}


def _write_jpeg(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 255, (64, 32, 3), dtype=np.uint8)
    Image.fromarray(a).save(path, quality=90)


def _truncate(path):
    """Keep 60% of the bytes: the header still parses, the pixels do not all decode."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) * 6 // 10])


def make_market(root, tree=TREE):
    d = os.path.join(root, "Market-1501")
    for split, files in tree.items():
        for k, f in enumerate(files):
            _write_jpeg(os.path.join(d, split, f), hash((split, k)) % 1000)
    return d


def _paths(data):
    return [p for s in (data.train, data.query, data.gallery) for p, _, _ in s]


@pytest.fixture
def counted_decodes(monkeypatch):
    """Counts full decodes made by the image check."""
    calls = []
    real = image_check.decode_error

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(image_check, "decode_error", counting)
    return calls


def test_truncated_in_train_query_gallery_listed_in_one_error(tmp_path):
    d = make_market(str(tmp_path))
    bad = [os.path.join(d, "bounding_box_train", "0002_c2s1_000551_01.jpg"),
           os.path.join(d, "query", "0001_c1s1_001051_00.jpg"),
           os.path.join(d, "bounding_box_test", "0003_c6s2_000301_01.jpg")]
    for p in bad:
        _truncate(p)
        with Image.open(p) as im:
            im.verify()  # a header check passes: only a full decode finds these files
    with pytest.raises(CorruptImageError) as e:
        build_dataset("market1501", str(tmp_path))
    msg = str(e.value)
    assert "3 unreadable image(s)" in msg and "--skip-bad-images" in msg
    for p, split in zip(bad, ("train", "query", "gallery")):
        line = next(ln for ln in msg.splitlines() if p in ln)
        assert line.split()[0] == split and "truncated" in line


def test_skip_bad_images_counts_and_never_substitutes(tmp_path):
    d = make_market(str(tmp_path))
    clean = build_dataset("market1501", str(tmp_path))
    bad = [os.path.join(d, "bounding_box_train", "0002_c2s1_000551_01.jpg"),
           os.path.join(d, "query", "0001_c1s1_001051_00.jpg"),
           os.path.join(d, "bounding_box_test", "0003_c6s2_000301_01.jpg")]
    for p in bad:
        _truncate(p)
    with pytest.warns(RuntimeWarning, match="skipped 3 unreadable"):
        data = build_dataset("market1501", str(tmp_path), skip_bad_images=True)
    assert [p for p, _ in data.bad_images] == bad and data.skipped == data.bad_images
    assert all("truncated" in why for _, why in data.bad_images)
    # exactly the bad images are gone, nothing else changed, no image appears in their place
    for split in ("train", "query", "gallery"):
        before, after = getattr(clean, split), getattr(data, split)
        assert [it[0] for it in after] == [it[0] for it in before if it[0] not in bad]
    assert sorted(set(_paths(data))) == sorted(_paths(data))
    assert data.num_train_pids == clean.num_train_pids and data.dropped_train_pids == []
    assert "skipped 3" in data.one_line()
    # a bad image handed to ImageDataset anyway raises with its path (no same-id stand-in)
    with pytest.raises(CorruptImageError, match="0001_c1s1_001051_00.jpg"):
        ImageDataset([(bad[1], 1, 0), (os.path.join(d, "bounding_box_test", "0001_c2s1_000301_01.jpg"), 1, 1)])[0]


def test_identity_with_every_image_bad(tmp_path):
    d = make_market(str(tmp_path))
    pid10 = [os.path.join(d, "bounding_box_train", f) for f in TREE["bounding_box_train"] if f.startswith("0010")]
    for p in pid10:
        open(p, "wb").write(b"\xff\xd8 not a jpeg")
    with pytest.raises(CorruptImageError) as e:
        build_dataset("market1501", str(tmp_path))
    assert all(p in str(e.value) for p in pid10)
    with pytest.warns(RuntimeWarning, match="1 training identity left with no image dropped"):
        data = build_dataset("market1501", str(tmp_path), skip_bad_images=True)
    assert data.dropped_train_pids == [10] and len(data.bad_images) == 3
    assert data.num_train_pids == 2 and sorted({p for _, p, _ in data.train}) == [0, 1]  # relabelled
    assert not any(p in pid10 for p in _paths(data))


def test_split_left_empty_is_an_error(tmp_path):
    d = make_market(str(tmp_path))
    for f in TREE["query"]:
        _truncate(os.path.join(d, "query", f))
    with pytest.raises(CorruptImageError, match="the query split has no readable image left"), \
            pytest.warns(RuntimeWarning):
        build_dataset("market1501", str(tmp_path), skip_bad_images=True)


def test_bad_file_name_names_file_and_pattern(tmp_path):
    tree = copy.deepcopy(TREE)
    tree["bounding_box_train"].append("0002-3_c1s1_000001_00.jpg")
    make_market(str(tmp_path), tree)
    with pytest.raises(DatasetLayoutError) as e:
        build_dataset("market1501", str(tmp_path))
    assert "0002-3_c1s1_000001_00.jpg" in str(e.value) and "<pid>_c<cam>s<seq>_<frame>_<n>.jpg" in str(e.value)


def test_cache_second_build_decodes_nothing(tmp_path, counted_decodes):
    d = make_market(str(tmp_path))
    n = sum(len(v) for v in TREE.values()) - 1  # the junk image is dropped before the check
    build_dataset("market1501", str(tmp_path))
    assert len(counted_decodes) == n and os.path.isfile(os.path.join(d, image_check.CACHE_NAME))
    build_dataset("market1501", str(tmp_path))
    assert len(counted_decodes) == n  # every verdict from the cache
    changed = os.path.join(d, "query", "0003_c4s1_005501_00.jpg")
    _truncate(changed)  # new size and mtime: decoded again, and now bad
    with pytest.raises(CorruptImageError, match="0003_c4s1_005501_00.jpg"):
        build_dataset("market1501", str(tmp_path))
    assert counted_decodes[n:] == [changed]
    with pytest.raises(CorruptImageError, match="0003_c4s1_005501_00.jpg"):  # a cached bad verdict
        build_dataset("market1501", str(tmp_path))
    assert len(counted_decodes) == n + 1


def test_cache_in_user_folder_when_dataset_not_writable(tmp_path, monkeypatch, counted_decodes):
    d = make_market(str(tmp_path / "data"))
    monkeypatch.setenv("RIBKERNELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(image_check, "_writable_dir", lambda folder: False)
    build_dataset("market1501", str(tmp_path / "data"))
    build_dataset("market1501", str(tmp_path / "data"))
    assert len(counted_decodes) == sum(len(v) for v in TREE.values()) - 1
    assert not os.path.exists(os.path.join(d, image_check.CACHE_NAME))
    assert len(os.listdir(tmp_path / "cache" / "image-check")) == 1


def test_check_images_progress_and_pil_tolerance(tmp_path, monkeypatch, capsys):
    paths = []
    for k in range(5):
        paths.append(str(tmp_path / f"{k}.jpg"))
        _write_jpeg(paths[-1], k)
    _truncate(paths[3])
    res = check_images(paths, None, workers=3, progress=True)
    assert list(res.bad) == [paths[3]] and res.decoded == 5 and res.cached == 0 and res.cache_file is None
    assert "checking images" in capsys.readouterr().err
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        check_images(paths, None)


def test_build_data_passes_skip_flag_and_counts(tmp_path):
    from ribkernels.engine import components
    from ribkernels.engine.config import DEFAULTS, build_parser, resolve

    d = make_market(str(tmp_path))
    bad = os.path.join(d, "bounding_box_test", "0003_c6s2_000301_01.jpg")
    _truncate(bad)
    args = build_parser().parse_args(["--config", "", "--dataset", "market1501", "--data-root", str(tmp_path),
                                      "--batch-size", "4", "--num-instances", "2", "--skip-bad-images"])
    cfg = resolve(args)
    assert cfg["data"]["skip_bad_images"] is True and DEFAULTS["data"]["skip_bad_images"] is False
    with pytest.warns(RuntimeWarning):
        bundle = components.build_data(cfg)
    assert [p for p, _ in bundle.bad_images] == [bad] and bad not in [p for p, _, _ in bundle.gallery]
    cfg["data"]["skip_bad_images"] = False
    with pytest.raises(CorruptImageError, match="0003_c6s2_000301_01.jpg"):
        components.build_data(cfg)
    cfg["data"]["skip_bad_images"] = "yes"
    with pytest.raises(TypeError, match="skip_bad_images: expected a bool, got 'yes'"):
        components.build_data(cfg)


def test_many_bad_images_full_list_in_a_file(tmp_path):
    from ribkernels.reid import ReIDData, check_dataset

    good = str(tmp_path / "good.jpg")
    _write_jpeg(good, 0)
    bad = []
    for k in range(105):
        bad.append(str(tmp_path / f"bad{k:03d}.jpg"))
        open(bad[-1], "wb").write(b"garbage")
    data = ReIDData("many", str(tmp_path), [(p, 0, 0) for p in bad] + [(good, 0, 1)], [(good, 1, 0)], [(good, 1, 1)])
    with pytest.raises(CorruptImageError) as e:
        check_dataset(data)
    msg = str(e.value)
    assert "105 unreadable" in msg and bad[99] in msg and bad[100] not in msg and "... and 5 more" in msg
    listing = tmp_path / "bad-images.txt"
    assert f"(full list: {listing})" in msg
    assert [ln.split()[1] for ln in listing.read_text().splitlines()] == bad
