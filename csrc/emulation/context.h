// Execution contexts for the emulator's fibers: a saved stack pointer and a switch between two contexts.
// x86-64 uses a switch of our own (callee-saved registers only, no system call: glibc's swapcontext makes a
// sigprocmask call per switch, which dominated the emulator's run time); other targets use ucontext.
#pragma once

#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace clfast::emu {

struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc{};
#endif
};

// Makes `c` start `entry` on the stack [bottom, bottom + size) when first switched to; entry must never return.
void prepare_context(Context& c, char* bottom, size_t size, void (*entry)());

// Saves the running context into `from` and resumes `to`.
void switch_context(Context& from, Context& to);

}  // namespace clfast::emu
