#!/usr/bin/env bash
# Runs the CUDA kernel code on the CPU (docs/cuda-emulation.md): builds the emulated _C into build/emu (the .cu
# files compiled by the host compiler against csrc/emulation, registered as the CPU kernels), runs the test
# suite through it at two SM counts (the BRN kernels split their work by the SM count), then builds it once
# more with AddressSanitizer into build/emu-asan and runs the op, BRN and emulator tests under it.
# Leaves the installed clfast alone: the builds are loaded through CLFAST_EMULATED_C.
#   JOBS=2 (build parallelism)   EMU_TESTS="..." (the suite of the first run; default below)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
JOBS=${JOBS:-2}
START=$SECONDS
# The suite run against the CUDA code: ops, BRN, state, plugins, training, AR1, and the emulator's own tests.
EMU_TESTS=${EMU_TESTS:-"tests/test_emulation.py tests/test_ops_reference.py tests/test_ops_contract.py
  tests/test_ops_hostile.py tests/test_ops_hostile_scale.py tests/test_ops_registry.py tests/test_batch_renorm.py tests/test_state.py
  tests/test_plugin_common.py tests/test_plugin_ewc.py tests/test_plugin_mas.py tests/test_plugin_si.py
  tests/test_plugin_rwalk.py tests/test_avalanche_plugins_ref.py tests/test_training_hooks.py tests/test_ar1.py
  tests/test_cwr_star.py tests/test_latent_replay.py tests/test_mobilenet.py tests/test_hostile_training.py
  tests/test_optim.py tests/test_optim_fusion.py"}
# The part where the SM count changes the launch shapes (BRN splits), run at a second SM count, and under ASan.
SPLIT_TESTS="tests/test_emulation.py tests/test_batch_renorm.py tests/test_ops_reference.py tests/test_ops_hostile.py
  tests/test_ops_hostile_scale.py"

build() {  # build DIR [extra cmake args...]
  local dir=$1
  shift
  cmake -S . -B "$dir" -G Ninja -DCLFAST_CUDA=OFF -DCLFAST_CUDA_EMULATION=ON -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v "$PY")" "$@" > "$dir.cmake.log" 2>&1 || { cat "$dir.cmake.log"; exit 1; }
  cmake --build "$dir" -j "$JOBS" > "$dir.build.log" 2>&1 || { tail -50 "$dir.build.log"; exit 1; }
  local lib
  lib=$(ls "$PWD/$dir"/_C*.so)
  echo "$lib"
}

suite() {  # suite LABEL SM_COUNT TESTS...
  local label=$1 sm=$2
  shift 2
  echo "[cuda-emulate] $label: CLFAST_EMU_SM_COUNT=$sm ($((SECONDS - START)) s so far)"
  # shellcheck disable=SC2068
  CLFAST_EMU_SM_COUNT=$sm $PY -m pytest -q -p no:cacheprovider $@
}

mkdir -p build
echo "[cuda-emulate] building the emulated _C into build/emu"
LIB=$(build build/emu)
export CLFAST_EMULATED_C=$LIB
# test_clfast_train_ar1_on_split_digits: a whole CLI training run in a subprocess (95 s emulated, for ops the
# in-process AR1 tests already cover).
suite "suite" 1 $EMU_TESTS --deselect tests/test_ar1.py::test_clfast_train_ar1_on_split_digits
suite "split tests" 7 $SPLIT_TESTS

echo "[cuda-emulate] building with AddressSanitizer into build/emu-asan ($((SECONDS - START)) s so far)"
ASAN_FLAGS="-fsanitize=address -fno-omit-frame-pointer"
LIB=$(build build/emu-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS="$ASAN_FLAGS" \
  -DCMAKE_CXX_FLAGS="$ASAN_FLAGS" -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address")
export CLFAST_EMULATED_C=$LIB
# Python itself is not instrumented: the runtime is preloaded, with libstdc++ (else ASan's __cxa_throw
# interceptor finds no real __cxa_throw and every C++ exception aborts); torch's allocations are not ours to
# leak-check.
ASAN_PRELOAD="$(${CXX:-c++} -print-file-name=libasan.so) $(${CXX:-c++} -print-file-name=libstdc++.so)"
LD_PRELOAD=$ASAN_PRELOAD ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  suite "AddressSanitizer" 3 $SPLIT_TESTS
echo "[cuda-emulate] OK in $((SECONDS - START)) s"
