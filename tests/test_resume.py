"""Checkpoints and resume (engine, CPU, tiny synthetic config): Ctrl-C at an iteration, then --resume auto,
is bit-identical to an uninterrupted run, exit status 130; a Ctrl-C after the last training step (last
iteration, final evaluation) is not ignored either; a resume with changed hyperparameters is refused
unless --allow-changes, which is recorded.
"""
import os
import signal
import subprocess
import sys

import yaml

from ribkernels.engine import DEFAULTS
from ribkernels.engine import checkpoint as ckpt_io
from faults_common import (_args, _copy, data_root, _digest, _files, full_run, _metrics, ROOT, RUN, stopped_run,
                           _strip, train)


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
    for key in ("solver.base_lr", "ibb.beta", "loss.eta", "ibb.enabled", "--allow-changes"):
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
