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
deps=("scikit-build-core>=0.10" "ninja")
command -v cmake >/dev/null 2>&1 || deps+=("cmake>=3.26")
if [[ "${EXTRAS:-}" == *test* ]]; then deps+=("pytest>=7" "hypothesis>=6" "numpy>=1.24" "ruff>=0.5"); fi
# The constraint keeps pip from touching the installed torch while resolving the others.
echo "torch==$TORCH_VERSION" > /tmp/clfast-torch-constraint.txt
$PIP install -c /tmp/clfast-torch-constraint.txt "${deps[@]}"
$PIP install --no-build-isolation --no-deps -e .
$PY -c "import clfast, json; print('[install] clfast', json.dumps(clfast.info()))"
