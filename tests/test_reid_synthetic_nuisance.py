"""The synthetic generator's nuisance options: the default draw pinned bit for bit, home scenes (shortcut
dose-response), confuser occlusion, per-patch ground truth, separate random streams per split, and
clear errors for bad option values."""
import hashlib
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ribkernels.reid import build_dataset
from ribkernels.reid import synthetic as S

SMALL = dict(num_train_ids=8, num_test_ids=6, num_cams=3, train_imgs_per_id=10, gallery_imgs_per_id=4,
             query_imgs_per_id=2, num_distractors=2, num_junk=2)
TINY = dict(num_train_ids=5, num_test_ids=4, num_cams=3, train_imgs_per_id=3, gallery_imgs_per_id=4,
            query_imgs_per_id=2, num_distractors=2, num_junk=2, height=64, width=32)


def _pixel_digest(monkeypatch, tmp_path, **kw):
    """(number of images, sha256 over file names and raw RGB pixels before JPEG encoding): independent of
    the JPEG library, sensitive to every drawn pixel and to the file naming."""
    seen = []
    orig = Image.Image.save

    def save(self, fp, *a, **k):
        seen.append((os.path.basename(str(fp)), self.tobytes()))
        return orig(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save)
    S._generate(S.SyntheticConfig(**kw), str(tmp_path))
    monkeypatch.setattr(Image.Image, "save", orig)
    h = hashlib.sha256()
    for name, raw in seen:
        h.update(name.encode())
        h.update(raw)
    return len(seen), h.hexdigest()


# Computed with the generator before the nuisance options existed (commit 1bc0950).
PINNED_DEFAULT = (898, "59eef8ccd5ea5e637568dc7618411ac546c6c85cc99ed2fa421fa4e441a7bc48")
PINNED_TINY_SEED3 = (43, "bc36ebefc7fe378b9cb3cb7ac6ae5d9461dac675f603e3ecc1d67df83ea52812")


def test_default_draw_unchanged(monkeypatch, tmp_path):
    assert _pixel_digest(monkeypatch, tmp_path / "d") == PINNED_DEFAULT
    assert _pixel_digest(monkeypatch, tmp_path / "t", seed=3, **TINY) == PINNED_TINY_SEED3
    # options at their defaults keep the cache key (and folder) of before
    assert S.SyntheticConfig().key() == "seed0-a778c1d119"
    assert S.SyntheticConfig(num_train_ids=300).key() == "seed0-4c79832e78"
    assert S.SyntheticConfig(confuser_coverage=[0.2, 0.4]).key() == S.SyntheticConfig().key()
    assert S.SyntheticConfig(home_scene_frac=0.5).key() != S.SyntheticConfig().key()


def _files(folder, sub):
    out = {}
    for n in sorted(os.listdir(os.path.join(folder, sub))):
        with open(os.path.join(folder, sub, n), "rb") as f:
            out[n] = hashlib.sha256(f.read()).hexdigest()
    return out


def _by_split(meta):
    split = {"train": [], "test": []}
    for r in meta:
        split["train" if r["file"].startswith("bounding_box_train") else "test"].append(r)
    return split


@pytest.fixture(scope="module")
def nuisance(tmp_path_factory):
    """One small draw with every option on (the module's tests read it)."""
    root = str(tmp_path_factory.mktemp("nuisance"))
    folder = S.make_synthetic_market(root, seed=5, home_scene_frac=0.7, confuser_prob=0.5, ground_truth=True,
                                     split_streams=True, occluder_prob=0.5, **SMALL)
    return folder, S.load_metadata(folder), S.load_ground_truth(folder)


def test_home_scene_fraction_and_fixed_scene(nuisance):
    folder, meta, _ = nuisance
    sp = _by_split(meta)
    home = np.array([r["home"] for r in sp["train"]])
    assert len(home) == 80 and abs(home.mean() - 0.7) < 0.12  # binomial sd ~0.05
    assert not any(r["home"] for r in sp["test"])  # test scenes stay independent
    # a home scene is fixed per identity: the wall (top rows, above every person) of an identity's home
    # images varies less than that of its other images (other cameras and clutter) and across identities
    def wall(r):
        return np.asarray(Image.open(os.path.join(folder, r["file"])), np.float32)[:3].reshape(-1, 3).mean(0)

    within, between = [], []
    means = {}
    for pid in sorted({r["pid"] for r in sp["train"]}):
        walls = np.stack([wall(r) for r in sp["train"] if r["pid"] == pid and r["home"]])
        if len(walls) >= 2:
            within.append(np.abs(walls - walls.mean(0)).mean())
            means[pid] = walls.mean(0)
    ms = np.stack(list(means.values()))
    between = np.abs(ms - ms.mean(0)).mean()
    assert np.mean(within) < 0.5 * between
    # p = 0: no home images at all
    none = S.make_synthetic_market(os.path.dirname(folder), seed=5, split_streams=True, **SMALL)
    assert not any(r["home"] for r in S.load_metadata(none))


def test_confuser_coverage_and_identity(nuisance):
    _, meta, _ = nuisance
    sp = _by_split(meta)
    train_pids = {r["pid"] for r in sp["train"]}
    test_pids = {r["pid"] for r in sp["test"] if r["pid"] > 0}
    conf = [r for r in meta if "confuser_pid" in r]
    person_imgs = [r for r in meta if r["pid"] != -1]
    assert abs(len(conf) / len(person_imgs) - 0.5) < 0.1
    for r in conf:
        assert 0.2 <= r["confuser_coverage"] <= 0.4, r
        assert r["confuser_pid"] != r["pid"]
        own = train_pids if r["file"].startswith("bounding_box_train") else test_pids
        assert r["confuser_pid"] in own  # a person of the same split, never a test identity in training
    assert any(r["file"].startswith("bounding_box_train") for r in conf)
    assert any(r["file"].startswith("query") for r in conf)


def test_ground_truth_shares(nuisance):
    folder, meta, gt = nuisance
    occ, bg = gt["occluder"], gt["background"]
    assert int(gt["patch_size"]) == 16 and occ.shape == bg.shape == (len(meta), 128 // 16, 64 // 16)
    assert [str(f) for f in gt["files"]] == [r["file"] for r in meta]
    assert occ.min() >= 0 and bg.min() >= 0 and (occ + bg).max() <= 1 + 1e-6
    person = 1 - occ - bg
    for k, r in enumerate(meta):
        if r["pid"] == -1:  # junk: background only
            assert np.all(bg[k] == 1) and np.all(occ[k] == 0)
            continue
        assert person[k].sum() > 0.1  # something of the target is visible
        if r["occluder"] is None and "confuser_pid" not in r:
            assert np.all(occ[k] == 0) and person[k].sum() > 3  # an unoccluded person: several patches' worth
        else:
            assert occ[k].sum() > 0.5
        if r["occluder"] == "vehicle":  # the band covers the bottom patch row (it starts above 0.8 h)
            assert np.all(occ[k][-1] == 1)
        if r["occluder"] == "pole":  # a full-height pole: something in every patch row
            assert np.all(occ[k].max(axis=1) > 0)
        if "confuser_pid" in r and r["occluder"] is None:
            # the confuser covers 20-40% of the target, so the target keeps most of its pixels
            assert person[k].sum() > occ[k].sum() * 0.3


def test_patch_shares_and_footprint_match_drawn_pixels():
    rng = np.random.default_rng(0)
    mask = rng.uniform(size=(32, 48)) < 0.3
    got = S._patch_shares(mask, 16)
    ref = np.array([[mask[i * 16:(i + 1) * 16, j * 16:(j + 1) * 16].mean() for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-7)

    def draw(img, r):
        ImageDraw.Draw(img).rectangle([3, 5, 10, 20], fill=(0, 0, 0) if r.uniform() < 2 else (1, 1, 1))

    state = rng.bit_generator.state
    m, pix = S._footprint(draw, (16, 32), rng)
    assert rng.bit_generator.state == state  # rng not advanced
    want = np.zeros((32, 16), bool)
    want[5:21, 3:11] = True
    assert np.array_equal(m, want)  # a black fill is found too (on the white canvas)
    assert np.array_equal(S._shift(want, 2, -3)[7:23, 0:8], want[5:21, 3:11])


def test_split_streams_keep_training_set(tmp_path):
    base = dict(SMALL, split_streams=True)
    a = S.make_synthetic_market(str(tmp_path), seed=2, **base)
    b = S.make_synthetic_market(str(tmp_path), seed=2, **{**base, "num_test_ids": 9, "gallery_imgs_per_id": 6})
    assert a != b
    assert _files(a, "bounding_box_train") == _files(b, "bounding_box_train")
    assert _files(a, "bounding_box_test") != _files(b, "bounding_box_test")
    # without the option every size redraws everything (today's behaviour)
    c = S.make_synthetic_market(str(tmp_path), seed=2, **SMALL)
    d = S.make_synthetic_market(str(tmp_path), seed=2, **{**SMALL, "num_test_ids": 9})
    assert _files(c, "bounding_box_train") != _files(d, "bounding_box_train")
    # the dose-response pair: a home-scene fraction changes the training split only
    e = S.make_synthetic_market(str(tmp_path), seed=2, **{**base, "home_scene_frac": 0.8})
    assert _files(a, "bounding_box_train") != _files(e, "bounding_box_train")
    assert _files(a, "bounding_box_test") == _files(e, "bounding_box_test")
    assert _files(a, "query") == _files(e, "query")
    # train and test identities stay disjoint
    data = build_dataset("synthetic", str(tmp_path), seed=2, **{**base, "num_test_ids": 9})
    train_pids = {int(os.path.basename(p)[:4]) for p, _, _ in data.train}
    assert train_pids.isdisjoint({p for _, p, _ in data.query + data.gallery})
    assert data.num_train_pids == 8 and len({p for _, p, _ in data.query}) == 9


@pytest.mark.parametrize("kw, match", [
    ({"home_scene_frac": 1.5}, r"home_scene_frac.*\[0.0, 1.0\].*1.5"),
    ({"home_scene_frac": "0.5"}, "home_scene_frac"),
    ({"confuser_prob": -0.1}, "confuser_prob"),
    ({"confuser_prob": True}, "confuser_prob"),
    ({"confuser_coverage": [0.5, 0.2]}, "confuser_coverage"),
    ({"confuser_coverage": [0.2]}, "confuser_coverage"),
    ({"ground_truth": "yes"}, "ground_truth"),
    ({"split_streams": 1}, "split_streams"),
    ({"patch_size": 0}, "patch_size"),
    ({"ground_truth": True, "patch_size": 24}, r"patch_size.*divisor.*height 64.*24"),
])
def test_bad_options(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        S.make_synthetic_market(str(tmp_path), **{**TINY, **kw})
    assert os.listdir(tmp_path) == []  # refused before any work


def test_metadata_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata"):
        S.load_metadata(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ground_truth=True"):
        S.load_ground_truth(str(tmp_path))


def test_options_through_the_config(tmp_path, monkeypatch):
    """``data.dataset_kwargs`` reaches the generator: options work, a bad value fails naming the key."""
    from ribkernels.engine import build_parser, components, resolve

    monkeypatch.setenv("RIBKERNELS_CACHE", str(tmp_path))
    tiny = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "synthetic_tiny_test.yaml")

    def cfg(kw):
        return resolve(build_parser().parse_args(["--config", tiny, "--set", "data.dataset_kwargs=" + kw]))

    base = ("{num_train_ids: 8, num_test_ids: 6, num_cams: 3, train_imgs_per_id: 4, gallery_imgs_per_id: 3, "
            "query_imgs_per_id: 1, num_distractors: 2, num_junk: 1, height: 64, width: 32")
    data = components.build_data(cfg(base + ", split_streams: true, home_scene_frac: 0.8, confuser_prob: 0.5}"))
    assert data.num_classes == 8 and len(data.train) == 32
    with pytest.raises(ValueError, match="confuser_prob.*2"):
        components.build_data(cfg(base + ", confuser_prob: 2}"))


def test_ground_truth_does_not_change_the_images(tmp_path):
    """The masks are drawn on copies of the random stream, so a finished run's dataset can be redrawn
    with ground_truth on to measure that run against the ground truth of the very same images."""
    for kw in ({}, {"confuser_prob": 0.5, "split_streams": True}):
        a = S.make_synthetic_market(str(tmp_path), seed=4, **TINY, **kw)
        b = S.make_synthetic_market(str(tmp_path), seed=4, ground_truth=True, **TINY, **kw)
        assert a != b
        for sub in ("bounding_box_train", "bounding_box_test", "query"):
            assert _files(a, sub) == _files(b, sub)
