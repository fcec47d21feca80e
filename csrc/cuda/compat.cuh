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

// FL_EMU_IN_RANGE(i, n): on the emulator, traps unless 0 <= i < n (for stores through pointers
// into fixed-size shared arrays, which its -fsanitize=bounds cannot see); on the GPU nothing.
#if defined(FASTLSTM_CUDA_EMU)
#define FL_EMU_IN_RANGE(i, n)                                                  \
  do {                                                                         \
    if (!(static_cast<long long>(i) >= 0 && static_cast<long long>(i) < (n))) \
      __builtin_trap();                                                        \
  } while (0)
#else
#define FL_EMU_IN_RANGE(i, n) \
  do {                        \
  } while (0)
#endif

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

// FL_LAUNCH_SMEM(kernel, grid, block, smem, stream, args...): FL_LAUNCH with `smem` bytes of
// dynamic shared memory (FL_DYNAMIC_SHARED; more than 48 KB needs cudaFuncSetAttribute first).
#if defined(FASTLSTM_CUDA_EMU)
#define FL_LAUNCH_SMEM(kernel, grid, block, smem, stream, ...)                                                  \
  FL_CHECK(::fastlstm::cuda::emu::launch_smem(reinterpret_cast<const void*>(kernel), (grid), (block), (smem), \
                                               (stream), [&] { kernel(__VA_ARGS__); }))
#else
#define FL_LAUNCH_SMEM(kernel, grid, block, smem, stream, ...)  \
  do {                                                          \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__); \
    FL_CHECK(cudaGetLastError());                               \
  } while (0)
#endif

// Asynchronous global -> shared copies (cp.async, sm_80+; the pipelined tensor-core GEMM):
// fl_cp_async16(dst, src, valid) copies 16 bytes (both addresses 16-byte aligned; dst in shared
// memory), or writes 16 zero bytes and reads nothing when !valid; fl_cp_async_commit() closes
// this thread's group of copies; fl_cp_async_wait<N>() waits until at most N of this thread's
// committed groups are still in flight. A copy is visible to the other threads only after its
// thread waited for it and a __syncthreads(). In the emulator the copies are deferred to the wait.
#if defined(FASTLSTM_CUDA_EMU)
namespace fastlstm {
namespace cuda {
inline void fl_cp_async16(void* dst, const void* src, bool valid) { emu::cp_async(dst, src, 16, valid); }
inline void fl_cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void fl_cp_async_wait() {
  emu::cp_async_wait(static_cast<size_t>(N));
}
}  // namespace cuda
}  // namespace fastlstm
#else
namespace fastlstm {
namespace cuda {
__device__ __forceinline__ void fl_cp_async16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
#else
  (void)dst, (void)src, (void)valid;
  __trap();
#endif
}
__device__ __forceinline__ void fl_cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void fl_cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
}  // namespace cuda
}  // namespace fastlstm
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
// (16-byte aligned; FL_DYNAMIC_SHARED_128: 128-byte aligned). fl_arrive_release /
// fl_load_acquire: the grid barrier's counter, at GPU
// scope (red.release.gpu / ld.acquire.gpu, as cooperative_groups' grid sync does on sm_70+).
// launch_cooperative: cudaLaunchCooperativeKernel of a kernel taking one parameter struct.
// Tagged words (the persistent kernels' tagged exchange, FASTLSTM_CUDA_EXCHANGE=tagged): a
// 64-bit word holds a float32 value (low half, fl_float_bits / fl_bits_float) and the tag of
// the step that wrote it (high half). fl_store_tagged stores one word (st.relaxed.gpu.b64: an
// aligned 64-bit access is single-copy atomic in PTX's memory model), fl_load_tagged2 loads two
// (ld.relaxed.gpu.v2.b64, 16-byte aligned: a vector access is one access per element, so each
// word is still whole), so a reader that sees the tag it waits for sees the value stored with
// it: no fence, no counter. fl_spin_pause goes between polls (nothing on the GPU; in the
// emulator the fiber yields, and a tagged store counts as progress like an atomic);
// fl_poll_watchdog(since) too (on the GPU: __trap after 10 s of polling).
// fl_clock / fl_timer_ns (the persistent kernels' phase trace, FASTLSTM_CUDA_TRACE): the SM's
// cycle counter and the global nanosecond timer; in the emulator both are the host's monotonic
// clock in nanoseconds.
#if defined(FASTLSTM_CUDA_EMU)
#define FL_DYNAMIC_SHARED(name) unsigned char* name = ::fastlstm::cuda::emu::dynamic_shared()
#define FL_DYNAMIC_SHARED_128(name) unsigned char* name = ::fastlstm::cuda::emu::dynamic_shared(128)
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
inline void fl_store_tagged(unsigned long long* p, unsigned long long v) { emu::store_tagged(p, v); }
inline void fl_load_tagged2(const unsigned long long* p, unsigned long long& a, unsigned long long& b) {
  emu::load_tagged2(p, a, b);
}
inline void fl_spin_pause() { emu::spin_yield(); }
inline void fl_poll_watchdog(unsigned long long&) {}  // (the emulator reports a deadlock itself)
inline unsigned fl_float_bits(float v) { return ::fl_emu_float_bits(v); }  // (emu_wmma.h)
inline float fl_bits_float(unsigned u) { return ::fl_emu_bits_float(u); }
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
// the same, 128-byte aligned (the pipelined tensor-core GEMM's wmma tiles; a distinct name so
// that it never meets FL_DYNAMIC_SHARED's declaration with another alignment)
#define FL_DYNAMIC_SHARED_128(name) extern __shared__ __align__(128) unsigned char fl_dynamic_shared_128[]; \
  unsigned char* name = fl_dynamic_shared_128
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
__device__ __forceinline__ void fl_store_tagged(unsigned long long* p, unsigned long long v) {
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ void fl_load_tagged2(const unsigned long long* p, unsigned long long& a,
                                                unsigned long long& b) {
  asm volatile("ld.relaxed.gpu.global.v2.b64 {%0, %1}, [%2];" : "=l"(a), "=l"(b) : "l"(p) : "memory");
}
__device__ __forceinline__ void fl_spin_pause() {}
// A poll that has waited more than 10 s of GPU time (a step takes microseconds; even under
// compute-sanitizer, milliseconds) aborts the kernel (__trap: the call raises a CUDA error)
// instead of hanging the process: a protocol fault must fail a test, not eat a GPU session.
// `since` starts at 0 (the first call reads the clock).
__device__ __forceinline__ void fl_poll_watchdog(unsigned long long& since) {
  unsigned long long now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  if (since == 0)
    since = now;
  else if (now - since > 10000000000ull)
    __trap();
}
__device__ __forceinline__ unsigned fl_float_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ float fl_bits_float(unsigned u) { return __uint_as_float(u); }
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
