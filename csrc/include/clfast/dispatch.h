// Runtime dtype -> C++ type dispatch for the model tensors (P) and the state buffers (S).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "clfast/elementwise.h"

namespace clfast {

template <typename T>
struct Tag {
  using type = T;
};

template <typename Fn>
decltype(auto) dispatch_state_type(at::ScalarType s, Fn&& fn) {
  switch (s) {
    case at::kFloat:
      return fn(Tag<float>{});
    case at::kDouble:
      return fn(Tag<double>{});
    default:
      TORCH_CHECK(false, "clfast: unsupported state dtype ", s);
  }
}

template <typename Fn>
decltype(auto) dispatch_model_type(at::ScalarType s, Fn&& fn) {
  switch (s) {
    case at::kFloat:
      return fn(Tag<float>{});
    case at::kDouble:
      return fn(Tag<double>{});
    case at::kBFloat16:
      return fn(Tag<c10::BFloat16>{});
    case at::kHalf:
      return fn(Tag<c10::Half>{});
    default:
      TORCH_CHECK(false, "clfast: unsupported parameter dtype ", s);
  }
}

}  // namespace clfast
