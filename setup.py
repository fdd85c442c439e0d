"""ribkernels: fused DCS-Attention (Triton) and the IBB bound (C++/CUDA) for person Re-ID.

Install for development with ``pip install --no-build-isolation -e .`` (build isolation would pull a
second copy of torch).

The C++/CUDA extension ``ribkernels._C`` (sources in ``csrc/``) is built here, with ninja:

* the CPU sources always;
* the CUDA sources when a CUDA toolkit is found: ``CUDA_HOME``, else the toolkit that ``nvcc`` on
  ``PATH`` belongs to (torch's own guess can pick another one). ``TORCH_CUDA_ARCH_LIST`` is
  respected; unset, it defaults to ``RIBKERNELS_DEFAULT_ARCHS`` below.

Environment switches: ``RIBKERNELS_NO_CUDA=1`` builds the CPU part only (fast local iteration);
``RIBKERNELS_NO_EXT=1`` builds no extension at all (the package then JIT-builds it on first use, or
falls back to eager PyTorch with one warning).
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
RIBKERNELS_DEFAULT_ARCHS = "8.0;9.0+PTX"  # sm_80 cubins also run on sm_86/sm_89


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
    if os.environ.get("RIBKERNELS_NO_EXT") == "1":
        return [], {}
    cuda_home = None if os.environ.get("RIBKERNELS_NO_CUDA") == "1" else _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", RIBKERNELS_DEFAULT_ARCHS)
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # torch is needed to build; pip installs it first with --no-build-isolation
        print("ribkernels: torch not importable, building without the C++ extension", file=sys.stderr)
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
    description="Fused DCS-Attention and IBB kernels for person re-identification (RIB)",
    packages=find_packages(include=["ribkernels", "ribkernels.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    # Everything `import ribkernels` and train.py import. Triton only where it has wheels (the
    # marker torch itself uses); elsewhere DCS-Attention runs on PyTorch SDPA and
    # ribkernels.available_backends() says why Triton is missing.
    install_requires=["torch>=2.4", "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
                      "timm>=1.0", "torchvision", "numpy", "pillow", "pyyaml", "matplotlib", "tqdm"],
    extras_require={"test": ["pytest", "pytest-benchmark", "ninja"],
                    "export": ["onnx", "onnxscript", "onnxruntime"],   # `ribkernels export --format onnx`
                    "tensorboard": ["tensorboard"]},                   # train.py --tensorboard
    entry_points={"console_scripts": ["ribkernels = ribkernels.cli:main"]},
)
