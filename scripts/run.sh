#!/usr/bin/env bash
# The main job: install clfast (and what it needs), then run `clfast compare` on bundled data.
# With no arguments: Naive, MAS, EWC, SI, RWalk, Replay and AR1 on task-incremental Split-Digits (scikit-learn's
# bundled digits), 3 seeds, about 30 s on 2 cores. Extra arguments go to `clfast compare` (e.g. --seeds 5 --out
# results --plot); `clfast train` runs one strategy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m clfast compare "$@"
