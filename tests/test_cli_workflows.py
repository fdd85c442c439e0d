"""After training (CPU, tiny synthetic data): final.pth as a weights-only model file, --eval-only with
the checkpoint's own config, and `python -m ribkernels extract|search|export|evaluate`.

Two tiny checkpoints are trained once for the module: DCS-Attention (the default recipe) and plain
SDPA attention (for export: DCS export waits for the traceable DCS op, see test_export_dcs_model)."""
import html
import glob
import io
import contextlib
import json
import os
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from ribkernels import cli
from ribkernels.engine import main as train_main
from ribkernels.engine.model_file import FORMAT, KIND
from ribkernels.inference import eval_transform, ids_from_names, load_model, without_camera_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic_tiny_test.yaml")


def _train(data_root, out, *extra):
    argv = ["--config", TINY, "--data-root", data_root, "--output-dir", str(out), "--progress", "log",
            "--epochs", "1", *extra]
    assert train_main(argv) == 0
    return str(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("workflows")
    data_root = str(base / "synthetic")
    dcs = _train(data_root, base / "dcs", "--tensorboard")
    plain = _train(data_root, base / "plain", "--attn-impl", "sdpa", "--no-use-ibb", "--no-sie-camera")
    (split_root,) = [os.path.join(data_root, d) for d in os.listdir(data_root)]
    return types.SimpleNamespace(data_root=data_root, dcs=dcs, plain=plain,
                                 query=os.path.join(split_root, "query"),
                                 gallery=os.path.join(split_root, "bounding_box_test"))


def _final(run):
    """The final evaluation of a training run (metrics.json) or of an --eval-only run (eval-*.json)."""
    path = os.path.join(run, "metrics.json")
    if not os.path.exists(path):
        (path,) = glob.glob(os.path.join(run, "eval-*.json"))
    with open(path) as f:
        return json.load(f)["final"]


def _features_by_hand(loaded, paths, camids=None):
    """The eval feature computed here without ribkernels.inference's loader/batching."""
    from PIL import Image

    tf = eval_transform(loaded.config)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        kwargs = {} if camids is None else {"cam_label": torch.as_tensor(camids)}
        return loaded.model(x, **kwargs).numpy()


# ------------------------------------------------------------------------------ final.pth, eval-only
def test_final_pth_is_a_weights_only_model_file(runs):
    final = torch.load(os.path.join(runs.dcs, "final.pth"), weights_only=True)
    last = torch.load(os.path.join(runs.dcs, "last.pth"), weights_only=True)  # both weights-only
    assert (final["format"], final["version"], final["kind"]) == (FORMAT, 2, KIND)
    assert "optimizer" not in final and "rng" not in final
    assert final["config"]["model"] == last["config"]["model"]
    assert final["num_classes"] == last["model"]["neck.classifier.weight"].shape[0]
    assert final["camera_num"] == last["model"]["sie_embed"].shape[0]
    assert final["view_num"] == 0
    assert set(final["model"]) == set(last["model"])
    assert all(torch.equal(final["model"][k], last["model"][k]) for k in final["model"])
    assert os.path.getsize(os.path.join(runs.dcs, "final.pth")) < os.path.getsize(os.path.join(runs.dcs, "last.pth"))
    # last.pth (a training checkpoint) is also accepted: sizes read from the weights
    a, b = load_model(os.path.join(runs.dcs, "final.pth")), load_model(os.path.join(runs.dcs, "last.pth"))
    assert (a.file.num_classes, a.file.camera_num) == (b.file.num_classes, b.file.camera_num)


def test_eval_only_rebuilds_the_checkpoints_own_model(runs, tmp_path):
    # the caller's config (tiny: DCS attention, SIE) differs from the checkpoint's (SDPA, no SIE)
    argv = ["--config", TINY, "--data-root", runs.data_root, "--output-dir", str(tmp_path / "ev"), "--progress",
            "log", "--eval-only", "--checkpoint", os.path.join(runs.plain, "final.pth")]
    assert train_main(argv) == 0
    assert _final(str(tmp_path / "ev"))["mAP"] == pytest.approx(_final(runs.plain)["mAP"], abs=1e-6)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train_main(argv[:4] + ["--output-dir", str(tmp_path / "ev2"), "--eval-only", "--checkpoint",
                                    os.path.join(runs.plain, "final.pth"), "--model-name", "vit_small_cpu"])
    assert rc == 2 and "model.name" in err.getvalue() and not (tmp_path / "ev2").exists()


# ------------------------------------------------------------------------------ extract
def test_extract_writes_plain_arrays_equal_to_the_models_features(runs, tmp_path):
    ckpt = os.path.join(runs.dcs, "final.pth")
    out = tmp_path / "q.npz"
    assert cli.main(["extract", ckpt, runs.query, "--out", str(out), "--camera-ids", "names", "--no-progress",
                     "--batch-size", "4"]) == 0
    with np.load(out, allow_pickle=False) as d:
        feats, paths, camids, pids = d["features"], d["paths"], d["camids"], d["pids"]
    loaded = load_model(ckpt)
    expected_paths = sorted(os.path.join(runs.query, f) for f in os.listdir(runs.query))
    assert paths.tolist() == expected_paths
    want_pids, want_cams = ids_from_names(expected_paths)
    assert camids.tolist() == want_cams.tolist() and pids.tolist() == want_pids.tolist()
    assert feats.dtype == np.float32 and feats.shape == (len(paths), loaded.model.eval_feat_dim)
    np.testing.assert_allclose(feats, _features_by_hand(loaded, expected_paths, want_cams), rtol=1e-5, atol=1e-5)

    # without camera ids: the mean camera embedding, checked against a forward whose SIE term is the mean
    assert cli.main(["extract", ckpt, runs.query, "--out", str(out), "--no-progress", "--overwrite"]) == 0
    with np.load(out, allow_pickle=False) as d:
        no_cam = d["features"]
        assert (d["camids"] == -1).all()
    model = loaded.model
    mean_sie = lambda self, B, c, v: self.sie_coef * self.sie_embed.mean(0, keepdim=True).expand(B, 1, -1)
    model._sie = types.MethodType(mean_sie, model)
    np.testing.assert_allclose(no_cam, _features_by_hand(loaded, expected_paths), rtol=1e-5, atol=1e-5)
    assert not np.allclose(no_cam, feats, atol=1e-4)  # the camera ids did change the features


def test_extract_checks_its_arguments_before_any_work(runs, tmp_path, capsys):
    ckpt = os.path.join(runs.dcs, "final.pth")
    bad = tmp_path / "weird"
    bad.mkdir()
    shutil.copy(os.path.join(runs.query, sorted(os.listdir(runs.query))[0]), bad / "holiday.jpg")
    cases = [
        ([str(tmp_path / "none.pth"), runs.query, "--out", str(tmp_path / "a.npz")], "none.pth"),
        ([ckpt, runs.query, "--out", str(tmp_path / "a.txt")], ".npz"),
        ([ckpt, runs.query, "--out", str(tmp_path / "no_dir" / "a.npz")], "does not exist"),
        ([ckpt, str(tmp_path / "missing"), "--out", str(tmp_path / "a.npz")], "missing"),
        ([ckpt, str(bad), "--out", str(tmp_path / "a.npz"), "--camera-ids", "names"], "holiday.jpg"),
    ]
    for argv, needle in cases:
        assert cli.main(["extract", *argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert "ribkernels extract: error:" in err and needle in err, (argv, err)
    assert not (tmp_path / "a.npz").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "0001_c1s1_000001_00.jpg").write_bytes(b"not a jpeg")
    assert cli.main(["extract", ckpt, str(broken), "--out", str(tmp_path / "a.npz"), "--no-progress"]) == 2
    assert "0001_c1s1_000001_00.jpg" in capsys.readouterr().err
    assert not (tmp_path / "a.npz").exists()
    with pytest.raises(SystemExit):  # argparse: a non-positive batch size
        cli.main(["extract", ckpt, runs.query, "--out", str(tmp_path / "a.npz"), "--batch-size", "0"])


# ------------------------------------------------------------------------------ search
@pytest.fixture(scope="module")
def search_result(runs, tmp_path_factory):
    base = tmp_path_factory.mktemp("search")
    query = base / "query"
    query.mkdir()
    names = sorted(os.listdir(runs.query))
    for n in names[:3]:
        shutil.copy(os.path.join(runs.query, n), query / n)
    # a user-controlled name with markup in it (pid/camera of the first query, so ids still parse)
    evil = names[0].split("_c")[0] + "_c1s1_<script>alert('x')&<b>.jpg"
    shutil.copy(os.path.join(runs.query, names[0]), query / evil)
    out = base / "out"
    k = 4
    assert cli.main(["search", os.path.join(runs.dcs, "final.pth"), "--query", str(query), "--gallery",
                     runs.gallery, "--top-k", str(k), "--out", str(out), "--no-progress"]) == 0
    return types.SimpleNamespace(out=out, query=str(query), k=k, evil=evil)


def test_search_writes_csv_json_pngs_and_an_escaped_html_page(runs, search_result):
    from PIL import Image

    from ribkernels.cli.search import BORDER, CELL_W, COLORS, GAP

    out, k = search_result.out, search_result.k
    with open(out / "results.json") as f:
        res = json.load(f)
    queries = res["queries"]
    assert len(queries) == 4 and all(len(q["matches"]) == k for q in queries)
    with open(out / "results.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 4 * k
    # the ranking is the one numpy gives on the model's features (L2-normalised Euclidean)
    loaded = load_model(os.path.join(runs.dcs, "final.pth"))
    g_paths = sorted(os.path.join(runs.gallery, f) for f in os.listdir(runs.gallery))
    q_paths = [q["query"] for q in queries]
    qp, qc = ids_from_names(q_paths)
    gp, gc = ids_from_names(g_paths)
    loaded = loaded._replace(model=without_camera_ids(loaded.model))  # no camera ids: tested in extract's test
    qf, gf = _features_by_hand(loaded, q_paths), _features_by_hand(loaded, g_paths)
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    dist = np.sqrt(np.maximum(((qn[:, None] - gn[None]) ** 2).sum(-1), 0))
    for i, q in enumerate(queries):
        d = dist[i].copy()
        d[(gp == qp[i]) & (gc == qc[i])] = np.inf  # Market protocol: same person, same camera skipped
        order = np.argsort(d, kind="stable")[:k]
        assert [m["gallery"] for m in q["matches"]] == [g_paths[j] for j in order]
        np.testing.assert_allclose([m["distance"] for m in q["matches"]], d[order], rtol=1e-4, atol=1e-5)
        assert [m["match"] for m in q["matches"]] == [bool(gp[j] == qp[i]) for j in order]
    # one PNG per query: query then k matches, each cell's border coloured by its match
    pngs = sorted(os.listdir(out / "ranklists"))
    assert len(pngs) == 4 and all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
                                  for n in pngs)
    for i, q in enumerate(queries):
        img = Image.open(out / "ranklists" / pngs[i]).convert("RGB")
        step = CELL_W + 2 * BORDER + GAP
        xs = [GAP + 1] + [GAP + step + GAP + r * step + 1 for r in range(k)]
        colors = [img.getpixel((x, GAP + 1)) for x in xs]
        assert colors == [COLORS["query"]] + [COLORS[m["match"]] for m in q["matches"]]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>" not in page
    assert html.escape(search_result.evil, quote=True) in page
    assert page.count("<img ") == 4


def test_search_accepts_an_npz_gallery_and_writes_nowhere_else(runs, search_result, tmp_path, capsys):
    ckpt = os.path.join(runs.dcs, "final.pth")
    npz = tmp_path / "gallery.npz"
    assert cli.main(["extract", ckpt, runs.gallery, "--out", str(npz), "--no-progress"]) == 0
    out = tmp_path / "from_npz"
    assert cli.main(["search", ckpt, "--query", search_result.query, "--gallery", str(npz), "--top-k",
                     str(search_result.k), "--out", str(out), "--no-progress"]) == 0
    a = json.loads((out / "results.json").read_text())["queries"]
    b = json.loads((search_result.out / "results.json").read_text())["queries"]
    assert [[m["gallery"] for m in q["matches"]] for q in a] == [[m["gallery"] for m in q["matches"]] for q in b]
    # a non-empty --out is refused; with --overwrite, a link that leads out of --out is refused
    assert cli.main(["search", ckpt, "--query", search_result.query, "--gallery", str(npz), "--out", str(out),
                     "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(out / "ranklists")
    os.symlink(elsewhere, out / "ranklists")
    assert cli.main(["search", ckpt, "--query", search_result.query, "--gallery", str(npz), "--out", str(out),
                     "--overwrite", "--no-progress"]) == 2
    assert "outside --out" in capsys.readouterr().err
    assert os.listdir(elsewhere) == []


def test_search_csv_cells_cannot_start_a_spreadsheet_formula(runs, search_result, tmp_path, monkeypatch):
    """Relative paths from folders named like formulas: quoted in results.csv, exact in results.json."""
    import csv

    monkeypatch.chdir(tmp_path)
    shutil.copytree(search_result.query, "=HYPERLINK(1)")
    os.mkdir("@gallery")
    for n in sorted(os.listdir(runs.gallery))[:5]:
        shutil.copy(os.path.join(runs.gallery, n), os.path.join("@gallery", n))
    assert cli.main(["search", os.path.join(runs.dcs, "final.pth"), "--query", "=HYPERLINK(1)", "--gallery",
                     "@gallery", "--top-k", "2", "--out", "out", "--no-progress"]) == 0
    with open(os.path.join("out", "results.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    queries = json.loads(open(os.path.join("out", "results.json")).read())["queries"]
    expected = [[q["query"], m["gallery"]] for q in queries for m in q["matches"]]
    assert len(rows) == len(expected) == 2 * len(queries) > 0
    assert [[r[0], r[2]] for r in rows] == [["'" + a, "'" + b] for a, b in expected]
    assert all(a.startswith("=HYPERLINK(1)") and b.startswith("@gallery") for a, b in expected)
    assert all(float(r[3]) >= 0 for r in rows)  # numbers stay numbers


def test_spreadsheet_text_quotes_only_formula_starts():
    from ribkernels.cli.search import spreadsheet_text

    for cell in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_text(cell) == "'" + cell
    for cell in ("/data/q/0001_c1.jpg", "q/a=b.jpg", "", "'=x"):
        assert spreadsheet_text(cell) == cell


def test_search_never_lists_the_query_itself(runs, search_result, tmp_path):
    out = tmp_path / "self"
    assert cli.main(["search", os.path.join(runs.dcs, "final.pth"), "--query", search_result.query, "--gallery",
                     search_result.query, "--top-k", "10", "--keep-same-camera", "--out", str(out),
                     "--no-progress"]) == 0
    queries = json.loads((out / "results.json").read_text())["queries"]
    n = len(queries)
    for q in queries:
        assert q["query"] not in [m["gallery"] for m in q["matches"]]
        assert len(q["matches"]) == n - 1  # the rest of the gallery, fewer than --top-k


def test_output_folder_refuses_paths_that_leave_it(tmp_path):
    from ribkernels.cli import CommandError
    from ribkernels.cli.search import OutputFolder, safe_name

    folder = OutputFolder(str(tmp_path / "o"), overwrite=False)
    for part in ("..", "../x.png", "/etc/passwd", "a/b.png", ""):
        with pytest.raises(CommandError):
            folder.path(part)
    assert folder.path("x.png") == os.path.join(os.path.realpath(tmp_path / "o"), "x.png")
    name = safe_name("../../<script>.jpg")
    assert name == "_.._script_.jpg" and not name.startswith(".") and "/" not in name
    assert safe_name("...") == "image"


# ------------------------------------------------------------------------------ export
def test_export_onnx_and_torch_export_match_pytorch(runs, tmp_path, capsys):
    import onnxruntime

    ckpt = os.path.join(runs.plain, "final.pth")
    loaded = load_model(ckpt)
    h, w = loaded.config["model"]["img_size"]
    x = torch.randn(5, 3, h, w)  # another batch size than the command's own check
    with torch.no_grad():
        ref = without_camera_ids(loaded.model)(x).numpy()

    assert cli.main(["export", ckpt, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "max abs error vs PyTorch" in capsys.readouterr().out
    sess = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)

    assert cli.main(["export", ckpt, "--format", "torch-export", "--out", str(tmp_path / "m.pt2")]) == 0
    with torch.no_grad():
        got = torch.export.load(str(tmp_path / "m.pt2")).module()(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)

    assert cli.main(["export", ckpt, "--format", "onnx", "--out", str(tmp_path / "m.pt2")]) == 2
    assert ".onnx" in capsys.readouterr().err


@pytest.mark.parametrize("fmt,name", [("torch-export", "dcs.pt2"), ("onnx", "dcs.onnx")])
def test_export_dcs_model(runs, tmp_path, capsys, fmt, name):
    """The RIB-DCS model (eval mask 1[θ > 0]) exports; the command itself compares the file's output with
    PyTorch's and fails above --atol."""
    assert cli.main(["export", os.path.join(runs.dcs, "final.pth"), "--format", fmt, "--out",
                     str(tmp_path / name)]) == 0
    assert (tmp_path / name).stat().st_size > 0 and "max abs error" in capsys.readouterr().out


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_reproduces_the_training_evaluation(runs, tmp_path, capsys):
    out = tmp_path / "ev"
    ckpt = os.path.join(runs.dcs, "final.pth")
    assert cli.main(["evaluate", ckpt, "--output-dir", str(out)]) == 0
    assert _final(str(out))["mAP"] == pytest.approx(_final(runs.dcs)["mAP"], abs=1e-6)
    assert cli.main(["evaluate", ckpt, "--dataset", "no_such_set", "--output-dir", str(tmp_path / "x")]) == 2
    assert "no_such_set" in capsys.readouterr().err
    assert cli.main(["evaluate", ckpt, "--data-root", str(tmp_path / "nope")]) == 2
    assert f"--data-root {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert sorted(os.listdir(out)) == [n for n in sorted(os.listdir(out)) if n.startswith("eval-")]
    # into the training run's own folder: its files are kept byte for byte, one eval-*.json added
    run = tmp_path / "run"
    shutil.copytree(runs.dcs, run)
    before = {n: (run / n).read_bytes() for n in os.listdir(run) if (run / n).is_file()}
    assert cli.main(["evaluate", str(run / "final.pth"), "--output-dir", str(run)]) == 0
    after = {n: (run / n).read_bytes() for n in os.listdir(run) if (run / n).is_file()}
    assert {n: b for n, b in after.items() if n in before} == before
    assert sorted(n.rsplit(".", 1)[1] for n in set(after) - set(before) if n.startswith("eval-")) == ["json", "log"]


# ------------------------------------------------------------------------------ long runs
def test_tensorboard_logs_and_a_clear_message_without_it(runs, tmp_path, monkeypatch):
    events = os.listdir(os.path.join(runs.dcs, "tensorboard"))
    assert any(e.startswith("events.out.tfevents") for e in events)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        _train(runs.data_root, tmp_path / "tb", "--tensorboard")
    assert not (tmp_path / "tb").exists()  # refused before the run folder was made


