"""ribkernels: fused DCS-Attention (Triton) and the IBB bound (C++/CUDA) for person Re-ID.

Install for development with ``pip install --no-build-isolation -e .`` (build isolation would pull a
second copy of torch).
"""
from setuptools import find_packages, setup

setup(
    name="ribkernels",
    version="0.1.0",
    description="Fused DCS-Attention and IBB kernels for person re-identification (RIB)",
    packages=find_packages(include=["ribkernels", "ribkernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "triton>=3.0", "timm>=1.0", "numpy", "pillow", "pyyaml"],
    extras_require={"test": ["pytest", "pytest-benchmark", "matplotlib", "ninja"]},
)
