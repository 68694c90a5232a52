// Per-element math of every clfast state op, written once and used by both the
// CPU kernels (cpu.cpp) and the CUDA kernels (cuda.cu).
//
// Template parameters (common/host_device.h): T the model tensors' element type (parameters,
// gradients), P the flat state buffers' (float or double), A the arithmetic type opmath_t<T, P>.
//
// Each functor is called as f(ptrs, k) on element k of one contiguous piece,
// where ptrs.l[*] point at the model tensors of that piece and ptrs.f[*] at the
// matching slice of the flat state buffers. Functors that reduce return a A
// partial; the others return A(0) and the drivers ignore it.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/host_device.h"

namespace clfast {

// The most flat buffers one op reads or writes (Adam with a penalty and a path integral: m, v, Omega, theta*, acc,
// theta_prev).
constexpr int kMaxFlat = 6;

// Pointers of one contiguous piece: up to two model-tensor lists and kMaxFlat flat buffers.
template <typename T, typename P>
struct Ptrs {
  T* l[2];
  P* f[kMaxFlat];
};

template <typename A>
CLFAST_HD A relu(A x) {
  return x > A(0) ? x : A(0);
}

// ---- quadratic penalty  value = lambda * sum Omega (theta - theta*)^2 -----------------
// l[0] = theta, f[0] = Omega (importance), f[1] = theta* (anchor).
// Returns Omega (theta - theta*)^2; the driver multiplies the sum by lambda.
template <typename T, typename P>
struct QuadPenaltyValue {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = true;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    const A d = static_cast<A>(p.l[0][k]) - static_cast<A>(p.f[1][k]);
    return static_cast<A>(p.f[0][k]) * d * d;
  }
};

// ---- gradient of the penalty: d/dtheta = 2 lambda Omega (theta - theta*) ----------------
// l[0] = theta, l[1] = output gradient (written), f[0] = Omega, f[1] = theta*.
// coef = 2 * lambda; upstream points at the 0-dim upstream gradient (read on the device,
// so the backward needs no host sync).
template <typename T, typename P>
struct QuadPenaltyGradWrite {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = false;
  A coef;
  const P* upstream;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    const A d = static_cast<A>(p.l[0][k]) - static_cast<A>(p.f[1][k]);
    p.l[1][k] = static_cast<T>(coef * static_cast<A>(upstream[0]) * static_cast<A>(p.f[0][k]) * d);
    return A(0);
  }
};

// Fused value + gradient into .grad: returns Omega (theta - theta*)^2 for the value and writes
// g = 2 lambda Omega (theta - theta*) into grad as selected by `mode`.
// l[0] = theta, l[1] = grad, f[0] = Omega, f[1] = theta*.
enum class QuadPenaltyGradMode : uint8_t { kAccumulate = 0, kOverwrite = 1, kValueOnly = 2 };

template <typename T, typename P>
struct QuadPenaltyGradAccumulate {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = true;
  A coef;  // 2 * lambda
  QuadPenaltyGradMode mode;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    const A d = static_cast<A>(p.l[0][k]) - static_cast<A>(p.f[1][k]);
    const A w = static_cast<A>(p.f[0][k]);
    if (mode == QuadPenaltyGradMode::kAccumulate) {
      p.l[1][k] = static_cast<T>(static_cast<A>(p.l[1][k]) + coef * w * d);
    } else if (mode == QuadPenaltyGradMode::kOverwrite) {
      p.l[1][k] = static_cast<T>(coef * w * d);
    }
    return w * d * d;
  }
};

// ---- MAS importance: Omega += scale * |g| ---------------------------------------------------
// l[0] = theta (unused), l[1] = grad, f[0] = Omega (updated).
template <typename T, typename P>
struct MasImportanceUpdate {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = false;
  A scale;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    const A g = static_cast<A>(p.l[1][k]);
    p.f[0][k] = static_cast<P>(static_cast<A>(p.f[0][k]) + scale * (g < A(0) ? -g : g));
    return A(0);
  }
};

// ---- EWC++ / RWalk Fisher: F = alpha g^2 + (1 - alpha) F -------------------------------------
// l[0] = theta (unused), l[1] = grad, f[0] = F (updated).
template <typename T, typename P>
struct EmaSqUpdate {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = false;
  A alpha;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    const A g = static_cast<A>(p.l[1][k]);
    p.f[0][k] = static_cast<P>(alpha * g * g + (A(1) - alpha) * static_cast<A>(p.f[0][k]));
    return A(0);
  }
};

// ---- path integral (SI omega, RWalk checkpoint loss): acc -= g (theta - theta_prev); theta_prev = theta
// SI: omega += -g (theta_new - theta_old);  RWalk: L -= g (theta_{t+1} - theta_t). Same formula.
// l[0] = theta, l[1] = grad (may be absent: has_grad == false), f[0] = acc, f[1] = theta_prev.
template <typename T, typename P>
struct PathIntegralUpdate {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = false;
  bool has_grad;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    const A theta = static_cast<A>(p.l[0][k]);
    if (has_grad) {
      const A g = static_cast<A>(p.l[1][k]);
      p.f[0][k] = static_cast<P>(static_cast<A>(p.f[0][k]) - g * (theta - static_cast<A>(p.f[1][k])));
    }
    p.f[1][k] = static_cast<P>(theta);
    return A(0);
  }
};

// ---- RWalk score (every delta_t iterations) --------------------------------------------------
// s += L / (1/2 F (theta - theta_ckpt)^2 + eps); then the window restarts: L = 0, theta_ckpt = theta.
// l[0] = theta, f[0] = s, f[1] = L, f[2] = theta_ckpt, f[3] = F.
template <typename T, typename P>
struct RWalkScoreUpdate {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = false;
  A eps;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    const A theta = static_cast<A>(p.l[0][k]);
    const A d = theta - static_cast<A>(p.f[2][k]);
    const A denom = A(0.5) * static_cast<A>(p.f[3][k]) * d * d + eps;
    p.f[0][k] = static_cast<P>(static_cast<A>(p.f[0][k]) + static_cast<A>(p.f[1][k]) / denom);
    p.f[1][k] = P(0);
    p.f[2][k] = static_cast<P>(theta);
    return A(0);
  }
};

// ---- SI consolidation (end of experience) ---------------------------------------------------
// Avalanche keeps traj = sum g (theta_new - theta_old) = -omega, and does
//   cum += c * traj / ((theta - theta*)^2 + eps);   Omega = min(-cum, clip);   theta* = theta.
// We also restart omega = 0 for the next experience.
// l[0] = theta, f[0] = cum, f[1] = Omega (written), f[2] = omega (read, then zeroed), f[3] = theta*.
template <typename T, typename P>
struct SIConsolidate {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = false;
  A c;
  A eps;
  A clip;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    const A theta = static_cast<A>(p.l[0][k]);
    const A d = theta - static_cast<A>(p.f[3][k]);
    const A traj = -static_cast<A>(p.f[2][k]);
    const A cum = static_cast<A>(p.f[0][k]) + c * traj / (d * d + eps);
    p.f[0][k] = static_cast<P>(cum);
    p.f[1][k] = static_cast<P>(-cum < clip ? -cum : clip);
    p.f[2][k] = P(0);
    p.f[3][k] = static_cast<P>(theta);
    return A(0);
  }
};

// ---- RWalk penalty weights: T = F / max F + relu(s) / max s --------------------------------
// inv_max_f / inv_max_s are 0 when the corresponding maximum is <= 0, so a network whose
// Fisher or scores are all zero gets weight 0 from that term instead of NaN (0/0).
template <typename A>
CLFAST_HD A rwalk_weight(A fisher, A score, A inv_max_f, A inv_max_s) {
  return fisher * inv_max_f + relu(score) * inv_max_s;
}

template <typename A>
CLFAST_HD A safe_inverse_of_max(A m) {
  return m > A(0) ? A(1) / m : A(0);
}

template <typename A>
CLFAST_HD bool is_finite_value(A x) {
  // (x - x) is NaN for both NaN and +-inf, 0 otherwise; works for every floating type.
  return (x - x) == (x - x);
}

// ---- optimizer steps, with the quadratic penalty and the path integral inside ----------------------------------------
// Both steps first form the gradient the optimizer sees, g = grad + 2 lam Omega (theta - theta*) when a penalty is
// given (what quad_penalty_grad_ would have written into .grad), and return Omega (theta - theta*)^2 at the
// parameters before the step (the driver multiplies the sum by lam). Then torch.optim's update, element by element.
// With a path integral (SI's omega, RWalk's window loss L), last: acc -= g_path (theta_new - theta_old) and
// theta_prev = theta_new, what path_integral_update_ does after an unfused step, with theta_old read here instead of
// from theta_prev; g_path is the task gradient `grad` (RWalk) or the penalised g (SI: the .grad the unfused step saw).
// l[0] = theta (written), l[1] = grad; the flat buffers are the optimizer state, then Omega and theta*, then acc and
// theta_prev. Whether there is a momentum buffer, a penalty and a path integral are template parameters, the other
// options selects, so that the CPU loops have no branch and vectorise.

// Which gradient a step's path integral multiplies by the step (the template parameter kPath).
enum PathGrad : int { kNoPath = 0, kPathTaskGrad = 1, kPathPenalisedGrad = 2 };

// The path integral's accumulator, read before the step writes anything (so that no store comes between the loads:
// the compiler then needs no reload, and vectorises the loop). acc = f[ia]; 0 without a path integral.
template <int kPath, int ia, typename A, typename T, typename P>
CLFAST_HD A path_accumulator(const Ptrs<T, P>& p, int64_t k) {
  if constexpr (kPath != kNoPath) {
    return static_cast<A>(p.f[ia][k]);
  } else {
    return A(0);
  }
}

// acc -= g_path (theta_new - theta_old); theta_prev = theta_new, with theta_new as stored (rounded to T), as the
// unfused update reads it back. acc = f[ia] (its old value `acc_old`), theta_prev = f[ia + 1].
template <int kPath, int ia, typename T, typename P, typename A>
CLFAST_HD void path_integral_in_step(const Ptrs<T, P>& p, int64_t k, A acc_old, A theta_old, T theta_new,
                                     A task_grad, A penalised_grad) {
  if constexpr (kPath != kNoPath) {
    const A g = kPath == kPathTaskGrad ? task_grad : penalised_grad;
    const A stored = static_cast<A>(theta_new);
    p.f[ia][k] = static_cast<P>(acc_old - g * (stored - theta_old));
    p.f[ia + 1][k] = static_cast<P>(stored);
  }
}

// g with the penalty (Omega = f[iw], theta* = f[iw + 1]); `value` gets Omega (theta - theta*)^2, 0 without.
template <bool kPenalty, int iw, typename T, typename P, typename A>
CLFAST_HD A penalised_gradient(const Ptrs<T, P>& p, int64_t k, A theta, A coef, A& value) {
  const A grad = static_cast<A>(p.l[1][k]);
  if constexpr (kPenalty) {
    const A d = theta - static_cast<A>(p.f[iw + 1][k]);
    const A w = static_cast<A>(p.f[iw][k]);
    value = w * d * d;
    return grad + coef * w * d;
  } else {
    value = A(0);
    return grad;
  }
}

// torch.optim.SGD: g = ±grad + wd theta; with momentum, b = g on the first step, else b = mu b + (1 - dampening) g,
// and g = g + mu b (Nesterov) or b; theta -= lr g.  f[0] = momentum buffer (kMomentum), f[1] = Omega,
// f[2] = theta* (kPenalty), f[3] = acc, f[4] = theta_prev (kPath).
template <typename T, typename P, bool kMomentum, bool kPenalty, int kPath = kNoPath>
struct SgdStep {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = kPenalty;
  // Omega = f[1], theta* = f[2]; with a path integral the CPU driver sums the penalty's value apart (cpu.cpp).
  static constexpr int kPenaltyFlat = 1;
  static constexpr bool kSumPenaltyApart = kPenalty && kPath != kNoPath;
  // 1 - dampening comes from the host in double, as torch.optim computes it (1 - 0.9f is not 0.1f).
  A lr, momentum, one_minus_dampening, weight_decay, coef;  // coef = 2 lam
  bool nesterov, maximize, first;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    // Every load before the first store (see path_accumulator).
    const A theta = static_cast<A>(p.l[0][k]);
    const A grad = static_cast<A>(p.l[1][k]);
    const A acc = path_accumulator<kPath, 3, A>(p, k);
    const A b_old = kMomentum ? static_cast<A>(p.f[0][k]) : A(0);
    A value;
    const A penalised = penalised_gradient<kPenalty, 1>(p, k, theta, coef, value);
    A g = maximize ? -penalised : penalised;
    g = weight_decay != A(0) ? g + weight_decay * theta : g;  // torch adds nothing at 0 (an inf theta stays inf)
    if constexpr (kMomentum) {
      const A b = first ? g : momentum * b_old + one_minus_dampening * g;
      p.f[0][k] = static_cast<P>(b);
      g = nesterov ? g + momentum * b : b;
    }
    const T theta_new = static_cast<T>(theta - lr * g);
    p.l[0][k] = theta_new;
    path_integral_in_step<kPath, 3>(p, k, acc, theta, theta_new, grad, penalised);
    return value;
  }
};

// torch.optim.Adam / AdamW: g = ±grad (+ wd theta for Adam; AdamW decays theta by 1 - lr wd instead);
// m = lerp(m, g, 1 - beta1) (torch's lerp: two forms around weight 0.5); v = beta2 v + (1 - beta2) g^2;
// theta -= step_size (m / (sqrt(v) / bc2_sqrt + eps)), with step_size = lr / (1 - beta1^t) and
// bc2_sqrt = sqrt(1 - beta2^t) computed on the host.  f[0] = m, f[1] = v, f[2] = Omega, f[3] = theta* (kPenalty),
// f[4] = acc, f[5] = theta_prev (kPath).
template <typename T, typename P, bool kPenalty, int kPath = kNoPath>
struct AdamStep {
  using A = opmath_t<T, P>;
  static constexpr bool kReduces = kPenalty;
  // Omega = f[2], theta* = f[3]; with a path integral the CPU driver sums the penalty's value apart (cpu.cpp).
  static constexpr int kPenaltyFlat = 2;
  static constexpr bool kSumPenaltyApart = kPenalty && kPath != kNoPath;
  // The complements 1 - beta1, 1 - beta2 and AdamW's factor 1 - lr wd come from the host in double, as torch.optim
  // computes them: in float, 1 - 0.999f is 1.00005e-3, a relative error of 5e-5 in every second-moment update.
  A one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay, coef, step_size, bc2_sqrt;
  bool decoupled, maximize;
  CLFAST_HD A operator()(const Ptrs<T, P>& p, int64_t k) const {
    // Every load before the first store (see path_accumulator).
    const A theta_old = static_cast<A>(p.l[0][k]);
    const A grad = static_cast<A>(p.l[1][k]);
    const A acc = path_accumulator<kPath, 4, A>(p, k);
    const A m_old = static_cast<A>(p.f[0][k]);
    const A v_old = static_cast<A>(p.f[1][k]);
    A theta = theta_old;
    A value;
    const A penalised = penalised_gradient<kPenalty, 2>(p, k, theta, coef, value);
    A g = maximize ? -penalised : penalised;
    const bool decay_now = weight_decay != A(0);
    g = decay_now && !decoupled ? g + weight_decay * theta : g;
    theta = decay_now && decoupled ? theta * decay : theta;
    const A w = one_minus_beta1;
    const A m = w < A(0.5) ? m_old + w * (g - m_old) : g - (g - m_old) * (A(1) - w);
    const A v = beta2 * v_old + one_minus_beta2 * g * g;
    p.f[0][k] = static_cast<P>(m);
    p.f[1][k] = static_cast<P>(v);
    const T theta_new = static_cast<T>(theta - step_size * (m / (std::sqrt(v) / bc2_sqrt + eps)));
    p.l[0][k] = theta_new;
    path_integral_in_step<kPath, 4>(p, k, acc, theta_old, theta_new, grad, penalised);
    return value;
  }
};

}  // namespace clfast
