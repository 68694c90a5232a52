// Stand-in for c10/cuda/CUDAStream.h under CLFAST_CUDA_EMULATION: one synchronous stream per device.
#pragma once

#include <c10/core/Device.h>
#include <cuda_runtime.h>

namespace c10::cuda {

class CUDAStream {
 public:
  explicit CUDAStream(c10::DeviceIndex device = 0) : device_(device) {}
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return stream(); }  // NOLINT: implicit, as in c10
  c10::DeviceIndex device_index() const { return device_; }
  void synchronize() const {}

 private:
  c10::DeviceIndex device_;
};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex device = -1) { return CUDAStream(device < 0 ? 0 : device); }
inline CUDAStream getDefaultCUDAStream(c10::DeviceIndex device = -1) { return getCurrentCUDAStream(device); }

}  // namespace c10::cuda
