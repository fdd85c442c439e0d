"""ribkernels: fused DCS-Attention (Triton) and the IBB bound (C++/CUDA) for person Re-ID.

``pip install .`` works in any environment that has torch (or gets it from pip):

* with build isolation (pip's default) the build environment has no torch, so the wheel holds no
  compiled extension; it ships the C++/CUDA sources (``csrc/`` as ``ribkernels/csrc``) and the first
  op that needs ``ribkernels._C`` JIT-builds it with ninja (one message and a heartbeat while it
  builds, ~1-2 min; cached under ``TORCH_EXTENSIONS_DIR`` for every later process);
* with ``pip install --no-build-isolation .`` (or ``-e .`` for development) torch is importable here
  and the extension is compiled ahead of time into the wheel.

The ahead-of-time build compiles:

* the CPU sources always;
* the CUDA sources when a CUDA toolkit is found: ``CUDA_HOME``, else the toolkit that ``nvcc`` on
  ``PATH`` belongs to (torch's own guess can pick another one). ``TORCH_CUDA_ARCH_LIST`` is
  respected; unset, it defaults to :func:`default_arch_list`: sm_70 (CUDA <= 12; CUDA 13 starts at
  sm_75), sm_80 and sm_90 cubins plus sm_90 PTX. A cubin runs on every later GPU of its major
  version (sm_70: V100 and T4; sm_80: A100, A10, RTX 30/40, L4), the PTX on newer majors.

The configs (``configs/``) ship too, as ``ribkernels/configs``: ``ribkernels train --config NAME``.

Environment switches: ``RIBKERNELS_NO_CUDA=1`` builds the CPU part only (fast local iteration);
``RIBKERNELS_NO_EXT=1`` builds no extension at all (the package then JIT-builds it on first use, or
falls back to eager PyTorch with a warning that names the fix).
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_env():
    """``ribkernels/_env.py`` (the one reader of ``RIBKERNELS_*``), loaded by path: the package itself
    is not importable before it is built."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_ribkernels_env", os.path.join(ROOT, "ribkernels", "_env.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_env = _load_env()
# Wanted cubins (lowest first) and the PTX of the newest; see default_arch_list.
RIBKERNELS_DEFAULT_ARCHS = "7.0;8.0;9.0+PTX"


def default_arch_list(nvcc_archs=None):
    """``RIBKERNELS_DEFAULT_ARCHS`` limited to what this nvcc compiles (``nvcc --list-gpu-arch``,
    e.g. ``["compute_75", "compute_80", ...]``): an arch it dropped is replaced by its lowest one of
    the same major (CUDA 13 dropped sm_70: ``7.5;8.0;9.0+PTX``), or left out."""
    wanted = RIBKERNELS_DEFAULT_ARCHS.split(";")
    if not nvcc_archs:
        return RIBKERNELS_DEFAULT_ARCHS
    have = sorted({a.split("_", 1)[1] for a in nvcc_archs if a.startswith("compute_")}, key=int)
    out = []
    for arch in wanted:
        num, ptx = arch.split("+")[0], arch.endswith("+PTX")
        code = num.replace(".", "")
        if code not in have:
            same_major = [h for h in have if h[:-1] == code[:-1] and int(h) > int(code)]
            if not same_major:
                continue
            code = same_major[0]
        out.append(f"{code[:-1]}.{code[-1]}" + ("+PTX" if ptx else ""))
    return ";".join(out) or RIBKERNELS_DEFAULT_ARCHS


def _nvcc_archs(cuda_home):
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc if os.path.exists(nvcc) else "nvcc", "--list-gpu-arch"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.split() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _find_cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home if os.path.isdir(home) else None
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    # nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc exec'ing the real one), so ask
    # nvcc where it lives instead of following links.
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        for line in (out.stdout + out.stderr).splitlines():
            if "_HERE_=" in line:
                return os.path.dirname(os.path.realpath(line.split("_HERE_=", 1)[1].strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _nvidia_wheel_includes():
    """Headers shipped by the nvidia-* pip wheels torch depends on (cuBLAS, cuSPARSE, ...), which a
    bare toolkit may lack."""
    found = []
    for path in sys.path:
        found += glob.glob(os.path.join(path, "nvidia", "*", "include"))
        found += glob.glob(os.path.join(path, "nvidia", "cu*", "include"))
    return sorted(set(p for p in found if os.path.isdir(p)))


def _extension():
    """(ext_modules, cmdclass) for ribkernels._C, or ([], {}) when it is not to be built."""
    if _env.is_set("RIBKERNELS_NO_EXT"):
        return [], {}
    cuda_home = None if _env.is_set("RIBKERNELS_NO_CUDA") else _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
        if "TORCH_CUDA_ARCH_LIST" not in os.environ:
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list(_nvcc_archs(cuda_home))
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # pip's isolated build: no torch here, and none is needed
        print("ribkernels: torch is not importable in this build environment (pip's build isolation), "
              "so the wheel ships the C++/CUDA sources and ribkernels._C is JIT-built on first use "
              "(or build it now: pip install --no-build-isolation .)", file=sys.stderr)
        return [], {}

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cxx = ["-O3"]  # the C++ standard is the one torch.utils.cpp_extension picks for this torch
    if cuda_home:
        print(f"ribkernels: building CUDA sources with CUDA_HOME={cuda_home}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}", file=sys.stderr)
        ext = CUDAExtension(
            "ribkernels._C",
            sources + sorted(glob.glob(os.path.join("csrc", "*.cu"))),
            include_dirs=[os.path.join(ROOT, "csrc")] + _nvidia_wheel_includes(),
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
        )
    else:
        print("ribkernels: building the CPU part of the extension only", file=sys.stderr)
        ext = CppExtension(
            "ribkernels._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx},
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension()

setup(
    name="ribkernels",
    version="0.1.0",
    license="MIT",
    description="Fused DCS-Attention and IBB kernels for person re-identification (RIB)",
    # The extension's sources and the configs travel inside the package (globs: any file added to
    # csrc/ or configs/ ships without touching this list).
    packages=find_packages(include=["ribkernels", "ribkernels.*"]) + ["ribkernels.csrc", "ribkernels.configs"],
    package_dir={"ribkernels.csrc": "csrc", "ribkernels.configs": "configs"},
    package_data={"ribkernels.csrc": ["*.cpp", "*.cu", "*.h", "*.cuh", "*.hpp"],
                  "ribkernels.configs": ["*.yaml", "*/*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    # Everything `import ribkernels` and train.py import. Triton only where it has wheels (the
    # marker torch itself uses); elsewhere DCS-Attention runs on PyTorch SDPA and
    # ribkernels.available_backends() says why Triton is missing.
    install_requires=["torch>=2.4", "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
                      "timm>=1.0", "torchvision", "numpy", "pillow", "pyyaml", "matplotlib", "tqdm",
                      "ninja"],  # the JIT build of ribkernels._C (isolated installs) needs it
    extras_require={"test": ["pytest", "pytest-benchmark"],
                    "export": ["onnx", "onnxscript", "onnxruntime"],   # `ribkernels export --format onnx`
                    "tensorboard": ["tensorboard"]},                   # train.py --tensorboard
    entry_points={"console_scripts": ["ribkernels = ribkernels.cli:main"]},
)
