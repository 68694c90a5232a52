// Host-side description of one "model tensors + flat state" call, shared by the CPU
// and CUDA kernels: the validated inputs reduced to raw pointers and offsets.
//
// Contract of every list/flat op: model tensor i (params[i], grads[i]) owns the slice
// [offsets[i], offsets[i+1]) of every flat state buffer, with offsets the running sum
// of the tensors' numel (the order of clfast.state.FlatState's table).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>

#include <optional>

#include <array>
#include <cstdint>
#include <vector>

namespace clfast {

struct ListFlatCall {
  int64_t total = 0;                  // sum of numel = length of each flat buffer
  std::vector<int64_t> offsets;       // n + 1 running offsets
  std::vector<void*> list0;           // per tensor base pointer of the first list (params)
  std::vector<void*> list1;           // per tensor base pointer of the second list (grads), may be null
  std::vector<at::ScalarType> dtype;  // per tensor element type of the lists
  std::vector<uint8_t> active;        // 0: tensor skipped entirely
  std::vector<uint8_t> variant;       // per tensor functor variant (e.g. has_grad, overwrite)
  std::array<void*, 6> flat{};         // the op's flat buffers in functor order (elementwise.h: kMaxFlat)
  at::ScalarType state_dtype = at::kFloat;
  at::Device device = at::kCPU;

  size_t size() const { return dtype.size(); }
};

// Validates one flat state buffer: defined, 1-D, contiguous, float32/float64, `expected_numel`
// elements, same dtype as `state_dtype` and on `device`. `what` names the argument in errors.
void check_state_buffer(const at::Tensor& t, const char* op, const char* what, int64_t expected_numel,
                        at::ScalarType state_dtype, at::Device device);

// Validates the model-tensor list `params` against the flat state buffer `state_ref` (first
// flat argument): each tensor defined, contiguous, float32/float64/bfloat16/float16, on the
// state's device; the numel sum must equal state_ref.numel(). Fills total/offsets/list0/dtype.
ListFlatCall make_call(const char* op, at::TensorList params, const at::Tensor& state_ref,
                       const char* state_name);
// The same for a call without flat buffers (an optimizer step with no state): the device is params[0]'s,
// the state dtype float32 (the arithmetic is then the model dtype's opmath_t).
ListFlatCall make_stateless_call(const char* op, at::TensorList params);

// Validates a gradient list against the params of `call` (same length; each None or of the
// param's shape, dtype and device, contiguous) and stores the pointers in list1. Tensors
// whose grad is None get list1 = nullptr and active = !skip_missing.
void add_grads(ListFlatCall& call, const char* op, const char* what, at::TensorList params,
               const c10::List<std::optional<at::Tensor>>& grads, bool skip_missing);

// Validates grads[i] against params[i]: same shape, dtype and device, contiguous.
void check_grad(const char* op, const char* what, size_t i, const at::Tensor& p, const at::Tensor& g);

void check_lambda(const char* op, const char* what, double value);

// One argument of a call as check_distinct sees it: its name (`name`, or `name[index]` for a list entry),
// the bytes it spans and whether the op writes it. Empty and undefined tensors span nothing and are left out.
struct ArgSpan {
  const char* name;
  int64_t index;  // -1: a single tensor; >= 0: entry `index` of the list `name`
  uintptr_t begin;
  uintptr_t end;
  bool written;
};

// Appends the span of `t` (from its first to one past its last element, whatever its strides) to `spans`.
void add_span(std::vector<ArgSpan>& spans, const char* name, const at::Tensor& t, bool written, int64_t index = -1);

// Refuses a call in which a written argument shares any byte with another argument (written or read): on
// CUDA two blocks would then race on it, and even on the CPU an element could be read after it was
// overwritten. Two read-only arguments may overlap, and views of one buffer that do not overlap are fine.
// The error names both arguments. All spans must be on one device (the callers validate that first).
void check_distinct(const char* op, std::vector<ArgSpan> spans);

}  // namespace clfast
