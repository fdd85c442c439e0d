"""The IB-control and shortcut experiment scripts without training: paired contrasts against hand
arithmetic, the overrides each arm passes to train.py (resolved as train.py would), and the result
files written from stand-in runs."""
import json
import math

import pytest
import torch

from experiments import common, ib_control, shortcut
from experiments.paired import format_contrast, paired_contrast


def test_paired_contrast_hand_values():
    a = [{"seed": 1, "mAP": 61.0}, {"seed": 2, "mAP": 60.0}, {"seed": 3, "mAP": 63.0}, {"seed": 9, "mAP": 0.0}]
    b = [{"seed": 1, "mAP": 60.0}, {"seed": 2, "mAP": 58.0}, {"seed": 3, "mAP": 60.0}]
    c = paired_contrast(a, b)
    assert c["n"] == 3 and c["diffs"] == {"1": 1.0, "2": 2.0, "3": 3.0} and c["positive"] == 3
    assert c["mean"] == pytest.approx(2.0) and c["sd"] == pytest.approx(1.0) and c["se"] == pytest.approx(1 / math.sqrt(3))
    # unpaired: var(a) = 7/3 (61, 60, 63), var(b) = 4/3 (60, 58, 60)
    assert c["unpaired_se"] == pytest.approx(math.sqrt((7 / 3) / 3 + (4 / 3) / 3))
    assert "+2.00 ± 0.58 (paired se, n = 3, 3/3 > 0" in format_contrast(c)
    assert paired_contrast(a, [{"seed": 5, "mAP": 1.0}])["n"] == 0


def _fake_train(record):
    def train(run_dir, overrides, config=common.DEMO_CONFIG, reuse=False, adopt_from="", **kw):
        record.append((run_dir, list(overrides), reuse, adopt_from))
        seed = int([o for o in overrides if o.startswith("solver.seed=")][0].split("=")[1])
        bonus = {"ibb.control=prototype": 1.0, "ibb.control=shuffled_q": -0.5}
        m = 50.0 + seed + sum(v for k, v in bonus.items() if k in overrides)
        if "ibb.enabled=true" in overrides:
            m += 1.5
        if "home_scene_frac: 0.8" in " ".join(overrides):
            m -= 10.0 if "model.attn_impl=sdpa" in overrides and "ibb.enabled=false" in overrides else 7.0
        on = "ibb.enabled=true" in overrides
        return {"final": {"mAP": m / 100, "rank1": (m + 10) / 100},
                "epochs": [{"ibb_on": on, "ibb_grad_ratio": 0.2 if on else None, "control_scale": 0.5 if on else None}]}
    return train


def test_ib_control_arms_and_contrasts(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ib_control, "train", _fake_train(calls))
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    out = ib_control.main(["--seeds", "1", "2", "3", "4", "--run-root", str(tmp_path / "runs")])
    assert len(calls) == 16 and all(reuse and adopt == "runs/ablation" for _, _, reuse, adopt in calls)
    assert all("model.attn_impl=sdpa" in o for _, o, _, _ in calls)  # plain attention in every arm
    c = out["contrasts"]
    assert c["ibb - baseline"]["mAP"]["mean"] == pytest.approx(1.5) and c["ibb - baseline"]["mAP"]["positive"] == 4
    assert c["ibb - prototype"]["mAP"]["mean"] == pytest.approx(-1.0)
    assert c["ibb - shuffled_q"]["mAP"]["mean"] == pytest.approx(0.5)
    assert c["shuffled_q - baseline"]["rank1"]["mean"] == pytest.approx(1.0)
    assert out["runs"]["prototype"][0]["control_scale_mean"] == 0.5
    saved = json.loads((tmp_path / "ib_control.json").read_text())
    assert saved["contrasts"]["ibb - baseline"]["mAP"]["n"] == 4
    assert saved["per_query_contrasts"] == {}  # the stand-in runs record no per-query AP
    # the arms' overrides are valid train.py settings, and the ibb arm is the ablation's ibb_only
    cfg = common._resolved_config(common.train_args(ib_control.ARMS["prototype"]))
    assert cfg["ibb"]["control"] == "prototype" and cfg["ibb"]["enabled"] is True
    assert set(ib_control.ARMS["ibb"]) == set(common.VARIANTS["ibb_only"])


def test_shortcut_overrides_resolve_to_split_streams_and_home_scenes():
    cfg = common._resolved_config(common.train_args([shortcut.dataset_override(0.8, 0.5, train_ids=150)]))
    kw = cfg["data"]["dataset_kwargs"]
    demo = common.demo_settings()["dataset_kwargs"]
    assert kw["split_streams"] is True and kw["home_scene_frac"] == 0.8 and kw["confuser_prob"] == 0.5
    assert kw["num_train_ids"] == 150 and kw["num_test_ids"] == demo["num_test_ids"]
    assert "confuser_prob" not in common._resolved_config(
        common.train_args([shortcut.dataset_override(0.0)]))["data"]["dataset_kwargs"]
    with pytest.raises(ValueError, match="p: expected a share"):
        shortcut.dataset_override(1.2)


def test_shortcut_cost_and_interaction(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(shortcut, "train", _fake_train(calls))
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    out = shortcut.main(["--seeds", "1", "2", "3", "--run-root", str(tmp_path / "runs"), "--out", "sc"])
    assert len(calls) == 18 and {r.split("/")[-1] for r, _, _, _ in calls} >= {"baseline_p0_seed1", "rib_dcs_p0.8_seed3"}
    assert out["cost"]["baseline"]["0.8"]["mAP"]["mean"] == pytest.approx(-10.0)
    assert out["cost"]["rib_dcs"]["0.8"]["mAP"]["mean"] == pytest.approx(-7.0)
    assert out["interaction"]["ibb_only"]["0.8"]["mean"] == pytest.approx(3.0)  # loses 3 points less
    assert out["interaction"]["ibb_only"]["0.8"]["n"] == 3
    assert (tmp_path / "sc.json").is_file()
    with pytest.raises(SystemExit):
        shortcut.main(["--p", "0", "1.5"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch conv-stem DCS run on confuser data (its cache and run folder), made once."""
    import os

    from ribkernels.engine import main as train_main

    base = tmp_path_factory.mktemp("tiny_run")
    old = os.environ.get("RIBKERNELS_CACHE")
    os.environ["RIBKERNELS_CACHE"] = str(base / "cache")
    try:
        tiny = os.path.join(common.ROOT, "configs", "synthetic_tiny_test.yaml")
        kw = ("{num_train_ids: 8, num_test_ids: 6, num_cams: 3, train_imgs_per_id: 4, gallery_imgs_per_id: 3, "
              "query_imgs_per_id: 1, num_distractors: 2, num_junk: 1, height: 64, width: 32, confuser_prob: 0.5, "
              "split_streams: true}")
        run = base / "run"
        train_main(["--config", tiny, "--output-dir", str(run), "--progress", "log",
                    "--set", "model.name=vit_small_conv_cpu", "--set", "model.kwargs={jpm: false}",
                    "--set", "ibb.enabled=false", "--set", "solver.epochs=1", "--set", "data.dataset_kwargs=" + kw])
    finally:
        if old is None:
            os.environ.pop("RIBKERNELS_CACHE", None)
        else:
            os.environ["RIBKERNELS_CACHE"] = old
    return str(base / "cache"), str(run)


def test_nuisance_mask_on_a_tiny_finished_run(tiny_run, tmp_path, monkeypatch):
    from experiments import nuisance_mask

    cache, run = tiny_run
    monkeypatch.setenv("RIBKERNELS_CACHE", cache)
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    out = nuisance_mask.main([run, "--out", "nm"])
    r = out["runs"][0]
    assert r["images"] == 6 and r["attn_impl"] == "dcs" and r["dataset_kwargs"]["ground_truth"] is True
    assert 0 < r["share_occluder"] < 1 and 0 < r["share_background"] < 1
    for b in range(4):
        parts = sum(r[f"attn_{p}_b{b}"] for p in ("occluder", "background", "person"))
        assert parts == pytest.approx(1.0, abs=1e-4) and 0 <= r[f"keep_occluder_b{b}"] <= 1
    assert (tmp_path / "nm.json").is_file()
    assert torch.is_grad_enabled()  # the measurement leaves autograd as it found it


def test_occlusion_modes_on_a_tiny_finished_run(tiny_run, tmp_path, monkeypatch):
    from experiments import occlusion_modes

    cache, run = tiny_run
    monkeypatch.setenv("RIBKERNELS_CACHE", cache)
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    out = occlusion_modes.main([f"baseline={run}", f"rib_dcs={run}", "--levels", "0", "0.4", "--out", "om"])
    base = out["results"]["baseline"][0]
    assert set(out["modes"]) == {"bottom", "scene", "confuser"}
    for mode in out["modes"]:
        assert [r["occlusion"] for r in base[mode]] == [0.0, 0.4] and all(0 < r["mAP"] <= 1 for r in base[mode])
        assert base[mode][0]["mAP"] == base["bottom"][0]["mAP"]  # level 0: the clean queries
    c = out["contrasts"]["rib_dcs - baseline"]["confuser"]["0.4"]
    assert c["n"] == 1 and c["mean"] == 0.0  # the same run twice: no difference
    assert (tmp_path / "om.json").is_file()


def test_summarize_ib_control_contrasts_pair_by_seed_and_give_the_specificity_verdict(capsys):
    from experiments import summarize

    def rows(vals):
        return [{"seed": s, "mAP": m, "rank1": m + 10} for s, m in vals.items()]

    ibc = {"command": "python -m experiments.ib_control", "budget": {}, "runs": {
        "baseline": rows({1: 60.0, 2: 62.0, 3: 61.0}), "ibb": rows({1: 62.0, 2: 63.5, 3: 62.5}),
        "prototype": rows({1: 61.0, 2: 64.0, 3: 61.0, 4: 99.0})}}  # seed 4 has no partner
    c = summarize.ib_control_contrasts(ibc)
    assert list(c) == ["ibb − baseline", "prototype − baseline", "ibb − prototype"]
    p = c["ibb − prototype"]["mAP"]["pairs"]
    assert p["diffs"] == [1.0, -0.5, 1.5] and p["n"] == 3
    assert summarize.verdict(c["ibb − baseline"]["mAP"]) == "supported"  # +2, +1.5, +1.5: all > 0, ≥ 2 SE
    assert summarize.verdict(c["ibb − prototype"]["mAP"]) == "not supported"  # one seed disagrees
    summarize.print_ib_control(ibc)
    out = capsys.readouterr().out
    assert "| ibb − prototype | 3 | **0.67 ± 0.60**" in out and "| prototype | 4 | 99.0 |" in out


def test_ib_control_finished_only_trains_nothing_and_lists_what_did_not_run(tmp_path, monkeypatch):
    calls, fake = [], _fake_train([])
    monkeypatch.setattr(ib_control, "train", lambda *a, **k: calls.append(a) or pytest.fail("trained"))
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))

    def finished(run_dir, args):  # seed 2's shuffled_q run never finished
        if run_dir.endswith("shuffled_q_seed2"):
            return None
        over = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        return fake(run_dir, [o for o in over if not o.startswith("output.")])

    monkeypatch.setattr(ib_control, "finished_run", finished)
    out = ib_control.main(["--seeds", "1", "2", "--run-root", str(tmp_path / "runs"), "--finished-only"])
    assert not calls and out["not_run"] == ["shuffled_q seed 2"]
    assert [r["seed"] for r in out["runs"]["shuffled_q"]] == [1] and len(out["runs"]["prototype"]) == 2
    assert out["contrasts"]["ibb - shuffled_q"]["mAP"]["n"] == 1


def test_summarize_skips_arms_that_share_no_seed_and_orders_the_ibb_after_its_controls():
    from experiments import summarize

    ibc = {"runs": {"baseline": [{"seed": 1, "mAP": 60.0, "rank1": 70.0}],
                    "ibb": [{"seed": 2, "mAP": 61.0, "rank1": 71.0}],
                    "prototype": [{"seed": 2, "mAP": 60.5, "rank1": 70.5}]}}
    assert list(summarize.ib_control_contrasts(ibc)) == ["ibb − prototype"]  # baseline pairs with nobody
    assert summarize._arm_order(["ibb", "shuffled_q", "zeta", "baseline", "prototype"]) == \
        ["baseline", "prototype", "shuffled_q", "ibb", "zeta"]


def test_ib_control_per_query_contrasts_pair_the_seeds_that_recorded_them():
    def final(ap):
        return {"per_query": {"query_pids": [1, 1, 2, 3], "AP": ap, "rank1": [1, 0, 1, 1]}}

    finals = {"baseline": {1: final([0.5, 0.4, 0.6, 0.7]), 2: final([0.5, 0.5, 0.5, 0.5]), 3: {}},
              "ibb": {1: final([0.6, 0.5, 0.7, 0.8]), 2: final([0.6, 0.6, 0.6, 0.6]), 3: final([0.1] * 4)}}
    out = ib_control.per_query_contrasts(finals, n_boot=50)
    assert list(out) == ["ibb - baseline"] and out["ibb - baseline"]["seeds"] == [1, 2]  # seed 3: baseline has none
    assert out["ibb - baseline"]["AP"]["mean"] == pytest.approx(0.1) and out["ibb - baseline"]["AP"]["n_identities"] == 3
