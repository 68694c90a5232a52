// Input validation and layout selection for the Batch Renormalization ops (see layout.h).
#include "batch_renorm/layout.h"

#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

namespace clfast::brn {

Layout layout_of(const at::Tensor& input, const char* what) {
  TORCH_CHECK(input.defined(), what, ": input is undefined");
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, what,
              ": input must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK(input.dim() >= 2, what, ": input must have shape (N, C, *) with at least 2 dimensions, got ",
              input.sizes());
  TORCH_CHECK(input.numel() > 0, what, ": input is empty (shape ", input.sizes(), ")");
  Layout l;
  l.N = input.size(0);
  l.C = input.size(1);
  l.S = input.numel() / (l.N * l.C);
  if (input.dim() == 4 && !input.is_contiguous() && input.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    l.x = input;
    l.interleaved = true;
    l.N = l.N * l.S;  // rows of the (M, C) view
    l.S = 1;
    return l;
  }
  l.x = input.contiguous();
  if (l.S == 1) l.interleaved = true;  // (N, C) or (N, C, 1, ...): rows of C channels
  return l;
}

at::Tensor like_layout(const at::Tensor& t, const Layout& l, const char* name, const char* what) {
  TORCH_CHECK(t.defined(), what, ": ", name, " is undefined");
  TORCH_CHECK(t.sizes() == l.x.sizes(), what, ": ", name, " has shape ", t.sizes(), ", expected ", l.x.sizes());
  TORCH_CHECK(t.scalar_type() == l.x.scalar_type(), what, ": ", name, " has dtype ", t.scalar_type(),
              ", expected the input's ", l.x.scalar_type());
  TORCH_CHECK(t.device() == l.x.device(), what, ": ", name, " is on ", t.device(), ", the input on ", l.x.device());
  if (l.interleaved && l.x.dim() == 4 && !l.x.is_contiguous()) return t.contiguous(at::MemoryFormat::ChannelsLast);
  return t.contiguous();
}

void check_channel_tensor(const at::Tensor& t, const char* name, int64_t numel_expected, const at::Tensor& input,
                          const at::Tensor& dtype_of, const char* what) {
  TORCH_CHECK(t.defined(), what, ": ", name, " is undefined");
  TORCH_CHECK(t.numel() == numel_expected, what, ": ", name, " must have ", numel_expected,
              " elements (one per channel of the input, shape ", input.sizes(), "), got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, what, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == dtype_of.scalar_type(), what, ": ", name, " has dtype ", t.scalar_type(),
              " but the other per-channel tensors are ", dtype_of.scalar_type());
  TORCH_CHECK(t.device() == input.device(), what, ": ", name, " is on ", t.device(), " but the input is on ",
              input.device());
  TORCH_CHECK(t.is_contiguous(), what, ": ", name, " must be contiguous");
}

at::Tensor empty_output(const Layout& l) { return at::empty_like(l.x); }

}  // namespace clfast::brn
