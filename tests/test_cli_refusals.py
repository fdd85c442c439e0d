"""The commands refuse before the work what would fail after it or write a wrong result: non-finite
features (``extract``, ``search`` — query features and a loaded gallery — and ``export``'s check),
an output that exists (``--overwrite`` replaces it) or cannot be written, a pickled gallery .npz.
Also what ``search`` shows: Market junk images (id -1) gray, control characters of file names
(the right-to-left override) escaped in index.html."""
import contextlib
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ribkernels import inference
from ribkernels.cli import main as cli_main
from ribkernels.cli import search
from tiny_checkpoint import write_model_file


def _cli(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli_main([str(a) for a in argv])
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return write_model_file(tmp_path_factory.mktemp("ck") / "final.pth")


@pytest.fixture(scope="module")
def nan_ck(tmp_path_factory):
    return write_model_file(tmp_path_factory.mktemp("ck") / "nan.pth",
                            edit=lambda s: s["model"]["head.weight" if "head.weight" in s["model"]
                                                      else sorted(s["model"])[0]].fill_(float("nan")))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("0001_c1s1_000001_00.jpg", "0002_c2s1_000001_00.jpg", "0001_c2s1_000002_00.jpg"):
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _nan_for(monkeypatch, bad_name):
    """``extract_features`` whose model gives NaN for the image named ``bad_name`` (what a model that
    overflows on one image does)."""
    real = inference.extract_features

    def extract(loaded, paths, *a, **k):
        k["batch_size"] = 1
        model = loaded.model

        class NaNFor(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner, self.i, self.paths = inference.without_camera_ids(model), 0, list(paths)

            def forward(self, x, **kw):
                out = self.inner(x, **kw)
                if os.path.basename(self.paths[self.i]) == bad_name:
                    out = out * float("nan")
                self.i += 1
                return out

            sie_embed = None
        return real(loaded._replace(model=NaNFor()), paths, *a, **k)
    monkeypatch.setattr(inference, "extract_features", extract)


# ------------------------------------------------------------------------------------ non-finite features
def test_extract_refuses_a_model_with_nan_weights_before_any_image(nan_ck, images, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "extract_features", lambda *a, **k: pytest.fail("images were read"))
    rc, err = _cli("extract", nan_ck, images, "--out", tmp_path / "f.npz")
    assert rc == 2 and nan_ck in err and "NaN or inf" in err, err
    assert not (tmp_path / "f.npz").exists()


def test_extract_refuses_non_finite_features_naming_the_image(ck, images, tmp_path, monkeypatch):
    _nan_for(monkeypatch, "0002_c2s1_000001_00.jpg")
    rc, err = _cli("extract", ck, images, "--out", tmp_path / "f.npz")
    assert rc == 2 and "not finite" in err and str(images / "0002_c2s1_000001_00.jpg") in err, err
    assert "0001_c1s1" not in err and not (tmp_path / "f.npz").exists()


def test_search_refuses_non_finite_query_features(ck, images, tmp_path, monkeypatch):
    _nan_for(monkeypatch, "0001_c2s1_000002_00.jpg")
    rc, err = _cli("search", ck, "--query", images / "0001_c2s1_000002_00.jpg", "--gallery", images,
                   "--out", tmp_path / "out")
    assert rc == 2 and "not finite" in err and "0001_c2s1_000002_00.jpg" in err, err
    assert not (tmp_path / "out").exists()


def _extract(ck, images, out):
    rc, err = _cli("extract", ck, images, "--out", out)
    assert rc == 0, err
    return dict(np.load(out))


def test_search_refuses_a_gallery_npz_with_a_nan_row(ck, images, tmp_path):
    """It used to drop that image from every rank list silently (exit 0)."""
    arrays = _extract(ck, images, tmp_path / "g.npz")
    arrays["features"][1, 3] = np.nan
    arrays["features"][2, 0] = np.inf
    np.savez(tmp_path / "bad.npz", **arrays)
    rc, err = _cli("search", ck, "--query", images, "--gallery", tmp_path / "bad.npz", "--out", tmp_path / "out")
    assert rc == 2 and "--gallery" in err and str(tmp_path / "bad.npz") in err and "2 of 3" in err, err
    assert arrays["paths"][1] in err and arrays["paths"][2] in err and arrays["paths"][0] not in err
    assert not (tmp_path / "out").exists()


def test_search_names_the_flag_and_file_of_a_pickled_gallery(ck, images, tmp_path):
    arrays = _extract(ck, images, tmp_path / "g.npz")
    np.savez(tmp_path / "pickled.npz", features=arrays["features"], paths=arrays["paths"].astype(object))
    rc, err = _cli("search", ck, "--query", images, "--gallery", tmp_path / "pickled.npz", "--out", tmp_path / "o")
    assert rc == 2 and f"--gallery {tmp_path / 'pickled.npz'}" in err and "pickled" in err, err
    assert "allow_pickle" not in err
    (tmp_path / "raw.npz").write_bytes(__import__("pickle").dumps({"features": [1.0]}))  # a bare pickle
    rc, err = _cli("search", ck, "--query", images, "--gallery", tmp_path / "raw.npz", "--out", tmp_path / "o")
    assert rc == 2 and f"--gallery {tmp_path / 'raw.npz'}" in err and "pickled" in err, err
    assert "allow_pickle" not in err and "unsafely" not in err


def test_search_refuses_a_model_with_nan_weights_before_any_image(nan_ck, images, tmp_path, monkeypatch):
    """It used to print empty rank lists, exit 0."""
    monkeypatch.setattr(inference, "extract_features", lambda *a, **k: pytest.fail("images were read"))
    rc, err = _cli("search", nan_ck, "--query", images, "--gallery", images, "--out", tmp_path / "out")
    assert rc == 2 and nan_ck in err and "NaN or inf" in err and not (tmp_path / "out").exists(), err


def test_export_refuses_a_model_with_nan_weights(nan_ck, tmp_path):
    rc, err = _cli("export", nan_ck, "--format", "torch-export", "--out", tmp_path / "m.pt2")
    assert rc == 2 and "NaN or inf" in err and not (tmp_path / "m.pt2").exists(), err


def test_exports_check_refuses_non_finite_features(ck, tmp_path, monkeypatch):
    from ribkernels.cli import export

    real = export.export_model
    monkeypatch.setattr(export, "export_model", lambda loaded: _Times(real(loaded), float("inf")))
    rc, err = _cli("export", ck, "--format", "torch-export", "--out", tmp_path / "m.pt2")
    assert rc == 2 and "non-finite features" in err and not (tmp_path / "m.pt2").exists(), err


class _Times(torch.nn.Module):
    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor


# ------------------------------------------------------------------------------------ outputs, before work
@pytest.mark.parametrize("command", ["extract", "export"])
def test_an_existing_output_is_kept_unless_overwrite(ck, images, tmp_path, monkeypatch, command):
    out = tmp_path / ("f.npz" if command == "extract" else "m.pt2")
    out.write_bytes(b"precious")
    args = [images] if command == "extract" else ["--format", "torch-export"]
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: pytest.fail("work started"))
    rc, err = _cli(command, ck, *args, "--out", out)
    assert rc == 2 and "exists" in err and "--overwrite" in err and out.read_bytes() == b"precious", err
    monkeypatch.undo()
    if command == "extract":  # (export's overwrite path is the same check; its export is slow)
        rc, err = _cli(command, ck, *args, "--out", out, "--overwrite")
        assert rc == 0, err
        assert np.load(out)["features"].shape[0] == 3


def _unwritable(tmp_path):
    """(a folder this process cannot create files in, why): /proc holds no user files even for root."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    if os.path.isdir("/proc/self"):
        return "/proc/self"
    pytest.skip("root, and no /proc: no folder that refuses writes")


@pytest.mark.parametrize("command", ["extract", "search", "export"])
def test_an_unwritable_output_is_refused_before_any_feature(ck, images, tmp_path, monkeypatch, command):
    folder = _unwritable(tmp_path)
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: pytest.fail("work started"))
    if command == "extract":
        argv = ["extract", ck, images, "--out", os.path.join(folder, "f.npz")]
    elif command == "search":
        argv = ["search", ck, "--query", images, "--gallery", images, "--out", os.path.join(folder, "results")]
    else:
        argv = ["export", ck, "--format", "torch-export", "--out", os.path.join(folder, "m.pt2")]
    rc, err = _cli(*argv)
    assert rc == 2 and "--out" in err and "cannot write" in err, err


# ------------------------------------------------------------------------------------ what search shows
def test_junk_images_are_neither_this_person_nor_another():
    ids = (np.array([1, -1]), np.array([0, 0])), (np.array([1, 2, -1]), np.array([1, 1, 1]))
    q, g = ids
    assert [search.same_person(q, g, 0, j) for j in range(3)] == [True, False, None]
    assert [search.same_person(q, g, 1, j) for j in range(3)] == [None, None, None]
    assert search.same_person(None, g, 0, 0) is None


def test_search_draws_junk_gray(ck, images, tmp_path):
    junk = tmp_path / "gallery"
    junk.mkdir()
    for name in os.listdir(images):
        (junk / name).write_bytes((images / name).read_bytes())
    (junk / "-1_c1s1_000009_00.jpg").write_bytes((images / "0002_c2s1_000001_00.jpg").read_bytes())
    rc, err = _cli("search", ck, "--query", images / "0001_c1s1_000001_00.jpg", "--gallery", junk,
                   "--out", tmp_path / "out", "--top-k", "4")
    assert rc == 0, err
    import json

    matches = json.load(open(tmp_path / "out" / "results.json"))["queries"][0]["matches"]
    by_name = {os.path.basename(m["gallery"]): m["match"] for m in matches}
    assert by_name["-1_c1s1_000009_00.jpg"] is None and by_name["0002_c2s1_000001_00.jpg"] is False


def test_index_html_escapes_the_right_to_left_override(tmp_path):
    rows = [{"query_index": 0, "query": "q/\u202egnp.jpg", "matches": [
        {"rank": 1, "gallery": "g/a\u200bb\u2066.jpg", "distance": 0.5, "match": None}]}]
    search.write_html(str(tmp_path / "index.html"), rows, {})
    text = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "\u202e" not in text and "\u200b" not in text and "\u2066" not in text
    assert "q/\\u202egnp.jpg" in text and "g/a\\u200bb\\u2066.jpg" in text
