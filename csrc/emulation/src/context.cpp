// The context switch of the emulator's fibers (context.h).
#include "emulation/context.h"

#include <cstdint>

#if defined(__x86_64__)
// clfast_emu_switch(void** save_sp, void* load_sp): pushes the callee-saved registers, saves the stack
// pointer, loads the other one and pops its registers; `ret` resumes where that context switched away (or, the
// first time, at the entry function prepare_context put there). The System V ABI makes every other register
// caller-saved, so the compiler has already spilled what it needs around the call.
asm(R"(
  .pushsection .text
  .globl clfast_emu_switch
  .hidden clfast_emu_switch
  .type clfast_emu_switch, @function
clfast_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size clfast_emu_switch, .-clfast_emu_switch
  .popsection
)");
extern "C" void clfast_emu_switch(void** save_sp, void* load_sp);
#endif

namespace clfast::emu {

#if defined(__x86_64__)

void prepare_context(Context& c, char* bottom, size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<uintptr_t*>((reinterpret_cast<uintptr_t>(bottom + size)) & ~uintptr_t{15});
  // top[-1]: a null return address for entry, so that entry starts with rsp % 16 == 8 as after a call;
  // top[-2]: where the first `ret` goes; below it the six registers the first switch pops.
  top[-1] = 0;
  top[-2] = reinterpret_cast<uintptr_t>(entry);
  for (int k = 3; k <= 8; ++k) top[-k] = 0;
  c.sp = top - 8;
}

void switch_context(Context& from, Context& to) { clfast_emu_switch(&from.sp, to.sp); }

#else

void prepare_context(Context& c, char* bottom, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = bottom;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;  // entry switches back itself
  makecontext(&c.uc, entry, 0);
}

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

#endif

}  // namespace clfast::emu
