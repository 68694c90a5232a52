#!/usr/bin/env bash
# Builds and links the CUDA wheel of clfast on a machine without a GPU, installs it, and checks it:
#
#   bash scripts/build_cuda_wheel.sh DIR
#
# 1. A virtual environment with the registry's torch==2.11.0 (its Linux wheel is the CUDA 13.0 build, the
#    torch of the lent GPU machines): CLFAST_CUDA_VENV, default ~/.cache/clfast-cuda-venv, outside the clone
#    so that CI can cache it. An existing one with that torch is reused; else it is created (about 3 GB).
# 2. The wheel, built with nvcc (CUDACXX, else /usr/local/cuda/bin/nvcc) for CLFAST_CUDA_ARCHS=8.0;9.0, into
#    DIR; the CMake build tree is build/cuda-wheel.
# 3. The wheel installed into that environment and checked by scripts/check_cuda_wheel.py (device code for
#    sm_80 and sm_90, the shared libcudart, a CUDA kernel for every clfast op, clfast.info()'s archs). No CUDA
#    call is made, so no GPU is needed.
# This covers scripts/nvcc_check.sh (every .cu compiled for both archs) and links as well.
# JOBS (default 2) sets the build's parallelism.
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: bash scripts/build_cuda_wheel.sh DIR   (the wheel is written into DIR)" >&2
  exit 2
fi
mkdir -p "$1"
OUT_DIR=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
ROOT=$PWD
TORCH_SPEC="torch==2.11.0"      # exact pin: an unpinned torch would follow the registry
TORCH_LOCAL="2.11.0+cu130"      # what that wheel reports as torch.__version__
ARCHS="8.0;9.0"
VENV=${CLFAST_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/clfast-cuda-venv}
BASE_PY=${PYTHON:-python3}
NVCC=${CUDACXX:-}
[[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]] && NVCC=/usr/local/cuda/bin/nvcc
[[ -z "$NVCC" ]] && NVCC=$(command -v nvcc || true)
[[ -n "$NVCC" ]] || { echo "[cuda-wheel] no nvcc found (set CUDACXX)" >&2; exit 1; }
log() { echo "[cuda-wheel] $*"; }
start=$SECONDS

# ---- 1. the environment -------------------------------------------------------------------------
VPY="$VENV/bin/python"
has_torch() {
  [[ -x "$VPY" ]] && [[ "$("$VPY" -c 'import torch; print(torch.__version__)' 2> /dev/null)" == "$TORCH_LOCAL" ]]
}
if has_torch; then
  log "reusing $VENV (torch $TORCH_LOCAL)"
else
  [[ -x "$VPY" ]] || { log "creating $VENV"; "$BASE_PY" -m venv "$VENV"; }
  log "installing $TORCH_SPEC into $VENV (about 3 GB with its CUDA wheels)"
  "$VPY" -m pip install --disable-pip-version-check -q "$TORCH_SPEC"
  has_torch || { echo "[cuda-wheel] $VENV: torch is not $TORCH_LOCAL after installing $TORCH_SPEC" >&2; exit 1; }
fi
# Build tools; the constraint keeps pip from touching torch.
CONSTRAINT=$(mktemp)
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==${TORCH_LOCAL%%+*}" > "$CONSTRAINT"
if ! "$VPY" -c "import scikit_build_core, ninja" 2>/dev/null; then
  "$VPY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINT" "scikit-build-core>=0.10" ninja
fi
log "nvcc $NVCC ($("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')), torch" \
  "$("$VPY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"

# ---- 2. the wheel -------------------------------------------------------------------------------------
rm -f "$OUT_DIR"/clfast-*.whl
log "building the wheel for $ARCHS into $OUT_DIR (build tree build/cuda-wheel)"
build_start=$SECONDS
CLFAST_CUDA=ON CLFAST_CUDA_ARCHS="$ARCHS" CUDACXX="$NVCC" CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-2}" \
  "$VPY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps \
  --config-settings=build-dir=build/cuda-wheel -w "$OUT_DIR" . > "$ROOT/build/cuda-wheel.log" 2>&1 || {
  tail -50 "$ROOT/build/cuda-wheel.log"; echo "[cuda-wheel] FAIL: the wheel build failed (build/cuda-wheel.log)" >&2
  exit 1; }
WHEEL=$(ls "$OUT_DIR"/clfast-*.whl)
log "built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KB) in $((SECONDS - build_start)) s"

# ---- 3. install and check -------------------------------------------------------------------------------
"$VPY" -m pip install --disable-pip-version-check -q --force-reinstall --no-deps "$WHEEL"
# The runtime requirements the wheel names (torch held by the constraint), so that its pin is checked too.
"$VPY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINT" "$WHEEL"
# Run from DIR so that `import clfast` finds the installed wheel, not this checkout.
(cd "$OUT_DIR" && "$VPY" "$ROOT/scripts/check_cuda_wheel.py" --wheel "$WHEEL" --archs "${ARCHS//;/,}")
log "OK in $((SECONDS - start)) s"
