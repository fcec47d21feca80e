// fastlstm's tensor-core GEMM (precision "tf32" / "bf16"; float32 data only), included by
// lstm_impl.cuh after its helpers (imin, ceil_div, grid_of). The same source runs on the GPU
// (nvcuda::wmma from <mma.h>, sm_80 and newer) and, with FASTLSTM_CUDA_EMU, on the CPU
// emulator's wmma subset (emu/emu_wmma.h).
//
//   C (M x N, leading dimension ldc) = A . B (+ bias[n]),
//   A(m, k) = A[m * sam + k * sak], B(k, n) = B[k * sbk + n * sbn] (transposes are strides).
//
// Block tile 128 x 128, 32 k per shared-memory pass, 256 threads = 8 warps (4 along m x 2
// along n); each warp owns a 32 x 64 tile = 2 x 4 wmma accumulators of 16 x 16 (float32).
// Staging: every thread loads 16 elements of each operand from global memory (consecutive
// threads on the operand's unit-stride axis: coalesced), rounds them to tf32
// (cvt.rna.tf32.f32, i.e. wmma::__float_to_tf32: round to nearest, ties away from zero, to 10
// mantissa bits) or converts them to bf16 (__float2bfloat16_rn: round to nearest even, 7
// mantissa bits stored), and stores them in shared memory in the layout that keeps the
// shared-memory writes consecutive too: an operand whose m (or n) axis has unit stride is kept
// k-major and read with a col_major (A) / row_major (B) fragment. The next pass's global loads
// are issued into registers before the current pass's MMAs (one pass of latency hidden).
// Fragments: tf32 16 x 16 x 8 (4 k-steps per pass), bf16 16 x 16 x 16 (2 k-steps per pass).
// Epilogue: each accumulator goes through a per-warp 16 x 20 float scratch in shared memory
// (store_matrix_sync) and is written to C with bounds checks and the bias added in float32.
//
// Deterministic: every output element is one warp's accumulator, summed over k in a fixed
// order (k passes in order, k-steps in order, the MMA's own fixed internal order); no split-K,
// no atomics. Shared memory: 35,328 B (tf32) / 18,944 B (bf16) static, under the 48 KB limit.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/api.h"
#include "cuda/compat.cuh"

namespace fastlstm {
namespace cuda {
namespace impl {
namespace tc {

constexpr int kThreads = 256;
constexpr int kBM = 128, kBN = 128, kBK = 32;           // block tile, k per pass
constexpr int kWarpM = 32, kWarpN = 64;                 // warp tile (4 x 2 warps)
constexpr int kFragM = kWarpM / 16, kFragN = kWarpN / 16;
constexpr int kLoads = kBM * kBK / kThreads;            // elements of each operand per thread per pass
constexpr int kScratchLd = 20;                          // per-warp epilogue scratch: 16 x 20 floats
static_assert(kBM == kBN, "the staging code assumes square block tiles");
static_assert((kBM / kWarpM) * (kBN / kWarpN) * 32 == kThreads, "8 warps cover the block tile");
static_assert((kBM * kBK) % kThreads == 0, "whole loads per thread");

template <Precision P>
struct Traits;
template <>
struct Traits<Precision::kTf32> {
  using Elem = float;  // tf32 values are kept in float storage, the low 13 bits zero
  using FragType = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;    // wmma 16 x 16 x 8
  static constexpr int kPad = 4;  // 16 bytes of padding per stored row (ldm stays a multiple of 16 bytes)
  static const char* name() { return "tf32"; }
  __device__ static __forceinline__ Elem convert(float v) { return nvcuda::wmma::__float_to_tf32(v); }
};
template <>
struct Traits<Precision::kBf16> {
  using Elem = __nv_bfloat16;
  using FragType = __nv_bfloat16;
  static constexpr int kK = 16;   // wmma 16 x 16 x 16
  static constexpr int kPad = 8;  // 16 bytes
  static const char* name() { return "bf16"; }
  __device__ static __forceinline__ Elem convert(float v) { return __float2bfloat16_rn(v); }
};

// The shared-memory geometry of one operand tile: 128 rows (m of A, n of B) x 32 k.
// KMAJOR: stored [k][row] (the row axis has unit stride in global memory), else [row][k].
template <Precision P, bool KMAJOR>
struct Tile {
  static constexpr int ld = KMAJOR ? kBM + Traits<P>::kPad : kBK + Traits<P>::kPad;  // elements per stored row
  static constexpr int elems = (KMAJOR ? kBK : kBM) * ld;
  static constexpr int bytes = elems * static_cast<int>(sizeof(typename Traits<P>::Elem));
  static_assert(bytes % 128 == 0, "the second tile starts 128-byte aligned");
  static_assert((ld * sizeof(typename Traits<P>::Elem)) % 16 == 0, "wmma: ldm a multiple of 16 bytes");
  // fragment pointers: rows r .. r+15, k values k .. k+K-1 (32-byte aligned: r, k multiples of 16 / kK)
  __device__ static __forceinline__ int offset(int r, int k) { return KMAJOR ? k * ld + r : r * ld + k; }
};

// The thread's 16 elements of an operand tile (128 rows r x 32 k; X(r, k) = X[r * s_r + k * s_k],
// zero outside R x K): element i is (rr0 + 8 i, kk0) with rr0 = tid / 32, kk0 = tid % 32, or, when
// KMAJOR (the rows have unit stride), (rr0, kk0 + 2 i) with rr0 = tid % 128, kk0 = tid / 128:
// consecutive threads read consecutive addresses either way, and each thread's addresses are
// one base plus constant steps (few registers).
template <bool KMAJOR>
__device__ __forceinline__ void load_operand(float (&r)[kLoads], const float* X, int64_t R, int64_t K, int64_t r0,
                                             int64_t k0, int64_t s_r, int64_t s_k) {
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = r0 + (KMAJOR ? tid % kBM : tid / kBK);
  const int64_t k = k0 + (KMAJOR ? tid / kBM : tid % kBK);
  const int64_t base = row * s_r + k * s_k;
  if (KMAJOR) {
    constexpr int dk = kThreads / kBM;
    const int64_t step = dk * s_k;
    if (row < R && k + dk * (kLoads - 1) < K) {  // all inside (the common case): no per-element checks
#pragma unroll
      for (int i = 0; i < kLoads; ++i) r[i] = X[base + i * step];
      return;
    }
    const bool row_ok = row < R;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) r[i] = (row_ok && k + dk * i < K) ? X[base + i * step] : 0.0f;
  } else {
    constexpr int dr = kThreads / kBK;
    const int64_t step = dr * s_r;
    if (k < K && row + dr * (kLoads - 1) < R) {
#pragma unroll
      for (int i = 0; i < kLoads; ++i) r[i] = X[base + i * step];
      return;
    }
    const bool k_ok = k < K;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) r[i] = (k_ok && row + dr * i < R) ? X[base + i * step] : 0.0f;
  }
}

// Stores the thread's 16 elements (load_operand's mapping), rounded / converted, into the tile.
template <Precision P, bool KMAJOR>
__device__ __forceinline__ void store_operand(typename Traits<P>::Elem* S, const float (&r)[kLoads]) {
  const int tid = static_cast<int>(threadIdx.x);
  using Tl = Tile<P, KMAJOR>;
  const int rr0 = KMAJOR ? tid % kBM : tid / kBK;
  const int kk0 = KMAJOR ? tid / kBM : tid % kBK;
  typename Traits<P>::Elem* s = S + Tl::offset(rr0, kk0);
  constexpr int step = KMAJOR ? (kThreads / kBM) * Tl::ld : (kThreads / kBK) * Tl::ld;
#pragma unroll
  for (int i = 0; i < kLoads; ++i) s[i * step] = Traits<P>::convert(r[i]);
}

// A_KMAJOR: A stored [k][m] (A's m axis has unit stride; read as a col_major matrix_a).
// B_KMAJOR: B stored [k][n] (B's n axis has unit stride; read as a row_major matrix_b).
// Grid (ceil(M / 128), ceil(N / 128)), 256 threads.
template <Precision P, bool A_KMAJOR, bool B_KMAJOR>
__global__ void __launch_bounds__(kThreads, 2)
    tc_gemm_kernel(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* Bm,
                   int64_t sbk, int64_t sbn, const float* bias, float* C, int64_t ldc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // tf32 / bf16 wmma need sm_80; the host refuses such devices before launching
#else
  namespace wmma = nvcuda::wmma;
  using Tr = Traits<P>;
  using E = typename Tr::Elem;
  using TA = Tile<P, A_KMAJOR>;
  using TB = Tile<P, B_KMAJOR>;  // B's tile rows are n: k-major storage = [k][n]
  using LayoutA = typename std::conditional<A_KMAJOR, wmma::col_major, wmma::row_major>::type;
  using LayoutB = typename std::conditional<B_KMAJOR, wmma::row_major, wmma::col_major>::type;
  constexpr int kStageBytes = TA::bytes + TB::bytes;
  constexpr int kScratchBytes = (kThreads / 32) * 16 * kScratchLd * static_cast<int>(sizeof(float));
  constexpr int kSmemBytes = kStageBytes > kScratchBytes ? kStageBytes : kScratchBytes;
  __align__(128) __shared__ unsigned char smem[kSmemBytes];
  E* As = reinterpret_cast<E*>(smem);
  E* Bs = reinterpret_cast<E*>(smem + TA::bytes);

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int wm = warp % (kBM / kWarpM), wn = warp / (kBM / kWarpM);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;

  wmma::fragment<wmma::accumulator, 16, 16, Tr::kK, float> acc[kFragM][kFragN];
#pragma unroll
  for (int i = 0; i < kFragM; ++i)
#pragma unroll
    for (int j = 0; j < kFragN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  float ra[kLoads], rb[kLoads];
  // A as rows m (stride sam) x k (stride sak); B as rows n (stride sbn) x k (stride sbk)
  load_operand<A_KMAJOR>(ra, A, M, K, m0, 0, sam, sak);
  load_operand<B_KMAJOR>(rb, Bm, N, K, n0, 0, sbn, sbk);
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    store_operand<P, A_KMAJOR>(As, ra);
    store_operand<P, B_KMAJOR>(Bs, rb);
    __syncthreads();  // the pass is staged
    if (k0 + kBK < K) {  // the next pass's loads are in flight during this pass's MMAs
      load_operand<A_KMAJOR>(ra, A, M, K, m0, k0 + kBK, sam, sak);
      load_operand<B_KMAJOR>(rb, Bm, N, K, n0, k0 + kBK, sbn, sbk);
    }
#pragma unroll
    for (int kk = 0; kk < kBK; kk += Tr::kK) {
      wmma::fragment<wmma::matrix_b, 16, 16, Tr::kK, typename Tr::FragType, LayoutB> b[kFragN];
#pragma unroll
      for (int j = 0; j < kFragN; ++j) wmma::load_matrix_sync(b[j], Bs + TB::offset(wn * kWarpN + j * 16, kk), TB::ld);
#pragma unroll
      for (int i = 0; i < kFragM; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, Tr::kK, typename Tr::FragType, LayoutA> a;
        wmma::load_matrix_sync(a, As + TA::offset(wm * kWarpM + i * 16, kk), TA::ld);
#pragma unroll
        for (int j = 0; j < kFragN; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
      }
    }
    __syncthreads();  // the pass is read before the next one overwrites it (and before the epilogue reuses it)
  }

  // Epilogue: through the warp's scratch (the staging memory is free: the loop ended with a
  // barrier, or never ran) to C, bounds-checked, bias added in float32.
  float* scratch = reinterpret_cast<float*>(smem) + warp * 16 * kScratchLd;
#pragma unroll
  for (int i = 0; i < kFragM; ++i) {
#pragma unroll
    for (int j = 0; j < kFragN; ++j) {
      wmma::store_matrix_sync(scratch, acc[i][j], kScratchLd, wmma::mem_row_major);
      fl_syncwarp();  // the whole 16 x 16 tile is in the scratch
      const int64_t mb = m0 + wm * kWarpM + i * 16, nb = n0 + wn * kWarpN + j * 16;
      for (int e = lane; e < 256; e += 32) {
        const int r = e / 16, c = e % 16;
        const int64_t m = mb + r, n = nb + c;
        if (m < M && n < N) {
          const float v = scratch[r * kScratchLd + c];
          C[m * ldc + n] = bias ? v + bias[n] : v;
        }
      }
      fl_syncwarp();  // read before the next tile overwrites the scratch
    }
  }
#endif
}

// Throws unless the device has tensor cores that take tf32 / bf16 (compute capability >= 8.0).
inline void require_tensor_cores(Precision p, int device) {
  int major = 0, minor = 0;
  FL_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FL_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major < 8)
    throw Error(std::string("precision '") + (p == Precision::kTf32 ? "tf32" : "bf16") +
                "' needs tensor cores of compute capability 8.0 or newer; this device is " + std::to_string(major) +
                "." + std::to_string(minor));
}

template <Precision P, bool AK, bool BK>
void launch(dim3 grid, cudaStream_t stream, int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak,
            const float* Bm, int64_t sbk, int64_t sbn, const float* bias, float* C, int64_t ldc) {
  auto kernel = tc_gemm_kernel<P, AK, BK>;
  FL_LAUNCH(kernel, grid, dim3(kThreads), stream, M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc);
}

template <Precision P>
void gemm_p(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* Bm, int64_t sbk,
            int64_t sbn, const float* bias, float* C, int64_t ldc, cudaStream_t stream) {
  const dim3 grid = grid_of(ceil_div(M, kBM), ceil_div(N, kBN));
  if (empty_grid(grid)) return;
  // The layout only decides which loads are coalesced; every combination computes the same.
  const bool ak = sam == 1 && sak != 1;  // A's m axis is the unit-stride one: stage it k-major
  const bool bk = !(sbk == 1 && sbn != 1);  // B's n axis is (or may be taken as) the unit-stride one
  if (ak && bk)
    launch<P, true, true>(grid, stream, M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc);
  else if (ak)
    launch<P, true, false>(grid, stream, M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc);
  else if (bk)
    launch<P, false, true>(grid, stream, M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc);
  else
    launch<P, false, false>(grid, stream, M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc);
}

// C = A . B (+ bias) on the tensor cores in precision p (kTf32 or kBf16). A template (Real =
// float only) so that only the translation units that call it compile the kernels.
template <typename Real>
void gemm(Precision p, int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak, const Real* Bm,
          int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc, cudaStream_t stream) {
  static_assert(std::is_same<Real, float>::value, "the tensor-core GEMM takes float32 data");
  if (p == Precision::kTf32)
    gemm_p<Precision::kTf32>(M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream);
  else
    gemm_p<Precision::kBf16>(M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream);
}

inline const char* precision_name(Precision p) {
  switch (p) {
    case Precision::kTf32: return "tf32";
    case Precision::kBf16: return "bf16";
    default: return "fp32";
  }
}

}  // namespace tc
}  // namespace impl
}  // namespace cuda
}  // namespace fastlstm
