// Input validation and memory layout for the Batch Renormalization ops (CPU and CUDA).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace clfast::brn {

// How the kernels walk an activation tensor (N, C, *):
//   planar:      contiguous (N, C, S): element (n, c, s) at (n*C + c)*S + s, S = prod(spatial dims) > 1;
//   interleaved: (M, C) rows of channels: element (row, c) at row*C + c. Used for channels-last 4-d
//                input (M = N*H*W) and for inputs with no spatial extent (S == 1, M = N).
// Other strides are copied to the contiguous format first.
struct Layout {
  at::Tensor x;  // what the kernels read: the input itself, or a contiguous copy of it
  int64_t N = 0, C = 0, S = 1;
  bool interleaved = false;
  int64_t per_channel() const { return N * S; }  // m, the number of elements of each channel
};

// Validates an activation tensor (floating dtype, dim >= 2, no empty dimension, finite sizes) and chooses
// its layout. `what` names the op in error messages.
Layout layout_of(const at::Tensor& input, const char* what);

// The same layout for a tensor of the input's shape (the upstream gradient).
at::Tensor like_layout(const at::Tensor& t, const Layout& l, const char* name, const char* what);

// Checks a per-channel tensor: numel == numel_expected, contiguous, on the input's device, dtype float32/float64
// equal to `dtype_of` (the first per-channel argument sets the statistics dtype).
void check_channel_tensor(const at::Tensor& t, const char* name, int64_t numel_expected, const at::Tensor& input,
                          const at::Tensor& dtype_of, const char* what);

// Output of the same shape as the input, in the layout the kernels write.
at::Tensor empty_output(const Layout& l);

}  // namespace clfast::brn
