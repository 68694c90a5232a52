// The host side of the CUDA emulator: the pending-error state behind cudaGetLastError and
// C10_CUDA_KERNEL_LAUNCH_CHECK, the emulated device's properties, and the runtime API of the
// cuda_runtime.h shim.
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "emulation/scheduler.h"

namespace clfast::emu {
namespace {

// Launches on one OS thread never interleave with another's, so errors are per OS thread like CUDA's.
thread_local cudaError_t pending = cudaSuccess;
thread_local std::string pending_message;

int read_sm_count() {
  const char* env = std::getenv("CLFAST_EMU_SM_COUNT");
  if (env == nullptr || *env == '\0') return 4;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  TORCH_CHECK(*end == '\0' && v >= 1 && v <= 1024,
              "CLFAST_EMU_SM_COUNT must be an integer in [1, 1024], got '", env, "'");
  return static_cast<int>(v);
}

}  // namespace

cudaError_t take_error(bool clear) {
  const cudaError_t e = pending;
  if (clear) {
    pending = cudaSuccess;
    pending_message.clear();
  }
  return e;
}

const char* error_message() { return pending_message.c_str(); }

void set_error(cudaError_t code, const char* message) {
  pending = code;
  pending_message = message;
}

void check_last_launch(const char* file, int line) {
  if (pending == cudaSuccess) return;
  const std::string message = pending_message;
  const cudaError_t code = take_error(true);
  TORCH_CHECK(false, "CUDA error (emulated): ", cudaGetErrorString(code), " at ", file, ":", line, ": ", message);
}

int sm_count() {
  static const int count = read_sm_count();  // read once, like the real property
  return count;
}

}  // namespace clfast::emu

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() { return clfast::emu::take_error(true); }
cudaError_t cudaPeekAtLastError() { return clfast::emu::take_error(false); }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  using namespace clfast::emu;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = sm_count(); return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
    case cudaDevAttrMaxBlockDimX: *value = static_cast<int>(kMaxThreadsPerBlock); return cudaSuccess;
    case cudaDevAttrMaxGridDimX: *value = static_cast<int>(kMaxGridX); return cudaSuccess;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ: *value = static_cast<int>(kMaxGridYZ); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(kMaxStaticSharedBytes); return cudaSuccess;
    case cudaDevAttrWarpSize: *value = kWarpSize; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  using namespace clfast::emu;
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "clfast CUDA emulator (%d SMs)", sm_count());
  prop->multiProcessorCount = sm_count();
  prop->maxThreadsPerBlock = static_cast<int>(kMaxThreadsPerBlock);
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = static_cast<int>(kMaxThreadsPerBlock);
  prop->maxThreadsDim[2] = static_cast<int>(kMaxBlockDimZ);
  prop->maxGridSize[0] = static_cast<int>(kMaxGridX);
  prop->maxGridSize[1] = prop->maxGridSize[2] = static_cast<int>(kMaxGridYZ);
  prop->sharedMemPerBlock = kMaxStaticSharedBytes;
  prop->warpSize = kWarpSize;
  prop->major = 9;
  prop->minor = 0;
  return cudaSuccess;
}
