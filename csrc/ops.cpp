// The clfast op catalogue: every schema in one TORCH_LIBRARY block.
//
// Conventions (see clfast/ops.py for the typed wrappers and clfast/_reference.py for the math):
// - `params` / `grads` are the model's tensors; tensor i owns the slice
//   [sum_{j<i} numel_j, sum_{j<=i} numel_j) of every flat state buffer (FlatState's table order).
// - State buffers are 1-D contiguous float32/float64; model tensors float32/float64/bfloat16/float16.
// - A `Tensor?[] grads` entry of None means "this parameter has no gradient": see each op.
#include <torch/library.h>

TORCH_LIBRARY(clfast, m) {
  m.set_python_module("clfast.ops");
  // lam * sum Omega (theta - theta*)^2 -> 0-dim tensor (state dtype); differentiable w.r.t. params.
  m.def("quad_penalty(Tensor[] params, Tensor importance, Tensor anchor, float lam) -> Tensor");
  // grad_out * 2 lam Omega (theta - theta*), one new tensor per param.
  m.def(
      "quad_penalty_backward(Tensor grad_out, Tensor[] params, Tensor importance, Tensor anchor, float lam) "
      "-> Tensor[]");
  // Penalty value, and its gradient 2 lam Omega (theta - theta*) written into grads[i] according to
  // grad_mode[i]: 0 accumulate (+=), 1 overwrite (=), 2 no gradient (grads[i] is ignored; frozen params).
  m.def(
      "quad_penalty_grad_(Tensor(a!)[] grads, Tensor[] params, Tensor importance, Tensor anchor, float lam, "
      "int[] grad_mode) -> Tensor");
  // MAS: importance += scale * |g|; tensors whose grad is None are left as they are.
  m.def("mas_importance_update_(Tensor(a!) importance, Tensor[] params, Tensor?[] grads, float scale) -> ()");
  // EWC++ / RWalk Fisher: fisher = alpha g^2 + (1 - alpha) fisher; None grads: left as they are.
  m.def("ema_sq_update_(Tensor(a!) fisher, Tensor[] params, Tensor?[] grads, float alpha) -> ()");
  // SI omega / RWalk loss: acc -= g (theta - prev); prev = theta. None grads: acc unchanged, prev = theta.
  m.def(
      "path_integral_update_(Tensor(a!) acc, Tensor(b!) prev_params, Tensor[] params, Tensor?[] grads) -> ()");
  // RWalk: scores += loss_acc / (1/2 fisher (theta - ckpt)^2 + eps); loss_acc = 0; ckpt = theta.
  m.def(
      "rwalk_score_update_(Tensor(a!) scores, Tensor(b!) loss_acc, Tensor(c!) ckpt_params, Tensor fisher, "
      "Tensor[] params, float eps) -> ()");
  // SI: cum += c (-omega) / ((theta - anchor)^2 + eps); importance = min(-cum, clip); omega = 0; anchor = theta.
  m.def(
      "si_consolidate_(Tensor(a!) cum, Tensor(b!) importance, Tensor(c!) omega, Tensor(d!) anchor, "
      "Tensor[] params, float c, float eps, float clip) -> ()");
  // Global maximum of a flat state (NaN propagates) -> 0-dim tensor.
  m.def("state_max(Tensor state) -> Tensor");
  // RWalk: fisher / max fisher + relu(scores) / max scores; a term whose max is <= 0 contributes 0.
  m.def("rwalk_penalty_weights(Tensor fisher, Tensor scores) -> Tensor");
  // One bool per tensor: does it hold a NaN or an infinity?
  m.def("nonfinite_flags(Tensor[] tensors) -> Tensor");
}
