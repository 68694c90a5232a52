#!/usr/bin/env bash
# Everything CI checks, from nothing: install clfast with the test tools, lint, run the whole test suite (slow
# tests included), run the suite once more through the CUDA kernel code on the CPU (scripts/cuda_emulate.sh),
# and build, link and check the real CUDA wheel against the registry's torch 2.11.0 (scripts/build_cuda_wheel.sh,
# which also covers scripts/nvcc_check.sh). Arguments go to the first pytest run.
#   CUDA_CHECKS=0   skip the two CUDA steps (a quick local run; CI runs them)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
EXTRAS=test bash scripts/install.sh
echo "[test] ruff"
$PY -m ruff check clfast tests benchmarks build_support scripts
echo "[test] pytest ($((SECONDS - START)) s so far)"
$PY -m pytest -q "$@"
if [[ "${CUDA_CHECKS:-1}" != 0 ]]; then
  echo "[test] the CUDA kernels on the CPU ($((SECONDS - START)) s so far)"
  bash scripts/cuda_emulate.sh
  echo "[test] the CUDA wheel ($((SECONDS - START)) s so far)"
  mkdir -p build
  bash scripts/build_cuda_wheel.sh build/cuda-dist
fi
echo "[test] OK in $((SECONDS - START)) s"
