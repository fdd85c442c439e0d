"""Every subcommand's ``--help`` shows each option's default (train's too: the values of the config
that would run)."""
import argparse
import os
import subprocess
import sys

import pytest

from ribkernels import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", [n for n in cli.available() if n != "train"])
def test_every_option_with_a_default_shows_it(name):
    parser = cli.build_parser(cli.available([name]))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    text = " ".join(sub.format_help().split("options:", 1)[1].split())
    shown = 0
    for action in sub._actions:
        if (not action.option_strings or action.nargs == 0 or action.required or action.default is None
                or action.default == argparse.SUPPRESS):
            continue
        flag = action.option_strings[-1]
        after = text.split(flag + " ", 1)[1].split(" --", 1)[0]
        assert "default" in after.lower(), (name, flag, after)
        shown += 1
    assert name == "convert-checkpoint" or shown > 0


def test_train_help_shows_the_config_values():
    proc = subprocess.run([sys.executable, "-m", "ribkernels", "train", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert text.startswith("usage: ribkernels train")
    assert "--test-interpolation DATA.TEST_INTERPOLATION (default 'bilinear')" in text
    assert "--rerank-k1 EVAL.RERANK_K1 (default 50)" in text
