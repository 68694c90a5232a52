// CUDA kernels of the clfast state ops: multi-tensor launches around the functors of
// elementwise.h (the same per-element math as the CPU kernels).
//
// Launch shape: tensors are grouped by (dtype, variant); each launch takes up to kMaxTensors
// tensors whose pointers travel in the kernel parameters, and each block processes one chunk
// of kChunk elements of one tensor (found by a binary search over the per-tensor first block).
// Reductions write one partial per block and a single-block kernel sums the partials in a fixed
// order: results are deterministic and the value never leaves the device (no host sync).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#include "common/dispatch.h"
#include "common/launch.h"
#include "state_ops/impl.h"

namespace clfast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16384;  // elements per block (64 per thread)
constexpr int kMaxTensors = 64;    // tensors per launch (kernel parameter space: ~2.6 KB of 4 KB)

struct TensorBatch {
  void* l0[kMaxTensors];
  void* l1[kMaxTensors];
  int64_t numel[kMaxTensors];
  int64_t flat_offset[kMaxTensors];     // offset into the flat buffers
  int32_t index[kMaxTensors];           // position of the tensor in the op's list
  int32_t block_start[kMaxTensors + 1];  // first block of each tensor within this launch
  int32_t count;
};

template <typename P>
struct FlatPtrs {
  P* f[kMaxFlat];
};

__device__ __forceinline__ int find_tensor(const TensorBatch& b) {
  int lo = 0;
  int hi = b.count - 1;
  const int block = static_cast<int>(blockIdx.x);
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (b.block_start[mid] <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Sum over the block, in a fixed order (warp shuffles, then the warps' sums).
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  A total = A(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  }
  return total;  // valid in thread 0
}

template <typename A>
__device__ __forceinline__ A nan_max(A a, A b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

template <typename A>
__device__ A block_max(A v) {
  __shared__ A warp_max[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_max[warp] = v;
  __syncthreads();
  A total = warp_max[0];
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) total = nan_max(total, warp_max[w]);
  }
  return total;
}

template <typename F, typename T, typename P>
__global__ void __launch_bounds__(kThreads)
    list_flat_kernel(const TensorBatch batch, const FlatPtrs<P> flat, const F f, double* partials) {
  using A = typename F::A;
  const int t = find_tensor(batch);
  const int64_t begin = static_cast<int64_t>(blockIdx.x - batch.block_start[t]) * kChunk;
  const int64_t remaining = batch.numel[t] - begin;
  const int64_t n = remaining < kChunk ? remaining : kChunk;
  const int64_t fo = batch.flat_offset[t] + begin;
  Ptrs<T, P> p;
  p.l[0] = batch.l0[t] ? static_cast<T*>(batch.l0[t]) + begin : nullptr;
  p.l[1] = batch.l1[t] ? static_cast<T*>(batch.l1[t]) + begin : nullptr;
#pragma unroll
  for (int j = 0; j < kMaxFlat; ++j) p.f[j] = flat.f[j] ? flat.f[j] + fo : nullptr;
  A acc = A(0);
#pragma unroll 4
  for (int64_t k = threadIdx.x; k < n; k += kThreads) {
    if constexpr (F::kReduces) {
      acc += f(p, k);
    } else {
      f(p, k);
    }
  }
  if constexpr (F::kReduces) {
    const double total = block_sum(static_cast<double>(acc));
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
  }
}

// out = scale * sum(partials[0:n]) in a fixed order; one block.
template <typename P>
__global__ void __launch_bounds__(kThreads) finalize_sum_kernel(const double* partials, int64_t n, double scale,
                                                                P* out) {
  double v = 0.0;
  for (int64_t k = threadIdx.x; k < n; k += kThreads) v += partials[k];
  const double total = block_sum(v);
  if (threadIdx.x == 0) *out = static_cast<P>(scale * total);
}

template <typename P>
__global__ void __launch_bounds__(kThreads) max_partial_kernel(const P* x, int64_t n, P* partials) {
  P m = -std::numeric_limits<P>::infinity();
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    m = nan_max(m, x[k]);
  }
  const P total = block_max(m);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// out[0] = max(partials); if `inverse`, out[0] = safe_inverse_of_max(max) instead.
template <typename P>
__global__ void __launch_bounds__(kThreads) finalize_max_kernel(const P* partials, int64_t n, bool inverse, P* out) {
  P m = -std::numeric_limits<P>::infinity();
  for (int64_t k = threadIdx.x; k < n; k += kThreads) m = nan_max(m, partials[k]);
  const P total = block_max(m);
  if (threadIdx.x == 0) *out = inverse ? safe_inverse_of_max<P>(total) : total;
}

template <typename P>
__global__ void __launch_bounds__(kThreads)
    rwalk_weights_kernel(const P* fisher, const P* scores, const P* inverses, int64_t n, P* out) {
  const P inv_f = inverses[0];
  const P inv_s = inverses[1];
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    out[k] = rwalk_weight<P>(fisher[k], scores[k], inv_f, inv_s);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) nonfinite_kernel(const TensorBatch batch, bool* flags) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const int t = find_tensor(batch);
  const int64_t begin = static_cast<int64_t>(blockIdx.x - batch.block_start[t]) * kChunk;
  const int64_t remaining = batch.numel[t] - begin;
  const int64_t n = remaining < kChunk ? remaining : kChunk;
  const T* x = static_cast<const T*>(batch.l0[t]) + begin;
  bool bad = false;
  for (int64_t k = threadIdx.x; k < n; k += kThreads) bad |= !is_finite_value(static_cast<C>(x[k]));
  if (__syncthreads_or(bad) && threadIdx.x == 0) flags[batch.index[t]] = true;
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads * 4 - 1) / (kThreads * 4);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 4096)));
}

// Tensors grouped by (dtype, variant), cut into launches of at most kMaxTensors tensors.
struct Launch {
  at::ScalarType dtype;
  uint8_t variant;
  TensorBatch batch;
  int32_t blocks;
};

std::vector<Launch> plan_launches(const ListFlatCall& call) {
  std::map<std::pair<int, int>, std::vector<size_t>> groups;
  for (size_t i = 0; i < call.size(); ++i) {
    const int64_t n = call.offsets[i + 1] - call.offsets[i];
    if (n == 0 || !call.active[i]) continue;
    groups[{static_cast<int>(call.dtype[i]), call.variant[i]}].push_back(i);
  }
  std::vector<Launch> launches;
  for (const auto& [key, idx] : groups) {
    Launch cur{static_cast<at::ScalarType>(key.first), static_cast<uint8_t>(key.second), {}, 0};
    cur.batch.count = 0;
    for (size_t i : idx) {
      const int64_t n = call.offsets[i + 1] - call.offsets[i];
      const int64_t blocks = (n + kChunk - 1) / kChunk;
      TORCH_CHECK(blocks < std::numeric_limits<int32_t>::max() / 2, "clfast: tensor too large (", n, " elements)");
      if (cur.batch.count == kMaxTensors || cur.blocks + blocks > std::numeric_limits<int32_t>::max() / 2) {
        cur.batch.block_start[cur.batch.count] = cur.blocks;
        launches.push_back(cur);
        cur.batch.count = 0;
        cur.blocks = 0;
      }
      const int c = cur.batch.count++;
      cur.batch.l0[c] = call.list0[i];
      cur.batch.l1[c] = call.list1[i];
      cur.batch.numel[c] = n;
      cur.batch.flat_offset[c] = call.offsets[i];
      cur.batch.index[c] = static_cast<int32_t>(i);
      cur.batch.block_start[c] = cur.blocks;
      cur.blocks += static_cast<int32_t>(blocks);
    }
    if (cur.batch.count > 0) {
      cur.batch.block_start[cur.batch.count] = cur.blocks;
      launches.push_back(cur);
    }
  }
  return launches;
}

struct CudaRunner {
  // Runs every launch; for reducing functors, writes one double partial per block into
  // `partials` (sized by count_blocks) in launch order.
  template <typename Make>
  static void run(const ListFlatCall& call, const std::vector<Launch>& launches, Make&& make, double* partials) {
    auto stream = c10::cuda::getCurrentCUDAStream(call.device.index());
    int64_t block_offset = 0;
    for (const auto& l : launches) {
      dispatch_state_type(call.state_dtype, [&](auto st) {
        using P = typename decltype(st)::type;
        FlatPtrs<P> flat{};
        for (int j = 0; j < kMaxFlat; ++j) flat.f[j] = static_cast<P*>(call.flat[j]);
        dispatch_model_type(l.dtype, [&](auto pt) {
          using T = typename decltype(pt)::type;
          const auto f = make(pt, st, l.variant);
          double* part = partials ? partials + block_offset : nullptr;
          CLFAST_LAUNCH((list_flat_kernel<std::decay_t<decltype(f)>, T, P>), l.blocks, kThreads, 0, stream,
              l.batch, flat, f, part);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
      block_offset += l.blocks;
    }
  }

  template <typename Make>
  static at::Tensor reduce(const ListFlatCall& call, Make&& make, double scale) {
    c10::cuda::CUDAGuard guard(call.device);
    at::Tensor out = at::empty({}, at::TensorOptions().dtype(call.state_dtype).device(call.device));
    const std::vector<Launch> launches = plan_launches(call);
    int64_t total_blocks = 0;
    for (const auto& l : launches) total_blocks += l.blocks;
    at::Tensor partials = at::empty({std::max<int64_t>(total_blocks, 1)},
                                    at::TensorOptions().dtype(at::kDouble).device(call.device));
    run(call, launches, make, partials.data_ptr<double>());
    auto stream = c10::cuda::getCurrentCUDAStream(call.device.index());
    dispatch_state_type(call.state_dtype, [&](auto st) {
      using P = typename decltype(st)::type;
      CLFAST_LAUNCH((finalize_sum_kernel<P>), 1, kThreads, 0, stream,
          partials.data_ptr<double>(), total_blocks, scale, out.data_ptr<P>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
  }

  template <typename Make>
  static void apply(const ListFlatCall& call, Make&& make) {
    c10::cuda::CUDAGuard guard(call.device);
    run(call, plan_launches(call), make, nullptr);
  }

  // Writes max(x) (or its safe inverse) into *out on the device.
  template <typename P>
  static void max_into(const P* x, int64_t n, bool inverse, P* out, const at::Device& device) {
    auto stream = c10::cuda::getCurrentCUDAStream(device.index());
    const int grid = grid_for(n);
    at::Tensor partials = at::empty({grid}, at::TensorOptions().dtype(c10::CppTypeToScalarType<P>::value).device(device));
    CLFAST_LAUNCH((max_partial_kernel<P>), grid, kThreads, 0, stream, x, n, partials.data_ptr<P>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    CLFAST_LAUNCH((finalize_max_kernel<P>), 1, kThreads, 0, stream, partials.data_ptr<P>(), grid, inverse, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static at::Tensor max(const at::Tensor& flat) {
    c10::cuda::CUDAGuard guard(flat.device());
    at::Tensor out = at::empty({}, flat.options());
    dispatch_state_type(flat.scalar_type(), [&](auto st) {
      using P = typename decltype(st)::type;
      max_into<P>(flat.data_ptr<P>(), flat.numel(), false, out.data_ptr<P>(), flat.device());
    });
    return out;
  }

  static at::Tensor rwalk_weights(const at::Tensor& fisher, const at::Tensor& scores) {
    c10::cuda::CUDAGuard guard(fisher.device());
    at::Tensor out = at::empty_like(fisher);
    const int64_t n = fisher.numel();
    if (n == 0) return out;
    at::Tensor inverses = at::empty({2}, fisher.options());
    auto stream = c10::cuda::getCurrentCUDAStream(fisher.device().index());
    dispatch_state_type(fisher.scalar_type(), [&](auto st) {
      using P = typename decltype(st)::type;
      P* inv = inverses.data_ptr<P>();
      max_into<P>(fisher.data_ptr<P>(), n, true, inv, fisher.device());
      max_into<P>(scores.data_ptr<P>(), n, true, inv + 1, fisher.device());
      CLFAST_LAUNCH((rwalk_weights_kernel<P>), grid_for(n), kThreads, 0, stream,
          fisher.data_ptr<P>(), scores.data_ptr<P>(), inv, n, out.data_ptr<P>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
  }

  static at::Tensor nonfinite(const std::vector<at::Tensor>& tensors) {
    const at::Device device = tensors[0].device();
    c10::cuda::CUDAGuard guard(device);
    const int64_t n = static_cast<int64_t>(tensors.size());
    at::Tensor flags = at::zeros({n}, at::TensorOptions().dtype(at::kBool).device(device));
    // A list-only "call": each block flags its tensor's slot (batch.index).
    ListFlatCall call;
    call.device = device;
    call.offsets.resize(tensors.size() + 1);
    int64_t total = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      call.offsets[i] = total;
      total += tensors[i].numel();
      call.list0.push_back(tensors[i].numel() ? tensors[i].data_ptr() : nullptr);
      call.list1.push_back(nullptr);
      call.dtype.push_back(tensors[i].scalar_type());
      call.active.push_back(1);
      call.variant.push_back(0);
    }
    call.offsets[tensors.size()] = total;
    call.total = total;
    auto stream = c10::cuda::getCurrentCUDAStream(device.index());
    for (const auto& l : plan_launches(call)) {
      dispatch_model_type(l.dtype, [&](auto pt) {
        using T = typename decltype(pt)::type;
        CLFAST_LAUNCH((nonfinite_kernel<T>), l.blocks, kThreads, 0, stream, l.batch, flags.data_ptr<bool>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    return flags;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(clfast, CLFAST_CUDA_DISPATCH_KEY, m) { CLFAST_REGISTER_STATE_OPS(m, CudaRunner); }

}  // namespace clfast
