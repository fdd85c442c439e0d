"""Run folders (engine, CPU, tiny synthetic config): never overwritten, a PID lock (stale locks taken
over), --eval-only writes its own file, a failed start leaves no folder, --resume auto finds the
config's latest run or says there is none; temp files of killed writes go at the next start.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from ribkernels.engine import checkpoint as ckpt_io
from faults_common import (_args, _copy, data_root, _files, full_run, _metrics, RUN, stopped_run, TINY, train)


# ------------------------------------------------------------------------------------ run folders
def test_a_new_run_never_overwrites_a_run_folder(data_root, stopped_run, tmp_path):
    run = _copy(stopped_run, tmp_path / "run")
    before = _files(run)
    rc, err = train(*_args(data_root, run, *RUN))
    assert rc == 2
    assert run in err and "--resume auto" in err and "--output-dir" in err and "last.pth" in err
    assert _files(run) == before


def test_eval_only_into_a_run_folder_keeps_its_metrics(data_root, full_run, tmp_path):
    run = _copy(full_run, tmp_path / "run")
    before = _files(run)
    rc, err = train(*_args(data_root, run, "--eval-only", "--checkpoint", os.path.join(run, "final.pth")))
    assert rc == 0, err
    after = _files(run)
    assert {n: b for n, b in after.items() if n in before} == before  # nothing rewritten
    new = sorted(set(after) - set(before))
    assert [n for n in new if n.endswith(".json")] and all(n.startswith("eval-") for n in new), new
    result = json.loads(after[[n for n in new if n.endswith(".json")][0]])
    assert result["final"]["mAP"] == pytest.approx(_metrics(run)["final"]["mAP"], abs=1e-6)


def test_a_second_concurrent_run_is_refused_and_a_stale_lock_is_taken_over(data_root, stopped_run, tmp_path):
    run = _copy(stopped_run, tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(os.path.join(run, "run.lock"), "w") as f:
            f.write(f"pid={live.pid}\nhost={socket.gethostname()}\nstarted=now\n")
        rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))
        assert rc == 2 and f"PID {live.pid}" in err and run in err
        assert ckpt_io.load(os.path.join(run, "last.pth"))["epoch"] == 1  # untouched
    finally:
        live.kill()
        live.wait()
    # the same lock, its process gone: a stale lock, taken over
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))
    assert rc == 0, err
    assert "stale lock" in open(os.path.join(run, "train.log")).read()
    assert not os.path.exists(os.path.join(run, "run.lock"))  # released at the end


def test_a_failed_start_leaves_no_folder(tmp_path):
    run = tmp_path / "new"
    rc, err = train("--config", TINY, "--dataset", "market1501", "--data-root", str(tmp_path / "no-such-market"),
                    "--set", "data.dataset_kwargs={}", "--output-dir", str(run), "--progress", "log")
    assert rc == 2 and "no-such-market" in err  # failed while reading the data, after the folder was made
    assert not run.exists()
    rc, err = train("--config", TINY, "--pretrained", str(tmp_path / "missing.pth"), "--output-dir", str(run))
    assert rc == 2 and "missing.pth" in err and not run.exists()


def test_resume_auto_without_output_dir(data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = train("--config", TINY, "--data-root", data_root, "--progress", "log", "--resume", "auto")
    assert rc == 2 and "no run of config 'synthetic_tiny_test'" in err
    assert not (tmp_path / "runs").exists()  # no empty folder made
    rc, err = train("--config", TINY, "--data-root", data_root, "--progress", "log", *RUN, "--stop-after", "1")
    assert rc == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("synthetic_tiny_test-")
    rc, err = train("--config", TINY, "--data-root", data_root, "--progress", "log", *RUN, "--resume", "auto")
    assert rc == 0, err
    assert list((tmp_path / "runs").iterdir()) == [run] and (run / "final.pth").is_file()


def test_leftover_temp_files_are_removed_at_the_next_start(data_root, stopped_run, tmp_path):
    run = _copy(stopped_run, tmp_path / "run")
    leftover = os.path.join(run, ".tmp-killed.pth")
    open(leftover, "wb").write(b"half a checkpoint")
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))
    assert rc == 0, err
    assert not os.path.exists(leftover)
