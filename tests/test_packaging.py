"""What an install carries and does: the source distribution's file list against the tree; the wheel
of a plain isolated build (sources, configs, console script); the CUDA arch default; the warning
without a compiler; ``ribkernels train --config NAME`` from any folder; and (RIBKERNELS_TEST_JIT=1)
``pip install .`` into a fresh environment, JIT build on first use, cache, training."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

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
              + _tree_files(src, "configs", (".yaml",)) + _tree_files(src, "docs", (".md",))
              + ["setup.py", "train.py", "requirements.txt", "README.md", "LICENSE", "CITATION.cff"])
    assert any(n.endswith(".h") for n in needed) and "ribkernels/cli/search.py" in needed  # the walk found them
    assert sorted(set(needed) - names) == []
    assert [n for n in names if n.endswith((".so", ".pyc"))] == []


def _copy_source(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=LOCAL, symlinks=True)
    return src


def _pip(*args, timeout=600, **kw):
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def test_isolated_wheel_ships_every_source_and_config_and_the_trainer(tmp_path):
    """A plain isolated build (no torch in the build environment, as `pip install .` does) still gives
    a wheel that can build and train: csrc/* (by glob) as ribkernels/csrc, configs as ribkernels/configs,
    the `ribkernels` console script, and ninja among the requirements (the JIT build needs it)."""
    import zipfile

    src = _copy_source(tmp_path)
    _pip("wheel", str(src), "--no-deps", "-w", str(tmp_path / "dist"), "-q", cwd=tmp_path)
    (wheel,) = os.listdir(tmp_path / "dist")
    assert wheel.endswith("-py3-none-any.whl"), wheel  # no torch here: nothing compiled, nothing platform-bound
    with zipfile.ZipFile(tmp_path / "dist" / wheel) as z:
        names = set(z.namelist())
        meta = {n: z.read(n).decode() for n in names if n.endswith((".dist-info/METADATA", "entry_points.txt"))}
    csrc = sorted(os.listdir(src / "csrc"))
    assert any(n.endswith(".cu") for n in csrc) and any(n.endswith(".h") for n in csrc)
    assert sorted(set(f"ribkernels/csrc/{n}" for n in csrc) - names) == []
    configs = [os.path.relpath(os.path.join(b, n), src / "configs") for b, _, ns in os.walk(src / "configs")
               for n in ns if n.endswith(".yaml")]
    assert "_base/recipe.yaml" in configs and "synthetic_tiny_test.yaml" in configs
    assert sorted(set(f"ribkernels/configs/{n}" for n in configs) - names) == []
    assert [n for n in names if n.endswith((".so", ".pyd", ".pyc"))] == []
    entry = next(v for k, v in meta.items() if k.endswith("entry_points.txt"))
    assert "ribkernels = ribkernels.cli:main" in entry
    requires = next(v for k, v in meta.items() if k.endswith("METADATA"))
    assert "Requires-Dist: ninja" in requires and "Requires-Dist: torch" in requires


def _setup_functions():
    """setup.py's helpers without running setup()."""
    text = open(os.path.join(ROOT, "setup.py")).read()
    marker = "ext_modules, cmdclass = _extension()"
    assert marker in text
    ns = {"__file__": os.path.join(ROOT, "setup.py"), "__name__": "setup_helpers"}
    exec(compile(text.split(marker)[0], "setup.py", "exec"), ns)
    return ns


def test_default_cuda_archs_cover_sm70_to_sm90_within_what_nvcc_compiles():
    f = _setup_functions()["default_arch_list"]
    cuda12 = ["compute_50", "compute_60", "compute_70", "compute_75", "compute_80", "compute_86", "compute_89",
              "compute_90"]
    cuda13 = ["compute_75", "compute_80", "compute_86", "compute_87", "compute_88", "compute_89", "compute_90",
              "compute_100", "compute_120"]
    assert f(cuda12) == "7.0;8.0;9.0+PTX"   # sm_70 cubins run on sm_75 (T4), sm_80 on sm_86/sm_89
    assert f(cuda13) == "7.5;8.0;9.0+PTX"   # CUDA 13 has no sm_70: T4-class is the oldest it builds
    assert f(None) == "7.0;8.0;9.0+PTX"


def test_jit_without_a_compiler_warns_with_the_command_that_fixes_it(tmp_path):
    code = ("import warnings, ribkernels.ibb as ibb\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    s = ibb.extension_status()\n"
            "print(s['source']); print('\\n'.join(str(x.message) for x in w))\n")
    env = dict(os.environ, RIBKERNELS_NO_AOT="1", CXX=str(tmp_path / "no-such-compiler"),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    source, message = proc.stdout.split("\n", 1)
    assert source == "None"
    assert "no-such-compiler" in message and "apt-get install g++" in message
    assert "pip install --no-build-isolation ." in message
    assert not os.path.exists(tmp_path / "ext" / "ribkernels_C_cpu" / "ribkernels_C_cpu.so")


def test_train_subcommand_finds_shipped_configs_by_name_from_any_folder(tmp_path):
    from ribkernels.engine.config import find_config, shipped_configs

    assert find_config("synthetic_tiny_test") == shipped_configs()["synthetic_tiny_test"]
    assert os.path.samefile(find_config("configs/synthetic_tiny_test.yaml"), shipped_configs()["synthetic_tiny_test"])
    with pytest.raises(FileNotFoundError, match="--config other/synthetic_tiny_test.yaml: no such file"):
        find_config("other/synthetic_tiny_test.yaml")  # a path elsewhere is never swapped for a shipped file
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "ribkernels", "train", "--config", "synthetic_tiny_test",
                           "--output-dir", str(tmp_path / "run"), "--data-root", str(tmp_path / "data"),
                           "--max-epochs", "1", "--ibb-start-epoch", "5"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.exists(tmp_path / "run" / "final.pth")
    bad = subprocess.run([sys.executable, "-m", "ribkernels", "train", "--config", "no_such_config"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "ribkernels train: error: --config no_such_config" in bad.stderr
    assert "synthetic_tiny_test" in bad.stderr  # the names it could have been


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RIBKERNELS_TEST_JIT") != "1",
                    reason="JIT-builds the extension (~1.5 min on 2 cores); set RIBKERNELS_TEST_JIT=1 (CI does)")
def test_plain_pip_install_into_an_env_with_torch_builds_the_extension_on_first_use_and_trains(tmp_path):
    """`pip install .` (isolated build, no flags) into a fresh virtual environment that has torch (the
    running one's packages, seen through a .pth file), then from outside the source tree: the first use
    JIT-builds ribkernels._C from the shipped sources with a message, a second process loads the cache,
    and `ribkernels train --config synthetic_tiny_test` runs."""
    import sysconfig
    import venv

    src = _copy_source(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "torch_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _pip("--python", str(py), "install", str(src), "-q", cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RIBKERNELS_NO_AOT", "RIBKERNELS_NO_JIT")}
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "ext")
    probe = ("import ribkernels, ribkernels.ibb as ibb, torch\n"
             "s = ibb.extension_status(); print(ribkernels.__file__); print(s['source'], s['devices'])\n"
             "f = torch.randn(5, 4, dtype=torch.float64); c = torch.randn(3, 4, dtype=torch.float64)\n"
             "lq = torch.randn(3, 2, dtype=torch.float64).log_softmax(1); y = torch.tensor([0, 1, 1, 0, 1])\n"
             "a = ibb.ibb_loss(f, y, c, lq, impl='ext'); b = ibb.ibb_loss(f, y, c, lq, impl='eager')\n"
             "print(bool(torch.allclose(a, b)))\n")
    first = subprocess.run([str(py), "-c", probe], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    where, status, ok = first.stdout.split("\n")[:3]
    assert where.startswith(site) and status.startswith("jit ['cpu'") and ok == "True", first.stdout
    assert "ribkernels: building the C++" in first.stderr and "ribkernels: built ribkernels._C in" in first.stderr
    again = subprocess.run([str(py), "-c", probe], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr[-3000:]
    assert "building" not in again.stderr  # the cache
    run = subprocess.run([str(env_dir / "bin" / "ribkernels"), "train", "--config", "synthetic_tiny_test",
                          "--output-dir", str(work / "run"), "--max-epochs", "1"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert os.path.exists(work / "run" / "final.pth") and "building" not in run.stderr


def test_jit_cache_check_sees_changed_sources(tmp_path):
    """The 'building ...' line is printed exactly when ninja will rebuild: no library yet, or one older
    than a source."""
    from ribkernels import _extension as _ext

    src = tmp_path / "a.cpp"
    src.write_text("// source\n")
    lib = tmp_path / "ribkernels_C_cpu.so"
    assert not _ext._is_built(str(tmp_path), "ribkernels_C_cpu", [str(src)])
    lib.write_text("")
    now = os.path.getmtime(src)
    os.utime(lib, (now + 10, now + 10))
    assert _ext._is_built(str(tmp_path), "ribkernels_C_cpu", [str(src)])
    os.utime(src, (now + 20, now + 20))
    assert not _ext._is_built(str(tmp_path), "ribkernels_C_cpu", [str(src)])
