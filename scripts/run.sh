#!/usr/bin/env bash
# The main job: install clfast (and what it needs), then run `clfast train` on bundled data.
# With no arguments: Naive on Split-Digits (scikit-learn's bundled digits), well under a minute on 2 cores.
# Extra arguments go to `clfast train` (e.g. --scenario split-mnist --epochs 1 --out results --plot).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m clfast train "$@"
