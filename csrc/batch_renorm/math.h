// Batch Renormalization (Ioffe 2017), per-channel math written once for the CPU and CUDA kernels.
// Formulas: docs/avalanche-semantics.md §5.2 (forward) and §5.4 (backward).
//
//   sigma_B = sqrt(var_B + eps)                       (var_B biased, over the m = N*H*W elements)
//   r = clamp(sigma_B / sigma_run, 1/r_max, r_max)    d = clamp((mu_B - mu_run) / sigma_run, -d_max, d_max)
//   y = gamma * (r (x - mu_B) / sigma_B + d) + beta   (r, d under stop-gradient)
//   eval: y = gamma (x - mu_run) / sigma_run + beta
//
// Every elementwise pass is written as  y = (x - center) * scale + shift  so that a large mean does not
// cancel against a large offset; the backward's dx is  a * g + b * (x - mu) + c.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/host_device.h"

namespace clfast::brn {

// torch.clamp semantics: NaN propagates; lo is applied before hi.
template <typename A>
CLFAST_HD A clamp_to(A x, A lo, A hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

// Per-channel coefficients of an elementwise pass  out = (x - center) * scale + shift.
template <typename A>
struct Affine {
  A center, scale, shift;
};

// Results of the training forward for one channel.
template <typename A>
struct TrainChannel {
  A mean, std, r, d;
  Affine<A> affine;
};

// mean and var are the batch's (var biased, already >= 0).
template <typename A>
CLFAST_HD TrainChannel<A> train_channel(A mean, A var, A eps, A run_mean, A run_std, A r_max, A d_max, A gamma,
                                        A beta) {
  TrainChannel<A> o;
  o.mean = mean;
  o.std = std::sqrt(var + eps);
  o.r = clamp_to<A>(o.std / run_std, A(1) / r_max, r_max);
  o.d = clamp_to<A>((mean - run_mean) / run_std, -d_max, d_max);
  o.affine.center = mean;
  o.affine.scale = gamma * o.r / o.std;
  o.affine.shift = beta + gamma * o.d;
  return o;
}

template <typename A>
CLFAST_HD Affine<A> eval_channel(A run_mean, A run_std, A gamma, A beta) {
  return Affine<A>{run_mean, gamma / run_std, beta};
}

// Backward for one channel from the two reductions  sum_g = Σ g  and  sum_gc = Σ g (x - mean)
// (§5.4): dβ = Σ g, dγ = Σ g x̂ = r Σ g u + d Σ g with u = (x - mean)/std, and
//   train: dx = (γ r / std) [g - Σg/m - u Σ(g u)/m]      eval: dx = (γ r / std) g.
template <typename A>
struct BackwardChannel {
  A grad_weight, grad_bias;
  A a, b, c, center;  // dx = a g + b (x - center) + c
};

template <typename A>
CLFAST_HD BackwardChannel<A> backward_channel(A sum_g, A sum_gc, A m, A mean, A std, A r, A d, A gamma, bool train) {
  BackwardChannel<A> o;
  const A invstd = A(1) / std;
  const A sum_gu = sum_gc * invstd;
  o.grad_bias = sum_g;
  o.grad_weight = r * sum_gu + d * sum_g;
  o.a = gamma * r * invstd;
  o.center = mean;
  if (train) {
    o.b = -o.a * invstd * sum_gu / m;
    o.c = -o.a * sum_g / m;
  } else {
    o.b = A(0);
    o.c = A(0);
  }
  return o;
}

// Running statistics after a training step (Avalanche's order: r/d used the old limits, then the limits
// grow while below their maxima, then the running mean/std move towards the batch's).
template <typename P>
CLFAST_HD void update_running(P& run_mean, P& run_std, P batch_mean, P batch_std, double momentum) {
  run_mean = static_cast<P>(run_mean + momentum * (batch_mean - run_mean));
  run_std = static_cast<P>(run_std + momentum * (batch_std - run_std));
}

template <typename P>
CLFAST_HD void grow_limit(P& limit, double inc, double max_limit) {
  if (static_cast<double>(limit) < max_limit) limit = static_cast<P>(limit + inc);
}

// Chan et al. merge of two (count, mean, M2) summaries.
template <typename A>
struct Welford {
  A n, mean, m2;
};

template <typename A>
CLFAST_HD Welford<A> welford_merge(Welford<A> a, Welford<A> b) {
  const A n = a.n + b.n;
  if (n == A(0)) return a;
  const A delta = b.mean - a.mean;
  const A fb = b.n / n;
  return Welford<A>{n, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.n * fb};
}

}  // namespace clfast::brn
