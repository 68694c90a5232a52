#!/usr/bin/env bash
# Compiles every csrc/<family>/*.cu with nvcc for sm_80 and sm_90 without linking (the CMake target
# clfast_cuda_check), so CUDA code cannot rot on machines whose torch has no CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NVCC=${CUDACXX:-}
[[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]] && NVCC=/usr/local/cuda/bin/nvcc
[[ -z "$NVCC" ]] && NVCC=$(command -v nvcc || true)
if [[ -z "$NVCC" ]]; then
  echo "[nvcc-check] no nvcc found"
  [[ -n "${CI:-}" ]] && { echo "[nvcc-check] CI requires the nvcc compile check"; exit 1; }
  exit 0
fi
cmake -S . -B build/nvcc-check -G Ninja -DCLFAST_CUDA_COMPILE_CHECK=ON -DCLFAST_CUDA=OFF \
  -DCLFAST_CUDA_ARCHS="${CLFAST_CUDA_ARCHS:-8.0;9.0}" -DCMAKE_CUDA_COMPILER="$NVCC" \
  -DPython_EXECUTABLE="$(command -v "$PY")" > build/nvcc-check.log 2>&1 || { cat build/nvcc-check.log; exit 1; }
cmake --build build/nvcc-check --target clfast_cuda_check
echo "[nvcc-check] OK: csrc/*/*.cu compiled for ${CLFAST_CUDA_ARCHS:-8.0;9.0}"
