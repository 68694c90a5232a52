// The body of every clfast state op, written once and instantiated for each device by a
// Runner (cpu.cpp: CpuRunner, cuda.cu: CudaRunner).
//
// A Runner provides:
//   at::Tensor reduce(const ListFlatCall&, Make, double scale)  -> 0-dim tensor = scale * sum f
//   void       apply(const ListFlatCall&, Make)                 -> runs f for its side effects
//   at::Tensor max(const at::Tensor& flat)                       -> 0-dim max (NaN propagates)
//   at::Tensor rwalk_weights(const at::Tensor& fisher, const at::Tensor& scores)
//   at::Tensor nonfinite(at::TensorList tensors)                 -> bool[n]
// where Make is a generic callable (Tag<T>, Tag<P>, uint8_t variant) -> functor.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <initializer_list>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "state_ops/elementwise.h"
#include "state_ops/layout.h"

namespace clfast {

using OptTensorList = c10::List<std::optional<at::Tensor>>;

// One flat state argument for check_state_distinct: its name, the tensor and whether the op writes it.
struct FlatArg {
  const char* name;
  const at::Tensor& t;
  bool written;
};

// The spans of the model tensors of a call that make_call/add_grads validated, taken from `call`: they are
// contiguous, so each spans [ptr, ptr + numel * size), and this costs no tensor accessor calls on a model of
// thousands of tensors.
inline uintptr_t entry_bytes(const ListFlatCall& call, size_t i) {
  return static_cast<uintptr_t>((call.offsets[i + 1] - call.offsets[i]) *
                                static_cast<int64_t>(c10::elementSize(call.dtype[i])));
}

// params (list0), written or read. A read param that is exactly its own slice of one of `own_slice_of` (same dtype, starting at
// the entry's offset) is left out: every element of the list/flat ops is read and then written by one thread at
// one index, so that is an in-place alias, not a race. Plugins pass such views (slices of the anchor) as
// stand-ins for parameters the model lacks; the flat buffer itself is still checked against everything else,
// which covers them.
inline void add_param_spans(std::vector<ArgSpan>& spans, const ListFlatCall& call, bool written,
                            const std::vector<uintptr_t>& own_slice_of = {}) {
  const size_t state_item = c10::elementSize(call.state_dtype);
  for (size_t i = 0; i < call.size(); ++i) {
    if (call.list0[i] == nullptr) continue;
    const auto begin = reinterpret_cast<uintptr_t>(call.list0[i]);
    bool own_slice = false;
    if (call.dtype[i] == call.state_dtype) {
      const auto offset = static_cast<uintptr_t>(call.offsets[i]) * state_item;
      for (const uintptr_t flat : own_slice_of) own_slice = own_slice || begin == flat + offset;
    }
    if (!own_slice) spans.push_back({"params", static_cast<int64_t>(i), begin, begin + entry_bytes(call, i), written});
  }
}

// The second list (list1, e.g. grads; entries without a pointer are left out).
inline void add_list1_spans(std::vector<ArgSpan>& spans, const ListFlatCall& call, const char* name, bool written) {
  for (size_t i = 0; i < call.size(); ++i) {
    if (call.list1[i] == nullptr) continue;
    const auto begin = reinterpret_cast<uintptr_t>(call.list1[i]);
    spans.push_back({name, static_cast<int64_t>(i), begin, begin + entry_bytes(call, i), written});
  }
}

// The state buffers of a list/flat op against each other and against its model tensors: the params (read, with
// the in-place aliases of add_param_spans allowed; or written, by an optimizer step, with none allowed) and the
// grads if `with_grads`. Undefined optional buffers are left out.
inline void check_state_distinct(const char* op, const ListFlatCall& call, std::initializer_list<FlatArg> flats,
                                 bool with_grads = false, bool params_written = false) {
  std::vector<ArgSpan> spans;
  spans.reserve(flats.size() + (with_grads ? 2 : 1) * call.size());
  std::vector<uintptr_t> own_slice_of;  // written params (an optimizer step) may alias nothing
  for (const FlatArg& f : flats) {
    add_span(spans, f.name, f.t, f.written);
    if (!params_written && f.t.defined()) own_slice_of.push_back(reinterpret_cast<uintptr_t>(f.t.data_ptr()));
  }
  add_param_spans(spans, call, params_written, own_slice_of);
  if (with_grads) add_list1_spans(spans, call, "grads", /*written=*/false);
  check_distinct(op, std::move(spans));
}

template <class R>
at::Tensor quad_penalty_impl(at::TensorList params, const at::Tensor& importance, const at::Tensor& anchor,
                             double lam) {
  constexpr const char* op = "clfast::quad_penalty";
  check_lambda(op, "lam", lam);
  ListFlatCall call = make_call(op, params, importance, "importance");
  check_state_buffer(anchor, op, "anchor", call.total, call.state_dtype, call.device);
  call.flat = {importance.data_ptr(), anchor.data_ptr(), nullptr, nullptr};
  return R::reduce(call, [](auto pt, auto st, uint8_t) {
    return QuadPenaltyValue<typename decltype(pt)::type, typename decltype(st)::type>{};
  }, lam);
}

template <class R>
std::vector<at::Tensor> quad_penalty_backward_impl(const at::Tensor& grad_out, at::TensorList params,
                                                   const at::Tensor& importance, const at::Tensor& anchor,
                                                   double lam) {
  constexpr const char* op = "clfast::quad_penalty_backward";
  check_lambda(op, "lam", lam);
  ListFlatCall call = make_call(op, params, importance, "importance");
  check_state_buffer(anchor, op, "anchor", call.total, call.state_dtype, call.device);
  TORCH_CHECK(grad_out.numel() == 1, op, ": grad_out must hold one element, got shape ", grad_out.sizes());
  TORCH_CHECK(grad_out.device() == call.device, op, ": grad_out is on ", grad_out.device(), " but importance is on ",
              call.device);
  // The upstream gradient stays on the device: the kernels read it, no host sync.
  const at::Tensor upstream = grad_out.reshape({1}).to(call.state_dtype).contiguous();
  std::vector<at::Tensor> out;
  out.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    out.push_back(at::empty_like(params[i], at::MemoryFormat::Contiguous));
    call.list1[i] = out.back().numel() ? out.back().data_ptr() : nullptr;
  }
  call.flat = {importance.data_ptr(), anchor.data_ptr(), nullptr, nullptr};
  const double coef = 2.0 * lam;
  void* upstream_ptr = upstream.data_ptr();
  R::apply(call, [coef, upstream_ptr](auto pt, auto st, uint8_t) {
    using P = typename decltype(st)::type;
    using F = QuadPenaltyGradWrite<typename decltype(pt)::type, P>;
    return F{static_cast<typename F::A>(coef), static_cast<const P*>(upstream_ptr)};
  });
  return out;
}

template <class R>
at::Tensor quad_penalty_grad_impl(at::TensorList grads, at::TensorList params, const at::Tensor& importance,
                                  const at::Tensor& anchor, double lam, at::IntArrayRef mode) {
  constexpr const char* op = "clfast::quad_penalty_grad_";
  check_lambda(op, "lam", lam);
  ListFlatCall call = make_call(op, params, importance, "importance");
  check_state_buffer(anchor, op, "anchor", call.total, call.state_dtype, call.device);
  TORCH_CHECK(grads.size() == params.size(), op, ": got ", params.size(), " params but ", grads.size(), " grads");
  TORCH_CHECK(mode.size() == params.size(), op, ": got ", params.size(), " params but ", mode.size(), " modes");
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(mode[i] >= 0 && mode[i] <= 2, op, ": mode[", i, "] must be 0 (accumulate), 1 (overwrite) or 2 (no ",
                "gradient), got ", mode[i]);
    call.variant[i] = static_cast<uint8_t>(mode[i]);
    if (mode[i] == 2) continue;  // value only: grads[i] is a placeholder
    TORCH_CHECK(grads[i].defined(), op, ": grads[", i, "] is undefined");
    check_grad(op, "grads", i, params[i], grads[i]);
    call.list1[i] = grads[i].numel() ? grads[i].data_ptr() : nullptr;
  }
  std::vector<ArgSpan> spans;
  spans.reserve(2 * call.size() + 2);
  add_list1_spans(spans, call, "grads", /*written=*/true);  // a skipped entry's grads[i] is not in list1
  add_param_spans(spans, call, /*written=*/false);
  add_span(spans, "importance", importance, false);
  add_span(spans, "anchor", anchor, false);
  check_distinct(op, std::move(spans));
  call.flat = {importance.data_ptr(), anchor.data_ptr(), nullptr, nullptr};
  const double coef = 2.0 * lam;
  return R::reduce(call, [coef](auto pt, auto st, uint8_t variant) {
    using F = QuadPenaltyGradAccumulate<typename decltype(pt)::type, typename decltype(st)::type>;
    return F{static_cast<typename F::A>(coef), static_cast<QuadPenaltyGradMode>(variant)};
  }, lam);
}

template <class R>
void mas_importance_update_impl(const at::Tensor& importance, at::TensorList params, const OptTensorList& grads,
                                double scale) {
  constexpr const char* op = "clfast::mas_importance_update_";
  check_lambda(op, "scale", scale);
  ListFlatCall call = make_call(op, params, importance, "importance");
  add_grads(call, op, "grads", params, grads, /*skip_missing=*/true);
  check_state_distinct(op, call, {{"importance", importance, true}}, /*with_grads=*/true);
  call.flat = {importance.data_ptr(), nullptr, nullptr, nullptr};
  R::apply(call, [scale](auto pt, auto st, uint8_t) {
    using F = MasImportanceUpdate<typename decltype(pt)::type, typename decltype(st)::type>;
    return F{static_cast<typename F::A>(scale)};
  });
}

template <class R>
void ema_sq_update_impl(const at::Tensor& fisher, at::TensorList params, const OptTensorList& grads, double alpha) {
  constexpr const char* op = "clfast::ema_sq_update_";
  TORCH_CHECK(alpha >= 0.0 && alpha <= 1.0, op, ": alpha must be in [0, 1], got ", alpha);
  ListFlatCall call = make_call(op, params, fisher, "fisher");
  add_grads(call, op, "grads", params, grads, /*skip_missing=*/true);
  check_state_distinct(op, call, {{"fisher", fisher, true}}, /*with_grads=*/true);
  call.flat = {fisher.data_ptr(), nullptr, nullptr, nullptr};
  R::apply(call, [alpha](auto pt, auto st, uint8_t) {
    using F = EmaSqUpdate<typename decltype(pt)::type, typename decltype(st)::type>;
    return F{static_cast<typename F::A>(alpha)};
  });
}

template <class R>
void path_integral_update_impl(const at::Tensor& acc, const at::Tensor& prev_params, at::TensorList params,
                               const OptTensorList& grads) {
  constexpr const char* op = "clfast::path_integral_update_";
  ListFlatCall call = make_call(op, params, acc, "acc");
  check_state_buffer(prev_params, op, "prev_params", call.total, call.state_dtype, call.device);
  add_grads(call, op, "grads", params, grads, /*skip_missing=*/false);
  check_state_distinct(op, call, {{"acc", acc, true}, {"prev_params", prev_params, true}}, /*with_grads=*/true);
  for (size_t i = 0; i < params.size(); ++i) call.variant[i] = call.list1[i] != nullptr ? 1 : 0;
  call.flat = {acc.data_ptr(), prev_params.data_ptr(), nullptr, nullptr};
  R::apply(call, [](auto pt, auto st, uint8_t variant) {
    return PathIntegralUpdate<typename decltype(pt)::type, typename decltype(st)::type>{variant != 0};
  });
}

template <class R>
void rwalk_score_update_impl(const at::Tensor& scores, const at::Tensor& loss_acc, const at::Tensor& ckpt_params,
                             const at::Tensor& fisher, at::TensorList params, double eps) {
  constexpr const char* op = "clfast::rwalk_score_update_";
  TORCH_CHECK(eps > 0.0 && std::isfinite(eps), op, ": eps must be positive and finite, got ", eps);
  ListFlatCall call = make_call(op, params, scores, "scores");
  check_state_buffer(loss_acc, op, "loss_acc", call.total, call.state_dtype, call.device);
  check_state_buffer(ckpt_params, op, "ckpt_params", call.total, call.state_dtype, call.device);
  check_state_buffer(fisher, op, "fisher", call.total, call.state_dtype, call.device);
  check_state_distinct(op, call, {{"scores", scores, true}, {"loss_acc", loss_acc, true},
                            {"ckpt_params", ckpt_params, true}, {"fisher", fisher, false}});
  call.flat = {scores.data_ptr(), loss_acc.data_ptr(), ckpt_params.data_ptr(), fisher.data_ptr()};
  R::apply(call, [eps](auto pt, auto st, uint8_t) {
    using F = RWalkScoreUpdate<typename decltype(pt)::type, typename decltype(st)::type>;
    return F{static_cast<typename F::A>(eps)};
  });
}

template <class R>
void si_consolidate_impl(const at::Tensor& cum, const at::Tensor& importance, const at::Tensor& omega,
                         const at::Tensor& anchor, at::TensorList params, double c, double eps, double clip) {
  constexpr const char* op = "clfast::si_consolidate_";
  check_lambda(op, "c", c);
  TORCH_CHECK(eps > 0.0 && std::isfinite(eps), op, ": eps must be positive and finite, got ", eps);
  TORCH_CHECK(!std::isnan(clip), op, ": clip must not be NaN");
  ListFlatCall call = make_call(op, params, cum, "cum");
  check_state_buffer(importance, op, "importance", call.total, call.state_dtype, call.device);
  check_state_buffer(omega, op, "omega", call.total, call.state_dtype, call.device);
  check_state_buffer(anchor, op, "anchor", call.total, call.state_dtype, call.device);
  check_state_distinct(op, call, {{"cum", cum, true}, {"importance", importance, true}, {"omega", omega, true},
                            {"anchor", anchor, true}});
  call.flat = {cum.data_ptr(), importance.data_ptr(), omega.data_ptr(), anchor.data_ptr()};
  R::apply(call, [c, eps, clip](auto pt, auto st, uint8_t) {
    using F = SIConsolidate<typename decltype(pt)::type, typename decltype(st)::type>;
    using A = typename F::A;
    return F{static_cast<A>(c), static_cast<A>(eps), static_cast<A>(clip)};
  });
}

// ---- optimizer steps (torch.optim.SGD / Adam / AdamW), the penalty optionally inside ---------------------------

// The optional penalty of a step: Omega and theta* both or neither, as flat buffers of the call; lam finite.
inline void check_step_penalty(const char* op, const ListFlatCall& call, const std::optional<at::Tensor>& importance,
                               const std::optional<at::Tensor>& anchor, double lam) {
  const bool has_omega = importance.has_value() && importance->defined();
  const bool has_anchor = anchor.has_value() && anchor->defined();
  TORCH_CHECK(has_omega == has_anchor, op, ": importance and anchor go together (the penalty needs both)");
  check_lambda(op, "lam", lam);
  if (!has_omega) return;
  check_state_buffer(*importance, op, "importance", call.total, call.state_dtype, call.device);
  check_state_buffer(*anchor, op, "anchor", call.total, call.state_dtype, call.device);
}

// The optional path integral of a step (acc -= g_path (theta_new - theta_old); theta_prev = theta_new): acc and
// theta_prev both or neither, as flat buffers of the call; `path_penalised` says which gradient (elementwise.h).
// Returns the kernel's PathGrad.
inline int check_step_path(const char* op, const ListFlatCall& call, const std::optional<at::Tensor>& path_acc,
                           const std::optional<at::Tensor>& path_prev, bool path_penalised, bool has_penalty) {
  const bool has_acc = path_acc.has_value() && path_acc->defined();
  const bool has_prev = path_prev.has_value() && path_prev->defined();
  TORCH_CHECK(has_acc == has_prev, op, ": path_acc and path_prev go together (the path integral needs both)");
  if (!has_acc) return kNoPath;
  check_state_buffer(*path_acc, op, "path_acc", call.total, call.state_dtype, call.device);
  check_state_buffer(*path_prev, op, "path_prev", call.total, call.state_dtype, call.device);
  // Without a penalty the penalised gradient is the task gradient.
  return path_penalised && has_penalty ? kPathPenalisedGrad : kPathTaskGrad;
}

inline void* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr() : nullptr;
}

// A step's value without a penalty: a zero of the state dtype on the device (no reduction is run).
inline at::Tensor step_without_penalty_value(const ListFlatCall& call) {
  return at::zeros({}, at::TensorOptions().dtype(call.state_dtype).device(call.device));
}

inline void check_nonnegative(const char* op, const char* what, double value) {
  TORCH_CHECK(std::isfinite(value) && value >= 0.0, op, ": ", what, " must be finite and >= 0, got ", value);
}

// Calls make(path_tag) with the PathGrad `path` as a compile-time constant.
template <typename Make>
auto with_path(int path, Make&& make) {
  if (path == kPathPenalisedGrad) return make(std::integral_constant<int, kPathPenalisedGrad>{});
  if (path == kPathTaskGrad) return make(std::integral_constant<int, kPathTaskGrad>{});
  return make(std::integral_constant<int, kNoPath>{});
}

// Runs a step functor: a reduction (the penalty's value) with a penalty, else an apply and a zero.
template <class R, typename Make>
at::Tensor run_step(const ListFlatCall& call, bool has_penalty, double lam, Make&& make) {
  if (has_penalty) return R::reduce(call, make, lam);
  R::apply(call, make);
  return step_without_penalty_value(call);
}

template <class R>
at::Tensor sgd_step_impl(at::TensorList params, const OptTensorList& grads,
                         const std::optional<at::Tensor>& momentum_buffer, const std::optional<at::Tensor>& importance,
                         const std::optional<at::Tensor>& anchor, double lr, double momentum, double dampening,
                         double weight_decay, bool nesterov, bool maximize, bool first, double lam,
                         const std::optional<at::Tensor>& path_acc, const std::optional<at::Tensor>& path_prev,
                         bool path_penalised) {
  constexpr const char* op = "clfast::sgd_step_";
  check_nonnegative(op, "lr", lr);
  check_nonnegative(op, "momentum", momentum);
  TORCH_CHECK(std::isfinite(dampening), op, ": dampening must be finite, got ", dampening);
  check_nonnegative(op, "weight_decay", weight_decay);
  TORCH_CHECK(!nesterov || (momentum > 0.0 && dampening == 0.0), op,
              ": nesterov needs momentum > 0 and dampening 0");
  const bool has_buffer = momentum_buffer.has_value() && momentum_buffer->defined();
  TORCH_CHECK(has_buffer == (momentum != 0.0), op, ": momentum_buffer must be given exactly when momentum != 0 (",
              "momentum ", momentum, ", buffer ", has_buffer ? "given" : "missing", ")");
  const bool has_omega = importance.has_value() && importance->defined();
  const bool has_acc = path_acc.has_value() && path_acc->defined();
  ListFlatCall call = has_buffer  ? make_call(op, params, *momentum_buffer, "momentum_buffer")
                      : has_omega ? make_call(op, params, *importance, "importance")
                      : has_acc   ? make_call(op, params, *path_acc, "path_acc")
                                  : make_stateless_call(op, params);
  check_step_penalty(op, call, importance, anchor, lam);
  const int path = check_step_path(op, call, path_acc, path_prev, path_penalised, has_omega);
  add_grads(call, op, "grads", params, grads, /*skip_missing=*/true);
  const at::Tensor none;
  check_state_distinct(op, call, {{"momentum_buffer", has_buffer ? *momentum_buffer : none, true},
                                  {"importance", has_omega ? *importance : none, false},
                                  {"anchor", has_omega ? *anchor : none, false},
                                  {"path_acc", has_acc ? *path_acc : none, true},
                                  {"path_prev", has_acc ? *path_prev : none, true}},
                       /*with_grads=*/true, /*params_written=*/true);
  call.flat = {data_or_null(momentum_buffer), data_or_null(importance), data_or_null(anchor), data_or_null(path_acc),
               data_or_null(path_prev)};
  const double coef = 2.0 * lam;
  auto make_step = [&](auto with_momentum, auto with_penalty, auto path_tag) {
    return [=](auto pt, auto st, uint8_t) {
      using F = SgdStep<typename decltype(pt)::type, typename decltype(st)::type, decltype(with_momentum)::value,
                        decltype(with_penalty)::value, decltype(path_tag)::value>;
      using A = typename F::A;
      return F{static_cast<A>(lr), static_cast<A>(momentum), static_cast<A>(1.0 - dampening),
               static_cast<A>(weight_decay), static_cast<A>(coef), nesterov, maximize, first};
    };
  };
  return with_path(path, [&](auto path_tag) {
    if (has_omega) {
      return has_buffer ? run_step<R>(call, true, lam, make_step(std::true_type{}, std::true_type{}, path_tag))
                        : run_step<R>(call, true, lam, make_step(std::false_type{}, std::true_type{}, path_tag));
    }
    return has_buffer ? run_step<R>(call, false, lam, make_step(std::true_type{}, std::false_type{}, path_tag))
                      : run_step<R>(call, false, lam, make_step(std::false_type{}, std::false_type{}, path_tag));
  });
}

template <class R>
at::Tensor adam_step_impl(at::TensorList params, const OptTensorList& grads, const at::Tensor& exp_avg,
                          const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& importance,
                          const std::optional<at::Tensor>& anchor, double lr, double beta1, double beta2, double eps,
                          double weight_decay, bool decoupled, bool maximize, int64_t step, double lam,
                          const std::optional<at::Tensor>& path_acc, const std::optional<at::Tensor>& path_prev,
                          bool path_penalised) {
  constexpr const char* op = "clfast::adam_step_";
  check_nonnegative(op, "lr", lr);
  TORCH_CHECK(beta1 >= 0.0 && beta1 < 1.0, op, ": beta1 must be in [0, 1), got ", beta1);
  TORCH_CHECK(beta2 >= 0.0 && beta2 < 1.0, op, ": beta2 must be in [0, 1), got ", beta2);
  check_nonnegative(op, "eps", eps);
  check_nonnegative(op, "weight_decay", weight_decay);
  TORCH_CHECK(step >= 1, op, ": step must be >= 1 (the count after this step), got ", step);
  ListFlatCall call = make_call(op, params, exp_avg, "exp_avg");
  check_state_buffer(exp_avg_sq, op, "exp_avg_sq", call.total, call.state_dtype, call.device);
  check_step_penalty(op, call, importance, anchor, lam);
  const bool has_omega = importance.has_value() && importance->defined();
  const int path = check_step_path(op, call, path_acc, path_prev, path_penalised, has_omega);
  const bool has_acc = path != kNoPath;
  add_grads(call, op, "grads", params, grads, /*skip_missing=*/true);
  const at::Tensor none;
  check_state_distinct(op, call, {{"exp_avg", exp_avg, true}, {"exp_avg_sq", exp_avg_sq, true},
                                  {"importance", has_omega ? *importance : none, false},
                                  {"anchor", has_omega ? *anchor : none, false},
                                  {"path_acc", has_acc ? *path_acc : none, true},
                                  {"path_prev", has_acc ? *path_prev : none, true}},
                       /*with_grads=*/true, /*params_written=*/true);
  call.flat = {exp_avg.data_ptr(), exp_avg_sq.data_ptr(), data_or_null(importance), data_or_null(anchor),
               data_or_null(path_acc), data_or_null(path_prev)};
  // As torch.optim computes them, in double on the host: 1 - beta1^t and (1 - beta2^t)^0.5.
  const auto t = static_cast<double>(step);
  const double step_size = lr / (1.0 - std::pow(beta1, t));
  const double bc2_sqrt = std::pow(1.0 - std::pow(beta2, t), 0.5);
  const double coef = 2.0 * lam;
  auto make_step = [&](auto with_penalty, auto path_tag) {
    return [=](auto pt, auto st, uint8_t) {
      using F = AdamStep<typename decltype(pt)::type, typename decltype(st)::type, decltype(with_penalty)::value,
                         decltype(path_tag)::value>;
      using A = typename F::A;
      return F{static_cast<A>(1.0 - beta1), static_cast<A>(beta2), static_cast<A>(1.0 - beta2), static_cast<A>(eps),
               static_cast<A>(weight_decay), static_cast<A>(1.0 - lr * weight_decay), static_cast<A>(coef),
               static_cast<A>(step_size), static_cast<A>(bc2_sqrt), decoupled, maximize};
    };
  };
  return with_path(path, [&](auto path_tag) {
    return has_omega ? run_step<R>(call, true, lam, make_step(std::true_type{}, path_tag))
                     : run_step<R>(call, false, lam, make_step(std::false_type{}, path_tag));
  });
}

inline void check_flat(const char* op, const char* what, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", what, " is undefined");
  check_state_buffer(t, op, what, t.numel(), t.scalar_type(), t.device());
}

template <class R>
at::Tensor state_max_impl(const at::Tensor& state) {
  constexpr const char* op = "clfast::state_max";
  check_flat(op, "state", state);
  TORCH_CHECK(state.numel() > 0, op, ": state is empty; the maximum of an empty state is undefined");
  return R::max(state);
}

template <class R>
at::Tensor rwalk_penalty_weights_impl(const at::Tensor& fisher, const at::Tensor& scores) {
  constexpr const char* op = "clfast::rwalk_penalty_weights";
  check_flat(op, "fisher", fisher);
  check_state_buffer(scores, op, "scores", fisher.numel(), fisher.scalar_type(), fisher.device());
  return R::rwalk_weights(fisher, scores);
}

template <class R>
at::Tensor nonfinite_flags_impl(at::TensorList tensors) {
  constexpr const char* op = "clfast::nonfinite_flags";
  TORCH_CHECK(!tensors.empty(), op, ": tensors is empty");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.defined(), op, ": tensors[", i, "] is undefined");
    const auto s = t.scalar_type();
    TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kBFloat16 || s == at::kHalf, op, ": tensors[", i,
                "] must be float32, float64, bfloat16 or float16, got ", s);
    TORCH_CHECK(t.device() == tensors[0].device(), op, ": tensors[", i, "] is on ", t.device(), " but tensors[0] is on ",
                tensors[0].device());
  }
  std::vector<at::Tensor> dense;
  dense.reserve(tensors.size());
  for (const auto& t : tensors) dense.push_back(t.contiguous());
  return R::nonfinite(dense);
}

}  // namespace clfast

// Registers every state op for one device: the single list shared by cpu.cpp and cuda.cu.
#define CLFAST_REGISTER_STATE_OPS(m, Runner)                                            \
  do {                                                                                  \
    (m).impl("quad_penalty", &::clfast::quad_penalty_impl<Runner>);                     \
    (m).impl("quad_penalty_backward", &::clfast::quad_penalty_backward_impl<Runner>);   \
    (m).impl("quad_penalty_grad_", &::clfast::quad_penalty_grad_impl<Runner>);          \
    (m).impl("mas_importance_update_", &::clfast::mas_importance_update_impl<Runner>);  \
    (m).impl("ema_sq_update_", &::clfast::ema_sq_update_impl<Runner>);                  \
    (m).impl("path_integral_update_", &::clfast::path_integral_update_impl<Runner>);    \
    (m).impl("rwalk_score_update_", &::clfast::rwalk_score_update_impl<Runner>);        \
    (m).impl("si_consolidate_", &::clfast::si_consolidate_impl<Runner>);                \
    (m).impl("state_max", &::clfast::state_max_impl<Runner>);                           \
    (m).impl("rwalk_penalty_weights", &::clfast::rwalk_penalty_weights_impl<Runner>);   \
    (m).impl("nonfinite_flags", &::clfast::nonfinite_flags_impl<Runner>);               \
    (m).impl("sgd_step_", &::clfast::sgd_step_impl<Runner>);                            \
    (m).impl("adam_step_", &::clfast::adam_step_impl<Runner>);                          \
  } while (0)
