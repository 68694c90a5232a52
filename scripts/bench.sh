#!/usr/bin/env bash
# The main job (until the training CLI exists): install clfast, then run the state-op benchmark.
# Extra arguments go to benchmarks/bench_state_ops.py (e.g. --quick, --compile, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" benchmarks/bench_state_ops.py "$@"
