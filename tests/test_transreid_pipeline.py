"""The whole evaluation of ``train.py --eval-only`` on a TransReID-repository checkpoint equals TransReID's
own test pipeline, preprocessing included: images read with PIL, ``Resize((h, w))`` with torchvision's
default (bilinear), ``ToTensor``, ``Normalize(0.5, 0.5)``, the model with its camera ids, L2-normalised
features, Euclidean ranking under the Market-1501 protocol. Written here from that description, not
through the package's transforms or evaluator. Also: --eval-only needs no trainable PK batch, and says
which weights it evaluates."""
import glob
import json
import os
import re

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from ribkernels.engine import evaluation, main
from ribkernels.models import build_model
from ribkernels.reid.datasets import build_dataset
from ribkernels.reid.synthetic import make_synthetic_market
from test_models_transreid_weights import _randomised, _to_transreid_repo

H, W = 64, 32  # the model's input; the images are 128 x 64, so the resize matters


def _market_items(folder):
    """(path, pid, 0-based camid) of a Market-1501 folder, junk (pid -1) dropped, as TransReID lists them."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.jpg"))):
        pid, cam = map(int, re.search(r"([-\d]+)_c(\d)", os.path.basename(path)).groups())
        if pid != -1:
            out.append((path, pid, cam - 1))
    return out


def _reference(model, items, interpolation=T.InterpolationMode.BILINEAR):
    tf = T.Compose([T.Resize((H, W), interpolation=interpolation), T.ToTensor(),
                    T.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p, _, _ in items])
    with torch.no_grad():
        f = model.eval()(x, cam_label=torch.tensor([c for _, _, c in items]))
    return torch.nn.functional.normalize(f.float(), dim=1)


def _reference_map(qf, gf, q, g):
    """Mean AP and Rank-1 over queries: same-pid same-camera gallery images removed, stable order."""
    dist = torch.cdist(qf.double(), gf.double()).numpy()
    aps, r1 = [], []
    for i, (_, qp, qc) in enumerate(q):
        keep = np.array([not (gp == qp and gc == qc) for _, gp, gc in g])
        order = np.argsort(dist[i][keep], kind="stable")
        match = np.array([gp == qp for _, gp, _ in g])[keep][order]
        if not match.any():
            continue
        ranks = np.flatnonzero(match)
        aps.append(np.mean((np.arange(len(ranks)) + 1) / (ranks + 1)))
        r1.append(float(match[0]))
    return float(np.mean(aps)), float(np.mean(r1))


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return make_synthetic_market(str(tmp_path_factory.mktemp("syn")), seed=3, num_train_ids=2, num_test_ids=6,
                                 num_cams=3, train_imgs_per_id=2, gallery_imgs_per_id=3, query_imgs_per_id=1,
                                 num_distractors=2, num_junk=1, height=128, width=64)


def test_eval_only_on_a_transreid_checkpoint_is_transreids_pipeline(market, tmp_path, monkeypatch, capsys):
    cams = build_dataset("market1501", market).num_train_cams
    src = _randomised(build_model("vit_tiny_cpu", 2, camera_num=cams, img_size=(H, W)))
    ckpt = tmp_path / "transformer_120.pth"
    torch.save({"module." + k: v for k, v in _to_transreid_repo(src).items()}, ckpt)
    cfg = tmp_path / "market_tiny.yaml"
    # The shipped TransReID config (batch 64 = 16 ids x 4: this training split has 2 ids, nothing trains)
    # with a tiny ViT at 64 x 32.
    from ribkernels.engine.config import find_config

    cfg.write_text(f"_base_: {find_config('market1501_transreid')}\n"
                   "model: {name: vit_tiny_cpu, img_size: [64, 32]}\n"
                   "data: {num_workers: 0}\neval: {batch_size: 8}\nsolver: {device: cpu}\n")
    seen = {}
    rank_result = evaluation.rank_result

    def capture(qf, gf, *rest, **kwargs):
        seen.update(qf=qf.clone(), gf=gf.clone())
        return rank_result(qf, gf, *rest, **kwargs)

    monkeypatch.setattr(evaluation, "rank_result", capture)
    out = tmp_path / "eval"
    assert main(["--config", str(cfg), "--eval-only", "--data-root", market, "--pretrained", str(ckpt),
                 "--output-dir", str(out)]) == 0
    (result_file,) = glob.glob(str(out / "eval-*.json"))
    with open(result_file) as f:
        final = json.load(f)["final"]
    log = open(glob.glob(str(out / "eval-*.log"))[0]).read()
    assert "with the --pretrained weights" in log and "freshly initialised" not in log

    q = _market_items(os.path.join(market, "query"))
    g = _market_items(os.path.join(market, "bounding_box_test"))
    qf, gf = _reference(src, q), _reference(src, g)
    torch.testing.assert_close(torch.nn.functional.normalize(seen["qf"], dim=1), qf, rtol=0, atol=2e-5)
    torch.testing.assert_close(torch.nn.functional.normalize(seen["gf"], dim=1), gf, rtol=0, atol=2e-5)
    ref_map, ref_r1 = _reference_map(qf, gf, q, g)
    assert final["mAP"] == pytest.approx(ref_map, abs=1e-9) and final["rank1"] == pytest.approx(ref_r1, abs=1e-9)
    # The resize is what this pins: bicubic test images give other features.
    assert (_reference(src, q, T.InterpolationMode.BICUBIC) - qf).abs().max() > 1e-3


def test_eval_only_without_weights_says_the_model_is_freshly_initialised(market, tmp_path):
    out = tmp_path / "eval"
    assert main(["--config", "synthetic_tiny_test", "--eval-only", "--set", "data.batch_size=64",
                 "--output-dir", str(out), "--data-root", str(tmp_path / "data")]) == 0
    log = open(glob.glob(str(out / "eval-*.log"))[0]).read()
    assert "evaluating the freshly initialised model" in log


def test_real_dataset_configs_use_transreids_test_resize_and_reranking():
    from ribkernels.engine.config import DEFAULTS, load_yaml, merge, shipped_configs

    real = [n for n in shipped_configs() if not n.startswith("synthetic")]
    assert len(real) == 16
    for name in real:
        cfg = merge(DEFAULTS, load_yaml(shipped_configs()[name]))
        assert cfg["data"]["test_interpolation"] == "bilinear", name
        assert (cfg["eval"]["rerank_k1"], cfg["eval"]["rerank_k2"], cfg["eval"]["rerank_lambda"]) == (50, 15, 0.3), name


def test_test_interpolation_is_checked():
    from ribkernels.reid.transforms import build_transforms

    with pytest.raises(ValueError, match="test_interpolation: expected one of .*'nearest'"):
        build_transforms(64, 32, False, test_interpolation="nearest")
    from ribkernels.engine.validate import ConfigError
    from ribkernels.engine.config import DEFAULTS, validate
    import copy

    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"]["test_interpolation"] = "area"
    with pytest.raises(ConfigError, match="data.test_interpolation"):
        validate(cfg)
