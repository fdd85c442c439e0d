"""The experiment scripts' shared plumbing: budgets derived from the demo config, and the demo report's
check that the committed baseline was trained like the run it is printed beside."""
import json

import yaml

from experiments import common, demo_report


def test_budget_overrides_keep_the_demo_test_split():
    demo = common.demo_settings()
    over = common.budget_overrides(epochs=9, train_ids=40)
    assert "solver.epochs=9" in over and "ibb.ibb_start_epoch=3" in over
    kwargs = yaml.safe_load(next(o for o in over if o.startswith("data.dataset_kwargs=")).split("=", 1)[1])
    assert kwargs["num_train_ids"] == 40
    for key, value in demo["dataset_kwargs"].items():
        if key != "num_train_ids":
            assert kwargs[key] == value, key
    assert common.budget_overrides() == []
    assert common.budget_record() == {"epochs": demo["epochs"], "train_ids": demo["dataset_kwargs"]["num_train_ids"],
                                      "demo_budget": True}
    assert common.budget_record(epochs=9)["demo_budget"] is False


def _fake_run(path, epochs, num_test_ids, mAP=0.61):
    path.mkdir()
    cfg = {"model": {"name": "vit_small_conv_cpu", "model_kwargs": {"jpm": False}, "img_size": [128, 64]},
           "solver": {"epochs": epochs}, "data": {"batch_size": 32, "dataset": "synthetic",
                                                  "dataset_kwargs": {"num_test_ids": num_test_ids}}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = {"final": {"mAP": mAP, "rank1": 0.72, "mAP_se": 0.012, "rank1_se": 0.02},
               "epochs": [{"epoch": epochs, "ibb_term2": 3.0, "ibb_refresh_log_num_classes": 5.7}]}
    (path / "metrics.json").write_text(json.dumps(metrics))
    return str(path)


def test_demo_report_flags_a_baseline_trained_differently(tmp_path, monkeypatch, capsys):
    run = _fake_run(tmp_path / "run", epochs=32, num_test_ids=150)
    same = {"source": "test", "date_utc": "2026-11-29 10:00", "mAP": 55.0, "rank1": 70.0,
            "budget": common.budget_of_run(run)}
    monkeypatch.setattr(demo_report, "load_json", lambda name: same)
    monkeypatch.setattr("sys.argv", ["demo_report", run])
    assert demo_report.main() == 0
    out = capsys.readouterr().out
    assert "different settings" not in out and "no record" not in out
    assert "[met] mAP >= 60%" in out and "[met] IBB prediction term 3.000 < log K = 5.700" in out

    stale = dict(same, budget=dict(same["budget"], epochs=18))
    monkeypatch.setattr(demo_report, "load_json", lambda name: stale)
    assert demo_report.main() == 0
    out = capsys.readouterr().out
    assert "different settings (epochs)" in out


def _finished_run_with(path, args):
    """A run folder as train.py leaves it: the resolved config of ``args`` and a final metrics.json."""
    path.mkdir()
    cfg = dict(common._resolved_config(args), output={"output_dir": str(path)}, _meta={"config_name": "x"})
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "metrics.json").write_text(json.dumps({"final": {"mAP": 0.6, "rank1": 0.7}, "epochs": []}))
    return str(path)


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path):
    def args(*sets):
        return ["--config", common.DEMO_CONFIG] + [a for s in sets for a in ("--set", s)]

    (tmp_path / "ablation").mkdir()
    run = _finished_run_with(tmp_path / "ablation" / "rib_dcs_seed1",
                             args("solver.seed=1", "loss.eta=0.1"))
    assert common.finished_run(run, args("solver.seed=1", "loss.eta=0.1")) is not None
    # report-only keys and the output section may differ; anything that changes training may not
    assert common.finished_run(run, args("solver.seed=1", "eval.occlusion=true",
                                         "output.output_dir=elsewhere")) is not None
    assert common.finished_run(run, args("solver.seed=2")) is None
    assert common.finished_run(run, args("solver.seed=1", "loss.eta=0.25")) is None

    metrics = json.loads((tmp_path / "ablation" / "rib_dcs_seed1" / "metrics.json").read_text())
    metrics["final"] = None  # what an interrupted run's metrics.json holds: never reused
    (tmp_path / "ablation" / "rib_dcs_seed1" / "metrics.json").write_text(json.dumps(metrics))
    assert common.finished_run(run, args("solver.seed=1", "loss.eta=0.1")) is None
    del metrics["final"]
    (tmp_path / "ablation" / "rib_dcs_seed1" / "metrics.json").write_text(json.dumps(metrics))
    assert common.finished_run(run, args("solver.seed=1", "loss.eta=0.1")) is None


def test_adopt_copies_the_matching_run_and_train_reuses_it(tmp_path, monkeypatch):
    (tmp_path / "ablation").mkdir()
    over = ["solver.seed=2", "model.attn_impl=dcs", "ibb.use_ibb=false"]

    def args(seed):
        return ["--config", common.DEMO_CONFIG] + [a for s in [f"solver.seed={seed}"] + over[1:] for a in ("--set", s)]

    _finished_run_with(tmp_path / "ablation" / "dcs_only_seed1", args(1))
    _finished_run_with(tmp_path / "ablation" / "dcs_only_seed2", args(2))
    cell = tmp_path / "sweep" / "eta0"
    common.adopt_finished_run(str(cell), over, str(tmp_path / "other"))  # nothing to adopt from
    assert not cell.exists()
    common.adopt_finished_run(str(cell), over, str(tmp_path / "ablation"))
    assert (cell / "metrics.json").is_file()
    assert yaml.safe_load((cell / "config.yaml").read_text())["solver"]["seed"] == 2
    monkeypatch.setattr(common.subprocess, "call", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    m = common.train(str(cell), over, reuse=True)
    assert m["reused"] and m["final"]["mAP"] == 0.6


def test_train_continues_an_interrupted_run(tmp_path, monkeypatch):
    run = tmp_path / "cell"
    run.mkdir()
    (run / "last.pth").write_bytes(b"")
    (run / "stdout.log").write_text("first part\n")
    calls = []

    def fake_call(cmd, **kw):
        calls.append(cmd)
        (run / "metrics.json").write_text(json.dumps({"final": {"mAP": 0.5, "rank1": 0.6}, "epochs": []}))
        return 0

    monkeypatch.setattr(common.subprocess, "call", fake_call)
    m = common.train(str(run), ["solver.seed=1"], reuse=True)
    assert calls[0][-2:] == ["--resume", "auto"] and m["final"]["mAP"] == 0.5
    assert (run / "stdout.log").read_text().startswith("first part")  # the log is appended to
    calls.clear()
    (run / "last.pth").unlink()
    (run / "metrics.json").unlink()
    common.train(str(run), ["solver.seed=1"], reuse=True)
    assert "--resume" not in calls[0]


def test_a_run_made_before_a_config_key_existed_is_still_reused(tmp_path):
    args = ["--config", common.DEMO_CONFIG, "--set", "solver.seed=1"]
    run = _finished_run_with(tmp_path / "old", args)
    cfg = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    del cfg["solver"]["mask_logits_weight_decay"]  # as written before the key was added
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert common.finished_run(run, args) is not None  # the missing key counts as its default
    assert common.finished_run(run, args + ["--set", "solver.mask_logits_weight_decay=0"]) is None
