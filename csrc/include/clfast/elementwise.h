// Per-element math of every clfast state op, written once and used by both the
// CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda).
//
// Conventions shared by all functors below:
//   P  = element type of the model tensors (parameters, gradients): float, double,
//        c10::BFloat16 or c10::Half.
//   S  = element type of the flat state buffers: float or double.
//   T  = the type the arithmetic is done in (opmath_t<P, S>): double if either
//        side is double, else float. Low-precision parameters are widened.
//
// Each functor is called as f(ptrs, k) on element k of one contiguous piece,
// where ptrs.l[*] point at the model tensors of that piece and ptrs.f[*] at the
// matching slice of the flat state buffers. Functors that reduce return a T
// partial; the others return T(0) and the drivers ignore it.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define CLFAST_HD __host__ __device__ __forceinline__
#else
#define CLFAST_HD inline
#endif

namespace clfast {

template <typename P, typename S>
using opmath_t = std::conditional_t<std::is_same_v<P, double> || std::is_same_v<S, double>, double, float>;

// Pointers of one contiguous piece: up to two model-tensor lists and four flat buffers.
template <typename P, typename S>
struct Ptrs {
  P* l[2];
  S* f[4];
};

template <typename T>
CLFAST_HD T relu(T x) {
  return x > T(0) ? x : T(0);
}

// ---- quadratic penalty  value = lambda * sum Omega (theta - theta*)^2 -----------------
// l[0] = theta, f[0] = Omega (importance), f[1] = theta* (anchor).
// Returns Omega (theta - theta*)^2; the driver multiplies the sum by lambda.
template <typename P, typename S>
struct QuadPenaltyValue {
  using T = opmath_t<P, S>;
  static constexpr bool kReduces = true;
  CLFAST_HD T operator()(const Ptrs<P, S>& p, int64_t k) const {
    const T d = static_cast<T>(p.l[0][k]) - static_cast<T>(p.f[1][k]);
    return static_cast<T>(p.f[0][k]) * d * d;
  }
};

// ---- gradient of the penalty: d/dtheta = 2 lambda Omega (theta - theta*) ----------------
// l[0] = theta, l[1] = output gradient (written), f[0] = Omega, f[1] = theta*.
// coef = 2 * lambda; upstream points at the 0-dim upstream gradient (read on the device,
// so the backward needs no host sync).
template <typename P, typename S>
struct QuadPenaltyGradWrite {
  using T = opmath_t<P, S>;
  static constexpr bool kReduces = false;
  T coef;
  const S* upstream;
  CLFAST_HD T operator()(const Ptrs<P, S>& p, int64_t k) const {
    const T d = static_cast<T>(p.l[0][k]) - static_cast<T>(p.f[1][k]);
    p.l[1][k] = static_cast<P>(coef * static_cast<T>(upstream[0]) * static_cast<T>(p.f[0][k]) * d);
    return T(0);
  }
};

// Fused value + gradient into .grad: returns Omega (theta - theta*)^2 for the value and writes
// g = 2 lambda Omega (theta - theta*) into grad as selected by `mode`.
// l[0] = theta, l[1] = grad, f[0] = Omega, f[1] = theta*.
enum class QuadPenaltyGradMode : uint8_t { kAccumulate = 0, kOverwrite = 1, kValueOnly = 2 };

template <typename P, typename S>
struct QuadPenaltyGradAccumulate {
  using T = opmath_t<P, S>;
  static constexpr bool kReduces = true;
  T coef;  // 2 * lambda
  QuadPenaltyGradMode mode;
  CLFAST_HD T operator()(const Ptrs<P, S>& p, int64_t k) const {
    const T d = static_cast<T>(p.l[0][k]) - static_cast<T>(p.f[1][k]);
    const T w = static_cast<T>(p.f[0][k]);
    if (mode == QuadPenaltyGradMode::kAccumulate) {
      p.l[1][k] = static_cast<P>(static_cast<T>(p.l[1][k]) + coef * w * d);
    } else if (mode == QuadPenaltyGradMode::kOverwrite) {
      p.l[1][k] = static_cast<P>(coef * w * d);
    }
    return w * d * d;
  }
};

// ---- MAS importance: Omega += scale * |g| ---------------------------------------------------
// l[0] = theta (unused), l[1] = grad, f[0] = Omega (updated).
template <typename P, typename S>
struct MasImportanceUpdate {
  using T = opmath_t<P, S>;
  static constexpr bool kReduces = false;
  T scale;
  CLFAST_HD T operator()(const Ptrs<P, S>& p, int64_t k) const {
    const T g = static_cast<T>(p.l[1][k]);
    p.f[0][k] = static_cast<S>(static_cast<T>(p.f[0][k]) + scale * (g < T(0) ? -g : g));
    return T(0);
  }
};

// ---- EWC++ / RWalk Fisher: F = alpha g^2 + (1 - alpha) F -------------------------------------
// l[0] = theta (unused), l[1] = grad, f[0] = F (updated).
template <typename P, typename S>
struct EmaSqUpdate {
  using T = opmath_t<P, S>;
  static constexpr bool kReduces = false;
  T alpha;
  CLFAST_HD T operator()(const Ptrs<P, S>& p, int64_t k) const {
    const T g = static_cast<T>(p.l[1][k]);
    p.f[0][k] = static_cast<S>(alpha * g * g + (T(1) - alpha) * static_cast<T>(p.f[0][k]));
    return T(0);
  }
};

// ---- path integral (SI omega, RWalk checkpoint loss): acc -= g (theta - theta_prev); theta_prev = theta
// SI: omega += -g (theta_new - theta_old);  RWalk: L -= g (theta_{t+1} - theta_t). Same formula.
// l[0] = theta, l[1] = grad (may be absent: has_grad == false), f[0] = acc, f[1] = theta_prev.
template <typename P, typename S>
struct PathIntegralUpdate {
  using T = opmath_t<P, S>;
  static constexpr bool kReduces = false;
  bool has_grad;
  CLFAST_HD T operator()(const Ptrs<P, S>& p, int64_t k) const {
    const T theta = static_cast<T>(p.l[0][k]);
    if (has_grad) {
      const T g = static_cast<T>(p.l[1][k]);
      p.f[0][k] = static_cast<S>(static_cast<T>(p.f[0][k]) - g * (theta - static_cast<T>(p.f[1][k])));
    }
    p.f[1][k] = static_cast<S>(theta);
    return T(0);
  }
};

// ---- RWalk score (every delta_t iterations) --------------------------------------------------
// s += L / (1/2 F (theta - theta_ckpt)^2 + eps); then the window restarts: L = 0, theta_ckpt = theta.
// l[0] = theta, f[0] = s, f[1] = L, f[2] = theta_ckpt, f[3] = F.
template <typename P, typename S>
struct RWalkScoreUpdate {
  using T = opmath_t<P, S>;
  static constexpr bool kReduces = false;
  T eps;
  CLFAST_HD T operator()(const Ptrs<P, S>& p, int64_t k) const {
    const T theta = static_cast<T>(p.l[0][k]);
    const T d = theta - static_cast<T>(p.f[2][k]);
    const T denom = T(0.5) * static_cast<T>(p.f[3][k]) * d * d + eps;
    p.f[0][k] = static_cast<S>(static_cast<T>(p.f[0][k]) + static_cast<T>(p.f[1][k]) / denom);
    p.f[1][k] = S(0);
    p.f[2][k] = static_cast<S>(theta);
    return T(0);
  }
};

// ---- SI consolidation (end of experience) ---------------------------------------------------
// Avalanche keeps traj = sum g (theta_new - theta_old) = -omega, and does
//   cum += c * traj / ((theta - theta*)^2 + eps);   Omega = min(-cum, clip);   theta* = theta.
// We also restart omega = 0 for the next experience.
// l[0] = theta, f[0] = cum, f[1] = Omega (written), f[2] = omega (read, then zeroed), f[3] = theta*.
template <typename P, typename S>
struct SIConsolidate {
  using T = opmath_t<P, S>;
  static constexpr bool kReduces = false;
  T c;
  T eps;
  T clip;
  CLFAST_HD T operator()(const Ptrs<P, S>& p, int64_t k) const {
    const T theta = static_cast<T>(p.l[0][k]);
    const T d = theta - static_cast<T>(p.f[3][k]);
    const T traj = -static_cast<T>(p.f[2][k]);
    const T cum = static_cast<T>(p.f[0][k]) + c * traj / (d * d + eps);
    p.f[0][k] = static_cast<S>(cum);
    p.f[1][k] = static_cast<S>(-cum < clip ? -cum : clip);
    p.f[2][k] = S(0);
    p.f[3][k] = static_cast<S>(theta);
    return T(0);
  }
};

// ---- RWalk penalty weights: P = F / max F + relu(s) / max s --------------------------------
// inv_max_f / inv_max_s are 0 when the corresponding maximum is <= 0, so a network whose
// Fisher or scores are all zero gets weight 0 from that term instead of NaN (0/0).
template <typename T>
CLFAST_HD T rwalk_weight(T fisher, T score, T inv_max_f, T inv_max_s) {
  return fisher * inv_max_f + relu(score) * inv_max_s;
}

template <typename T>
CLFAST_HD T safe_inverse_of_max(T m) {
  return m > T(0) ? T(1) / m : T(0);
}

template <typename T>
CLFAST_HD bool is_finite_value(T x) {
  // (x - x) is NaN for both NaN and +-inf, 0 otherwise; works for every floating type.
  return (x - x) == (x - x);
}

}  // namespace clfast
