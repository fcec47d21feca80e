// The few things the kernels and their host code need from CUDA, so that the same source
// (lstm_impl.cuh) compiles either with nvcc for the GPU, or, with FASTLSTM_CUDA_EMU defined,
// with an ordinary C++ compiler against the CPU emulator of csrc/cuda/emu/emu.h (used by
// tests/test_cuda.py to run the kernels' logic on machines without a GPU).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "cuda/api.h"

#if defined(FASTLSTM_CUDA_EMU)
#include "cuda/emu/emu.h"  // with its wmma / bf16 subset (emu/emu_wmma.h)
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>
#endif

namespace fastlstm {
namespace cuda {

// "CUDA error: <cudaGetErrorString> [<cudaGetErrorName>] in <call> at <file>:<line>"
[[noreturn]] inline void throw_error(cudaError_t err, const char* call, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  const char* what = cudaGetErrorString(err);
  const char* name = cudaGetErrorName(err);
  throw Error(std::string("CUDA error: ") + (what ? what : "unknown error") + " [" +
              (name ? name : "?") + "] in " + call + " at " + base + ":" + std::to_string(line));
}

inline void check(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) throw_error(err, call, file, line);
}

}  // namespace cuda
}  // namespace fastlstm

#define FL_CHECK(call) ::fastlstm::cuda::check((call), #call, __FILE__, __LINE__)

// FL_LAUNCH(kernel, grid, block, stream, args...): launch and check the launch. `kernel` is a
// plain name (a function pointer variable for templates: the macro cannot take commas).
#if defined(FASTLSTM_CUDA_EMU)
#define FL_LAUNCH(kernel, grid, block, stream, ...) \
  ::fastlstm::cuda::emu::launch((grid), (block), (stream), [&] { kernel(__VA_ARGS__); })
#else
#define FL_LAUNCH(kernel, grid, block, stream, ...)            \
  do {                                                         \
    kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__);     \
    FL_CHECK(cudaGetLastError());                              \
  } while (0)
#endif

// fl_syncwarp(): orders the shared-memory accesses of a warp's threads (the tensor-core GEMM's
// epilogue scratch). __syncwarp() on the GPU; in the emulator a block barrier, which is only
// correct where every warp of the block calls it equally often (as the GEMM's epilogue does)
// and is stronger than the GPU's (a warp-level race could not show there).
#if defined(FASTLSTM_CUDA_EMU)
#define fl_syncwarp() __syncthreads()
#else
#define fl_syncwarp() __syncwarp()
#endif

// ---- what the cooperative (persistent) kernels need ---------------------------------------
// FL_DYNAMIC_SHARED(name): the block's dynamic shared memory as `unsigned char* name`
// (16-byte aligned). fl_arrive_release / fl_load_acquire: the grid barrier's counter, at GPU
// scope (red.release.gpu / ld.acquire.gpu, as cooperative_groups' grid sync does on sm_70+).
// launch_cooperative: cudaLaunchCooperativeKernel of a kernel taking one parameter struct.
// fl_clock / fl_timer_ns (the persistent kernels' phase trace, FASTLSTM_CUDA_TRACE): the SM's
// cycle counter and the global nanosecond timer; in the emulator both are the host's monotonic
// clock in nanoseconds.
#if defined(FASTLSTM_CUDA_EMU)
#define FL_DYNAMIC_SHARED(name) unsigned char* name = ::fastlstm::cuda::emu::dynamic_shared()
namespace fastlstm {
namespace cuda {
inline long long fl_clock() { return emu::monotonic_ns(); }
inline unsigned long long fl_timer_ns() { return static_cast<unsigned long long>(emu::monotonic_ns()); }
}  // namespace cuda
}  // namespace fastlstm
namespace fastlstm {
namespace cuda {
inline void fl_arrive_release(unsigned long long* p) { emu::arrive_release(p); }
inline unsigned long long fl_load_acquire(const unsigned long long* p) { return emu::load_acquire(p); }
template <typename Param>
void launch_cooperative(void (*kernel)(Param), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                        const Param& p) {
  check(emu::launch_cooperative(reinterpret_cast<const void*>(kernel), grid, block, smem, stream, [&] { kernel(p); }),
        "cudaLaunchCooperativeKernel", __FILE__, __LINE__);
}
}  // namespace cuda
}  // namespace fastlstm
#else
#define FL_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
namespace fastlstm {
namespace cuda {
__device__ __forceinline__ long long fl_clock() { return clock64(); }
__device__ __forceinline__ unsigned long long fl_timer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void fl_arrive_release(unsigned long long* p) {
  asm volatile("red.release.gpu.global.add.u64 [%0], %1;" ::"l"(p), "l"(1ull) : "memory");
}
__device__ __forceinline__ unsigned long long fl_load_acquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
template <typename Param>
void launch_cooperative(void (*kernel)(Param), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                        const Param& p) {
  Param copy = p;
  void* args[] = {static_cast<void*>(&copy)};
  check(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, args, smem, stream),
        "cudaLaunchCooperativeKernel", __FILE__, __LINE__);
}
}  // namespace cuda
}  // namespace fastlstm
#endif
