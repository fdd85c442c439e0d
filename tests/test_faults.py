"""The fault suite of issues 12 and 14 (engine part, CPU, tiny synthetic config): every way a run used
to lose work, bend silently or fail without naming the culprit, reproduced and checked.

* run folders: never overwritten, a PID lock (stale locks taken over), --eval-only writes its own file,
  a failed start leaves no folder, --resume auto finds the config's latest run or says there is none;
* Ctrl-C at an iteration, then --resume auto: bit-identical to an uninterrupted run, exit status 130;
  a Ctrl-C after the last training step (last iteration, final evaluation) is not ignored either;
* a resume with changed hyperparameters is refused unless --allow-changes, which is recorded;
* every bad config value fails before any data is read, naming key, value and what is allowed;
* checkpoint, --pretrained (also timm:<name>:<file>) and unreadable-image errors name the file; temp
  files of killed writes go; checkpoints follow the umask;
* a malicious pickle handed to every entry point that takes a checkpoint runs no code (issue 14);
  previous-format checkpoints are refused with the conversion command, which converts exactly.

To cover another entry point that reads a checkpoint (e.g. a CLI command), add one line to
``CHECKPOINT_ENTRY_POINTS``.
"""
import ast
import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace

import numpy as np
import pytest
import torch
import yaml

from ribkernels.engine import DEFAULTS, main
from ribkernels.engine import checkpoint as ckpt_io
from ribkernels.engine import validate

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


# ------------------------------------------------------------------------------------ exact resume
def test_ctrl_c_mid_epoch_then_resume_is_bit_identical(data_root, full_run, tmp_path):
    """SIGINT (a real signal, in a subprocess) after iteration 0 of epoch 1, exit 130; --resume auto
    with 2 loader workers (the interrupted run had none) ends with the uninterrupted run's parameters
    and metrics, the resumed epoch's record covering the whole epoch."""
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *_args(data_root, run, *RUN),
                           "--sigint-at", "1,0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 130, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = ckpt_io.load(str(run / "last.pth"))
    assert (state["epoch"], state["iter"]) == (1, 1)
    assert len(_metrics(run)["epochs"]) == 1
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto", "--num-workers", "2"))
    assert rc == 0, err
    a, b = _metrics(full_run), _metrics(run)
    assert _strip(a["epochs"]) == _strip(b["epochs"])
    assert a["final"] == b["final"]
    assert _digest(full_run) == _digest(run)


def test_interrupt_in_the_first_epoch_then_resume_is_bit_identical(data_root, full_run, tmp_path):
    run = tmp_path / "run"
    rc, _ = train(*_args(data_root, run, *RUN, "--sigint-at", "0,0"))
    assert rc == 130
    assert ckpt_io.load(str(run / "last.pth"))["iter"] == 1
    rc, err = train(*_args(data_root, run, *RUN, "--resume", str(run / "last.pth")))
    assert rc == 0, err
    assert _strip(_metrics(full_run)["epochs"]) == _strip(_metrics(run)["epochs"])
    assert _digest(full_run) == _digest(run)


def test_ctrl_c_in_the_last_iteration_skips_the_final_evaluation_and_exits_130(data_root, full_run, stopped_run,
                                                                                 tmp_path):
    """Training is complete but the user asked to stop: final.pth and last.pth are saved, the final
    evaluation is left to --resume (which only evaluates), the exit status is 130 — not 0."""
    iters = ckpt_io.load(os.path.join(stopped_run, "last.pth"))["scheduler"]["last_iter"]  # one epoch's
    run = tmp_path / "run"
    rc, _ = train(*_args(data_root, run, *RUN, "--sigint-at", f"2,{iters - 1}"))
    assert rc == 130
    assert (run / "final.pth").is_file() and _metrics(run).get("final") is None and not (run / "results.md").exists()
    assert "--resume" in (run / "train.log").read_text().splitlines()[-1]
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))
    assert rc == 0, err
    assert _metrics(run)["final"] == _metrics(full_run)["final"]
    assert _digest(full_run) == _digest(run)


def test_ctrl_c_during_the_final_evaluation_stops_it_and_exits_130(data_root, full_run, stopped_run, tmp_path,
                                                                   monkeypatch):
    from ribkernels.engine import evaluation

    evaluate, calls = evaluation.evaluate, []

    def interrupted_once(*a, **k):  # a real SIGINT to this process, as Ctrl-C sends it
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*a, **k)

    monkeypatch.setattr(evaluation, "evaluate", interrupted_once)
    run = _copy(stopped_run, tmp_path / "run")
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))
    assert rc == 130 and len(calls) == 1, err
    assert os.path.isfile(os.path.join(run, "final.pth")) and _metrics(run).get("final") is None
    assert ckpt_io.load(os.path.join(run, "last.pth"))["epoch"] == 3
    assert not os.path.exists(os.path.join(run, "run.lock"))
    assert "during the final evaluation" in open(os.path.join(run, "train.log")).read()
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))  # evaluates only
    assert rc == 0 and len(calls) == 2, err
    assert _metrics(run)["final"] == _metrics(full_run)["final"]
    assert _strip(_metrics(run)["epochs"]) == _strip(_metrics(full_run)["epochs"])


def test_ddp_interrupt_mid_epoch_then_resume_is_bit_identical(data_root, tmp_path):
    """2 processes (torchrun, gloo): each rank's RNG states and partial sums are saved and restored."""
    def torchrun(run, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.join(ROOT, "train.py"), *_args(data_root, run, *RUN, *extra)]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)

    full, split = tmp_path / "full", tmp_path / "split"
    proc = torchrun(full)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = torchrun(split, "--sigint-at", "1,0")
    assert proc.returncode != 0 and "stopped by interrupt" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = ckpt_io.load(str(split / "last.pth"))
    assert (state["epoch"], state["iter"]) == (1, 1) and len(state["ranks"]) == 2
    proc = torchrun(split, "--resume", "auto")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in range(2):
        assert (full / f"params_rank{r}.sha256").read_text() == (split / f"params_rank{r}.sha256").read_text()
    assert _strip(_metrics(full)["epochs"]) == _strip(_metrics(split)["epochs"])


# ------------------------------------------------------------------------------------ changed hyperparameters
def test_resume_refuses_changed_hyperparameters(data_root, stopped_run, tmp_path):
    run = _copy(stopped_run, tmp_path / "run")
    before = _files(run)
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto", "--lr", "0.01", "--beta", "3", "--eta", "5",
                           "--no-use-ibb"))
    assert rc == 2
    for key in ("solver.base_lr", "ibb.beta", "loss.eta", "ibb.use_ibb", "--allow-changes"):
        assert key in err, err
    assert _files(run) == before  # config.yaml (and everything else) untouched


def test_allowed_changes_take_effect_and_are_recorded(data_root, stopped_run, tmp_path):
    run = _copy(stopped_run, tmp_path / "run")
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto", "--lr", "0.01", "--eta", "0.5",
                           "--allow-changes", "base_lr,loss.eta"))
    assert rc == 0, err
    changes = _metrics(run)["config_changes"]
    assert changes[0]["changes"]["solver.base_lr"] == {"checkpoint": 0.001, "now": 0.01}
    assert changes[0]["changes"]["loss.eta"]["now"] == 0.5
    assert "changed config" in open(os.path.join(run, "train.log")).read()
    assert yaml.safe_load(open(os.path.join(run, "config.yaml")))["solver"]["base_lr"] == 0.01
    groups = ckpt_io.load(os.path.join(run, "last.pth"))["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [0.01, 0.01 * DEFAULTS["solver"]["bias_lr_factor"]]


def test_an_allowed_longer_schedule_continues_from_the_same_step(data_root, stopped_run, tmp_path):
    run = _copy(stopped_run, tmp_path / "run")
    steps_done = ckpt_io.load(os.path.join(run, "last.pth"))["scheduler"]["last_iter"]
    rc, err = train(*_args(data_root, run, "--epochs", "4", "--ibb-start-epoch", "1", "--resume", "auto",
                           "--allow-changes", "epochs"))
    assert rc == 0, err
    sched = ckpt_io.load(os.path.join(run, "last.pth"))["scheduler"]
    assert sched["total_iters"] == sched["last_iter"] == 4 * steps_done
    assert [r["epoch"] for r in _metrics(run)["epochs"]] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------ config validation
BAD_VALUES = [
    ("--checkpoint-period", "0", "output.checkpoint_period"), ("--max-rank", "0", "eval.max_rank"),
    ("--occlusion-ratios", "[1.5]", "eval.occlusion_ratios"), ("--beta", "0", "ibb.beta"),
    ("--kmeans-iters", "-1", "ibb.kmeans_iters"), ("--ibb-clusters", "0", "ibb.ibb_clusters"),
    ("--eval-batch-size", "0", "eval.eval_batch_size"), ("--grad-clip", "-1", "solver.grad_clip"),
    ("--warmup-factor", "-5", "solver.warmup_factor"), ("--batch-size", "0", "data.batch_size"),
    ("--lr", "nan", "solver.base_lr"), ("--epochs", "2.5", "solver.epochs"), ("--tau", "-1", "model.tau"),
    ("--padding", "100000", "data.padding"),  # no more than the image size (one used 24 GB and was OOM-killed)
]


@pytest.mark.parametrize("flag,value,key", BAD_VALUES, ids=[b[2] for b in BAD_VALUES])
def test_bad_values_fail_before_any_data_is_read(tmp_path, flag, value, key):
    data, run = tmp_path / "data", tmp_path / "run"
    t0 = time.time()
    rc, err = train("--config", TINY, "--data-root", str(data), "--output-dir", str(run), flag, value)
    assert rc == 2 and f"{key} = " in err and "expected" in err, err
    assert value.strip("[]") in err
    assert not data.exists() and not run.exists()  # nothing generated, read or created
    assert time.time() - t0 < 30


CROSS_FIELD = [  # (flags, what the error must say)
    (("--model-kwargs", "{jpmm: true}"), ["model.model_kwargs: model 'vit_tiny_cpu' takes no argument 'jpmm'",
                                          "did you mean 'jpm'"]),
    (("--dataset", "market1501"), ["data.dataset_kwargs: dataset 'market1501' takes no arguments 'num_train_ids'"]),
    (("--dataset-kwargs", "{num_ids: 3}"), ["data.dataset_kwargs: dataset 'synthetic' takes no argument 'num_ids'"]),
    (("--padding", "65", "--img-size", "[64, 32]"), ["data.padding = 65", "at most 64"]),
]


@pytest.mark.parametrize("flags,says", CROSS_FIELD, ids=["model_kwargs", "other_dataset", "dataset_kwargs",
                                                                 "padding"])
def test_cross_field_rules_fail_before_any_data_is_read(tmp_path, flags, says):
    """Keyword arguments the model / dataset does not take (e.g. one dataset's kwargs handed to another's
    loader) and a padding larger than the image: one error naming them, nothing read or created."""
    data, run = tmp_path / "data", tmp_path / "run"
    rc, err = train("--config", TINY, "--data-root", str(data), "--output-dir", str(run), *flags)
    assert rc == 2 and all(s in err for s in says) and "Traceback" not in err, err
    assert not data.exists() and not run.exists()


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_stop_after_must_be_at_least_one_epoch(tmp_path, value):
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(io.StringIO()) as e:
        main(["--config", TINY, "--output-dir", str(tmp_path / "run"), "--stop-after", value])
    assert exit_.value.code == 2 and "--stop-after" in e.getvalue() and "epochs >= 1" in e.getvalue()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,says", [
    (("--ibb-clusters", "1000"), "ibb.ibb_clusters = 1000 is larger than the training set (32 images)"),
    (("--set", "ibb.input_clusters=40"), "ibb.input_clusters = 40 is larger than the images it is fitted on"),
])
def test_more_ibb_clusters_than_training_images_fail_before_training(data_root, tmp_path, flags, says):
    """Found once the training set is loaded, before the model is built (it used to fail at the first
    IBB refresh, epochs in); the failed start leaves no folder."""
    run = tmp_path / "run"
    rc, err = train(*_args(data_root, run, *flags))
    assert rc == 2 and says in err and "Traceback" not in err, err
    assert not run.exists()


def test_unknown_keys_are_named_with_the_closest_valid_key(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump({"_base_": TINY, "solver": {"warmup_factr": 0.1}}))
    rc, err = train("--config", str(cfg), "--output-dir", str(tmp_path / "run"))
    assert rc == 2 and "solver.warmup_factr" in err and "solver.warmup_factor" in err
    rc, err = train("--config", TINY, "--set", "eval.kmeans_iters=3")
    assert rc == 2 and "ibb.kmeans_iters" in err
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()) as e:
            main(["--config", TINY, "--warmup-factr", "0.1"])
    assert "--warmup-factor" in e.getvalue()


def test_every_config_key_has_a_rule_and_every_rule_a_key():
    keys = {f"{s}.{k}" for s, ks in DEFAULTS.items() for k in ks}
    assert sorted(keys - set(validate.RULES)) == [], "keys without a validation rule"
    assert sorted(set(validate.RULES) - keys) == [], "rules for keys that do not exist"
    flat = {f"{s}.{k}": v for s, ks in DEFAULTS.items() for k, v in ks.items()}
    assert [k for k, rule in validate.RULES.items() if not rule(flat[k])] == [], "a default breaks its own rule"


def test_beta_rule_takes_auto():
    assert validate.RULES["ibb.beta"]("auto") and validate.RULES["ibb.beta"](0.5)
    assert not validate.RULES["ibb.beta"](0) and not validate.RULES["ibb.beta"]("0.5")


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
    """``--pretrained timm:<timm model name>:<file>`` (README, issue 13): its file is the one checked
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


def test_leftover_temp_files_are_removed_at_the_next_start(data_root, stopped_run, tmp_path):
    run = _copy(stopped_run, tmp_path / "run")
    leftover = os.path.join(run, ".tmp-killed.pth")
    open(leftover, "wb").write(b"half a checkpoint")
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))
    assert rc == 0, err
    assert not os.path.exists(leftover)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = ckpt_io.save_atomic({"w": torch.zeros(1)}, str(tmp_path / "c.pth"))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode


# ------------------------------------------------------------------------------------ issue 14: weights only
class _CreatesAFile:
    """Unpickling this creates ``path`` (what a malicious checkpoint could do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _NumpyExec:
    """Unpickling this runs Python code through NumPy's exec wrapper: a payload whose only refused
    global starts with ``numpy``, dressed as an old checkpoint's NumPy RNG state."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from numpy.testing._private.utils import runstring

        return (runstring, (f"open({self.path!r}, 'w').close()", {}))


def _malicious(tmp_path, kind):
    marker = str(tmp_path / f"pwned-{kind}")
    path = tmp_path / f"evil-{kind}.pth"
    payload = {"model": {"w": torch.zeros(1)}, "x": _CreatesAFile(marker)}
    if kind.startswith("numpy-exec"):
        payload = {"model": {"w": torch.zeros(1)}, "optimizer": {}, "epoch": 1,
                   "rng": {"python": (3, (1, 2), None), "numpy": _NumpyExec(marker), "torch": torch.zeros(2)}}
    if kind in ("zip", "numpy-exec-zip"):
        torch.save(payload, path)
    else:  # a plain pickle, as torch's legacy format would hold
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return str(path), marker


def _train_entry(*extra):
    return lambda ck, tmp, data_root: train(*_args(data_root, tmp / "out", *[a.format(ck=ck) for a in extra]))


def _cli_entry(*argv):
    """``python -m ribkernels ARGV`` in this process, with ``{ck}`` the checkpoint, ``{img}`` a folder of
    one image and ``{out}`` a path under the test's ``out`` folder."""
    def call(ck, tmp, data_root):
        from PIL import Image

        from ribkernels.cli import main as cli_main

        img = tmp / "images"
        img.mkdir(exist_ok=True)
        Image.new("RGB", (64, 128), (120, 30, 200)).save(img / "0001_c1s1_000001_00.jpg")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli_main([a.format(ck=ck, img=img, out=tmp / "out", tmp=tmp, data=data_root) for a in argv])
        return rc, err.getvalue()
    return call


# (name, call(checkpoint path, tmp folder, data root) -> (exit status, stderr)): one line per entry point.
CHECKPOINT_ENTRY_POINTS = [
    ("resume", _train_entry("--resume", "{ck}")),
    ("eval-only", _train_entry("--eval-only", "--checkpoint", "{ck}")),
    ("pretrained", _train_entry("--pretrained", "{ck}")),
    ("cli-extract", _cli_entry("extract", "{ck}", "{img}", "--out", "{tmp}/feats.npz", "--device", "cpu")),
    ("cli-search", _cli_entry("search", "{ck}", "--query", "{img}", "--gallery", "{img}", "--out", "{out}",
                              "--device", "cpu")),
    ("cli-export", _cli_entry("export", "{ck}", "--format", "onnx", "--out", "{tmp}/model.onnx")),
    ("cli-evaluate", _cli_entry("evaluate", "{ck}", "--dataset", "synthetic", "--data-root", "{data}",
                                "--device", "cpu")),
]


KINDS = ["zip", "pickle", "numpy-exec-zip", "numpy-exec-pickle"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_malicious_payload_does_run_when_unpickled(tmp_path, kind):
    """The control: both payloads of the entry-point tests really create their file when loaded
    unsafely — the torch.save file by ``torch.load(weights_only=False)`` (what the entry points used
    to do), the bare pickle by ``pickle.load``."""
    path, marker = _malicious(tmp_path, kind)
    if kind.endswith("zip"):
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert os.path.exists(marker)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,call", CHECKPOINT_ENTRY_POINTS, ids=[e[0] for e in CHECKPOINT_ENTRY_POINTS])
def test_a_malicious_checkpoint_runs_no_code(data_root, tmp_path, name, call, kind):
    """No code runs, and no message recommends --trust for a file that holds code (the NumPy exec
    payload used to be called an old checkpoint, with the conversion command printed) nor repeats
    torch's advice to load it with weights_only=False."""
    path, marker = _malicious(tmp_path, kind)
    rc, err = call(path, tmp_path, data_root)
    assert rc != 0
    assert not os.path.exists(marker), f"{name}: the checkpoint's code ran"
    assert path in err and ("refused" in err or "older" in err), err
    assert "--trust" not in err and "convert-checkpoint" not in err and "weights_only" not in err, err
    if kind.startswith("numpy-exec"):
        assert "this file contains code; do not convert it unless you wrote it" in err and "runstring" in err, err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.parametrize("name,call", CHECKPOINT_ENTRY_POINTS, ids=[e[0] for e in CHECKPOINT_ENTRY_POINTS])
def test_a_file_that_is_no_checkpoint_is_named_by_every_entry_point(data_root, tmp_path, name, call):
    """A file starting with 'h' made torch's legacy loader raise a bare ``KeyError: 101`` (no path)."""
    path = tmp_path / "final.pth"
    path.write_bytes(b"hello, I am not a checkpoint")
    rc, err = call(str(path), tmp_path, data_root)
    assert rc == 2 and str(path) in err and "not a readable PyTorch checkpoint" in err and "Traceback" not in err, err


@pytest.mark.parametrize("kind", ["numpy-exec-zip", "numpy-exec-pickle", "zip"])
def test_convert_checkpoint_refuses_a_file_that_holds_code_even_with_trust(tmp_path, kind):
    from ribkernels.cli import convert_checkpoint

    path, marker = _malicious(tmp_path, kind)
    new = str(tmp_path / "new.pth")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = convert_checkpoint.run(Namespace(old=path, new=new, trust=True))
    assert rc == 2 and not os.path.exists(marker) and not os.path.exists(new)
    assert "this file contains code" in err.getvalue() and path in err.getvalue(), err.getvalue()


@pytest.mark.parametrize("content", [b"hello, not a checkpoint", b"h", b"\x80\x02}q\x00.garbage"])
def test_a_file_that_is_not_a_checkpoint_is_named_without_a_traceback(tmp_path, content):
    """A file starting with 'h' made torch's legacy loader raise a bare ``KeyError: 101``."""
    path = tmp_path / "final.pth"
    path.write_bytes(content)
    with pytest.raises(ckpt_io.CheckpointError, match="not a readable PyTorch checkpoint") as e:
        ckpt_io.load(str(path))
    assert str(path) in str(e.value) and "weights_only" not in str(e.value)


def _to_legacy(state):
    """A checkpoint of the previous format: RNG states as Python/NumPy objects (not weights-only)."""
    r = state["rng"]
    py, n = r["python"], r["numpy"]
    old = dict(state)
    old.pop("format")
    old.pop("version")
    old["rng"] = {"python": (py["version"], tuple(py["state"].tolist()), py["gauss_next"]),
                  "numpy": (n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                            n["cached_gaussian"]),
                  "torch": r["torch"]}
    return old


def test_checkpoints_load_weights_only_and_old_ones_convert_exactly(data_root, full_run, stopped_run, tmp_path):
    from ribkernels.cli import convert_checkpoint

    run = _copy(stopped_run, tmp_path / "run")
    last = os.path.join(run, "last.pth")
    state = torch.load(last, weights_only=True)  # plain torch, weights only
    assert state["format"] == ckpt_io.FORMAT and state["version"] == ckpt_io.VERSION
    torch.save(_to_legacy(state), last)
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))
    assert rc == 2 and last in err and "older ribkernels version" in err and "convert-checkpoint" in err
    new = os.path.join(run, "converted.pth")
    args = Namespace(old=last, new=new, trust=False)
    assert convert_checkpoint.run(args) == 2 and not os.path.exists(new)  # never without --trust
    args.trust = True
    assert convert_checkpoint.run(args) == 0
    os.replace(new, last)
    rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))
    assert rc == 0, err
    assert _digest(full_run) == _digest(run)


def _calls(tree):
    """(function name, call node, enclosing function name) for every call of ``a.b(...)``."""
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) \
                    and isinstance(child.func.value, ast.Name):
                out.append((f"{child.func.value.id}.{child.func.attr}", child, name))
            visit(child, name)

    visit(tree, None)
    return out


def _keyword(call, name):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_no_loader_in_the_package_can_run_code_from_a_file():
    """Every ``torch.load`` says ``weights_only=True`` (the one exception: the explicit, --trust-only
    conversion of old checkpoints); no ``np.load(allow_pickle=True)``, ``yaml.load``, ``pickle.load``."""
    bad = []
    for folder, _, names in os.walk(os.path.join(ROOT, "ribkernels")):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            for call_name, call, func in _calls(ast.parse(open(path).read(), path)):
                where = f"{os.path.relpath(path, ROOT)}:{call.lineno} {call_name}"
                if call_name == "torch.load" and _keyword(call, "weights_only") is not True \
                        and not (name == "checkpoint.py" and func == "convert_legacy"):
                    bad.append(where)
                elif call_name == "np.load" and _keyword(call, "allow_pickle"):
                    bad.append(where)
                elif call_name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads"):
                    bad.append(where)
    assert bad == []
