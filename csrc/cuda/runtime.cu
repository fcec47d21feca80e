// The CUDA backend's runtime services: status and device queries, plain device buffers and
// copies, the workspace pool, pointer checks and output poisoning. Nothing here runs at
// import time: the (static) CUDA runtime is first called when Python asks for it, so that
// importing fastlstm._cuda works on machines without a driver or GPU.
#include <atomic>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/api.h"
#include "cuda/compat.cuh"
#include "cuda/lstm_impl.cuh"

namespace fastlstm {
namespace cuda {

namespace {
std::atomic<bool> g_poison{false};

std::string error_text(cudaError_t err) {
  const char* what = cudaGetErrorString(err);
  const char* name = cudaGetErrorName(err);
  return std::string(what ? what : "unknown CUDA error") + " (" + (name ? name : "?") + ")";
}
}  // namespace

namespace impl {

bool poison_enabled() { return g_poison.load(std::memory_order_relaxed); }

cudaMemPool_t workspace_pool(int device) {
  static std::mutex mu;
  static std::vector<cudaMemPool_t> pools;
  static std::vector<char> made;
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0) throw Error("device: expected an index >= 0, got " + std::to_string(device));
  if (static_cast<size_t>(device) >= pools.size()) {
    pools.resize(static_cast<size_t>(device) + 1, nullptr);
    made.resize(static_cast<size_t>(device) + 1, 0);
  }
  if (!made[device]) {
    int supported = 0;
    FL_CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device));
    if (supported) {
      cudaMemPoolProps props = {};
      props.allocType = cudaMemAllocationTypePinned;
      props.handleTypes = cudaMemHandleTypeNone;
      props.location.type = cudaMemLocationTypeDevice;
      props.location.id = device;
      cudaMemPool_t pool = nullptr;
      FL_CHECK(cudaMemPoolCreate(&pool, &props));
      uint64_t keep = std::numeric_limits<uint64_t>::max();  // cache freed blocks (empty_cache trims)
      FL_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
      pools[device] = pool;
    }
    made[device] = 1;
  }
  return pools[device];
}

void check_device_pointer(const void* p, const char* name, int device) {
  cudaPointerAttributes attr = {};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) error
    throw Error(std::string(name) + ": not a valid CUDA pointer: " + error_text(err));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw Error(std::string(name) + ": expected device memory on CUDA device " + std::to_string(device) +
                ", got a host pointer");
  if (attr.device != device)
    throw Error(std::string(name) + ": expected memory on CUDA device " + std::to_string(device) + ", got device " +
                std::to_string(attr.device));
}

}  // namespace impl

Status status() {
  Status st;
  (void)cudaRuntimeGetVersion(&st.runtime_version);
  if (cudaDriverGetVersion(&st.driver_version) != cudaSuccess) st.driver_version = 0;
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    st.reason = error_text(err);
    return st;
  }
  st.device_count = n;
  if (n <= 0) {
    st.reason = "no CUDA device found";
    return st;
  }
  st.ok = true;
  return st;
}

DeviceProps device_properties(int device) {
  cudaDeviceProp p = {};
  FL_CHECK(cudaGetDeviceProperties(&p, device));
  DeviceProps d;
  d.name = p.name;
  d.major = p.major;
  d.minor = p.minor;
  d.sm_count = p.multiProcessorCount;
  d.total_memory = p.totalGlobalMem;
  d.l2_cache_bytes = static_cast<size_t>(p.l2CacheSize);
  d.shared_memory_per_block = p.sharedMemPerBlock;
  d.max_threads_per_block = p.maxThreadsPerBlock;
  return d;
}

int current_device() {
  int d = 0;
  FL_CHECK(cudaGetDevice(&d));
  return d;
}

std::string kernel_variant() {
  return "simt-v1 + simt-gemm-v2 + persistent-v1 + tc-gemm-v1 + tc-recurrent-v1 + tc-x3-v1: fp32/fp64 CUDA cores (no "
         "cuBLAS/cuDNN); input projection and "
         "weight gradients by a tiled GEMM (float32: 128x128 tile, 8-deep k, 8x8 outputs per thread, double "
         "buffered; float64: 64x64 tile, 16-deep k, 4x4 outputs per thread), or with precision "
         "tf32/bf16 (float32 only) by a tensor-core GEMM (wmma, 128x128 tile, operands rounded while staged, float32 "
         "accumulation; tf32x3: operands split into two tf32 parts in registers, three MMAs per product); "
         "recurrence with precision tf32/bf16/tf32x3 at large batch (kernel path 'tensor') by a "
         "tensor-core GEMM per step (64x128 or 128x128 tiles, k split into slices whose partials are added in a "
         "fixed order) and a pointwise kernel; otherwise fp32/fp64 by "
         "persistent kernels when they fit (one cooperative launch for all T steps, each block's slice of the "
         "recurrent weights resident in shared memory, one grid barrier per step, forward and backward), else "
         "per step one fused kernel (8 units x 4 gates x 4|16 batch rows per block, k split 8 ways, fixed-tree "
         "reduction) forward and two (gate gradients; dz.R^T) backward; deterministic";
}

void set_poison(bool on) { g_poison.store(on); }
bool get_poison() { return g_poison.load(); }

void* device_alloc(size_t bytes, int device) {
  if (bytes == 0) return nullptr;
  impl::DeviceGuard guard(device);
  void* p = nullptr;
  FL_CHECK(cudaMalloc(&p, bytes));
  return p;
}

void device_free(void* ptr, int device) noexcept {
  if (!ptr) return;
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) return;
  if (previous != device) (void)cudaSetDevice(device);
  (void)cudaFree(ptr);
  if (previous != device) (void)cudaSetDevice(previous);
}

void copy_to_device(void* dst, const void* src, size_t bytes, int device) {
  if (bytes == 0) return;
  impl::DeviceGuard guard(device);
  FL_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void copy_to_host(void* dst, const void* src, size_t bytes, int device) {
  impl::DeviceGuard guard(device);
  if (bytes > 0) FL_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
  // cudaMemcpy returns errors of earlier asynchronous work too; make sure of it.
  FL_CHECK(cudaStreamSynchronize(nullptr));
}

void synchronize(int device, std::uintptr_t stream) {
  impl::DeviceGuard guard(device);
  FL_CHECK(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)));
}

void empty_cache(int device) {
  impl::DeviceGuard guard(device);
  cudaMemPool_t pool = impl::workspace_pool(device);
  if (!pool) return;
  FL_CHECK(cudaDeviceSynchronize());
  FL_CHECK(cudaMemPoolTrimTo(pool, 0));
}

}  // namespace cuda
}  // namespace fastlstm
