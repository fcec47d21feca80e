// fastlstm's tensor-core GEMM (precision "tf32" / "bf16" / "tf32x3"; float32 data only), included by
// lstm_impl.cuh after its helpers (imin, ceil_div, grid_of). The same source runs on the GPU
// (nvcuda::wmma from <mma.h>, sm_80 and newer) and, with FASTLSTM_CUDA_EMU, on the CPU
// emulator's wmma subset (emu/emu_wmma.h).
//
//   C (M x N, leading dimension ldc) = A . B (+ bias[n]),
//   A(m, k) = A[m * sam + k * sak], B(k, n) = B[k * sbk + n * sbn] (transposes are strides).
//
// Two block tiles (TileCfg), both 256 threads = 8 warps and 32 k per shared-memory pass:
//   Large 128 x 128, warps 4 (m) x 2 (n) of 32 x 64 = 2 x 4 wmma accumulators of 16 x 16: the
//         large products (projection, weight gradients, dx) and the per-step recurrent
//         products with more than 64 rows;
//   Step  64 x 128, warps 2 x 4 of 32 x 32 = 2 x 2 accumulators: the per-step recurrent
//         products with at most 64 rows (B <= 64), twice the blocks of Large there.
// Split-K (the per-step products only, step_gemm): gridDim.z = S slices of k, slice z covers
// k in [z kslice, min(K, (z + 1) kslice)) and writes its own partial product to
// C + z * split_stride; the consumer adds the S partials in the fixed order z = 0, 1, ...
// (no atomics: deterministic).
// Staging: every thread loads its share of each operand tile from global memory (consecutive
// threads on the operand's unit-stride axis: coalesced), rounds it to tf32
// (cvt.rna.tf32.f32, i.e. wmma::__float_to_tf32: round to nearest, ties away from zero, to 10
// mantissa bits) or converts it to bf16 (__float2bfloat16_rn: round to nearest even, 7
// mantissa bits stored), and stores it in shared memory in the layout that keeps the
// shared-memory writes consecutive too: an operand whose m (or n) axis has unit stride is kept
// k-major and read with a col_major (A) / row_major (B) fragment. The next pass's global loads
// are issued into registers before the current pass's MMAs (one pass of latency hidden).
// Fragments: tf32 16 x 16 x 8 (4 k-steps per pass), bf16 16 x 16 x 16 (2 k-steps per pass).
// tf32x3: staged unrounded (float32, the tf32 geometry), and every fragment, once loaded, split
// into hi = tf32(v) and lo = tf32(v - hi) (split_tf32); each k-step's product is
// a_lo.b_hi + a_hi.b_lo + a_hi.b_hi (three MMAs in that order; a_lo.b_lo, ~2^-22 |ab|, is left
// out) into a zeroed fragment, added to the accumulator element by element in float32
// (round to nearest). Accumulating inside the MMAs instead loses float32's accuracy: the
// tensor cores align and truncate the accumulator with the products (rounding toward zero,
// biased), so the error grows with the number of k-steps: measured on an H200 (2026-11-27),
// 4.2e-6 for a GEMM against the exact product and 4.6e-5 for an LSTM's dx (K = 4H = 4096),
// where float32 gives ~1e-6 (bench/NOTES_GPU.md). The large products use LargeX3 (the Large
// tile at one block per SM: the lo fragments need more than 128 registers).
// tf32 / bf16 accumulate inside the MMAs (as cuDNN's and cuBLAS's tensor-core paths do): their
// operands' rounding (2^-11 / 2^-8 relative) dominates the truncation's error by far.
// Epilogue: each accumulator goes through a per-warp 16 x 20 float scratch in shared memory
// (store_matrix_sync) and is written to C with bounds checks and the bias added in float32.
//
// Deterministic: every output element (of a slice) is one warp's accumulator, summed over k in
// a fixed order (k passes in order, k-steps in order, the MMA's own fixed internal order); no
// atomics. Shared memory (static, under the 48 KB limit): 128 x 128 tiles 33,792-36,864 B (tf32)
// / 17,408-20,480 B (bf16), 64 x 128 tiles 26,112-27,648 B / 13,824-15,360 B.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda/api.h"
#include "cuda/compat.cuh"

namespace fastlstm {
namespace cuda {
namespace impl {
namespace tc {

constexpr int kBK = 32;         // k per shared-memory pass
constexpr int kScratchLd = 20;  // per-warp epilogue scratch: 16 x 20 floats

// A block tile: BM x BN outputs, WARPS_M x WARPS_N warps (each (BM / WARPS_M) x (BN / WARPS_N)
// outputs), MIN_BLOCKS for __launch_bounds__, SPLIT_K: the kernel takes k slices (gridDim.z;
// without, the k range is [0, K) and the code is the one of before split-K existed).
template <int BM_, int BN_, int WARPS_M, int WARPS_N, int MIN_BLOCKS, bool SPLIT_K>
struct TileCfg {
  static constexpr int kBM = BM_, kBN = BN_;
  static constexpr bool kSplitK = SPLIT_K;
  static constexpr int kWarpsM = WARPS_M, kWarpsN = WARPS_N;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kMinBlocks = MIN_BLOCKS;
  static constexpr int kWarpM = BM_ / WARPS_M, kWarpN = BN_ / WARPS_N;
  static constexpr int kFragM = kWarpM / 16, kFragN = kWarpN / 16;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "whole 16 x 16 accumulators per warp");
  static_assert(kThreads % kBK == 0 && kThreads % BM_ == 0 && kThreads % BN_ == 0 && (BM_ * kBK) % kThreads == 0 &&
                    (BN_ * kBK) % kThreads == 0,
                "whole loads per thread (see load_operand)");
};
// The large products: two blocks per SM (128 registers at most).
using Large = TileCfg<128, 128, 4, 2, 2, false>;
// The same tile for tf32x3 (hi and lo fragments of each operand: more registers than 128), one
// block per SM.
using LargeX3 = TileCfg<128, 128, 4, 2, 1, false>;
// The per-step products (grids of about one block per SM: one block per SM is allowed, so
// up to 255 registers, no spills): M > 64 rows on the large tile, else on the 64 x 128 one.
using StepLarge = TileCfg<128, 128, 4, 2, 1, true>;
using Step = TileCfg<64, 128, 2, 4, 1, true>;

template <Precision P>
struct Traits;
// kSplit: the operands are staged unrounded (float32) and each fragment is split into two tf32
// fragments, hi + lo, after it is loaded (split_tf32); every product takes three MMAs.
template <>
struct Traits<Precision::kTf32> {
  using Elem = float;  // tf32 values are kept in float storage, the low 13 bits zero
  using FragType = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;    // wmma 16 x 16 x 8
  static constexpr int kPad = 4;  // 16 bytes of padding per stored row (ldm stays a multiple of 16 bytes)
  // k-major tiles: 32 bytes, so that the rows k and k + 1 start 8 banks apart: a fragment load
  // reads rows t = lane % 4 at columns g = lane / 4 (8 apart), banks 8 t + g, all 32 distinct
  // (with 16 bytes: 4 t + g, two lanes per bank, every load two wavefronts)
  static constexpr int kPadK = 8;
  static constexpr bool kSplit = false;
  __device__ static __forceinline__ Elem convert(float v) { return nvcuda::wmma::__float_to_tf32(v); }
};
template <>
struct Traits<Precision::kTf32x3> {
  using Elem = float;  // float32 as loaded; split_tf32 makes the tf32 parts in registers
  using FragType = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;
  static constexpr int kPad = 4;
  static constexpr int kPadK = 8;  // as tf32
  static constexpr bool kSplit = true;
  __device__ static __forceinline__ Elem convert(float v) { return v; }
};
template <>
struct Traits<Precision::kBf16> {
  using Elem = __nv_bfloat16;
  using FragType = __nv_bfloat16;
  static constexpr int kK = 16;   // wmma 16 x 16 x 16
  static constexpr int kPad = 8;  // 16 bytes
  static constexpr int kPadK = 8;  // (the k-major fragments are loaded by ldmatrix.trans, rows 4 banks apart: no conflicts)
  static constexpr bool kSplit = false;
  __device__ static __forceinline__ Elem convert(float v) { return __float2bfloat16_rn(v); }
};

// hi holds a fragment of float32 values; afterwards hi = tf32(v) and lo = tf32(v - hi) element
// by element (v - hi is exact in float32). The same operation on every element, so it does not
// depend on the fragment's (unspecified) layout.
template <class Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
#pragma unroll
  for (int t = 0; t < Frag::num_elements; ++t) {
    const float v = hi.x[t];
    const float h = nvcuda::wmma::__float_to_tf32(v);
    hi.x[t] = h;
    lo.x[t] = nvcuda::wmma::__float_to_tf32(v - h);
  }
}

// The shared-memory geometry of one operand tile: ROWS rows (m of A, n of B) x 32 k.
// KMAJOR: stored [k][row] (the row axis has unit stride in global memory), else [row][k].
template <Precision P, bool KMAJOR, int ROWS>
struct Tile {
  static constexpr int ld = KMAJOR ? ROWS + Traits<P>::kPadK : kBK + Traits<P>::kPad;  // elements per stored row
  static constexpr int elems = (KMAJOR ? kBK : ROWS) * ld;
  static constexpr int bytes = elems * static_cast<int>(sizeof(typename Traits<P>::Elem));
  static_assert(bytes % 128 == 0, "the second tile starts 128-byte aligned");
  static_assert((ld * sizeof(typename Traits<P>::Elem)) % 16 == 0, "wmma: ldm a multiple of 16 bytes");
  // fragment pointers: rows r .. r+15, k values k .. k+K-1 (32-byte aligned: r, k multiples of 16 / kK)
  __host__ __device__ static constexpr int offset(int r, int k) { return KMAJOR ? k * ld + r : r * ld + k; }
};

// The thread's ROWS * 32 / THREADS elements of an operand tile (ROWS rows r x 32 k;
// X(r, k) = X[r * s_r + k * s_k], zero outside R x K): element i is (rr0 + (THREADS / 32) i, kk0)
// with rr0 = tid / 32, kk0 = tid % 32, or, when KMAJOR (the rows have unit stride),
// (rr0, kk0 + (THREADS / ROWS) i) with rr0 = tid % ROWS, kk0 = tid / ROWS: consecutive threads
// read consecutive addresses either way, and each thread's addresses are one base plus constant
// steps (few registers). K is the end of the block's k range (its split-K slice).
template <bool KMAJOR, int ROWS, int THREADS>
__device__ __forceinline__ void load_operand(float (&r)[ROWS * kBK / THREADS], const float* X, int64_t R, int64_t K,
                                             int64_t r0, int64_t k0, int64_t s_r, int64_t s_k) {
  constexpr int kLoads = ROWS * kBK / THREADS;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = r0 + (KMAJOR ? tid % ROWS : tid / kBK);
  const int64_t k = k0 + (KMAJOR ? tid / ROWS : tid % kBK);
  const int64_t base = row * s_r + k * s_k;
  if (KMAJOR) {
    constexpr int dk = THREADS / ROWS;
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
    constexpr int dr = THREADS / kBK;
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

// Stores the thread's elements (load_operand's mapping), rounded / converted, into the tile.
template <Precision P, bool KMAJOR, int ROWS, int THREADS>
__device__ __forceinline__ void store_operand(typename Traits<P>::Elem* S, const float (&r)[ROWS * kBK / THREADS]) {
  constexpr int kLoads = ROWS * kBK / THREADS;
  const int tid = static_cast<int>(threadIdx.x);
  using Tl = Tile<P, KMAJOR, ROWS>;
  const int rr0 = KMAJOR ? tid % ROWS : tid / kBK;
  const int kk0 = KMAJOR ? tid / ROWS : tid % kBK;
  typename Traits<P>::Elem* s = S + Tl::offset(rr0, kk0);
  constexpr int step = KMAJOR ? (THREADS / ROWS) * Tl::ld : (THREADS / kBK) * Tl::ld;
#pragma unroll
  for (int i = 0; i < kLoads; ++i) s[i * step] = Traits<P>::convert(r[i]);
}

// f(std::integral_constant<int, I>{}) for I = 0 .. N-1 in order (compile-time indices: the
// fragment offsets are constants of the PTX loads; ptxas still forms a lane address per tf32
// fragment element).
template <class F, int... I>
__device__ __forceinline__ void static_for_impl(F& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, class F>
__device__ __forceinline__ void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// wmma::load_matrix_sync from shared memory through the .shared form of the same wmma.load (same
// fragment, same bits): nvcc emits load_matrix_sync's wmma.load without a state space, which
// ptxas lowers to generic 64-bit loads (LD.E, plus 64-bit address arithmetic for each); the
// .shared form takes a 32-bit shared address and becomes LDS. LDM: the leading dimension
// (elements, a compile-time constant here).
template <int LDM, int OFF, class Use, int M, int N, int K, class T, class Layout, class E>
__device__ __forceinline__ void load_frag_shared(nvcuda::wmma::fragment<Use, M, N, K, T, Layout>& f, const E* S) {
// (FASTLSTM_CUDA_WMMA_GENERIC_LOADS defined at build time, e.g. CMAKE_ARGS="-DCMAKE_CUDA_FLAGS=
// -DFASTLSTM_CUDA_WMMA_GENERIC_LOADS": load_matrix_sync as before, for an A/B or should the
// inline PTX misbehave on a card.)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(FASTLSTM_CUDA_EMU) && \
    !defined(FASTLSTM_CUDA_WMMA_GENERIC_LOADS)
  namespace wmma = nvcuda::wmma;
  constexpr bool kA = std::is_same<Use, wmma::matrix_a>::value;
  constexpr bool kRow = std::is_same<Layout, wmma::row_major>::value;
  constexpr bool kTf32 = std::is_same<T, wmma::precision::tf32>::value;
  static_assert(M == 16 && N == 16 && K == (kTf32 ? 8 : 16) && (kTf32 || std::is_same<T, __nv_bfloat16>::value),
                "the fragments of this file only");
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(S));  // + OFF bytes (an immediate)
  unsigned r0, r1, r2, r3;
#define FL_WMMA_LD(AB, LAYOUT, SHAPE, TYPE)                                                                 \
  asm volatile("wmma.load." AB ".sync.aligned." LAYOUT "." SHAPE ".shared." TYPE " {%0, %1, %2, %3}, [%4+%6], %5;"        \
      : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)                                                                 \
      : "r"(addr), "n"(LDM), "n"(OFF)                                                                                  \
      : "memory")
  if constexpr (kTf32) {
    if constexpr (kA && kRow) FL_WMMA_LD("a", "row", "m16n16k8", "tf32");
    else if constexpr (kA) FL_WMMA_LD("a", "col", "m16n16k8", "tf32");
    else if constexpr (kRow) FL_WMMA_LD("b", "row", "m16n16k8", "tf32");
    else FL_WMMA_LD("b", "col", "m16n16k8", "tf32");
  } else {
    if constexpr (kA && kRow) FL_WMMA_LD("a", "row", "m16n16k16", "bf16");
    else if constexpr (kA) FL_WMMA_LD("a", "col", "m16n16k16", "bf16");
    else if constexpr (kRow) FL_WMMA_LD("b", "row", "m16n16k16", "bf16");
    else FL_WMMA_LD("b", "col", "m16n16k16", "bf16");
  }
#undef FL_WMMA_LD
  static_assert(sizeof(f.x) == 4 * sizeof(unsigned), "four 32-bit registers per fragment");
  const unsigned r[4] = {r0, r1, r2, r3};
  memcpy(&f.x[0], r, sizeof r);
#else
  nvcuda::wmma::load_matrix_sync(f, S + OFF / static_cast<int>(sizeof(E)), LDM);
#endif
}

// One pass (kBK k) of the block's MMAs from the staged tiles As, Bs (tf32: rounded; tf32x3:
// float32, split once loaded) into the warp's accumulators: tc_gemm_kernel's loop (which keeps
// its own copy of it, see there), for tc_gemm_pipe_kernel.
template <Precision P, bool A_KMAJOR, bool B_KMAJOR, class Cfg>
__device__ __forceinline__ void mma_pass(
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, Traits<P>::kK, float> (&acc)[Cfg::kFragM][Cfg::kFragN],
    const typename Traits<P>::Elem* As, const typename Traits<P>::Elem* Bs, int wm, int wn) {
  namespace wmma = nvcuda::wmma;
  using Tr = Traits<P>;
  constexpr int kWarpM = Cfg::kWarpM, kWarpN = Cfg::kWarpN, kFragM = Cfg::kFragM, kFragN = Cfg::kFragN;
  using TA = Tile<P, A_KMAJOR, Cfg::kBM>;
  using TB = Tile<P, B_KMAJOR, Cfg::kBN>;
  using LayoutA = typename std::conditional<A_KMAJOR, wmma::col_major, wmma::row_major>::type;
  using LayoutB = typename std::conditional<B_KMAJOR, wmma::row_major, wmma::col_major>::type;
  // the warp's fragments at compile-time offsets from these
  const auto* a_warp = As + TA::offset(wm * kWarpM, 0);
  const auto* b_warp = Bs + TB::offset(wn * kWarpN, 0);
  static_for<kBK / Tr::kK>([&](auto ks) {
    constexpr int kk = decltype(ks)::value * Tr::kK;
    using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Tr::kK, typename Tr::FragType, LayoutB>;
    using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Tr::kK, typename Tr::FragType, LayoutA>;
    FragB b[kFragN];
    FragB b_lo[Tr::kSplit ? kFragN : 1];
    (void)b_lo;  // (tf32x3 only)
    static_for<kFragN>([&](auto jc) {
      constexpr int j = decltype(jc)::value;
      load_frag_shared<TB::ld, TB::offset(j * 16, kk) * int(sizeof(typename Tr::Elem))>(b[j], b_warp);
      if constexpr (Tr::kSplit) split_tf32(b[j], b_lo[j]);
    });
    static_for<kFragM>([&](auto ic) {
      constexpr int i = decltype(ic)::value;
      FragA a;
      load_frag_shared<TA::ld, TA::offset(i * 16, kk) * int(sizeof(typename Tr::Elem))>(a, a_warp);
      if constexpr (Tr::kSplit) {
        FragA a_lo;
        split_tf32(a, a_lo);
#pragma unroll
        for (int j = 0; j < kFragN; ++j) {
          // this k-step's product into a zeroed fragment (the small terms first), then added
          // to the accumulator on the CUDA cores: the tensor cores' truncating accumulation
          // acts on one k-step's sum, not on the running total (see the notes at the top)
          wmma::fragment<wmma::accumulator, 16, 16, Tr::kK, float> part;
          wmma::fill_fragment(part, 0.0f);
          wmma::mma_sync(part, a_lo, b[j], part);
          wmma::mma_sync(part, a, b_lo[j], part);
          wmma::mma_sync(part, a, b[j], part);
#pragma unroll
          for (int t = 0; t < part.num_elements; ++t) acc[i][j].x[t] += part.x[t];
        }
      } else {
#pragma unroll
        for (int j = 0; j < kFragN; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
      }
    });
  });
}

// Epilogue: each accumulator through the warp's 16 x kScratchLd scratch (at smem + the warp's
// offset; the staging memory, free by now) to C, bounds-checked, bias added in float32. warp,
// lane: the thread's; (wm, wn): the warp's place in the block tile.
template <Precision P, class Cfg>
__device__ __forceinline__ void store_tiles(
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, Traits<P>::kK, float> (&acc)[Cfg::kFragM][Cfg::kFragN],
    unsigned char* smem, int warp, int lane, int wm, int wn, int64_t M, int64_t N, int64_t m0, int64_t n0,
    const float* bias, float* C, int64_t ldc) {
  namespace wmma = nvcuda::wmma;
  float* scratch = reinterpret_cast<float*>(smem) + warp * 16 * kScratchLd;
#pragma unroll
  for (int i = 0; i < Cfg::kFragM; ++i) {
#pragma unroll
    for (int j = 0; j < Cfg::kFragN; ++j) {
      wmma::store_matrix_sync(scratch, acc[i][j], kScratchLd, wmma::mem_row_major);
      fl_syncwarp();  // the whole 16 x 16 tile is in the scratch
      const int64_t mb = m0 + wm * Cfg::kWarpM + i * 16, nb = n0 + wn * Cfg::kWarpN + j * 16;
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
}

// A_KMAJOR: A stored [k][m] (A's m axis has unit stride; read as a col_major matrix_a).
// B_KMAJOR: B stored [k][n] (B's n axis has unit stride; read as a row_major matrix_b).
// Grid (ceil(M / BM), ceil(N / BN), S), Cfg::kThreads threads. Block z sums k in
// [z kslice, min(K, (z + 1) kslice)) and writes C + z * split_stride (S = 1, kslice >= K: the
// whole product into C).
// (Its MMA loop and epilogue are written out here rather than calling mma_pass / store_tiles
// as tc_gemm_pipe_kernel does: with the helpers ptxas allocated this measured kernel's
// registers differently (spills moved by -16..+48 bytes), so it is kept as it was measured.)
template <Precision P, bool A_KMAJOR, bool B_KMAJOR, class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    tc_gemm_kernel(int64_t M, int64_t N, int64_t K, int64_t kslice, const float* A, int64_t sam, int64_t sak,
                   const float* Bm, int64_t sbk, int64_t sbn, const float* bias, float* C, int64_t ldc,
                   int64_t split_stride) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // tf32 / bf16 wmma need sm_80; the host refuses such devices before launching
#else
  namespace wmma = nvcuda::wmma;
  using Tr = Traits<P>;
  using E = typename Tr::Elem;
  constexpr int kThreads = Cfg::kThreads, kBM = Cfg::kBM, kBN = Cfg::kBN;
  constexpr int kWarpM = Cfg::kWarpM, kWarpN = Cfg::kWarpN, kFragM = Cfg::kFragM, kFragN = Cfg::kFragN;
  using TA = Tile<P, A_KMAJOR, kBM>;
  using TB = Tile<P, B_KMAJOR, kBN>;  // B's tile rows are n: k-major storage = [k][n]
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
  const int wm = warp % Cfg::kWarpsM, wn = warp / Cfg::kWarpsM;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  int64_t kb = 0, ke = K;  // this block's k range [kb, ke)
  if (Cfg::kSplitK) {
    kb = static_cast<int64_t>(blockIdx.z) * kslice;
    ke = imin(K, kb + kslice);
    C += static_cast<int64_t>(blockIdx.z) * split_stride;
  } else {
    (void)kslice, (void)split_stride;
  }

  wmma::fragment<wmma::accumulator, 16, 16, Tr::kK, float> acc[kFragM][kFragN];
#pragma unroll
  for (int i = 0; i < kFragM; ++i)
#pragma unroll
    for (int j = 0; j < kFragN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  float ra[kBM * kBK / kThreads], rb[kBN * kBK / kThreads];
  // A as rows m (stride sam) x k (stride sak); B as rows n (stride sbn) x k (stride sbk)
  load_operand<A_KMAJOR, kBM, kThreads>(ra, A, M, ke, m0, kb, sam, sak);
  load_operand<B_KMAJOR, kBN, kThreads>(rb, Bm, N, ke, n0, kb, sbn, sbk);
  for (int64_t k0 = kb; k0 < ke; k0 += kBK) {
    store_operand<P, A_KMAJOR, kBM, kThreads>(As, ra);
    store_operand<P, B_KMAJOR, kBN, kThreads>(Bs, rb);
    __syncthreads();  // the pass is staged
    if (k0 + kBK < ke) {  // the next pass's loads are in flight during this pass's MMAs
      load_operand<A_KMAJOR, kBM, kThreads>(ra, A, M, ke, m0, k0 + kBK, sam, sak);
      load_operand<B_KMAJOR, kBN, kThreads>(rb, Bm, N, ke, n0, k0 + kBK, sbn, sbk);
    }
    // the warp's fragments at compile-time offsets from these
    const auto* a_warp = As + TA::offset(wm * kWarpM, 0);
    const auto* b_warp = Bs + TB::offset(wn * kWarpN, 0);
    static_for<kBK / Tr::kK>([&](auto ks) {
      constexpr int kk = decltype(ks)::value * Tr::kK;
      using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Tr::kK, typename Tr::FragType, LayoutB>;
      using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Tr::kK, typename Tr::FragType, LayoutA>;
      FragB b[kFragN];
      FragB b_lo[Tr::kSplit ? kFragN : 1];
      (void)b_lo;  // (tf32x3 only)
      static_for<kFragN>([&](auto jc) {
        constexpr int j = decltype(jc)::value;
        load_frag_shared<TB::ld, TB::offset(j * 16, kk) * int(sizeof(typename Tr::Elem))>(b[j], b_warp);
        if constexpr (Tr::kSplit) split_tf32(b[j], b_lo[j]);
      });
      static_for<kFragM>([&](auto ic) {
        constexpr int i = decltype(ic)::value;
        FragA a;
        load_frag_shared<TA::ld, TA::offset(i * 16, kk) * int(sizeof(typename Tr::Elem))>(a, a_warp);
        if constexpr (Tr::kSplit) {
          FragA a_lo;
          split_tf32(a, a_lo);
#pragma unroll
          for (int j = 0; j < kFragN; ++j) {
            // this k-step's product into a zeroed fragment (the small terms first), then added
            // to the accumulator on the CUDA cores: the tensor cores' truncating accumulation
            // acts on one k-step's sum, not on the running total (see the notes at the top)
            wmma::fragment<wmma::accumulator, 16, 16, Tr::kK, float> part;
            wmma::fill_fragment(part, 0.0f);
            wmma::mma_sync(part, a_lo, b[j], part);
            wmma::mma_sync(part, a, b_lo[j], part);
            wmma::mma_sync(part, a, b[j], part);
#pragma unroll
            for (int t = 0; t < part.num_elements; ++t) acc[i][j].x[t] += part.x[t];
          }
        } else {
#pragma unroll
          for (int j = 0; j < kFragN; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
        }
      });
    });
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

// ---- tc-gemm-v2: the same products with the operands staged by a cp.async pipeline ----------
// (precision tf32 / tf32x3: the tiles hold float32-sized values, so the copies need no
// conversion; bf16 keeps tc_gemm_kernel). kPipeStages passes of 32 k are in flight in dynamic
// shared memory (pipe_smem_bytes: 3 x 33-37 KB for the 128 x 128 tiles, 3 x 26-28 KB for
// 64 x 128): while the MMAs read pass p, the copies of passes p+1 and p+2 are under way, with
// no registers holding them (tc_gemm_kernel keeps one pass in registers: 32 loads, 32 stores of
// one float each per thread and pass, and its staging registers push the 128-register variants
// into spills). tf32 rounds its tile in place (round_operand: each thread the vectors it copied,
// 16-byte loads and stores) between its wait and the barrier; tf32x3 splits fragments once
// loaded, as before. Same tiles, warps, fragments, k order and epilogue as tc_gemm_kernel: the
// results are bitwise the same. Copies are 16 bytes along the operand's
// unit-stride axis, so the host uses this kernel only when both operands allow it
// (pipe_operand_ok: a unit stride, the other stride and the extent along the unit-stride axis
// multiples of 4 floats, the base 16-byte aligned); out-of-range vectors are zero-filled.
constexpr int kPipeStages = 3;
constexpr int kMaxDevices = 64;  // devices whose opt-in shared memory limit is cached

template <Precision P, bool A_KMAJOR, bool B_KMAJOR, class Cfg>
__host__ __device__ constexpr int pipe_stage_bytes() {
  return Tile<P, A_KMAJOR, Cfg::kBM>::bytes + Tile<P, B_KMAJOR, Cfg::kBN>::bytes;
}
template <Precision P, bool A_KMAJOR, bool B_KMAJOR, class Cfg>
__host__ __device__ constexpr int pipe_smem_bytes() {
  return kPipeStages * pipe_stage_bytes<P, A_KMAJOR, B_KMAJOR, Cfg>();
}

// This thread's 16-byte copies of one operand tile (ROWS rows r x 32 k; X(r, k) = X[r * s_r +
// k * s_k], zero outside R x K): vector v = tid + THREADS i covers 4 consecutive elements
// along the stored row (k when !KMAJOR, r when KMAJOR): consecutive threads copy consecutive
// 16 bytes of global and of shared memory.
// GE: the operand's element type in global memory, float (tf32 / tf32x3: 4 per vector) or
// __nv_bfloat16 (bf16 operands converted beforehand: 8 per vector), stored as is.
template <Precision P, bool KMAJOR, int ROWS, int THREADS, typename GE>
__device__ __forceinline__ void copy_operand(typename Traits<P>::Elem* S, const GE* X, int64_t R, int64_t K,
                                             int64_t r0, int64_t k0, int64_t s_r, int64_t s_k) {
  static_assert(sizeof(GE) == sizeof(typename Traits<P>::Elem), "copied as stored");
  using Tl = Tile<P, KMAJOR, ROWS>;
  constexpr int kVec = 16 / static_cast<int>(sizeof(GE));  // elements per 16-byte copy
  constexpr int kPerLine = (KMAJOR ? ROWS : kBK) / kVec;  // vectors per stored row
  constexpr int kVecs = ROWS * kBK / kVec;
  static_assert(kVecs % THREADS == 0, "whole copies per thread");
  const int tid = static_cast<int>(threadIdx.x);
#pragma unroll
  for (int i = 0; i < kVecs / THREADS; ++i) {
    const int v = tid + i * THREADS;
    const int line = v / kPerLine, q = (v % kPerLine) * kVec;
    const int row = KMAJOR ? q : line, k = KMAJOR ? line : q;
    const int64_t gr = r0 + row, gk = k0 + k;
    const bool valid = gr < R && gk < K;
    fl_cp_async16(S + Tl::offset(row, k), valid ? X + gr * s_r + gk * s_k : X, valid);
  }
}

// tf32: rounds, in shared memory, the vectors this thread copied into the tile (copy_operand's
// mapping), once its copies have landed and before the barrier that publishes the pass: each
// element is rounded once (cvt.rna.tf32.f32, as tc_gemm_kernel does while staging), not once
// per warp that loads it as a fragment.
template <Precision P, bool KMAJOR, int ROWS, int THREADS>
__device__ __forceinline__ void round_operand(float* S) {
  using Tl = Tile<P, KMAJOR, ROWS>;
  constexpr int kPerLine = (KMAJOR ? ROWS : kBK) / 4;
  constexpr int kVecs = ROWS * kBK / 4;
  const int tid = static_cast<int>(threadIdx.x);
#pragma unroll
  for (int i = 0; i < kVecs / THREADS; ++i) {
    const int v = tid + i * THREADS;
    const int line = v / kPerLine, q = (v % kPerLine) * 4;
    float4* p = reinterpret_cast<float4*>(S + (KMAJOR ? Tl::offset(q, line) : Tl::offset(line, q)));
    float4 x = *p;
    x.x = nvcuda::wmma::__float_to_tf32(x.x);
    x.y = nvcuda::wmma::__float_to_tf32(x.y);
    x.z = nvcuda::wmma::__float_to_tf32(x.z);
    x.w = nvcuda::wmma::__float_to_tf32(x.w);
    *p = x;
  }
}

template <Precision P, bool A_KMAJOR, bool B_KMAJOR, class Cfg, typename GE = float>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    tc_gemm_pipe_kernel(int64_t M, int64_t N, int64_t K, int64_t kslice, const GE* A, int64_t sam, int64_t sak,
                        const GE* Bm, int64_t sbk, int64_t sbn, const float* bias, float* C, int64_t ldc,
                        int64_t split_stride) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // cp.async and tf32 wmma need sm_80; the host refuses such devices before launching
#else
  namespace wmma = nvcuda::wmma;
  using Tr = Traits<P>;
  using E = typename Tr::Elem;
  static_assert(std::is_same<E, GE>::value,
                "copied as stored: float32 operands for tf32 / tf32x3, bf16 ones (converted beforehand) for bf16");
  constexpr int kThreads = Cfg::kThreads, kBM = Cfg::kBM, kBN = Cfg::kBN;
  constexpr int kFragM = Cfg::kFragM, kFragN = Cfg::kFragN;
  constexpr int kABytes = Tile<P, A_KMAJOR, kBM>::bytes;
  constexpr int kStageBytes = pipe_stage_bytes<P, A_KMAJOR, B_KMAJOR, Cfg>();
  static_assert((kThreads / 32) * 16 * kScratchLd * 4 <= kPipeStages * kStageBytes, "the epilogue's scratch fits");
  FL_DYNAMIC_SHARED_128(smem);  // pipe_smem_bytes: kPipeStages x (A tile, B tile), 128-byte aligned (wmma: 32)
  auto a_tile = [&](int64_t pass) { return reinterpret_cast<E*>(smem + (pass % kPipeStages) * kStageBytes); };
  auto b_tile = [&](int64_t pass) { return reinterpret_cast<E*>(smem + (pass % kPipeStages) * kStageBytes + kABytes); };

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int wm = warp % Cfg::kWarpsM, wn = warp / Cfg::kWarpsM;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  int64_t kb = 0, ke = K;  // this block's k range [kb, ke)
  if (Cfg::kSplitK) {
    kb = static_cast<int64_t>(blockIdx.z) * kslice;
    ke = imin(K, kb + kslice);
    C += static_cast<int64_t>(blockIdx.z) * split_stride;
  } else {
    (void)kslice, (void)split_stride;
  }
  const int64_t passes = ke > kb ? (ke - kb + kBK - 1) / kBK : 0;

  wmma::fragment<wmma::accumulator, 16, 16, Tr::kK, float> acc[kFragM][kFragN];
#pragma unroll
  for (int i = 0; i < kFragM; ++i)
#pragma unroll
    for (int j = 0; j < kFragN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  auto issue = [&](int64_t pass) {  // pass's copies (if it exists), then close the group
    if (pass < passes) {
      const int64_t k0 = kb + pass * kBK;
      copy_operand<P, A_KMAJOR, kBM, kThreads, GE>(a_tile(pass), A, M, ke, m0, k0, sam, sak);
      copy_operand<P, B_KMAJOR, kBN, kThreads, GE>(b_tile(pass), Bm, N, ke, n0, k0, sbn, sbk);
    }
    fl_cp_async_commit();  // one group per pass, empty past the end: the wait below counts groups
  };
#pragma unroll
  for (int s = 0; s < kPipeStages - 1; ++s) issue(s);
  for (int64_t p = 0; p < passes; ++p) {
    fl_cp_async_wait<kPipeStages - 2>();  // this thread's copies of pass p have landed
    if constexpr (P == Precision::kTf32) {
      round_operand<P, A_KMAJOR, kBM, kThreads>(a_tile(p));
      round_operand<P, B_KMAJOR, kBN, kThreads>(b_tile(p));
    }
    __syncthreads();  // everyone's have; and everyone is done reading pass p - 1, whose slot the next copies reuse
    issue(p + kPipeStages - 1);
    mma_pass<P, A_KMAJOR, B_KMAJOR, Cfg>(acc, a_tile(p), b_tile(p), wm, wn);
  }
  fl_cp_async_wait<0>();  // (only empty groups are left)
  __syncthreads();        // every pass read before the epilogue reuses the memory

  store_tiles<P, Cfg>(acc, smem, warp, lane, wm, wn, M, N, m0, n0, bias, C, ldc);
#endif
}

inline const char* precision_name(Precision p) {
  switch (p) {
    case Precision::kTf32: return "tf32";
    case Precision::kBf16: return "bf16";
    case Precision::kTf32x3: return "tf32x3";
    default: return "fp32";
  }
}

// Throws unless the device has tensor cores that take tf32 / bf16 (compute capability >= 8.0).
inline void require_tensor_cores(Precision p, int device) {
  int major = 0, minor = 0;
  FL_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FL_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major < 8)
    throw Error(std::string("precision '") + precision_name(p) +
                "' needs tensor cores of compute capability 8.0 or newer; this device is " + std::to_string(major) +
                "." + std::to_string(minor));
}

// The current device's shared memory per block with opt-in (bytes), and the device; queried
// once per device (the per-step products call this every step). Not cached in the emulator,
// whose tests change the emulated device.
inline int smem_optin_limit(int* device_out = nullptr) {
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  FL_CHECK(cudaGetDevice(&device));
  if (device_out) *device_out = device;
#if defined(FASTLSTM_CUDA_EMU)
  constexpr bool kCache = false;
#else
  constexpr bool kCache = true;
#endif
  if (kCache && device >= 0 && device < kMaxDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int bytes = 0;
  FL_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (kCache && device >= 0 && device < kMaxDevices) cache[device].store(bytes, std::memory_order_relaxed);
  return bytes;
}

// cudaFuncSetAttribute(kernel, max dynamic shared memory, bytes) once per kernel and device
// (the attribute stays set; `done` is the kernel's own flag word, one bit per device).
template <class Kernel>
void set_smem_attribute_once(Kernel kernel, int bytes, int device, std::atomic<uint64_t>& done) {
  const uint64_t bit = device >= 0 && device < 64 ? uint64_t(1) << device : 0;
  if (bit && (done.load(std::memory_order_acquire) & bit)) return;
  FL_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  if (bit) done.fetch_or(bit, std::memory_order_release);
}

// One launch of the pipelined kernel (operands of element type GE as stored: float for tf32 /
// tf32x3, bf16 copies for bf16) on `device`, its shared-memory attribute set once per device;
// the caller checked the operands (pipe_operand_ok) and that the ring fits the device.
template <Precision P, bool AK, bool BK, class Cfg, typename GE>
void launch_pipe(dim3 grid, cudaStream_t stream, int64_t M, int64_t N, int64_t K, int64_t kslice, const GE* A,
                 int64_t sam, int64_t sak, const GE* Bm, int64_t sbk, int64_t sbn, const float* bias, float* C,
                 int64_t ldc, int64_t split_stride, int device) {
  auto kernel = tc_gemm_pipe_kernel<P, AK, BK, Cfg, GE>;
  constexpr int kSmem = pipe_smem_bytes<P, AK, BK, Cfg>();
  static std::atomic<uint64_t> attribute_set{0};
  set_smem_attribute_once(kernel, kSmem, device, attribute_set);
  FL_LAUNCH_SMEM(kernel, grid, dim3(Cfg::kThreads), static_cast<size_t>(kSmem), stream, M, N, K, kslice, A, sam, sak,
                 Bm, sbk, sbn, bias, C, ldc, split_stride);
}

// Launches the pipelined kernel when `pipe` and its ring fits the device's shared memory (the
// 128 x 128 tf32 rings of 101-111 KB do not on sm_86 / sm_89 / sm_120, 99 KB per block: since
// session 19's padding of k-major tiles to 136 floats, neither does the k-major A and B one,
// 102 KB), else tc_gemm_kernel. Returns whether the pipelined kernel ran.
template <Precision P, bool AK, bool BK, class Cfg>
bool launch(dim3 grid, cudaStream_t stream, int64_t M, int64_t N, int64_t K, int64_t kslice, const float* A,
            int64_t sam, int64_t sak, const float* Bm, int64_t sbk, int64_t sbn, const float* bias, float* C,
            int64_t ldc, int64_t split_stride, bool pipe) {
  if constexpr (P != Precision::kBf16) {
    int device = 0;
    if (pipe && pipe_smem_bytes<P, AK, BK, Cfg>() <= smem_optin_limit(&device)) {
      launch_pipe<P, AK, BK, Cfg, float>(grid, stream, M, N, K, kslice, A, sam, sak, Bm, sbk, sbn, bias, C, ldc,
                                         split_stride, device);
      return true;
    }
  }
  auto kernel = tc_gemm_kernel<P, AK, BK, Cfg>;
  FL_LAUNCH(kernel, grid, dim3(Cfg::kThreads), stream, M, N, K, kslice, A, sam, sak, Bm, sbk, sbn, bias, C, ldc,
            split_stride);
  return false;
}

// Whether the pipelined kernel (tc_gemm_pipe_kernel) is asked for: FASTLSTM_CUDA_GEMM_PIPELINE=1
// (read at every call). Off by default until it is measured against tc_gemm_kernel on a GPU
// (bench/gpu_gemm_ab.py; bench/NOTES_GPU.md, "tc-gemm-v2").
inline bool pipeline_requested() {
  const char* v = std::getenv("FASTLSTM_CUDA_GEMM_PIPELINE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// Whether an operand can be staged by 16-byte copies: X(r, k) = X[r s_r + k s_k] over R rows
// and K k, stored along r when KMAJOR (s_r = 1), else along k (s_k = 1); the other stride and
// the extent along the unit-stride axis multiples of the elements per copy (4 floats, 8 bf16),
// the base 16-byte aligned.
template <typename GE>
bool pipe_operand_ok(bool kmajor, const GE* X, int64_t R, int64_t K, int64_t s_r, int64_t s_k) {
  constexpr int64_t kVec = 16 / static_cast<int64_t>(sizeof(GE));
  const int64_t unit = kmajor ? s_r : s_k, other = kmajor ? s_k : s_r, extent = kmajor ? R : K;
  return unit == 1 && other % kVec == 0 && extent % kVec == 0 && reinterpret_cast<std::uintptr_t>(X) % 16 == 0;
}

// Whether this product runs pipelined: asked for, tf32 / tf32x3, both operands fit the copies.
inline bool use_pipe(Precision p, bool ak, bool bk, int64_t M, int64_t N, int64_t K, const float* A, int64_t sam,
                     int64_t sak, const float* Bm, int64_t sbk, int64_t sbn) {
  return p != Precision::kBf16 && pipeline_requested() && pipe_operand_ok(ak, A, M, K, sam, sak) &&
         pipe_operand_ok(bk, Bm, N, K, sbn, sbk);
}

// The layout only decides which loads are coalesced; every combination computes the same.
// A k-major: A's m axis has unit stride. B k-major: B's n axis is (or may be taken as) the
// unit-stride one.
inline bool a_kmajor(int64_t sam, int64_t sak) { return sam == 1 && sak != 1; }
inline bool b_kmajor(int64_t sbk, int64_t sbn) { return !(sbk == 1 && sbn != 1); }

// k slices: the per-step products' (StepPlan below) and the large products' split-K.
constexpr int kMaxSplits = 16;      // k slices at most
constexpr int kMinSlicePasses = 2;  // 32-deep passes per slice at least (when K allows)

struct StepPlan {
  bool large = false;  // Large (128 x 128) tiles, else Step (64 x 128)
  int64_t kslice = 0;  // k per slice, a multiple of 32 (0 when K = 0)
  int64_t splits = 1;  // ceil(K / kslice) slices (1 when K = 0)
  std::string describe() const {
    return std::string(large ? "128x128" : "64x128") + " tiles x " + std::to_string(splits) + " k-slices";
  }
};

// Split-K for the large products (split-k-v1, tensor cores): where the 128 x 128 grid is smaller
// than the device, as many k slices (at most kMaxSplits, at least kMinSlicePasses passes
// each) as keep the grid within one block per SM, on the split-capable 128 x 128 tile
// (StepLarge); splits = 1 where that makes one slice or split-K is off (split_k_requested).
inline StepPlan plan_large_split(int64_t M, int64_t N, int64_t K, int sm_count) {
  StepPlan pl;
  pl.large = true;
  const int64_t tiles = ceil_div(M, StepLarge::kBM) * ceil_div(N, StepLarge::kBN);
  const int64_t passes = ceil_div(K, kBK);
  pl.kslice = K > 0 ? passes * kBK : 0;
  if (K <= 0 || tiles <= 0 || tiles >= sm_count || !split_k_requested()) return pl;
  int64_t want = imin(sm_count / tiles, imin(kMaxSplits, ceil_div(passes, kMinSlicePasses)));
  if (want < 2) return pl;
  pl.kslice = ceil_div(passes, want) * kBK;
  pl.splits = ceil_div(K, pl.kslice);
  return pl;
}

// Split-K's frame (the large products on the tensor cores): a workspace for sp.splits partial
// products (M x N each), launch_slices(grid with z = splits, kslice, partials, their stride M N)
// fills it, then split_sum_kernel adds them in order (+ bias) into C.
template <class LaunchSlices>
void split_frame(const StepPlan& sp, dim3 grid, int64_t M, int64_t N, const float* bias, float* C, int64_t ldc,
                 int device, cudaStream_t stream, LaunchSlices&& launch_slices) {
  Workspace<float> parts(sp.splits * M * N, device, stream);
  poison(parts.get(), sp.splits * M * N, stream);
  grid.z = static_cast<unsigned>(sp.splits);
  launch_slices(grid, sp.kslice, parts.get(), M * N);
  auto kr = split_sum_kernel<float>;
  FL_LAUNCH(kr, grid_of(ceil_div(M * N, impl::kThreads)), dim3(impl::kThreads), stream, M, N, sp.splits,
            static_cast<const float*>(parts.get()), bias, C, ldc);
}

template <Precision P, class Cfg>
bool gemm_p(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* Bm, int64_t sbk,
            int64_t sbn, const float* bias, float* C, int64_t ldc, cudaStream_t stream, int64_t* splits) {
  const dim3 grid = grid_of(ceil_div(M, Cfg::kBM), ceil_div(N, Cfg::kBN));
  if (empty_grid(grid)) return false;
  const bool ak = a_kmajor(sam, sak), bk = b_kmajor(sbk, sbn);
  const bool pipe = use_pipe(P, ak, bk, M, N, K, A, sam, sak, Bm, sbk, sbn);
  int device = 0;
  const StepPlan sp = plan_large_split(M, N, K, current_sms(&device));
  if (splits) *splits = sp.splits;
  if (sp.splits >= 2) {
    bool piped = false;
    split_frame(sp, grid, M, N, bias, C, ldc, device, stream, [&](dim3 g, int64_t ks, float* P0, int64_t st) {
      if (ak && bk)
        piped = launch<P, true, true, StepLarge>(g, stream, M, N, K, ks, A, sam, sak, Bm, sbk, sbn, nullptr, P0, N, st, pipe);
      else if (ak)
        piped = launch<P, true, false, StepLarge>(g, stream, M, N, K, ks, A, sam, sak, Bm, sbk, sbn, nullptr, P0, N, st, pipe);
      else if (bk)
        piped = launch<P, false, true, StepLarge>(g, stream, M, N, K, ks, A, sam, sak, Bm, sbk, sbn, nullptr, P0, N, st, pipe);
      else
        piped = launch<P, false, false, StepLarge>(g, stream, M, N, K, ks, A, sam, sak, Bm, sbk, sbn, nullptr, P0, N, st, pipe);
    });
    return piped;
  }
  if (ak && bk) return launch<P, true, true, Cfg>(grid, stream, M, N, K, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, 0, pipe);
  if (ak) return launch<P, true, false, Cfg>(grid, stream, M, N, K, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, 0, pipe);
  if (bk) return launch<P, false, true, Cfg>(grid, stream, M, N, K, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, 0, pipe);
  return launch<P, false, false, Cfg>(grid, stream, M, N, K, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, 0, pipe);
}

// C = A . B (+ bias) on the tensor cores in precision p (kTf32, kTf32x3 or kBf16). A template
// (Real = float only) so that only the translation units that call it compile the kernels.
// Returns whether the pipelined kernel ran; *splits (when given): the k slices (1: unsplit).
template <typename Real>
bool gemm(Precision p, int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak, const Real* Bm,
          int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc, cudaStream_t stream,
          int64_t* splits = nullptr) {
  static_assert(std::is_same<Real, float>::value, "the tensor-core GEMM takes float32 data");
  if (p == Precision::kTf32)
    return gemm_p<Precision::kTf32, Large>(M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream, splits);
  if (p == Precision::kTf32x3)
    return gemm_p<Precision::kTf32x3, LargeX3>(M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream, splits);
  return gemm_p<Precision::kBf16, Large>(M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream, splits);
}

// ---- the per-step recurrent products (kernel path "tensor") --------------------------------
// C_z (M x N, row-major, ldc = N) for z < splits, C_z = C + z M N: the partial products over
// the k slices of StepPlan (defined above, with the large products' split-K). The LSTM's step
// kernels add the partials in order z = 0, 1, ...
// The tile and the k slices for an M x N x K step product on a device with `sm_count` SMs:
// Step tiles for M <= 64, else Large; then as many k slices (at most kMaxSplits, at least
// kMinSlicePasses passes each) as keep the grid within one block per SM.
inline StepPlan plan_step(int64_t M, int64_t N, int64_t K, int sm_count) {
  StepPlan pl;
  pl.large = M > Step::kBM;
  const int64_t blocks = pl.large ? ceil_div(M, StepLarge::kBM) * ceil_div(N, StepLarge::kBN)
                                  : ceil_div(M, Step::kBM) * ceil_div(N, Step::kBN);
  const int64_t passes = ceil_div(K, kBK);
  int64_t want = blocks > 0 && blocks < sm_count ? sm_count / blocks : 1;
  want = imin(want, imin(kMaxSplits, ceil_div(passes, kMinSlicePasses)));
  if (want < 1) want = 1;
  pl.kslice = ceil_div(passes, want) * kBK;
  pl.splits = K > 0 ? ceil_div(K, pl.kslice) : 1;
  return pl;
}

template <Precision P, class Cfg>
bool step_gemm_p(const StepPlan& pl, int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak,
                 const float* Bm, int64_t sbk, int64_t sbn, float* C, cudaStream_t stream) {
  dim3 grid = grid_of(ceil_div(M, Cfg::kBM), ceil_div(N, Cfg::kBN));
  if (empty_grid(grid)) return false;
  grid.z = static_cast<unsigned>(pl.splits);
  const int64_t kslice = K > 0 ? pl.kslice : 0;
  // A is row-major in both step products (h_{s-1} rows, dz rows); B is R (k-major) forward, R
  // read as R^T (n-major) backward.
  if (a_kmajor(sam, sak)) throw Error("step_gemm: A must have unit stride along k");
  const bool bk = b_kmajor(sbk, sbn);
  const bool pipe = use_pipe(P, false, bk, M, N, K, A, sam, sak, Bm, sbk, sbn);
  if (bk)
    return launch<P, false, true, Cfg>(grid, stream, M, N, K, kslice, A, sam, sak, Bm, sbk, sbn, nullptr, C, N, M * N,
                                       pipe);
  return launch<P, false, false, Cfg>(grid, stream, M, N, K, kslice, A, sam, sak, Bm, sbk, sbn, nullptr, C, N, M * N,
                                      pipe);
}

// The bf16 step product from operands already converted to bf16 (kernel path "tensor" with
// the pipeline asked for: h / dz rows written in bf16 by the step kernels, R converted once per
// call): the same partials, bit for bit, as step_gemm in bf16 on their float32 originals
// (which converts them while staging with the same rounding), with half the bytes read and the
// pipelined kernel. A row-major (unit stride along k); the caller checked
// pipe_operand_ok for both operands.
// (45-61 KB of shared memory: fits every sm_80+ device.)
template <class Cfg, bool BK>
void step_gemm_bf16_cfg(const StepPlan& pl, int64_t M, int64_t N, int64_t K, const __nv_bfloat16* A, int64_t sam,
                        const __nv_bfloat16* Bm, int64_t sbk, int64_t sbn, float* C, cudaStream_t stream) {
  dim3 grid = grid_of(ceil_div(M, Cfg::kBM), ceil_div(N, Cfg::kBN));
  if (empty_grid(grid)) return;
  grid.z = static_cast<unsigned>(pl.splits);
  int device = 0;
  FL_CHECK(cudaGetDevice(&device));
  launch_pipe<Precision::kBf16, false, BK, Cfg, __nv_bfloat16>(grid, stream, M, N, K, K > 0 ? pl.kslice : 0, A, sam,
                                                              int64_t(1), Bm, sbk, sbn, nullptr, C, N, M * N, device);
}

// Throws unless the plan's k slices are whole 32-k passes that cover K (plan_step's; the
// pipelined kernel's copies must not cross a slice's end).
inline void check_plan(const StepPlan& pl, int64_t K) {
  if (pl.splits < 1 || pl.splits > 65535 ||
      (K > 0 && (pl.kslice < 1 || pl.kslice % kBK != 0 || ceil_div(K, pl.kslice) != pl.splits)))
    throw Error("step_gemm: inconsistent k slices");
}

inline void step_gemm_bf16(const StepPlan& pl, int64_t M, int64_t N, int64_t K, const __nv_bfloat16* A, int64_t sam,
                           const __nv_bfloat16* Bm, int64_t sbk, int64_t sbn, float* C, cudaStream_t stream) {
  check_plan(pl, K);
  const bool bk = b_kmajor(sbk, sbn);
  if (pl.large) {
    if (bk)
      step_gemm_bf16_cfg<StepLarge, true>(pl, M, N, K, A, sam, Bm, sbk, sbn, C, stream);
    else
      step_gemm_bf16_cfg<StepLarge, false>(pl, M, N, K, A, sam, Bm, sbk, sbn, C, stream);
  } else if (bk) {
    step_gemm_bf16_cfg<Step, true>(pl, M, N, K, A, sam, Bm, sbk, sbn, C, stream);
  } else {
    step_gemm_bf16_cfg<Step, false>(pl, M, N, K, A, sam, Bm, sbk, sbn, C, stream);
  }
}

// The partial products of the plan into C (pl.splits x M x N) on the tensor cores. Returns
// whether the pipelined kernel ran.
template <typename Real>
bool step_gemm(Precision p, const StepPlan& pl, int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam,
               int64_t sak, const Real* Bm, int64_t sbk, int64_t sbn, Real* C, cudaStream_t stream) {
  static_assert(std::is_same<Real, float>::value, "the tensor-core GEMM takes float32 data");
  check_plan(pl, K);
  if (p == Precision::kTf32) {
    if (pl.large) return step_gemm_p<Precision::kTf32, StepLarge>(pl, M, N, K, A, sam, sak, Bm, sbk, sbn, C, stream);
    return step_gemm_p<Precision::kTf32, Step>(pl, M, N, K, A, sam, sak, Bm, sbk, sbn, C, stream);
  }
  if (p == Precision::kTf32x3) {
    if (pl.large) return step_gemm_p<Precision::kTf32x3, StepLarge>(pl, M, N, K, A, sam, sak, Bm, sbk, sbn, C, stream);
    return step_gemm_p<Precision::kTf32x3, Step>(pl, M, N, K, A, sam, sak, Bm, sbk, sbn, C, stream);
  }
  if (pl.large) return step_gemm_p<Precision::kBf16, StepLarge>(pl, M, N, K, A, sam, sak, Bm, sbk, sbn, C, stream);
  return step_gemm_p<Precision::kBf16, Step>(pl, M, N, K, A, sam, sak, Bm, sbk, sbn, C, stream);
}

}  // namespace tc
}  // namespace impl
}  // namespace cuda
}  // namespace fastlstm
