"""Config keys renamed after 0.1.0 because they repeated their section (``ibb.ibb_refresh`` is now
``ibb.refresh``): for one release the old names are read as the new ones, with one RenamedKeyWarning
each, from YAML files, ``--set``, ``--allow-changes``, configs stored in checkpoints (a run started
before the rename resumes exactly) and finished experiment runs; an old name beside its new one is
refused, naming both. The flags keep their spellings (``--ibb-refresh`` sets ``ibb.refresh``).
"""
import collections
import os
import warnings

import pytest
import yaml

from ribkernels.engine import DEFAULTS
from ribkernels.engine import checkpoint as ckpt_io
from ribkernels.engine import resume as resume_rules
from ribkernels.engine.config import build_parser, merge, resolve, validate
from ribkernels.engine.config_keys import FLAGS, RENAMED_KEYS
from ribkernels.engine.validate import ConfigError, RenamedKeyWarning, UnknownKeyError
from faults_common import (_args, _copy, data_root, _digest, full_run, _metrics, RUN, stopped_run, _strip, TINY,
                           train)

# For each new name: a valid value that differs from the tiny config's, and how --set writes it.
NEW_VALUES = {
    "model.kwargs": ({"jpm": False}, "{jpm: false}"),
    "data.root": ("elsewhere", "elsewhere"),
    "ibb.enabled": (False, "false"),
    "ibb.feature": ("before", "before"),
    "ibb.start_epoch": (2, "2"),
    "ibb.refresh": (2, "2"),
    "ibb.clusters": (5, "5"),
    "eval.period": (2, "2"),
    "eval.batch_size": (16, "16"),
    "output.dir": ("out/x", "out/x"),
}
PAIRS = sorted(RENAMED_KEYS.items())


def _resolve(*argv):
    """(config, the RenamedKeyWarning messages) of ``train.py ARGV``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = resolve(build_parser(list(argv)).parse_args(list(argv)))
    return cfg, [str(w.message) for w in caught if issubclass(w.category, RenamedKeyWarning)]


def _get(cfg, dotted):
    section, key = dotted.split(".")
    return cfg[section][key]


def _with_old_names(cfg):
    """``cfg`` as a version before the rename wrote it (every renamed key under its old name)."""
    old_of = {new: old for old, new in RENAMED_KEYS.items()}
    return {section: {old_of.get(f"{section}.{k}", f"{section}.{k}").split(".", 1)[1]: v for k, v in keys.items()}
            if isinstance(keys, dict) and not section.startswith("_") else keys for section, keys in cfg.items()}


def _without_meta(cfg):
    return {k: v for k, v in cfg.items() if k != "_meta"}


def test_every_old_name_maps_to_a_declared_key_and_keeps_its_flag():
    assert set(NEW_VALUES) == set(RENAMED_KEYS.values())
    tiny, _ = _resolve("--config", TINY)
    for old, new in PAIRS:
        (section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        assert section == new_section and new_key in DEFAULTS[section] and old_key not in DEFAULTS[section]
        assert FLAGS[old_key.replace("_", "-")] == new  # --ibb-refresh, --use-ibb, --output-dir: as before
        assert _get(tiny, new) != NEW_VALUES[new][0]  # the tests below see the value change
    assert len(set(FLAGS.values())) == len(FLAGS) == sum(len(keys) for keys in DEFAULTS.values())


@pytest.mark.parametrize("old,new", PAIRS, ids=[p[0] for p in PAIRS])
def test_an_old_name_in_a_config_file_is_read_as_the_new_one(tmp_path, old, new):
    section, old_key = old.split(".")
    value = NEW_VALUES[new][0]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"_base_": TINY, section: {old_key: value}}))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump({"_base_": TINY, section: {new.split(".")[1]: value}}))
    cfg, said = _resolve("--config", str(tmp_path / "old.yaml"))
    assert _get(cfg, new) == value and old_key not in cfg[section]
    assert len(said) == 1 and f"{old} is renamed {new}" in said[0] and str(tmp_path / "old.yaml") in said[0], said
    reference, said = _resolve("--config", str(tmp_path / "new.yaml"))
    assert said == [] and _without_meta(cfg) == _without_meta(reference)


@pytest.mark.parametrize("old,new", PAIRS, ids=[p[0] for p in PAIRS])
def test_an_old_name_in_set_is_read_as_the_new_one(old, new):
    value, text = NEW_VALUES[new]
    cfg, said = _resolve("--config", TINY, "--set", f"{old}={text}")
    assert _get(cfg, new) == value and old.split(".")[1] not in cfg[old.split(".")[0]]
    assert len(said) == 1 and f"--set: config key {old} is renamed {new}" in said[0], said
    reference, said = _resolve("--config", TINY, "--set", f"{new}={text}")
    assert said == [] and cfg == reference


def test_an_old_name_beside_its_new_one_is_refused_naming_both(tmp_path):
    (tmp_path / "both.yaml").write_text("ibb:\n  ibb_refresh: 2\n  refresh: 3\n")
    for argv in (["--config", str(tmp_path / "both.yaml")],
                 ["--config", TINY, "--set", "ibb.ibb_refresh=2", "--set", "ibb.refresh=3"]):
        with pytest.raises(ConfigError, match=r"both ibb\.ibb_refresh and ibb\.refresh are given"):
            _resolve(*argv)
    rc, err = train("--config", str(tmp_path / "both.yaml"), "--output-dir", str(tmp_path / "run"))
    assert rc == 2 and "ibb.ibb_refresh" in err and "ibb.refresh" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_base_file_with_an_old_name_is_overridden_by_the_new_name(tmp_path):
    """Names are read file by file: the old name of a base and the new name of its child are one key."""
    (tmp_path / "base.yaml").write_text(f"_base_: {TINY}\nibb:\n  ibb_refresh: 2\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nibb:\n  refresh: 3\n")
    cfg, said = _resolve("--config", str(tmp_path / "child.yaml"))
    assert cfg["ibb"]["refresh"] == 3 and len(said) == 1 and "base.yaml" in said[0], said


def test_the_python_api_reads_old_names_and_validate_names_the_new_one():
    with pytest.warns(RenamedKeyWarning, match="ibb.ibb_refresh is renamed ibb.refresh"):
        cfg = merge(DEFAULTS, {"ibb": {"ibb_refresh": 2}})
    assert cfg["ibb"]["refresh"] == 2 and "ibb_refresh" not in cfg["ibb"]
    with pytest.raises(UnknownKeyError, match=r"unknown key ibb\.ibb_refresh \(renamed ibb\.refresh\)"):
        validate({"ibb": {"ibb_refresh": 2}})


def test_allow_changes_takes_old_names_and_flags():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        allowed = resume_rules.parse_allow("ibb.ibb_refresh,ibb_start_epoch,eval-batch-size,output-dir,lr", DEFAULTS)
    assert allowed == ["ibb.refresh", "ibb.start_epoch", "eval.batch_size", "output.dir", "solver.base_lr"]
    said = [str(w.message) for w in caught if issubclass(w.category, RenamedKeyWarning)]
    assert len(said) == 2 and "ibb.ibb_refresh" in said[0] and "ibb.ibb_start_epoch" in said[1], said
    with pytest.raises(ConfigError, match="batch_size.*data.batch_size, eval.batch_size"):
        resume_rules.parse_allow("batch_size", DEFAULTS)


def test_a_stored_config_with_old_names_compares_under_the_new_names():
    old = _with_old_names(DEFAULTS)
    assert "ibb_refresh" in old["ibb"] and "refresh" not in old["ibb"]
    with pytest.warns(RenamedKeyWarning):
        assert resume_rules.config_changes(old, DEFAULTS, DEFAULTS) == {}
    old["ibb"]["ibb_refresh"] = 2
    with pytest.warns(RenamedKeyWarning):
        assert resume_rules.config_changes(old, DEFAULTS, DEFAULTS) == {"ibb.refresh": (2, 1)}


def test_a_run_started_before_the_rename_resumes_exactly(data_root, full_run, stopped_run, tmp_path):
    """last.pth and config.yaml written with the old names: --resume auto accepts the stored config as
    the same as today's (one warning per old name), and ends bit-identical to the uninterrupted run."""
    run = _copy(stopped_run, tmp_path / "run")
    state = ckpt_io.load(os.path.join(run, "last.pth"))
    state["config"] = _with_old_names(state["config"])
    assert state["config"]["ibb"]["ibb_start_epoch"] == 1 and "start_epoch" not in state["config"]["ibb"]
    ckpt_io.save_atomic(state, os.path.join(run, "last.pth"))
    with open(os.path.join(run, "config.yaml"), "w") as f:
        yaml.safe_dump(state["config"], f, sort_keys=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, err = train(*_args(data_root, run, *RUN, "--resume", "auto"))
    assert rc == 0, err
    said = [str(w.message) for w in caught if issubclass(w.category, RenamedKeyWarning)]
    counts = collections.Counter(old for old in RENAMED_KEYS for message in said if f" {old} is renamed" in message)
    assert counts == {old: 1 for old in RENAMED_KEYS} and all("--resume" in m for m in said), said
    assert "config_changes" not in _metrics(run)
    assert _strip(_metrics(run)["epochs"]) == _strip(_metrics(full_run)["epochs"])
    assert _metrics(run)["final"] == _metrics(full_run)["final"]
    assert _digest(run) == _digest(full_run)


def test_a_model_file_with_old_names_is_loaded_and_checked(tmp_path):
    from ribkernels.inference import load_model
    from tiny_checkpoint import write_model_file

    reference = write_model_file(tmp_path / "new.pth")
    old = write_model_file(tmp_path / "old.pth", edit=lambda s: s.update(config=_with_old_names(s["config"])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(old)
    said = [str(w.message) for w in caught if issubclass(w.category, RenamedKeyWarning)]
    assert len(said) == len(RENAMED_KEYS) and all(old in m for m in said), said
    assert _without_meta(loaded.config) == _without_meta(load_model(reference).config)
    assert loaded.config["model"]["kwargs"] == {"jpm": True}


def test_a_finished_experiment_run_with_old_names_is_reused(tmp_path):
    from experiments import common

    args = common.train_args(["solver.seed=1"], TINY)
    run = tmp_path / "run"
    run.mkdir()
    stored = dict(common._resolved_config(args), output={"output_dir": str(run)}, _meta={"config_name": "x"})
    (run / "config.yaml").write_text(yaml.safe_dump(_with_old_names(stored)))
    (run / "metrics.json").write_text('{"final": {"mAP": 0.6, "rank1": 0.7}, "epochs": []}')
    assert "use_ibb" in yaml.safe_load((run / "config.yaml").read_text())["ibb"]
    assert common.finished_run(str(run), args) is not None
    assert common.finished_run(str(run), common.train_args(["solver.seed=1", "ibb.refresh=2"], TINY)) is None
    assert common.budget_of_run(str(run))["model_kwargs"] == {"jpm": True}


def test_the_docs_table_lists_every_renamed_key_and_its_flag():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", "training.md")).read().split("## Renamed config keys", 1)[1]
    rows = [[cell.strip(" `") for cell in line.strip("|").split("|")] for line in text.split("\n## ", 1)[0].splitlines()
            if line.startswith("| `")]
    assert {old: new for old, new, _ in rows} == RENAMED_KEYS
    for _, new, flags in rows:
        assert FLAGS[flags.split("`")[0].strip()[2:]] == new
