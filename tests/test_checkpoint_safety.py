"""What a checkpoint may decide (``ribkernels evaluate`` and the other commands): nothing about where
files are written, and nothing unchecked about what runs. Its stored config name only labels the
default folder ``runs/<name>-eval-<timestamp>`` (made safe, confined under ``./runs``); its stored
config passes train.py's rules before use."""
import contextlib
import io
import os

import pytest

from ribkernels.cli import main as cli_main
from ribkernels.engine import run_folder as rf
from tiny_checkpoint import write_model_file


def _cli(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli_main([str(a) for a in argv])
    return rc, err.getvalue()


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files)


@pytest.mark.parametrize("name,expected", [("../../x", "x"), ("/abs/path/x", "abs_path_x"), ("a\x00b", "a_b"),
                                           ("..", "run"), ("", "run"), (None, "run"), ("ok-name_1.2", "ok-name_1.2"),
                                           ("-.-x..", "x"), ("é/名", "run")])
def test_safe_config_name(name, expected):
    assert rf.safe_config_name(name) == expected


def test_a_new_folder_stays_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("../../x", "/etc/x", "a\x00b"):
        path = rf._new_folder(name)
        assert os.path.commonpath([os.path.realpath(path), str(tmp_path / "runs")]) == str(tmp_path / "runs")
    os.makedirs(tmp_path / "runs", exist_ok=True)
    os.symlink(str(tmp_path / "elsewhere"), str(tmp_path / "runs" / "link"))  # a link inside runs/ leading out
    with pytest.raises(rf.RunFolderError, match="outside"):
        rf._inside(str(tmp_path / "runs" / "link" / "x"), str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


@pytest.mark.parametrize("stored", ["../../escaped", "/tmp/absolute-escape", "nul\x00name"])
def test_a_stored_config_name_writes_nothing_outside_runs(tmp_path, monkeypatch, data_root, stored):
    """evaluate without --output-dir: the folder is runs/<safe name>-eval-<timestamp> under the working
    directory, whatever the checkpoint says (it used to create ../../escaped-eval-... and two files)."""
    ck = write_model_file(tmp_path / "final.pth", edit=lambda s: s["config"]["_meta"].update(config_name=stored))
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = _tree(tmp_path)
    rc, err = _cli("evaluate", ck, "--data-root", data_root, "--device", "cpu")
    assert rc == 0, err
    new = [p for p in _tree(tmp_path) if p not in before]
    assert new and all(p.startswith(os.path.join("a", "b", "work", "runs")) for p in new), new
    (folder,) = os.listdir(work / "runs")
    assert folder.startswith(rf.safe_config_name(stored) + "-eval-") and "\x00" not in folder
    assert not os.path.exists("/tmp/absolute-escape-eval") and not any(
        n.startswith("absolute-escape") for n in os.listdir("/tmp"))


def _set(section, key, value):
    def edit(state):
        state["config"][section][key] = value
    return edit


@pytest.mark.parametrize("edit,says", [
    (_set("data", "dataset_kwargs", {"num_train_ids": 4, "bogus": 1}), "data.dataset_kwargs: dataset 'synthetic' "
                                                                      "takes no argument 'bogus'"),
    (_set("data", "dataset", "no_such_dataset"), "data.dataset = 'no_such_dataset'"),
    (_set("data", "padding", -3), "data.padding = -3"),
    (_set("eval", "max_rank", "10"), "eval.max_rank = '10'"),
    (_set("data", "num_workers", {"a": 1}), "data.num_workers = {'a': 1}"),
    (lambda s: s["config"].__setitem__("eval", [1, 2]), "section 'eval' is a list"),
    (lambda s: s["config"]["data"].__setitem__("evil_key", 1), "unknown key data.evil_key"),
])
def test_evaluate_checks_the_stored_config_with_the_command_lines_rules(tmp_path, monkeypatch, data_root, edit, says):
    ck = write_model_file(tmp_path / "final.pth", edit=edit)
    monkeypatch.chdir(tmp_path)
    rc, err = _cli("evaluate", ck, "--device", "cpu")
    assert rc == 2 and says in err and ck in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_a_stored_data_root_is_not_created_and_synthetic_data_goes_to_its_cache(tmp_path, monkeypatch):
    ck = write_model_file(tmp_path / "final.pth",
                          edit=_set("data", "root", str(tmp_path / "made-by-checkpoint")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RIBKERNELS_CACHE", str(tmp_path / "cache"))
    rc, err = _cli("evaluate", ck, "--device", "cpu", "--output-dir", tmp_path / "out")
    assert rc == 0, err
    assert not (tmp_path / "made-by-checkpoint").exists() and (tmp_path / "cache" / "synthetic_market").is_dir()
    ck = write_model_file(tmp_path / "market.pth", edit=lambda s: s["config"]["data"].update(
        dataset="market1501", dataset_kwargs={}, root=str(tmp_path / "no-market")))
    rc, err = _cli("evaluate", ck, "--device", "cpu")
    assert rc == 2 and "no-market" in err and "give --data-root" in err, err


def test_evaluate_output_dir_that_is_a_file_is_refused(tmp_path, data_root):
    ck = write_model_file(tmp_path / "final.pth")
    (tmp_path / "a-file").write_text("x")
    rc, err = _cli("evaluate", ck, "--output-dir", tmp_path / "a-file", "--data-root", data_root)
    assert rc == 2 and "--output-dir" in err and "not a folder" in err
    assert (tmp_path / "a-file").read_text() == "x"


def test_extract_checks_the_stored_model_config(tmp_path):
    from PIL import Image

    ck = write_model_file(tmp_path / "final.pth", edit=lambda s: s["config"]["model"]["kwargs"].update(x=1))
    Image.new("RGB", (32, 64)).save(tmp_path / "0001_c1s1_000001_00.jpg")
    rc, err = _cli("extract", ck, tmp_path, "--out", tmp_path / "f.npz")
    assert rc == 2 and "model.kwargs" in err and "'x'" in err and ck in err, err


def test_train_eval_only_checks_the_stored_model_section(tmp_path):
    from ribkernels.engine import main as train_main

    ck = write_model_file(tmp_path / "final.pth", edit=_set("model", "img_size", [64, "32"]))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train_main(["--eval-only", "--checkpoint", ck, "--output-dir", str(tmp_path / "out")])
    assert rc == 2 and "model.img_size = [64, '32']" in err.getvalue(), err.getvalue()
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ old-checkpoint advice
def _old_checkpoint(path, zip_format=True, numpy_part=None):
    import random

    import numpy as np
    import torch

    state = {"rng": {"python": random.getstate(), "numpy": numpy_part or np.random.get_state(),
                     "torch": torch.get_rng_state()},
             "model": {"w": torch.zeros(300)}, "optimizer": {}, "epoch": 1, "metrics": {"mAP": np.float64(0.5)}}
    torch.save(state, str(path), _use_new_zipfile_serialization=zip_format)
    return str(path)


@pytest.mark.parametrize("zip_format", [True, False])
def test_an_old_checkpoint_gets_the_conversion_advice_and_converts(tmp_path, zip_format):
    """Only NumPy arrays/scalars beyond a weights-only load's types: the advice, and converting works
    (weights-only, NumPy types allowed), in torch's zip and legacy formats."""
    from ribkernels.engine import checkpoint as ckpt_io

    old = _old_checkpoint(tmp_path / "old.pth", zip_format)
    with pytest.raises(ckpt_io.LegacyCheckpointError, match="convert-checkpoint .* --trust"):
        ckpt_io.load(old)
    new = ckpt_io.convert_legacy(old, str(tmp_path / "new.pth"))
    assert new["metrics"] == {"mAP": 0.5} and new["rng"]["numpy"]["keys"].shape == (624,)
    assert ckpt_io.load(str(tmp_path / "new.pth"))["epoch"] == 1


def test_globals_that_cannot_be_named_without_running_the_pickle_get_no_advice(tmp_path):
    """A STACK_GLOBAL whose module/name come from the memo (or anything unparsable) is not called an
    old checkpoint: the scan returns None, the message says "contains code"."""
    import pickle

    from ribkernels.engine import checkpoint as ckpt_io

    memo = (b"\x80\x04\x8c\x05numpy\x94\x8c\x07ndarray\x94h\x00h\x01\x93\x94.")  # module/name via BINGET
    assert ckpt_io._pickle_globals(memo) is None
    assert ckpt_io._pickle_globals(pickle.dumps({"a": 1}, protocol=4)) == set()
    assert ckpt_io._pickle_globals(b"\x80\x02garbage") is None
    plain = pickle.dumps(__import__("collections").OrderedDict(a=1), protocol=4)  # STACK_GLOBAL, strings inline
    assert ckpt_io._pickle_globals(plain) == {"collections.OrderedDict"}
