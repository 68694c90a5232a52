// float32 inner loops of the CPU Batch Renormalization kernels (see brn_cpu_simd.h).
//
// Written so the compiler vectorises them without reassociating anything: sums are kept in kLanes
// independent float accumulators over blocks of at most kFlush elements (or rows), then added into
// double; elementwise loops have no cross-iteration dependence. On x86-64 with GCC/Clang each function
// is cloned for AVX-512, AVX2 and the baseline ISA and picked at load time (target_clones), so one
// binary runs everywhere and uses the wide units where they exist.
#include "clfast/brn_cpu_simd.h"

#include <algorithm>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLFAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLFAST_CLONES
#endif

namespace clfast::brn::simd {
namespace {
constexpr int kLanes = 16;
constexpr int64_t kFlush = 1024;  // float partial sums cover at most this many elements (rows) before double
}  // namespace

CLFAST_CLONES void shifted_sums(const float* x, int64_t n, float K, double& s, double& ss) {
  for (int64_t b0 = 0; b0 < n; b0 += kFlush) {
    const int64_t b1 = std::min(n, b0 + kFlush);
    float a[kLanes] = {}, q[kLanes] = {};
    int64_t i = b0;
    for (; i + kLanes <= b1; i += kLanes) {
      for (int u = 0; u < kLanes; ++u) {
        const float v = x[i + u] - K;
        a[u] += v;
        q[u] += v * v;
      }
    }
    for (; i < b1; ++i) {
      const float v = x[i] - K;
      a[0] += v;
      q[0] += v * v;
    }
    for (int u = 0; u < kLanes; ++u) {
      s += a[u];
      ss += q[u];
    }
  }
}

CLFAST_CLONES void grad_sums(const float* g, const float* x, int64_t n, float center, double& sg, double& sgc) {
  for (int64_t b0 = 0; b0 < n; b0 += kFlush) {
    const int64_t b1 = std::min(n, b0 + kFlush);
    float a[kLanes] = {}, q[kLanes] = {};
    int64_t i = b0;
    for (; i + kLanes <= b1; i += kLanes) {
      for (int u = 0; u < kLanes; ++u) {
        a[u] += g[i + u];
        q[u] += g[i + u] * (x[i + u] - center);
      }
    }
    for (; i < b1; ++i) {
      a[0] += g[i];
      q[0] += g[i] * (x[i] - center);
    }
    for (int u = 0; u < kLanes; ++u) {
      sg += a[u];
      sgc += q[u];
    }
  }
}

CLFAST_CLONES void affine(const float* x, float* y, int64_t n, float center, float scale, float shift) {
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - center) * scale + shift;
}

CLFAST_CLONES void dx(const float* g, const float* x, float* out, int64_t n, float a, float b, float center, float c) {
  for (int64_t i = 0; i < n; ++i) out[i] = a * g[i] + b * (x[i] - center) + c;
}

CLFAST_CLONES void rows_shifted_sums(const float* x, int64_t rows, int64_t C, const float* K, double* s, double* ss) {
  std::vector<float> a(static_cast<size_t>(C)), q(static_cast<size_t>(C));
  for (int64_t r0 = 0; r0 < rows; r0 += kFlush) {
    const int64_t r1 = std::min(rows, r0 + kFlush);
    std::fill(a.begin(), a.end(), 0.0f);
    std::fill(q.begin(), q.end(), 0.0f);
    float* __restrict__ pa = a.data();
    float* __restrict__ pq = q.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ xr = x + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const float v = xr[c] - K[c];
        pa[c] += v;
        pq[c] += v * v;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      s[c] += pa[c];
      ss[c] += pq[c];
    }
  }
}

CLFAST_CLONES void rows_grad_sums(const float* g, const float* x, int64_t rows, int64_t C, const float* center,
                                  double* sg, double* sgc) {
  std::vector<float> a(static_cast<size_t>(C)), q(static_cast<size_t>(C));
  for (int64_t r0 = 0; r0 < rows; r0 += kFlush) {
    const int64_t r1 = std::min(rows, r0 + kFlush);
    std::fill(a.begin(), a.end(), 0.0f);
    std::fill(q.begin(), q.end(), 0.0f);
    float* __restrict__ pa = a.data();
    float* __restrict__ pq = q.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ gr = g + r * C;
      const float* __restrict__ xr = x + r * C;
      for (int64_t c = 0; c < C; ++c) {
        pa[c] += gr[c];
        pq[c] += gr[c] * (xr[c] - center[c]);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      sg[c] += pa[c];
      sgc[c] += pq[c];
    }
  }
}

CLFAST_CLONES void rows_affine(const float* x, float* y, int64_t rows, int64_t C, const float* center,
                               const float* scale, const float* shift) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ xr = x + r * C;
    float* __restrict__ yr = y + r * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - center[c]) * scale[c] + shift[c];
  }
}

CLFAST_CLONES void rows_dx(const float* g, const float* x, float* out, int64_t rows, int64_t C, const float* a,
                           const float* b, const float* center, const float* c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ gr = g + r * C;
    const float* __restrict__ xr = x + r * C;
    float* __restrict__ o = out + r * C;
    for (int64_t k = 0; k < C; ++k) o[k] = a[k] * gr[k] + b[k] * (xr[k] - center[k]) + c[k];
  }
}

}  // namespace clfast::brn::simd
