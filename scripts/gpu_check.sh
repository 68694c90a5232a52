#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (one H200, torch 2.11 on Python 3.12, 16 cores, no package
# registry): builds this working tree with CUDA against the torch installed there and runs what a GPU can tell.
#
#   bash scripts/gpu_check.sh OUTDIR
#
# Steps, in order, each under its own timeout, all within GPU_CHECK_BUDGET_S seconds (default 450) of wall time:
#   build       pip install --no-build-isolation --no-deps -e . with CLFAST_CUDA=ON, CLFAST_CUDA_ARCHS (default 9.0,
#               the H200's only) and JOBS (default 16) compile jobs; build tree build/gpu-check
#   import      clfast.info() reports the CUDA kernels and a usable device
#   tests       pytest -k cuda: every device-parametrized case on cuda, and the CUDA-only tests (the suite adds
#               cuda to its devices when a CUDA build runs on a GPU: clfast/testing/cases.py)
#   memcheck, racecheck, synccheck
#               compute-sanitizer on scripts/gpu_sanitize_ops.py (every op on CUDA tensors)
#   bench_state_ops, bench_batch_renorm, bench_plugins
#               the benchmarks in quick mode with --device cuda
# GPU_CHECK_STEPS (comma list, default all) picks steps for a rerun; build and import always run (a rebuild of
# an unchanged tree is quick). OUTDIR gets at most 8 files, what a device call brings back: build.log, tests.log,
# sanitizer.log, bench.log, the benchmarks' JSON (named after the device) and summary.txt.
# Exit status: 0 every step passed, 1 a step failed or ran out of time, 2 usage, 3 no GPU here (nothing built).
set -uo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: bash scripts/gpu_check.sh OUTDIR" >&2
  exit 2
fi
PY=${PYTHON:-python3}

# ---- a GPU, or nothing at all ------------------------------------------------------------------------------
if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu_check: needs a GPU: nvidia-smi is missing or lists no device here. Nothing was built or run." >&2
  exit 3
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1; then
  echo "gpu_check: needs a GPU: $PY's torch sees no CUDA device (torch.cuda.is_available() is False)." \
       "Nothing was built or run." >&2
  exit 3
fi

mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
BUDGET=${GPU_CHECK_BUDGET_S:-450}
DEADLINE=$((SECONDS + BUDGET))
STEPS=${GPU_CHECK_STEPS:-tests,memcheck,racecheck,synccheck,bench_state_ops,bench_batch_renorm,bench_plugins}
SUMMARY=()
FAILED=0

wanted() { [[ ",$STEPS," == *",$1,"* ]]; }

# step NAME MAX_SECONDS LOG COMMAND...: runs COMMAND (output appended to LOG) under the smaller of MAX_SECONDS
# and the time left before the deadline; records the outcome.
step() {
  local name=$1 max=$2 log=$3
  shift 3
  local left=$((DEADLINE - SECONDS - 5))
  local limit=$((max < left ? max : left))
  local status
  if ((limit < 10)); then
    status="SKIPPED (out of time)"
    FAILED=1
    SUMMARY+=("$(printf '%-20s %-22s %5s s  %s' "$name" "$status" 0 "${log##*/}")")
    echo "[gpu-check] $name: $status"
    return 1
  fi
  echo "===== $name (limit ${limit} s): $*" >> "$log"
  echo "[gpu-check] $name (limit ${limit} s)"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  case $rc in
    0) status=OK ;;
    124 | 137) status="TIMEOUT" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  ((rc == 0)) || FAILED=1
  echo "===== $name: $status after $((SECONDS - t0)) s" >> "$log"
  SUMMARY+=("$(printf '%-20s %-22s %5s s  %s' "$name" "$status" $((SECONDS - t0)) "${log##*/}")")
  echo "[gpu-check] $name: $status in $((SECONDS - t0)) s"
  return $rc
}

finish() {
  {
    echo "gpu_check on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)," \
         "$("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1), $((SECONDS)) s in all"
    printf '%s\n' "${SUMMARY[@]}"
    if ((FAILED)); then echo "RESULT: FAILED"; else echo "RESULT: OK"; fi
  } > "$OUT/summary.txt"
  cat "$OUT/summary.txt"
  exit "$FAILED"
}

# ---- build ------------------------------------------------------------------------------------------------------
{
  nvidia-smi
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
  command -v nvcc && nvcc --version
} > "$OUT/build.log" 2>&1
step build 240 "$OUT/build.log" env CLFAST_CUDA=ON CLFAST_CUDA_ARCHS="${CLFAST_CUDA_ARCHS:-9.0}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-16}" "$PY" -m pip install -v --no-build-isolation --no-deps \
  --config-settings=build-dir=build/gpu-check -e . || finish
step import 60 "$OUT/build.log" "$PY" -c "
import clfast, json
data = clfast.info()
print(json.dumps(data))
assert data['devices'] == ['cpu', 'cuda'] and data['cuda_available'], 'no usable CUDA build'" || finish

# ---- tests and sanitizers ----------------------------------------------------------------------------------------
if wanted tests; then
  # test_cuda_build.py matches -k cuda by its name but checks the GPU-less build: left to CI.
  step tests 150 "$OUT/tests.log" "$PY" -m pytest -q -rfE -p no:cacheprovider -k "cuda and not test_cuda_build" tests
fi
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck; do
  if wanted "$tool"; then
    # No caching allocator: each tensor its own allocation, so an access past a tensor leaves its allocation.
    step "$tool" 60 "$OUT/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" \
      --error-exitcode 9 "$PY" scripts/gpu_sanitize_ops.py
  fi
done

# ---- benchmarks --------------------------------------------------------------------------------------------------
# Each writes JSON and markdown; the markdown is printed into bench.log too, so only the JSON is kept.
BENCH_DIR=$(mktemp -d)
trap 'rm -rf "$BENCH_DIR"' EXIT
wanted bench_state_ops && step bench_state_ops 60 "$OUT/bench.log" \
  "$PY" benchmarks/bench_state_ops.py --quick --device cuda --out "$BENCH_DIR"
wanted bench_batch_renorm && step bench_batch_renorm 60 "$OUT/bench.log" \
  "$PY" benchmarks/bench_batch_renorm.py --quick --device cuda --out "$BENCH_DIR"
wanted bench_plugins && step bench_plugins 90 "$OUT/bench.log" \
  "$PY" benchmarks/bench_plugins.py --quick --device cuda --out "$BENCH_DIR"
cp "$BENCH_DIR"/*.json "$OUT"/ 2> /dev/null
finish
