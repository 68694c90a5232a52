// The one way the .cu files launch a kernel, so that the same sources build for a GPU (nvcc) and for the
// CUDA emulator (the host compiler with CLFAST_CUDA_EMULATION, docs/cuda-emulation.md):
//
//   CLFAST_LAUNCH((kernel<T, A>), grid, block, shared_bytes, stream, args...);
//
// The kernel goes in parentheses because its template arguments may hold commas. Every launch is followed
// by C10_CUDA_KERNEL_LAUNCH_CHECK(), as before. CLFAST_CUDA_DISPATCH_KEY is the dispatch key the .cu files
// register under: CUDA, or CPU in the emulated build (whose CPU kernels are left out), so that every CPU
// test case runs the CUDA kernel code.
#pragma once

#define CLFAST_STRIP_PARENS(...) __VA_ARGS__

#if defined(CLFAST_CUDA_EMULATION)
#include "emulation/launch.h"
#define CLFAST_LAUNCH(kernel, grid, block, smem, stream, ...)                                                 \
  ::clfast::emu::launch(#kernel, CLFAST_STRIP_PARENS kernel, grid, block, smem, stream __VA_OPT__(, ) __VA_ARGS__)
#define CLFAST_CUDA_DISPATCH_KEY CPU
#else
#define CLFAST_LAUNCH(kernel, grid, block, smem, stream, ...) \
  CLFAST_STRIP_PARENS kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define CLFAST_CUDA_DISPATCH_KEY CUDA
#endif
