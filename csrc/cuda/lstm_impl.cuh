// fastlstm's CUDA kernels and the host code that runs them (one header, instantiated for
// float in lstm_f32.cu and for double in lstm_f64.cu; with FASTLSTM_CUDA_EMU the same code
// runs on the CPU emulator of emu/emu.h).
//
// Correct first, simple, deterministic: every output element is computed by one thread in a
// fixed order, or reduced by a fixed tree inside one block; no atomics. Same inputs, same
// binary, same device: bitwise the same outputs and gradients.
//
// Forward (training saves gates/cells by time position t, like the CPU backend):
//   1. P (T*B, 4H) = x . kernel + bias         gemm_kernel (into `gates` when training)
//   2. per step s = 0..T-1:                     forward_step_kernel
//        z = P[t_b(s), b] + h_{s-1} . R, the gates, c and h; y[t], gates[t], cells[t].
//      Block (blockIdx.x, blockIdx.y) owns kUnits hidden units (all 4 gates: 32 columns of R)
//      for BB batch rows; h ping-pongs between two (B, H) buffers.
//   3. h_n <- the last h buffer; c_n is the cell state, updated in place.
// Kernel path "tensor" (precision tf32 / bf16 / tf32x3, float32; "auto" picks it for B >= 32 and
// B H^2 >= 2^25): forward step 2 is tc::step_gemm (h_{s-1} . R on the tensor cores into k-slice
// partials) then forward_pointwise_kernel (the same gate math, finish_unit); backward per step
// backward_gates_kernel (also writing the step's dz rows by batch row) then tc::step_gemm
// (dz_s . R^T), the running dh read from the partials by the next step; dh_merge_kernel last.
// Backward:
//   per step s = T-1..0:  backward_gates_kernel (dz, dc, h_{t-1} saved for dR), then
//                         backward_dh_kernel (dh_{t-1} = dz . R^T on a transposed copy R^T)
//   then dkernel = x_masked^T . dZ, drecurrent = H_prev^T . dZ, dx = dZ . kernel^T (gemm_kernel),
//   dbias = column sums of dZ (colsum kernels, two fixed-order passes).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/api.h"
#include "cuda/compat.cuh"

namespace fastlstm {
namespace cuda {
namespace impl {

// ------------------------------------------------------------------------------------------
// Tiling constants
// ------------------------------------------------------------------------------------------
constexpr int kThreads = 256;            // every kernel runs 256 threads per block
constexpr int kCols = 32;                // output columns per block of the recurrent products
constexpr int kSplit = kThreads / kCols; // 8 slices of the dot products' k range per column
constexpr int kChunk = 64;               // k values staged in shared memory per pass
constexpr int kUnits = kCols / 4;        // forward: hidden units per block (x 4 gates = 32 cols)
constexpr int kSmallRows = 4;            // batch rows per block when B <= kSmallRows
constexpr int kRows = 16;                // batch rows per block otherwise
// GEMM tile: 64 x 64 outputs per block, 4 x 4 per thread, 16 k per shared-memory pass.
constexpr int kTileM = 64, kTileN = 64, kTileK = 16;
constexpr int kColsumRows = 256;         // rows per partial column sum (dbias, pass 1), at least
// Kernel path "auto" runs the recurrent products on the tensor cores (kernel path "tensor")
// when the precision is tf32 / bf16 / tf32x3, B >= kTensorMinBatch and the per-step recurrent work
// B x H x H >= kTensorMinWork (4 B H^2 >= 2^27 FMAs: at H = 1024 B >= 32, at H = 512 B >= 128, at
// H = 256 B >= 512); below that the persistent kernel's per-step cost is predicted lower than
// the tensor path's ~7-11 us (two launches, R streamed from L2). bench/NOTES_GPU.md counts it.
constexpr int64_t kTensorMinBatch = 32;
constexpr int64_t kTensorMinWork = int64_t(1) << 25;

static_assert(kThreads % kCols == 0 && (kSplit & (kSplit - 1)) == 0, "kSplit: a power of two");
static_assert(kChunk == 64 && kThreads == 256 && kCols == 32, "rec_product's staging: one k of every fourth row per thread");
static_assert((kTileM / 4) * (kTileN / 4) == kThreads, "GEMM: 4 x 4 outputs per thread");

__host__ __device__ inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// lengths[b] clamped to [0, T] (ops.py checks the range; the clamp keeps a bad direct call
// from indexing out of bounds).
__device__ inline int64_t seq_len(const int64_t* lengths, int64_t b, int64_t T) {
  if (!lengths) return T;
  const int64_t L = lengths[b];
  return L < 0 ? 0 : (L > T ? T : L);
}

__device__ inline float fl_exp(float v) { return expf(v); }
__device__ inline double fl_exp(double v) { return exp(v); }
__device__ inline float fl_tanh(float v) { return tanhf(v); }
__device__ inline double fl_tanh(double v) { return tanh(v); }
// 1 / (1 + e^-z): exact 0 at -inf (e^inf = inf), exact 1 at +inf, NaN stays NaN.
template <typename Real>
__device__ inline Real fl_sigmoid(Real z) {
  return Real(1) / (Real(1) + fl_exp(-z));
}

// ------------------------------------------------------------------------------------------
// The recurrent products: for the block's BB rows (sm.rows[bb], nullptr = a row of zeros) and
// its kCols columns, sum_k rows[bb][k] * W[k * ldw + wcol] over k in [0, K). Thread tid takes
// column c = tid % kCols (W column wcol, < 0 = none) and k slice ks = tid / kCols: it sums
// k = k0 + ks, k0 + ks + kSplit, ... of each staged chunk in increasing order; the kSplit
// partial sums are then added by a fixed tree (red[ks] += red[ks + stride] for ks < stride,
// stride = 4, 2, 1). The result is sm.red[0][bb][c]. Every thread of the block must call
// it (it has barriers).
// ------------------------------------------------------------------------------------------
// a's rows are padded to BB + 4 values where BB is a multiple of 8 (so BB = 16: 20), which with
// rec_product's staging order (a warp stores 4 rows x 8 consecutive k) puts a warp's 32 stores
// in 32 different banks; the rows stay 16-byte aligned for the float4 reads of the products.
template <int BB>
constexpr int rec_pitch() {
  return BB % 8 == 0 ? BB + 4 : BB;
}
template <typename Real, int BB>
struct RecShared {
  const Real* rows[BB];
  alignas(16) Real a[kChunk][rec_pitch<BB>()];  // staged rows, transposed: a[kk][bb] = rows[bb][k0 + kk] (bb < BB)
  Real red[kSplit][BB][kCols];      // partial sums, then (slice 0) the totals
};

template <typename Real, int BB>
__device__ void rec_product(RecShared<Real, BB>& sm, int64_t K, const Real* W, int64_t ldw, int64_t wcol) {
  // K >= 1 always (H >= 1), so the barrier at the top of the first pass orders the callers'
  // writes of sm.rows before every read.
  static_assert(BB % 4 == 0, "rec_product: rows in groups of 4");
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid % kCols, ks = tid / kCols;
  const int sk = 8 * ks + tid % 8, sb = (tid / 8) % 4;  // staging: k sk of rows sb + 4 i
  Real acc[BB];
#pragma unroll
  for (int bb = 0; bb < BB; ++bb) acc[bb] = Real(0);
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int kn = static_cast<int>(imin(kChunk, K - k0));
    __syncthreads();  // sm.rows written (first pass) / the previous chunk fully read
    // thread tid stages k = sk (fixed) of rows sb, sb + 4, ...: a warp reads 8 consecutive k
    // (32 bytes) of 4 rows per load and stores them to 32 different banks
#pragma unroll
    for (int bb = sb; bb < BB; bb += 4) {
      const Real* row = sm.rows[bb];
      sm.a[sk][bb] = (row != nullptr && sk < kn) ? row[k0 + sk] : Real(0);
    }
    __syncthreads();  // chunk staged
    if (wcol >= 0) {
      const Real* w = W + (k0 + ks) * ldw + wcol;  // W[(k0 + kk) ldw + wcol], advanced with kk
      const int64_t wstep = kSplit * ldw;
#pragma unroll(sizeof(Real) == 4 ? 4 : 1)  // float: 4 w loads ahead; double: its registers as before
      for (int kk = ks; kk < kn; kk += kSplit, w += wstep) {
        const Real wv = *w;
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) acc[bb] += sm.a[kk][bb] * wv;
      }
    }
  }
#pragma unroll
  for (int bb = 0; bb < BB; ++bb) sm.red[ks][bb][c] = acc[bb];
  __syncthreads();  // all partial sums written
  for (int stride = kSplit / 2; stride > 0; stride /= 2) {
    if (ks < stride) {
#pragma unroll
      for (int bb = 0; bb < BB; ++bb) sm.red[ks][bb][c] += sm.red[ks + stride][bb][c];
    }
    __syncthreads();  // this level complete before the next reads it
  }
}

// The four gate values of one unit at p, p + H, p + 2H, p + 3H (the (.., 4H) row layout).
template <typename Real>
__device__ __forceinline__ void store_gates(Real* p, int64_t H, Real i, Real f, Real g, Real o) {
  p[0] = i;
  p[H] = f;
  p[2 * H] = g;
  p[3 * H] = o;
}

// ------------------------------------------------------------------------------------------
// The end of forward step s for (row b, unit j), the one place of the gate and cell math of
// the per-step kernels (forward_step_kernel and, on kernel path "tensor",
// forward_pointwise_kernel): rec(q) is the recurrent product h_{s-1} . R for gate q (R column
// q * H + j), asked for only when the row is inside its length. z = rec(q) + P[t_b(s), b]; the
// gates, c and h; y[t], gates[t], cells[t]. Past the row's length h and c carry over and y is
// 0 at position s. P and gates may alias (training): each element is read, then written, by
// the same thread.
// ------------------------------------------------------------------------------------------
template <typename Real, class Rec>
__device__ __forceinline__ void finish_unit(int64_t s, int64_t T, int64_t B, int64_t H, int64_t b, int64_t j,
                                            const int64_t* lengths, bool reverse, const Real* P, const Rec& rec,
                                            const Real* h_prev, Real* h_next, Real* c, Real* y, Real* gates,
                                            Real* cells) {
  const int64_t G = 4 * H;
  const int64_t L = seq_len(lengths, b, T);
  if (s < L) {
    const int64_t t = reverse ? L - 1 - s : s;
    const int64_t row = t * B + b;
    const Real* p = P + row * G + j;
    const Real zi = rec(0) + p[0];
    const Real zf = rec(1) + p[H];
    const Real zg = rec(2) + p[2 * H];
    const Real zo = rec(3) + p[3 * H];
    const Real gi = fl_sigmoid(zi), gf = fl_sigmoid(zf), gg = fl_tanh(zg), go = fl_sigmoid(zo);
    const Real cn = gf * c[b * H + j] + gi * gg;
    const Real hn = go * fl_tanh(cn);
    c[b * H + j] = cn;
    h_next[b * H + j] = hn;
    y[row * H + j] = hn;
    if (gates) store_gates(gates + row * G + j, H, gi, gf, gg, go);
    if (cells) cells[row * H + j] = cn;
  } else {  // past its length: the state carries over, y is 0 at position s
    h_next[b * H + j] = h_prev[b * H + j];
    y[(s * B + b) * H + j] = Real(0);
  }
}

// ------------------------------------------------------------------------------------------
// Forward step s: grid (ceil(H / kUnits), ceil(B / BB)), kThreads threads.
// Thread tid's column c = tid % 32 is gate c / kUnits of unit j0 + c % kUnits (R column
// gate * H + j). After the product, threads tid < BB * kUnits each finish one (row, unit).
// ------------------------------------------------------------------------------------------
template <typename Real, int BB>
__global__ void __launch_bounds__(kThreads)
    forward_step_kernel(int64_t s, int64_t T, int64_t B, int64_t H, const int64_t* lengths, bool reverse,
                        const Real* P, const Real* R, const Real* h_prev, Real* h_next, Real* c,
                        Real* y, Real* gates, Real* cells) {
  __shared__ RecShared<Real, BB> sm;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kUnits;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * BB;
  const int64_t G = 4 * H;
  if (tid < BB) {
    const int64_t b = b0 + tid;
    sm.rows[tid] = b < B ? h_prev + b * H : nullptr;
  }
  {
    const int col = tid % kCols, gate = col / kUnits;
    const int64_t j = j0 + col % kUnits;
    rec_product<Real, BB>(sm, H, R, G, j < H ? gate * H + j : -1);
  }
  if (tid < BB * kUnits) {
    const int bb = tid / kUnits, u = tid % kUnits;
    const int64_t b = b0 + bb, j = j0 + u;
    if (b < B && j < H) {
      const Real* red = &sm.red[0][bb][u];
      finish_unit<Real>(s, T, B, H, b, j, lengths, reverse, P, [red](int q) { return red[q * kUnits]; }, h_prev,
                        h_next, c, y, gates, cells);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Backward step s, part 1: one thread per (b, j), 1-D grid over B * H.
// Reads dh (gradient into h_s from later steps), updates dc in place (-> gradient into
// c_{s-1}), writes dz (T, B, 4H) and h_prev (T, B, H) at row t_b(s) * B + b; for rows past
// their length it writes zeros at row s * B + b and leaves dh / dc (they carry over).
// Kernel path "tensor" (dh_parts non-null): the running dh of a row that was inside its length
// at step s + 1 is the sum of the nparts partial products dh_parts[z] (B, H) of that step's
// tensor-core dz . R^T (z = 0, 1, ... in order; dh itself then still holds dh_n, which rows
// that start later keep); and this step's dz rows are also written to dz_step (B, 4H) by
// batch row (zeros for rows past their length), the A operand of this step's product.
// ------------------------------------------------------------------------------------------
// The four gate values of one (row, unit) as bf16 (round to nearest even) at p, p + H, ...:
// the bf16 copy of a step's dz rows (kernel path "tensor", precision bf16, pipelined products).
template <typename Real>
__device__ __forceinline__ void store_gates_bf16(__nv_bfloat16* p, int64_t H, Real a, Real b, Real c, Real d) {
  p[0] = __float2bfloat16_rn(static_cast<float>(a));
  p[H] = __float2bfloat16_rn(static_cast<float>(b));
  p[2 * H] = __float2bfloat16_rn(static_cast<float>(c));
  p[3 * H] = __float2bfloat16_rn(static_cast<float>(d));
}

// dst[i] = bf16(src[i]) (round to nearest even) for i < n; 1-D grid of kThreads threads.
template <typename Real>
__global__ void __launch_bounds__(kThreads) to_bf16_kernel(int64_t n, const Real* src, __nv_bfloat16* dst) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) dst[i] = __float2bfloat16_rn(static_cast<float>(src[i]));
}

template <typename Real>
__device__ __forceinline__ Real sum_parts(const Real* p, int64_t nparts, int64_t stride) {
  Real v = p[0];
  for (int64_t z = 1; z < nparts; ++z) v += p[z * stride];
  return v;
}

template <typename Real>
__global__ void __launch_bounds__(kThreads)
    backward_gates_kernel(int64_t s, int64_t T, int64_t B, int64_t H, const int64_t* lengths, bool reverse,
                          const Real* gates, const Real* cells, const Real* h0, const Real* c0,
                          const Real* dy, const Real* dh, Real* dc, Real* dz, Real* h_prev,
                          const Real* dh_parts, int64_t nparts, Real* dz_step, __nv_bfloat16* dzb_step) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= B * H) return;
  const int64_t b = idx / H, j = idx % H, G = 4 * H;
  const int64_t L = seq_len(lengths, b, T);
  if (s >= L) {
    const Real zero(0);
    store_gates(dz + (s * B + b) * G + j, H, zero, zero, zero, zero);
    h_prev[(s * B + b) * H + j] = zero;
    if (dz_step) store_gates(dz_step + b * G + j, H, zero, zero, zero, zero);
    if (dzb_step) store_gates_bf16(dzb_step + b * G + j, H, zero, zero, zero, zero);
    return;
  }
  const int64_t t = reverse ? L - 1 - s : s;
  const int64_t row = t * B + b;
  const Real* g = gates + row * G + j;
  const Real gi = g[0], gf = g[H], gg = g[2 * H], go = g[3 * H];
  const Real cc = cells[row * H + j];
  Real cp, hp;
  if (s == 0) {
    cp = c0 ? c0[b * H + j] : Real(0);
    hp = h0 ? h0[b * H + j] : Real(0);
  } else {  // h_{t-1} = o_{t-1} * tanh(c_{t-1}), exactly as the forward computed it
    const int64_t prow = (reverse ? t + 1 : t - 1) * B + b;
    cp = cells[prow * H + j];
    hp = gates[prow * G + 3 * H + j] * fl_tanh(cp);
  }
  Real dht = (dh_parts && s + 1 < L) ? sum_parts(dh_parts + b * H + j, nparts, B * H) : dh[b * H + j];
  if (dy) dht += dy[row * H + j];
  const Real tc = fl_tanh(cc);
  const Real dct = dc[b * H + j] + dht * go * (Real(1) - tc * tc);
  dc[b * H + j] = dct * gf;
  const Real d_i = dct * gg * (gi * (Real(1) - gi));
  const Real d_f = dct * cp * (gf * (Real(1) - gf));
  const Real d_g = dct * gi * (Real(1) - gg * gg);
  const Real d_o = dht * tc * (go * (Real(1) - go));
  store_gates(dz + row * G + j, H, d_i, d_f, d_g, d_o);
  if (dz_step) store_gates(dz_step + b * G + j, H, d_i, d_f, d_g, d_o);
  if (dzb_step) store_gates_bf16(dzb_step + b * G + j, H, d_i, d_f, d_g, d_o);
  h_prev[row * H + j] = hp;
}

// ------------------------------------------------------------------------------------------
// Backward step s, part 2: dh[b, j] = sum_c dz[t_b(s), b, c] * RT[c, j] over c in [0, 4H),
// for rows still inside their length (the others keep dh). Grid (ceil(H / kCols),
// ceil(B / BB)), kThreads threads; thread column c = tid % 32 is unit j0 + c.
// ------------------------------------------------------------------------------------------
template <typename Real, int BB>
__global__ void __launch_bounds__(kThreads)
    backward_dh_kernel(int64_t s, int64_t T, int64_t B, int64_t H, const int64_t* lengths, bool reverse,
                       const Real* dz, const Real* RT, Real* dh) {
  __shared__ RecShared<Real, BB> sm;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kCols;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * BB;
  const int64_t G = 4 * H;
  if (tid < BB) {
    const int64_t b = b0 + tid;
    const Real* row = nullptr;
    if (b < B) {
      const int64_t L = seq_len(lengths, b, T);
      if (s < L) row = dz + ((reverse ? L - 1 - s : s) * B + b) * G;
    }
    sm.rows[tid] = row;
  }
  {
    const int64_t j = j0 + tid % kCols;
    rec_product<Real, BB>(sm, G, RT, H, j < H ? j : -1);
  }
  for (int e = tid; e < BB * kCols; e += kThreads) {
    const int bb = e / kCols, col = e % kCols;
    const int64_t b = b0 + bb, j = j0 + col;
    if (b < B && j < H && sm.rows[bb] != nullptr) dh[b * H + j] = sm.red[0][bb][col];
  }
}

// ------------------------------------------------------------------------------------------
// Kernel path "tensor" (float32, precision tf32 / bf16 / tf32x3): per step, the recurrent product runs
// on the tensor cores (tc::step_gemm, k split into nparts slices) into partial products Z;
// these kernels add the partials in order z = 0, 1, ... and do the rest of the step.
// ------------------------------------------------------------------------------------------
// Forward step s after Z[z] (B, 4H) = h_{s-1} . R over k slice z: one thread per (b, j),
// 1-D grid over B * H; the gate and cell math of finish_unit.
template <typename Real>
__global__ void __launch_bounds__(kThreads)
    forward_pointwise_kernel(int64_t s, int64_t T, int64_t B, int64_t H, const int64_t* lengths, bool reverse,
                             const Real* P, const Real* Z, int64_t nparts, const Real* h_prev, Real* h_next,
                             Real* c, Real* y, Real* gates, Real* cells, __nv_bfloat16* hb_next) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= B * H) return;
  const int64_t b = idx / H, j = idx % H;
  const Real* z = Z + b * 4 * H + j;
  const int64_t stride = B * 4 * H;
  finish_unit<Real>(s, T, B, H, b, j, lengths, reverse, P,
                    [z, H, nparts, stride](int q) { return sum_parts(z + q * H, nparts, stride); }, h_prev, h_next,
                    c, y, gates, cells);
  // the bf16 copy of h_s, the next step's A operand (precision bf16, pipelined products)
  if (hb_next) hb_next[b * H + j] = __float2bfloat16_rn(static_cast<float>(h_next[b * H + j]));
}

// After the last (s = 0) backward step: dh (the dh0 output) = the sum of the partials
// dh_parts[z] (B, H) for rows with a length > 0; rows of length 0 keep dh_n. One thread per
// (b, j), 1-D grid over B * H.
template <typename Real>
__global__ void __launch_bounds__(kThreads)
    dh_merge_kernel(int64_t T, int64_t B, int64_t H, const int64_t* lengths, const Real* dh_parts, int64_t nparts,
                    Real* dh) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= B * H) return;
  if (seq_len(lengths, idx / H, T) > 0) dh[idx] = sum_parts(dh_parts + idx, nparts, B * H);
}

// ------------------------------------------------------------------------------------------
// C (M x N, row-major, leading dimension ldc) = A . B (+ bias[n]), with A(m, k) =
// A[m * sam + k * sak] and B(k, n) = B[k * sbk + n * sbn] (transposes are strides).
// Grid (ceil(M / 64), ceil(N / 64)), kThreads threads. Thread (ty, tx) = (tid / 16, tid % 16)
// computes rows m0 + ty + 16 i and columns n0 + tx + 16 j (i, j < 4), each summed over
// k = 0 .. K-1 in order. K = 0 writes the bias (or zeros).
// ------------------------------------------------------------------------------------------
template <typename Real>
__global__ void __launch_bounds__(kThreads)
    gemm_kernel(int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak, const Real* Bm,
                int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc) {
  __shared__ Real As[kTileK][kTileM + 1];
  __shared__ Real Bs[kTileK][kTileN + 1];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  Real acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = Real(0);
  // Consecutive threads load consecutive addresses when a tile's unit stride allows it. Each
  // thread stages elements e = tid + 256 q (q < 4) of each tile: k-fast, (row, k) = (tid / 16 +
  // 16 q, tid % 16); else (tid % 64, tid / 64 + 4 q). So element q sits at a fixed step from the
  // thread's first in global and shared memory, its row (column) is inside the matrix or not for
  // the whole k range (bit q of a_in / b_in, computed once), and only a pass that ends past K
  // checks k: no 64-bit multiply or compare per element (the SASS audit of session 19 counted
  // ~31-36 instructions per staged element before, the loop ~37% FFMA). The same values reach
  // the same places: the same bits.
  static_assert(kTileM == 64 && kTileN == 64 && kTileK == 16 && kThreads == 256, "gemm_kernel's staging steps");
  constexpr int kLoads = kTileM * kTileK / kThreads;  // 4 per tile
  const bool a_k_fast = sak == 1, b_n_fast = sbn == 1;
  const int a_m = a_k_fast ? tid / kTileK : tid % kTileM, a_k = a_k_fast ? tid % kTileK : tid / kTileM;
  const int a_dm = a_k_fast ? kThreads / kTileK : 0, a_dk = a_k_fast ? 0 : kThreads / kTileM;
  const int b_n = b_n_fast ? tid % kTileN : tid / kTileK, b_k = b_n_fast ? tid / kTileN : tid % kTileK;
  const int b_dn = b_n_fast ? 0 : kThreads / kTileK, b_dk = b_n_fast ? kThreads / kTileN : 0;
  unsigned a_in = 0, b_in = 0;
#pragma unroll
  for (int q = 0; q < kLoads; ++q) {
    if (m0 + a_m + q * a_dm < M) a_in |= 1u << q;
    if (n0 + b_n + q * b_dn < N) b_in |= 1u << q;
  }
  const Real* pa = A + (m0 + a_m) * sam + a_k * sak;  // element 0 at the current pass
  const Real* pb = Bm + b_k * sbk + (n0 + b_n) * sbn;
  const int64_t a_step = a_dm * sam + a_dk * sak, b_step = b_dn * sbn + b_dk * sbk;
  Real* const sa = &As[a_k][a_m];
  Real* const sb = &Bs[b_k][b_n];
  const int sa_step = a_dk * (kTileM + 1) + a_dm, sb_step = b_dk * (kTileN + 1) + b_dn;
  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    unsigned a_ok = a_in, b_ok = b_in;
    if (K - k0 < kTileK) {  // a partial last pass: k too
      const int kl = static_cast<int>(K - k0);
#pragma unroll
      for (int q = 0; q < kLoads; ++q) {
        if (a_k + q * a_dk >= kl) a_ok &= ~(1u << q);
        if (b_k + q * b_dk >= kl) b_ok &= ~(1u << q);
      }
    }
    Real ra[kLoads], rb[kLoads];
#pragma unroll
    for (int q = 0; q < kLoads; ++q) {
      ra[q] = (a_ok >> q) & 1u ? pa[q * a_step] : Real(0);
      rb[q] = (b_ok >> q) & 1u ? pb[q * b_step] : Real(0);
    }
#pragma unroll
    for (int q = 0; q < kLoads; ++q) {
      FL_EMU_IN_RANGE(&sa[q * sa_step] - &As[0][0], kTileK * (kTileM + 1));
      FL_EMU_IN_RANGE(&sb[q * sb_step] - &Bs[0][0], kTileK * (kTileN + 1));
      sa[q * sa_step] = ra[q];
      sb[q * sb_step] = rb[q];
    }
    pa += kTileK * sak;
    pb += kTileK * sbk;
    __syncthreads();  // tiles staged
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      Real a[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * bv[j];
    }
    __syncthreads();  // tiles read before the next pass overwrites them
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (m < M && n < N) C[m * ldc + n] = bias ? acc[i][j] + bias[n] : acc[i][j];
    }
  }
}

// partial[p, n] = sum of X[r, n] for r in [p * rows, min(M, (p + 1) * rows)), in row order.
// Grid (ceil(N / kThreads), ceil(M / rows)).
template <typename Real>
__global__ void __launch_bounds__(kThreads)
    colsum_partial_kernel(int64_t M, int64_t N, int64_t rows, const Real* X, Real* partial) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t p = blockIdx.y;
  if (n >= N) return;
  const int64_t r1 = imin(M, (p + 1) * rows);
  Real sum = Real(0);
  for (int64_t r = p * rows; r < r1; ++r) sum += X[r * N + n];
  partial[p * N + n] = sum;
}

// out[n] = sum of partial[p, n] over p in order (0 when P == 0). Grid ceil(N / kThreads).
template <typename Real>
__global__ void __launch_bounds__(kThreads) colsum_final_kernel(int64_t P, int64_t N, const Real* partial, Real* out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (n >= N) return;
  Real sum = Real(0);
  for (int64_t p = 0; p < P; ++p) sum += partial[p * N + n];
  out[n] = sum;
}

// RT (G x H) = R^T, R (H x G). One thread per element of RT. Grid ceil(H * G / kThreads).
template <typename Real>
__global__ void __launch_bounds__(kThreads) transpose_kernel(int64_t H, int64_t G, const Real* R, Real* RT) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= H * G) return;
  const int64_t c = idx / H, j = idx % H;
  RT[idx] = R[j * G + c];
}

// xm = x with the rows of positions past their sequence's length zeroed (so that NaN there
// cannot reach dkernel as NaN * 0). One thread per element; grid ceil(T * B * I / kThreads).
template <typename Real>
__global__ void __launch_bounds__(kThreads)
    mask_rows_kernel(int64_t T, int64_t B, int64_t I, const int64_t* lengths, const Real* x, Real* xm) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= T * B * I) return;
  const int64_t r = idx / I, t = r / B, b = r % B;
  xm[idx] = t < seq_len(lengths, b, T) ? x[idx] : Real(0);
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------
inline dim3 grid_of(int64_t x, int64_t y = 1) {
  // gridDim.x < 2^31, gridDim.y <= 65535
  if (x > std::numeric_limits<int32_t>::max() || y > 65535)
    throw Error("fastlstm CUDA: problem too large for one launch (grid " + std::to_string(x) + " x " +
                std::to_string(y) + ")");
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), 1);
}
inline bool empty_grid(const dim3& g) { return g.x == 0 || g.y == 0; }

// Makes `device` current for the lifetime of the guard, then restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    FL_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) FL_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// fastlstm's own stream-ordered memory pool per device (kept, not released at every
// synchronisation, so that repeated calls do not map memory again); plain cudaMalloc where
// the device has no memory pools.
cudaMemPool_t workspace_pool(int device);  // defined in runtime.cu / the emulator

// Temporary device memory for one call, allocated and freed in stream order.
template <typename T>
class Workspace {
 public:
  Workspace(int64_t n, int device, cudaStream_t stream) : stream_(stream) {
    if (n <= 0) return;
    const size_t bytes = static_cast<size_t>(n) * sizeof(T);
    cudaMemPool_t pool = workspace_pool(device);
    void* p = nullptr;
    if (pool) {
      FL_CHECK(cudaMallocFromPoolAsync(&p, bytes, pool, stream));
      pooled_ = true;
    } else {
      FL_CHECK(cudaMalloc(&p, bytes));
    }
    ptr_ = static_cast<T*>(p);
  }
  ~Workspace() {
    if (!ptr_) return;
    if (pooled_)
      (void)cudaFreeAsync(ptr_, stream_);
    else
      (void)cudaFree(ptr_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
  bool pooled_ = false;
};

bool poison_enabled();

template <typename T>
void poison(T* p, int64_t n, cudaStream_t stream) {
  if (p && n > 0 && poison_enabled()) FL_CHECK(cudaMemsetAsync(p, 0xFF, static_cast<size_t>(n) * sizeof(T), stream));
}

// Checks that a non-null pointer is device (or managed) memory on `device`.
void check_device_pointer(const void* p, const char* name, int device);  // runtime.cu / emulator

template <typename T>
void need(const T* p, int64_t n, const char* name, int device) {
  if (n <= 0) return;
  if (!p) throw Error(std::string(name) + ": a device pointer is required (got null)");
  check_device_pointer(p, name, device);
}
template <typename T>
void maybe(const T* p, int64_t n, const char* name, int device) {
  if (p && n > 0) check_device_pointer(p, name, device);
}

inline void check_dims(const Dims& d) {
  if (d.T < 0 || d.B < 0) throw Error("dims: T and B must be >= 0");
  if (d.I < 1) throw Error("dims: the feature size I must be at least 1");
  if (d.H < 1) throw Error("dims: the hidden size H must be at least 1");
  const int64_t big = int64_t(1) << 40;  // keeps every index product far from overflow
  if (d.T > big || d.B > big || d.I > big || d.H > big || d.T * d.B > big || 4 * d.H * d.H > big ||
      d.T * d.B * 4 * d.H > big || d.T * d.B * d.I > big || d.I * 4 * d.H > big)
    throw Error("dims: problem too large");
}

// ------------------------------------------------------------------------------------------
// The float32 GEMM (simt-gemm-v2): the same contract and the same arithmetic per output as
// gemm_kernel (each output summed over k = 0 .. K-1 in order, one multiply-add per k, then
// + bias), so its results are bitwise those of gemm_kernel; only the blocking differs.
// Grid (ceil(M / 128), ceil(N / 128)), kThreads threads as 16 x 16: thread (ty, tx) computes
// rows {4 ty + i, 64 + 4 ty + i} and columns {4 tx + j, 64 + 4 tx + j} (i, j < 4), 8 x 8
// outputs, from two 16-byte shared-memory reads of A and two of B per k (64 multiply-adds per
// 4 reads, against 16 per 8 scalar reads in gemm_kernel). 8 k per pass; the next pass's
// global loads go to registers during this pass's multiply-adds, into the other of two
// shared-memory buffers (one barrier per pass).
// gemm_big_body is that kernel's body for MI row groups of 64 (MI = 2: the 128 x 128 tile;
// MI = 1: 64 x 128, thread (ty, tx) rows 4 ty + i only, 4 x 8 outputs) over k in [kb, ke):
// gemm_big_kernel runs it over [0, K); simt_step_kernel (kernel path "tiled") over one k slice
// per blockIdx.z, each slice's partial product into its own C.
// ------------------------------------------------------------------------------------------
constexpr int kBigM = 128, kBigN = 128, kBigK = 8;
constexpr int kBigPad = 4;  // stored rows of 132 floats: the k-fast staging stores avoid bank conflicts
constexpr int kBigLoads = kBigM * kBigK / kThreads;  // elements of each operand a thread stages per pass
static_assert(kBigLoads * kThreads == kBigN * kBigK, "A and B tiles of the same size");

template <int MI>
__device__ __forceinline__ void gemm_big_body(int64_t M, int64_t N, int64_t kb, int64_t ke, const float* A,
                                              int64_t sam, int64_t sak, const float* Bm, int64_t sbk, int64_t sbn,
                                              const float* bias, float* C, int64_t ldc) {
  static_assert(MI == 1 || MI == 2, "gemm_big_body: 64 or 128 rows per tile");
  constexpr int BM = 64 * MI;                       // tile rows
  constexpr int ALoads = BM * kBigK / kThreads;     // A elements a thread stages per pass
  __align__(16) __shared__ float As[2][kBigK][BM + kBigPad];
  __align__(16) __shared__ float Bs[2][kBigK][kBigN + kBigPad];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBigN;
  // Staging: element e = tid + kThreads r (r < the loads) of a tile, consecutive threads on
  // the operand's unit-stride axis when it has one; then element r is element 0 moved by r
  // steps along one axis (rows: 32 per step when k is the fast axis, else k: 256 / BM per step).
  const bool a_k_fast = sak == 1, b_n_fast = sbn == 1;
  const int a_m = a_k_fast ? tid / kBigK : tid % BM, a_k = a_k_fast ? tid % kBigK : tid / BM;
  const int a_dm = a_k_fast ? kThreads / kBigK : 0, a_dk = a_k_fast ? 0 : kThreads / BM;
  const int b_n = b_n_fast ? tid % kBigN : tid / kBigK, b_k = b_n_fast ? tid / kBigN : tid % kBigK;
  const int b_dn = b_n_fast ? 0 : kThreads / kBigK, b_dk = b_n_fast ? kThreads / kBigN : 0;
  // Per thread, fixed for the whole k range: element r of the thread's A share at the current
  // pass is pa + r * a_step (pa advances by kBigK * sak per pass), inside the matrix where bit r
  // of `inside` is set (its row < M; bit 8 + r: B element r's column < N); only a pass that ends
  // past ke (the last one, when the range is not whole passes) also checks k. So the loop's
  // staging does no 64-bit multiplies and no 64-bit compares per element.
  const float* pa = A + (m0 + a_m) * sam + (kb + a_k) * sak;
  const float* pb = Bm + (kb + b_k) * sbk + (n0 + b_n) * sbn;
  const int64_t a_step = a_dm * sam + a_dk * sak, b_step = b_dn * sbn + b_dk * sbk;
  unsigned inside = 0;
#pragma unroll
  for (int r = 0; r < kBigLoads; ++r) {
    if (r < ALoads && m0 + a_m + r * a_dm < M) inside |= 1u << r;
    if (n0 + b_n + r * b_dn < N) inside |= 1u << (8 + r);
  }
  // shared-memory places of element r: sa + r * sa_step (buffer 0; buffer 1 one buffer further)
  float* const sa = &As[0][a_k][a_m];
  float* const sb = &Bs[0][b_k][b_n];
  const int sa_step = a_dk * (BM + kBigPad) + a_dm, sb_step = b_dk * (kBigN + kBigPad) + b_dn;
  float ra[ALoads], rb[kBigLoads];
  auto load = [&](int64_t k0) {  // k0: kb, kb + kBigK, ... in turn
    unsigned ok = inside;
    if (ke - k0 < kBigK) {  // a partial last pass: k too
      const int kl = static_cast<int>(ke - k0);
#pragma unroll
      for (int r = 0; r < kBigLoads; ++r) {
        if (a_k + r * a_dk >= kl) ok &= ~(1u << r);
        if (b_k + r * b_dk >= kl) ok &= ~(1u << (8 + r));
      }
    }
#pragma unroll
    for (int r = 0; r < kBigLoads; ++r) {
      if (r < ALoads) ra[r] = (ok >> r) & 1u ? pa[r * a_step] : 0.0f;
      rb[r] = (ok >> (8 + r)) & 1u ? pb[r * b_step] : 0.0f;
    }
    pa += kBigK * sak;
    pb += kBigK * sbk;
  };
  auto store = [&](int buf) {
    float* const da = sa + buf * (kBigK * (BM + kBigPad));
    float* const db = sb + buf * (kBigK * (kBigN + kBigPad));
#pragma unroll
    for (int r = 0; r < kBigLoads; ++r) {
      if (r < ALoads) {
        FL_EMU_IN_RANGE(&da[r * sa_step] - &As[0][0][0], 2 * kBigK * (BM + kBigPad));
        da[r * sa_step] = ra[r];
      }
      FL_EMU_IN_RANGE(&db[r * sb_step] - &Bs[0][0][0], 2 * kBigK * (kBigN + kBigPad));
      db[r * sb_step] = rb[r];
    }
  };
  float acc[4 * MI][8];
#pragma unroll
  for (int i = 0; i < 4 * MI; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
  if (ke > kb) {
    load(kb);
    store(0);
  }
  __syncthreads();
  int buf = 0;
  for (int64_t k0 = kb; k0 < ke; k0 += kBigK) {
    const bool more = k0 + kBigK < ke;
    if (more) load(k0 + kBigK);  // in flight during this pass
#pragma unroll
    for (int kk = 0; kk < kBigK; ++kk) {
      float a[4 * MI];
      const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][kk][4 * ty]);
      a[0] = a0.x, a[1] = a0.y, a[2] = a0.z, a[3] = a0.w;
      if constexpr (MI == 2) {
        const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][kk][64 + 4 * ty]);
        a[4] = a1.x, a[5] = a1.y, a[6] = a1.z, a[7] = a1.w;
      }
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][kk][4 * tx]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][kk][64 + 4 * tx]);
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 4 * MI; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
    }
    if (more) store(buf ^ 1);  // the other buffer: its last readers passed the previous barrier
    __syncthreads();
    buf ^= 1;
  }
  // The thread's 8 bias values, read once: the compiler, which must assume that C may alias
  // bias, reloaded bias[n] for every output (64 loads for 8 values). No caller aliases them.
  // The same sums (without a bias nothing is added, so a -0.0 stays -0.0 as before).
  float bn[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int64_t n = n0 + (j < 4 ? 4 * tx + j : 64 + 4 * tx + j - 4);
    bn[j] = (bias != nullptr && n < N) ? bias[n] : 0.0f;
  }
#pragma unroll
  for (int i = 0; i < 4 * MI; ++i) {
    const int64_t m = m0 + (i < 4 ? 4 * ty + i : 64 + 4 * ty + i - 4);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t n = n0 + (j < 4 ? 4 * tx + j : 64 + 4 * tx + j - 4);
      if (m < M && n < N) C[m * ldc + n] = bias ? acc[i][j] + bn[j] : acc[i][j];
    }
  }
}

// (A template, float only, so that the header can be included by several translation units.)
template <typename Real>
__global__ void __launch_bounds__(kThreads, 2)
    gemm_big_kernel(int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak, const Real* Bm,
                    int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc) {
  static_assert(std::is_same<Real, float>::value, "gemm_big_kernel: float32 only (16-byte float4 reads)");
  gemm_big_body<2>(M, N, 0, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc);
}

// Kernel path "tiled": the per-step recurrent product's partials. Grid (ceil(M / (64 MI)),
// ceil(N / 128), S): slice z covers k in [z kslice, min(K, (z + 1) kslice)) and writes
// C + z M N (M x N, row-major); each partial is summed in k order, like gemm_big_kernel's
// outputs over the slice's k.
template <typename Real, int MI>
__global__ void __launch_bounds__(kThreads, 2)
    simt_step_kernel(int64_t M, int64_t N, int64_t K, int64_t kslice, const Real* A, int64_t sam, int64_t sak,
                     const Real* Bm, int64_t sbk, int64_t sbn, Real* C) {
  static_assert(std::is_same<Real, float>::value, "simt_step_kernel: float32 only (16-byte float4 reads)");
  const int64_t kb = static_cast<int64_t>(blockIdx.z) * kslice;
  const int64_t ke = imin(K, kb + kslice);
  gemm_big_body<MI>(M, N, kb, ke, A, sam, sak, Bm, sbk, sbn, nullptr, C + static_cast<int64_t>(blockIdx.z) * M * N,
                    N);
}

// The current device (into *device) and its SM count.
inline int current_sms(int* device) {
  int sms = 0;
  FL_CHECK(cudaGetDevice(device));
  FL_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, *device));
  return sms;
}

// Whether split-K may run in the fp32 and the tensor-core GEMMs (FASTLSTM_CUDA_GEMM_SPLITK, read
// at every call: "0" turns it off, for A/B runs; on by default).
inline bool split_k_requested() {
  const char* v = std::getenv("FASTLSTM_CUDA_GEMM_SPLITK");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// Split-K (split-k-v1) for float32 products whose 128 x 128 grid is smaller than the device
// and whose K is deep (the tall-K weight gradients and the narrow dx at small batch, e.g. dx at
// B = 1, H = 1024: 100 x 1024 x 4096 ran as 32 blocks of 64 x 64, each 4096 deep): defined below
// (gemm_split_k, after tensor_gemm.cuh). Returns its description, "" where it does not apply.
template <typename Real>
std::string gemm_split_k(int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak, const Real* Bm,
                         int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc, int device, int sms,
                         cudaStream_t stream);

// C = A . B (+ bias): for float32, gemm_big_kernel where its grid fills the current device at
// least once (ceil(M / 128) ceil(N / 128) >= the SM count), else split-K where K is deep
// (gemm_split_k); else gemm_kernel, whose 64 x 64 tiles make 4x the blocks (small products, e.g.
// the projection at B = 1, T = 100: 32 blocks of 128 x 128 against 128 of 64 x 64, would leave
// most SMs idle on the big tile). gemm_big_kernel and gemm_kernel give the same bits; split-K
// sums each slice in k order and the slices in order, so its bits differ (deterministically).
// Returns which ran ("simt gemm (fp32, 128x128)", ...).
template <typename Real>
std::string gemm(int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak, const Real* Bm,
                 int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc, cudaStream_t stream) {
  const char* dtype = std::is_same<Real, float>::value ? "fp32" : "fp64";
  if constexpr (std::is_same<Real, float>::value) {
    int device = 0;
    const int sms = current_sms(&device);
    if (ceil_div(M, kBigM) * ceil_div(N, kBigN) >= sms) {
      const dim3 grid = grid_of(ceil_div(M, kBigM), ceil_div(N, kBigN));
      FL_LAUNCH(gemm_big_kernel<Real>, grid, dim3(kThreads), stream, M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C,
                ldc);
      return "simt gemm (fp32, 128x128)";
    }
    const std::string split = gemm_split_k<Real>(M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, device, sms, stream);
    if (!split.empty()) return split;
  }
  const dim3 grid = grid_of(ceil_div(M, kTileM), ceil_div(N, kTileN));
  if (!empty_grid(grid))
    FL_LAUNCH(gemm_kernel<Real>, grid, dim3(kThreads), stream, M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc);
  return std::string("simt gemm (") + dtype + ", 64x64)";
}

// C[m * ldc + n] = sum of parts[z][m][n] over z = 0 .. S-1 in order (+ bias[n]): split-K's
// last step. One thread per (m, n), 1-D grid over M * N.
template <typename Real>
__global__ void __launch_bounds__(kThreads)
    split_sum_kernel(int64_t M, int64_t N, int64_t S, const Real* parts, const Real* bias, Real* C, int64_t ldc) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= M * N) return;
  const int64_t m = idx / N, n = idx % N;
  Real v = parts[idx];
  for (int64_t z = 1; z < S; ++z) v += parts[z * M * N + idx];
  C[m * ldc + n] = bias ? v + bias[n] : v;
}

template <typename Real>
void colsum(int64_t M, int64_t N, const Real* X, Real* out, int device, cudaStream_t stream) {
  if (N <= 0) return;
  // kColsumRows rows per partial sum, more when that would need more than 65535 partials
  const int64_t rows = M > kColsumRows * int64_t(65535) ? ceil_div(M, 65535) : kColsumRows;
  const int64_t P = ceil_div(M, rows);
  Workspace<Real> partial(P * N, device, stream);
  poison(partial.get(), P * N, stream);
  const dim3 g1 = grid_of(ceil_div(N, kThreads), P);
  if (!empty_grid(g1)) {
    auto k1 = colsum_partial_kernel<Real>;
    FL_LAUNCH(k1, g1, dim3(kThreads), stream, M, N, rows, X, partial.get());
  }
  auto k2 = colsum_final_kernel<Real>;
  FL_LAUNCH(k2, grid_of(ceil_div(N, kThreads)), dim3(kThreads), stream, P, N, partial.get(), out);
}

template <typename Real>
void copy_or_zero(Real* dst, const Real* src, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  const size_t bytes = static_cast<size_t>(n) * sizeof(Real);
  if (src)
    FL_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  else
    FL_CHECK(cudaMemsetAsync(dst, 0, bytes, stream));  // all-zero bytes: +0.0
}

}  // namespace impl
}  // namespace cuda
}  // namespace fastlstm

#include "cuda/persistent.cuh"
#include "cuda/tensor_gemm.cuh"

namespace fastlstm {
namespace cuda {
namespace impl {

// bf16 with the pipeline asked for (tc::pipeline_requested): C = A . B (+ bias) from bf16
// copies of both operands (to_bf16_kernel: the rounding tc_gemm_kernel applies while staging),
// copied by the pipelined kernel on the Large tile: the same bits as tc::gemm in bf16, half the
// bytes read, at the cost of one conversion pass over each operand. Only for dense operands
// (A (M, K) or its transpose, B (K, N) or its transpose, as the LSTM's products are) whose
// unit-stride extents are multiples of 8; returns false (nothing launched) otherwise. Split
// along K exactly as tc::gemm would (tc::plan_large_split), so the bits stay tc::gemm's.
// (A template, Real = float only, so that only the float32 translation unit compiles it.)
template <typename Real>
bool gemm_bf16_copies(int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak, const Real* Bm,
                      int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc, cudaStream_t stream,
                      int64_t* splits) {
  static_assert(std::is_same<Real, float>::value, "the tensor-core GEMM takes float32 data");
  const bool ak = tc::a_kmajor(sam, sak), bk = tc::b_kmajor(sbk, sbn);
  const bool a_dense = ak ? (sam == 1 && sak == M) : (sak == 1 && sam == K);
  const bool b_dense = bk ? (sbn == 1 && sbk == N) : (sbk == 1 && sbn == K);
  if (!a_dense || !b_dense || M <= 0 || N <= 0 || K <= 0) return false;
  if ((ak ? M : K) % 8 != 0 || (bk ? N : K) % 8 != 0) return false;
  int device = 0;
  const int sms = current_sms(&device);
  Workspace<__nv_bfloat16> ab(M * K, device, stream), bb(K * N, device, stream);
  poison(ab.get(), M * K, stream);
  poison(bb.get(), K * N, stream);
  if (!tc::pipe_operand_ok(ak, ab.get(), M, K, sam, sak) || !tc::pipe_operand_ok(bk, bb.get(), N, K, sbn, sbk))
    return false;
  auto kc = to_bf16_kernel<Real>;
  FL_LAUNCH(kc, grid_of(ceil_div(M * K, kThreads)), dim3(kThreads), stream, M * K, A, ab.get());
  FL_LAUNCH(kc, grid_of(ceil_div(K * N, kThreads)), dim3(kThreads), stream, K * N, Bm, bb.get());
  // the pipelined kernel on the Large tile (52-61 KB of shared memory: fits every sm_80+ device)
  using tc::Large;
  using tc::StepLarge;
  using BF = __nv_bfloat16;
  constexpr Precision kB = Precision::kBf16;
  const dim3 grid = grid_of(ceil_div(M, Large::kBM), ceil_div(N, Large::kBN));
  const BF *a = ab.get(), *b = bb.get();
  const tc::StepPlan sp = tc::plan_large_split(M, N, K, sms);
  if (splits) *splits = sp.splits;
  if (sp.splits >= 2) {  // as tc::gemm_p: the slices' partials on the split-capable tile, then their sum
    tc::split_frame(sp, grid, M, N, bias, C, ldc, device, stream, [&](dim3 g, int64_t ks, float* P0, int64_t st) {
      if (ak && bk)
        tc::launch_pipe<kB, true, true, StepLarge, BF>(g, stream, M, N, K, ks, a, sam, sak, b, sbk, sbn, nullptr, P0, N, st, device);
      else if (ak)
        tc::launch_pipe<kB, true, false, StepLarge, BF>(g, stream, M, N, K, ks, a, sam, sak, b, sbk, sbn, nullptr, P0, N, st, device);
      else if (bk)
        tc::launch_pipe<kB, false, true, StepLarge, BF>(g, stream, M, N, K, ks, a, sam, sak, b, sbk, sbn, nullptr, P0, N, st, device);
      else
        tc::launch_pipe<kB, false, false, StepLarge, BF>(g, stream, M, N, K, ks, a, sam, sak, b, sbk, sbn, nullptr, P0, N, st,
                                                         device);
    });
    return true;
  }
  if (ak && bk)
    tc::launch_pipe<kB, true, true, Large, BF>(grid, stream, M, N, K, K, a, sam, sak, b, sbk, sbn, bias, C, ldc, 0, device);
  else if (ak)
    tc::launch_pipe<kB, true, false, Large, BF>(grid, stream, M, N, K, K, a, sam, sak, b, sbk, sbn, bias, C, ldc, 0, device);
  else if (bk)
    tc::launch_pipe<kB, false, true, Large, BF>(grid, stream, M, N, K, K, a, sam, sak, b, sbk, sbn, bias, C, ldc, 0, device);
  else
    tc::launch_pipe<kB, false, false, Large, BF>(grid, stream, M, N, K, K, a, sam, sak, b, sbk, sbn, bias, C, ldc, 0,
                                                 device);
  return true;
}

// The large products in the call's precision: the fp32 SIMT GEMM (fp32, and always for
// double), or the tensor-core GEMM (tf32 / bf16 / tf32x3, float only; check_precision ran first).
// Returns whether a pipelined kernel ran (tc-gemm-v2, FASTLSTM_CUDA_GEMM_PIPELINE=1);
// *splits (tensor cores, when given): the k slices of the tensor-core GEMM (1: unsplit).
template <typename Real>
bool gemm_in(Precision p, int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak, const Real* Bm,
             int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc, cudaStream_t stream,
             int64_t* splits = nullptr) {
  if constexpr (std::is_same<Real, float>::value) {
    if (p != Precision::kFp32) {
      if (p == Precision::kBf16 && tc::pipeline_requested() &&
          gemm_bf16_copies<Real>(M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream, splits))
        return true;
      return tc::gemm<Real>(p, M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream, splits);
    }
  }
  gemm<Real>(M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream);
  return false;
}

// Throws when the precision cannot run: tf32 / bf16 / tf32x3 take float32 data and compute capability 8.0+.
template <typename Real>
void check_precision(Precision p, int device) {
  if (p == Precision::kFp32) return;
  if (p != Precision::kTf32 && p != Precision::kBf16 && p != Precision::kTf32x3)
    throw Error("precision: unknown value");
  if (!std::is_same<Real, float>::value)
    throw Error(std::string("precision '") + tc::precision_name(p) +
                "' takes float32 data (tensor cores with float32 accumulation); float64 runs in 'fp32' only");
  tc::require_tensor_cores(p, device);
}

// What the description of a call adds for its precision ("" for fp32). recurrent_tc: the
// recurrent products ran on the tensor cores too (kernel path "tensor").
inline std::string precision_note(Precision p, bool recurrent_tc, bool gemms_piped) {
  if (p == Precision::kFp32) return "";
  const std::string name = tc::precision_name(p);
  const std::string pipe = gemms_piped ? (p == Precision::kBf16 ? " + cp.async from bf16 copies" : " + cp.async") : "";
  return "; GEMMs: " + name + " tensor cores (wmma" + pipe + ", float32 accumulation), recurrent product " +
         (recurrent_tc ? name + " tensor cores" : std::string("fp32"));
}

// Kernel path "tensor": whether this call runs its per-step recurrent products on the tensor
// cores. Forced (KernelPath::kTensor): yes, or an Error where it cannot (precision fp32). Auto:
// with precision tf32 / bf16 / tf32x3 (float32 data), B >= kTensorMinBatch and B H^2 >= kTensorMinWork
// (bench/NOTES_GPU.md, "tensor-core recurrence", counts the work per step behind it).
// simt / persistent: never. fp32 never takes it.
inline bool tensor_auto(int64_t B, int64_t H) {
  return B >= kTensorMinBatch && H * H >= ceil_div(kTensorMinWork, B);  // (B H^2 could overflow)
}

// Kernel path "tiled" (forced only) takes the same route with fp32 SIMT step products: yes for
// float32 data, else an Error.
template <typename Real>
bool use_tensor_path(const RunOptions& opt, int64_t B, int64_t H, const char* what) {
  if (opt.path == KernelPath::kTiled) {
    if (!std::is_same<Real, float>::value)
      throw Error(std::string("the tiled recurrent ") + what +
                  " was asked for (kernel path 'tiled') but needs float32 data; this call's data are float64");
    return true;
  }
  const bool can = std::is_same<Real, float>::value && opt.precision != Precision::kFp32;
  if (opt.path == KernelPath::kTensor) {
    if (!can)
      throw Error(std::string("the tensor-core recurrent ") + what +
                  " was asked for (kernel path 'tensor') but needs precision 'tf32', 'bf16' or 'tf32x3' (float32 "
                  "data); this call's precision is 'fp32'");
    return true;
  }
  return opt.path == KernelPath::kAuto && can && tensor_auto(B, H);
}

// Auto takes the persistent kernels for at most this many batch rows. Measured on an H200
// (2026-11-27, bench/NOTES_GPU.md "Measured"), fp32, persistent against the per-step (simt)
// kernels, after the staging change (ad9cf60): forward 1.04 / 2.22 ms at B = 16, 1.56 / 2.39 at
// B = 32, 2.72 / 2.88 at B = 64 (H = 512), 9.5 / 12.8 at B = 32 (H = 256, T = 1000); forward +
// backward 2.9 / 9.9, 5.1 / 10.8, 9.1 / 12.4, 32.6 / 59.4 ms. Above 64 rows (every block stages
// all B rows each step) the per-step kernels: before that change they were 1.8x faster at B = 256
// (H = 1024); B = 65-256 after it, and H = 1024 at B = 17-64, are not measured yet.
constexpr int64_t kPersistentAutoMaxRows = 64;

// Auto takes the persistent kernels only for sequences of at least this many steps. A call of
// theirs pays a fixed cost (a cooperative launch, every block's weight slice loaded on chip) that
// the per-step kernels do not, which only their cheaper steps pay back; a streaming caller's
// T = 1 calls may be faster per step. 1 (any T) until measured: bench/gpu_persistent_ab.py times
// both paths at T = 1 .. 64 ("Short sequences") and bench/gpu_decide.py prints the T from which
// the persistent kernels are no slower (tests/test_cuda.py AUTO_PERSISTENT_MIN_STEPS mirrors it).
constexpr int64_t kPersistentAutoMinSteps = 1;

// The tagged exchange (persistent.cuh, stage_tagged) instead of grid barriers, when
// FASTLSTM_CUDA_EXCHANGE does not choose: for B <= kTaggedAutoMaxRows rows. 0 (never) until it
// is measured on a GPU (bench/NOTES_GPU.md, "Session 14": predicted to win at small B, where a
// step is latency-bound, and to lose from B ~ 32, where it doubles the staged bytes);
// bench/gpu_decide.py prints the measured ratios per B.
constexpr int64_t kTaggedAutoMaxRows = 0;

// The persistent plan for this call, or a plan that is not ok (with the reason) where the
// kernel path is simt, or auto with more than kPersistentAutoMaxRows rows or fewer than
// kPersistentAutoMinSteps steps. The tagged exchange
// where FASTLSTM_CUDA_EXCHANGE asks for it, or, unset, for B <= kTaggedAutoMaxRows (float32;
// its tags are 32-bit step numbers from 1, so T < 2^32 - 1).
template <typename Real>
persistent::Plan persistent_plan(bool backward, int64_t T, int64_t B, int64_t H, int device, KernelPath path,
                                 bool trace) {
  persistent::Plan pl;
  if (path == KernelPath::kSimt) return pl;
  if (path == KernelPath::kAuto && B > kPersistentAutoMaxRows) {
    pl.why = "auto: B = " + std::to_string(B) + " > " + std::to_string(kPersistentAutoMaxRows) +
             " rows, where the per-step kernels are faster";
    return pl;
  }
  if (path == KernelPath::kAuto && T < kPersistentAutoMinSteps) {
    pl.why = "auto: T = " + std::to_string(T) + " < " + std::to_string(kPersistentAutoMinSteps) +
             " steps, where the per-step kernels are faster";
    return pl;
  }
  const persistent::Exchange ex = persistent::exchange_requested();
  const bool tagged = (ex == persistent::Exchange::kTagged ||
                       (ex == persistent::Exchange::kAuto && B <= kTaggedAutoMaxRows)) &&
                      T < int64_t(0xFFFFFFFF);
  return persistent::plan<Real>(backward, B, H, device, trace, persistent::stage_ahead_requested(), tagged,
                                persistent::weights_in_registers_requested());
}

// The zeroed device scratch of one persistent launch, with the launch parameters' pointers to
// it set: the grid barrier's counter (barrier kernels), the tagged exchange's words (tagged
// kernels), the phase trace (traced launches); each empty where the launch has no use for it.
template <typename Real>
struct PersistentScratch {
  Workspace<unsigned long long> counter, xch, trace;
  template <typename Params>
  PersistentScratch(const persistent::Plan& pl, int64_t B, bool traced, int device, cudaStream_t stream,
                    Params& prm)
      : counter(pl.tagged ? 0 : 1, device, stream),
        xch(persistent::exchange_words<Real>(pl, B), device, stream),
        trace(traced ? pl.blocks * persistent::kTraceSlots : 0, device, stream) {
    auto zero = [stream](const Workspace<unsigned long long>& w, int64_t n) {
      if (n > 0) FL_CHECK(cudaMemsetAsync(w.get(), 0, sizeof(unsigned long long) * static_cast<size_t>(n), stream));
    };
    zero(counter, pl.tagged ? 0 : 1);
    zero(xch, persistent::exchange_words<Real>(pl, B));
    zero(trace, traced ? pl.blocks * persistent::kTraceSlots : 0);
    prm.barrier = counter.get();
    prm.xch = xch.get();
    prm.trace = trace.get();
  }
};

// Why the tensor path runs (for the description).
inline std::string tensor_why(const RunOptions& opt) {
  if (opt.path == KernelPath::kTensor) return "forced";
  return "auto: B >= " + std::to_string(kTensorMinBatch) + ", B*H^2 >= 2^25";
}

// Kernel path "tiled" (float32, any precision): each step's recurrent product h_{s-1} . R
// (forward) or dz_s . R^T (backward) as a split-k GEMM on the CUDA cores (simt_step_kernel,
// fp32 multiply-adds), then the tensor path's pointwise kernels. The plan: 64 x 128 tiles for
// M <= 64 rows, else 128 x 128; then as many k slices (at most kTiledMaxSplits and at most
// ceil(K / kTiledMinSliceK), so more than 64 k each; whole 8-k passes) as keep the grid within
// two blocks per SM (the
// kernel's occupancy: __launch_bounds__(kThreads, 2), 124 registers). bench/NOTES_GPU.md
// ("tiled-v1") counts it.
constexpr int64_t kTiledMaxSplits = 32;
constexpr int64_t kTiledMinSliceK = 128;

inline tc::StepPlan tiled_plan(int64_t M, int64_t N, int64_t K, int sm_count) {
  tc::StepPlan pl;
  pl.large = M > 64;
  const int64_t blocks = ceil_div(M, pl.large ? kBigM : 64) * ceil_div(N, kBigN);
  const int64_t target = 2 * static_cast<int64_t>(sm_count);
  int64_t want = blocks > 0 && blocks < target ? target / blocks : 1;
  want = imin(want, imin(kTiledMaxSplits, ceil_div(K, kTiledMinSliceK)));
  if (want < 1) want = 1;
  pl.kslice = ceil_div(ceil_div(K, want), kBigK) * kBigK;
  pl.splits = K > 0 ? ceil_div(K, pl.kslice) : 1;
  return pl;
}

// The partials C_z = A . B over k slice z of the plan (C_z = C + z M N, row-major M x N).
// Throws unless the slices are whole 8-k passes that cover K.
template <typename Real>
void tiled_step(const tc::StepPlan& pl, int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak,
                const Real* Bm, int64_t sbk, int64_t sbn, Real* C, cudaStream_t stream) {
  if constexpr (std::is_same<Real, float>::value) {
    if (pl.splits < 1 || (K > 0 && (pl.kslice < 1 || pl.kslice % kBigK != 0 || ceil_div(K, pl.kslice) != pl.splits)))
      throw Error("tiled step product: inconsistent k slices");
    if (pl.splits > 65535) throw Error("tiled step product: more than 65535 k slices");
    dim3 grid = grid_of(ceil_div(M, pl.large ? kBigM : 64), ceil_div(N, kBigN));
    if (empty_grid(grid)) return;
    grid.z = static_cast<unsigned>(pl.splits);
    const int64_t kslice = K > 0 ? pl.kslice : 0;
    auto kernel = pl.large ? simt_step_kernel<Real, 2> : simt_step_kernel<Real, 1>;
    FL_LAUNCH(kernel, grid, dim3(kThreads), stream, M, N, K, kslice, A, sam, sak, Bm, sbk, sbn, C);
  } else {
    (void)pl, (void)M, (void)N, (void)K, (void)A, (void)sam, (void)sak, (void)Bm, (void)sbk, (void)sbn, (void)C,
        (void)stream;
    throw Error("the tiled step product takes float32 data");
  }
}

// Split-K: where tiled_plan makes two or more k slices (the 128 x 128 or 64 x 128 tiles times the
// slices fill two blocks per SM; more than 64 k per slice) and that grid has at least
// as many blocks as gemm_kernel's, the slices' partial products by simt_step_kernel into a
// workspace, then split_sum_kernel adds them in order (+ bias) into C. "" (nothing run) otherwise,
// or where split-K is switched off.
template <typename Real>
std::string gemm_split_k(int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak, const Real* Bm,
                         int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc, int device, int sms,
                         cudaStream_t stream) {
  if (!std::is_same<Real, float>::value || M <= 0 || N <= 0 || !split_k_requested()) return "";
  const tc::StepPlan pl = tiled_plan(M, N, K, sms);
  // never fewer blocks than gemm_kernel's 64 x 64 grid (a shallow K over a few 128-wide tiles
  // would trade its parallelism for the bigger tile)
  const int64_t blocks = ceil_div(M, pl.large ? kBigM : 64) * ceil_div(N, kBigN) * pl.splits;
  if (pl.splits < 2 || blocks < ceil_div(M, kTileM) * ceil_div(N, kTileN)) return "";
  Workspace<Real> parts(pl.splits * M * N, device, stream);
  poison(parts.get(), pl.splits * M * N, stream);
  tiled_step<Real>(pl, M, N, K, A, sam, sak, Bm, sbk, sbn, parts.get(), stream);
  auto kr = split_sum_kernel<Real>;
  FL_LAUNCH(kr, grid_of(ceil_div(M * N, kThreads)), dim3(kThreads), stream, M, N, pl.splits,
            static_cast<const Real*>(parts.get()), bias, C, ldc);
  return "simt gemm (fp32, " + pl.describe() + ")";
}

// tc::plan_step (tiled: tiled_plan) for an M x N x K step product on `device` (its SM count).
inline tc::StepPlan step_plan_on(int device, int64_t M, int64_t N, int64_t K, bool tiled = false) {
  int sms = 0;
  FL_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return tiled ? tiled_plan(M, N, K, sms) : tc::plan_step(M, N, K, sms);
}

// The description of a tiled recurrence (kernel path "tiled").
inline std::string tiled_ran(const char* what, int64_t T, const char* launches, const tc::StepPlan& pl) {
  return std::string("tiled recurrent ") + what + " (" + std::to_string(T) + launches +
         ", fp32 simt split-k GEMM, " + pl.describe() + ", forced)";
}

// Forward recurrence on kernel path "tensor" (float32; use_tensor_path said yes): per step
// s, Z = h_{s-1} . R on the tensor cores (tc::step_gemm: the plan's tile and k slices; Z holds
// one partial (B, 4H) per slice), then forward_pointwise_kernel (the partials added in order,
// + P, the gates, c, h, y, gates, cells). Returns the description.
template <typename Real>
std::string forward_tensor(const ForwardArgs<Real>& a, const Real* P, Real* hbuf0, Real* hbuf1, int device,
                           cudaStream_t stream, const RunOptions& opt) {
  if constexpr (std::is_same<Real, float>::value) {
    const int64_t T = a.dims.T, B = a.dims.B, H = a.dims.H, G = 4 * H;
    const bool tiled = opt.path == KernelPath::kTiled;
    const tc::StepPlan pl = step_plan_on(device, B, G, H, tiled);
    Workspace<Real> z(pl.splits * B * G, device, stream);
    poison(z.get(), pl.splits * B * G, stream);
    const dim3 grid = grid_of(ceil_div(B * H, kThreads));
    auto kp = forward_pointwise_kernel<Real>;
    // bf16 with the pipeline asked for: the products read bf16 copies of R (made once here) and
    // of h (written by each step's pointwise kernel), copied by the pipelined kernel
    const bool bf16_ops = !tiled && opt.precision == Precision::kBf16 && tc::pipeline_requested() && H % 8 == 0;
    Workspace<__nv_bfloat16> rb(bf16_ops ? H * G : 0, device, stream), hb(bf16_ops ? 2 * B * H : 0, device, stream);
    poison(rb.get(), bf16_ops ? H * G : 0, stream);  // 0xFFFF: a bf16 NaN
    poison(hb.get(), bf16_ops ? 2 * B * H : 0, stream);
    __nv_bfloat16* hb0 = hb.get();
    __nv_bfloat16* hb1 = hb.get() ? hb.get() + B * H : nullptr;
    const bool bf16_path = bf16_ops && tc::pipe_operand_ok(true, rb.get(), G, H, 1, G) &&
                           tc::pipe_operand_ok(false, hb0, B, H, H, 1) &&
                           tc::pipe_operand_ok(false, hb1, B, H, H, 1);
    if (bf16_path) {
      auto kc = to_bf16_kernel<Real>;
      FL_LAUNCH(kc, grid_of(ceil_div(H * G, kThreads)), dim3(kThreads), stream, H * G, a.recurrent_kernel, rb.get());
      FL_LAUNCH(kc, grid, dim3(kThreads), stream, B * H, static_cast<const Real*>(hbuf0), hb0);
    }
    bool piped = T > 0;
    for (int64_t s = 0; s < T; ++s) {
      const Real* h_prev = (s % 2 == 0) ? hbuf0 : hbuf1;
      Real* h_next = (s % 2 == 0) ? hbuf1 : hbuf0;
      __nv_bfloat16* hb_next = nullptr;
      if (tiled) {
        tiled_step<Real>(pl, B, G, H, h_prev, H, 1, a.recurrent_kernel, G, 1, z.get(), stream);
      } else if (bf16_path) {
        const __nv_bfloat16* hb_prev = (s % 2 == 0) ? hb0 : hb1;
        hb_next = (s % 2 == 0) ? hb1 : hb0;
        tc::step_gemm_bf16(pl, B, G, H, hb_prev, H, rb.get(), G, 1, z.get(), stream);
      } else {
        piped &= tc::step_gemm<Real>(opt.precision, pl, B, G, H, h_prev, H, 1, a.recurrent_kernel, G, 1, z.get(),
                                     stream);
      }
      FL_LAUNCH(kp, grid, dim3(kThreads), stream, s, T, B, H, a.lengths, a.reverse, P,
                static_cast<const Real*>(z.get()), pl.splits, h_prev, h_next, a.c_n, a.y, a.gates, a.cells, hb_next);
    }
    if (tiled) return tiled_ran("forward", T, " steps x 2 launches", pl);
    return "tensor-core recurrent forward (" + std::to_string(T) + " steps x 2 launches, " +
           tc::precision_name(opt.precision) + (piped ? " wmma + cp.async, " : " wmma, ") +
           (bf16_path ? "bf16 copies of R and h, " : "") + pl.describe() + ", " + tensor_why(opt) + ")";
  } else {
    (void)a, (void)P, (void)hbuf0, (void)hbuf1, (void)device, (void)stream, (void)opt;
    throw Error("the tensor-core recurrent forward takes float32 data");
  }
}

// Backward recurrence on kernel path "tensor" (float32): per step s = T-1 .. 0,
// backward_gates_kernel (its running dh from the previous step's partials, this step's dz rows
// also into dz_step), then dh partials = dz_step . R^T on the tensor cores (R read transposed
// through strides: no R^T copy); after step 0, dh_merge_kernel writes dh0. Returns the
// description.
template <typename Real>
std::string backward_tensor(const BackwardArgs<Real>& a, Real* dz, Real* hprev, int device, cudaStream_t stream,
                            const RunOptions& opt) {
  if constexpr (std::is_same<Real, float>::value) {
    const int64_t T = a.dims.T, B = a.dims.B, H = a.dims.H, G = 4 * H;
    const bool tiled = opt.path == KernelPath::kTiled;
    const tc::StepPlan pl = step_plan_on(device, B, H, G, tiled);
    Workspace<Real> parts(pl.splits * B * H, device, stream);
    poison(parts.get(), pl.splits * B * H, stream);
    // bf16 with the pipeline asked for: the products read bf16 copies of R (made once here) and
    // of the step's dz rows (written by backward_gates_kernel instead of the float32 ones)
    const bool bf16_ops = !tiled && opt.precision == Precision::kBf16 && tc::pipeline_requested() && H % 8 == 0;
    Workspace<__nv_bfloat16> rb(bf16_ops ? H * G : 0, device, stream), dzb(bf16_ops ? B * G : 0, device, stream);
    const bool bf16_path = bf16_ops && tc::pipe_operand_ok(false, rb.get(), H, G, G, 1) &&
                           tc::pipe_operand_ok(false, dzb.get(), B, G, G, 1);
    poison(rb.get(), bf16_ops ? H * G : 0, stream);  // 0xFFFF: a bf16 NaN
    poison(dzb.get(), bf16_ops ? B * G : 0, stream);
    Workspace<Real> dz_step(bf16_path ? 0 : B * G, device, stream);
    poison(dz_step.get(), bf16_path ? 0 : B * G, stream);
    if (bf16_path) {
      auto kc = to_bf16_kernel<Real>;
      FL_LAUNCH(kc, grid_of(ceil_div(H * G, kThreads)), dim3(kThreads), stream, H * G, a.recurrent_kernel, rb.get());
    }
    const dim3 grid = grid_of(ceil_div(B * H, kThreads));
    auto k1 = backward_gates_kernel<Real>;
    bool piped = T > 0;
    for (int64_t s = T - 1; s >= 0; --s) {
      FL_LAUNCH(k1, grid, dim3(kThreads), stream, s, T, B, H, a.lengths, a.reverse, a.gates, a.cells, a.h0, a.c0,
                a.dy, static_cast<const Real*>(a.dh0), a.dc0, dz, hprev, static_cast<const Real*>(parts.get()),
                pl.splits, dz_step.get(), bf16_path ? dzb.get() : nullptr);
      if (tiled)  // dz_s . R^T: R read transposed through strides
        tiled_step<Real>(pl, B, H, G, dz_step.get(), G, 1, a.recurrent_kernel, 1, G, parts.get(), stream);
      else if (bf16_path)
        tc::step_gemm_bf16(pl, B, H, G, dzb.get(), G, rb.get(), 1, G, parts.get(), stream);
      else
        piped &= tc::step_gemm<Real>(opt.precision, pl, B, H, G, dz_step.get(), G, 1, a.recurrent_kernel, 1, G,
                                     parts.get(), stream);
    }
    auto km = dh_merge_kernel<Real>;
    FL_LAUNCH(km, grid, dim3(kThreads), stream, T, B, H, a.lengths, static_cast<const Real*>(parts.get()), pl.splits,
              a.dh0);
    if (tiled) return tiled_ran("backward", T, " steps x 2 launches + 1", pl);
    return "tensor-core recurrent backward (" + std::to_string(T) + " steps x 2 launches + 1, " +
           tc::precision_name(opt.precision) + (piped ? " wmma + cp.async, " : " wmma, ") +
           (bf16_path ? "bf16 copies of R and dz, " : "") + pl.describe() + ", " + tensor_why(opt) + ")";
  } else {
    (void)a, (void)dz, (void)hprev, (void)device, (void)stream, (void)opt;
    throw Error("the tensor-core recurrent backward takes float32 data");
  }
}

template <typename Real, int BB>
void forward_steps(const ForwardArgs<Real>& a, const Real* P, Real* hbuf0, Real* hbuf1, cudaStream_t stream) {
  const int64_t T = a.dims.T, B = a.dims.B, H = a.dims.H;
  const dim3 grid = grid_of(ceil_div(H, kUnits), ceil_div(B, BB));
  auto kernel = forward_step_kernel<Real, BB>;
  for (int64_t s = 0; s < T; ++s) {
    Real* h_prev = (s % 2 == 0) ? hbuf0 : hbuf1;
    Real* h_next = (s % 2 == 0) ? hbuf1 : hbuf0;
    FL_LAUNCH(kernel, grid, dim3(kThreads), stream, s, T, B, H, a.lengths, a.reverse, P, a.recurrent_kernel,
              static_cast<const Real*>(h_prev), h_next, a.c_n, a.y, a.gates, a.cells);
  }
}

template <typename Real>
std::string forward_impl(const ForwardArgs<Real>& a, int device, cudaStream_t stream, const RunOptions& opt) {
  check_dims(a.dims);
  if (a.batch_major) throw Error("batch_major: the CUDA kernels take time-major x, y, dy and dx only (lstm.h)");
  const int64_t T = a.dims.T, B = a.dims.B, I = a.dims.I, H = a.dims.H, G = 4 * H;
  const int64_t TB = T * B;
  check_precision<Real>(opt.precision, device);
  const bool tensor = use_tensor_path<Real>(opt, B, H, "forward");  // (throws when forced where it cannot run)
  need(a.x, TB * I, "x", device);
  need(a.kernel, I * G, "kernel", device);
  need(a.recurrent_kernel, H * G, "recurrent_kernel", device);
  maybe(a.bias, G, "bias", device);
  maybe(a.h0, B * H, "h0", device);
  maybe(a.c0, B * H, "c0", device);
  maybe(a.lengths, B, "lengths", device);
  need(a.y, TB * H, "y", device);
  need(a.h_n, B * H, "h_n", device);
  need(a.c_n, B * H, "c_n", device);
  if ((a.gates == nullptr) != (a.cells == nullptr)) throw Error("gates, cells: give both or neither");
  maybe(a.gates, TB * G, "gates", device);
  maybe(a.cells, TB * H, "cells", device);
  const bool training = a.gates != nullptr;

  poison(a.y, TB * H, stream);
  poison(a.h_n, B * H, stream);
  poison(a.c_n, B * H, stream);
  poison(a.gates, TB * G, stream);
  poison(a.cells, TB * H, stream);

  Workspace<Real> proj(training ? 0 : TB * G, device, stream);
  Workspace<Real> hbuf(2 * B * H, device, stream);
  Real* P = training ? a.gates : proj.get();
  poison(proj.get(), training ? 0 : TB * G, stream);
  poison(hbuf.get(), 2 * B * H, stream);
  Real* h0buf = hbuf.get();
  Real* h1buf = hbuf.get() ? hbuf.get() + B * H : nullptr;

  copy_or_zero(h0buf, a.h0, B * H, stream);
  copy_or_zero(a.c_n, a.c0, B * H, stream);  // c_n is the running cell state
  // P = x . kernel + bias for all T * B rows
  const bool gemms_piped = gemm_in<Real>(opt.precision, TB, G, I, a.x, I, 1, a.kernel, G, 1, a.bias, P, G, stream);
  std::string ran = "none (no time steps or no batch rows)";
  if (B * H > 0 && T > 0 && tensor) {
    ran = forward_tensor<Real>(a, P, h0buf, h1buf, device, stream, opt);
  } else if (B * H > 0 && T > 0) {
    const bool trace = persistent::trace_requested();
    persistent::Plan pl = persistent_plan<Real>(false, T, B, H, device, opt.path, trace);
    if (pl.ok) {
      persistent::ForwardParams<Real> prm{T,      B,  H,       pl.units, pl.ng,   a.lengths, a.reverse,
                                          P,      a.recurrent_kernel, h0buf,    h1buf,     a.c_n,
                                          a.y,    a.gates, a.cells, nullptr};
      persistent::set_load_switches<Real>(pl, prm, false, B, H, device);
      const PersistentScratch<Real> scratch(pl, B, trace, device, stream, prm);
      persistent::launch_forward<Real>(pl, prm, stream);
      ran = persistent::describe("persistent forward", pl, sizeof(Real));
      if (trace) ran += persistent::trace_summary(scratch.trace.get(), pl.blocks, T, stream);
    } else {
      if (opt.path == KernelPath::kPersistent)
        throw Error("the persistent forward kernel was asked for (kernel path 'persistent') but cannot run here: " +
                    pl.why);
      if (B <= kSmallRows)
        forward_steps<Real, kSmallRows>(a, P, h0buf, h1buf, stream);
      else
        forward_steps<Real, kRows>(a, P, h0buf, h1buf, stream);
      ran = std::string("simt forward (") + std::to_string(T) + " step launches" +
            (opt.path == KernelPath::kSimt ? ", forced" : ", persistent not used: " + pl.why) + ")";
    }
  }
  // after T steps the state is in h0buf when T is even, else in h1buf
  if (B * H > 0)
    FL_CHECK(cudaMemcpyAsync(a.h_n, (T % 2 == 0) ? h0buf : h1buf, static_cast<size_t>(B * H) * sizeof(Real),
                             cudaMemcpyDeviceToDevice, stream));
  const bool recurrent_tc = tensor && opt.path != KernelPath::kTiled && B * H > 0 && T > 0;
  return ran + precision_note(opt.precision, recurrent_tc, gemms_piped);
}

template <typename Real, int BB>
void backward_steps(const BackwardArgs<Real>& a, Real* dz, Real* hprev, const Real* RT, cudaStream_t stream) {
  const int64_t T = a.dims.T, B = a.dims.B, H = a.dims.H;
  const dim3 g1 = grid_of(ceil_div(B * H, kThreads));
  const dim3 g2 = grid_of(ceil_div(H, kCols), ceil_div(B, BB));
  auto k1 = backward_gates_kernel<Real>;
  auto k2 = backward_dh_kernel<Real, BB>;
  for (int64_t s = T - 1; s >= 0; --s) {
    FL_LAUNCH(k1, g1, dim3(kThreads), stream, s, T, B, H, a.lengths, a.reverse, a.gates, a.cells, a.h0, a.c0,
              a.dy, static_cast<const Real*>(a.dh0), a.dc0, dz, hprev, static_cast<const Real*>(nullptr), int64_t(0),
              static_cast<Real*>(nullptr), static_cast<__nv_bfloat16*>(nullptr));
    FL_LAUNCH(k2, g2, dim3(kThreads), stream, s, T, B, H, a.lengths, a.reverse, static_cast<const Real*>(dz), RT,
              a.dh0);
  }
}

template <typename Real>
std::string backward_impl(const BackwardArgs<Real>& a, int device, cudaStream_t stream, const RunOptions& opt) {
  check_dims(a.dims);
  if (a.batch_major) throw Error("batch_major: the CUDA kernels take time-major x, y, dy and dx only (lstm.h)");
  const int64_t T = a.dims.T, B = a.dims.B, I = a.dims.I, H = a.dims.H, G = 4 * H;
  const int64_t TB = T * B;
  check_precision<Real>(opt.precision, device);
  const bool want_tensor = use_tensor_path<Real>(opt, B, H, "backward");  // (throws when forced where it cannot run)
  need(a.x, TB * I, "x", device);
  need(a.kernel, I * G, "kernel", device);
  need(a.recurrent_kernel, H * G, "recurrent_kernel", device);
  maybe(a.h0, B * H, "h0", device);
  maybe(a.c0, B * H, "c0", device);
  maybe(a.lengths, B, "lengths", device);
  need(a.gates, TB * G, "gates", device);
  need(a.cells, TB * H, "cells", device);
  maybe(a.dy, TB * H, "dy", device);
  maybe(a.dh_n, B * H, "dh_n", device);
  maybe(a.dc_n, B * H, "dc_n", device);
  need(a.dx, TB * I, "dx", device);
  need(a.dh0, B * H, "dh0", device);
  need(a.dc0, B * H, "dc0", device);
  need(a.dkernel, I * G, "dkernel", device);
  need(a.drecurrent_kernel, H * G, "drecurrent_kernel", device);
  maybe(a.dbias, G, "dbias", device);

  poison(a.dx, TB * I, stream);
  poison(a.dh0, B * H, stream);
  poison(a.dc0, B * H, stream);
  poison(a.dkernel, I * G, stream);
  poison(a.drecurrent_kernel, H * G, stream);
  poison(a.dbias, G, stream);

  Workspace<Real> dz(TB * G, device, stream);     // (T, B, 4H) gate gradients by time position
  Workspace<Real> hprev(TB * H, device, stream);  // (T, B, H)  h_{t-1} by time position
  const bool tensor = T > 0 && B > 0 && want_tensor;
  persistent::Plan pl;
  const bool trace = persistent::trace_requested();
  if (T > 0 && B > 0 && !tensor) pl = persistent_plan<Real>(true, T, B, H, device, opt.path, trace);
  if (T > 0 && B > 0 && !tensor && !pl.ok && opt.path == KernelPath::kPersistent)
    throw Error("the persistent backward kernel was asked for (kernel path 'persistent') but cannot run here: " +
                pl.why);
  const bool use_rt = T > 0 && B > 0 && !tensor && !pl.ok;
  Workspace<Real> rt(use_rt ? G * H : 0, device, stream);  // R^T (4H, H), per-step kernels only
  Workspace<Real> xm(a.lengths ? TB * I : 0, device, stream);       // x, padding zeroed
  poison(dz.get(), TB * G, stream);
  poison(hprev.get(), TB * H, stream);
  poison(rt.get(), use_rt ? G * H : 0, stream);
  poison(xm.get(), a.lengths ? TB * I : 0, stream);

  // dh0 / dc0 hold the running dh / dc: they start as dh_n / dc_n.
  copy_or_zero(a.dh0, a.dh_n, B * H, stream);
  copy_or_zero(a.dc0, a.dc_n, B * H, stream);
  std::string ran = "none (no time steps or no batch rows)";
  if (tensor) {
    ran = backward_tensor<Real>(a, dz.get(), hprev.get(), device, stream, opt);
  } else if (pl.ok) {
    persistent::BackwardParams<Real> prm{T,       B,      H,     pl.units,   pl.ng,   a.lengths,
                                         a.reverse, a.recurrent_kernel, a.gates, a.cells, a.h0,
                                         a.c0,    a.dy,   a.dh0, a.dc0,      dz.get(), hprev.get(),
                                         nullptr};
    persistent::set_load_switches<Real>(pl, prm, true, B, H, device);
    const PersistentScratch<Real> scratch(pl, B, trace, device, stream, prm);
    persistent::launch_backward<Real>(pl, prm, stream);
    ran = persistent::describe("persistent backward", pl, sizeof(Real));
    if (trace) ran += persistent::trace_summary(scratch.trace.get(), pl.blocks, T, stream);
  } else if (T > 0 && B > 0) {
    auto kt = transpose_kernel<Real>;
    FL_LAUNCH(kt, grid_of(ceil_div(H * G, kThreads)), dim3(kThreads), stream, H, G, a.recurrent_kernel, rt.get());
    if (B <= kSmallRows)
      backward_steps<Real, kSmallRows>(a, dz.get(), hprev.get(), rt.get(), stream);
    else
      backward_steps<Real, kRows>(a, dz.get(), hprev.get(), rt.get(), stream);
    ran = std::string("simt backward (") + std::to_string(2 * T) + " step launches" +
          (opt.path == KernelPath::kSimt ? ", forced" : ", persistent not used: " + pl.why) + ")";
  }
  const Real* x_valid = a.x;
  if (a.lengths && TB * I > 0) {
    auto km = mask_rows_kernel<Real>;
    FL_LAUNCH(km, grid_of(ceil_div(TB * I, kThreads)), dim3(kThreads), stream, T, B, I, a.lengths, a.x, xm.get());
    x_valid = xm.get();
  }
  // dkernel (I, 4H) = x^T . dz       A(i, r) = x[r * I + i]
  // (tf32 / bf16 / tf32x3: on the tensor cores, the operands rounded or split; dbias stays fp32)
  const Precision pr = opt.precision;
  bool gemms_piped = gemm_in<Real>(pr, I, G, TB, x_valid, 1, I, dz.get(), G, 1, nullptr, a.dkernel, G, stream);
  // drecurrent (H, 4H) = h_prev^T . dz
  gemms_piped |= gemm_in<Real>(pr, H, G, TB, hprev.get(), 1, H, dz.get(), G, 1, nullptr, a.drecurrent_kernel, G, stream);
  // dx (T*B, I) = dz . kernel^T      B(c, i) = kernel[i * 4H + c]
  gemms_piped |= gemm_in<Real>(pr, TB, I, G, dz.get(), G, 1, a.kernel, 1, G, nullptr, a.dx, I, stream);
  if (a.dbias) colsum<Real>(TB, G, dz.get(), a.dbias, device, stream);
  return ran + precision_note(pr, tensor && opt.path != KernelPath::kTiled, gemms_piped);
}

// matmul() of api.h (tests): the LSTM's GEMM in precision p on device pointers (Real = float;
// a template so that it compiles only where it is used).
template <typename Real>
std::string matmul_impl(Precision p, int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak,
                        const Real* Bm, int64_t sbk, int64_t sbn, const Real* bias, Real* C, int64_t ldc, int device,
                        cudaStream_t stream) {
  check_precision<Real>(p, device);
  if (M < 0 || N < 0 || K < 0 || ldc < N) throw Error("matmul: bad dimensions");
  need(A, M * K, "A", device);
  need(Bm, K * N, "B", device);
  maybe(bias, N, "bias", device);
  need(C, M * N, "C", device);
  if (p == Precision::kFp32) return gemm<Real>(M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream);
  int64_t splits = 1;
  const bool piped = gemm_in<Real>(p, M, N, K, A, sam, sak, Bm, sbk, sbn, bias, C, ldc, stream, &splits);
  return std::string("tensor-core gemm (") + tc::precision_name(p) +
         (piped ? (p == Precision::kBf16 ? ", wmma + cp.async, bf16 copies" : ", wmma + cp.async") : ", wmma") +
         (splits > 1 ? ", 128x128 tiles x " + std::to_string(splits) + " k-slices)" : ")");
}

// step_matmul() of api.h (benchmarks, tests; Real = float).
template <typename Real>
std::string step_matmul_impl(Precision p, int64_t M, int64_t N, int64_t K, const Real* A, int64_t sam, int64_t sak,
                             const Real* Bm, int64_t sbk, int64_t sbn, Real* C, int64_t c_elems, int64_t repeat,
                             int device, cudaStream_t stream, int64_t kslice) {
  check_precision<Real>(p, device);
  if (M < 0 || N < 0 || K < 0 || repeat < 1) throw Error("step_matmul: bad dimensions or repeat");
  need(A, M * K, "A", device);
  need(Bm, K * N, "B", device);
  const bool tiled = p == Precision::kFp32;  // kernel path "tiled"'s product
  tc::StepPlan pl = step_plan_on(device, M, N, K, tiled);
  if (kslice < 0) throw Error("step_matmul: kslice must be >= 0 (0: the plan's)");
  const int64_t pass = tiled ? kBigK : tc::kBK;  // k per pass of the kernel
  if (kslice % pass != 0)
    throw Error("step_matmul: kslice must be a multiple of " + std::to_string(pass) + " (k per pass), got " +
                std::to_string(kslice));
  if (kslice > 0 && K > 0) {  // another slicing than the plan's (checked by the launchers too)
    pl.kslice = kslice;
    pl.splits = ceil_div(K, kslice);
  }
  if (c_elems < pl.splits * M * N)
    throw Error("step_matmul: C holds " + std::to_string(c_elems) + " elements, the plan (" + pl.describe() +
                ") needs " + std::to_string(pl.splits * M * N));
  need(C, pl.splits * M * N, "C", device);
  if (tiled) {
    for (int64_t r = 0; r < repeat; ++r) tiled_step<Real>(pl, M, N, K, A, sam, sak, Bm, sbk, sbn, C, stream);
    return pl.describe() + " (simt)";
  }
  bool piped = true;
  for (int64_t r = 0; r < repeat; ++r) piped &= tc::step_gemm<Real>(p, pl, M, N, K, A, sam, sak, Bm, sbk, sbn, C, stream);
  return pl.describe() + (piped ? " (cp.async)" : "");
}

}  // namespace impl

template <typename Real>
std::string forward(const ForwardArgs<Real>& a, int device, std::uintptr_t stream, const RunOptions& opt) {
  impl::DeviceGuard guard(device);
  return impl::forward_impl<Real>(a, device, reinterpret_cast<cudaStream_t>(stream), opt);
}

template <typename Real>
std::string backward(const BackwardArgs<Real>& a, int device, std::uintptr_t stream, const RunOptions& opt) {
  impl::DeviceGuard guard(device);
  return impl::backward_impl<Real>(a, device, reinterpret_cast<cudaStream_t>(stream), opt);
}

}  // namespace cuda
}  // namespace fastlstm
