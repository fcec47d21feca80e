// A CPU emulator for the small subset of CUDA that csrc/cuda/lstm_impl.cuh uses, so that the
// kernels' logic (indexing, bounds, barriers, lengths/reverse, the numerics) runs and is
// tested on machines without a GPU. Not used by the real build (compat.cuh includes it only
// with FASTLSTM_CUDA_EMU defined). tests/test_cuda.py compiles emu_capi.cc with the host C++
// compiler and drives it through ctypes.
//
// Model: blocks run one after another; the threads of a block are fibers (own stacks, switched
// by fiber_swap) on one OS thread, each run until it reaches __syncthreads() or returns, round
// by round. __shared__ variables become function-local statics (one block at a time, so that is
// the block's shared memory). Checks:
//   * a barrier that not every thread of the block reaches (some returned) is an error;
//   * the thread order within each round, and the block order, can be reversed
//     (set_reverse_order): a missing barrier makes a thread read shared memory before or
//     after another writes it depending on the order, so results differ between the orders;
//   * device allocations (cudaMalloc & co, and the test's buffers) sit against a PROT_NONE
//     guard page, after the end or before the start (set_guard_front): an access one past
//     either end of any buffer faults at once.
// Fixed-size arrays (shared memory tiles, register arrays) are bounds-checked by compiling
// with -fsanitize=bounds -fsanitize-undefined-trap-on-error.
//
// Cooperative launches (launch_cooperative, the persistent kernels): every thread of the grid
// is a fiber and all are live at once, as on a GPU where cudaLaunchCooperativeKernel makes
// every block co-resident. A scheduler resumes the runnable fibers round by round (in thread
// order, reversed, or in a seeded random permutation per round: set_schedule); each fiber runs
// until it reaches __syncthreads() (then it waits until every thread of ITS block has reached
// it), spins on fl_load_acquire or fl_spin_pause (then it yields and is resumed next round),
// or returns.
// Schedules (set_schedule): 0 lockstep rounds in thread order (reversed with
// set_reverse_order), 1 lockstep reversed, 2 a seeded random permutation per round in which
// the threads of slow blocks (half of them, drawn per launch) each run with probability 1/8
// (except in every 32nd round), so that a slow block's threads drift apart and fast blocks
// run ahead of them, 3 greedy: each block in turn runs as far as it can before the next
// (block and thread order reversed with set_reverse_order): a block that does not wait at a
// grid barrier runs through later steps before the others wrote what it reads.
// Checks: a block barrier that some threads of the block never reach (they returned) is an
// error; a round in which no fiber reached a barrier, returned, did an atomic operation or a
// tagged store, or polled tagged words other than (or changed since) its previous poll, while
// some still spin, is a deadlock (an error, the launch is abandoned); the launch fails
// like CUDA's when the grid is larger than the emulated device can keep resident
// (cudaErrorCooperativeLaunchTooLarge, from the emulated SM count and shared memory), when a
// kernel asks for more than 48 KB of dynamic shared memory without cudaFuncSetAttribute, or
// when the device does not support cooperative launches. Each block gets its own dynamic
// shared memory (extern __shared__, here FL_DYNAMIC_SHARED), a guarded allocation filled with
// NaN bytes (0xFF) at the launch, switched with the block of the fiber that runs. Static
// __shared__ variables are NOT per block in a cooperative launch here (they are statics):
// the cooperative kernels must use dynamic shared memory only.
// Tensor cores (precision tf32 / bf16): emu_wmma.h emulates the wmma subset the GEMM of
// tensor_gemm.cuh uses, with the operands' rounding reproduced and float32 accumulation; what it
// cannot reproduce (the hardware MMA's internal accumulation, fragment layouts) is listed there.
// Asynchronous copies (cp.async: fl_cp_async16 / fl_cp_async_commit / fl_cp_async_wait of
// compat.cuh, the pipelined tensor-core GEMM) are deferred as on the GPU: each thread's copies
// are queued in commit groups and performed only when that thread waits for their group, so a
// kernel that reads a stage before waiting for it (or before the barrier after the wait) reads
// the stage's old contents (or the NaN bytes of a fresh launch) in one of the thread orders.
// Copies still queued when a block ends (a cooperative launch: when it ends) are an error; in a
// cooperative launch each fiber has its own queue. With set_async_eager the copies land at
// once instead (at the copy instruction): then a kernel that refills a stage before every
// thread is done reading it (a missing barrier before the copies) overwrites data that threads
// later in the round still read. The tests run both. Normal launches may take dynamic shared
// memory (FL_LAUNCH_SMEM): one guarded allocation, refilled with NaN bytes for every block,
// more than 48 KB only after cudaFuncSetAttribute, as on the GPU.
// Not modelled: the weak memory ordering of real hardware (the fibers see every store at
// once), so missing fences or acquire/release are not found; warps (no warp primitives are
// emulated, and the kernels use none).
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorCooperativeLaunchTooLarge = 720,
  cudaErrorNotSupported = 801
};
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
typedef struct CUstream_st* cudaStream_t;
typedef struct CUmemPoolHandle_st* cudaMemPool_t;

namespace fastlstm {
namespace cuda {
namespace emu {

inline uint3 g_threadIdx{0, 0, 0};
inline uint3 g_blockIdx{0, 0, 0};
inline dim3 g_blockDim;
inline dim3 g_gridDim;

struct Stats {
  int64_t launches = 0, blocks = 0, barriers = 0;
};
inline Stats g_stats;
inline bool g_reverse_order = false;
inline bool g_guard_front = false;
inline std::string g_error;  // first emulation error (barrier divergence), "" if none

// The emulated device (set_device): what the persistent kernels' planner reads through
// cudaDeviceGetAttribute / cudaOccupancyMaxActiveBlocksPerMultiprocessor.
struct Device {
  int sm_count = 4;
  int smem_per_block_optin = 232448;  // 227 KB, as on an H100
  int smem_per_sm = 233472;           // 228 KB
  int max_threads_per_sm = 2048;
  int cooperative = 1;
  int cc_major = 9, cc_minor = 0;  // compute capability (the tensor-core GEMM needs 8.0)
};
inline Device g_device;
// Scheduling of cooperative launches: 0 lockstep in thread order, 1 reversed, 2 seeded random
// with skipped fibers, 3 greedy per block (see above). g_reverse_order (set_reverse_order)
// selects 1 when the mode is 0, and reverses the orders of mode 3.
inline int g_schedule = 0;
inline uint64_t g_schedule_seed = 1;
inline bool g_coop = false;        // inside a cooperative launch
// Progress events so far, for deadlock detection: atomic operations, tagged stores, and tagged
// polls that saw another address or value than the same fiber's previous poll.
inline uint64_t g_atomic_ops = 0;
inline unsigned char* g_dyn_smem = nullptr;  // the running fiber's block's dynamic shared memory
inline size_t g_dyn_smem_bytes = 0;          // its size (normal launches with dynamic shared memory)
inline bool g_dyn_launch = false;            // inside a normal launch with dynamic shared memory
// cp.async of a normal launch: per thread of the running block, the copies not yet committed
// and the committed groups not yet waited for (oldest first).
struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes;
  bool valid;  // false: zero-fill, nothing read
};
struct AsyncState {
  std::vector<AsyncCopy> open;
  std::vector<std::vector<AsyncCopy>> groups;
};
inline std::vector<AsyncState> g_async;
// Kernels that check a pointer's 16-byte alignment (the persistent kernels' weight loads) take
// every pointer as unaligned (tests reach their one-value-per-load paths this way).
inline bool g_pretend_unaligned = false;
inline bool g_async_eager = false;  // cp.async lands at the copy (else at the thread's wait)
inline std::map<const void*, int>& func_max_dynamic_smem() {
  static std::map<const void*, int> m;
  return m;
}

// ---- guarded allocations -------------------------------------------------------------------
struct Mapping {
  void* base;
  size_t length;
};
inline std::map<void*, Mapping>& allocations() {
  static std::map<void*, Mapping> m;
  return m;
}

inline void* guarded_alloc(size_t n) {
  if (n == 0) n = 1;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t data_pages = (n + page - 1) / page;
  const size_t length = (data_pages + 1) * page;
  char* base = static_cast<char*>(mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED) return nullptr;
  char* p;
  if (g_guard_front) {  // [guard][data ...]
    mprotect(base, page, PROT_NONE);
    p = base + page;
  } else {  // [... data][guard], data ending exactly at the guard (4-byte aligned start)
    mprotect(base + data_pages * page, page, PROT_NONE);
    p = base + data_pages * page - n;
    p = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(3));
  }
  allocations()[p] = Mapping{base, length};
  return p;
}

inline void guarded_free(void* p) {
  if (!p) return;
  auto it = allocations().find(p);
  if (it == allocations().end()) {
    if (g_error.empty()) g_error = "free of a pointer not allocated by the emulator";
    return;
  }
  munmap(it->second.base, it->second.length);
  allocations().erase(it);
}

// ---- fibers ----------------------------------------------------------------------------------
// Switching between fibers. glibc's swapcontext saves and restores the signal mask, one
// rt_sigprocmask system call per switch; the emulator switches at every barrier and spin of
// every emulated thread, and on a machine whose system calls are slow (kernel mitigations)
// that call was half of tests/test_cuda.py's time (2026-11-28, an AMD EPYC VM: 50% system
// time). On x86-64 the switch is a few instructions instead: it saves the callee-saved
// registers, MXCSR and the x87 control word on the old fiber's stack and loads the new one's.
// Elsewhere (not x86-64 ELF, or with FASTLSTM_EMU_UCONTEXT) it stays swapcontext. Fibers never return: their
// entry switches back to the scheduler at the end (fiber_swap), and is never resumed.
#if defined(__x86_64__) && defined(__ELF__) && !defined(FASTLSTM_EMU_UCONTEXT)
struct FiberContext {
  void* sp = nullptr;  // the saved stack pointer (the registers sit above it)
};
extern "C" void fl_emu_fiber_switch(void** save_sp, void* load_sp);
// Pushes rbp rbx r12-r15, then MXCSR and the x87 control word in one 8-byte slot; stores rsp
// in *save_sp; loads load_sp and pops the same in reverse; returns into the other fiber.
asm(".pushsection .text\n"
    ".p2align 4\n"
    ".type fl_emu_fiber_switch, @function\n"
    "fl_emu_fiber_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size fl_emu_fiber_switch, .-fl_emu_fiber_switch\n"
    ".popsection\n");

// A fiber that starts entry() on [stack, stack + bytes) at its first switch: the stack holds
// what fl_emu_fiber_switch pops (zero registers, this thread's MXCSR and control word) and,
// as its return address, entry, entered with rsp = 8 mod 16 as after a call.
inline void fiber_make(FiberContext& c, void* stack, size_t bytes, void (*entry)()) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  void** p = reinterpret_cast<void**>(top);
  *--p = nullptr;                         // entry's own return address: it never returns
  *--p = reinterpret_cast<void*>(entry);  // where the switch's ret goes
  for (int i = 0; i < 6; ++i) *--p = nullptr;
  uint32_t csr = 0;
  uint16_t cw = 0;
  asm volatile("stmxcsr %0" : "=m"(csr));
  asm volatile("fnstcw %0" : "=m"(cw));
  --p;
  std::memset(p, 0, sizeof(void*));
  std::memcpy(p, &csr, 4);
  std::memcpy(reinterpret_cast<char*>(p) + 4, &cw, 2);
  c.sp = p;
}
inline void fiber_swap(FiberContext& from, FiberContext& to) { fl_emu_fiber_switch(&from.sp, to.sp); }
#else
struct FiberContext {
  ucontext_t uc;
};
inline void fiber_make(FiberContext& c, void* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;  // the entry never returns (it switches back to the scheduler)
  makecontext(&c.uc, entry, 0);
}
inline void fiber_swap(FiberContext& from, FiberContext& to) { swapcontext(&from.uc, &to.uc); }
#endif

constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
  FiberContext ctx;
  std::vector<char> stack;
  bool done = false;
};

inline FiberContext g_scheduler;
inline std::vector<Fiber> g_fibers;
inline int g_current = 0;
inline const std::function<void()>* g_body = nullptr;

inline void fiber_entry() {
  (*g_body)();
  Fiber& f = g_fibers[static_cast<size_t>(g_current)];
  f.done = true;
  fiber_swap(f.ctx, g_scheduler);  // never resumed
  std::abort();
}

inline void coop_barrier();

inline void syncthreads() {
  ++g_stats.barriers;
  if (g_coop) {
    coop_barrier();
    return;
  }
  fiber_swap(g_fibers[static_cast<size_t>(g_current)].ctx, g_scheduler);
}

inline void run_block(unsigned nthreads) {
  if (g_fibers.size() < nthreads) g_fibers.resize(nthreads);
  g_async.assign(nthreads, AsyncState{});
  if (g_dyn_launch && g_dyn_smem) std::memset(g_dyn_smem, 0xFF, g_dyn_smem_bytes);
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = g_fibers[i];
    if (f.stack.size() < kStackBytes) f.stack.resize(kStackBytes);
    f.done = false;
    fiber_make(f.ctx, f.stack.data(), f.stack.size(), fiber_entry);
  }
  for (;;) {
    for (unsigned k = 0; k < nthreads; ++k) {
      const unsigned i = g_reverse_order ? nthreads - 1 - k : k;
      if (g_fibers[i].done) continue;
      g_current = static_cast<int>(i);
      g_threadIdx = uint3{i, 0, 0};
      fiber_swap(g_scheduler, g_fibers[i].ctx);
    }
    unsigned done = 0;
    for (unsigned i = 0; i < nthreads; ++i) done += g_fibers[i].done ? 1u : 0u;
    if (done == nthreads) {
      for (const AsyncState& a : g_async) {
        size_t queued = a.open.size();
        for (const auto& g : a.groups) queued += g.size();
        if (queued && g_error.empty())
          g_error = "cp.async: a thread ended with " + std::to_string(queued) + " copies never waited for";
      }
      return;
    }
    if (done != 0) {
      if (g_error.empty())
        g_error = "barrier divergence: " + std::to_string(done) + " of " + std::to_string(nthreads) +
                  " threads returned while the others wait at __syncthreads()";
      // let the waiting ones finish so the emulator stays consistent
    }
  }
}

inline void run_grid(dim3 grid, dim3 block, const std::function<void()>& body) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0) {
    if (g_error.empty()) g_error = "launch with an empty grid or block";
    return;
  }
  if (block.y != 1 || block.z != 1) {
    if (g_error.empty()) g_error = "the emulator runs 1-D blocks only";
    return;
  }
  ++g_stats.launches;
  g_gridDim = grid;
  g_blockDim = block;
  g_body = &body;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  for (uint64_t k = 0; k < nblocks; ++k) {
    const uint64_t b = g_reverse_order ? nblocks - 1 - k : k;
    g_blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                       static_cast<unsigned>(b / (uint64_t(grid.x) * grid.y))};
    ++g_stats.blocks;
    run_block(block.x);
  }
  g_body = nullptr;
}

template <class F>
void launch(dim3 grid, dim3 block, cudaStream_t /*stream*/, F&& body) {
  const std::function<void()> fn(std::forward<F>(body));
  run_grid(grid, block, fn);
}

// A normal launch with dyn_smem bytes of dynamic shared memory (FL_LAUNCH_SMEM); the errors
// CUDA gives for too much of it.
template <class F>
cudaError_t launch_smem(const void* func, dim3 grid, dim3 block, size_t dyn_smem, cudaStream_t /*stream*/,
                        F&& body) {
  if (dyn_smem > 48 * 1024) {
    auto it = func_max_dynamic_smem().find(func);
    if (it == func_max_dynamic_smem().end() || static_cast<size_t>(it->second) < dyn_smem) return cudaErrorInvalidValue;
  }
  if (dyn_smem > static_cast<size_t>(g_device.smem_per_block_optin)) return cudaErrorInvalidValue;
  const size_t bytes = (dyn_smem + 127) / 128 * 128;  // the base 128-byte aligned (it ends at the guard page)
  unsigned char* smem = bytes ? static_cast<unsigned char*>(guarded_alloc(bytes)) : nullptr;
  if (bytes && !smem) return cudaErrorMemoryAllocation;
  g_dyn_smem = smem;
  g_dyn_smem_bytes = bytes;
  g_dyn_launch = true;
  const std::function<void()> fn(std::forward<F>(body));
  run_grid(grid, block, fn);
  g_dyn_launch = false;
  g_dyn_smem = nullptr;
  g_dyn_smem_bytes = 0;
  guarded_free(smem);
  return cudaSuccess;
}

// cp.async (compat.cuh's fl_cp_async16 / _commit / _wait): queued per thread, performed at the wait.
inline void cp_async(void* dst, const void* src, int bytes, bool valid) {
  const auto d = reinterpret_cast<uintptr_t>(dst), sa = reinterpret_cast<uintptr_t>(src);
  if (!g_coop && !g_dyn_launch) {
    if (g_error.empty()) g_error = "cp.async outside a launch with dynamic shared memory";
    return;
  }
  if (d % static_cast<uintptr_t>(bytes) != 0 || (valid && sa % static_cast<uintptr_t>(bytes) != 0)) {
    if (g_error.empty()) g_error = "cp.async: a misaligned address";
    return;
  }
  const auto lo = reinterpret_cast<uintptr_t>(g_dyn_smem);
  if (d < lo || d + static_cast<uintptr_t>(bytes) > lo + g_dyn_smem_bytes) {
    if (g_error.empty()) g_error = "cp.async: the destination is outside the block's dynamic shared memory";
    return;
  }
  if (g_async_eager) {
    if (valid)
      std::memcpy(dst, src, static_cast<size_t>(bytes));
    else
      std::memset(dst, 0, static_cast<size_t>(bytes));
    return;
  }
  g_async[static_cast<size_t>(g_current)].open.push_back(AsyncCopy{dst, src, bytes, valid});
}
inline void cp_async_commit() {
  if (g_async.empty()) return;
  AsyncState& a = g_async[static_cast<size_t>(g_current)];
  a.groups.push_back(std::move(a.open));
  a.open.clear();
}
inline void cp_async_wait(size_t pending) {
  if (g_async.empty()) return;
  AsyncState& a = g_async[static_cast<size_t>(g_current)];
  while (a.groups.size() > pending) {
    for (const AsyncCopy& c : a.groups.front()) {
      if (c.valid)
        std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
      else
        std::memset(c.dst, 0, static_cast<size_t>(c.bytes));
    }
    a.groups.erase(a.groups.begin());
  }
}

// ---- cooperative launches: every thread of the grid a fiber, all live at once ----------------
enum class FiberState { kReady, kBarrier, kDone };

struct CoopFiber {
  FiberContext ctx;
  FiberState state = FiberState::kReady;
  unsigned block = 0, thread = 0;
  // its last tagged poll (load_tagged2): a fiber that polls the same words and sees the same
  // values is stuck; one that moved on to other words (or saw them change) made progress
  const void* poll_addr = nullptr;
  unsigned long long poll_a = 0, poll_b = 0;
};

constexpr size_t kCoopStackBytes = 128 * 1024;

// Fiber stacks for cooperative launches: mapped lazily (only touched pages cost memory) and
// kept for the next launch.
inline std::vector<void*>& coop_stacks() {
  static std::vector<void*> v;
  return v;
}
inline std::vector<CoopFiber>& coop_fibers() {
  static std::vector<CoopFiber> v;
  return v;
}

inline void coop_entry() {
  (*g_body)();
  CoopFiber& f = coop_fibers()[static_cast<size_t>(g_current)];
  f.state = FiberState::kDone;
  fiber_swap(f.ctx, g_scheduler);  // never resumed
  std::abort();
}

// The running fiber (cooperative launch) waits at its block's barrier.
inline void coop_barrier() {
  CoopFiber& f = coop_fibers()[static_cast<size_t>(g_current)];
  f.state = FiberState::kBarrier;
  fiber_swap(f.ctx, g_scheduler);
}

// The running fiber gives way (it spins on a flag another block sets); it is resumed next round.
inline void spin_yield() {
  if (!g_coop) {
    if (g_error.empty()) g_error = "a spin-wait outside a cooperative launch (it could never end on a GPU)";
    return;
  }
  fiber_swap(coop_fibers()[static_cast<size_t>(g_current)].ctx, g_scheduler);
}

inline uint64_t next_random() {  // xorshift64*
  uint64_t x = g_schedule_seed;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  g_schedule_seed = x ? x : 0x9E3779B97F4A7C15ull;
  return x * 0x2545F4914F6CDD1Dull;
}

inline long long monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline unsigned char* dynamic_shared(uintptr_t align = 16) {
  if (!g_coop && !g_dyn_launch) {
    if (g_error.empty()) g_error = "dynamic shared memory used outside a launch that has it";
    return nullptr;
  }
  if (reinterpret_cast<uintptr_t>(g_dyn_smem) % align != 0 && g_error.empty())
    g_error = "dynamic shared memory not aligned as declared";
  return g_dyn_smem;
}

inline int occupancy_blocks_per_sm(int threads, size_t dyn_smem) {
  if (threads <= 0 || threads > 1024) return 0;
  int by_threads = g_device.max_threads_per_sm / threads;
  // CUDA reserves 1 KB of shared memory per block on sm_80 and later
  const size_t per_block = dyn_smem + 1024;
  int by_smem = static_cast<int>(static_cast<size_t>(g_device.smem_per_sm) / per_block);
  return by_threads < by_smem ? by_threads : by_smem;
}

// Runs body as a cooperative launch; returns cudaSuccess or the error CUDA would give.
inline cudaError_t run_cooperative(const void* func, dim3 grid, dim3 block, size_t dyn_smem,
                                   const std::function<void()>& body) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y != 1 || block.z != 1 ||
      grid.y != 1 || grid.z != 1)
    return cudaErrorInvalidValue;  // the emulator runs 1-D cooperative grids of 1-D blocks
  if (!g_device.cooperative) return cudaErrorNotSupported;
  if (dyn_smem > 48 * 1024) {
    auto it = func_max_dynamic_smem().find(func);
    if (it == func_max_dynamic_smem().end() || static_cast<size_t>(it->second) < dyn_smem) return cudaErrorInvalidValue;
  }
  if (dyn_smem > static_cast<size_t>(g_device.smem_per_block_optin)) return cudaErrorInvalidValue;
  const int per_sm = occupancy_blocks_per_sm(static_cast<int>(block.x), dyn_smem);
  if (static_cast<int64_t>(grid.x) > static_cast<int64_t>(per_sm) * g_device.sm_count)
    return cudaErrorCooperativeLaunchTooLarge;

  ++g_stats.launches;
  g_stats.blocks += grid.x;
  g_gridDim = grid;
  g_blockDim = block;
  g_body = &body;
  const unsigned nblocks = grid.x, nt = block.x;
  const size_t n = static_cast<size_t>(nblocks) * nt;
  std::vector<CoopFiber>& fibers = coop_fibers();
  fibers.assign(n, CoopFiber{});
  std::vector<void*>& stacks = coop_stacks();
  while (stacks.size() < n) {
    void* st = mmap(nullptr, kCoopStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (st == MAP_FAILED) return cudaErrorMemoryAllocation;
    stacks.push_back(st);
  }
  // per block dynamic shared memory, poisoned, against a guard page
  const size_t smem_bytes = (dyn_smem + 15) / 16 * 16;
  std::vector<unsigned char*> smem(nblocks, nullptr);
  for (unsigned b = 0; b < nblocks && smem_bytes > 0; ++b) {
    smem[b] = static_cast<unsigned char*>(guarded_alloc(smem_bytes));
    if (!smem[b]) return cudaErrorMemoryAllocation;
    std::memset(smem[b], 0xFF, smem_bytes);
  }
  for (size_t i = 0; i < n; ++i) {
    CoopFiber& f = fibers[i];
    f.block = static_cast<unsigned>(i / nt);
    f.thread = static_cast<unsigned>(i % nt);
    fiber_make(f.ctx, stacks[i], kCoopStackBytes, coop_entry);
  }
  g_coop = true;
  g_async.assign(n, AsyncState{});  // cp.async queues, one per fiber (g_current)
  g_dyn_smem_bytes = dyn_smem;      // (cp.async's destination check; g_dyn_smem switches with the block)
  std::vector<size_t> order(n);
  const int mode = g_schedule != 0 ? g_schedule : (g_reverse_order ? 1 : 0);
  const bool reversed = mode == 1 || (mode == 3 && g_reverse_order);
  // Resumes fiber i if it is runnable; true when it changed state (reached a barrier, returned).
  auto resume = [&](size_t i) {
    CoopFiber& f = fibers[i];
    if (f.state != FiberState::kReady) return false;
    g_current = static_cast<int>(i);
    g_threadIdx = uint3{f.thread, 0, 0};
    g_blockIdx = uint3{f.block, 0, 0};
    g_dyn_smem = smem[f.block];
    fiber_swap(g_scheduler, f.ctx);
    return f.state != FiberState::kReady;
  };
  // Releases block b's barrier when every live thread of it waits there; true when released.
  auto release = [&](unsigned b) {
    unsigned waiting = 0, finished = 0;
    for (unsigned t = 0; t < nt; ++t) {
      const FiberState st = fibers[static_cast<size_t>(b) * nt + t].state;
      waiting += st == FiberState::kBarrier ? 1u : 0u;
      finished += st == FiberState::kDone ? 1u : 0u;
    }
    if (waiting == 0 || waiting + finished != nt) return false;
    if (finished > 0 && g_error.empty())
      g_error = "barrier divergence in a cooperative launch: block " + std::to_string(b) + ": " +
                std::to_string(finished) + " of " + std::to_string(nt) +
                " threads returned while the others wait at __syncthreads()";
    for (unsigned t = 0; t < nt; ++t) {
      CoopFiber& f = fibers[static_cast<size_t>(b) * nt + t];
      if (f.state == FiberState::kBarrier) f.state = FiberState::kReady;
    }
    return true;
  };
  auto all_done = [&] {
    for (const CoopFiber& f : fibers)
      if (f.state != FiberState::kDone) return false;
    return true;
  };
  std::vector<char> slow(nblocks, 0);  // schedule 2: one block in two, at least one of each kind
  if (mode == 2) {
    for (unsigned b = 0; b < nblocks; ++b) slow[b] = static_cast<char>(next_random() & 1);
    slow[static_cast<unsigned>(next_random() % nblocks)] = 1;
    if (nblocks > 1) slow[static_cast<unsigned>(next_random() % nblocks)] = 0;
  }
  for (uint64_t round = 0;; ++round) {
    bool progress = false;
    bool full = true;  // every runnable fiber had its chance this round (deadlock check)
    const uint64_t atomics_before = g_atomic_ops;
    if (mode == 3) {
      // Greedy: each block in turn runs as far as it can (its own barriers released at once)
      // before the next one runs: a block that does not wait for the others at a grid barrier
      // runs ahead through later steps.
      for (unsigned k = 0; k < nblocks; ++k) {
        const unsigned b = reversed ? nblocks - 1 - k : k;
        for (;;) {
          bool moved = false;
          const uint64_t a0 = g_atomic_ops;
          for (unsigned q = 0; q < nt; ++q) moved |= resume(static_cast<size_t>(b) * nt + (reversed ? nt - 1 - q : q));
          moved |= release(b);
          moved |= g_atomic_ops != a0;
          progress |= moved;
          if (!moved) break;
        }
      }
    } else {
      for (size_t k = 0; k < n; ++k) order[k] = mode == 1 ? n - 1 - k : k;
      if (mode == 2) {
        // A random permutation; except in every 32nd round, the threads of the slow blocks
        // (drawn at the launch) each run with probability 1/8, so that the threads of a slow
        // block drift apart and the fast blocks run ahead of them between barriers.
        for (size_t k = n; k > 1; --k) std::swap(order[k - 1], order[static_cast<size_t>(next_random() % k)]);
        full = round % 32 == 31;
      }
      for (size_t k = 0; k < n; ++k) {
        if (!full && slow[fibers[order[k]].block] && (next_random() % 8) != 0) continue;
        progress |= resume(order[k]);
      }
      for (unsigned b = 0; b < nblocks; ++b) progress |= release(b);
    }
    if (g_atomic_ops != atomics_before) progress = true;
    if (all_done()) break;
    if (!progress && full) {
      if (g_error.empty()) g_error = "deadlock in a cooperative launch: every running thread spins and none can go on";
      break;  // the fibers are abandoned (their stacks are reused by the next launch)
    }
  }
  if (g_error.empty()) {
    for (size_t i = 0; i < n; ++i) {
      size_t queued = g_async[i].open.size();
      for (const auto& g : g_async[i].groups) queued += g.size();
      if (queued) {
        g_error = "cp.async: a thread of a cooperative launch ended with " + std::to_string(queued) +
                  " copies never waited for";
        break;
      }
    }
  }
  g_async.clear();
  g_coop = false;
  g_dyn_smem = nullptr;
  g_dyn_smem_bytes = 0;
  g_body = nullptr;
  for (unsigned char* p : smem) guarded_free(p);
  return cudaSuccess;
}

template <class F>
cudaError_t launch_cooperative(const void* func, dim3 grid, dim3 block, size_t dyn_smem, cudaStream_t /*stream*/,
                               F&& body) {
  const std::function<void()> fn(std::forward<F>(body));
  return run_cooperative(func, grid, block, dyn_smem, fn);
}

// Device-side primitives of the cooperative kernels (see compat.cuh).
inline void arrive_release(unsigned long long* p) {
  ++g_atomic_ops;
  *p += 1;
}
inline unsigned long long load_acquire(const unsigned long long* p) {
  spin_yield();  // every poll gives the other blocks a chance to run
  return *p;
}
// The tagged exchange (compat.cuh): a store is progress (another block may be spinning on it);
// the 16-byte load must be aligned as ld.v2.b64 requires.
inline void store_tagged(unsigned long long* p, unsigned long long v) {
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0 && g_error.empty())
    g_error = "a tagged 8-byte store (st.b64) to an address that is not 8-byte aligned";
  ++g_atomic_ops;
  *p = v;
}
inline void load_tagged2(const unsigned long long* p, unsigned long long& a, unsigned long long& b) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0 && g_error.empty())
    g_error = "a tagged 16-byte load (ld.v2.b64) from an address that is not 16-byte aligned";
  a = p[0];
  b = p[1];
  if (g_coop) {  // a poll loop passing one word and spinning on the next is progress too
    CoopFiber& f = coop_fibers()[static_cast<size_t>(g_current)];
    if (f.poll_addr != p || f.poll_a != a || f.poll_b != b) ++g_atomic_ops;
    f.poll_addr = p;
    f.poll_a = a;
    f.poll_b = b;
  }
}

}  // namespace emu
}  // namespace cuda
}  // namespace fastlstm

#define threadIdx (::fastlstm::cuda::emu::g_threadIdx)
#define blockIdx (::fastlstm::cuda::emu::g_blockIdx)
#define blockDim (::fastlstm::cuda::emu::g_blockDim)
#define gridDim (::fastlstm::cuda::emu::g_gridDim)
#define __syncthreads() ::fastlstm::cuda::emu::syncthreads()

// ---- the runtime calls lstm_impl.cuh makes ------------------------------------------------------
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "invalid argument";
  }
}
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorInvalidValue";
  }
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
// Device memory from cudaMalloc (and the pool) is not zeroed on a GPU, and a pool hands back
// what an earlier call left there: here it is filled with 64-bit words that look like a tagged
// exchange word of step 1 holding a NaN (1 << 32 | 0x7FC00001; as floats NaN and a denormal in
// turn), so code that relies on fresh memory being zero, or a tagged exchange buffer that is not
// zeroed before its launch (a reader would take the NaN at once), fails the tests.
inline cudaError_t cudaMalloc(void** p, size_t n) {
  *p = fastlstm::cuda::emu::guarded_alloc(n);
  if (*p == nullptr) return cudaErrorMemoryAllocation;
  const unsigned long long stale = (1ull << 32) | 0x7FC00001ull;
  for (size_t i = 0; i < n; i += sizeof stale)
    std::memcpy(static_cast<char*>(*p) + i, &stale, n - i < sizeof stale ? n - i : sizeof stale);
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  fastlstm::cuda::emu::guarded_free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMallocFromPoolAsync(void** p, size_t n, cudaMemPool_t, cudaStream_t) { return cudaMalloc(p, n); }
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  const auto& d = fastlstm::cuda::emu::g_device;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = d.sm_count; return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *value = d.cooperative; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = d.smem_per_block_optin; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = d.smem_per_sm; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = d.max_threads_per_sm; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = d.cc_major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = d.cc_minor; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value > fastlstm::cuda::emu::g_device.smem_per_block_optin)
    return cudaErrorInvalidValue;
  fastlstm::cuda::emu::func_max_dynamic_smem()[reinterpret_cast<const void*>(func)] = value;
  return cudaSuccess;
}
template <class F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F* /*func*/, int threads, size_t dyn_smem) {
  *n = fastlstm::cuda::emu::occupancy_blocks_per_sm(threads, dyn_smem);
  return cudaSuccess;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}

#include "cuda/emu/emu_wmma.h"  // the tensor-core GEMM's wmma and bf16 subset
