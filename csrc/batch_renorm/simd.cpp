// float32 inner loops of the CPU Batch Renormalization kernels (see simd.h).
//
// Sums are kept in independent float vector lanes (per channel, for the row forms) over blocks of about
// kFlush elements (or rows), then added into double; elementwise loops have no cross-iteration
// dependence, so the compiler vectorises them as written. On x86-64 with GCC/Clang each function
// is cloned for AVX-512, AVX2 and the baseline ISA and picked at load time (target_clones), so one
// binary runs everywhere and uses the wide units where they exist.
#include "batch_renorm/simd.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLFAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLFAST_CLONES
#endif

namespace clfast::brn::simd {
namespace {
constexpr int64_t kFlush = 1024;  // float partial sums cover about this many elements (rows) before double
}  // namespace

// Sums use GCC/Clang vector types: two 8-float accumulators per quantity (the compiler left alone
// turned the 16-lane array form into shuffles). Float lane sums are flushed into double after about
// kFlush elements (whole planes at a time); the last S % 8 elements of a plane go straight to double.
typedef float v8 __attribute__((vector_size(32)));

namespace {
inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline double hsum(v8 v) {
  double s = 0.0;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}
}  // namespace

CLFAST_CLONES void shifted_sums(const float* x, int64_t planes, int64_t stride, int64_t S, float K, double& s,
                                double& ss) {
  const v8 kk = v8{} + K;
  v8 a0{}, a1{}, q0{}, q1{};
  int64_t pending = 0;
  for (int64_t p = 0; p < planes; ++p) {
    const float* xp = x + p * stride;
    int64_t i = 0;
    for (; i + 16 <= S; i += 16) {
      const v8 v0 = load8(xp + i) - kk;
      const v8 v1 = load8(xp + i + 8) - kk;
      a0 += v0;
      q0 += v0 * v0;
      a1 += v1;
      q1 += v1 * v1;
    }
    for (; i + 8 <= S; i += 8) {
      const v8 v0 = load8(xp + i) - kk;
      a0 += v0;
      q0 += v0 * v0;
    }
    for (; i < S; ++i) {
      const double v = static_cast<double>(xp[i] - K);
      s += v;
      ss += v * v;
    }
    pending += S;
    if (pending >= kFlush || p + 1 == planes) {
      s += hsum(a0 + a1);
      ss += hsum(q0 + q1);
      a0 = a1 = q0 = q1 = v8{};
      pending = 0;
    }
  }
}

CLFAST_CLONES void grad_sums(const float* g, const float* x, int64_t planes, int64_t stride, int64_t S,
                             float center, double& sg, double& sgc) {
  const v8 cc = v8{} + center;
  v8 a0{}, a1{}, q0{}, q1{};
  int64_t pending = 0;
  for (int64_t p = 0; p < planes; ++p) {
    const float* gp = g + p * stride;
    const float* xp = x + p * stride;
    int64_t i = 0;
    for (; i + 16 <= S; i += 16) {
      const v8 g0 = load8(gp + i), g1 = load8(gp + i + 8);
      a0 += g0;
      a1 += g1;
      q0 += g0 * (load8(xp + i) - cc);
      q1 += g1 * (load8(xp + i + 8) - cc);
    }
    for (; i + 8 <= S; i += 8) {
      const v8 g0 = load8(gp + i);
      a0 += g0;
      q0 += g0 * (load8(xp + i) - cc);
    }
    for (; i < S; ++i) {
      sg += gp[i];
      sgc += static_cast<double>(gp[i]) * (xp[i] - center);
    }
    pending += S;
    if (pending >= kFlush || p + 1 == planes) {
      sg += hsum(a0 + a1);
      sgc += hsum(q0 + q1);
      a0 = a1 = q0 = q1 = v8{};
      pending = 0;
    }
  }
}

CLFAST_CLONES void affine(const float* x, float* y, int64_t planes, int64_t stride, int64_t S, float center,
                          float scale, float shift) {
  for (int64_t p = 0; p < planes; ++p) {
    const float* __restrict__ xp = x + p * stride;
    float* __restrict__ yp = y + p * stride;
    for (int64_t i = 0; i < S; ++i) yp[i] = (xp[i] - center) * scale + shift;
  }
}

CLFAST_CLONES void dx(const float* g, const float* x, float* out, int64_t planes, int64_t stride, int64_t S, float a,
                      float b, float center, float c) {
  for (int64_t p = 0; p < planes; ++p) {
    const float* __restrict__ gp = g + p * stride;
    const float* __restrict__ xp = x + p * stride;
    float* __restrict__ op = out + p * stride;
    for (int64_t i = 0; i < S; ++i) op[i] = a * gp[i] + b * (xp[i] - center) + c;
  }
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
