#!/usr/bin/env bash
# Everything CI checks, from nothing: install clfast with the test tools, lint, compile the CUDA
# sources with nvcc, and run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=test bash scripts/install.sh
echo "[test] ruff"
$PY -m ruff check clfast tests benchmarks build_support
echo "[test] nvcc compile check"
mkdir -p build
bash scripts/nvcc_check.sh
echo "[test] pytest"
exec $PY -m pytest -q "$@"
