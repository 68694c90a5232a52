// CUDA kernels of the Batch Renormalization ops (math in math.h, checks in impl.h).
//
// One thread mapping serves both layouts: a block is CX channels x RY element-lanes (planar NCHW: 1 x 256,
// so a block reads one channel's contiguous rows; interleaved/channels-last: 32 x 8, so a warp reads 32
// neighbouring channels). blockIdx.x picks the channel tile and blockIdx.y one of `splits` slices of each
// channel's m elements.
//   training forward: Welford statistics of x - K per (slice, channel), K the channel's first element (as on
//                     the CPU, so that a large mean keeps the variance's digits) -> per-channel merge in slice
//                     order computing mean, std, r, d and the affine coefficients -> y pass.
// The slice count follows the SM count (plan()): results repeat on one GPU model, not across models.
//   backward:         Σg, Σg(x-μ) per (slice, channel) -> per-channel merge -> dx pass.
// No host synchronisation anywhere; r_max/d_max are read and grown on the device.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>

#include "batch_renorm/impl.h"
#include "batch_renorm/math.h"
#include "common/dispatch.h"
#include "common/launch.h"

namespace clfast::brn {
namespace {

constexpr int kThreads = 256;

struct Geo {
  int64_t C, S, m;
  bool interleaved;
};

// Calls f(index) for the elements k0, k0 + stride, ... (< m) of channel c, without a division per element.
template <typename F>
__device__ __forceinline__ void walk(const Geo& g, int64_t c, int64_t k0, int64_t stride, F&& f) {
  if (g.interleaved) {
    for (int64_t k = k0; k < g.m; k += stride) f(k * g.C + c);
    return;
  }
  int64_t n = k0 / g.S, s = k0 - n * g.S;
  const int64_t dq = stride / g.S, dr = stride - dq * g.S;
  for (int64_t k = k0; k < g.m; k += stride) {
    f((n * g.C + c) * g.S + s);
    n += dq;
    s += dr;
    if (s >= g.S) {
      s -= g.S;
      ++n;
    }
  }
}

struct Launch {
  dim3 block, grid;
};

// Streaming multiprocessors of the current device (cached; ATen's CUDAContext.h needs headers that a
// minimal CUDA toolkit lacks).
int sm_count() {
  static std::array<std::atomic<int>, 64> cache{};
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  int v = dev < 64 ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (v == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    if (dev < 64) cache[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

Launch plan(const Layout& l) {
  Launch p;
  p.block = l.interleaved ? dim3(32, kThreads / 32) : dim3(1, kThreads);
  const int64_t tiles = (l.C + p.block.x - 1) / p.block.x;
  const int sms = sm_count();
  const int64_t m = l.per_channel();
  int64_t splits = std::max<int64_t>(1, (4 * static_cast<int64_t>(sms) + tiles - 1) / tiles);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, m / (static_cast<int64_t>(p.block.y) * 16)));
  splits = std::min<int64_t>(splits, 1024);
  p.grid = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
  return p;
}

Geo geo_of(const Layout& l) { return Geo{l.C, l.S, l.per_channel(), l.interleaved}; }

// Tree reduction over the RY lanes of each channel column of the block; result in sh[cx] (lane 0).
template <typename V, typename Merge>
__device__ void reduce_lanes(V* sh, const Merge& merge) {
  const int cx = threadIdx.x, ry = threadIdx.y, bx = blockDim.x;
  for (int off = blockDim.y / 2; off > 0; off >>= 1) {
    if (ry < off) sh[ry * bx + cx] = merge(sh[ry * bx + cx], sh[(ry + off) * bx + cx]);
    __syncthreads();
  }
}

// The shift of channel c: its first element (planar: plane (0, c); interleaved: row 0), as in the CPU kernel.
// Statistics are accumulated on x - K, so a large mean does not eat the float32 digits of the variance.
template <typename T, typename A>
__device__ __forceinline__ A channel_shift(const T* x, const Geo& g, int64_t c) {
  return static_cast<A>(x[g.interleaved ? c : c * g.S]);
}

// Welford summaries of x - K per (slice, channel).
template <typename T, typename A>
__global__ void stats_kernel(const T* __restrict__ x, Geo g, Welford<A>* __restrict__ partial) {
  __shared__ Welford<A> sh[kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  Welford<A> w{A(0), A(0), A(0)};
  if (c < g.C) {
    const A K = channel_shift<T, A>(x, g, c);
    walk(g, c, static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y,
         static_cast<int64_t>(blockDim.y) * gridDim.y, [&](int64_t i) {
           const A v = static_cast<A>(x[i]) - K;
           w.n += A(1);
           const A delta = v - w.mean;
           w.mean += delta / w.n;
           w.m2 += delta * (v - w.mean);
         });
  }
  sh[threadIdx.y * blockDim.x + threadIdx.x] = w;
  __syncthreads();
  reduce_lanes(sh, [](Welford<A> a, Welford<A> b) { return welford_merge(a, b); });
  if (threadIdx.y == 0 && c < g.C) partial[static_cast<int64_t>(blockIdx.y) * g.C + c] = sh[threadIdx.x];
}

// Merges the slices of each channel in slice order (deterministic), undoes the shift, and computes the channel's
// statistics and affine coefficients.
template <typename T, typename P, typename A>
__global__ void train_finalize_kernel(const Welford<A>* __restrict__ partial, int splits, const T* __restrict__ x,
                                      Geo g, double eps, const P* w, const P* b, const P* rm, const P* rs,
                                      const P* r_max, const P* d_max, P* mean, P* sd, P* r, P* d, Affine<A>* aff) {
  const int64_t C = g.C;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  Welford<double> acc{0.0, 0.0, 0.0};
  for (int j = 0; j < splits; ++j) {
    const Welford<A> p = partial[static_cast<int64_t>(j) * C + c];
    acc = welford_merge(acc, Welford<double>{static_cast<double>(p.n), static_cast<double>(p.mean),
                                             static_cast<double>(p.m2)});
  }
  const double batch_mean = static_cast<double>(channel_shift<T, A>(x, g, c)) + acc.mean;
  // Rounding can leave m2 slightly below 0; a NaN must stay NaN (a `> 0 ? : 0` test would make it 0).
  const double biased = acc.m2 / acc.n;
  const double var = biased < 0.0 ? 0.0 : biased;
  const TrainChannel<A> t =
      train_channel<A>(static_cast<A>(batch_mean), static_cast<A>(var), static_cast<A>(eps), static_cast<A>(rm[c]),
                       static_cast<A>(rs[c]), static_cast<A>(*r_max), static_cast<A>(*d_max),
                       static_cast<A>(w[c]), static_cast<A>(b[c]));
  mean[c] = static_cast<P>(t.mean);
  sd[c] = static_cast<P>(t.std);
  r[c] = static_cast<P>(t.r);
  d[c] = static_cast<P>(t.d);
  aff[c] = t.affine;
}

template <typename P, typename A>
__global__ void eval_coeff_kernel(int64_t C, const P* w, const P* b, const P* rm, const P* rs, Affine<A>* aff) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < C) {
    aff[c] = eval_channel<A>(static_cast<A>(rm[c]), static_cast<A>(rs[c]), static_cast<A>(w[c]),
                             static_cast<A>(b[c]));
  }
}

template <typename T, typename A>
__global__ void affine_kernel(const T* __restrict__ x, T* __restrict__ y, Geo g, const Affine<A>* __restrict__ aff) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= g.C) return;
  const Affine<A> f = aff[c];
  walk(g, c, static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y,
       static_cast<int64_t>(blockDim.y) * gridDim.y,
       [&](int64_t i) { y[i] = static_cast<T>((static_cast<A>(x[i]) - f.center) * f.scale + f.shift); });
}

template <typename A>
struct Pair {
  A a, b;
};

template <typename T, typename P, typename A>
__global__ void grad_sums_kernel(const T* __restrict__ gy, const T* __restrict__ x, const P* __restrict__ mean, Geo g,
                                 Pair<A>* __restrict__ partial) {
  __shared__ Pair<A> sh[kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  Pair<A> s{A(0), A(0)};
  if (c < g.C) {
    const A mu = static_cast<A>(mean[c]);
    walk(g, c, static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y,
         static_cast<int64_t>(blockDim.y) * gridDim.y, [&](int64_t i) {
           const A gv = static_cast<A>(gy[i]);
           s.a += gv;
           s.b += gv * (static_cast<A>(x[i]) - mu);
         });
  }
  sh[threadIdx.y * blockDim.x + threadIdx.x] = s;
  __syncthreads();
  reduce_lanes(sh, [](Pair<A> u, Pair<A> v) { return Pair<A>{u.a + v.a, u.b + v.b}; });
  if (threadIdx.y == 0 && c < g.C) partial[static_cast<int64_t>(blockIdx.y) * g.C + c] = sh[threadIdx.x];
}

template <typename P, typename A>
__global__ void backward_finalize_kernel(const Pair<A>* __restrict__ partial, int splits, int64_t C, double m,
                                         const P* w, const P* mean, const P* sd, const P* r, const P* d, bool train,
                                         P* dw, P* db, BackwardChannel<A>* coef) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sg = 0.0, sgc = 0.0;
  for (int j = 0; j < splits; ++j) {
    sg += static_cast<double>(partial[static_cast<int64_t>(j) * C + c].a);
    sgc += static_cast<double>(partial[static_cast<int64_t>(j) * C + c].b);
  }
  const BackwardChannel<A> k =
      backward_channel<A>(static_cast<A>(sg), static_cast<A>(sgc), static_cast<A>(m), static_cast<A>(mean[c]),
                          static_cast<A>(sd[c]), static_cast<A>(r[c]), static_cast<A>(d[c]), static_cast<A>(w[c]),
                          train);
  dw[c] = static_cast<P>(k.grad_weight);
  db[c] = static_cast<P>(k.grad_bias);
  coef[c] = k;
}

template <typename T, typename A>
__global__ void dx_kernel(const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ dx, Geo g,
                          const BackwardChannel<A>* __restrict__ coef) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= g.C) return;
  const BackwardChannel<A> k = coef[c];
  walk(g, c, static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y,
       static_cast<int64_t>(blockDim.y) * gridDim.y, [&](int64_t i) {
         dx[i] = static_cast<T>(k.a * static_cast<A>(gy[i]) + k.b * (static_cast<A>(x[i]) - k.center) + k.c);
       });
}

template <typename P>
__global__ void update_kernel(P* rm, P* rs, P* r_max, P* d_max, const P* bm, const P* bs, int64_t C, double momentum,
                              double r_inc, double d_inc, double max_r, double max_d) {
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    update_running<P>(rm[c], rs[c], bm[c], bs[c], momentum);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    grow_limit<P>(*r_max, r_inc, max_r);
    grow_limit<P>(*d_max, d_inc, max_d);
  }
}

// Scratch memory from the caching allocator.
template <typename V>
V* scratch(at::Tensor& holder, int64_t count, const at::Tensor& like) {
  holder = at::empty({static_cast<int64_t>(count * sizeof(V))}, like.options().dtype(at::kByte));
  return reinterpret_cast<V*>(holder.data_ptr());
}

unsigned channel_blocks(int64_t C) { return static_cast<unsigned>((C + kThreads - 1) / kThreads); }

template <typename Fn>
void dispatch_io(at::ScalarType t, at::ScalarType p, Fn&& fn) {
  dispatch_model_type(t, [&](auto tt) { dispatch_state_type(p, [&](auto pt) { fn(tt, pt); }); });
}

struct CudaBrnRunner {
  static void train_forward(const Layout& l, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& run_mean, const at::Tensor& run_std, const at::Tensor& r_max,
                            const at::Tensor& d_max, double eps, at::Tensor& y, at::Tensor& mean, at::Tensor& std,
                            at::Tensor& r, at::Tensor& d) {
    const c10::cuda::CUDAGuard guard(l.x.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    const Launch p = plan(l);
    const Geo g = geo_of(l);
    dispatch_io(l.x.scalar_type(), weight.scalar_type(), [&](auto tt, auto pt) {
      using T = typename decltype(tt)::type;
      using P = typename decltype(pt)::type;
      using A = opmath_t<T, P>;
      at::Tensor h1, h2;
      Welford<A>* partial = scratch<Welford<A>>(h1, static_cast<int64_t>(p.grid.y) * l.C, l.x);
      Affine<A>* aff = scratch<Affine<A>>(h2, l.C, l.x);
      CLFAST_LAUNCH((stats_kernel<T, A>), p.grid, p.block, 0, stream, l.x.const_data_ptr<T>(), g, partial);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      CLFAST_LAUNCH((train_finalize_kernel<T, P, A>), channel_blocks(l.C), kThreads, 0, stream,
          partial, static_cast<int>(p.grid.y), l.x.const_data_ptr<T>(), g, eps, weight.const_data_ptr<P>(),
          bias.const_data_ptr<P>(), run_mean.const_data_ptr<P>(), run_std.const_data_ptr<P>(),
          r_max.const_data_ptr<P>(), d_max.const_data_ptr<P>(), mean.data_ptr<P>(), std.data_ptr<P>(), r.data_ptr<P>(),
          d.data_ptr<P>(), aff);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      CLFAST_LAUNCH((affine_kernel<T, A>), p.grid, p.block, 0, stream,
          l.x.const_data_ptr<T>(), y.data_ptr<T>(), g, aff);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void eval_forward(const Layout& l, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& run_mean, const at::Tensor& run_std, at::Tensor& y) {
    const c10::cuda::CUDAGuard guard(l.x.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    const Launch p = plan(l);
    const Geo g = geo_of(l);
    dispatch_io(l.x.scalar_type(), weight.scalar_type(), [&](auto tt, auto pt) {
      using T = typename decltype(tt)::type;
      using P = typename decltype(pt)::type;
      using A = opmath_t<T, P>;
      at::Tensor h;
      Affine<A>* aff = scratch<Affine<A>>(h, l.C, l.x);
      CLFAST_LAUNCH((eval_coeff_kernel<P, A>), channel_blocks(l.C), kThreads, 0, stream,
          l.C, weight.const_data_ptr<P>(), bias.const_data_ptr<P>(), run_mean.const_data_ptr<P>(),
          run_std.const_data_ptr<P>(), aff);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      CLFAST_LAUNCH((affine_kernel<T, A>), p.grid, p.block, 0, stream,
          l.x.const_data_ptr<T>(), y.data_ptr<T>(), g, aff);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void backward(const Layout& l, const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& mean,
                       const at::Tensor& std, const at::Tensor& r, const at::Tensor& d, bool train, at::Tensor& dx,
                       at::Tensor& dw, at::Tensor& db) {
    const c10::cuda::CUDAGuard guard(l.x.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    const Launch p = plan(l);
    const Geo g = geo_of(l);
    dispatch_io(l.x.scalar_type(), weight.scalar_type(), [&](auto tt, auto pt) {
      using T = typename decltype(tt)::type;
      using P = typename decltype(pt)::type;
      using A = opmath_t<T, P>;
      at::Tensor h1, h2;
      Pair<A>* partial = scratch<Pair<A>>(h1, static_cast<int64_t>(p.grid.y) * l.C, l.x);
      BackwardChannel<A>* coef = scratch<BackwardChannel<A>>(h2, l.C, l.x);
      CLFAST_LAUNCH((grad_sums_kernel<T, P, A>), p.grid, p.block, 0, stream,
          grad.const_data_ptr<T>(), l.x.const_data_ptr<T>(), mean.const_data_ptr<P>(), g, partial);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      CLFAST_LAUNCH((backward_finalize_kernel<P, A>), channel_blocks(l.C), kThreads, 0, stream,
          partial, static_cast<int>(p.grid.y), l.C, static_cast<double>(l.per_channel()), weight.const_data_ptr<P>(),
          mean.const_data_ptr<P>(), std.const_data_ptr<P>(), r.const_data_ptr<P>(), d.const_data_ptr<P>(), train,
          dw.data_ptr<P>(), db.data_ptr<P>(), coef);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      CLFAST_LAUNCH((dx_kernel<T, A>), p.grid, p.block, 0, stream,
          grad.const_data_ptr<T>(), l.x.const_data_ptr<T>(), dx.data_ptr<T>(), g, coef);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void update(const at::Tensor& run_mean, const at::Tensor& run_std, const at::Tensor& r_max,
                     const at::Tensor& d_max, const at::Tensor& batch_mean, const at::Tensor& batch_std,
                     double momentum, double r_inc, double d_inc, double max_r, double max_d) {
    const c10::cuda::CUDAGuard guard(run_mean.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_state_type(run_mean.scalar_type(), [&](auto pt) {
      using P = typename decltype(pt)::type;
      const int64_t C = run_mean.numel();
      CLFAST_LAUNCH((update_kernel<P>), std::min<unsigned>(channel_blocks(C), 64u), kThreads, 0, stream,
          run_mean.data_ptr<P>(), run_std.data_ptr<P>(), r_max.data_ptr<P>(), d_max.data_ptr<P>(),
          batch_mean.const_data_ptr<P>(), batch_std.const_data_ptr<P>(), C, momentum, r_inc, d_inc, max_r, max_d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(clfast, CLFAST_CUDA_DISPATCH_KEY, m) { CLFAST_REGISTER_BRN_OPS(m, CudaBrnRunner); }

}  // namespace clfast::brn
