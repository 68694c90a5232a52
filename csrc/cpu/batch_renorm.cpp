// CPU kernels of the Batch Renormalization ops (math in clfast/batch_renorm.h, checks in brn_ops_impl.h).
//
// Planar (NCHW) input: one task per channel does the whole channel (statistics pass, then the
// elementwise pass while the channel is still in cache), so a channel's result never depends on the
// thread count. Interleaved (channels-last, or no spatial extent) input: fixed-size row chunks produce
// per-channel partial sums that are combined in chunk order, again independent of the thread count.
//
// Statistics: sums of (x - K) and (x - K)^2 in double, with K the channel's first element (a shifted
// single pass: exact for constant channels and free of the catastrophic cancellation of raw moments).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "clfast/batch_renorm.h"
#include "clfast/brn_ops_impl.h"
#include "clfast/dispatch.h"

namespace clfast::brn {
namespace {

constexpr int kLanes = 8;
constexpr int64_t kChunkElems = int64_t{1} << 15;  // interleaved: rows per chunk = kChunkElems / C

// Σ (x - K) and Σ (x - K)^2 over n contiguous elements, added to s and ss.
template <typename T>
void add_shifted_sums(const T* p, int64_t n, double K, double& s, double& ss) {
  double a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      const double v = static_cast<double>(p[i + u]) - K;
      a[u] += v;
      b[u] += v * v;
    }
  }
  for (; i < n; ++i) {
    const double v = static_cast<double>(p[i]) - K;
    a[0] += v;
    b[0] += v * v;
  }
  for (int u = 0; u < kLanes; ++u) {
    s += a[u];
    ss += b[u];
  }
}

// Σ g and Σ g (x - center) over n contiguous elements, added to sg and sgc.
template <typename T>
void add_grad_sums(const T* g, const T* x, int64_t n, double center, double& sg, double& sgc) {
  double a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      const double gv = static_cast<double>(g[i + u]);
      a[u] += gv;
      b[u] += gv * (static_cast<double>(x[i + u]) - center);
    }
  }
  for (; i < n; ++i) {
    const double gv = static_cast<double>(g[i]);
    a[0] += gv;
    b[0] += gv * (static_cast<double>(x[i]) - center);
  }
  for (int u = 0; u < kLanes; ++u) {
    sg += a[u];
    sgc += b[u];
  }
}

template <typename T, typename A>
void apply_affine(const T* x, T* y, int64_t n, Affine<A> f) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>((static_cast<A>(x[i]) - f.center) * f.scale + f.shift);
}

template <typename T, typename A>
void apply_dx(const T* g, const T* x, T* dx, int64_t n, const BackwardChannel<A>& k) {
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = static_cast<T>(k.a * static_cast<A>(g[i]) + k.b * (static_cast<A>(x[i]) - k.center) + k.c);
  }
}

// mean and biased variance from shifted sums over m elements.
inline void moments(double K, double s, double ss, double m, double& mean, double& var) {
  const double ms = s / m;
  mean = K + ms;
  var = std::max(ss / m - ms * ms, 0.0);
}

// Interleaved (rows x C) layout: per-channel sums of f over fixed row chunks, combined in chunk order.
// f(row_ptr_x, row_ptr_g, c, acc0, acc1) adds one element's contribution.
template <typename T, typename F>
void interleaved_sums(const T* x, const T* g, int64_t rows, int64_t C, std::vector<double>& s0,
                      std::vector<double>& s1, const F& f) {
  const int64_t chunk = std::max<int64_t>(1, kChunkElems / C);
  const int64_t nchunks = (rows + chunk - 1) / chunk;
  std::vector<double> p0(static_cast<size_t>(nchunks * C), 0.0), p1(static_cast<size_t>(nchunks * C), 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t kb, int64_t ke) {
    for (int64_t k = kb; k < ke; ++k) {
      double* a = p0.data() + k * C;
      double* b = p1.data() + k * C;
      const int64_t r1 = std::min(rows, (k + 1) * chunk);
      for (int64_t r = k * chunk; r < r1; ++r) {
        const T* xr = x + r * C;
        const T* gr = g == nullptr ? nullptr : g + r * C;
        for (int64_t c = 0; c < C; ++c) f(xr, gr, c, a[c], b[c]);
      }
    }
  });
  s0.assign(static_cast<size_t>(C), 0.0);
  s1.assign(static_cast<size_t>(C), 0.0);
  for (int64_t k = 0; k < nchunks; ++k) {
    for (int64_t c = 0; c < C; ++c) {
      s0[c] += p0[k * C + c];
      s1[c] += p1[k * C + c];
    }
  }
}

// Interleaved elementwise pass over rows: f(row, c) for every element, parallel over fixed row chunks.
template <typename F>
void interleaved_apply(int64_t rows, int64_t C, const F& f) {
  const int64_t chunk = std::max<int64_t>(1, kChunkElems / C);
  at::parallel_for(0, rows, chunk, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) f(r);
  });
}

template <typename T, typename P>
void train_forward_typed(const Layout& l, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& run_mean, const at::Tensor& run_std, const at::Tensor& r_max_t,
                         const at::Tensor& d_max_t, double eps, at::Tensor& y, at::Tensor& mean_t,
                         at::Tensor& std_t, at::Tensor& r_t, at::Tensor& d_t) {
  using A = acc_t<T, P>;
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

  auto finish = [&](int64_t c, double mu, double var) {
    const TrainChannel<A> t = train_channel<A>(static_cast<A>(mu), static_cast<A>(var), static_cast<A>(eps),
                                               static_cast<A>(rm[c]), static_cast<A>(rs[c]), r_max, d_max,
                                               static_cast<A>(w[c]), static_cast<A>(b[c]));
    mean[c] = static_cast<P>(t.mean);
    sd[c] = static_cast<P>(t.std);
    r[c] = static_cast<P>(t.r);
    d[c] = static_cast<P>(t.d);
    return t.affine;
  };

  if (!l.interleaved) {
    at::parallel_for(0, C, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const double K = static_cast<double>(x[c * S]);
        double s = 0.0, ss = 0.0;
        for (int64_t n = 0; n < N; ++n) add_shifted_sums(x + (n * C + c) * S, S, K, s, ss);
        double mu, var;
        moments(K, s, ss, m, mu, var);
        const Affine<A> f = finish(c, mu, var);
        for (int64_t n = 0; n < N; ++n) apply_affine(x + (n * C + c) * S, out + (n * C + c) * S, S, f);
      }
    });
    return;
  }
  std::vector<double> K(static_cast<size_t>(C)), s, ss;
  for (int64_t c = 0; c < C; ++c) K[c] = static_cast<double>(x[c]);
  interleaved_sums<T>(x, nullptr, N, C, s, ss, [&](const T* xr, const T*, int64_t c, double& a, double& q) {
    const double v = static_cast<double>(xr[c]) - K[c];
    a += v;
    q += v * v;
  });
  std::vector<Affine<A>> f(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    double mu, var;
    moments(K[c], s[c], ss[c], m, mu, var);
    f[c] = finish(c, mu, var);
  }
  interleaved_apply(N, C, [&](int64_t row) {
    const T* xr = x + row * C;
    T* yr = out + row * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<T>((static_cast<A>(xr[c]) - f[c].center) * f[c].scale + f[c].shift);
  });
}

template <typename T, typename P>
void eval_forward_typed(const Layout& l, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& run_mean,
                        const at::Tensor& run_std, at::Tensor& y) {
  using A = acc_t<T, P>;
  const T* x = l.x.const_data_ptr<T>();
  T* out = y.data_ptr<T>();
  const P* w = weight.const_data_ptr<P>();
  const P* b = bias.const_data_ptr<P>();
  const P* rm = run_mean.const_data_ptr<P>();
  const P* rs = run_std.const_data_ptr<P>();
  const int64_t C = l.C, S = l.S, N = l.N;
  std::vector<Affine<A>> f(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    f[c] = eval_channel<A>(static_cast<A>(rm[c]), static_cast<A>(rs[c]), static_cast<A>(w[c]), static_cast<A>(b[c]));
  }
  if (!l.interleaved) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, kChunkElems / S), [&](int64_t pb, int64_t pe) {
      for (int64_t p = pb; p < pe; ++p) apply_affine(x + p * S, out + p * S, S, f[p % C]);
    });
    return;
  }
  interleaved_apply(N, C, [&](int64_t row) {
    const T* xr = x + row * C;
    T* yr = out + row * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<T>((static_cast<A>(xr[c]) - f[c].center) * f[c].scale + f[c].shift);
  });
}

template <typename T, typename P>
void backward_typed(const Layout& l, const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& mean_t,
                    const at::Tensor& std_t, const at::Tensor& r_t, const at::Tensor& d_t, bool train,
                    at::Tensor& dx_t, at::Tensor& dw_t, at::Tensor& db_t) {
  using A = acc_t<T, P>;
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

  if (!l.interleaved) {
    at::parallel_for(0, C, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const double center = static_cast<double>(mean[c]);
        double sg = 0.0, sgc = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t off = (n * C + c) * S;
          add_grad_sums(g + off, x + off, S, center, sg, sgc);
        }
        const BackwardChannel<A> k = finish(c, sg, sgc);
        for (int64_t n = 0; n < N; ++n) {
          const int64_t off = (n * C + c) * S;
          apply_dx(g + off, x + off, dx + off, S, k);
        }
      }
    });
    return;
  }
  std::vector<double> sg, sgc;
  interleaved_sums<T>(x, g, N, C, sg, sgc, [&](const T* xr, const T* gr, int64_t c, double& a, double& q) {
    const double gv = static_cast<double>(gr[c]);
    a += gv;
    q += gv * (static_cast<double>(xr[c]) - static_cast<double>(mean[c]));
  });
  std::vector<BackwardChannel<A>> k(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) k[c] = finish(c, sg[c], sgc[c]);
  interleaved_apply(N, C, [&](int64_t row) {
    const int64_t off = row * C;
    for (int64_t c = 0; c < C; ++c) {
      const BackwardChannel<A>& q = k[c];
      dx[off + c] = static_cast<T>(q.a * static_cast<A>(g[off + c]) + q.b * (static_cast<A>(x[off + c]) - q.center) + q.c);
    }
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
