// What every op family's kernels share: the host/device function marker and the arithmetic type.
//
// Template parameter names, the same in every family (csrc/state_ops, csrc/batch_renorm):
//   T  element type of the tensors in the model's dtype: parameters and gradients (state ops), activations and
//      their gradients (Batch Renormalization). float, double, c10::BFloat16 or c10::Half.
//   P  element type of the float32/float64 tensors that go with them, one dtype per call: the flat
//      per-parameter state buffers (state ops), the per-channel weights and statistics (Batch Renormalization).
//      float or double.
//   A  the arithmetic type, opmath_t<T, P>: double if either side is double, else float (low precision widens).
//   V  any one type, in a helper that does not care which role it plays.
//   F  a per-element functor; R a Runner (the device half of an op body); Fn a callable.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#if defined(__CUDACC__)
#define CLFAST_HD __host__ __device__ __forceinline__
#else
#define CLFAST_HD inline
#endif

namespace clfast {

template <typename T, typename P>
using opmath_t = std::conditional_t<std::is_same_v<T, double> || std::is_same_v<P, double>, double, float>;

}  // namespace clfast
