// The fiber scheduler of the CUDA emulator. Blocks run one after another; the threads of a block run as
// cooperative fibers (context.h) on stacks reused from block to block. A fiber runs until it reaches a
// barrier, a warp operation or its end; when no fiber can run, the scheduler resolves the warp operations
// whose lanes have all arrived, else the block barrier once every live thread waits at the same call site,
// else it reports the divergence. Decisions are made only when nothing can run, so a run is deterministic.
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "emulation/context.h"
#include "emulation/scheduler.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CLFAST_EMU_ASAN 1
#else
#define CLFAST_EMU_ASAN 0
#endif

namespace clfast::emu {
namespace {

// Kernel frames are small, but each fiber copies the kernel's by-value parameters (up to 4 KB) and
// AddressSanitizer pads every frame; the stacks are mapped lazily, so unused pages cost nothing.
constexpr size_t kStackBytes = CLFAST_EMU_ASAN ? 512 * 1024 : 64 * 1024;
constexpr size_t kGuardBytes = 4096;  // an unmapped page below each stack turns an overflow into a crash

enum class State : uint8_t { kRunnable, kBarrier, kWarp, kDone };

struct Fiber {
  Context ctx;
  uint3 tid;
  State state;
  // At a barrier or warp operation: where, and with what.
  std::source_location site;
  BarrierKind barrier;
  WarpKind warp;
  unsigned mask;
  int arg, width;
  uint64_t value, result;
};

struct Stack {
  void* base;  // includes the guard page
  char* bottom;
  Stack() {
    base = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
      std::perror("clfast CUDA emulator: cannot map a fiber stack");
      std::abort();
    }
    mprotect(base, kGuardBytes, PROT_NONE);
    bottom = static_cast<char*>(base) + kGuardBytes;
  }
  ~Stack() { munmap(base, kStackBytes + kGuardBytes); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
};

// The block being run on this OS thread.
struct Block {
  const LaunchSpec* spec = nullptr;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<Stack>> stacks;  // kept across blocks and launches
  Context scheduler;
  int current = -1;
  std::string error;  // set by a fiber that found a misuse; the block stops
  bool abandoned = false;  // a block stopped with fibers mid-frame: their stacks hold stale poisoned redzones
#if CLFAST_EMU_ASAN
  const void* main_bottom = nullptr;
  size_t main_size = 0;
#endif
};
thread_local Block block;

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

bool same_file(const std::source_location& a, const std::source_location& b) {
  return a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0;
}

std::string where(const Fiber& f) {
  return "thread (" + std::to_string(f.tid.x) + "," + std::to_string(f.tid.y) + "," + std::to_string(f.tid.z) +
         ") at " + f.site.file_name() + ":" + std::to_string(f.site.line());
}

// Switches from the running fiber back to the scheduler; `finished` fibers are never resumed.
void yield_to_scheduler(bool finished) {
  Fiber& f = block.fibers[block.current];
#if CLFAST_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake, block.main_bottom, block.main_size);
  switch_context(f.ctx, block.scheduler);
  __sanitizer_finish_switch_fiber(fake, &block.main_bottom, &block.main_size);
#else
  (void)finished;
  switch_context(f.ctx, block.scheduler);
#endif
}

void fiber_entry() {
#if CLFAST_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &block.main_bottom, &block.main_size);
#endif
  block.spec->body(block.spec->closure);
  block.fibers[block.current].state = State::kDone;
  yield_to_scheduler(true);
}

[[noreturn]] void fail_in_fiber(std::string message) {
  block.error = std::move(message);
  block.fibers[block.current].state = State::kDone;
  yield_to_scheduler(true);
  std::abort();  // never resumed
}

void resume(int i) {
  Fiber& f = block.fibers[i];
  block.current = i;
  current_coordinates.thread = f.tid;
#if CLFAST_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, block.stacks[i]->bottom, kStackBytes);
  switch_context(block.scheduler, f.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  switch_context(block.scheduler, f.ctx);
#endif
  block.current = -1;
}

void start_fibers(unsigned n) {
  const dim3 d = block.spec->block;
  while (block.stacks.size() < n) block.stacks.push_back(std::make_unique<Stack>());
#if CLFAST_EMU_ASAN
  if (block.abandoned) {
    for (auto& st : block.stacks) __asan_unpoison_memory_region(st->bottom, kStackBytes);
    block.abandoned = false;
  }
#endif
  block.fibers.assign(n, Fiber{});
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = block.fibers[i];
    f.tid = uint3{i % d.x, (i / d.x) % d.y, i / (d.x * d.y)};
    f.state = State::kRunnable;
    prepare_context(f.ctx, block.stacks[i]->bottom, kStackBytes, fiber_entry);
  }
}

// Resolves every warp whose waiting lanes form complete groups. Returns false with block.error set when a
// group can never complete, and sets `progressed` when a group was released.
bool resolve_warps(bool& progressed) {
  const int n = static_cast<int>(block.fibers.size());
  for (int w0 = 0; w0 < n; w0 += kWarpSize) {
    const int lanes = std::min(kWarpSize, n - w0);
    for (int l = 0; l < lanes; ++l) {
      Fiber& f = block.fibers[w0 + l];
      if (f.state != State::kWarp) continue;
      if (!(f.mask >> l & 1u)) {
        block.error = where(f) + ": the mask " + hex(f.mask) + " of a warp operation leaves out lane " +
                      std::to_string(l) + " itself";
        return false;
      }
      uint64_t ballot = 0;
      for (int k = 0; k < kWarpSize; ++k) {
        if (!(f.mask >> k & 1u)) continue;
        if (k >= lanes) {
          block.error = where(f) + ": the warp-operation mask names lane " + std::to_string(k) +
                        ", which does not exist (block of " + std::to_string(n) + " threads)";
          return false;
        }
        const Fiber& o = block.fibers[w0 + k];
        if (o.state == State::kDone) {
          block.error = where(f) + ": the warp-operation mask names lane " + std::to_string(k) + ", which has exited";
          return false;
        }
        if (o.state != State::kWarp || o.mask != f.mask || o.warp != f.warp || o.width != f.width) {
          block.error = "warp divergence: " + where(f) + " waits at a warp operation with mask " + hex(f.mask) +
                        " but lane " + std::to_string(k) +
                        (o.state == State::kBarrier ? " waits at __syncthreads (" : " waits elsewhere (") + where(o) +
                        ")";
          return false;
        }
        if (o.value) ballot |= uint64_t{1} << k;
      }
      // Every lane of the mask is here with the same operation: compute each one's result.
      const int width = f.width;
      if (width <= 0 || width > kWarpSize || (width & (width - 1))) {
        block.error = where(f) + ": shuffle width " + std::to_string(width) + " is not a power of two <= 32";
        return false;
      }
      for (int k = 0; k < kWarpSize; ++k) {
        if (!(f.mask >> k & 1u)) continue;
        Fiber& o = block.fibers[w0 + k];
        const int seg = k / width * width;
        int src = k;
        switch (o.warp) {
          case WarpKind::kShflDown: src = (k - seg) + o.arg < width ? k + o.arg : k; break;
          case WarpKind::kShflUp: src = (k - seg) - o.arg >= 0 ? k - o.arg : k; break;
          case WarpKind::kShflXor: src = (k ^ o.arg) / width == k / width ? k ^ o.arg : k; break;
          case WarpKind::kShflIdx: src = seg + ((o.arg % width) + width) % width; break;
          case WarpKind::kBallot:
          case WarpKind::kSync: break;
        }
        if (o.warp == WarpKind::kBallot) {
          o.result = ballot;
        } else if (o.warp != WarpKind::kSync) {
          if (src >= lanes || !(f.mask >> src & 1u)) {
            block.error = where(o) + ": a shuffle reads lane " + std::to_string(src) + ", outside its mask";
            return false;
          }
          o.result = block.fibers[w0 + src].value;
        }
      }
      for (int k = 0; k < kWarpSize; ++k) {
        if (f.mask >> k & 1u) block.fibers[w0 + k].state = State::kRunnable;
      }
      progressed = true;
    }
  }
  return true;
}

// Releases the block barrier when every live thread waits at the same one; otherwise reports divergence.
bool resolve_barrier() {
  const Fiber* first = nullptr;
  int count = 0, live = 0;
  for (const Fiber& f : block.fibers) {
    if (f.state == State::kDone) continue;
    ++live;
    if (!first) first = &f;
    const bool same = f.site.line() == first->site.line() && f.site.column() == first->site.column() &&
                      same_file(f.site, first->site) && f.barrier == first->barrier;
    if (f.state != State::kBarrier || !same) {
      block.error = std::string("barrier divergence: ") + where(*first) + " waits at " +
                    (first->state == State::kBarrier ? "__syncthreads" : "a warp operation") + " while " + where(f) +
                    (f.state == State::kBarrier ? " waits at another __syncthreads" : " waits at a warp operation");
      return false;
    }
    count += f.value != 0;
  }
  if (!first) return true;
  uint64_t result = 0;
  switch (first->barrier) {
    case BarrierKind::kSync: break;
    case BarrierKind::kOr: result = count > 0; break;
    case BarrierKind::kAnd: result = count == live; break;
    case BarrierKind::kCount: result = static_cast<uint64_t>(count); break;
  }
  for (Fiber& f : block.fibers) {
    if (f.state == State::kBarrier) {
      f.result = result;
      f.state = State::kRunnable;
    }
  }
  return true;
}

// Runs the current block to its end. Returns false with block.error set on a misuse.
bool run_block(unsigned threads) {
  start_fibers(threads);
  for (;;) {
    bool any_live = false;
    for (int i = 0; i < static_cast<int>(threads); ++i) {
      if (block.fibers[i].state == State::kRunnable) resume(i);
      if (!block.error.empty()) return false;
      any_live |= block.fibers[i].state != State::kDone;
    }
    if (!any_live) return true;
    bool progressed = false;
    if (!resolve_warps(progressed)) return false;
    if (!progressed && !resolve_barrier()) return false;
  }
}

std::string dims(dim3 d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// The configuration errors the CUDA runtime reports at launch (or nvcc at compile time, for the parameters).
std::string config_error(const LaunchSpec& s) {
  const uint64_t threads = uint64_t{s.block.x} * s.block.y * s.block.z;
  if (threads == 0 || uint64_t{s.grid.x} * s.grid.y * s.grid.z == 0) {
    return "zero-sized launch: grid " + dims(s.grid) + ", block " + dims(s.block);
  }
  if (threads > kMaxThreadsPerBlock || s.block.x > kMaxThreadsPerBlock || s.block.y > kMaxThreadsPerBlock ||
      s.block.z > kMaxBlockDimZ) {
    return "block " + dims(s.block) + " exceeds the limits (1024 threads, z <= 64)";
  }
  if (s.grid.x > kMaxGridX || s.grid.y > kMaxGridYZ || s.grid.z > kMaxGridYZ) {
    return "grid " + dims(s.grid) + " exceeds the limits (x < 2^31, y and z <= 65535)";
  }
  if (s.param_bytes > kMaxParamBytes) {
    return "kernel parameters take " + std::to_string(s.param_bytes) + " bytes, over the 4096-byte limit";
  }
  if (s.dynamic_smem > 0) {
    return "dynamic shared memory is not emulated (requested " + std::to_string(s.dynamic_smem) + " bytes)";
  }
  return {};
}

}  // namespace

int block_barrier(BarrierKind kind, int predicate, const std::source_location& site) {
  if (block.current < 0) throw std::logic_error("clfast CUDA emulator: __syncthreads called outside a kernel");
  Fiber& f = block.fibers[block.current];
  f.state = State::kBarrier;
  f.barrier = kind;
  f.site = site;
  f.value = static_cast<uint64_t>(predicate != 0);
  yield_to_scheduler(false);
  return static_cast<int>(f.result);
}

uint64_t warp_op(WarpKind kind, unsigned mask, uint64_t value, int arg, int width, const std::source_location& site) {
  if (block.current < 0) throw std::logic_error("clfast CUDA emulator: a warp operation called outside a kernel");
  Fiber& f = block.fibers[block.current];
  f.state = State::kWarp;
  f.warp = kind;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.site = site;
  yield_to_scheduler(false);
  return f.result;
}

void run_launch(const LaunchSpec& spec) {
  if (block.current >= 0) fail_in_fiber(std::string(spec.name) + ": launched from device code (not emulated)");
  if (take_error(false) != cudaSuccess) {
    // A launch after an unchecked error: on a GPU the error would surface at some later call; here it is an
    // error of the launch site that forgot C10_CUDA_KERNEL_LAUNCH_CHECK.
    const std::string earlier = error_message();
    take_error(true);
    const std::string message = std::string(spec.name) + " launched after an unchecked error: " + earlier;
    set_error(cudaErrorLaunchFailure, message.c_str());
    return;
  }
  const std::string bad = config_error(spec);
  if (!bad.empty()) {
    set_error(cudaErrorInvalidConfiguration, (std::string(spec.name) + ": " + bad).c_str());
    return;
  }
  const Coordinates saved = current_coordinates;
  const LaunchSpec* saved_spec = block.spec;
  block.spec = &spec;
  block.error.clear();
  current_coordinates.block_dim = spec.block;
  current_coordinates.grid_dim = spec.grid;
  const unsigned threads = spec.block.x * spec.block.y * spec.block.z;
  bool ok = true;
  for (unsigned z = 0; ok && z < spec.grid.z; ++z) {
    for (unsigned y = 0; ok && y < spec.grid.y; ++y) {
      for (unsigned x = 0; ok && x < spec.grid.x; ++x) {
        current_coordinates.block = uint3{x, y, z};
        ok = run_block(threads);
      }
    }
  }
  if (!ok) {
    block.abandoned = true;
    const std::string at = " in block " + dims(current_coordinates.block) + ": ";
    set_error(cudaErrorLaunchFailure, (std::string(spec.name) + at + block.error).c_str());
  }
  block.fibers.clear();
  block.spec = saved_spec;
  current_coordinates = saved;
}

}  // namespace clfast::emu
