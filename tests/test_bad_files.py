"""Files named by a run that cannot be used (engine, CPU, tiny synthetic config): checkpoint, --pretrained
(also timm:<name>:<file>) and unreadable-image errors name the file; an image corrupted during training
stops the run with a checkpoint it resumes from exactly.
"""
import os
import shutil

import torch

from ribkernels.engine import checkpoint as ckpt_io
from faults_common import (_args, _copy, data_root, _digest, _metrics, RUN, stopped_run, _strip, TINY, train)


# ------------------------------------------------------------------------------------ files named
def test_unusable_resume_files_are_named(data_root, stopped_run, tmp_path):
    data = open(os.path.join(stopped_run, "last.pth"), "rb").read()
    out = tmp_path / "out"
    cases = {"empty": (b"", "empty (0 bytes)"), "truncated": (data[: len(data) // 2], "truncated or corrupt"),
             "garbage": (b"not a checkpoint at all" * 10, "not a readable PyTorch checkpoint")}
    for name, (content, says) in cases.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(content)
        rc, err = train(*_args(data_root, out, *RUN, "--resume", str(path)))
        assert rc == 2 and str(path) in err and says in err, (name, err)
        assert not out.exists()
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(3)}, weights)
    rc, err = train(*_args(data_root, out, *RUN, "--resume", str(weights)))
    assert rc == 2 and str(weights) in err and "not a ribkernels checkpoint" in err
    rc, err = train(*_args(data_root, tmp_path / "ev", "--eval-only", "--checkpoint", str(weights)))
    assert rc == 2 and str(weights) in err and "expected a train.py checkpoint" in err
    # continuing a run into a folder that holds another run is refused too
    other = _copy(stopped_run, tmp_path / "other")
    rc, err = train(*_args(data_root, other, *RUN, "--resume", os.path.join(stopped_run, "last.pth")))
    assert rc == 2 and "holds another run" in err and other in err


def test_pretrained_in_the_timm_form_is_checked_and_loaded(data_root, tmp_path):
    """``--pretrained timm:<timm model name>:<file>`` (docs/training.md): its file is the one checked
    before any data is read, and train.py loads it through timm's converter."""
    import timm

    weights = tmp_path / "deit_tiny.pth"
    torch.save({"model": timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()}, weights)
    missing = str(tmp_path / "missing.pth")
    for spec, says in ((f"timm:vit_tiny_patch16_224:{missing}", f"--pretrained {missing}: no such file"),
                       ("timm:vit_tiny_patch16_224", "expected 'timm:<timm model name>:<local weights file>'")):
        rc, err = train("--config", TINY, "--data-root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "x"),
                        "--pretrained", spec)
        assert rc == 2 and says in err, err
        assert not (tmp_path / "data").exists() and not (tmp_path / "x").exists()
    run = tmp_path / "run"
    rc, err = train(*_args(data_root, run, "--epochs", "1", "--model-name", "vit_small_cpu",
                           "--pretrained", f"timm:vit_tiny_patch16_224:{weights}"))
    assert rc == 0, err
    import re

    found = re.search(rf"load_pretrained\({re.escape(str(weights))}, timm vit_tiny_patch16_224\): (\d+) tensors loaded",
                      (run / "train.log").read_text())
    assert found and int(found.group(1)) >= 4 * 12, found  # at least the 12 tensors of each of the 4 blocks


def test_an_unreadable_image_stops_train_py_before_training_with_its_path(data_root, stopped_run, tmp_path):
    """A truncated JPEG in a Market-1501 folder: one error line listing it (exit 2, no traceback, no
    run folder); with --skip-bad-images the run trains and records it in metrics.json."""
    (generated,) = [os.path.join(data_root, d) for d in os.listdir(data_root)]  # made by stopped_run
    market = shutil.copytree(generated, tmp_path / "market")
    bad = sorted((market / "bounding_box_test").glob("00*.jpg"))[-1]  # a person id, not a junk (-1) image
    bad.write_bytes(bad.read_bytes()[:300])
    flags = ("--dataset", "market1501", "--set", "data.dataset_kwargs={}", "--epochs", "1")
    rc, err = train(*_args(str(market), tmp_path / "run", *flags))
    assert rc == 2 and str(bad) in err and "--skip-bad-images" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
    rc, err = train(*_args(str(market), tmp_path / "run", *flags, "--skip-bad-images"))
    assert rc == 0, err
    assert [b["path"] for b in _metrics(tmp_path / "run")["bad_images"]] == [str(bad)]


def test_an_image_corrupted_during_training_stops_with_a_checkpoint_and_resumes_exactly(data_root, tmp_path):
    """A training image broken after the dataset's image check (same size and mtime, so the cached
    verdict still says "good") is found in epoch 2's second batch: exit 2 naming it, last.pth at that
    iteration. --skip-bad-images then leaves it out on resume; the file replaced, the resume ends with
    the uninterrupted run's parameters."""
    from ribkernels.engine import components
    from ribkernels.engine.config import build_parser, resolve

    data = str(shutil.copytree(data_root, tmp_path / "data"))
    flags = ("--epochs", "2", "--no-use-ibb")
    rc, err = train(*_args(data, tmp_path / "ref", *flags))
    assert rc == 0, err
    run = tmp_path / "run"
    rc, err = train(*_args(data, run, *flags, "--stop-after", "1"))
    assert rc == 0, err
    cfg = resolve(build_parser([]).parse_args(_args(data, run, *flags)))
    bundle = components.build_data(cfg)
    batch = cfg["data"]["batch_size"]
    bad = bundle.train[components.epoch_indices(bundle, cfg, cfg["solver"]["seed"], 1, 0, 1)[batch]][0]
    original, st = open(bad, "rb").read(), os.stat(bad)
    with open(bad, "wb") as f:
        f.write(b"\0" * len(original))
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))

    rc, err = train(*_args(data, run, *flags, "--resume", "auto"))
    assert rc == 2 and bad in err and "epoch 2, iteration 2" in err and "Traceback" not in err, err
    assert f"--resume {run / 'last.pth'} --skip-bad-images" in err
    state = ckpt_io.load(str(run / "last.pth"))
    assert (state["epoch"], state["iter"]) == (1, 1)  # the state before the batch that needed the image

    skipped = _copy(run, tmp_path / "skipped")
    rc, err = train(*_args(data, skipped, *flags, "--resume", "auto", "--skip-bad-images"))
    assert rc == 0, err
    assert [b["path"] for b in _metrics(skipped)["bad_images"]] == [bad]

    with open(bad, "wb") as f:  # replaced (a new mtime): decoded again at the next start
        f.write(original)
    rc, err = train(*_args(data, run, *flags, "--resume", "auto"))
    assert rc == 0, err
    assert _digest(tmp_path / "ref") == _digest(run)
    assert _strip(_metrics(tmp_path / "ref")["epochs"]) == _strip(_metrics(run)["epochs"])
