// The clfast op catalogue: every schema in one TORCH_LIBRARY block.
//
// Conventions (see clfast/ops/ for the typed wrappers, clfast/_reference.py for the math and
// clfast/testing/opinfo.py for the registry that ties each schema to both):
// - `params` / `grads` are the model's tensors; tensor i owns the slice
//   [sum_{j<i} numel_j, sum_{j<=i} numel_j) of every flat state buffer (FlatState's table order).
// - State buffers are 1-D contiguous float32/float64; model tensors float32/float64/bfloat16/float16.
// - A `Tensor?[] grads` entry of None means "this parameter has no gradient": see each op.
#include <torch/library.h>

TORCH_LIBRARY(clfast, m) {
  // Each family's fakes and autograd live in its clfast.ops module; kernels in csrc/<family>/.
  m.set_python_module("clfast.ops.state_ops");
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
  // Optimizer steps (kernels in csrc/state_ops/): torch.optim's update of every param with a grad (None grads are
  // skipped), in one multi-tensor pass. With importance and anchor, the gradient is first grad + 2 lam Omega
  // (theta - theta*); the result is lam * sum Omega (theta - theta*)^2 at the params before the step (0 without).
  // With path_acc and path_prev, last: path_acc -= g (theta_new - theta_old), path_prev = theta_new, g the grad
  // (RWalk's task gradient) or, with path_penalised, the gradient with the penalty's (SI's .grad).
  m.set_python_module("clfast.ops.optim");
  // SGD. momentum_buffer exactly when momentum != 0; first: the buffer is set to the gradient (torch's first step).
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor?[] grads, Tensor(b!)? momentum_buffer, Tensor? importance, "
      "Tensor? anchor, float lr, float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, "
      "bool first, float lam, Tensor(c!)? path_acc=None, Tensor(d!)? path_prev=None, bool path_penalised=False) "
      "-> Tensor");
  // Adam (decoupled: AdamW's weight decay). step: the step count after this step (bias corrections), >= 1.
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor?[] grads, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor? importance, Tensor? anchor, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool decoupled, bool maximize, int step, float lam, Tensor(d!)? path_acc=None, Tensor(e!)? path_prev=None, "
      "bool path_penalised=False) -> Tensor");
  // One bool per tensor: does it hold a NaN or an infinity? (kernels in csrc/state_ops/)
  m.set_python_module("clfast.ops.finite");
  m.def("nonfinite_flags(Tensor[] tensors) -> Tensor");

  // Batch Renormalization (Ioffe 2017; docs/avalanche-semantics.md §5).
  m.set_python_module("clfast.ops.batch_renorm");
  // input: (N, C, *), NCHW-contiguous or
  // channels-last, float32/float64/float16/bfloat16. Per-channel tensors (C elements; r_max, d_max: 1) share
  // one dtype, float32 or float64 (the statistics dtype).
  // Training forward -> (y, batch mean, batch std = sqrt(biased var + eps), r, d); r, d are stop-gradient.
  m.def(
      "batch_renorm_forward(Tensor input, Tensor weight, Tensor bias, Tensor running_mean, Tensor running_std, "
      "Tensor r_max, Tensor d_max, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // After a training forward: running mean/std move towards the batch's by `momentum`; r_max += r_max_inc
  // while r_max < max_r_max, and the same for d_max (Avalanche's per-sample ramp: inc = step * batch size).
  m.def(
      "batch_renorm_update_(Tensor(a!) running_mean, Tensor(b!) running_std, Tensor(c!) r_max, Tensor(d!) d_max, "
      "Tensor batch_mean, Tensor batch_std, float momentum, float r_max_inc, float d_max_inc, float max_r_max, "
      "float max_d_max) -> ()");
  // Eval forward: y = weight (x - running_mean) / running_std + bias.
  m.def(
      "batch_renorm_eval(Tensor input, Tensor weight, Tensor bias, Tensor running_mean, Tensor running_std) -> Tensor");
  // Backward of either forward -> (grad_input, grad_weight, grad_bias). train: mean/std are the batch's and the
  // gradient flows through them; otherwise they are constants (eval: running stats, r = 1, d = 0).
  m.def(
      "batch_renorm_backward(Tensor grad_out, Tensor input, Tensor weight, Tensor mean, Tensor std, Tensor r, "
      "Tensor d, bool train) -> (Tensor, Tensor, Tensor)");
}
