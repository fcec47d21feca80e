// The CUDA backend's host code and kernels (csrc/cuda/lstm_impl.cuh) built for the CPU
// emulator of emu.h, behind a small C interface that tests/test_cuda.py loads with ctypes.
// Pointers are host addresses of memory from fl_emu_alloc (guard-paged, see emu.h).
//
//   c++ -std=c++17 -O1 -fPIC -shared -Icsrc -Wno-unknown-pragmas -fsanitize=bounds
//       -fsanitize-undefined-trap-on-error csrc/cuda/emu/emu_capi.cc -o libfastlstm_cuda_emu.so
#define FASTLSTM_CUDA_EMU 1

#include <cstdio>
#include <exception>

#include "cuda/lstm_impl.cuh"

namespace fastlstm {
namespace cuda {
namespace impl {
namespace {
bool g_poison = false;
}
bool poison_enabled() { return g_poison; }
cudaMemPool_t workspace_pool(int) { return nullptr; }  // plain (guarded) allocations
void check_device_pointer(const void* p, const char* name, int) {
  if (emu::allocations().count(const_cast<void*>(p)) == 0)
    throw Error(std::string(name) + ": not the start of an emulator allocation");
}
}  // namespace impl
template std::string forward<float>(const ForwardArgs<float>&, int, std::uintptr_t, const RunOptions&);
template std::string forward<double>(const ForwardArgs<double>&, int, std::uintptr_t, const RunOptions&);
template std::string backward<float>(const BackwardArgs<float>&, int, std::uintptr_t, const RunOptions&);
template std::string backward<double>(const BackwardArgs<double>&, int, std::uintptr_t, const RunOptions&);
}  // namespace cuda
}  // namespace fastlstm

namespace {
using namespace fastlstm;

int report(const char* what, char* err, int errlen) {
  if (err && errlen > 0) std::snprintf(err, static_cast<size_t>(errlen), "%s", what);
  return 1;
}

// Runs f; 0 on success, else 1 with the message in err (a C++ exception or an emulation error).
template <class F>
int guarded(F&& f, char* err, int errlen) {
  cuda::emu::g_error.clear();
  try {
    f();
  } catch (const std::exception& e) {
    return report(e.what(), err, errlen);
  }
  if (!cuda::emu::g_error.empty()) return report(("emulator: " + cuda::emu::g_error).c_str(), err, errlen);
  return 0;
}

template <typename Real>
void fwd(int64_t T, int64_t B, int64_t I, int64_t H, const void* x, const void* kernel, const void* rk,
         const void* bias, const void* h0, const void* c0, const int64_t* lengths, int reverse, void* y, void* h_n,
         void* c_n, void* gates, void* cells, int path, int precision, std::string* ran) {
  ForwardArgs<Real> a;
  a.dims = Dims{T, B, I, H};
  a.x = static_cast<const Real*>(x);
  a.kernel = static_cast<const Real*>(kernel);
  a.recurrent_kernel = static_cast<const Real*>(rk);
  a.bias = static_cast<const Real*>(bias);
  a.h0 = static_cast<const Real*>(h0);
  a.c0 = static_cast<const Real*>(c0);
  a.lengths = lengths;
  a.reverse = reverse != 0;
  a.y = static_cast<Real*>(y);
  a.h_n = static_cast<Real*>(h_n);
  a.c_n = static_cast<Real*>(c_n);
  a.gates = static_cast<Real*>(gates);
  a.cells = static_cast<Real*>(cells);
  cuda::RunOptions opt;
  opt.path = static_cast<cuda::KernelPath>(path);
  opt.precision = static_cast<cuda::Precision>(precision);
  *ran = cuda::forward<Real>(a, 0, 0, opt);
}

template <typename Real>
void bwd(int64_t T, int64_t B, int64_t I, int64_t H, const void* x, const void* kernel, const void* rk,
         const void* h0, const void* c0, const int64_t* lengths, int reverse, const void* gates, const void* cells,
         const void* dy, const void* dh_n, const void* dc_n, void* dx, void* dh0, void* dc0, void* dk, void* dr,
         void* db, int path, int precision, std::string* ran) {
  BackwardArgs<Real> a;
  a.dims = Dims{T, B, I, H};
  a.x = static_cast<const Real*>(x);
  a.kernel = static_cast<const Real*>(kernel);
  a.recurrent_kernel = static_cast<const Real*>(rk);
  a.h0 = static_cast<const Real*>(h0);
  a.c0 = static_cast<const Real*>(c0);
  a.lengths = lengths;
  a.reverse = reverse != 0;
  a.gates = static_cast<const Real*>(gates);
  a.cells = static_cast<const Real*>(cells);
  a.dy = static_cast<const Real*>(dy);
  a.dh_n = static_cast<const Real*>(dh_n);
  a.dc_n = static_cast<const Real*>(dc_n);
  a.dx = static_cast<Real*>(dx);
  a.dh0 = static_cast<Real*>(dh0);
  a.dc0 = static_cast<Real*>(dc0);
  a.dkernel = static_cast<Real*>(dk);
  a.drecurrent_kernel = static_cast<Real*>(dr);
  a.dbias = static_cast<Real*>(db);
  cuda::RunOptions opt;
  opt.path = static_cast<cuda::KernelPath>(path);
  opt.precision = static_cast<cuda::Precision>(precision);
  *ran = cuda::backward<Real>(a, 0, 0, opt);
}
}  // namespace

extern "C" {

void* fl_emu_alloc(int64_t nbytes) { return nbytes > 0 ? cuda::emu::guarded_alloc(static_cast<size_t>(nbytes)) : nullptr; }
void fl_emu_free(void* p) { cuda::emu::guarded_free(p); }
int64_t fl_emu_live_allocations() { return static_cast<int64_t>(cuda::emu::allocations().size()); }
void fl_emu_set_poison(int on) { cuda::impl::g_poison = on != 0; }
void fl_emu_set_reverse_order(int on) { cuda::emu::g_reverse_order = on != 0; }
void fl_emu_set_guard_front(int on) { cuda::emu::g_guard_front = on != 0; }
// The persistent kernels' weight loads take R as unaligned (1): their one-value-per-load paths.
void fl_emu_set_pretend_unaligned(int on) { cuda::emu::g_pretend_unaligned = on != 0; }
// cp.async copies land at the copy instruction (1) or at the copying thread's wait (0, default).
void fl_emu_set_async_eager(int on) { cuda::emu::g_async_eager = on != 0; }
// The emulated device of the persistent kernels' planner and cooperative launches.
void fl_emu_set_device(int sm_count, int smem_per_block_optin, int smem_per_sm, int cooperative) {
  cuda::emu::g_device.sm_count = sm_count;
  cuda::emu::g_device.smem_per_block_optin = smem_per_block_optin;
  cuda::emu::g_device.smem_per_sm = smem_per_sm;
  cuda::emu::g_device.cooperative = cooperative;
}
// Cooperative launches: 0 thread order (or reversed with set_reverse_order), 1 reversed,
// 2 a random permutation per round from `seed`.
void fl_emu_set_schedule(int mode, int64_t seed) {
  cuda::emu::g_schedule = mode;
  cuda::emu::g_schedule_seed = seed ? static_cast<uint64_t>(seed) : 1;
}
// The emulated device's compute capability (the tensor-core GEMM refuses devices below 8.0).
void fl_emu_set_capability(int major, int minor) {
  cuda::emu::g_device.cc_major = major;
  cuda::emu::g_device.cc_minor = minor;
}
void fl_emu_stats(int64_t* out3) {
  out3[0] = cuda::emu::g_stats.launches;
  out3[1] = cuda::emu::g_stats.blocks;
  out3[2] = cuda::emu::g_stats.barriers;
}

int fl_emu_forward(int is_double, int64_t T, int64_t B, int64_t I, int64_t H, const void* x, const void* kernel,
                   const void* rk, const void* bias, const void* h0, const void* c0, const int64_t* lengths,
                   int reverse, void* y, void* h_n, void* c_n, void* gates, void* cells, int path, int precision,
                   char* ran, int ranlen, char* err, int errlen) {
  std::string what;
  const int rc = guarded(
      [&] {
        if (is_double)
          fwd<double>(T, B, I, H, x, kernel, rk, bias, h0, c0, lengths, reverse, y, h_n, c_n, gates, cells, path,
                      precision, &what);
        else
          fwd<float>(T, B, I, H, x, kernel, rk, bias, h0, c0, lengths, reverse, y, h_n, c_n, gates, cells, path,
                     precision, &what);
      },
      err, errlen);
  if (ran && ranlen > 0) std::snprintf(ran, static_cast<size_t>(ranlen), "%s", what.c_str());
  return rc;
}

int fl_emu_backward(int is_double, int64_t T, int64_t B, int64_t I, int64_t H, const void* x, const void* kernel,
                    const void* rk, const void* h0, const void* c0, const int64_t* lengths, int reverse,
                    const void* gates, const void* cells, const void* dy, const void* dh_n, const void* dc_n,
                    void* dx, void* dh0, void* dc0, void* dk, void* dr, void* db, int path, int precision, char* ran,
                    int ranlen, char* err, int errlen) {
  std::string what;
  const int rc = guarded(
      [&] {
        if (is_double)
          bwd<double>(T, B, I, H, x, kernel, rk, h0, c0, lengths, reverse, gates, cells, dy, dh_n, dc_n, dx, dh0,
                      dc0, dk, dr, db, path, precision, &what);
        else
          bwd<float>(T, B, I, H, x, kernel, rk, h0, c0, lengths, reverse, gates, cells, dy, dh_n, dc_n, dx, dh0,
                     dc0, dk, dr, db, path, precision, &what);
      },
      err, errlen);
  if (ran && ranlen > 0) std::snprintf(ran, static_cast<size_t>(ranlen), "%s", what.c_str());
  return rc;
}

// C = A . B (+ bias) by the LSTM's GEMM in `precision` (0 fp32 SIMT, 1 tf32, 2 bf16 tensor cores).
int fl_emu_gemm(int precision, int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak,
                const float* B, int64_t sbk, int64_t sbn, const float* bias, float* C, int64_t ldc, char* ran,
                int ranlen, char* err, int errlen) {
  std::string what;
  const int rc = guarded(
      [&] {
        what = cuda::impl::matmul_impl<float>(static_cast<cuda::Precision>(precision), M, N, K, A, sam, sak, B, sbk,
                                              sbn, bias, C, ldc, 0, nullptr);
      },
      err, errlen);
  if (ran && ranlen > 0) std::snprintf(ran, static_cast<size_t>(ranlen), "%s", what.c_str());
  return rc;
}

// Whether kernel path "auto" runs the recurrent products on the tensor cores for B rows and
// H units (with precision tf32 / bf16): 1 or 0.
int fl_emu_tensor_auto(int64_t B, int64_t H) { return cuda::impl::tensor_auto(B, H) ? 1 : 0; }

// The per-step recurrent products' GEMM (kernel path "tensor") alone: partial products
// C_z = A . B over k slice z (kslice k each, the last one shorter), C_z = C + z * M * N
// (ceil(K / kslice) slices, 1 when K = 0), on the Large (128 x 128) or Step (64 x 128) tile;
// precision 1 tf32, 2 bf16, 3 tf32x3; precision 0 (fp32): kernel path "tiled"'s fp32 SIMT
// split-k product (128 x 128 or 64 x 128 tiles, kslice a multiple of 8). kslice <= 0: the plan
// tc::plan_step (tiled_plan) makes for the emulated device. The description is the plan's,
// + " (cp.async)" when the pipelined kernel ran, + " (simt)" for fp32.
int fl_emu_step_gemm(int precision, int large, int64_t kslice, int64_t M, int64_t N, int64_t K, const float* A,
                     int64_t sam, int64_t sak, const float* B, int64_t sbk, int64_t sbn, float* C, char* ran,
                     int ranlen, char* err, int errlen) {
  std::string what;
  const int rc = guarded(
      [&] {
        const auto p = static_cast<cuda::Precision>(precision);
        if (p != cuda::Precision::kFp32 && p != cuda::Precision::kTf32 && p != cuda::Precision::kBf16 &&
            p != cuda::Precision::kTf32x3)
          throw cuda::Error("step gemm: fp32, tf32, bf16 or tf32x3");
        const bool tiled = p == cuda::Precision::kFp32;
        cuda::impl::tc::StepPlan pl;
        if (kslice <= 0) {
          const int sms = cuda::emu::g_device.sm_count;
          pl = tiled ? cuda::impl::tiled_plan(M, N, K, sms) : cuda::impl::tc::plan_step(M, N, K, sms);
        } else {
          pl.large = large != 0;
          pl.kslice = kslice;
          pl.splits = K > 0 ? (K + kslice - 1) / kslice : 1;
        }
        if (tiled) {
          cuda::impl::tiled_step<float>(pl, M, N, K, A, sam, sak, B, sbk, sbn, C, nullptr);
          what = pl.describe() + " (simt)";
          return;
        }
        const bool piped = cuda::impl::tc::step_gemm<float>(p, pl, M, N, K, A, sam, sak, B, sbk, sbn, C, nullptr);
        what = pl.describe() + (piped ? " (cp.async)" : "");
      },
      err, errlen);
  if (ran && ranlen > 0) std::snprintf(ran, static_cast<size_t>(ranlen), "%s", what.c_str());
  return rc;
}

// step_matmul() of api.h on the emulator (its argument checks, the plan for the emulated device,
// the kslice override): precision 0 fp32 (kernel path "tiled"), 1 tf32, 2 bf16, 3 tf32x3.
int fl_emu_step_matmul(int precision, int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak,
                       const float* B, int64_t sbk, int64_t sbn, float* C, int64_t c_elems, int64_t repeat,
                       int64_t kslice, char* ran, int ranlen, char* err, int errlen) {
  std::string what;
  const int rc = guarded(
      [&] {
        what = cuda::impl::step_matmul_impl<float>(static_cast<cuda::Precision>(precision), M, N, K, A, sam, sak, B,
                                                   sbk, sbn, C, c_elems, repeat, 0, nullptr, kslice);
      },
      err, errlen);
  if (ran && ranlen > 0) std::snprintf(ran, static_cast<size_t>(ranlen), "%s", what.c_str());
  return rc;
}

}  // extern "C"
