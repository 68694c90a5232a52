// CPU kernels of the clfast state ops: at::parallel_for over fixed-size chunks of the
// concatenated index space of all model tensors, around the functors of elementwise.h.
//
// Chunks have a fixed size and partial sums are combined in chunk order, so every result
// is the same whatever the number of threads.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/dispatch.h"
#include "state_ops/impl.h"

namespace clfast {
namespace {

constexpr int64_t kChunk = int64_t{1} << 16;

// The loops below carry no dependency from one element to another: check_distinct refuses overlapping arguments
// (an in-place alias reads and writes the same element k). Telling the compiler so lets it vectorise functors with
// many pointers (an optimizer step with a penalty and a path integral has seven), for which GCC would otherwise need
// more runtime alias checks than it is willing to emit and keeps the loop scalar (measured: 3x slower).
#if defined(__clang__)
#define CLFAST_NO_LOOP_CARRIED_DEPENDENCY _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define CLFAST_NO_LOOP_CARRIED_DEPENDENCY _Pragma("GCC ivdep")
#else
#define CLFAST_NO_LOOP_CARRIED_DEPENDENCY
#endif

// A functor whose reduced value is the quadratic penalty Omega (theta - theta*)^2 over f[kPenaltyFlat] and the next
// buffer, to be summed apart (an optimizer step with a penalty and a path integral): its kSumPenaltyApart is true.
template <typename F, typename = void>
struct SumsPenaltyApart : std::false_type {};
template <typename F>
struct SumsPenaltyApart<F, std::void_t<decltype(F::kSumPenaltyApart)>> : std::bool_constant<F::kSumPenaltyApart> {};

constexpr int kLanes = 8;

// Runs f over one contiguous piece of n elements; returns the (double) sum of f for reducing functors.
template <typename F, typename T, typename P>
double run_piece(const F& f, const Ptrs<T, P>& p, int64_t n) {
  using A = typename F::A;
  if constexpr (F::kReduces && SumsPenaltyApart<F>::value) {
    // An optimizer step with the penalty and a path integral inside: GCC does not vectorise a loop that writes this
    // many arrays and reduces (measured 2.5x slower than the same step without the sum). Per block, the penalty's value is summed
    // first (theta, Omega, theta* then sit in L1 for the step), in the lane order of the loop below, so the sum is
    // bit for bit that loop's; then the step runs as a plain loop, its returned value unused.
    constexpr int64_t kBlock = 256 * kLanes;
    const T* theta = p.l[0];
    const P* omega = p.f[F::kPenaltyFlat];
    const P* anchor = p.f[F::kPenaltyFlat + 1];
    A acc[kLanes] = {};
    for (int64_t begin = 0; begin < n; begin += kBlock) {
      const int64_t end = std::min(n, begin + kBlock);
      int64_t k = begin;
      for (; k + kLanes <= end; k += kLanes) {
        for (int u = 0; u < kLanes; ++u) {
          const A d = static_cast<A>(theta[k + u]) - static_cast<A>(anchor[k + u]);
          acc[u] += static_cast<A>(omega[k + u]) * d * d;
        }
      }
      for (; k < end; ++k) {
        const A d = static_cast<A>(theta[k]) - static_cast<A>(anchor[k]);
        acc[0] += static_cast<A>(omega[k]) * d * d;
      }
      CLFAST_NO_LOOP_CARRIED_DEPENDENCY
      for (k = begin; k < end; ++k) (void)f(p, k);
    }
    double sum = 0.0;
    for (int u = 0; u < kLanes; ++u) sum += static_cast<double>(acc[u]);
    return sum;
  } else if constexpr (F::kReduces) {
    // Several independent accumulators let the compiler keep more than one add in flight: element k of the piece
    // goes to lane k % kLanes, in order, so the sum does not depend on the vector width the compiler picks.
    A acc[kLanes] = {};
    int64_t k = 0;
    CLFAST_NO_LOOP_CARRIED_DEPENDENCY
    for (; k + kLanes <= n; k += kLanes) {
      for (int u = 0; u < kLanes; ++u) acc[u] += f(p, k + u);
    }
    for (; k < n; ++k) acc[0] += f(p, k);
    double sum = 0.0;
    for (int u = 0; u < kLanes; ++u) sum += static_cast<double>(acc[u]);
    return sum;
  } else {
    CLFAST_NO_LOOP_CARRIED_DEPENDENCY
    for (int64_t k = 0; k < n; ++k) f(p, k);
    return 0.0;
  }
}

template <typename V>
V* offset_or_null(void* base, int64_t off) {
  return base == nullptr ? nullptr : static_cast<V*>(base) + off;
}

// Visits every active piece (tensor i, local offset, flat offset, length) of the chunks [cb, ce).
template <typename Body>
double visit_chunks(const ListFlatCall& call, int64_t cb, int64_t ce, Body&& body) {
  const auto& off = call.offsets;
  double sum = 0.0;
  for (int64_t c = cb; c < ce; ++c) {
    int64_t start = c * kChunk;
    const int64_t end = std::min(call.total, start + kChunk);
    // Last tensor whose offset is <= start: the one holding element `start` (skips empty tensors).
    size_t i = static_cast<size_t>(std::upper_bound(off.begin(), off.end(), start) - off.begin()) - 1;
    while (start < end) {
      const int64_t piece_end = std::min(end, off[i + 1]);
      if (piece_end > start && call.active[i]) sum += body(i, start - off[i], start, piece_end - start);
      start = piece_end;
      ++i;
    }
  }
  return sum;
}

struct CpuRunner {
  template <typename Make>
  static double run(const ListFlatCall& call, Make&& make) {
    if (call.total == 0) return 0.0;
    auto body = [&](size_t i, int64_t local, int64_t flat, int64_t n) -> double {
      return dispatch_state_type(call.state_dtype, [&](auto st) {
        using P = typename decltype(st)::type;
        return dispatch_model_type(call.dtype[i], [&](auto pt) {
          using T = typename decltype(pt)::type;
          const auto f = make(pt, st, call.variant[i]);
          Ptrs<T, P> p{{offset_or_null<T>(call.list0[i], local), offset_or_null<T>(call.list1[i], local)}, {}};
          for (int j = 0; j < kMaxFlat; ++j) p.f[j] = offset_or_null<P>(call.flat[j], flat);
          return run_piece(f, p, n);
        });
      });
    };
    const int64_t nchunks = (call.total + kChunk - 1) / kChunk;
    std::vector<double> partial(static_cast<size_t>(nchunks), 0.0);
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) partial[static_cast<size_t>(c)] = visit_chunks(call, c, c + 1, body);
    });
    double sum = 0.0;
    for (double v : partial) sum += v;
    return sum;
  }

  template <typename Make>
  static at::Tensor reduce(const ListFlatCall& call, Make&& make, double scale) {
    const double sum = run(call, make);
    at::Tensor out = at::empty({}, at::TensorOptions().dtype(call.state_dtype).device(call.device));
    dispatch_state_type(call.state_dtype, [&](auto st) {
      using P = typename decltype(st)::type;
      *out.data_ptr<P>() = static_cast<P>(scale * sum);
    });
    return out;
  }

  template <typename Make>
  static void apply(const ListFlatCall& call, Make&& make) {
    run(call, make);
  }

  static at::Tensor max(const at::Tensor& flat) {
    at::Tensor out = at::empty({}, flat.options());
    dispatch_state_type(flat.scalar_type(), [&](auto st) {
      using P = typename decltype(st)::type;
      *out.data_ptr<P>() = max_of<P>(flat.data_ptr<P>(), flat.numel());
    });
    return out;
  }

  static at::Tensor rwalk_weights(const at::Tensor& fisher, const at::Tensor& scores) {
    at::Tensor out = at::empty_like(fisher);
    const int64_t n = fisher.numel();
    if (n == 0) return out;
    dispatch_state_type(fisher.scalar_type(), [&](auto st) {
      using P = typename decltype(st)::type;
      const P* f = fisher.data_ptr<P>();
      const P* s = scores.data_ptr<P>();
      P* o = out.data_ptr<P>();
      const P inv_f = safe_inverse_of_max<P>(max_of<P>(f, n));
      const P inv_s = safe_inverse_of_max<P>(max_of<P>(s, n));
      at::parallel_for(0, n, kChunk, [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; ++k) o[k] = rwalk_weight<P>(f[k], s[k], inv_f, inv_s);
      });
    });
    return out;
  }

  static at::Tensor nonfinite(const std::vector<at::Tensor>& tensors) {
    const int64_t n = static_cast<int64_t>(tensors.size());
    at::Tensor flags = at::zeros({n}, at::TensorOptions().dtype(at::kBool));
    bool* fl = flags.data_ptr<bool>();
    for (int64_t i = 0; i < n; ++i) {
      const at::Tensor& t = tensors[static_cast<size_t>(i)];
      if (t.numel() == 0) continue;
      fl[i] = dispatch_model_type(t.scalar_type(), [&](auto pt) {
        using T = typename decltype(pt)::type;
        const T* x = static_cast<const T*>(t.const_data_ptr());
        // Checked in double for double tensors (a finite double may overflow float), else in float.
        using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
        const int bad = at::parallel_reduce(
            int64_t{0}, t.numel(), kChunk, 0,
            [&](int64_t b, int64_t e, int acc) {
              // |x| <= max is false exactly for NaN and ±inf; an OR over a chunk vectorises (no early exit).
              constexpr C kMax = std::numeric_limits<C>::max();
              for (int64_t k = b; k < e; ++k) acc |= !(std::fabs(static_cast<C>(x[k])) <= kMax);
              return acc;
            },
            [](int a, int b) { return a > b ? a : b; });
        return bad != 0;
      });
    }
    return flags;
  }

 private:
  // Maximum with NaN propagation, chunked so the result does not depend on the thread count.
  template <typename P>
  static P max_of(const P* x, int64_t n) {
    const P lowest = -std::numeric_limits<P>::infinity();
    const int64_t nchunks = (n + kChunk - 1) / kChunk;
    std::vector<P> partial(static_cast<size_t>(nchunks), lowest);
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        P m = lowest;
        const int64_t e = std::min(n, (c + 1) * kChunk);
        for (int64_t k = c * kChunk; k < e; ++k) m = (x[k] > m || std::isnan(x[k])) && !std::isnan(m) ? x[k] : m;
        partial[static_cast<size_t>(c)] = m;
      }
    });
    P m = lowest;
    for (P v : partial) m = (v > m || std::isnan(v)) && !std::isnan(m) ? v : m;
    return m;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(clfast, CPU, m) { CLFAST_REGISTER_STATE_OPS(m, CpuRunner); }

}  // namespace clfast
