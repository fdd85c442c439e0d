"""``ribkernels export`` writes one self-contained ONNX file (weights embedded under 2 GB; the sidecar
named when ONNX needs one) carrying the preprocessing in its metadata, and the .pt2 archive carries it
too; the model file (final.pth) spells the preprocessing out."""
import copy
import json
import os
import zipfile

import pytest
import torch

from ribkernels import cli
from ribkernels.engine import checkpoint as ckpt_io
from ribkernels.engine.config import DEFAULTS
from ribkernels.engine.model_file import model_file_state, read_model_file
from ribkernels.models import build_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    cfg = copy.deepcopy(DEFAULTS)
    cfg["model"].update(name="vit_tiny_cpu", img_size=[64, 32], sie_camera=False)
    cfg["data"].update(pixel_mean=[0.485, 0.456, 0.406], pixel_std=[0.229, 0.224, 0.225])
    cfg["_meta"] = {"config_name": "tiny", "config_path": None}
    model = build_model("vit_tiny_cpu", 5, img_size=(64, 32))
    path = str(tmp_path_factory.mktemp("mf") / "final.pth")
    ckpt_io.save_atomic(model_file_state(model.eval(), cfg, 5, 0, 0, epoch=3), path)
    return path


EXPECTED = {"input_size": [64, 32], "channel_order": "RGB", "layout": "NCHW", "scale": "1/255",
            "pixel_mean": [0.485, 0.456, 0.406], "pixel_std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}


def test_model_file_spells_out_its_preprocessing(model_file):
    raw = torch.load(model_file, weights_only=True)
    assert raw["preprocessing"] == EXPECTED
    assert read_model_file(model_file).epoch == 3


def test_onnx_is_one_file_with_the_preprocessing_in_its_metadata(model_file, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    out = tmp_path / "m.onnx"
    assert cli.main(["export", model_file, "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no m.onnx.data beside it
    assert "one self-contained file (weights embedded)" in text
    # copied alone elsewhere, it still loads and says how to prepare its input
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.rename(out, moved / "m.onnx")
    session = onnxruntime.InferenceSession(str(moved / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["preprocessing"]) == EXPECTED and meta["model"] == "vit_tiny_cpu"
    assert session.run(None, {"images": torch.randn(2, 3, 64, 32).numpy()})[0].shape[0] == 2


def test_onnx_over_two_gigabytes_names_its_sidecar(model_file, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    from ribkernels.cli import export

    monkeypatch.setattr(export, "ONNX_SINGLE_FILE_LIMIT", 1)  # as if the weights were over 2 GB
    out = tmp_path / "big.onnx"
    assert cli.main(["export", model_file, "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    assert f"weights in {out}.data" in text and "keep big.onnx.data beside it" in text


def test_pt2_carries_the_preprocessing(model_file, tmp_path):
    out = tmp_path / "m.pt2"
    assert cli.main(["export", model_file, "--format", "torch-export", "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as z:
        name = next(n for n in z.namelist() if n.endswith("extra/preprocessing.json"))
        assert json.loads(z.read(name)) == EXPECTED
    extra = {"preprocessing.json": ""}
    torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra["preprocessing.json"]) == EXPECTED
