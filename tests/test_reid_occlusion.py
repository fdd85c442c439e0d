"""Occluder geometry, and the occlusion stress test end to end on a tiny synthetic dataset."""
import numpy as np
import pytest
import torch
from PIL import Image

from ribkernels.reid import (add_occluder, build_dataset, build_transforms, feature_extractor,
                             format_occlusion_table, occlusion_stress_test)
from ribkernels.reid.occlusion import BODY_BOX

TINY = dict(num_train_ids=3, num_test_ids=6, num_cams=3, train_imgs_per_id=2, gallery_imgs_per_id=4,
            query_imgs_per_id=2, num_distractors=2, num_junk=1, height=64, width=32, occluder_prob=0.0)


@pytest.mark.parametrize("mode", ["bottom", "top", "side", "block", "scene", "confuser"])
@pytest.mark.parametrize("frac", [0.2, 0.4, 0.6, 0.8])
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_occluder_covers_fraction(mode, frac, seed):
    w, h = 64, 128
    img = Image.new("RGB", (w, h), (0, 0, 0))
    out = np.asarray(add_occluder(img, frac, seed=seed, mode=mode))
    x0, y0, x1, y1 = (int(round(v)) for v in (BODY_BOX[0] * w, BODY_BOX[1] * h, BODY_BOX[2] * w, BODY_BOX[3] * h))
    changed = (out[y0:y1, x0:x1] != 0).any(-1).mean()
    if mode == "confuser" and frac >= 0.4:  # a drawn person covers at most 35-55% of the body box
        assert 0.25 <= changed <= frac + 0.02
    else:
        assert changed == pytest.approx(frac, abs=0.05 if mode == "confuser" else 0.04)
    assert np.array_equal(out, np.asarray(add_occluder(img, frac, seed=seed, mode=mode)))  # deterministic
    assert np.array_equal(np.asarray(img), np.zeros((h, w, 3), np.uint8))  # input untouched


def test_occluder_bad_args():
    img = Image.new("RGB", (32, 64))
    assert np.array_equal(np.asarray(add_occluder(img, 0.0)), np.asarray(img))
    with pytest.raises(ValueError, match="fraction"):
        add_occluder(img, 1.5)
    with pytest.raises(ValueError, match="mode"):
        add_occluder(img, 0.5, mode="left")


class _TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d((8, 4))
        self.cam = torch.nn.Embedding(3, 96)

    def forward(self, x, cam_label=None):
        f = self.pool(x).flatten(1)
        return f + 0.0 * self.cam(cam_label)


def _colour_people(root, n_ids=6):
    """Each identity a flat colour (+ noise): raw pixels identify it perfectly until occluded."""
    rng = np.random.default_rng(0)
    query, gallery = [], []
    for pid in range(1, n_ids + 1):
        col = rng.integers(0, 256, 3)
        for cam, split in [(0, query), (1, query), (1, gallery), (2, gallery), (0, gallery)]:
            a = np.clip(col + rng.normal(0, 8, (64, 32, 3)), 0, 255).astype(np.uint8)
            path = str(root / f"{pid:04d}_c{cam + 1}s1_{len(query) + len(gallery):06d}_00.png")
            Image.fromarray(a).save(path)
            split.append((path, pid, cam))
    return query, gallery


def test_stress_test_end_to_end(tmp_path):
    query, gallery = _colour_people(tmp_path)
    extract = feature_extractor(_TinyModel(), build_transforms(64, 32, is_train=False), batch_size=5)
    rows = occlusion_stress_test(extract, query, gallery, levels=(0.0, 0.4, 0.8), seed=3)
    assert [r["occlusion"] for r in rows] == [0.0, 0.4, 0.8]
    assert all(r["valid_queries"] == len(query) for r in rows)
    assert rows[0]["mAP"] == 1.0 and rows[0]["rank1"] == 1.0
    assert rows[0]["mAP"] > rows[1]["mAP"] > rows[2]["mAP"]
    table = format_occlusion_table(rows)
    assert table.count("\n") == 4 and "80% (bottom)" in table
    assert "rank_result" not in rows[0]
    per_query = occlusion_stress_test(extract, query, gallery, levels=(0.0, 0.8), seed=3, per_query=True)
    for row, same in zip(per_query, (rows[0], rows[2])):
        assert row["mAP"] == same["mAP"]
        res = row.pop("rank_result")
        assert res.all_AP.mean() == pytest.approx(row["mAP"], abs=1e-15)
        assert res.all_rank1_hit.mean() == pytest.approx(row["rank1"], abs=1e-15)


def test_stress_test_on_synthetic(tmp_path):
    data = build_dataset("synthetic", str(tmp_path), seed=0, **TINY)
    calls = []

    def extract(images, camids):
        calls.append((len(images), images[0].size))
        return torch.from_numpy(np.stack([np.asarray(im.resize((8, 16)), np.float32).ravel() for im in images]))

    rows = occlusion_stress_test(extract, data.query, data.gallery, levels=(0.2,), mode="block")
    assert len(rows) == 1 and 0.0 < rows[0]["mAP"] <= 1.0 and rows[0]["mode"] == "block"
    assert calls[0] == (len(data.gallery), (32, 64))
