// clfast_emu.selftest(case): small kernels that exercise the emulator itself, for tests/test_emulation.py.
// The valid cases return what the kernels computed (the test checks it against plain Python); the invalid
// ones are misuses that the layer must report as errors: they surface as RuntimeError through the same
// C10_CUDA_KERNEL_LAUNCH_CHECK the real launch sites use. Built only into the emulated library.
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>

#include "common/launch.h"

namespace clfast::emu {
namespace {

// out[t] = value written by thread (t + 1) % n through shared memory: needs a working block barrier.
__global__ void rotate_kernel(int64_t* out) {
  __shared__ int64_t sh[1024];
  const unsigned n = blockDim.x, t = threadIdx.x;
  sh[t] = static_cast<int64_t>(blockIdx.x) * 1000 + t;
  __syncthreads();
  out[blockIdx.x * n + t] = sh[(t + 1) % n];
}

// out[warp] = sum of the lane ids of each warp by a shuffle tree; out[warps] = __syncthreads_or of (t == 37).
__global__ void shuffle_kernel(int64_t* out) {
  int v = static_cast<int>(threadIdx.x % 32);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = v;
  const int any = __syncthreads_or(threadIdx.x == 37);
  if (threadIdx.x == 0) out[blockDim.x / 32] = any;
}

__global__ void divergent_barrier_kernel(int64_t* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void half_barrier_kernel(int64_t* out) {
  // Half of warp 0 waits at a full-warp shuffle while the other half waits at a barrier.
  if (threadIdx.x % 32 < 16) {
    out[0] = __shfl_down_sync(0xffffffffu, 1, 1);
  } else {
    __syncthreads();
  }
}

__global__ void bad_mask_kernel(int64_t* out) {
  // The mask leaves out lane 0, which takes part anyway.
  out[threadIdx.x] = __shfl_down_sync(0xfffffffeu, static_cast<int>(threadIdx.x), 1);
}

__global__ void exited_lane_kernel(int64_t* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

struct Big {
  char bytes[5000];
};

__global__ void big_params_kernel(Big b, int64_t* out) { out[0] = b.bytes[0]; }

__global__ void noop_kernel(int64_t* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] += 1;
}

at::Tensor selftest(const std::string& which) {
  at::Tensor out = at::zeros({4096}, at::kLong);
  int64_t* p = out.data_ptr<int64_t>();
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (which == "barrier") {
    CLFAST_LAUNCH((rotate_kernel), 3, 100, 0, stream, p);
  } else if (which == "shuffle") {
    CLFAST_LAUNCH((shuffle_kernel), 1, 256, 0, stream, p);
  } else if (which == "zero_grid") {
    CLFAST_LAUNCH((noop_kernel), 0, 32, 0, stream, p);
  } else if (which == "zero_block") {
    CLFAST_LAUNCH((noop_kernel), 1, 0, 0, stream, p);
  } else if (which == "grid_y") {
    CLFAST_LAUNCH((noop_kernel), dim3(1, 65536), 32, 0, stream, p);
  } else if (which == "grid_x") {
    CLFAST_LAUNCH((noop_kernel), dim3(1u << 31), 32, 0, stream, p);
  } else if (which == "block_size") {
    CLFAST_LAUNCH((noop_kernel), 1, 1025, 0, stream, p);
  } else if (which == "params") {
    CLFAST_LAUNCH((big_params_kernel), 1, 1, 0, stream, Big{}, p);
  } else if (which == "divergent_barrier") {
    CLFAST_LAUNCH((divergent_barrier_kernel), 1, 64, 0, stream, p);
  } else if (which == "barrier_vs_shuffle") {
    CLFAST_LAUNCH((half_barrier_kernel), 1, 64, 0, stream, p);
  } else if (which == "bad_mask") {
    CLFAST_LAUNCH((bad_mask_kernel), 1, 32, 0, stream, p);
  } else if (which == "exited_lane") {
    CLFAST_LAUNCH((exited_lane_kernel), 1, 32, 0, stream, p);
  } else if (which == "unchecked") {
    CLFAST_LAUNCH((noop_kernel), 0, 32, 0, stream, p);  // its error is not checked here ...
    CLFAST_LAUNCH((noop_kernel), 1, 32, 0, stream, p);  // ... so this launch reports it
  } else if (which == "many_blocks") {
    CLFAST_LAUNCH((noop_kernel), 100000, 1, 0, stream, p);
  } else {
    TORCH_CHECK(false, "clfast_emu.selftest: unknown case '", which, "'");
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY(clfast_emu, m) { m.def("selftest(str case) -> Tensor", &selftest); }

}  // namespace clfast::emu
