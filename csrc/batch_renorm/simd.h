// float32 inner loops of the CPU Batch Renormalization kernels, compiled for several x86 ISAs
// (simd.cpp, chosen at load time by the dynamic loader). Other dtypes use the generic
// templates of cpu.cpp.
#pragma once

#include <cstdint>

namespace clfast::brn::simd {

// One channel of a planar (N, C, S) tensor: `planes` runs of S contiguous elements, `stride` elements apart
// (stride = C * S). One call per channel keeps the call and reduction overhead off small spatial maps.
void shifted_sums(const float* x, int64_t planes, int64_t stride, int64_t S, float K, double& s,
                  double& ss);  // Σ(x-K), Σ(x-K)^2
void grad_sums(const float* g, const float* x, int64_t planes, int64_t stride, int64_t S, float center, double& sg,
               double& sgc);  // Σg, Σg(x-center)
void affine(const float* x, float* y, int64_t planes, int64_t stride, int64_t S, float center, float scale,
            float shift);
void dx(const float* g, const float* x, float* out, int64_t planes, int64_t stride, int64_t S, float a, float b,
        float center, float c);

// `rows` rows of C interleaved channels; per-channel arrays of length C.
void rows_shifted_sums(const float* x, int64_t rows, int64_t C, const float* K, double* s, double* ss);
void rows_grad_sums(const float* g, const float* x, int64_t rows, int64_t C, const float* center, double* sg,
                    double* sgc);
void rows_affine(const float* x, float* y, int64_t rows, int64_t C, const float* center, const float* scale,
                 const float* shift);
void rows_dx(const float* g, const float* x, float* out, int64_t rows, int64_t C, const float* a, const float* b,
             const float* center, const float* c);

}  // namespace clfast::brn::simd
