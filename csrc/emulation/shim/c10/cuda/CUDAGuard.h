// Stand-in for c10/cuda/CUDAGuard.h under CLFAST_CUDA_EMULATION: there is one emulated device and the
// tensors live on the CPU, so the guards accept any device and switch nothing.
#pragma once

#include <c10/core/Device.h>

#include <optional>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
};

struct OptionalCUDAGuard {
  OptionalCUDAGuard() = default;
  explicit OptionalCUDAGuard(std::optional<c10::Device>) {}
  explicit OptionalCUDAGuard(c10::Device) {}
};

}  // namespace c10::cuda
