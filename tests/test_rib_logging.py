"""RIB logging and knobs of the trainer: τ schedules, the gradient ratio, the RIB config
keys, and a tiny train.py run that writes the refresh diagnostics and per-block keep fractions."""
import json
import math
import os

import pytest
import torch

from ribkernels.engine import build_parser, main, resolve
from ribkernels.engine.rib_logging import grad_ratio, tau_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "synthetic_tiny_test.yaml")


def test_tau_schedules_hit_both_ends():
    for sched in ("linear", "cosine", "exp"):
        vals = [tau_at(e, 5, 2.0, 0.5, sched) for e in range(5)]
        assert vals[0] == pytest.approx(2.0) and vals[-1] == pytest.approx(0.5)
        assert all(a >= b for a, b in zip(vals, vals[1:])), (sched, vals)
    assert tau_at(1, 5, 2.0, 0.5, "linear") == pytest.approx(1.625)
    assert tau_at(2, 5, 2.0, 0.5, "exp") == pytest.approx(1.0)
    assert tau_at(2, 5, 2.0, 0.5, "cosine") == pytest.approx(1.25)
    assert tau_at(3, 5, 2.0, None, "linear") == 2.0 and tau_at(3, 5, 2.0, 0.5, "constant") == 2.0
    with pytest.raises(ValueError, match="tau_schedule"):
        tau_at(0, 5, 1.0, 0.5, "step")


def test_grad_ratio_against_hand_gradients():
    f = torch.randn(4, 3, requires_grad=True)
    task = (f ** 2).sum()            # gradient 2f
    ibb = 3.0 * f.sum()              # gradient 3
    r = grad_ratio(task, ibb, f)
    assert r.item() == pytest.approx(math.sqrt(12 * 9) / (2 * f.detach().norm()).item(), rel=1e-5)
    (task + ibb).backward()          # the graph is kept for the real backward
    assert f.grad is not None


def _resolve(*argv):
    return resolve(build_parser().parse_args(["--config", TINY, *argv]))


def test_rib_config_keys_and_their_errors():
    cfg = _resolve("--beta", "auto", "--set", "model.tau_schedule=exp", "--set", "model.tau_end=0.25")
    assert cfg["ibb"]["beta"] == "auto" and cfg["model"]["tau_end"] == 0.25
    assert _resolve("--beta", "2.5")["ibb"]["beta"] == 2.5
    for argv, msg in ((("--beta", "0"), r"ibb.beta\b.*auto"),
                      (("--beta", "hot"), r"ibb.beta\b.*auto"),
                      (("--set", "ibb.target_entropy=-1"), "ibb.target_entropy"),
                      (("--set", "model.tau_schedule=step"), "model.tau_schedule"),
                      (("--set", "model.tau_schedule=linear"), "needs model.tau_end"),
                      (("--set", "model.tau_end=0"), "model.tau_end"),
                      (("--set", "ibb.feature=middle"), "ibb.feature"),
                      (("--set", "ibb.refresh_features=cache"), "ibb.refresh_features"),
                      (("--set", "ibb.q_smoothing=1"), "ibb.q_smoothing")):
        with pytest.raises(ValueError, match=msg):
            _resolve(*argv)


def test_tiny_run_logs_refresh_diagnostics_and_per_block_keep_fractions(tmp_path):
    out = tmp_path / "run"
    main(["--config", TINY, "--data-root", str(tmp_path / "data"), "--output-dir", str(out), "--progress", "log",
          "--set", "model.tau_schedule=linear", "--set", "model.tau_end=0.5"])
    with open(out / "metrics.json") as f:
        m = json.load(f)
    first, last = m["epochs"]
    assert first["tau"] == pytest.approx(1.0) and last["tau"] == pytest.approx(0.5)
    assert "ibb_refresh_beta" not in first and last["ibb_refresh_beta"] > 0  # IBB on from epoch 2
    for key in ("ibb_refresh_mean_max_phi", "ibb_refresh_mean_q_entropy", "ibb_refresh_label_term",
                "ibb_refresh_input_beta", "ibb_term1", "ibb_term2", "ibb_grad_ratio"):
        assert math.isfinite(last[key]), key
    assert last["ibb_grad_ratio"] > 0
    # the calibrated β hits its entropy target (log 4, capped at half of log A = log 8)
    assert last["ibb_refresh_mean_phi_entropy"] == pytest.approx(0.5 * math.log(8), rel=1e-3)
    blocks = [k for k in last if k.startswith("keep_fraction_b")]
    assert len(blocks) == 3  # 2 blocks + the JPM block
    assert all(0 <= last[k] <= 1 and 0 <= last["eval_" + k] <= 1 for k in blocks)
    assert "eval_keep_fraction_b0" in m["final"]
    assert os.path.isfile(out / "rib.png")
