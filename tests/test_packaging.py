"""The source distribution carries what building and running need (issue 13): ``python setup.py sdist``
on a clean copy of the source tree, then its file list checked against the tree. (The slow part —
``pip install`` of that sdist compiling the extension — was tested once by hand, see README Install.)"""
import os
import shutil
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not source: built or local files that a checkout may hold.
LOCAL = shutil.ignore_patterns(".git", ".venv", "data", "runs", "build", "dist", "*.egg-info", "__pycache__",
                               "*.pyc", "*.so", ".pytest_cache", ".cache", ".benchmarks", ".gl", "results")


def _tree_files(root, folder, suffixes):
    out = []
    for base, dirs, names in os.walk(os.path.join(root, folder)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [os.path.relpath(os.path.join(base, n), root) for n in names if n.endswith(suffixes)]
    return sorted(out)


def test_sdist_carries_the_extension_sources_headers_and_package(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=LOCAL, symlinks=True)
    env = dict(os.environ, RIBKERNELS_NO_EXT="1")  # the headers must come from MANIFEST.in, not ext sources
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (archive,) = os.listdir(tmp_path / "dist")
    with tarfile.open(tmp_path / "dist" / archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = (_tree_files(src, "csrc", (".h", ".cuh", ".cpp", ".cu")) + _tree_files(src, "ribkernels", (".py",))
              + _tree_files(src, "configs", (".yaml",)) + ["setup.py", "train.py", "requirements.txt", "README.md"])
    assert any(n.endswith(".h") for n in needed) and "ribkernels/cli/search.py" in needed  # the walk found them
    assert sorted(set(needed) - names) == []
    assert [n for n in names if n.endswith((".so", ".pyc"))] == []
