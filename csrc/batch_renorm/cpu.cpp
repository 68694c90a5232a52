// CPU kernels of the Batch Renormalization ops (math in math.h, checks in impl.h).
//
// Planar (NCHW) input: per-plane partial sums over the planes in memory order, combined per channel in
// plane order. Interleaved (channels-last, or no spatial extent) input: fixed-size row chunks produce
// per-channel partial sums combined in chunk order. Either way a result never depends on the thread count.
//
// Statistics: sums of (x - K) and (x - K)^2, with K the channel's first element (a shifted
// single pass: exact for constant channels and free of the catastrophic cancellation of raw moments),
// in double; float32 input sums blocks of at most 1024 elements in float lanes first (simd.cpp).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "batch_renorm/impl.h"
#include "batch_renorm/math.h"
#include "batch_renorm/simd.h"
#include "common/dispatch.h"

namespace clfast::brn {
namespace {

constexpr int kLanes = 8;
constexpr int64_t kChunkElems = int64_t{1} << 15;  // interleaved: rows per chunk = kChunkElems / C

// ---- generic inner loops (any activation type T, arithmetic type A; sums in double) ------------------

template <typename T, typename A>
void shifted_sums_run(const T* p, int64_t n, A K, double& s, double& ss) {
  double a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      const double v = static_cast<double>(static_cast<A>(p[i + u]) - K);
      a[u] += v;
      b[u] += v * v;
    }
  }
  for (; i < n; ++i) {
    const double v = static_cast<double>(static_cast<A>(p[i]) - K);
    a[0] += v;
    b[0] += v * v;
  }
  for (int u = 0; u < kLanes; ++u) {
    s += a[u];
    ss += b[u];
  }
}

template <typename T, typename A>
void grad_sums_run(const T* g, const T* x, int64_t n, A center, double& sg, double& sgc) {
  double a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      const double gv = static_cast<double>(g[i + u]);
      a[u] += gv;
      b[u] += gv * static_cast<double>(static_cast<A>(x[i + u]) - center);
    }
  }
  for (; i < n; ++i) {
    const double gv = static_cast<double>(g[i]);
    a[0] += gv;
    b[0] += gv * static_cast<double>(static_cast<A>(x[i]) - center);
  }
  for (int u = 0; u < kLanes; ++u) {
    sg += a[u];
    sgc += b[u];
  }
}

template <typename T, typename A>
void affine_run(const T* x, T* y, int64_t n, A center, A scale, A shift) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>((static_cast<A>(x[i]) - center) * scale + shift);
}

template <typename T, typename A>
void dx_run(const T* g, const T* x, T* out, int64_t n, A a, A b, A center, A c) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<T>(a * static_cast<A>(g[i]) + b * (static_cast<A>(x[i]) - center) + c);
  }
}

// Plane-batched forms (planes runs of S elements, stride apart), the signatures of simd.h.
template <typename T, typename A>
void shifted_sums(const T* x, int64_t planes, int64_t stride, int64_t S, A K, double& s, double& ss) {
  for (int64_t p = 0; p < planes; ++p) shifted_sums_run<T, A>(x + p * stride, S, K, s, ss);
}

template <typename T, typename A>
void grad_sums(const T* g, const T* x, int64_t planes, int64_t stride, int64_t S, A center, double& sg,
               double& sgc) {
  for (int64_t p = 0; p < planes; ++p) grad_sums_run<T, A>(g + p * stride, x + p * stride, S, center, sg, sgc);
}

template <typename T, typename A>
void affine(const T* x, T* y, int64_t planes, int64_t stride, int64_t S, A center, A scale, A shift) {
  for (int64_t p = 0; p < planes; ++p) affine_run<T, A>(x + p * stride, y + p * stride, S, center, scale, shift);
}

template <typename T, typename A>
void dx(const T* g, const T* x, T* out, int64_t planes, int64_t stride, int64_t S, A a, A b, A center, A c) {
  for (int64_t p = 0; p < planes; ++p) {
    dx_run<T, A>(g + p * stride, x + p * stride, out + p * stride, S, a, b, center, c);
  }
}

template <typename T, typename A>
void rows_shifted_sums(const T* x, int64_t rows, int64_t C, const A* K, double* s, double* ss) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const double v = static_cast<double>(static_cast<A>(x[r * C + c]) - K[c]);
      s[c] += v;
      ss[c] += v * v;
    }
  }
}

template <typename T, typename A>
void rows_grad_sums(const T* g, const T* x, int64_t rows, int64_t C, const A* center, double* sg, double* sgc) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const double gv = static_cast<double>(g[r * C + c]);
      sg[c] += gv;
      sgc[c] += gv * static_cast<double>(static_cast<A>(x[r * C + c]) - center[c]);
    }
  }
}

template <typename T, typename A>
void rows_affine(const T* x, T* y, int64_t rows, int64_t C, const A* center, const A* scale, const A* shift) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      y[r * C + c] = static_cast<T>((static_cast<A>(x[r * C + c]) - center[c]) * scale[c] + shift[c]);
    }
  }
}

template <typename T, typename A>
void rows_dx(const T* g, const T* x, T* out, int64_t rows, int64_t C, const A* a, const A* b, const A* center,
             const A* c) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < C; ++k) {
      const int64_t i = r * C + k;
      out[i] = static_cast<T>(a[k] * static_cast<A>(g[i]) + b[k] * (static_cast<A>(x[i]) - center[k]) + c[k]);
    }
  }
}

// float32 activations with float32 arithmetic take the ISA-cloned loops of simd.cpp.
template <typename T, typename A>
constexpr bool kSimd = std::is_same_v<T, float> && std::is_same_v<A, float>;

#define CLFAST_BRN_CALL(name, T, A, ...)           \
  do {                                             \
    if constexpr (kSimd<T, A>) {                   \
      simd::name(__VA_ARGS__);                     \
    } else {                                       \
      name<T, A>(__VA_ARGS__);                     \
    }                                              \
  } while (0)

// Per-channel affine coefficients, structure of arrays (so the row loops vectorise).
template <typename A>
struct AffineSoA {
  std::vector<A> center, scale, shift;
  explicit AffineSoA(int64_t C) : center(C), scale(C), shift(C) {}
  void set(int64_t c, const Affine<A>& f) {
    center[c] = f.center;
    scale[c] = f.scale;
    shift[c] = f.shift;
  }
};

// mean and biased variance from shifted sums over m elements.
inline void moments(double K, double s, double ss, double m, double& mean, double& var) {
  const double ms = s / m;
  mean = K + ms;
  var = std::max(ss / m - ms * ms, 0.0);
}

int64_t chunk_rows(int64_t C) { return std::max<int64_t>(1, kChunkElems / C); }

// Per-channel totals of [parts][C] partial sums, added in part order (so independent of the thread count).
void combine_parts(const std::vector<double>& p0, const std::vector<double>& p1, int64_t parts, int64_t C,
                   std::vector<double>& s0, std::vector<double>& s1) {
  s0.assign(static_cast<size_t>(C), 0.0);
  s1.assign(static_cast<size_t>(C), 0.0);
  for (int64_t k = 0; k < parts; ++k) {
    for (int64_t c = 0; c < C; ++c) {
      s0[c] += p0[k * C + c];
      s1[c] += p1[k * C + c];
    }
  }
}

// Interleaved layout: per-channel sums over fixed row chunks (fn(row0, nrows, s0, s1) adds a chunk's
// contribution to the chunk's own partial arrays), combined in chunk order.
template <typename F>
void chunked_channel_sums(int64_t rows, int64_t C, std::vector<double>& s0, std::vector<double>& s1, const F& fn) {
  const int64_t chunk = chunk_rows(C);
  const int64_t nchunks = (rows + chunk - 1) / chunk;
  std::vector<double> p0(static_cast<size_t>(nchunks * C), 0.0), p1(static_cast<size_t>(nchunks * C), 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t kb, int64_t ke) {
    for (int64_t k = kb; k < ke; ++k) {
      const int64_t r0 = k * chunk;
      fn(r0, std::min(rows, r0 + chunk) - r0, p0.data() + k * C, p1.data() + k * C);
    }
  });
  combine_parts(p0, p1, nchunks, C, s0, s1);
}

// Interleaved elementwise pass: fn(row0, nrows) over fixed row chunks in parallel.
template <typename F>
void chunked_rows(int64_t rows, int64_t C, const F& fn) {
  const int64_t chunk = chunk_rows(C);
  at::parallel_for(0, (rows + chunk - 1) / chunk, 1, [&](int64_t kb, int64_t ke) {
    for (int64_t k = kb; k < ke; ++k) fn(k * chunk, std::min(rows, (k + 1) * chunk) - k * chunk);
  });
}

// Planar layout: per-plane sums (fn(plane, channel, a, q) adds plane p's contribution), planes taken in
// memory order in parallel, then combined per channel in plane order (independent of the thread count).
// Streaming in memory order avoids the cache-set conflicts of walking one channel's planes C*S apart.
template <typename F>
void planar_channel_sums(int64_t N, int64_t C, int64_t S, std::vector<double>& s0, std::vector<double>& s1,
                         const F& fn) {
  std::vector<double> p0(static_cast<size_t>(N * C), 0.0), p1(static_cast<size_t>(N * C), 0.0);
  at::parallel_for(0, N * C, std::max<int64_t>(1, kChunkElems / S), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) fn(p, p % C, p0[p], p1[p]);
  });
  combine_parts(p0, p1, N, C, s0, s1);
}

// Planar elementwise pass: fn(plane, channel) over all planes in memory order, in parallel.
template <typename F>
void planar_apply(int64_t N, int64_t C, int64_t S, const F& fn) {
  at::parallel_for(0, N * C, std::max<int64_t>(1, kChunkElems / S), [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) fn(p, p % C);
  });
}

// The elementwise pass of both forwards: out = (x - center[c]) * scale[c] + shift[c], either layout.
template <typename T, typename A>
void affine_pass(const Layout& l, T* out, const AffineSoA<A>& f) {
  const T* x = l.x.const_data_ptr<T>();
  const int64_t C = l.C, S = l.S;
  if (!l.interleaved) {
    planar_apply(l.N, C, S, [&](int64_t p, int64_t c) {
      CLFAST_BRN_CALL(affine, T, A, x + p * S, out + p * S, 1, S, S, f.center[c], f.scale[c], f.shift[c]);
    });
    return;
  }
  chunked_rows(l.N, C, [&](int64_t r0, int64_t nr) {
    CLFAST_BRN_CALL(rows_affine, T, A, x + r0 * C, out + r0 * C, nr, C, f.center.data(), f.scale.data(),
                    f.shift.data());
  });
}

template <typename T, typename P>
void train_forward_typed(const Layout& l, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& run_mean, const at::Tensor& run_std, const at::Tensor& r_max_t,
                         const at::Tensor& d_max_t, double eps, at::Tensor& y, at::Tensor& mean_t,
                         at::Tensor& std_t, at::Tensor& r_t, at::Tensor& d_t) {
  using A = opmath_t<T, P>;
  const T* x = l.x.const_data_ptr<T>();
  T* out = y.data_ptr<T>();
  const P* w = weight.const_data_ptr<P>();
  const P* b = bias.const_data_ptr<P>();
  const P* rm = run_mean.const_data_ptr<P>();
  const P* rs = run_std.const_data_ptr<P>();
  const A r_max = static_cast<A>(*r_max_t.const_data_ptr<P>());
  const A d_max = static_cast<A>(*d_max_t.const_data_ptr<P>());
  P* mean = mean_t.data_ptr<P>();
  P* sd = std_t.data_ptr<P>();
  P* r = r_t.data_ptr<P>();
  P* d = d_t.data_ptr<P>();
  const int64_t C = l.C, S = l.S, N = l.N;
  const double m = static_cast<double>(l.per_channel());

  // Statistics of channel c from its shifted sums -> saved tensors and the affine coefficients.
  auto finish = [&](int64_t c, double K, double s, double ss) {
    double mu, var;
    moments(K, s, ss, m, mu, var);
    const TrainChannel<A> t = train_channel<A>(static_cast<A>(mu), static_cast<A>(var), static_cast<A>(eps),
                                               static_cast<A>(rm[c]), static_cast<A>(rs[c]), r_max, d_max,
                                               static_cast<A>(w[c]), static_cast<A>(b[c]));
    mean[c] = static_cast<P>(t.mean);
    sd[c] = static_cast<P>(t.std);
    r[c] = static_cast<P>(t.r);
    d[c] = static_cast<P>(t.d);
    return t.affine;
  };

  // Shift of each channel: its first element (planar: plane (0, c); interleaved: row 0).
  std::vector<A> K(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) K[c] = static_cast<A>(x[l.interleaved ? c : c * S]);
  std::vector<double> s, ss;
  if (!l.interleaved) {
    planar_channel_sums(N, C, S, s, ss, [&](int64_t p, int64_t c, double& a, double& q) {
      CLFAST_BRN_CALL(shifted_sums, T, A, x + p * S, 1, S, S, K[c], a, q);
    });
  } else {
    chunked_channel_sums(N, C, s, ss, [&](int64_t r0, int64_t nr, double* ps, double* pss) {
      CLFAST_BRN_CALL(rows_shifted_sums, T, A, x + r0 * C, nr, C, K.data(), ps, pss);
    });
  }
  AffineSoA<A> f(C);
  for (int64_t c = 0; c < C; ++c) f.set(c, finish(c, static_cast<double>(K[c]), s[c], ss[c]));
  affine_pass<T, A>(l, out, f);
}

template <typename T, typename P>
void eval_forward_typed(const Layout& l, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& run_mean,
                        const at::Tensor& run_std, at::Tensor& y) {
  using A = opmath_t<T, P>;
  const P* w = weight.const_data_ptr<P>();
  const P* b = bias.const_data_ptr<P>();
  const P* rm = run_mean.const_data_ptr<P>();
  const P* rs = run_std.const_data_ptr<P>();
  const int64_t C = l.C;
  AffineSoA<A> f(C);
  for (int64_t c = 0; c < C; ++c) {
    f.set(c, eval_channel<A>(static_cast<A>(rm[c]), static_cast<A>(rs[c]), static_cast<A>(w[c]),
                             static_cast<A>(b[c])));
  }
  affine_pass<T, A>(l, y.data_ptr<T>(), f);
}

template <typename T, typename P>
void backward_typed(const Layout& l, const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& mean_t,
                    const at::Tensor& std_t, const at::Tensor& r_t, const at::Tensor& d_t, bool train,
                    at::Tensor& dx_t, at::Tensor& dw_t, at::Tensor& db_t) {
  using A = opmath_t<T, P>;
  const T* x = l.x.const_data_ptr<T>();
  const T* g = grad.const_data_ptr<T>();
  T* dx = dx_t.data_ptr<T>();
  const P* w = weight.const_data_ptr<P>();
  const P* mean = mean_t.const_data_ptr<P>();
  const P* sd = std_t.const_data_ptr<P>();
  const P* r = r_t.const_data_ptr<P>();
  const P* d = d_t.const_data_ptr<P>();
  P* dw = dw_t.data_ptr<P>();
  P* db = db_t.data_ptr<P>();
  const int64_t C = l.C, S = l.S, N = l.N;
  const A m = static_cast<A>(l.per_channel());

  auto finish = [&](int64_t c, double sg, double sgc) {
    const BackwardChannel<A> k =
        backward_channel<A>(static_cast<A>(sg), static_cast<A>(sgc), m, static_cast<A>(mean[c]),
                            static_cast<A>(sd[c]), static_cast<A>(r[c]), static_cast<A>(d[c]),
                            static_cast<A>(w[c]), train);
    dw[c] = static_cast<P>(k.grad_weight);
    db[c] = static_cast<P>(k.grad_bias);
    return k;
  };

  std::vector<A> center(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) center[c] = static_cast<A>(mean[c]);
  std::vector<double> sg, sgc;
  if (!l.interleaved) {
    planar_channel_sums(N, C, S, sg, sgc, [&](int64_t p, int64_t c, double& a, double& q) {
      CLFAST_BRN_CALL(grad_sums, T, A, g + p * S, x + p * S, 1, S, S, center[c], a, q);
    });
  } else {
    chunked_channel_sums(N, C, sg, sgc, [&](int64_t r0, int64_t nr, double* a, double* q) {
      CLFAST_BRN_CALL(rows_grad_sums, T, A, g + r0 * C, x + r0 * C, nr, C, center.data(), a, q);
    });
  }
  std::vector<A> ka(static_cast<size_t>(C)), kb(static_cast<size_t>(C)), kc(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    const BackwardChannel<A> k = finish(c, sg[c], sgc[c]);
    ka[c] = k.a;
    kb[c] = k.b;
    kc[c] = k.c;
  }
  if (!l.interleaved) {
    planar_apply(N, C, S, [&](int64_t p, int64_t c) {
      const int64_t off = p * S;
      if constexpr (kSimd<T, A>) {
        simd::dx(g + off, x + off, dx + off, 1, S, S, ka[c], kb[c], center[c], kc[c]);
      } else {
        brn::dx<T, A>(g + off, x + off, dx + off, 1, S, S, ka[c], kb[c], center[c], kc[c]);
      }
    });
    return;
  }
  chunked_rows(N, C, [&](int64_t r0, int64_t nr) {
    CLFAST_BRN_CALL(rows_dx, T, A, g + r0 * C, x + r0 * C, dx + r0 * C, nr, C, ka.data(), kb.data(), center.data(),
                    kc.data());
  });
}

template <typename Fn>
void dispatch_io(at::ScalarType t, at::ScalarType p, Fn&& fn) {
  dispatch_model_type(t, [&](auto tt) {
    dispatch_state_type(p, [&](auto pt) { fn(tt, pt); });
  });
}

struct CpuBrnRunner {
  static void train_forward(const Layout& l, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& run_mean, const at::Tensor& run_std, const at::Tensor& r_max,
                            const at::Tensor& d_max, double eps, at::Tensor& y, at::Tensor& mean, at::Tensor& std,
                            at::Tensor& r, at::Tensor& d) {
    dispatch_io(l.x.scalar_type(), weight.scalar_type(), [&](auto tt, auto pt) {
      using T = typename decltype(tt)::type;
      using P = typename decltype(pt)::type;
      train_forward_typed<T, P>(l, weight, bias, run_mean, run_std, r_max, d_max, eps, y, mean, std, r, d);
    });
  }
  static void eval_forward(const Layout& l, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& run_mean, const at::Tensor& run_std, at::Tensor& y) {
    dispatch_io(l.x.scalar_type(), weight.scalar_type(), [&](auto tt, auto pt) {
      using T = typename decltype(tt)::type;
      using P = typename decltype(pt)::type;
      eval_forward_typed<T, P>(l, weight, bias, run_mean, run_std, y);
    });
  }
  static void backward(const Layout& l, const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& mean,
                       const at::Tensor& std, const at::Tensor& r, const at::Tensor& d, bool train, at::Tensor& dx,
                       at::Tensor& dw, at::Tensor& db) {
    dispatch_io(l.x.scalar_type(), weight.scalar_type(), [&](auto tt, auto pt) {
      using T = typename decltype(tt)::type;
      using P = typename decltype(pt)::type;
      backward_typed<T, P>(l, grad, weight, mean, std, r, d, train, dx, dw, db);
    });
  }
  static void update(const at::Tensor& run_mean, const at::Tensor& run_std, const at::Tensor& r_max,
                     const at::Tensor& d_max, const at::Tensor& batch_mean, const at::Tensor& batch_std,
                     double momentum, double r_inc, double d_inc, double max_r, double max_d) {
    dispatch_state_type(run_mean.scalar_type(), [&](auto pt) {
      using P = typename decltype(pt)::type;
      P* rm = run_mean.data_ptr<P>();
      P* rs = run_std.data_ptr<P>();
      const P* bm = batch_mean.const_data_ptr<P>();
      const P* bs = batch_std.const_data_ptr<P>();
      for (int64_t c = 0; c < run_mean.numel(); ++c) update_running<P>(rm[c], rs[c], bm[c], bs[c], momentum);
      grow_limit<P>(*r_max.data_ptr<P>(), r_inc, max_r);
      grow_limit<P>(*d_max.data_ptr<P>(), d_inc, max_d);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(clfast, CPU, m) { CLFAST_REGISTER_BRN_OPS(m, CpuBrnRunner); }

}  // namespace clfast::brn
