// Input validation shared by the CPU and CUDA kernels: bad input is an error, never a crash.
#include "state_ops/layout.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <string>

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

namespace {

// The model-tensor half of make_call: each param defined, of a model dtype, on call.device and contiguous.
void fill_params(ListFlatCall& call, const char* op, at::TensorList params, const char* device_owner) {
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
    TORCH_CHECK(p.device() == call.device, op, ": params[", i, "] is on ", p.device(), " but ", device_owner,
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
}

}  // namespace

ListFlatCall make_call(const char* op, at::TensorList params, const at::Tensor& state_ref,
                       const char* state_name) {
  TORCH_CHECK(state_ref.defined(), op, ": ", state_name, " is undefined");
  ListFlatCall call;
  call.device = state_ref.device();
  call.state_dtype = state_ref.scalar_type();
  fill_params(call, op, params, state_name);
  check_state_buffer(state_ref, op, state_name, call.total, call.state_dtype, call.device);
  return call;
}

ListFlatCall make_stateless_call(const char* op, at::TensorList params) {
  ListFlatCall call;
  call.device = params.empty() || !params[0].defined() ? at::Device(at::kCPU) : params[0].device();
  call.state_dtype = at::kFloat;
  fill_params(call, op, params, "params[0]");
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

void add_span(std::vector<ArgSpan>& spans, const char* name, const at::Tensor& t, bool written, int64_t index) {
  if (!t.defined() || t.numel() == 0) return;
  // Torch strides are never negative, so the last element is at sum((size - 1) * stride).
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto item = static_cast<uintptr_t>(t.element_size());
  spans.push_back({name, index, begin, begin + (static_cast<uintptr_t>(last) + 1) * item, written});
}

namespace {

std::string span_name(const ArgSpan& s) {
  return s.index < 0 ? std::string(s.name) : std::string(s.name) + "[" + std::to_string(s.index) + "]";
}

[[noreturn]] void refuse_overlap(const char* op, const ArgSpan& a, const ArgSpan& b) {
  const bool same = a.begin == b.begin && a.end == b.end;
  TORCH_CHECK(false, op, ": ", span_name(a), " and ", span_name(b), " must be different buffers (",
              same ? "they are the same memory" : "their memory overlaps", ", and ",
              a.written && b.written ? "both are" : "one of them is", " written)");
  __builtin_unreachable();
}

bool overlap(const ArgSpan& a, const ArgSpan& b) { return a.begin < b.end && b.begin < a.end; }

}  // namespace

void check_distinct(const char* op, std::vector<ArgSpan> spans) {
  // Usually a few written state buffers against many read model tensors: compare each written span with every
  // other one directly (no allocation, no sort). Errors name the two arguments in the order the op lists them.
  constexpr size_t kDirect = 8;
  size_t n_written = 0;
  for (const ArgSpan& s : spans) n_written += s.written ? 1 : 0;
  if (n_written <= kDirect) {
    for (size_t i = 0; i < spans.size(); ++i) {
      if (!spans[i].written) continue;
      for (size_t j = 0; j < spans.size(); ++j) {
        if (j == i || (spans[j].written && j < i)) continue;  // a written pair is compared once
        if (overlap(spans[i], spans[j])) refuse_overlap(op, spans[std::min(i, j)], spans[std::max(i, j)]);
      }
    }
    return;
  }
  // Many written spans (quad_penalty_grad_'s gradients): a sweep in address order instead of all pairs, as a
  // model has thousands of tensors and this runs on every call. Span c conflicts with an earlier-starting span
  // e iff c.begin < e.end and one of them is written, so it is enough to track the earlier span reaching
  // furthest, over all spans and over the written ones.
  // Stable: of two spans starting together the first passed is named first (the order the op lists them).
  std::stable_sort(spans.begin(), spans.end(), [](const ArgSpan& a, const ArgSpan& b) { return a.begin < b.begin; });
  const ArgSpan* far_any = nullptr;
  const ArgSpan* far_written = nullptr;
  for (const ArgSpan& c : spans) {
    const ArgSpan* other = c.written ? far_any : far_written;
    if (other != nullptr && c.begin < other->end) refuse_overlap(op, *other, c);
    if (far_any == nullptr || c.end > far_any->end) far_any = &c;
    if (c.written && (far_written == nullptr || c.end > far_written->end)) far_written = &c;
  }
}

}  // namespace clfast
