#!/usr/bin/env bash
# Install clfast, then run the state-op benchmark (bench_batch_renorm.py is run by hand, see README).
# Extra arguments go to benchmarks/bench_state_ops.py (e.g. --quick, --compile, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" benchmarks/bench_state_ops.py "$@"
