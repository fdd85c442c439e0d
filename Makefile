# Two commands set everything up from a fresh clone:
#   make train   venv + install + train and evaluate on the built-in synthetic dataset (CPU ok)
#   make test    venv + install + the whole test suite (Triton in interpreter mode without a GPU)
# Both are safe to re-run; the install steps are skipped when nothing they depend on changed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

# The extension's CUDA sources are compiled whenever nvcc exists (even without a GPU), so a CPU
# machine still proves they build. torch's own CUDA_HOME detection can pick the wrong toolkit, so
# setup.py asks nvcc where its toolkit is (nvcc on PATH may be a wrapper script) unless CUDA_HOME
# is set.

CSRC := $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h csrc/*.cuh)

.PHONY: install test train bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: requirements.txt | $(VENV)/bin/python
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements.txt
	touch $@

# --no-build-isolation: an isolated build would download a second torch to compile against.
$(VENV)/.built: $(VENV)/.deps setup.py $(CSRC)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.built

test: install
	$(PY) -m pytest -q

# RIB-DCS on the built-in synthetic dataset (configs/synthetic_rib_dcs_cpu.yaml), then its result
# beside the committed baseline (experiments/results/demo_baseline.json) and the demo's targets.
train: install
	@start=$$(date +%s); run=runs/make_train-$$(date +%Y%m%d-%H%M%S); \
	$(PY) train.py --output-dir $$run && $(PY) -m experiments.demo_report $$run --started $$start

bench: install
	$(PY) -m benchmarks.run --device cpu --quick

clean:
	rm -rf build *.egg-info ribkernels/*.so
