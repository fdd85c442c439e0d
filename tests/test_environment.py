"""Every ``RIBKERNELS_*`` environment variable is declared once, in ``ribkernels/_env.py`` (name, meaning,
default), read through it, and listed in ``docs/environment.md`` (generated from that table)."""
import ast
import os
import pathlib
import re

import pytest

from ribkernels import _env

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME = re.compile(r"\bRIBKERNELS_[A-Z0-9_]+\b")
# Names that look like variables but are not read from the environment.
NOT_VARIABLES = {
    "RIBKERNELS_DEFAULT_ARCHS",  # setup.py: a constant (the default CUDA arch list)
}
# Files that still read their variables with os.environ directly: the IBB and Triton rooms, which other
# branches are rewriting; switch each to ``_env.get`` / ``_env.is_set`` after they merge, then delete it here.
DIRECT_READS_ALLOWED = {
    "ribkernels/dcs/triton/launch.py",  # RIBKERNELS_DCS_AUTOTUNE / DCS_BACKWARD
}


def _sources():
    files = sorted((ROOT / "ribkernels").rglob("*.py")) + [ROOT / "setup.py", ROOT / "Makefile"]
    files += sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / ".ci").glob("*"))
    return [f for f in files if f.is_file() and f.name != "test_environment.py"]


def _names_used():
    used = {}
    for f in _sources():
        for name in NAME.findall(f.read_text(errors="replace")):
            used.setdefault(name, set()).add(str(f.relative_to(ROOT)))
    return used


def test_every_variable_in_the_code_is_declared():
    declared = {v.name for v in _env.VARIABLES}
    missing = {n: sorted(where) for n, where in _names_used().items() if n not in declared | NOT_VARIABLES}
    assert not missing, f"declare these in ribkernels/_env.py VARIABLES: {missing}"


def test_every_declared_variable_is_used():
    used = _names_used()
    stale = [v.name for v in _env.VARIABLES if v.name not in used]
    assert not stale, f"declared in ribkernels/_env.py but read nowhere: {stale}"


def _direct_reads(path):
    """(line, name) of every ``os.environ.get("RIBKERNELS_…")``, ``os.environ["RIBKERNELS_…"]``,
    ``os.getenv("RIBKERNELS_…")`` and ``"RIBKERNELS_…" in os.environ`` in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        arg = None
        if isinstance(node, ast.Call) and node.args:
            f = ast.unparse(node.func)
            if f in ("os.environ.get", "os.getenv", "environ.get", "getenv"):
                arg = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
            arg = node.slice
        elif isinstance(node, ast.Compare) and any(ast.unparse(c) in ("os.environ", "environ")
                                                    for c in node.comparators):
            arg = node.left
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("RIBKERNELS_"):
            out.append((node.lineno, arg.value))
    return out


def test_the_package_reads_them_only_through_env():
    found = {}
    for f in sorted((ROOT / "ribkernels").rglob("*.py")) + [ROOT / "setup.py"]:
        rel = str(f.relative_to(ROOT))
        if rel in ("ribkernels/_env.py",) or rel in DIRECT_READS_ALLOWED:
            continue
        reads = _direct_reads(f)
        if reads:
            found[rel] = reads
    assert not found, f"read these through ribkernels._env (get / is_set / cache_dir): {found}"


def test_the_allowed_direct_reads_still_exist():
    """An entry of DIRECT_READS_ALLOWED that no longer reads directly must be deleted."""
    gone = [f for f in sorted(DIRECT_READS_ALLOWED) if not _direct_reads(ROOT / f)]
    assert not gone, f"switched to ribkernels._env: remove from DIRECT_READS_ALLOWED: {gone}"


def test_the_docs_table_is_generated_from_the_declarations():
    with open(ROOT / "docs" / "environment.md") as f:
        assert f.read() == _env.markdown(), (
            "docs/environment.md is stale: python -c \"from ribkernels._env import markdown; "
            "print(markdown(), end='')\" > docs/environment.md")


def test_get_reads_at_each_call_and_refuses_an_undeclared_name(monkeypatch):
    monkeypatch.delenv("RIBKERNELS_DCS_AUTOTUNE_BACKEND", raising=False)
    assert _env.get("RIBKERNELS_DCS_AUTOTUNE_BACKEND") == "1"  # its default
    monkeypatch.setenv("RIBKERNELS_DCS_AUTOTUNE_BACKEND", "0")
    assert _env.get("RIBKERNELS_DCS_AUTOTUNE_BACKEND") == "0"
    monkeypatch.delenv("RIBKERNELS_DEBUG", raising=False)
    assert not _env.is_set("RIBKERNELS_DEBUG")
    monkeypatch.setenv("RIBKERNELS_DEBUG", "1")
    assert _env.is_set("RIBKERNELS_DEBUG")
    monkeypatch.setenv("RIBKERNELS_CACHE", "/somewhere")
    assert _env.cache_dir() == "/somewhere"
    monkeypatch.delenv("RIBKERNELS_CACHE")
    assert _env.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "ribkernels")
    with pytest.raises(KeyError, match="RIBKERNELS_TYPO"):
        _env.get("RIBKERNELS_TYPO")


def test_the_checker_sees_a_direct_read(tmp_path):
    p = tmp_path / "m.py"
    p.write_text('import os\na = os.environ.get("RIBKERNELS_X")\nb = "RIBKERNELS_Y" in os.environ\n'
                 'c = os.environ["RIBKERNELS_Z"]\nd = os.getenv("RIBKERNELS_W", "1")\n')
    assert [n for _, n in _direct_reads(p)] == ["RIBKERNELS_X", "RIBKERNELS_Y", "RIBKERNELS_Z", "RIBKERNELS_W"]
