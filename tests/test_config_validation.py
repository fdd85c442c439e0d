"""Bad config values (engine): every one fails before any data is read, naming key, value and what is
allowed; unknown keys are named with the closest valid key; every key has a rule.
"""
import contextlib
import io
import time

import pytest
import yaml

from ribkernels.engine import DEFAULTS, main
from ribkernels.engine import validate
from faults_common import (_args, data_root, TINY, train)


# ------------------------------------------------------------------------------------ config validation
BAD_VALUES = [
    ("--checkpoint-period", "0", "output.checkpoint_period"), ("--max-rank", "0", "eval.max_rank"),
    ("--occlusion-ratios", "[1.5]", "eval.occlusion_ratios"), ("--beta", "0", "ibb.beta"),
    ("--kmeans-iters", "-1", "ibb.kmeans_iters"), ("--ibb-clusters", "0", "ibb.clusters"),
    ("--eval-batch-size", "0", "eval.batch_size"), ("--grad-clip", "-1", "solver.grad_clip"),
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
    (("--model-kwargs", "{jpmm: true}"), ["model.kwargs: model 'vit_tiny_cpu' takes no argument 'jpmm'",
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
    (("--ibb-clusters", "1000"), "ibb.clusters = 1000 is larger than the training set (32 images)"),
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
