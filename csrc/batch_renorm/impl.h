// Bodies of the Batch Renormalization ops: validation and allocation, shared by CPU and CUDA, around the
// device kernels of a Runner (cpu.cpp, cuda.cu). A Runner provides
//   train_forward(Layout, weight, bias, run_mean, run_std, r_max, d_max, eps, y, mean, std, r, d)
//   eval_forward(Layout, weight, bias, run_mean, run_std, y)
//   backward(Layout, grad (in the input's layout), weight, mean, std, r, d, train, dx, dweight, dbias)
//   update(run_mean, run_std, r_max, d_max, batch_mean, batch_std, momentum, r_inc, d_inc, max_r, max_d)
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "batch_renorm/layout.h"

namespace clfast::brn {

inline void check_scalar(double v, const char* name, const char* what, bool allow_zero = true) {
  TORCH_CHECK(std::isfinite(v) && (allow_zero ? v >= 0 : v > 0), what, ": ", name, " must be a finite number ",
              allow_zero ? ">= 0" : "> 0", ", got ", v);
}

// Checks weight, bias and the running statistics (C elements each, one float dtype) against the input.
inline void check_channel_args(const Layout& l, const at::Tensor& input, const at::Tensor& weight,
                               const at::Tensor& bias, const at::Tensor& run_mean, const at::Tensor& run_std,
                               const char* what) {
  check_channel_tensor(weight, "weight", l.C, input, weight, what);
  check_channel_tensor(bias, "bias", l.C, input, weight, what);
  check_channel_tensor(run_mean, "running_mean", l.C, input, weight, what);
  check_channel_tensor(run_std, "running_std", l.C, input, weight, what);
}

template <class R>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& run_mean,
    const at::Tensor& run_std, const at::Tensor& r_max, const at::Tensor& d_max, double eps) {
  constexpr const char* what = "clfast.batch_renorm_forward";
  Layout l = layout_of(input, what);
  check_channel_args(l, input, weight, bias, run_mean, run_std, what);
  check_channel_tensor(r_max, "r_max", 1, input, weight, what);
  check_channel_tensor(d_max, "d_max", 1, input, weight, what);
  check_scalar(eps, "eps", what);
  at::Tensor y = empty_output(l);
  auto opts = weight.options();
  at::Tensor mean = at::empty({l.C}, opts), std = at::empty({l.C}, opts);
  at::Tensor r = at::empty({l.C}, opts), d = at::empty({l.C}, opts);
  R::train_forward(l, weight, bias, run_mean, run_std, r_max, d_max, eps, y, mean, std, r, d);
  return {y, mean, std, r, d};
}

template <class R>
at::Tensor eval_impl(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                     const at::Tensor& run_mean, const at::Tensor& run_std) {
  constexpr const char* what = "clfast.batch_renorm_eval";
  Layout l = layout_of(input, what);
  check_channel_args(l, input, weight, bias, run_mean, run_std, what);
  at::Tensor y = empty_output(l);
  R::eval_forward(l, weight, bias, run_mean, run_std, y);
  return y;
}

template <class R>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_out, const at::Tensor& input,
                                                             const at::Tensor& weight, const at::Tensor& mean,
                                                             const at::Tensor& std, const at::Tensor& r,
                                                             const at::Tensor& d, bool train) {
  constexpr const char* what = "clfast.batch_renorm_backward";
  Layout l = layout_of(input, what);
  at::Tensor g = like_layout(grad_out, l, "grad_out", what);
  check_channel_tensor(weight, "weight", l.C, input, weight, what);
  check_channel_tensor(mean, "mean", l.C, input, weight, what);
  check_channel_tensor(std, "std", l.C, input, weight, what);
  check_channel_tensor(r, "r", l.C, input, weight, what);
  check_channel_tensor(d, "d", l.C, input, weight, what);
  at::Tensor dx = empty_output(l);
  at::Tensor dw = at::empty_like(weight), db = at::empty_like(weight);
  R::backward(l, g, weight, mean, std, r, d, train, dx, dw, db);
  return {dx, dw, db};
}

template <class R>
void update_impl(const at::Tensor& run_mean, const at::Tensor& run_std, const at::Tensor& r_max, const at::Tensor& d_max,
                 const at::Tensor& batch_mean, const at::Tensor& batch_std, double momentum, double r_inc,
                 double d_inc, double max_r, double max_d) {
  constexpr const char* what = "clfast.batch_renorm_update_";
  TORCH_CHECK(run_mean.defined() && run_mean.numel() > 0, what, ": running_mean is empty");
  const int64_t C = run_mean.numel();
  check_channel_tensor(run_std, "running_std", C, run_mean, run_mean, what);
  check_channel_tensor(run_mean, "running_mean", C, run_mean, run_mean, what);
  check_channel_tensor(batch_mean, "batch_mean", C, run_mean, run_mean, what);
  check_channel_tensor(batch_std, "batch_std", C, run_mean, run_mean, what);
  check_channel_tensor(r_max, "r_max", 1, run_mean, run_mean, what);
  check_channel_tensor(d_max, "d_max", 1, run_mean, run_mean, what);
  TORCH_CHECK(std::isfinite(momentum) && momentum >= 0 && momentum <= 1, what, ": momentum must be in [0, 1], got ",
              momentum);
  check_scalar(r_inc, "r_max_inc", what);
  check_scalar(d_inc, "d_max_inc", what);
  TORCH_CHECK(!std::isnan(max_r) && !std::isnan(max_d), what, ": max_r_max and max_d_max must not be NaN");
  R::update(run_mean, run_std, r_max, d_max, batch_mean, batch_std, momentum, r_inc, d_inc, max_r, max_d);
}

}  // namespace clfast::brn

#define CLFAST_REGISTER_BRN_OPS(m, Runner)                                 \
  do {                                                                     \
    m.impl("batch_renorm_forward", &::clfast::brn::forward_impl<Runner>);  \
    m.impl("batch_renorm_eval", &::clfast::brn::eval_impl<Runner>);        \
    m.impl("batch_renorm_backward", &::clfast::brn::backward_impl<Runner>); \
    m.impl("batch_renorm_update_", &::clfast::brn::update_impl<Runner>);   \
  } while (0)
