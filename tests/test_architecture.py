"""The package's import structure, read from its source with ``ast`` (nothing is imported).

The layering, derived from the code (each room may import only the rooms below it):

    cli  →  inference  →  engine  →  models  →  nn  →  dcs  →  {reid, ibb}  →  root infrastructure

* A *room* is a sub-package of ``ribkernels`` (``cli``, ``engine``, ``models``, ``nn``, ``dcs``,
  ``reid``, ``ibb``) or the top-level module ``ribkernels.inference``. ``__main__`` (``python -m ribkernels``) sits above ``cli``.
* ``reid`` and ``ibb`` are siblings at the same level: neither imports the other.
* Root infrastructure is the private modules at the package root (``ribkernels/_*.py`` and the
  compiled ``ribkernels._C``): every room may import them; they import no room.
* ``ribkernels/__init__.py`` is the public facade: it sits above every room and no module imports it
  (a room that did would close a cycle through the facade).

Three rules are checked over every import, top-level or inside a function (a lazy import is still a
dependency):

1. no cycle between modules (a strongly connected component of more than one module);
2. no upward import between rooms (against the order above);
3. no private name (``from X import _name``, or ``module._name`` on an imported module) used outside
   the module that defines it, and no private module (``_foo``) imported from outside its package.

``EXPECTED`` lists the violations that live in rooms other branches are rewriting at the same time; each
entry names what removes it. The test fails on any violation not listed, and on a listed one that is gone
(so the list only shrinks).
"""
import ast
import collections
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "ribkernels"
EXTENSIONS = {"ribkernels._C"}  # compiled modules (no .py source)

# Rank of each room: a room may import rooms of strictly lower rank (same rank: only itself).
RANK = {"__main__": 8, "cli": 7, "inference": 6, "engine": 5, "models": 4, "nn": 3, "dcs": 2,
        "reid": 1, "ibb": 1, "<infra>": 0}

# Known violations (none left): an entry here would be tolerated, and the test below fails once it is gone.
EXPECTED: set = set()


def _modules(pkg):
    mods = {}
    for p in pkg.rglob("*.py"):
        parts = ["ribkernels"] + list(p.relative_to(pkg).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (p, is_pkg)
    return mods


def _imports(mod, MODULES, KNOWN):
    """(target module, private name or None, line) for every ribkernels import in ``mod``."""
    path, is_pkg = MODULES[mod]
    tree = ast.parse(path.read_text(), str(path))
    out, aliases = [], {}
    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ribkernels":
                    out.append((a.name, None, node.lineno))
                    if a.asname:
                        aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ribkernels":
                continue
            for a in node.names:
                full = f"{target}.{a.name}"
                if full in KNOWN:  # a submodule
                    out.append((full, None, node.lineno))
                    aliases[a.asname or a.name] = full
                else:
                    private = a.name.startswith("_") and not a.name.startswith("__")
                    out.append((target, a.name if private else None, node.lineno))
    for node in ast.walk(tree):  # module._name on an imported module
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            out.append((aliases[node.value.id], node.attr, node.lineno))
    return out


def _room(mod):
    parts = mod.split(".")
    if len(parts) == 1:
        return "<facade>"
    if parts[1].startswith("_") and parts[1] != "__main__":
        return "<infra>"
    return parts[1]


def _violations(pkg=PKG):
    MODULES = _modules(pkg)
    KNOWN = set(MODULES) | EXTENSIONS
    found = set()
    graph = collections.defaultdict(set)
    for mod in MODULES:
        for target, private, _line in _imports(mod, MODULES, KNOWN):
            if target == mod:
                continue
            graph[mod].add(target)
            # rule 2: layering
            a, b = _room(mod), _room(target)
            if b == "<facade>" and a != "<facade>":
                found.add(("upward", mod, target))
            elif a not in ("<facade>", b) and b != "<facade>" and RANK[a] <= RANK[b]:
                found.add(("upward", mod, target))
            # rule 3: privates
            if private is not None:
                found.add(("private", mod, f"{target}.{private}"))
            tparts = target.split(".")
            for i in range(1, len(tparts)):
                if tparts[i].startswith("_") and not tparts[i].startswith("__"):
                    owner = ".".join(tparts[:i])  # the package holding the private module
                    if not (mod == owner or mod.startswith(owner + ".")):
                        found.add(("private", mod, ".".join(tparts[:i + 1])))
                    break
    # rule 1: cycles (Tarjan's strongly connected components)
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(tuple(sorted(comp)))

    for v in sorted(KNOWN):
        if v not in index:
            visit(v)
    for comp in sccs:
        found.add(("cycle",) + comp)
    return found


def test_rules_catch_their_violations(tmp_path):
    """The checker itself: a planted upward import, private import and cycle are all reported."""
    pkg = tmp_path / "ribkernels"
    for room in ("dcs", "engine"):
        (pkg / room).mkdir(parents=True)
        (pkg / room / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "dcs" / "a.py").write_text("from ..engine.b import thing\nfrom .c import _hidden\n")
    (pkg / "dcs" / "c.py").write_text("from . import a\n")
    (pkg / "engine" / "b.py").write_text("thing = 1\n")
    found = _violations(pkg)
    assert ("upward", "ribkernels.dcs.a", "ribkernels.engine.b") in found
    assert ("private", "ribkernels.dcs.a", "ribkernels.dcs.c._hidden") in found
    assert ("cycle", "ribkernels.dcs.a", "ribkernels.dcs.c") in found


def test_no_cycle_no_upward_import_no_private_across_modules():
    found = _violations()
    unexpected = sorted(found - EXPECTED)
    assert not unexpected, "import-structure violations (see this file's docstring for the rules):\n" + \
        "\n".join(map(repr, unexpected))


def test_expected_violations_still_exist():
    """An allow-list entry whose violation is gone must be deleted, so the list only shrinks."""
    gone = sorted(EXPECTED - _violations())
    assert not gone, "fixed; remove from EXPECTED:\n" + "\n".join(map(repr, gone))


def test_expected_violations_are_only_in_the_rooms_other_branches_own():
    rooms = ("ribkernels.ibb", "ribkernels.nn.ibb_loss", "ribkernels.dcs.triton", "ribkernels.dcs.cpu_prepass")
    for kind, mod, *_ in EXPECTED:
        assert mod.startswith(rooms), (kind, mod)


@pytest.mark.parametrize("room", sorted(r for r in RANK if r not in ("<infra>", "__main__")))
def test_every_room_exists(room):
    assert any(_room(m) == room for m in _modules(PKG)), room
