// A CPU emulator for the small subset of CUDA that csrc/cuda/lstm_impl.cuh uses, so that the
// kernels' logic (indexing, bounds, barriers, lengths/reverse, the numerics) runs and is
// tested on machines without a GPU. Not used by the real build (compat.cuh includes it only
// with FASTLSTM_CUDA_EMU defined). tests/test_cuda.py compiles emu_capi.cc with the host C++
// compiler and drives it through ctypes.
//
// Model: blocks run one after another; the threads of a block are fibers (ucontext) on one OS
// thread, each run until it reaches __syncthreads() or returns, round by round. __shared__
// variables become function-local statics (one block at a time, so that is the block's
// shared memory). Checks:
//   * a barrier that not every thread of the block reaches (some returned) is an error;
//   * the thread order within each round, and the block order, can be reversed
//     (set_reverse_order): a missing barrier makes a thread read shared memory before or
//     after another writes it depending on the order, so results differ between the orders;
//   * device allocations (cudaMalloc & co, and the test's buffers) sit against a PROT_NONE
//     guard page, after the end or before the start (set_guard_front): an access one past
//     either end of any buffer faults at once.
// Fixed-size arrays (shared memory tiles, register arrays) are bounds-checked by compiling
// with -fsanitize=bounds -fsanitize-undefined-trap-on-error.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

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

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2 };
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
constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
};

inline ucontext_t g_scheduler;
inline std::vector<Fiber> g_fibers;
inline int g_current = 0;
inline const std::function<void()>* g_body = nullptr;

inline void fiber_entry() {
  (*g_body)();
  g_fibers[static_cast<size_t>(g_current)].done = true;
  // returning resumes uc_link (the scheduler)
}

inline void syncthreads() {
  ++g_stats.barriers;
  swapcontext(&g_fibers[static_cast<size_t>(g_current)].ctx, &g_scheduler);
}

inline void run_block(unsigned nthreads) {
  if (g_fibers.size() < nthreads) g_fibers.resize(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = g_fibers[i];
    if (f.stack.size() < kStackBytes) f.stack.resize(kStackBytes);
    f.done = false;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &g_scheduler;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  for (;;) {
    for (unsigned k = 0; k < nthreads; ++k) {
      const unsigned i = g_reverse_order ? nthreads - 1 - k : k;
      if (g_fibers[i].done) continue;
      g_current = static_cast<int>(i);
      g_threadIdx = uint3{i, 0, 0};
      swapcontext(&g_scheduler, &g_fibers[i].ctx);
    }
    unsigned done = 0;
    for (unsigned i = 0; i < nthreads; ++i) done += g_fibers[i].done ? 1u : 0u;
    if (done == nthreads) return;
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
  if (block.y != 1 || block.z != 1 || grid.z != 1) {
    if (g_error.empty()) g_error = "the emulator runs 1-D blocks and 2-D grids only";
    return;
  }
  ++g_stats.launches;
  g_gridDim = grid;
  g_blockDim = block;
  g_body = &body;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y;
  for (uint64_t k = 0; k < nblocks; ++k) {
    const uint64_t b = g_reverse_order ? nblocks - 1 - k : k;
    g_blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x), 0};
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
  return e == cudaSuccess ? "no error" : (e == cudaErrorMemoryAllocation ? "out of memory" : "invalid argument");
}
inline const char* cudaGetErrorName(cudaError_t e) {
  return e == cudaSuccess ? "cudaSuccess" : (e == cudaErrorMemoryAllocation ? "cudaErrorMemoryAllocation" : "cudaErrorInvalidValue");
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaMalloc(void** p, size_t n) {
  *p = fastlstm::cuda::emu::guarded_alloc(n);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
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
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
