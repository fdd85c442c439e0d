"""The README's quick start runs as pasted: its fenced blocks marked ``python quickstart`` and
``bash quickstart`` are extracted and run in order, on CPU, in a scratch folder that looks like the
repository root (train.py and configs/ linked in), so nothing is written into the checkout.

No network: the ViT is built with ``pretrained=False`` and the synthetic dataset is generated locally.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
BLOCK = re.compile(r"^```(python|bash) quickstart[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def quickstart_blocks(text: str):
    """[(language, source)] of the README's quick-start blocks, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def test_the_marker_finds_exactly_the_quickstart_blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = quickstart_blocks(text)
    assert [lang for lang, _ in blocks] == ["python", "bash", "python"]
    # every other fenced block is left alone: the marker is what selects
    assert text.count("```python quickstart") + text.count("```bash quickstart") == 3
    assert len(text.splitlines()) <= 200, "the README is for users: at most 200 lines"


@pytest.fixture
def scratch_repo(tmp_path):
    """A folder where ``python train.py --config configs/...`` and ``python -m ribkernels`` work as in
    the checkout: train.py and configs/ linked, this checkout first on PYTHONPATH, ``python`` = this
    interpreter, caches under the scratch folder, no GPU."""
    os.symlink(os.path.join(ROOT, "train.py"), tmp_path / "train.py")
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "python"  # a wrapper, not a link: a linked venv interpreter would lose its venv
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p),
               RIBKERNELS_CACHE=str(tmp_path / "cache"), CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    return tmp_path, env


def test_readme_quickstart_runs_as_pasted(scratch_repo):
    cwd, env = scratch_repo
    with open(README, encoding="utf-8") as f:
        blocks = quickstart_blocks(f.read())
    for i, (lang, src) in enumerate(blocks):
        cmd = [sys.executable, "-c", src] if lang == "python" else ["bash", "-euo", "pipefail", "-c", src]
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"quick-start block {i} ({lang}) failed:\n{src}\n--- output ---\n" \
                                    f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        if i == 0:
            assert "patched blocks: 12" in res.stdout and "loss " in res.stdout
        if i == 2:
            n, d = (int(x) for x in re.search(r"\((\d+), (\d+)\)", res.stdout).groups())
            assert n > 0 and d > 0
    import numpy as np

    with np.load(cwd / "feats.npz") as z:  # what the CLI block wrote
        assert z["features"].ndim == 2 and len(z["features"]) == len(z["paths"]) > 0
        assert np.isfinite(z["features"]).all()
    assert (cwd / "runs" / "quickstart" / "final.pth").is_file()
