"""The `python -m ribkernels` dispatcher and train.py --help (CPU, nothing trained): help shows the values
of the config that will run, commands exit 130 on Ctrl-C, the dispatcher imports only the command it
runs, lists the commands, and says why Triton is missing.
"""
import os
import subprocess
import sys

import pytest
import torch

from ribkernels import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_shows_the_values_of_the_config_that_will_run(capsys):
    from ribkernels.engine.config import DEFAULT_CONFIG, build_parser, effective_defaults

    for argv in ([], ["--config", os.path.join("configs", "market1501_transreid.yaml")]):
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            text = " ".join(build_parser(argv).format_help().split())
            expected = effective_defaults(argv[1] if argv else DEFAULT_CONFIG)
        finally:
            os.chdir(cwd)
        for section, key, flag in (("solver", "epochs", "--epochs"), ("model", "name", "--model-name"),
                                   ("solver", "optimizer", "--optimizer")):
            assert f"{flag} {section.upper()}.{key.upper()} (default {expected[section][key]!r})" in text
    assert effective_defaults(DEFAULT_CONFIG)["solver"]["epochs"] != effective_defaults(None)["solver"]["epochs"]
    with pytest.raises(SystemExit) as exc:
        build_parser([]).parse_args(["--name", "vit_base"])
    assert exc.value.code == 2
    assert "--model-name" in capsys.readouterr().err


def test_commands_exit_130_on_ctrl_c(monkeypatch, capsys):
    from ribkernels.cli import convert_checkpoint

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_checkpoint, "run", interrupted)
    assert cli.main(["convert-checkpoint", "old.pth", "new.pth", "--trust"]) == 130
    assert "ribkernels convert-checkpoint: interrupted" in capsys.readouterr().err


# ------------------------------------------------------------------------------ dispatcher, packaging
def test_dispatcher_imports_only_the_command_it_runs():
    names = ["train", "extract", "search", "export", "evaluate", "convert-checkpoint"]
    assert sorted(cli.available()) == sorted(names)
    assert all(cli.available()[n].__name__ == f"ribkernels.cli.{n.replace('-', '_')}" for n in names)
    assert sorted(cli.available(["convert-checkpoint", "a", "b"])) == ["convert-checkpoint"]
    assert sorted(cli.available(["serach"])) == sorted(names)  # a typo: argparse lists them all
    probe = ("import sys; from ribkernels import cli; cli.available(['search', 'x']); "
             "print(sorted(m for m in sys.modules if m.startswith('ribkernels.cli.')))")
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["['ribkernels.cli._common',", "'ribkernels.cli.search']"]


def test_python_dash_m_lists_the_commands():
    res = subprocess.run([sys.executable, "-m", "ribkernels", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for name, mod in cli.available().items():  # each command listed with its one-line help
        assert f" {name} {' '.join(mod.HELP.split())}" in text, name
    assert sorted(cli.available()) == sorted(["train", "extract", "search", "export", "evaluate", "convert-checkpoint"])


def test_dispatch_says_why_triton_is_missing(monkeypatch):
    import ribkernels

    for name in [m for m in sys.modules if m == "triton" or m.startswith(("triton.", "ribkernels.dcs.triton"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    theta = torch.randn(1, 2, 5, 8)
    reasons = ribkernels.available_backends(q, k, v, theta)["triton"]
    assert any("cannot be imported" in r for r in reasons), reasons
    out = ribkernels.dcs_attention(q, k, v, theta, training=False, impl="auto")
    assert torch.isfinite(out).all()
