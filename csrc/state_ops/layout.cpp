// Input validation shared by the CPU and CUDA kernels: bad input is an error, never a crash.
#include "state_ops/layout.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace clfast {

namespace {

bool is_model_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kDouble || s == at::kBFloat16 || s == at::kHalf;
}

}  // namespace

void check_state_buffer(const at::Tensor& t, const char* op, const char* what, int64_t expected_numel,
                        at::ScalarType state_dtype, at::Device device) {
  TORCH_CHECK(t.defined(), op, ": ", what, " is undefined");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", what,
              " must be a float32 or float64 state buffer, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == state_dtype, op, ": ", what, " has dtype ", t.scalar_type(),
              " but the other state buffers have dtype ", state_dtype);
  TORCH_CHECK(t.dim() == 1, op, ": ", what, " must be a 1-D flat state buffer, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", what, " must be contiguous");
  TORCH_CHECK(t.device() == device, op, ": ", what, " is on ", t.device(), " but expected ", device);
  TORCH_CHECK(t.numel() == expected_numel, op, ": ", what, " has ", t.numel(),
              " elements but the parameters have ", expected_numel, " in total");
}

ListFlatCall make_call(const char* op, at::TensorList params, const at::Tensor& state_ref,
                       const char* state_name) {
  TORCH_CHECK(state_ref.defined(), op, ": ", state_name, " is undefined");
  ListFlatCall call;
  call.device = state_ref.device();
  call.state_dtype = state_ref.scalar_type();
  const size_t n = params.size();
  call.offsets.resize(n + 1);
  call.list0.resize(n);
  call.list1.assign(n, nullptr);
  call.dtype.resize(n);
  call.active.assign(n, 1);
  call.variant.assign(n, 0);
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), op, ": params[", i, "] is undefined");
    TORCH_CHECK(is_model_dtype(p.scalar_type()), op, ": params[", i,
                "] must be float32, float64, bfloat16 or float16, got ", p.scalar_type());
    TORCH_CHECK(p.device() == call.device, op, ": params[", i, "] is on ", p.device(), " but ", state_name,
                " is on ", call.device);
    TORCH_CHECK(p.is_contiguous(), op, ": params[", i, "] (shape ", p.sizes(), ", strides ", p.strides(),
                ") is not contiguous; pass .contiguous() tensors");
    call.offsets[i] = total;
    total += p.numel();
    call.list0[i] = p.numel() ? p.data_ptr() : nullptr;
    call.dtype[i] = p.scalar_type();
  }
  call.offsets[n] = total;
  call.total = total;
  check_state_buffer(state_ref, op, state_name, total, call.state_dtype, call.device);
  return call;
}

void check_grad(const char* op, const char* what, size_t i, const at::Tensor& p, const at::Tensor& g) {
  TORCH_CHECK(g.sizes() == p.sizes(), op, ": ", what, "[", i, "] has shape ", g.sizes(), " but params[", i,
              "] has shape ", p.sizes());
  TORCH_CHECK(g.scalar_type() == p.scalar_type(), op, ": ", what, "[", i, "] has dtype ", g.scalar_type(),
              " but params[", i, "] has dtype ", p.scalar_type());
  TORCH_CHECK(g.device() == p.device(), op, ": ", what, "[", i, "] is on ", g.device(), " but params[", i,
              "] is on ", p.device());
  TORCH_CHECK(g.is_contiguous(), op, ": ", what, "[", i, "] is not contiguous");
}

void add_grads(ListFlatCall& call, const char* op, const char* what, at::TensorList params,
               const c10::List<std::optional<at::Tensor>>& grads, bool skip_missing) {
  TORCH_CHECK(grads.size() == params.size(), op, ": got ", params.size(), " params but ", grads.size(), " ",
              what);
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::optional<at::Tensor> maybe_grad = grads.get(i);
    if (!maybe_grad.has_value() || !maybe_grad->defined()) {
      call.list1[i] = nullptr;
      call.active[i] = skip_missing ? 0 : 1;
      continue;
    }
    const at::Tensor& g = *maybe_grad;
    check_grad(op, what, i, params[i], g);
    call.list1[i] = g.numel() ? g.data_ptr() : nullptr;
  }
}

void check_lambda(const char* op, const char* what, double value) {
  TORCH_CHECK(std::isfinite(value), op, ": ", what, " must be finite, got ", value);
}

}  // namespace clfast
