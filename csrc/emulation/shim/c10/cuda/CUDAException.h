// Stand-in for c10/cuda/CUDAException.h under CLFAST_CUDA_EMULATION: the same two checks, reporting the
// emulator's errors as c10::Error (RuntimeError in Python), as the real ones report CUDA's.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define C10_CUDA_CHECK(EXPR)                                                                        \
  do {                                                                                              \
    const cudaError_t clfast_emu_err = (EXPR);                                                      \
    TORCH_CHECK(clfast_emu_err == cudaSuccess, "CUDA error (emulated): ",                           \
                cudaGetErrorString(clfast_emu_err), ": ", ::clfast::emu::error_message());          \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::clfast::emu::check_last_launch(__FILE__, __LINE__)
