"""Shared by the engine fault tests (CPU, tiny synthetic config): the data root, an uninterrupted
3-epoch run and a run stopped after its first epoch (module-scoped fixtures: each test module that
uses them builds them once), and the helpers that run ``train.py`` in-process and read a run folder."""
import contextlib
import io
import json
import os
import shutil

import pytest

from ribkernels.engine import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic_tiny_test.yaml")
TIMING_KEYS = ("time_s", "images_per_s", "ibb_refresh_s")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def _args(data_root, out, *extra):
    out_args = ["--output-dir", str(out)] if out is not None else []
    # On the CPU even where a GPU is visible: bit-identical resume is the CPU guarantee.
    return ["--config", TINY, "--data-root", data_root, *out_args, "--progress", "log", "--device", "cpu", *extra]


def train(*argv):
    """``main(argv)`` in this process; returns (exit status, what it printed to stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


def _metrics(run):
    with open(os.path.join(run, "metrics.json")) as f:
        return json.load(f)


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _digest(run):
    with open(os.path.join(run, "params_rank0.sha256")) as f:
        return f.read()


def _files(folder):
    """{name: bytes} of a folder's files (to prove nothing was rewritten)."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))}


# 3 epochs, IBB from epoch 1: a resume inside epoch 1 must restore the IBB state and RNGs exactly.
RUN = ("--epochs", "3", "--ibb-start-epoch", "1")


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    """An uninterrupted run: the reference for every resume."""
    run = tmp_path_factory.mktemp("full") / "run"
    rc, err = train(*_args(data_root, run, *RUN))
    assert rc == 0, err
    return str(run)


@pytest.fixture(scope="module")
def stopped_run(data_root, tmp_path_factory):
    """A run stopped after its first epoch (last.pth at epoch 1), to copy for each test."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    rc, err = train(*_args(data_root, run, *RUN, "--stop-after", "1"))
    assert rc == 0, err
    return str(run)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)
