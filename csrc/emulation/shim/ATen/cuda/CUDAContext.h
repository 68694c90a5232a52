// Stand-in for ATen/cuda/CUDAContext.h under CLFAST_CUDA_EMULATION: the emulated device's properties (its
// multiprocessor count from CLFAST_EMU_SM_COUNT) and its stream.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

namespace at::cuda {

inline cudaDeviceProp* getCurrentDeviceProperties() {
  static thread_local cudaDeviceProp prop;
  C10_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  return &prop;
}
inline cudaDeviceProp* getDeviceProperties(c10::DeviceIndex) { return getCurrentDeviceProperties(); }
using c10::cuda::getCurrentCUDAStream;
using c10::cuda::getDefaultCUDAStream;

}  // namespace at::cuda
