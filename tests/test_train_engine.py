"""Unit tests of the training engine's pieces (no model, no data): config resolution, the LR
schedule, atomic checkpoints, per-epoch PK index lists, the parameter digest and the run table."""
import glob
import json
import math
import os

import pytest
import torch
import yaml

from ribkernels.engine import checkpoint as ckpt_io
from ribkernels.engine.config import DEFAULTS, build_parser, load_yaml, resolve
from ribkernels.engine.data import pk_epoch_indices
from ribkernels.engine.reporting import Metrics, plot_curves, results_table
from ribkernels.engine.scheduler import WarmupCosineLR
from ribkernels.engine.trainer import param_digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def _resolve(argv):
    return resolve(build_parser().parse_args(argv))


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_every_shipped_config_resolves(path):
    cfg = _resolve(["--config", path])
    assert cfg["_meta"]["config_name"] == os.path.splitext(os.path.basename(path))[0]
    assert set(cfg) - {"_meta"} == set(DEFAULTS)


def test_config_precedence_defaults_yaml_flags(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"solver": {"epochs": 7, "base_lr": 0.1}, "loss": {"eta": 0.5}}))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"_base_": "base.yaml", "solver": {"base_lr": 0.2}}))
    assert load_yaml(str(child))["solver"] == {"epochs": 7, "base_lr": 0.2}
    cfg = _resolve(["--config", str(child), "--eta", "0.25", "--beta", "2", "--tau", "0.5", "--ibb-refresh", "3",
                    "--ibb-start-epoch", "4", "--no-sie-camera", "--set", "eval.occlusion_ratios=[0.5]"])
    assert cfg["solver"]["epochs"] == 7 and cfg["solver"]["base_lr"] == 0.2
    assert cfg["loss"]["eta"] == 0.25 and cfg["ibb"]["beta"] == 2 and cfg["model"]["tau"] == 0.5
    assert cfg["ibb"]["refresh"] == 3 and cfg["ibb"]["start_epoch"] == 4
    assert cfg["model"]["sie_camera"] is False and cfg["eval"]["occlusion_ratios"] == [0.5]
    assert cfg["solver"]["momentum"] == DEFAULTS["solver"]["momentum"]  # untouched default


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"solver": {"learning_rate": 0.1}}))
    with pytest.raises(KeyError, match="solver.learning_rate"):
        _resolve(["--config", str(bad)])
    with pytest.raises(ValueError, match="batch_size"):
        _resolve(["--config", CONFIGS[0], "--batch-size", "30", "--num-instances", "4"])
    with pytest.raises(ValueError, match="attn_impl"):
        _resolve(["--config", CONFIGS[0], "--attn-impl", "flash"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        _resolve(["--config", str(tmp_path / "nope.yaml")])


# ------------------------------------------------------------------------------------------ schedule
def _opt(lr=0.1):
    p = torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [p], "lr": lr}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2 * lr}],
                           lr=lr, momentum=0.9)


def test_warmup_cosine_values_per_group():
    opt = _opt(0.1)
    s = WarmupCosineLR(opt, total_iters=110, warmup_iters=10, warmup_factor=0.01, min_factor=0.0)
    lrs = []
    for _ in range(110):
        lrs.append([g["lr"] for g in opt.param_groups])
        s.step()
    assert lrs[0][0] == pytest.approx(0.001) and lrs[0][1] == pytest.approx(0.002)
    assert lrs[5][0] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5))
    assert lrs[10][0] == pytest.approx(0.1)
    assert lrs[60][0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a[0] >= b[0] for a, b in zip(lrs[10:], lrs[11:]))  # monotone after warm-up
    assert s.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_scheduler_state_dict_resumes_exactly():
    opt_a, opt_b = _opt(), _opt()
    a = WarmupCosineLR(opt_a, 50, 5, 0.1, 0.01)
    for _ in range(17):
        a.step()
    b = WarmupCosineLR(opt_b, 50, 5, 0.1, 0.01)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        assert a.get_last_lr() == b.get_last_lr()
        a.step(), b.step()
    with pytest.raises(ValueError, match="total_iters"):
        WarmupCosineLR(_opt(), 60, 5).load_state_dict(a.state_dict())


# ------------------------------------------------------------------------------------------ checkpoints
def test_atomic_save_and_rng_round_trip(tmp_path):
    path = str(tmp_path / "ck" / "last.pth")
    ckpt_io.seed_everything(3)
    state = {"model": {"module._orig_mod.w": torch.randn(4)}, "rng": ckpt_io.rng_state()}
    expected = torch.rand(5)
    ckpt_io.save_atomic(state, path)
    assert os.listdir(os.path.dirname(path)) == ["last.pth"]  # no temp file left behind
    loaded = ckpt_io.load(path)
    ckpt_io.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(5), expected)
    assert list(ckpt_io.model_state_from(loaded)) == ["w"]
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ckpt_io.load(str(tmp_path / "missing.pth"))


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "last.pth")
    ckpt_io.save_atomic({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt_io.save_atomic({"v": Unpicklable()}, path)
    assert ckpt_io.load(path)["v"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


# ------------------------------------------------------------------------------------------ PK indices
class _PlanOnly:
    """A stand-in for reid.RandomIdentitySampler exposing P and plan(epoch)."""

    def __init__(self, P=4, K=2, n_batches=3):
        self.P, self.K, self.n = P, K, n_batches

    def plan(self, epoch):
        g = torch.Generator().manual_seed(epoch)
        return [[[int(x) for x in torch.randint(0, 1000, (self.K,), generator=g)] for _ in range(self.P)]
                for _ in range(self.n)]


def test_pk_epoch_indices_shards_each_batch_by_identity_groups():
    s = _PlanOnly(P=4, K=2, n_batches=3)
    whole = pk_epoch_indices(s, 5, 0, 1)
    parts = [pk_epoch_indices(s, 5, r, 2) for r in range(2)]
    assert len(whole) == 3 * 8 and all(len(p) == 3 * 4 for p in parts)
    # batch b of rank r = groups [2r, 2r+2) of the global batch b
    for b in range(3):
        glob_b = whole[8 * b:8 * b + 8]
        assert parts[0][4 * b:4 * b + 4] + parts[1][4 * b:4 * b + 4] == glob_b
    assert pk_epoch_indices(s, 5, 0, 1) == whole and pk_epoch_indices(s, 6, 0, 1) != whole
    longer = pk_epoch_indices(s, 5, 0, 1, min_len=30)
    assert longer[:24] == whole and len(longer) >= 30
    with pytest.raises(ValueError, match="divisible"):
        pk_epoch_indices(s, 0, 0, 3)


# ------------------------------------------------------------------------------------------ reporting
def test_param_digest_sees_parameters_and_buffers():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    b = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    b.load_state_dict(a.state_dict())
    assert param_digest(a) == param_digest(b)
    b[1].running_mean += 1e-7
    assert param_digest(a) != param_digest(b)


def test_metrics_json_plots_and_table(tmp_path):
    m = Metrics(str(tmp_path / "metrics.json"))
    for e in range(1, 4):
        m.add_epoch({"epoch": e, "loss": 3.0 / e, "loss_id": 2.0 / e, "loss_tri": 1.0 / e, "ibb": 0.5 if e > 1 else None,
                     "keep_fraction": 0.9, "nan": float("nan")})
    m.add_eval({"epoch": 3, "mAP": 0.5, "rank1": 0.7, "rank5": 0.8, "rank10": 0.9, "mINP": 0.2})
    m.set("final", {"mAP": 0.5, "rank1": 0.7, "rank5": 0.8, "rank10": 0.9, "mINP": 0.2})
    import json

    data = json.load(open(tmp_path / "metrics.json"))
    assert data["final"]["rank1"] == 0.7 and data["epochs"][0]["nan"] is None and len(data["epochs"]) == 3
    written = plot_curves(data, str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == ["eval.png", "ibb.png", "losses.png"]
    table = results_table([{"name": "x", **data["final"]}])
    assert "| x | 50.0 | 70.0 | 80.0 | 90.0 | 20.0 |" in table


def test_metrics_json_keeps_lists_of_numbers_on_one_line_and_strings_untouched(tmp_path):
    from ribkernels.engine.reporting import json_text

    data = {"per_query": {"query_pids": [3, 3, 7], "AP": [0.5, 1e-05, -2.25, None], "rank1": [1, 0, 1]},
            "nested": [[1, 2], [3]], "names": ["[1,2]", "a\nb"], "text": "[1,\n2]", "empty": [], "rows": [{"x": 1}]}
    text = json_text(data)
    assert json.loads(text) == data
    assert '"AP": [0.5, 1e-05, -2.25, null]' in text and '"rank1": [1, 0, 1]' in text and "[1, 2]" in text
    assert '"[1,2]"' in text and '"[1,\\n2]"' in text  # lists inside strings keep their spelling
    m = Metrics(str(tmp_path / "metrics.json"))
    m.set("final", data)
    assert json.load(open(tmp_path / "metrics.json"))["final"] == data


def test_exponent_numbers_from_flags_are_numbers():
    # YAML 1.1 reads "3e-4" (no dot) as a string; a flag value like that must still be a number.
    cfg = _resolve(["--lr", "3e-4", "--set", "solver.weight_decay=5e-5"])
    assert cfg["solver"]["base_lr"] == pytest.approx(3e-4)
    assert cfg["solver"]["weight_decay"] == pytest.approx(5e-5)
