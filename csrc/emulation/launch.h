// The emulated kernel launch behind CLFAST_LAUNCH (common/launch.h): converts the arguments to the kernel's
// parameter types once (as the CUDA runtime copies them into the parameter buffer), measures that buffer
// and hands the grid to the scheduler, which runs the kernel body once per emulated thread.
#pragma once

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emulation/scheduler.h"

namespace clfast::emu {

// Size of the kernel-parameter buffer: the parameters laid out in order with their alignment, as nvcc does.
template <typename... Params>
constexpr size_t param_bytes() {
  size_t offset = 0;
  ((offset = (offset + alignof(Params) - 1) / alignof(Params) * alignof(Params) + sizeof(Params)), ...);
  return offset;
}

template <typename... Params>
struct Closure {
  void (*kernel)(Params...);
  std::tuple<std::decay_t<Params>...> args;

  // Each emulated thread gets its own copy of the by-value parameters, like its own registers on a GPU.
  static void run(void* self) {
    auto* c = static_cast<Closure*>(self);
    std::apply(c->kernel, c->args);
  }
};

template <typename... Params, typename Stream, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, const Stream& stream,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "CLFAST_LAUNCH: wrong number of kernel arguments");
  (void)stream;  // one in-order queue: every launch completes before the call returns
  Closure<Params...> closure{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  run_launch(LaunchSpec{name, grid, block, smem, param_bytes<std::decay_t<Params>...>(), &Closure<Params...>::run,
                        &closure});
}

}  // namespace clfast::emu
