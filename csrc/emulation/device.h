// Device-side CUDA for the host compiler: the function and memory qualifiers, the built-in coordinates, block
// barriers, warp shuffles and votes, atomics and fences. Included (through the cuda_runtime.h shim, which
// the build force-includes as nvcc does) by every .cu file compiled under CLFAST_CUDA_EMULATION.
#pragma once

#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>

#include "emulation/scheduler.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __constant__
// One block runs at a time on an OS thread and its fibers share that thread, so thread-local statics are
// exactly block-shared memory; blocks on other OS threads (other callers) get their own copy.
#define __shared__ static thread_local

// Read-only views of the scheduler's coordinates for the fiber that runs now.
#define threadIdx (static_cast<const uint3&>(::clfast::emu::current_coordinates.thread))
#define blockIdx (static_cast<const uint3&>(::clfast::emu::current_coordinates.block))
#define blockDim (static_cast<const dim3&>(::clfast::emu::current_coordinates.block_dim))
#define gridDim (static_cast<const dim3&>(::clfast::emu::current_coordinates.grid_dim))
inline constexpr int warpSize = ::clfast::emu::kWarpSize;

inline void __syncthreads(std::source_location site = std::source_location::current()) {
  ::clfast::emu::block_barrier(::clfast::emu::BarrierKind::kSync, 0, site);
}
inline int __syncthreads_or(int p, std::source_location site = std::source_location::current()) {
  return ::clfast::emu::block_barrier(::clfast::emu::BarrierKind::kOr, p != 0, site);
}
inline int __syncthreads_and(int p, std::source_location site = std::source_location::current()) {
  return ::clfast::emu::block_barrier(::clfast::emu::BarrierKind::kAnd, p != 0, site);
}
inline int __syncthreads_count(int p, std::source_location site = std::source_location::current()) {
  return ::clfast::emu::block_barrier(::clfast::emu::BarrierKind::kCount, p != 0, site);
}

namespace clfast::emu {

// A shuffled value travels as its bytes (CUDA shuffles 32- and 64-bit values).
template <typename V>
V shuffle(WarpKind kind, unsigned mask, V v, int arg, int width, const std::source_location& site) {
  static_assert(std::is_trivially_copyable_v<V> && sizeof(V) <= 8, "shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  bits = warp_op(kind, mask, bits, arg, width, site);
  V out;
  std::memcpy(&out, &bits, sizeof(V));
  return out;
}

}  // namespace clfast::emu

template <typename V>
V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = warpSize,
                   std::source_location site = std::source_location::current()) {
  return ::clfast::emu::shuffle(::clfast::emu::WarpKind::kShflDown, mask, v, static_cast<int>(delta), width, site);
}
template <typename V>
V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = warpSize,
                 std::source_location site = std::source_location::current()) {
  return ::clfast::emu::shuffle(::clfast::emu::WarpKind::kShflUp, mask, v, static_cast<int>(delta), width, site);
}
template <typename V>
V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = warpSize,
                  std::source_location site = std::source_location::current()) {
  return ::clfast::emu::shuffle(::clfast::emu::WarpKind::kShflXor, mask, v, lane_mask, width, site);
}
template <typename V>
V __shfl_sync(unsigned mask, V v, int src_lane, int width = warpSize,
              std::source_location site = std::source_location::current()) {
  return ::clfast::emu::shuffle(::clfast::emu::WarpKind::kShflIdx, mask, v, src_lane, width, site);
}
inline unsigned __ballot_sync(unsigned mask, int p, std::source_location site = std::source_location::current()) {
  return static_cast<unsigned>(
      ::clfast::emu::warp_op(::clfast::emu::WarpKind::kBallot, mask, p != 0, 0, warpSize, site));
}
inline int __any_sync(unsigned mask, int p, std::source_location site = std::source_location::current()) {
  return __ballot_sync(mask, p, site) != 0u;
}
inline int __all_sync(unsigned mask, int p, std::source_location site = std::source_location::current()) {
  return __ballot_sync(mask, p, site) == mask;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location site = std::source_location::current()) {
  ::clfast::emu::warp_op(::clfast::emu::WarpKind::kSync, mask, 0, 0, warpSize, site);
}

// Fibers switch only at barriers and warp operations, so a read-modify-write is indivisible; blocks run one
// after another, so fences have nothing to order (docs/cuda-emulation.md: what the emulator cannot catch).
inline void __threadfence() {}
inline void __threadfence_block() {}
template <typename V>
V __ldg(const V* p) {
  return *p;
}
namespace clfast::emu {

template <typename V, typename F>
V read_modify_write(V* p, F f) {
  const V old = *p;
  *p = f(old);
  return old;
}

}  // namespace clfast::emu

template <typename V>
V atomicAdd(V* p, V v) {
  return ::clfast::emu::read_modify_write(p, [v](V old) { return old + v; });
}
template <typename V>
V atomicMax(V* p, V v) {
  return ::clfast::emu::read_modify_write(p, [v](V old) { return old < v ? v : old; });
}
template <typename V>
V atomicMin(V* p, V v) {
  return ::clfast::emu::read_modify_write(p, [v](V old) { return v < old ? v : old; });
}
template <typename V>
V atomicOr(V* p, V v) {
  return ::clfast::emu::read_modify_write(p, [v](V old) { return old | v; });
}
template <typename V>
V atomicExch(V* p, V v) {
  return ::clfast::emu::read_modify_write(p, [v](V) { return v; });
}
template <typename V>
V atomicCAS(V* p, V compare, V v) {
  return ::clfast::emu::read_modify_write(p, [compare, v](V old) { return old == compare ? v : old; });
}
