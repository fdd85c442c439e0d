"""train.py end to end on a tiny synthetic dataset (CPU): exact resume, a training step that lowers
the loss, metrics.json / plots / checkpoints in the run folder, --eval-only, Ctrl-C saving."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ribkernels.engine import Trainer, build_parser, main, resolve
from ribkernels.engine import checkpoint as ckpt_io
from ribkernels.engine import components

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic_tiny_test.yaml")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def _args(data_root, out, *extra):
    return ["--config", TINY, "--data-root", data_root, "--output-dir", str(out), "--progress", "log", *extra]


def _metrics(run):
    with open(os.path.join(run, "metrics.json")) as f:
        return json.load(f)


def test_resume_reproduces_an_uninterrupted_run(data_root, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(_args(data_root, full, "--epochs", "3", "--ibb-start-epoch", "1")) == 0
    assert main(_args(data_root, split, "--epochs", "3", "--ibb-start-epoch", "1", "--stop-after", "2")) == 0
    partial = _metrics(split)
    assert len(partial["epochs"]) == 2 and partial["final"] is None
    assert ckpt_io.load(str(split / "last.pth"))["epoch"] == 2
    assert main(_args(data_root, split, "--epochs", "3", "--ibb-start-epoch", "1",
                      "--resume", str(split / "last.pth"))) == 0
    a, b = _metrics(full), _metrics(split)
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s", "ibb_refresh_s")}
                          for r in recs]
    assert strip(a["epochs"]) == strip(b["epochs"])
    assert a["final"] == b["final"]
    assert open(full / "params_rank0.sha256").read() == open(split / "params_rank0.sha256").read()
    # what the run folder holds
    for name in ("config.yaml", "train.log", "metrics.json", "last.pth", "final.pth", "results.md", "losses.png",
                 "ibb.png", "eval.png"):
        assert (full / name).is_file(), name
    fin = a["final"]
    assert all(0.0 <= fin[k] <= 1.0 for k in ("mAP", "rank1", "rank5", "rank10", "mINP"))
    assert fin["rank1"] <= fin["rank5"] <= fin["rank10"]
    e = a["epochs"]
    assert [r["ibb_on"] for r in e] == [False, True, True]
    assert all(r["ibb"] is not None and r["ibb_term2"] is not None for r in e[1:])
    assert all(0.0 < r["keep_fraction"] <= 1.0 for r in e)


def test_one_step_of_the_loop_lowers_the_loss_on_a_fixed_batch(data_root, tmp_path):
    args = build_parser().parse_args(_args(data_root, tmp_path, "--warmup-epochs", "0", "--optimizer", "sgd", "--lr", "0.02",
                                           "--ibb-start-epoch", "0"))
    trainer = Trainer(resolve(args))
    try:
        trainer._maybe_refresh_ibb(0)  # input clusters, k-means and Q from the untrained model
        idx = components.epoch_indices(trainer.data, trainer.cfg, 0, 0, 0, 1)[: trainer.local_batch]
        batch = next(iter(trainer.data.train_loader(trainer.cfg, idx, trainer.local_batch, seed=0)))

        def loss_now():
            images, pids, cams, _ = components.unpack(batch, trainer.device)
            torch.manual_seed(123)  # the same DCS noise both times
            trainer.model.train()
            with torch.no_grad():
                out = trainer.model(images, cam_label=cams)
                return trainer.compute_loss(out, pids, 0, images)[1]

        before = loss_now()
        torch.manual_seed(123)
        terms = trainer.train_step(batch, 0)
        after = loss_now()
        assert "ibb" in terms and torch.isfinite(terms["loss"])
        assert after["loss"] < before["loss"], (before, after)
    finally:
        trainer.close()


def test_eval_only_with_occlusion_table(data_root, tmp_path):
    run = tmp_path / "run"
    assert main(_args(data_root, run, "--epochs", "1", "--no-use-ibb")) == 0
    ev = tmp_path / "ev"
    assert main(_args(data_root, ev, "--eval-only", "--checkpoint", str(run / "final.pth"), "--occlusion")) == 0
    assert not (ev / "metrics.json").exists()  # --eval-only writes only eval-<timestamp>.json
    (eval_json,) = ev.glob("eval-*.json")
    fin_train, fin_eval = _metrics(run)["final"], json.loads(eval_json.read_text())["final"]
    assert fin_eval["mAP"] == pytest.approx(fin_train["mAP"], abs=1e-6)
    assert [r["ratio"] for r in fin_eval["occlusion"]] == [0.0, 0.3]
    assert fin_eval["occlusion"][0]["mAP"] == pytest.approx(fin_eval["mAP"], abs=1e-6)
    # per-query AP and rank-1 hits, at the final evaluation only, averaging to the reported means
    for fin in (fin_train, fin_eval):
        per_query = fin["per_query"]
        n = fin["num_valid_queries"]
        assert len(per_query["query_pids"]) == len(per_query["AP"]) == len(per_query["rank1"]) == n > 1
        assert sum(per_query["AP"]) / n == pytest.approx(fin["mAP"], abs=5e-6)
        assert sum(per_query["rank1"]) / n == pytest.approx(fin["rank1"], abs=1e-12)
    assert all("per_query" not in r for r in _metrics(run)["evals"])
    assert "occlusion" not in fin_train["per_query"]
    levels = fin_eval["per_query"]["occlusion"]
    assert list(levels) == ["0.0", "0.3"] and all("query_pids" not in v for v in levels.values())
    for row in fin_eval["occlusion"]:
        level = levels[str(row["ratio"])]
        assert "per_query" not in row
        assert sum(level["AP"]) / len(level["AP"]) == pytest.approx(row["mAP"], abs=5e-6)
        assert sum(level["rank1"]) / len(level["rank1"]) == pytest.approx(row["rank1"], abs=1e-12)


def test_ctrl_c_saves_a_resumable_checkpoint(data_root, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"),
                             *_args(data_root, run, "--epochs", "200", "--log-period", "1")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            lines.append(line)
            if "epoch 2/200 iter 1/" in line:
                proc.send_signal(signal.SIGINT)
                break
            assert time.time() < deadline, "".join(lines)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + out
    assert proc.returncode == 130, log  # interrupted: non-zero, as for SIGINT
    assert "stopped by interrupt" in log
    state = ckpt_io.load(str(run / "last.pth"))
    assert (state["epoch"], state["iter"]) >= (1, 1) and state["epoch"] < 200
    assert _metrics(run)["final"] is None
