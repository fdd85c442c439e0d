#!/usr/bin/env bash
# One call on a lent GPU (SPEC §7): build the extension, run the GPU tests, run the benchmark report
# in quick mode, copy results to $OUT, print the short table last. Never installs from the network.
# Budget: ~9 minutes in all (each step has its own timeout so a hang cannot eat the lease).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu-local}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1

echo "== environment"; date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"

echo "== build the extension (in place)"
if command -v nvcc >/dev/null; then export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")}; fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
t0=$(date +%s)
timeout 150 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; rc=$?
echo "build rc=$rc in $(( $(date +%s) - t0 ))s (log: build.log)"; tail -5 "$OUT/build.log"

echo "== GPU tests"
t0=$(date +%s)
timeout 210 $PY -m pytest -q -m gpu -x --junitxml="$OUT/gpu_tests.xml" tests 2>&1 | tail -25
echo "gpu tests done in $(( $(date +%s) - t0 ))s"

echo "== benchmarks (quick)"
RES="$OUT/report"
timeout 180 $PY -m benchmarks.run --device cuda --quick --out "$RES" > "$OUT/bench.log" 2>&1; rc=$?
echo "bench rc=$rc"; tail -3 "$OUT/bench.log"
for f in "$RES"/*; do cp "$f" "$OUT/" 2>/dev/null; done
rm -rf "$RES"
echo "== short table"
cat "$OUT/report.md" 2>/dev/null || echo "no report.md (see bench.log)"
