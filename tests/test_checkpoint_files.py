"""Checkpoint files (engine and CLI): they follow the umask; a malicious pickle handed to every entry point
that takes a checkpoint runs no code; previous-format checkpoints are refused with the conversion
command, which converts exactly; no loader in the package can run code from a file.

To cover another entry point that reads a checkpoint (e.g. a CLI command), add one line to
``CHECKPOINT_ENTRY_POINTS``.
"""
import ast
import contextlib
import io
import os
import pickle
from argparse import Namespace

import numpy as np
import pytest
import torch

from ribkernels.engine import checkpoint as ckpt_io
from faults_common import (_args, _copy, data_root, _digest, full_run, ROOT, RUN, stopped_run, train)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = ckpt_io.save_atomic({"w": torch.zeros(1)}, str(tmp_path / "c.pth"))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode


# ------------------------------------------------------------------------------------ weights only
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
