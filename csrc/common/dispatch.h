// Runtime dtype -> C++ type dispatch for the model tensors (T) and the state buffers (P).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "common/host_device.h"  // c10::BFloat16, c10::Half

namespace clfast {

template <typename V>
struct Tag {
  using type = V;
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
