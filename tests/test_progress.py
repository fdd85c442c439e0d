"""Progress of the long tasks: log lines with counts and ETA off a TTY (a tqdm bar on one), for the
evaluation passes, the IBB refresh's feature pass, re-ranking and the occlusion test, in a tiny run's
train.log and in ``ribkernels evaluate``'s log; the synthetic folder and the occlusion table's Rank-10
in train.log."""
import glob
import json
import logging
import os
import re

import pytest

from ribkernels import cli
from ribkernels.engine import main
from ribkernels.engine.reporting import TaskProgress


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_task_progress_logs_counts_percent_and_eta(caplog):
    clock = _Clock()
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        with TaskProgress("feature pass", 10, log, mode="log", every_s=5.0, clock=clock) as p:
            clock.t += 2.0
            p.update(2)          # 2 s since the start line: quiet
            clock.t += 4.0
            p.update(2)          # 6 s: a line, 4 done in 6 s, 6 left: eta 9 s
            clock.t += 1.0
            p.update(6)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["feature pass: 10 images to go", "feature pass: 4/10 images (40%), 6s, eta 9s",
                     "feature pass: 10/10 images done in 7.0s"]
    with caplog.at_level(logging.INFO, logger="test.progress"):
        caplog.clear()
        with pytest.raises(KeyboardInterrupt):
            with TaskProgress("x", 3, log, mode="log", clock=clock) as p:
                p.update(1)
                raise KeyboardInterrupt
        assert caplog.records[-1].getMessage() == "x: 1/3 images stopped in 0.0s"
        caplog.clear()
        with TaskProgress("quiet", 3, log, mode="log", enabled=False) as p:  # ranks other than 0
            p.update(3)
        assert caplog.records == []


def _count_lines(text, desc):
    return re.findall(rf"INFO {re.escape(desc)}: (\d+)/(\d+) (?:images|rows) done", text)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("progress")
    run = tmp / "run"
    assert main(["--config", "synthetic_tiny_test", "--output-dir", str(run), "--data-root", str(tmp / "data"),
                 "--set", "ibb.refresh_features=eval_pass", "--rerank", "--occlusion",
                 "--set", "output.progress=log"]) == 0
    return run


def test_a_tiny_runs_log_shows_the_progress_of_every_long_task(tiny_run):
    text = open(tiny_run / "train.log").read()
    with open(tiny_run / "metrics.json") as f:
        final = json.load(f)["final"]
    assert _count_lines(text, "evaluation: query features") == [("6", "6")]
    assert _count_lines(text, "evaluation: gallery features") == [("20", "20")]
    assert _count_lines(text, "IBB refresh at epoch 2: training-set features") == [("32", "32")]
    assert _count_lines(text, "re-ranking: k-reciprocal sets") == [("26", "26")]
    assert _count_lines(text, "re-ranking: Jaccard distances") == [("6", "6")]
    assert _count_lines(text, "occlusion test (2 levels)") == [("32", "32")]  # 20 gallery + 2 x 6 queries
    assert "evaluation: query features: 6 images to go" in text
    # the synthetic dataset's generated folder
    folder = re.search(r"dataset synthetic: .* \(folder (.+)\)", text).group(1)
    assert os.path.isdir(os.path.join(folder, "bounding_box_train"))
    # Rank-10 in every occlusion row, in metrics.json and in the logged table
    assert all(0.0 <= r["rank10"] <= 1.0 for r in final["occlusion"])
    table = text[text.index("### occlusion stress test"):]
    rows = [ln for ln in table.splitlines() if ln.startswith("| occlusion ")]
    assert len(rows) == 2 and all("–" not in ln for ln in rows)


def test_evaluate_command_logs_its_progress(tiny_run, tmp_path):
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(tiny_run / "final.pth"), "--output-dir", str(out), "--rerank"]) == 0
    text = open(glob.glob(str(out / "eval-*.log"))[0]).read()
    assert _count_lines(text, "evaluation: query features") == [("6", "6")]
    assert _count_lines(text, "re-ranking: Jaccard distances") == [("6", "6")]
