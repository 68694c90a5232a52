// The fiber scheduler's interface: the per-thread coordinates that threadIdx/blockIdx/... read, the
// block-wide barrier and the warp rendezvous that the device intrinsics (device.h) call, and the grid runner
// that launch.h calls. Implemented in src/scheduler.cpp. docs/cuda-emulation.md describes the model.
#pragma once

#include <cstdint>
#include <source_location>

#include "emulation/types.h"

namespace clfast::emu {

// Coordinates of the emulated GPU thread that runs right now. The scheduler rewrites them before it resumes
// a fiber, so a kernel reading threadIdx sees its own values (fibers of one OS thread never run at once).
struct Coordinates {
  uint3 thread{0, 0, 0}, block{0, 0, 0};
  dim3 block_dim{1, 1, 1}, grid_dim{1, 1, 1};
};
inline thread_local Coordinates current_coordinates;

// Block-wide barriers: every live thread of the block must arrive at the same call site.
enum class BarrierKind : uint8_t { kSync, kOr, kAnd, kCount };
int block_barrier(BarrierKind kind, int predicate, const std::source_location& site);

// Warp rendezvous: every lane named in `mask` must arrive with the same operation and the same mask; lanes
// outside a full warp, exited lanes and lanes at another barrier are reported as errors.
enum class WarpKind : uint8_t { kShflDown, kShflUp, kShflXor, kShflIdx, kBallot, kSync };
uint64_t warp_op(WarpKind kind, unsigned mask, uint64_t value, int arg, int width,
                 const std::source_location& site);

// One launch as the scheduler sees it: the checked configuration and a type-erased body that runs the
// kernel for the current thread.
struct LaunchSpec {
  const char* name;
  dim3 grid, block;
  size_t dynamic_smem;
  size_t param_bytes;
  void (*body)(void* closure);
  void* closure;
};

// Checks the configuration and runs the grid (blocks one after another, each block's threads as fibers).
// Configuration and execution errors become the pending error that C10_CUDA_KERNEL_LAUNCH_CHECK reports.
void run_launch(const LaunchSpec& spec);

// The pending error (cudaGetLastError semantics) and its message.
cudaError_t take_error(bool clear);
const char* error_message();
void set_error(cudaError_t code, const char* message);

// Throws a c10::Error naming the pending error, if any (C10_CUDA_KERNEL_LAUNCH_CHECK).
void check_last_launch(const char* file, int line);

// The emulated device's multiprocessor count: CLFAST_EMU_SM_COUNT (1..1024), default 4.
int sm_count();

}  // namespace clfast::emu
