// fastlstm's CUDA backend: the host-side interface, free of CUDA headers so that the
// pybind11 binding (csrc/bindings/cuda_module.cc) compiles with the ordinary C++ compiler.
//
// Every pointer in ForwardArgs / BackwardArgs passed to forward()/backward() is a DEVICE
// pointer on `device` (lengths too: int64 on the device). The kernels follow
// csrc/fastlstm/lstm.h exactly; training saves gates (T,B,4H) and cells (T,B,H) indexed by
// time position t, like the CPU backend. `stream` is a cudaStream_t passed as an integer
// (0 = the legacy default stream).
//
// Every CUDA call is checked: a failure throws fastlstm::cuda::Error (a std::runtime_error,
// so pybind11 turns it into RuntimeError) whose message holds cudaGetErrorString, the error's
// name, the failing call and its source location.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastlstm/lstm.h"

namespace fastlstm {
namespace cuda {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Whether the CUDA runtime works here and sees a device. Never throws: on a machine without
// a driver or GPU, ok is false and reason holds the CUDA error string.
struct Status {
  bool ok = false;
  int device_count = 0;
  std::string reason;
  int runtime_version = 0;  // cudaRuntimeGetVersion (the runtime linked in, e.g. 13000)
  int driver_version = 0;   // cudaDriverGetVersion (0 when no driver)
};
Status status();

struct DeviceProps {
  std::string name;
  int major = 0, minor = 0;
  int sm_count = 0;
  size_t total_memory = 0;
  size_t l2_cache_bytes = 0;
  size_t shared_memory_per_block = 0;
  int max_threads_per_block = 0;
};
DeviceProps device_properties(int device);
int current_device();

// A description of the kernels this build runs (for cuda_info()).
std::string kernel_variant();

// Fill every output and workspace buffer with NaN bytes (0xFF) before the kernels run, so a
// kernel that forgets to write an element (or reads one it never wrote) shows up as NaN.
void set_poison(bool on);
bool get_poison();

// Plain device memory (cudaMalloc/cudaFree), for NumPy inputs that are copied to the device.
void* device_alloc(size_t bytes, int device);     // nullptr for bytes == 0
void device_free(void* ptr, int device) noexcept;  // errors are swallowed (destructor use)
// Synchronous copies between host memory and device memory (legacy default stream).
void copy_to_device(void* dst, const void* src, size_t bytes, int device);
void copy_to_host(void* dst, const void* src, size_t bytes, int device);
void synchronize(int device, std::uintptr_t stream);
// Returns the memory cached by fastlstm's workspace pool on `device` to the driver.
void empty_cache(int device);

// Which recurrent kernels run. kAuto: with precision tf32 / bf16 (float32), B >= 32 and
// B H^2 >= 2^25 (H = 1024: B >= 32) the tensor-core recurrence (kTensor), else the persistent
// kernels (one cooperative launch for all T steps, weights resident in shared memory) when they
// fit the device, else the per-step simt kernels; kSimt: always the per-step kernels;
// kPersistent: the persistent kernels or an Error saying why they cannot run; kTensor: the
// per-step recurrent products on the tensor cores (a tensor-core GEMM + an elementwise kernel
// per step), any B, precision tf32 / bf16 only (an Error in fp32). fp32 never runs kTensor.
// kTiled (float32 data, any precision; never chosen by kAuto until measured on a GPU): the
// per-step recurrent products as split-k GEMMs on the CUDA cores in fp32 (64 x 128 or
// 128 x 128 tiles, 8 x 8 or 4 x 8 outputs per thread) + the tensor path's elementwise kernel per
// step; an Error for float64.
enum class KernelPath { kAuto = 0, kSimt = 1, kPersistent = 2, kTensor = 3, kTiled = 4 };

// Precision of the large matrix products (the input projection x . kernel and, in backward,
// x^T . dz, h_prev^T . dz and dz . kernel^T). kFp32: the fp32 SIMT GEMM (the exact default).
// kTf32 / kBf16 (float32 only, sm_80+): tensor cores (wmma) with the operands rounded to tf32
// (cvt.rna.tf32.f32) or converted to bf16 (round to nearest even) while they are staged in shared
// memory, float32 accumulation. On kernel path kTensor (auto: large B H^2) the per-step recurrent
// products h_{s-1} . R and dz_s . R^T run on the tensor cores too (h, dz and R rounded the same
// way); otherwise they stay float32. The gate math, the cell state and dbias stay float32 in
// every mode.
// kTf32x3 (float32 only, sm_80+): the same tensor-core kernels, but each float32 operand is split
// into two tf32 parts, v = hi + lo (hi = tf32(v), lo = tf32(v - hi): 22 of float32's 24
// significant bits), and each product is accumulated as lo.hi + hi.lo + hi.hi (the lo.lo term,
// ~2^-22 of the product, is left out): three MMAs per product for about float32's accuracy.
enum class Precision { kFp32 = 0, kTf32 = 1, kBf16 = 2, kTf32x3 = 3 };

struct RunOptions {
  KernelPath path = KernelPath::kAuto;
  Precision precision = Precision::kFp32;
};

// For tests: C (M x N, leading dimension ldc) = A . B (+ bias[n]) on device pointers, with
// A(m, k) = A[m * sam + k * sak], B(k, n) = B[k * sbk + n * sbn], by the GEMM the LSTM uses in
// `precision` (kFp32: the SIMT GEMM; kTf32 / kBf16: the tensor-core GEMM). Returns a
// description of the kernel that ran.
std::string matmul(Precision precision, int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak,
                   const float* B, int64_t sbk, int64_t sbn, const float* bias, float* C, int64_t ldc, int device,
                   std::uintptr_t stream);

// For benchmarks and tests: the per-step recurrent product of kernel path "tensor" (precision
// kTf32 / kBf16 / kTf32x3) or, with precision kFp32, of kernel path "tiled" (the fp32 split-k
// SIMT GEMM), `repeat` times back to back on `stream`, as the LSTM's step loop launches it: the
// k-slice partials of A (M x K) . B (K x N) into C (the plan's slices x M x N; c_elems, the
// elements C holds, must cover them), on the tile and k slices tc::plan_step (tiled_plan) picks
// for the device; kslice > 0 replaces the plan's k per slice (a multiple of 32, kFp32 of 8, else
// an Error: for benchmarks that compare slicings). Returns the plan's description (+ " (cp.async)"
// when pipelined, + " (simt)" for kFp32).
std::string step_matmul(Precision precision, int64_t M, int64_t N, int64_t K, const float* A, int64_t sam,
                        int64_t sak, const float* B, int64_t sbk, int64_t sbn, float* C, int64_t c_elems,
                        int64_t repeat, int device, std::uintptr_t stream, int64_t kslice = 0);

// Both return a one-line description of the recurrent kernel that ran (for cuda_info()).
template <typename Real>
std::string forward(const ForwardArgs<Real>& a, int device, std::uintptr_t stream, const RunOptions& opt = {});
template <typename Real>
std::string backward(const BackwardArgs<Real>& a, int device, std::uintptr_t stream, const RunOptions& opt = {});

extern template std::string forward<float>(const ForwardArgs<float>&, int, std::uintptr_t, const RunOptions&);
extern template std::string forward<double>(const ForwardArgs<double>&, int, std::uintptr_t, const RunOptions&);
extern template std::string backward<float>(const BackwardArgs<float>&, int, std::uintptr_t, const RunOptions&);
extern template std::string backward<double>(const BackwardArgs<double>&, int, std::uintptr_t, const RunOptions&);

}  // namespace cuda
}  // namespace fastlstm
