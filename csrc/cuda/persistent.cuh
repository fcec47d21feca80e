// fastlstm's persistent recurrent kernels (included by lstm_impl.cuh after its helpers, which
// they use: seq_len, fl_sigmoid, fl_tanh, imin, ceil_div, grid_of).
//
// One cooperative launch runs all T steps of the recurrence. Block k owns U hidden units
// j in [k U, (k + 1) U) and keeps its slice of the recurrent weights in shared memory for the
// whole launch (loaded once); between steps every block waits at one grid-wide barrier (a
// monotonic 64-bit arrival counter: red.release.gpu by one thread per block, ld.acquire.gpu
// polling; no other atomics, so nothing depends on arrival order). Same summation order every
// run: deterministic.
//
// Forward (persistent_forward_kernel), per step s, per chunk of BC batch rows:
//   stage h_{s-1} rows into shared memory (read with __ldcg: written by other blocks in the
//   previous step), z = h . R_slice (4U columns: gates i, f, g, o of the block's units), the
//   gate nonlinearities and the cell update (one thread per (row, unit)), writes y, h_s, c,
//   gates, cells exactly like forward_step_kernel; then the grid barrier.
// Backward (persistent_backward_kernel), per step s = T-1 .. 0:
//   phase A: gate gradients of the block's units for every row (dz, dc, h_{t-1}; what
//   backward_gates_kernel does), grid barrier, phase B: dh = dz_t . R^T for the block's units
//   (K = 4H, the block's U rows of R resident in shared memory), per chunk of BC rows.
//
// The product (block_product): thread tid takes column c = tid % C and k-slice
// ks = tid / C (KS = 256 / C slices); it sums vector groups g = ks, ks + KS, ... (KV = 16 bytes
// of k each, in increasing k) for BC rows into registers; the KS partial sums of each
// (row, column) are then added by a fixed tree in shared memory. Shared memory (dynamic):
//   W  [NG][C]   vectors   the weight slice: W[g][c] = k-values g*KV .. g*KV+KV-1 of column c
//   X  [BC][NG]  vectors   the staged rows (h, or dz)
//   red[BC][KS][C] scalars partial sums; red[bb][0][c] = red[bb * 256 + c] the result
// with NG = ceil(K / KV); entries past K and columns past H are zeros.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/compat.cuh"

namespace fastlstm {
namespace cuda {
namespace impl {
namespace persistent {

constexpr int kThreads = 256;

template <typename Real>
struct Vec;
template <>
struct Vec<float> {
  using type = float4;
  static constexpr int n = 4;
};
template <>
struct Vec<double> {
  using type = double2;
  static constexpr int n = 2;
};

__device__ __forceinline__ float dot_add(float acc, const float4& x, const float4& w) {
  acc += x.x * w.x;
  acc += x.y * w.y;
  acc += x.z * w.z;
  acc += x.w * w.w;
  return acc;
}
__device__ __forceinline__ double dot_add(double acc, const double2& x, const double2& w) {
  acc += x.x * w.x;
  acc += x.y * w.y;
  return acc;
}

// The reduction tree of block_product: once every partial sum is in red[bb][ks][c] (and a
// barrier has made them visible), red[bb * 256 + c] becomes the sum over the KS slices, added by
// a fixed tree. Every thread of the block must call it; it ends with a barrier.
// With C >= 16 columns (KS <= 16 slices: BC C >= 256 outputs at BC = 16) the tree runs in
// registers instead: output o = (bb, c) (o = tid, tid + 256, ...) loads its KS partial sums and
// adds them level by level exactly as the shared-memory tree does (slot k += slot k + stride,
// strides KS/2 .. 1), then writes the sum to red[bb * 256 + c]: one barrier instead of one per
// level (4 at KS = 16), and no intermediate stores. The same additions in the same order: the
// same bits. (With fewer columns, e.g. the backward's C = U <= 8, there are fewer outputs than
// threads and their partials would share banks: the shared-memory tree stays.)
template <typename Real, int BC, int KS>
__device__ __forceinline__ void block_reduce_registers(Real* red) {
  constexpr int C = kThreads / KS;
  for (int o = static_cast<int>(threadIdx.x); o < BC * C; o += kThreads) {
    const int bb = o / C, c = o % C;
    Real* p = red + bb * kThreads + c;  // slot k: p[k C]
    Real v[KS];
#pragma unroll
    for (int k = 0; k < KS; ++k) v[k] = p[k * C];
#pragma unroll
    for (int stride = KS / 2; stride > 0; stride /= 2)
#pragma unroll
      for (int k = 0; k < stride; ++k) v[k] += v[k + stride];
    p[0] = v[0];  // (only this thread reads output o's slots)
  }
  __syncthreads();  // the sums visible to the block
}
template <typename Real, int BC>
__device__ __forceinline__ void block_reduce_tree(Real* red, int C, bool regs) {
  const int tid = static_cast<int>(threadIdx.x);
  const int ks = tid / C, KS = kThreads / C;
  if (regs && C >= 16 && KS * C == kThreads) {  // (C = 4U or U: a power of two, plan)
    switch (KS) {
      case 16:
        block_reduce_registers<Real, BC, 16>(red);
        return;
      case 8:
        block_reduce_registers<Real, BC, 8>(red);
        return;
      case 4:
        block_reduce_registers<Real, BC, 4>(red);
        return;
      case 2:
        block_reduce_registers<Real, BC, 2>(red);
        return;
      default:
        return;  // KS = 1: the partial sums are the sums
    }
  }
  for (int stride = KS / 2; stride > 0; stride /= 2) {
    if (ks < stride) {
#pragma unroll
      for (int bb = 0; bb < BC; ++bb) red[bb * kThreads + tid] += red[bb * kThreads + tid + stride * C];
    }
    __syncthreads();  // this level complete before the next reads it
  }
}
// acc holds this thread's partial sums (k-slice ks of column c) for BC rows: into red, then the
// tree.
template <typename Real, int BC>
__device__ __forceinline__ void block_reduce(const Real (&acc)[BC], Real* red, int C, bool regs) {
  const int tid = static_cast<int>(threadIdx.x);
  // red[bb][ks][c]: consecutive threads write consecutive words (ks * C + c == tid)
#pragma unroll
  for (int bb = 0; bb < BC; ++bb) red[bb * kThreads + tid] = acc[bb];
  __syncthreads();  // all partial sums written
  block_reduce_tree<Real, BC>(red, C, regs);
}

// red[bb * 256 + c] = sum over k of X[bb][k] * W[k][c], for every bb < BC and c < C. Every
// thread of the block must call it; the caller has staged W and X and synchronised. Ends with
// a barrier (the result is visible to the whole block). `mark` is called between the
// partial sums and their reduction (the phase trace's product / reduce boundary).
template <typename Real, int BC, class Mark>
__device__ __forceinline__ void block_product(const typename Vec<Real>::type* W, const typename Vec<Real>::type* X,
                                              Real* red, int C, int64_t NG, bool regs, Mark&& mark) {
  using V = typename Vec<Real>::type;
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid % C, ks = tid / C, KS = kThreads / C;
  Real acc[BC];
#pragma unroll
  for (int bb = 0; bb < BC; ++bb) acc[bb] = Real(0);
  for (int64_t g = ks; g < NG; g += KS) {
    const V w = W[g * C + c];
#pragma unroll
    for (int bb = 0; bb < BC; ++bb) acc[bb] = dot_add(acc[bb], X[bb * NG + g], w);
  }
  mark();
  block_reduce<Real, BC>(acc, red, C, regs);
}

// block_product with the outputs blocked two columns x BC / 2 rows per thread, for BC >= 8 and
// C >= 16 (the forward from H = 512 at 128 blocks; C = 4U is a power of two). block_product
// gives each thread one column and all BC rows: per vector group 1 weight load and BC row loads
// (each a broadcast that fetches 16-32 bytes) for 4 BC multiply-adds, 17 loads per 64 FFMA at
// BC = 16. Here thread (cg, ks, rg) = (tid % CG, tid / CG % KS, tid / 128), CG = C / 2, takes
// columns cg and cg + CG of k-slice ks (the same slices as block_product) and rows
// rg BC/2 .. rg BC/2 + BC/2 - 1: 2 + BC / 2 loads per 4 BC multiply-adds (10 per 64 at BC = 16).
// A warp holds one rg, so its row loads read one row at <= 4 consecutive groups (one wavefront)
// and its weight loads 32 distinct vectors (4 wavefronts, CG >= 8 lanes spread over every bank):
// 16 wavefronts per warp and group at BC = 16 where block_product needs 20 (C = 16: 4 + 16).
// Each (row, column, slice) partial sums the same groups in the same order with the same
// dot_add, and lands in the same red[bb][ks][c] before the same tree: block_product's bits.
template <typename Real, int BC, class Mark>
__device__ __forceinline__ void block_product_blocked(const typename Vec<Real>::type* W,
                                                      const typename Vec<Real>::type* X, Real* red, int C,
                                                      int64_t NG, bool regs, Mark&& mark) {
  static_assert(BC % 2 == 0, "two row groups");
  using V = typename Vec<Real>::type;
  constexpr int RB = BC / 2;
  const int tid = static_cast<int>(threadIdx.x);
  const int CG = C / 2, KS = kThreads / C;
  const int cg = tid % CG, ks = (tid / CG) % KS, r0 = (tid / (kThreads / 2)) * RB;
  const int ng = static_cast<int>(NG);
  Real acc0[RB], acc1[RB];
#pragma unroll
  for (int i = 0; i < RB; ++i) acc0[i] = acc1[i] = Real(0);
  const V* x = X + r0 * ng;
  for (int g = ks; g < ng; g += KS) {
    const V w0 = W[g * C + cg], w1 = W[g * C + cg + CG];
#pragma unroll
    for (int i = 0; i < RB; ++i) {
      const V xv = x[i * ng + g];
      acc0[i] = dot_add(acc0[i], xv, w0);
      acc1[i] = dot_add(acc1[i], xv, w1);
    }
  }
  mark();
  Real* out = red + r0 * kThreads + ks * C + cg;  // red[r0 + i][ks][cg (+ CG)]
#pragma unroll
  for (int i = 0; i < RB; ++i) {
    out[i * kThreads] = acc0[i];
    out[i * kThreads + CG] = acc1[i];
  }
  __syncthreads();  // all partial sums written
  block_reduce_tree<Real, BC>(red, C, regs);
}

// Weights in registers (one row per chunk, BC = 1: B = 1, or any B where the shared memory
// leaves room for one row per chunk only; float32): each thread keeps the vectors it
// multiplies, W[g][c] for g = ks, ks + KS, ... (at most kRegVectors of them), in registers for
// the whole launch instead of reading them from shared memory every step: at B = 1 the product
// reads one weight vector per four FMAs, so shared memory bandwidth, not the FMAs, set its time.
// Same vectors, same order: block_product's bits.
constexpr int kRegVectors = 32;  // 128 registers: a 128 KB slice (H = 1024 over 128 blocks)
// (host) The most vectors a thread multiplies: ceil(NG / KS) for C columns.
inline int64_t reg_vectors_needed(int C, int64_t NG) { return (NG + kThreads / C - 1) / (kThreads / C); }
template <typename V>
__device__ __forceinline__ void load_weight_registers(V (&w)[kRegVectors], const V* W, int C, int64_t NG) {
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid % C, ks = tid / C, KS = kThreads / C;
#pragma unroll
  for (int i = 0; i < kRegVectors; ++i) {
    const int64_t g = ks + static_cast<int64_t>(i) * KS;
    w[i] = g < NG ? W[g * C + c] : V{};
  }
}
template <typename Real, class Mark>
__device__ __forceinline__ void block_product_registers(const typename Vec<Real>::type (&w)[kRegVectors],
                                                        const typename Vec<Real>::type* X, Real* red, int C,
                                                        int64_t NG, bool regs, Mark&& mark) {
  const int tid = static_cast<int>(threadIdx.x);
  const int ks = tid / C, KS = kThreads / C;
  Real acc[1] = {Real(0)};
  if (static_cast<int64_t>(ks) + static_cast<int64_t>(kRegVectors - 1) * KS < NG) {
    // Every vector in range (H = 1024 at B = 1: 32 of 32): no branch per vector, so the
    // compiler issues the shared-memory loads ahead of the FMAs instead of one load, its
    // latency and four dependent FMAs per vector in turn. Same vectors, same order: same bits.
    const typename Vec<Real>::type* x = X + ks;
#pragma unroll
    for (int i = 0; i < kRegVectors; ++i) acc[0] = dot_add(acc[0], x[i * KS], w[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kRegVectors; ++i) {
      const int64_t g = ks + static_cast<int64_t>(i) * KS;
      if (g < NG) acc[0] = dot_add(acc[0], X[g], w[i]);
    }
  }
  mark();
  block_reduce<Real, 1>(acc, red, C, regs);
}

// Stages a chunk's rows into X (BC rows of NG vectors: the layout block_product reads),
// through L2 (ld.global.cg: other blocks wrote them). Row bb < nb is read from row_src(bb)
// (nullptr: a row of zeros), its first `len` values (len <= NG * KV; the rest are zeros); rows
// nb .. BC-1 are zeros. With `vectors` (every row pointer KV-aligned and len % KV == 0) it
// moves 16 bytes per load, else one value. Either way each thread issues kStageBatch loads
// before it stores any, so their L2 latencies overlap: staging element by element with a
// 64-bit division and, in the backward, a lengths lookup per element left every load's
// latency exposed and made the per-step cost grow with B (bench/NOTES_GPU.md, "Measured").
constexpr int kStageBatch = 8;
// The loop of stage_rows for one element type (a vector or a value): dst holds BC rows of
// per_row elements; element i of row bb < nb comes from row_src(bb)[i] when i < valid and the
// row pointer is not null, else it is zero.
// One pass of it split in two: this thread's kStageBatch elements of the pass from element e0,
// loaded into v (stage_load), then stored into dst (stage_store). Staging ahead (forward and
// backward, several chunks per step) loads a chunk's first pass before the previous chunk's
// product and stores it when the chunk's turn comes.
constexpr int kStagePass = kThreads * kStageBatch;
// One step of a walk over (major, minor) index pairs: minor += d_minor, major += d_major, minor
// kept below n (d_minor < n: at most one wrap).
__device__ __forceinline__ void walk_step(int& minor, int& major, int d_minor, int d_major, int n) {
  minor += d_minor;
  major += d_major;
  if (minor >= n) {
    minor -= n;
    ++major;
  }
}
// Where a thread's staging elements come from. A chunk's rows are BC rows of per_row elements,
// element e = bb * per_row + i, and each thread takes e = first, first + kThreads, ... (take(e)
// in that order). Walking (the default) it steps (bb, i) by kThreads without dividing and asks
// row_src for a row's pointer only when it enters a row; otherwise (FASTLSTM_CUDA_STAGE_WALK=0,
// for the A/B) it divides and asks row_src for every element, as the code before did (in the
// same loops: the A/B measures the index work). In the backward row_src reads the row's length
// and multiplies 64-bit indices, so per element that was ~60 instructions before each copy was
// issued (bench/NOTES_GPU.md, session 16). Either way the
// same elements reach the same places: the same bits. Elements i >= valid, and rows bb >= nb or
// whose row_src is nullptr, are zeros (take returns nullptr); STRIDE scales i to row_src's units.
template <typename Elem, typename RowSrc, int STRIDE = 1>
struct StageCursor {
  RowSrc& row_src;
  const int per_row, nb, valid, dbb, di;
  const bool walk;
  int bb, i, row_bb = -1;
  const Elem* row = nullptr;
  __device__ __forceinline__ StageCursor(RowSrc& src, int first, int per_row_, int nb_, int valid_, bool walk_)
      : row_src(src), per_row(per_row_), nb(nb_), valid(valid_), dbb(kThreads / per_row_),
        di(kThreads - (kThreads / per_row_) * per_row_), walk(walk_), bb(first / per_row_),
        i(first - (first / per_row_) * per_row_) {}
  // The source of element e (the cursor's current one; nullptr: a zero); then on to e + kThreads.
  __device__ __forceinline__ const Elem* take(int e) {
    const Elem* src = nullptr;
    if (bb < nb && i < valid) {
      if (!walk || bb != row_bb) {
        row = row_src(bb);
        row_bb = bb;
      }
      if (row != nullptr) src = row + static_cast<int64_t>(i) * STRIDE;
    }
    if (walk) {
      walk_step(i, bb, di, dbb, per_row);
    } else {
      bb = (e + kThreads) / per_row;
      i = e + kThreads - bb * per_row;
    }
    return src;
  }
};
template <int BC, typename Elem, typename RowSrc>
__device__ __forceinline__ void stage_load(Elem (&v)[kStageBatch], int e0, int per_row, int nb, int valid,
                                           RowSrc row_src, bool walk) {
  const int tid = static_cast<int>(threadIdx.x);
  const int total = BC * per_row, first = e0 + tid;
#pragma unroll
  for (int q = 0; q < kStageBatch; ++q) v[q] = Elem{};
  if (first >= total) return;
  StageCursor<Elem, RowSrc> cur(row_src, first, per_row, nb, valid, walk);
#pragma unroll
  for (int q = 0; q < kStageBatch; ++q) {
    const int e = first + q * kThreads;
    const Elem* src = e < total ? cur.take(e) : nullptr;
    if (src) v[q] = __ldcg(src);
  }
}
template <int BC, typename Elem>
__device__ __forceinline__ void stage_store(const Elem (&v)[kStageBatch], Elem* dst, int e0, int per_row) {
  const int tid = static_cast<int>(threadIdx.x);
  const int total = BC * per_row;
#pragma unroll
  for (int q = 0; q < kStageBatch; ++q) {
    const int e = e0 + q * kThreads + tid;
    if (e < total) dst[e] = v[q];
  }
}
// The passes from element e_begin on (0: all of them). With `async_any` (16-byte elements only:
// the vectors), by cp.async instead (copies global -> shared, no registers): each thread issues
// the copies of every pass before it waits once, so that the passes' L2 round trips overlap
// instead of following one another (the backward's dz rows of 4H take 4 passes at B = 16,
// H = 512, 8 at H = 1024); elements of rows nb .. BC-1, past `valid` or of null rows are
// zero-filled, naming async_any (a 16-byte aligned global address, never read) as their source.
template <int BC, typename Elem, typename RowSrc>
__device__ __forceinline__ void stage_elems(Elem* dst, int per_row, int nb, int valid, RowSrc row_src, bool walk,
                                            int e_begin = 0, const Elem* async_any = nullptr) {
  if constexpr (sizeof(Elem) == 16) {
    if (async_any != nullptr && walk && per_row >= kThreads) {
      // Rows of at least 256 elements (the backward's dz rows from H = 256, the forward's h rows
      // from H = 1024): row by row, each thread copying i = i0 + tid, i0 + tid + 256, ... of
      // every row (i0: where e_begin falls in the row), with a group's row pointers asked for
      // first (in the backward each asks for the row's length: independent loads in flight),
      // so that a copy costs a few instructions instead of StageCursor's ~45 per element with a
      // row change every 1-2 elements (bench/NOTES_GPU.md, session 19). Every element from
      // e_begin on is copied once, to the same place: the same bits.
      // (in groups of up to 4 rows: 4 lookups in flight at a time, in few registers)
      constexpr int kGroup = BC < 4 ? BC : 4;
      const int tid = static_cast<int>(threadIdx.x);
#pragma unroll 1
      for (int b0 = 0; b0 < BC; b0 += kGroup) {
        const Elem* rows[kGroup];
#pragma unroll
        for (int g = 0; g < kGroup; ++g)  // (rows wholly before e_begin: staged ahead, not looked up)
          rows[g] = b0 + g < nb && (b0 + g + 1) * per_row > e_begin ? row_src(b0 + g) : nullptr;
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          const int bb = b0 + g;
          const int i0 = e_begin > bb * per_row ? e_begin - bb * per_row : 0;
          const Elem* src = rows[g];
          Elem* d = dst + bb * per_row;
          for (int i = i0 + tid; i < per_row; i += kThreads) {
            const bool ok = src != nullptr && i < valid;
            fl_cp_async16(d + i, ok ? src + i : async_any, ok);
          }
        }
      }
      fl_cp_async_commit();
      fl_cp_async_wait<0>();
      return;
    }
    if (async_any != nullptr) {
      const int total = BC * per_row;
      int e = e_begin + static_cast<int>(threadIdx.x);
      if (e < total) {
        StageCursor<Elem, RowSrc> cur(row_src, e, per_row, nb, valid, walk);
#pragma unroll 4
        for (; e < total; e += kThreads) {
          const Elem* src = cur.take(e);
          fl_cp_async16(dst + e, src != nullptr ? src : async_any, src != nullptr);
        }
      }
      fl_cp_async_commit();
      fl_cp_async_wait<0>();
      return;
    }
  }
  for (int e0 = e_begin; e0 < BC * per_row; e0 += kStagePass) {
    Elem v[kStageBatch];
    stage_load<BC>(v, e0, per_row, nb, valid, row_src, walk);
    stage_store<BC>(v, dst, e0, per_row);
  }
}
// async_any: as stage_elems's (used for rows of whole vectors only).
template <typename Real, int BC, typename RowSrc>
__device__ __forceinline__ void stage_rows(typename Vec<Real>::type* X, int NG, int nb, int len, bool vectors,
                                           RowSrc row_src, bool walk,
                                           const typename Vec<Real>::type* async_any = nullptr) {
  using V = typename Vec<Real>::type;
  constexpr int KV = Vec<Real>::n;
  if (vectors)
    stage_elems<BC>(X, NG, nb, len / KV, [&](int bb) { return reinterpret_cast<const V*>(row_src(bb)); }, walk, 0,
                    async_any);
  else
    stage_elems<BC>(reinterpret_cast<Real*>(X), NG * KV, nb, len, row_src, walk);
}

// The tagged exchange (FASTLSTM_CUDA_EXCHANGE=tagged, float32 only): instead of a grid barrier
// per step, each value another block reads (forward: h_s; backward: dz_s) is also stored as one
// 64-bit word, value | (tag << 32), into a buffer of two slots (step parity), and the reader
// polls its words until their tags are the step's: the barrier's release fence, its atomic,
// the counter's polling and the staging's separate round trip become one round trip per
// element. Two slots suffice: a block writes slot s % 2 again at step s + 2 (forward) only
// after every block has written step s + 1, which each does after it finished reading slot
// s % 2 (its loads returned before its product). Tags start at 1 (the buffer is zeroed before
// each launch), so no word of an earlier launch or step is taken for the current one.
__device__ __forceinline__ unsigned long long tagged_word(float v, unsigned tag) {
  return (static_cast<unsigned long long>(tag) << 32) | fl_float_bits(v);
}
__device__ __forceinline__ unsigned tag_of(unsigned long long w) { return static_cast<unsigned>(w >> 32); }
__device__ __forceinline__ float value_of(unsigned long long w) {
  return fl_bits_float(static_cast<unsigned>(w & 0xFFFFFFFFull));
}
// stage_rows for the tagged exchange: X gets BC rows of per_row floats (per_row even); row
// bb < nb comes from row_src(bb) (words; 16-byte aligned; nullptr: a row of zeros), its first
// `valid` values (the rest, and rows nb .. BC-1, zeros). Each thread loads kStageBatch pairs of
// words before it checks any, then polls each pair until its valid words carry `tag`.
template <int BC, typename RowSrc>
__device__ __forceinline__ void stage_tagged(float* X, int per_row, int nb, int valid, RowSrc row_src, unsigned tag,
                                             bool walk) {
  const int tid = static_cast<int>(threadIdx.x);
  const int pairs = per_row / 2, total = BC * pairs;
  if (tid >= total) return;
  float2* dst = reinterpret_cast<float2*>(X);
  // pairs of words: pair ip of a row starts at word 2 ip and holds a value where 2 ip < valid
  StageCursor<unsigned long long, RowSrc, 2> cur(row_src, tid, pairs, nb, (valid + 1) / 2, walk);
  for (int e0 = 0; e0 < total; e0 += kStagePass) {
    const unsigned long long* src[kStageBatch];
    unsigned long long lo[kStageBatch], hi[kStageBatch];
    bool sec[kStageBatch];  // the pair's second word is a value (odd `valid`: not the last)
#pragma unroll
    for (int q = 0; q < kStageBatch; ++q) {
      const int e = e0 + q * kThreads + tid;
      sec[q] = e < total && 2 * cur.i + 1 < valid;
      src[q] = e < total ? cur.take(e) : nullptr;
      lo[q] = hi[q] = 0;
      if (src[q] != nullptr) fl_load_tagged2(src[q], lo[q], hi[q]);
    }
#pragma unroll
    for (int q = 0; q < kStageBatch; ++q) {
      const int e = e0 + q * kThreads + tid;
      const bool second = sec[q];
      if (src[q] != nullptr) {
        unsigned long long since = 0;
        while (tag_of(lo[q]) != tag || (second && tag_of(hi[q]) != tag)) {
          fl_poll_watchdog(since);
          fl_spin_pause();
          fl_load_tagged2(src[q], lo[q], hi[q]);
        }
      }
      if (e < total) dst[e] = make_float2(value_of(lo[q]), second ? value_of(hi[q]) : 0.0f);
    }
  }
}

// The weight slices' loads, once per launch, walked like the staging (FASTLSTM_CUDA_STAGE_WALK;
// the kernels keep the loop before for the A/B): each thread steps its elements without a 64-bit
// division per element and builds one 16-byte vector of W per element, stored whole, a warp's
// stores consecutive (the loop before: one value per load and per store, ~100 instructions of
// index work each, 128 per thread at H = 1024, the stores 8-way bank conflicts). The same values
// land in the same places: the same bits.
template <typename V>
__device__ __forceinline__ bool vector_aligned(const void* p) {
#if defined(FASTLSTM_CUDA_EMU)
  if (emu::g_pretend_unaligned) return false;  // (tests: the emulator's allocations of R are always aligned)
#endif
  return (reinterpret_cast<uintptr_t>(p) & (sizeof(V) - 1)) == 0;
}
// W[e] = fetch(g, m) for every element e = g * per + m of a slice of ng x per vectors, each
// thread's elements walked (m fastest: a warp's 16-byte stores are consecutive vectors, no bank
// conflicts).
template <typename V, class Fetch>
__device__ __forceinline__ void load_slice(V* W, int ng, int per, Fetch&& fetch) {
  const int tid = static_cast<int>(threadIdx.x), total = ng * per;
  const int dg = kThreads / per, dm = kThreads - dg * per;
  int g = tid / per, m = tid - g * per;
#pragma unroll 4
  for (int e = tid; e < total; e += kThreads) {
    W[e] = fetch(g, m);
    walk_step(m, g, dm, dg, per);
  }
}
// The block's weight slice into W (ng = NG vectors along k).
// Forward: W[g * C + c] = the vector of column c's KV values at k = g KV .. g KV + KV - 1, where
// column c = gate * U + u is R column gate * H + j0 + u (zero for k >= H or a unit past H). A
// warp's loads at one k are consecutive columns of R (coalesced within each gate's U columns;
// storing a row-major vector of R as KV scalars instead would put neighbouring threads KV
// columns apart: 16-way conflicts in fp32).
// Backward: W[g * U + u] = the vector of R row j0 + u at k = g KV .. g KV + KV - 1 (4H = NG KV
// values per row; zero for a unit past H): one 16-byte load where R is aligned, a warp reading
// 32 / U consecutive vectors of each of U rows.
template <typename Real>
__device__ __forceinline__ void load_weight_slice(typename Vec<Real>::type* W, const Real* R, int64_t H, int64_t j0,
                                                  int U, int64_t NG, bool backward) {
  using V = typename Vec<Real>::type;
  constexpr int KV = Vec<Real>::n;
  const int64_t G = 4 * H;
  if (!backward) {
    load_slice(W, static_cast<int>(NG), 4 * U, [&](int g, int c) {
      const int gate = (c >= U) + (c >= 2 * U) + (c >= 3 * U);
      const int64_t j = j0 + (c - gate * U);
      V v{};
      if (j < H) {
        Real* vr = reinterpret_cast<Real*>(&v);
        const int64_t k0 = static_cast<int64_t>(g) * KV;
#pragma unroll
        for (int q = 0; q < KV; ++q)
          if (k0 + q < H) vr[q] = R[(k0 + q) * G + gate * H + j];
      }
      return v;
    });
    return;
  }
  const bool vec = vector_aligned<V>(R);  // (G = NG KV: every row starts on a vector when R does)
  load_slice(W, static_cast<int>(NG), U, [&](int g, int u) {
    V v{};
    if (j0 + u < H) {
      const Real* row = R + (j0 + u) * G + static_cast<int64_t>(g) * KV;
      if (vec) {
        v = *reinterpret_cast<const V*>(row);
      } else {
        Real* vr = reinterpret_cast<Real*>(&v);
#pragma unroll
        for (int q = 0; q < KV; ++q) vr[q] = row[q];
      }
    }
    return v;
  });
}

// Shared memory of a kernel: the weight slice, the staged rows, the partial sums (bytes).
template <typename Real>
inline size_t smem_bytes(int64_t NG, int C, int BC) {
  using V = typename Vec<Real>::type;
  return static_cast<size_t>(NG * C + BC * NG) * sizeof(V) + static_cast<size_t>(kThreads) * BC * sizeof(Real);
}

// The grid-wide barrier: returns when every block of the launch has arrived `target / gridDim.x`
// times (the counter starts at 0 and only grows). The block's writes before the call are
// visible to every block after it (bar.sync, then one release by thread 0; acquire polling,
// then bar.sync), as in cooperative_groups' grid.sync(). The poll has the tagged exchange's
// watchdog (__trap after 10 s): a protocol fault fails the call instead of hanging the process.
__device__ __forceinline__ void grid_barrier(unsigned long long* counter, unsigned long long target) {
  __syncthreads();  // the whole block's writes happen before thread 0's release
  if (threadIdx.x == 0) {
    fl_arrive_release(counter);
    unsigned long long since = 0;
    while (fl_load_acquire(counter) < target) fl_poll_watchdog(since);
  }
  __syncthreads();  // the rest of the block waits for thread 0's acquire
}

// Phase trace (FASTLSTM_CUDA_TRACE=1; bench/gpu_phase_profile.py): thread 0 of every block adds
// up the SM cycles between its marks, by phase, over all steps, and at the end writes them to
// trace[block * kTraceSlots + phase], with the elapsed global time in ns in the last slot (so
// cycles / ns is the clock the kernel ran at). Phases are what thread 0 saw: a wait at a block
// barrier is counted in the phase that ends with it. trace nullptr: off (one predicate per mark).
enum TracePhase : int {
  kTraceWeights = 0,  // loading the weight slice into shared memory (once)
  kTraceWait,         // forward: the block barrier before staging (the previous chunk's
                      // finishers); backward: the block barrier that ends the step
  kTraceStage,        // staging a chunk's rows into shared memory, through its block barrier
  kTraceProduct,      // the chunk's product: each thread's partial sums
  kTraceFinish,       // forward: gates and cell update; backward: dh written
  kTraceBarrier,      // the grid barrier (with the block barrier in front of it)
  kTraceGates,        // backward phase A: the gate gradients
  kTraceReduce,       // the product's reduction tree (block_reduce, its block barriers included)
  kTraceNs,           // (slot) elapsed global time, ns
  kTraceSlots
};
// PhaseClock<false> (every launch that is not traced) does nothing and holds nothing: the
// traced kernels are separate instantiations, so tracing costs the others no registers.
template <bool TRACE>
struct PhaseClock {
  __device__ __forceinline__ explicit PhaseClock(unsigned long long*) {}
  __device__ __forceinline__ void mark(int) {}
  __device__ __forceinline__ void write() {}
};
template <>
struct PhaseClock<true> {
  unsigned long long* out = nullptr;  // this block's slots; nullptr: not thread 0
  long long last = 0;
  unsigned long long t0 = 0;
  long long acc[kTraceNs] = {};
  __device__ __forceinline__ explicit PhaseClock(unsigned long long* trace) {
    if (trace != nullptr && threadIdx.x == 0) {
      out = trace + static_cast<int64_t>(blockIdx.x) * kTraceSlots;
      t0 = fl_timer_ns();
      last = fl_clock();
    }
  }
  // The cycles since the previous mark go to `phase`.
  __device__ __forceinline__ void mark(int phase) {
    if (out != nullptr) {
      const long long now = fl_clock();
      acc[phase] += now - last;
      last = now;
    }
  }
  __device__ __forceinline__ void write() {
    if (out != nullptr) {
#pragma unroll
      for (int i = 0; i < kTraceNs; ++i) out[i] = static_cast<unsigned long long>(acc[i]);
      out[kTraceNs] = fl_timer_ns() - t0;
    }
  }
};

// A chunk's product, from the weights in registers (WREG) or in shared memory, with the phase
// trace's product / reduce marks.
template <typename Real, int BC, bool WREG, int NW, class Clock>
__device__ __forceinline__ void chunk_product(const typename Vec<Real>::type (&wreg)[NW],
                                              const typename Vec<Real>::type* W, const typename Vec<Real>::type* X,
                                              Real* red, int C, int64_t NG, bool blocked, bool regs,
                                              Clock& clk) {
  auto mark_product = [&clk] { clk.mark(kTraceProduct); };
  if constexpr (WREG) {
    block_product_registers<Real>(wreg, X, red, C, NG, regs, mark_product);
  } else if constexpr (BC >= 8) {
    if (blocked && C >= 16)
      block_product_blocked<Real, BC>(W, X, red, C, NG, regs, mark_product);
    else
      block_product<Real, BC>(W, X, red, C, NG, regs, mark_product);
  } else {
    (void)blocked;
    block_product<Real, BC>(W, X, red, C, NG, regs, mark_product);
  }
  clk.mark(kTraceReduce);
}

template <typename Real>
struct ForwardParams {
  int64_t T, B, H;
  int64_t units;  // U: hidden units per block; 4U columns of R
  int64_t ng;     // vector groups along k: ceil(H / KV)
  const int64_t* lengths;
  bool reverse;
  const Real* P;  // (T, B, 4H) x . kernel + bias (aliases gates when training)
  const Real* R;  // (H, 4H)
  Real* hbuf0;    // (B, H) h_{-1} on entry; h ping-pongs between hbuf0 and hbuf1
  Real* hbuf1;
  Real* c;  // (B, H) the running cell state (c_n), c0 on entry
  Real* y;
  Real* gates;  // or nullptr
  Real* cells;  // or nullptr
  unsigned long long* barrier;  // zero on entry
  unsigned long long* trace = nullptr;  // gridDim.x * kTraceSlots: run the traced kernel (PhaseClock)
  unsigned long long* xch = nullptr;    // TAGGED: 2 slots x B rows x ng * KV words, zero on entry
  bool stage_async = false;  // stage the h rows by cp.async (stage_elems); host: only where H % KV == 0
  bool stage_walk = true;    // StageCursor walks its elements (set_load_switches)
  bool blocked_product = false;  // block_product_blocked where it applies (set_load_switches)
  bool sums_in_registers = false;  // block_reduce_tree's tree in registers where it applies (same)
};

// AHEAD: the variant that stages each chunk's first pass ahead (see stage_load), for launches
// with several chunks per step and (forward) rows of whole vectors; its registers are only
// spent where it runs. TRACE: the traced variant (PhaseClock). TAGGED: h_s reaches the other
// blocks through the tagged exchange (stage_tagged) instead of hbuf and a grid barrier (float
// only; never with AHEAD). The arithmetic is the same in every variant: the same bits.
template <typename Real, int BC, bool TRACE, bool AHEAD, bool TAGGED, bool WREG>
__global__ void __launch_bounds__(kThreads, 1) forward_kernel(const ForwardParams<Real> p) {
  static_assert(!TAGGED || (std::is_same<Real, float>::value && !AHEAD), "tagged: float32, not staged ahead");
  static_assert(!WREG || (std::is_same<Real, float>::value && BC == 1), "weights in registers: float32, BC = 1");
  using V = typename Vec<Real>::type;
  constexpr int KV = Vec<Real>::n;
  FL_DYNAMIC_SHARED(smem);
  const int tid = static_cast<int>(threadIdx.x);
  const int U = static_cast<int>(p.units), C = 4 * U;
  const int64_t T = p.T, B = p.B, H = p.H, G = 4 * H, NG = p.ng, K = NG * KV;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * U;
  V* W = reinterpret_cast<V*>(smem);
  V* X = W + NG * C;
  Real* red = reinterpret_cast<Real*>(X + BC * NG);
  Real* Wr = reinterpret_cast<Real*>(W);
  Real* Xr = reinterpret_cast<Real*>(X);

  PhaseClock<TRACE> clk(p.trace);
  // The block's slice of R, once: column c = gate * U + u is R column gate * H + j0 + u.
  if (p.stage_walk) {
    load_weight_slice<Real>(W, p.R, H, j0, U, NG, false);
  } else {  // (FASTLSTM_CUDA_STAGE_WALK=0: the loop before, for the A/B)
    for (int64_t e = tid; e < K * C; e += kThreads) {
      const int64_t k = e / C;
      const int c = static_cast<int>(e % C);
      const int64_t j = j0 + c % U;
      Wr[((k / KV) * C + c) * KV + k % KV] = (k < H && j < H) ? p.R[k * G + (c / U) * H + j] : Real(0);
    }
  }
  [[maybe_unused]] V wreg[WREG ? kRegVectors : 1];
  if constexpr (WREG) {
    __syncthreads();  // W loaded
    load_weight_registers(wreg, W, C, NG);
  }
  clk.mark(kTraceWeights);

  // This thread finishes (row b0 + fb, unit j0 + fu) of each chunk when tid < nb * U.
  const int fb = tid / U, fu = tid % U;
  const int64_t j = j0 + fu;
  // Staging ahead: with several chunks per step and rows of whole vectors, each chunk's first
  // pass of loads is in flight during the previous chunk's product (held in `ahead`).
  const bool vec_rows = H % KV == 0;
  constexpr bool stage_ahead = AHEAD;  // (the host launches it only where it applies: B > BC, H % KV == 0)
  const int ngi = static_cast<int>(NG), hv = static_cast<int>(H / KV);
  V ahead[kStageBatch];
  // With one chunk per step (B <= BC) a finisher has the same row every step: its length is
  // loaded once, not before each step's P loads.
  const int64_t L_one = (B <= BC && fb < B && j < H) ? seq_len(p.lengths, fb, T) : 0;
  for (int64_t s = 0; s < T; ++s) {
    const Real* h_prev = (s % 2 == 0) ? p.hbuf0 : p.hbuf1;
    Real* h_next = (s % 2 == 0) ? p.hbuf1 : p.hbuf0;
    // staging by cp.async (rows of whole vectors; the h buffers are fastlstm's, 16-byte aligned)
    const V* async_any = p.stage_async ? reinterpret_cast<const V*>(h_prev) : nullptr;
    auto h_rows = [&](int64_t c0) {
      return [h_prev, c0, H](int bb) { return reinterpret_cast<const V*>(h_prev + (c0 + bb) * H); };
    };
    if (stage_ahead) stage_load<BC>(ahead, 0, ngi, static_cast<int>(imin(BC, B)), hv, h_rows(0), p.stage_walk);
    for (int64_t b0 = 0; b0 < B; b0 += BC) {
      const int nb = static_cast<int>(imin(BC, B - b0));
      const int64_t b = b0 + fb;
      const bool finisher = fb < nb && j < H;
      // Load this thread's input projections and cell state now (they do not depend on the
      // other blocks), so that their latency overlaps the product.
      int64_t L = 0, row = 0;
      Real pz[4] = {Real(0), Real(0), Real(0), Real(0)};
      Real c_prev = Real(0);
      if (finisher) {
        L = B <= BC ? L_one : seq_len(p.lengths, b, T);
        if (s < L) {
          row = (p.reverse ? L - 1 - s : s) * B + b;
          const Real* pr = p.P + row * G + j;
#pragma unroll
          for (int q = 0; q < 4; ++q) pz[q] = pr[q * H];
          c_prev = p.c[b * H + j];
        }
      }
      __syncthreads();  // W loaded (first chunk) / the previous chunk's X and red fully read
      clk.mark(kTraceWait);
      if (TAGGED && s > 0) {  // h_{s-1}: slot (s - 1) % 2, tag s
        const unsigned long long* slot = p.xch + ((s - 1) % 2) * B * K;
        stage_tagged<BC>(reinterpret_cast<float*>(X), static_cast<int>(K), nb, static_cast<int>(H),
                         [slot, b0, K](int bb) { return slot + (b0 + bb) * K; }, static_cast<unsigned>(s),
                         p.stage_walk);
      } else if (stage_ahead) {
        stage_store<BC>(ahead, X, 0, ngi);
        stage_elems<BC>(X, ngi, nb, hv, h_rows(b0), p.stage_walk, kStagePass, async_any);
      } else {
        stage_rows<Real, BC>(X, ngi, nb, static_cast<int>(H), vec_rows,
                             [&](int bb) { return h_prev + (b0 + bb) * H; }, p.stage_walk, async_any);
      }
      __syncthreads();  // rows staged
      clk.mark(kTraceStage);
      if (stage_ahead && b0 + BC < B)
        stage_load<BC>(ahead, 0, ngi, static_cast<int>(imin(BC, B - b0 - BC)), hv, h_rows(b0 + BC), p.stage_walk);
      chunk_product<Real, BC, WREG>(wreg, W, X, red, C, NG, p.blocked_product, p.sums_in_registers, clk);
      if (finisher) {
        if (s < L) {
          const Real* z = red + fb * kThreads + fu;
          const Real gi = fl_sigmoid(z[0 * U] + pz[0]);
          const Real gf = fl_sigmoid(z[1 * U] + pz[1]);
          const Real gg = fl_tanh(z[2 * U] + pz[2]);
          const Real go = fl_sigmoid(z[3 * U] + pz[3]);
          const Real cn = gf * c_prev + gi * gg;
          const Real hn = go * fl_tanh(cn);
          p.c[b * H + j] = cn;
          // TAGGED: h_s for the other blocks as a tagged word (slot s % 2, tag s + 1); the h
          // buffer only gets h_n (the last step), which the host copies out
          if (!TAGGED || s + 1 == T) h_next[b * H + j] = hn;
          if constexpr (TAGGED) {
            if (s + 1 < T)
              fl_store_tagged(p.xch + (s % 2) * B * K + b * K + j, tagged_word(hn, static_cast<unsigned>(s + 1)));
          }
          p.y[row * H + j] = hn;
          if (p.gates) {
            Real* g = p.gates + row * G + j;
            g[0] = gi;
            g[H] = gf;
            g[2 * H] = gg;
            g[3 * H] = go;
          }
          if (p.cells) p.cells[row * H + j] = cn;
        } else {  // past its length: the state carries over, y is 0 at position s
          if (!TAGGED || s + 1 == T) h_next[b * H + j] = Xr[fb * K + j];
          if constexpr (TAGGED) {
            if (s + 1 < T)
              fl_store_tagged(p.xch + (s % 2) * B * K + b * K + j,
                              tagged_word(Xr[fb * K + j], static_cast<unsigned>(s + 1)));
          }
          p.y[(s * B + b) * H + j] = Real(0);
        }
      }
      clk.mark(kTraceFinish);
    }
    if (!TAGGED && s + 1 < T) grid_barrier(p.barrier, static_cast<unsigned long long>(s + 1) * gridDim.x);
    clk.mark(kTraceBarrier);
  }
  clk.write();
}

template <typename Real>
struct BackwardParams {
  int64_t T, B, H;
  int64_t units;  // U: hidden units per block (U rows of R, U columns of dh)
  int64_t ng;     // vector groups along k = 4H: 4H / KV
  const int64_t* lengths;
  bool reverse;
  const Real* R;      // (H, 4H)
  const Real* gates;  // (T, B, 4H)
  const Real* cells;  // (T, B, H)
  const Real* h0;     // (B, H) or nullptr
  const Real* c0;     // (B, H) or nullptr
  const Real* dy;     // (T, B, H) or nullptr
  Real* dh;           // (B, H) running dh (dh_n on entry, dh0 on exit)
  Real* dc;           // (B, H) running dc
  Real* dz;           // (T, B, 4H) gate gradients by time position
  Real* hprev;        // (T, B, H)  h_{t-1} by time position
  unsigned long long* barrier;  // zero on entry
  unsigned long long* trace = nullptr;  // gridDim.x * kTraceSlots: run the traced kernel (PhaseClock)
  unsigned long long* xch = nullptr;    // TAGGED: 2 slots x B rows x 4H words, zero on entry
  bool inputs_ahead = false;  // phase A's inputs loaded a step ahead (gate_inputs); host: only where
                              // B * U <= kThreads (one (row, unit) per thread)
  bool stage_async = false;   // stage the dz rows by cp.async (stage_elems)
  bool stage_walk = true;     // StageCursor walks its elements (set_load_switches)
  bool blocked_product = false;  // block_product_blocked where it applies (set_load_switches)
  bool sums_in_registers = false;  // block_reduce_tree's tree in registers where it applies (same)
};

// Phase A's inputs for one (row b, unit j) at step s (what backward_gates_kernel reads besides
// the running dh and dc): none of them depends on another block or on an earlier step's results,
// so the kernel can load them a step ahead. row < 0: past the row's length.
template <typename Real>
struct GateInputs {
  int64_t row = -1;  // t * B + b
  Real gi, gf, gg, go;  // the step's gates
  Real cc, cp;          // c_t and c_{t-1} (c0 at s == 0)
  Real hp;              // s == 0: h0 (h_{t-1} itself); else o_{t-1} (h_{t-1} = o_{t-1} tanh(c_{t-1}))
  Real dy;              // dy_t (0 without dy)
};
template <typename Real>
__device__ __forceinline__ GateInputs<Real> gate_inputs(const BackwardParams<Real>& p, int64_t s, int64_t b,
                                                        int64_t j, int64_t L) {
  GateInputs<Real> in;
  if (s >= L) return in;
  const int64_t B = p.B, H = p.H, G = 4 * H;
  const int64_t t = p.reverse ? L - 1 - s : s;
  in.row = t * B + b;
  const Real* g = p.gates + in.row * G + j;
  in.gi = g[0];
  in.gf = g[H];
  in.gg = g[2 * H];
  in.go = g[3 * H];
  in.cc = p.cells[in.row * H + j];
  if (s == 0) {
    in.cp = p.c0 ? p.c0[b * H + j] : Real(0);
    in.hp = p.h0 ? p.h0[b * H + j] : Real(0);
  } else {
    const int64_t prow = (p.reverse ? t + 1 : t - 1) * B + b;
    in.cp = p.cells[prow * H + j];
    in.hp = p.gates[prow * G + 3 * H + j];
  }
  in.dy = p.dy ? p.dy[in.row * H + j] : Real(0);
  return in;
}
// Phase A for one (row b, unit j) at step s from its inputs, the running dh (dh_{t}, before dy)
// and dc: writes dz and h_{t-1} (zeros past the row's length) and, TAGGED, dz's exchange words;
// returns the new running dc (unchanged past the row's length).
template <typename Real, bool TAGGED>
__device__ __forceinline__ Real gate_grads(const BackwardParams<Real>& p, const GateInputs<Real>& in, int64_t s,
                                           int64_t b, int64_t j, Real dh, Real dc) {
  const int64_t B = p.B, H = p.H, G = 4 * H;
  if (in.row < 0) {
    Real* d = p.dz + (s * B + b) * G + j;
    d[0] = Real(0);
    d[H] = Real(0);
    d[2 * H] = Real(0);
    d[3 * H] = Real(0);
    p.hprev[(s * B + b) * H + j] = Real(0);
    return dc;
  }
  const Real gi = in.gi, gf = in.gf, gg = in.gg, go = in.go, cp = in.cp;
  const Real hp = s == 0 ? in.hp : in.hp * fl_tanh(cp);  // exactly as the forward computed h_{t-1}
  Real dht = dh;
  if (p.dy) dht += in.dy;
  const Real tc = fl_tanh(in.cc);
  const Real dct = dc + dht * go * (Real(1) - tc * tc);
  const Real dzs[4] = {dct * gg * (gi * (Real(1) - gi)), dct * cp * (gf * (Real(1) - gf)),
                       dct * gi * (Real(1) - gg * gg), dht * tc * (go * (Real(1) - go))};
  Real* d = p.dz + in.row * G + j;
#pragma unroll
  for (int q = 0; q < 4; ++q) d[q * H] = dzs[q];
  p.hprev[in.row * H + j] = hp;
  if constexpr (TAGGED) {  // dz_s of rows inside their length for phase B: slot s % 2, tag s + 1
    unsigned long long* xw = p.xch + (s % 2) * B * G + b * G + j;
    const unsigned tag = static_cast<unsigned>(s + 1);
#pragma unroll
    for (int q = 0; q < 4; ++q) fl_store_tagged(xw + q * H, tagged_word(dzs[q], tag));
  }
  return dct * gf;
}

// TAGGED: phase B reads dz_s through the tagged exchange, and there is no grid barrier at all
// (phase A reads only the block's own dh and dc).
template <typename Real, int BC, bool TRACE, bool AHEAD, bool TAGGED, bool WREG>
__global__ void __launch_bounds__(kThreads, 1) backward_kernel(const BackwardParams<Real> p) {
  static_assert(!TAGGED || (std::is_same<Real, float>::value && !AHEAD), "tagged: float32, not staged ahead");
  static_assert(!WREG || (std::is_same<Real, float>::value && BC == 1), "weights in registers: float32, BC = 1");
  using V = typename Vec<Real>::type;
  constexpr int KV = Vec<Real>::n;
  FL_DYNAMIC_SHARED(smem);
  const int tid = static_cast<int>(threadIdx.x);
  const int U = static_cast<int>(p.units);
  const int64_t T = p.T, B = p.B, H = p.H, G = 4 * H, NG = p.ng, K = NG * KV;  // K == G
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * U;
  V* W = reinterpret_cast<V*>(smem);
  V* X = W + NG * U;
  Real* red = reinterpret_cast<Real*>(X + BC * NG);
  Real* Wr = reinterpret_cast<Real*>(W);

  PhaseClock<TRACE> clk(p.trace);
  // The block's U rows of R, once: W[k][u] = R[j0 + u, k] (R^T restricted to the block's units).
  if (p.stage_walk) {
    load_weight_slice<Real>(W, p.R, H, j0, U, NG, true);
  } else {  // (FASTLSTM_CUDA_STAGE_WALK=0: the loop before, for the A/B)
    for (int64_t e = tid; e < K * U; e += kThreads) {
      const int u = static_cast<int>(e / K);
      const int64_t k = e % K;
      const int64_t j = j0 + u;
      Wr[((k / KV) * U + u) * KV + k % KV] = (j < H && k < G) ? p.R[j * G + k] : Real(0);
    }
  }
  [[maybe_unused]] V wreg[WREG ? kRegVectors : 1];
  if constexpr (WREG) {
    __syncthreads();  // W loaded
    load_weight_registers(wreg, W, U, NG);
  }
  clk.mark(kTraceWeights);

  constexpr bool stage_ahead = AHEAD;
  const int ngi = static_cast<int>(NG);
  V ahead[kStageBatch];
  [[maybe_unused]] unsigned long long arrivals = 0;  // (not with TAGGED)
  // With inputs_ahead (set_load_switches sets it only where B * U <= kThreads) every thread has
  // at most one (row, unit) in phase A, the same every step (thread tid: row tid / U, unit
  // j0 + tid % U): it loads the inputs of its next step before phase B, so that their latency
  // overlaps phase B instead of starting the next phase A, keeps its running dc in a register,
  // its row's length too, and, with one chunk per step (B <= BC: phase B's thread for that row
  // and unit is the same thread), its running dh. The arithmetic is unchanged (the same bits).
  const bool own = p.inputs_ahead;
  const bool one_chunk = B <= BC;
  const int64_t ob = tid / U, oj = j0 + tid % U;
  const bool owner = own && ob < B && oj < H;
  const int64_t oL = owner ? seq_len(p.lengths, ob, T) : 0;
  GateInputs<Real> pre;
  Real dc_own = Real(0), dh_own = Real(0);
  if (owner) {
    dc_own = p.dc[ob * H + oj];
    dh_own = p.dh[ob * H + oj];
    if (T > 0) pre = gate_inputs(p, T - 1, ob, oj, oL);
  }
  for (int64_t s = T - 1; s >= 0; --s) {
    // Phase A: the gate gradients of this block's units, every row (backward_gates_kernel).
    if (own) {
      if (owner) {
        const Real dh = one_chunk ? dh_own : (pre.row >= 0 ? p.dh[ob * H + oj] : Real(0));
        dc_own = gate_grads<Real, TAGGED>(p, pre, s, ob, oj, dh, dc_own);
        if (pre.row >= 0) p.dc[ob * H + oj] = dc_own;
      }
    } else {
      // elements e = b U + u from tid in steps of kThreads: U divides kThreads (a power of two up
      // to 64, plan), so a thread keeps its unit and steps its row by kThreads / U (no division
      // per element; the same elements in the same order)
      const int64_t j = j0 + tid % U;
      for (int64_t b = j < H ? tid / U : B; b < B; b += kThreads / U) {
        const GateInputs<Real> in = gate_inputs(p, s, b, j, seq_len(p.lengths, b, T));
        if (in.row < 0) {
          gate_grads<Real, TAGGED>(p, in, s, b, j, Real(0), Real(0));
          continue;
        }
        p.dc[b * H + j] = gate_grads<Real, TAGGED>(p, in, s, b, j, p.dh[b * H + j], p.dc[b * H + j]);
      }
    }
    clk.mark(kTraceGates);
    if constexpr (!TAGGED) {
      arrivals += gridDim.x;
      grid_barrier(p.barrier, arrivals);  // every block's dz of step s written
    }
    clk.mark(kTraceBarrier);
    // The next step's phase A inputs, in flight through phase B. Issued after the grid barrier:
    // its release (thread 0's red.release.gpu) would also wait for these loads.
    if (owner && s > 0) pre = gate_inputs(p, s - 1, ob, oj, oL);
    // Phase B: dh[b, j] = dz_t[b, :] . R[j, :] for rows inside their length.
    const int fb = tid / U, fu = tid % U;
    // dz rows of 4H values: 4H % KV == 0, and every row starts KV-aligned; rows past their
    // length are zeros. With several chunks, each chunk's first pass is staged ahead.
    auto dz_rows = [&](int64_t c0) {
      return [&p, c0, s, T, B, G](int bb) -> const V* {
        const int64_t b = c0 + bb;
        const int64_t L = seq_len(p.lengths, b, T);
        return s < L ? reinterpret_cast<const V*>(p.dz + ((p.reverse ? L - 1 - s : s) * B + b) * G) : nullptr;
      };
    };
    if (stage_ahead) stage_load<BC>(ahead, 0, ngi, static_cast<int>(imin(BC, B)), ngi, dz_rows(0), p.stage_walk);
    for (int64_t b0 = 0; b0 < B; b0 += BC) {
      const int nb = static_cast<int>(imin(BC, B - b0));
      __syncthreads();  // the previous chunk's X and red fully read
      clk.mark(kTraceWait);
      if constexpr (TAGGED) {
        const unsigned long long* slot = p.xch + (s % 2) * B * G;
        stage_tagged<BC>(reinterpret_cast<float*>(X), static_cast<int>(K), nb, static_cast<int>(G),
                         [&p, slot, b0, s, T, G](int bb) -> const unsigned long long* {
                           return s < seq_len(p.lengths, b0 + bb, T) ? slot + (b0 + bb) * G : nullptr;
                         },
                         static_cast<unsigned>(s + 1), p.stage_walk);
      } else {
        if (stage_ahead) stage_store<BC>(ahead, X, 0, ngi);
        // (by cp.async: dz is fastlstm's workspace, 16-byte aligned)
        stage_elems<BC>(X, ngi, nb, ngi, dz_rows(b0), p.stage_walk, stage_ahead ? kStagePass : 0,
                        p.stage_async ? reinterpret_cast<const V*>(p.dz) : nullptr);
      }
      __syncthreads();  // rows staged
      clk.mark(kTraceStage);
      if (stage_ahead && b0 + BC < B)
        stage_load<BC>(ahead, 0, ngi, static_cast<int>(imin(BC, B - b0 - BC)), ngi, dz_rows(b0 + BC),
                       p.stage_walk);
      chunk_product<Real, BC, WREG>(wreg, W, X, red, U, NG, p.blocked_product, p.sums_in_registers, clk);
      if (fb < nb) {
        const int64_t b = b0 + fb, j = j0 + fu;
        if (own && one_chunk) {  // this thread is the owner of (b, j)
          if (owner && s < oL) p.dh[b * H + j] = dh_own = red[fb * kThreads + fu];
        } else if (j < H && s < seq_len(p.lengths, b, T)) {
          p.dh[b * H + j] = red[fb * kThreads + fu];
        }
      }
      clk.mark(kTraceFinish);
    }
    __syncthreads();  // dh written before phase A of the next step reads it
    clk.mark(kTraceWait);
  }
  clk.write();
}

// ------------------------------------------------------------------------------------------
// Host side: whether the kernels fit, and launching them.
// ------------------------------------------------------------------------------------------
struct Plan {
  bool ok = false;
  std::string why;  // when !ok
  int units = 0, bc = 0;
  int64_t blocks = 0, ng = 0;
  size_t smem = 0;
  bool ahead = false;   // the staging-ahead variant (several chunks per step)
  bool tagged = false;  // the tagged exchange instead of grid barriers (float32)
  bool inputs_ahead = false;  // backward: phase A's inputs loaded a step ahead (set_load_switches)
  bool wreg = false;          // the weights in registers (float, one row per chunk)
  bool stage_async = false;   // rows staged by cp.async (set_load_switches)
  bool stage_walk = true;     // staging elements walked, not divided out (set_load_switches)
  bool blocked_product = false;  // the product blocked 2 columns x BC/2 rows per thread (set_load_switches)
  bool sums_in_registers = false;  // the partial sums added in registers (C >= 16; set_load_switches)
};

template <class F>
auto with_bc(int bc, F&& f) {
  switch (bc) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 8:
      return f(std::integral_constant<int, 8>{});
    default:
      return f(std::integral_constant<int, 16>{});
  }
}

// f(BC, TRACE, AHEAD, TAGGED, WREG) with the five as compile-time constants
// (std::integral_constant); the staging-ahead variant exists for BC > 1 only (one row per chunk
// means one chunk per step), the tagged one for float only and never staged ahead (tagged wins
// over ahead), the weights in registers for float and BC = 1 only.
template <typename Real, class F>
auto with_variant(int bc, bool trace, bool ahead, bool tagged, bool wreg, F&& f) {
  return with_bc(bc, [&](auto BCc) {
    auto go = [&](auto TRc) {
      constexpr bool is_float = std::is_same<Real, float>::value;
      if constexpr (is_float && decltype(BCc)::value == 1) {
        if (wreg)
          return tagged ? f(BCc, TRc, std::false_type{}, std::true_type{}, std::true_type{})
                        : f(BCc, TRc, std::false_type{}, std::false_type{}, std::true_type{});
      }
      if constexpr (is_float) {
        if (tagged) return f(BCc, TRc, std::false_type{}, std::true_type{}, std::false_type{});
      }
      if constexpr (decltype(BCc)::value > 1) {
        return ahead ? f(BCc, TRc, std::true_type{}, std::false_type{}, std::false_type{})
                     : f(BCc, TRc, std::false_type{}, std::false_type{}, std::false_type{});
      } else {
        return f(BCc, TRc, std::false_type{}, std::false_type{}, std::false_type{});
      }
    };
    return trace ? go(std::true_type{}) : go(std::false_type{});
  });
}

// How many blocks of the kernel fit on one SM with `smem` bytes of dynamic shared memory
// (raises the kernel's dynamic shared memory limit to smem first).
template <typename Real, int BC, bool TRACE, bool AHEAD, bool TAGGED, bool WREG>
int blocks_per_sm(bool backward, size_t smem) {
  int n = 0;
  if (backward) {
    auto k = backward_kernel<Real, BC, TRACE, AHEAD, TAGGED, WREG>;
    FL_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    FL_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, kThreads, smem));
  } else {
    auto k = forward_kernel<Real, BC, TRACE, AHEAD, TAGGED, WREG>;
    FL_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    FL_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, kThreads, smem));
  }
  return n;
}

// Chooses U (hidden units per block, a power of two) and BC (batch rows per chunk) for the
// persistent forward (backward = false) or backward: the fewest units per block such that one
// block per SM covers H (at most sm_count blocks), with the largest BC that the shared memory
// allows; failing that, several blocks per SM as the occupancy calculator allows. With `trace`,
// for the traced kernels; with `ahead`, for the staging-ahead variant wherever it applies (their
// occupancy may differ); with `tagged` (float only), for the tagged exchange (no staging ahead);
// with `wreg`, the weights in registers where they apply (float, BC = 1, at most kRegVectors
// vectors per thread) and fit.
template <typename Real>
Plan plan(bool backward, int64_t B, int64_t H, int device, bool trace = false, bool ahead = true,
          bool tagged = false, bool wreg = false) {
  Plan pl;
  int coop = 0, sms = 0, optin = 0;
  FL_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  FL_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FL_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (!coop) {
    pl.why = "the device does not support cooperative launches";
    return pl;
  }
  if (sms < 1) {
    pl.why = "no multiprocessors reported";
    return pl;
  }
  constexpr int KV = Vec<Real>::n;
  const bool tagged_here = tagged && std::is_same<Real, float>::value;
  const int bc_max = B <= 1 ? 1 : (B <= 4 ? 4 : (B <= 8 ? 8 : 16));
  const int bcs[4] = {16, 8, 4, 1};
  const int64_t K = backward ? 4 * H : H;
  const int64_t NG = ceil_div(K, KV);
  for (int pass = 0; pass < 2 && !pl.ok; ++pass) {
    static_assert(kThreads % 64 == 0, "every U below divides kThreads (the backward's phase A walk relies on it)");
    for (int U = 1; U <= 64 && !pl.ok; U *= 2) {
      const int64_t blocks = ceil_div(H, U);
      if (pass == 0 && blocks > sms) continue;
      if (blocks > int64_t(sms) * 32) continue;
      const int C = backward ? U : 4 * U;
      if (C > kThreads) break;
      for (int bc : bcs) {
        if (bc > bc_max || bc * U > kThreads) continue;
        const size_t smem = smem_bytes<Real>(NG, C, bc);
        if (smem > static_cast<size_t>(optin)) continue;
        const bool ahead_here = ahead && !tagged_here && B > bc && (backward || H % KV == 0);
        bool wreg_here = wreg && std::is_same<Real, float>::value && bc == 1 && reg_vectors_needed(C, NG) <= kRegVectors;
        auto fits = [&](bool wr) {
          const int per_sm = with_variant<Real>(
              bc, trace, ahead_here, tagged_here, wr, [&](auto BCc, auto TRc, auto AHc, auto TGc, auto WRc) {
                return blocks_per_sm<Real, decltype(BCc)::value, decltype(TRc)::value, decltype(AHc)::value,
                                     decltype(TGc)::value, decltype(WRc)::value>(backward, smem);
              });
          return per_sm >= 1 && blocks <= int64_t(per_sm) * sms;
        };
        if (wreg_here && !fits(true)) wreg_here = false;  // (the register-hungry variant: fewer blocks per SM)
        if (!wreg_here && !fits(false)) continue;
        pl.ok = true;
        pl.units = U;
        pl.bc = bc;
        pl.blocks = blocks;
        pl.ng = NG;
        pl.smem = smem;
        pl.ahead = ahead_here && bc > 1;
        pl.tagged = tagged_here;
        pl.wreg = wreg_here;
        break;
      }
    }
  }
  if (!pl.ok)
    pl.why = std::string("the recurrent weights (H = ") + std::to_string(H) + ", fp" + std::to_string(sizeof(Real) * 8) +
             ") do not fit on chip: no split over co-resident blocks on " + std::to_string(sms) + " SMs with at most " +
             std::to_string(optin) + " bytes of shared memory per block";
  return pl;
}

// Whether the phase trace is asked for: FASTLSTM_CUDA_TRACE set, and not to "" or "0" (read at
// every call; the traced launch synchronises the stream to read the trace back).
inline bool trace_requested() {
  const char* v = std::getenv("FASTLSTM_CUDA_TRACE");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

// The trace of a finished launch (PhaseClock) as text for the kernel description:
// " | trace: steps=T blocks=N ghz=G weights=a/b/c wait=a/b/c ... total=a/b/c kernel_us=a/b/c",
// a/b/c being the least, mean and largest over the blocks of the cycles per step (weights:
// once, not per step; total: all phases but the weights), ghz the clock measured (cycles / ns,
// mean over blocks), kernel_us thread 0's elapsed time. The least block's barrier is the
// barrier's own latency (that block arrived last).
inline std::string trace_summary(const unsigned long long* trace, int64_t blocks, int64_t steps, cudaStream_t stream) {
  if (blocks <= 0) return "";
  std::vector<unsigned long long> h(static_cast<size_t>(blocks) * kTraceSlots);
  FL_CHECK(cudaMemcpyAsync(h.data(), trace, h.size() * sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream));
  FL_CHECK(cudaStreamSynchronize(stream));
  const double per = steps > 0 ? 1.0 / static_cast<double>(steps) : 0.0;
  constexpr int kTotal = kTraceSlots;  // (an extra column: the per-step total)
  double least[kTotal + 1], mean[kTotal + 1] = {}, most[kTotal + 1] = {}, ghz = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const unsigned long long* o = h.data() + b * kTraceSlots;
    double cycles = 0;
    for (int i = 0; i < kTraceNs; ++i) cycles += static_cast<double>(o[i]);
    for (int i = 0; i <= kTotal; ++i) {
      double v;
      if (i == kTotal)
        v = (cycles - static_cast<double>(o[kTraceWeights])) * per;
      else if (i == kTraceNs)
        v = static_cast<double>(o[i]) * 1e-3;  // ns -> us
      else
        v = static_cast<double>(o[i]) * (i == kTraceWeights ? 1.0 : per);
      least[i] = b == 0 || v < least[i] ? v : least[i];
      mean[i] += v / static_cast<double>(blocks);
      most[i] = v > most[i] ? v : most[i];
    }
    ghz += (o[kTraceNs] > 0 ? cycles / static_cast<double>(o[kTraceNs]) : 0.0) / static_cast<double>(blocks);
  }
  const char* names[kTotal + 1] = {"weights", "wait",   "stage",     "product", "finish",
                                   "barrier", "gates", "reduce", "kernel_us", "total"};
  char buf[160];
  std::snprintf(buf, sizeof buf, " | trace: steps=%lld blocks=%lld ghz=%.3f", static_cast<long long>(steps),
                static_cast<long long>(blocks), ghz);
  std::string out = buf;
  for (int i : {0, 1, 2, 3, 4, 5, 6, 7, kTotal, static_cast<int>(kTraceNs)}) {
    std::snprintf(buf, sizeof buf, i == kTraceNs ? " %s=%.1f/%.1f/%.1f" : " %s=%.0f/%.0f/%.0f", names[i], least[i],
                  mean[i], most[i]);
    out += buf;
  }
  return out;
}

// The persistent kernels' on-by-default switches, read at every call (for measuring each one's
// effect, bench/gpu_persistent_ab.py): on unless the environment variable is "0".
inline bool switch_on(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || std::strcmp(v, "0") != 0;
}
// Each chunk's first pass staged ahead (see stage_load).
inline bool stage_ahead_requested() { return switch_on("FASTLSTM_CUDA_STAGE_AHEAD"); }
// The backward's phase-A inputs loaded a step ahead (gate_inputs; where B * U <= kThreads).
inline bool inputs_ahead_requested() { return switch_on("FASTLSTM_CUDA_INPUTS_AHEAD"); }
// The weights in registers where they can be (float32, one row per chunk, block_product_registers).
inline bool weights_in_registers_requested() { return switch_on("FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS"); }
// The barrier kernels' rows of whole vectors staged by cp.async (stage_elems; the tagged kernels
// poll their words with loads either way), where the device has cp.async (compute capability
// 8.0+; below it fl_cp_async16 traps, and a build for such a card stages through registers).
// Each thread's staging elements walked row by row instead of divided out one by one (StageCursor),
// and the weight slices' loads likewise, a 16-byte vector of W per element (load_weight_slice).
inline bool stage_walk_requested() { return switch_on("FASTLSTM_CUDA_STAGE_WALK"); }
// Session 19's product: blocked two columns x BC / 2 rows per thread (block_product_blocked) where
// a chunk has BC >= 8 rows and the block C >= 16 columns, and its partial sums added in registers
// (block_reduce_registers) wherever C >= 16; "0": block_product and the shared-memory tree, as
// before. Same bits.
inline bool blocked_product_requested() { return switch_on("FASTLSTM_CUDA_BLOCKED_PRODUCT"); }
inline bool stage_async_requested(int device) {
  int major = 0;
  FL_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 8 && switch_on("FASTLSTM_CUDA_STAGE_ASYNC");
}

// Decides, once per launch, the load switches that depend on the launch as well as on the
// environment, and records them both in the plan (its description) and in the kernel's
// parameters: staging by cp.async (barrier kernels, rows of whole vectors: the backward's dz rows
// always, the forward's h rows where H % KV == 0) and, backward, the gate inputs a step early
// (where each thread has at most one (row, unit) in phase A).
template <typename Real, typename Params>
void set_load_switches(Plan& pl, Params& prm, bool backward, int64_t B, int64_t H, int device) {
  prm.stage_async = pl.stage_async =
      stage_async_requested(device) && !pl.tagged && (backward || H % Vec<Real>::n == 0);
  prm.stage_walk = pl.stage_walk = stage_walk_requested();
  const int64_t columns = backward ? pl.units : 4 * pl.units;  // C: the product's columns per block
  const bool v2 = blocked_product_requested();
  prm.blocked_product = pl.blocked_product = v2 && !pl.wreg && pl.bc >= 8 && columns >= 16;
  prm.sums_in_registers = pl.sums_in_registers = v2 && columns >= 16;
  if constexpr (std::is_same<Params, BackwardParams<Real>>::value)
    prm.inputs_ahead = pl.inputs_ahead = inputs_ahead_requested() && B * pl.units <= kThreads;
}

// How the kernels exchange h / dz between blocks (FASTLSTM_CUDA_EXCHANGE, read at every call):
// "tagged" through tagged words (stage_tagged; float32 only), "barrier" through grid barriers,
// unset, "" or "auto": auto's rule (kTaggedAutoMaxRows in lstm_impl.cuh). Any other value is an
// error.
enum class Exchange { kAuto, kBarrier, kTagged };
inline Exchange exchange_requested() {
  const char* v = std::getenv("FASTLSTM_CUDA_EXCHANGE");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Exchange::kAuto;
  if (std::strcmp(v, "barrier") == 0) return Exchange::kBarrier;
  if (std::strcmp(v, "tagged") == 0) return Exchange::kTagged;
  throw Error(std::string("FASTLSTM_CUDA_EXCHANGE must be 'auto', 'barrier' or 'tagged', not '") + v + "'");
}

// Exchange words for a tagged launch: two slots of B rows of ng * KV words (forward: h rows of
// H values padded to whole vectors; backward: dz rows of 4H); 0 when not tagged.
template <typename Real>
int64_t exchange_words(const Plan& pl, int64_t B) {
  return pl.tagged ? 2 * B * pl.ng * Vec<Real>::n : 0;
}

inline std::string describe(const char* what, const Plan& pl, size_t real_bytes) {
  return std::string(what) + " (fp" + std::to_string(real_bytes * 8) + ", " + std::to_string(pl.blocks) + " blocks x " +
         std::to_string(kThreads) + " threads, " + std::to_string(pl.units) + " units/block, " +
         std::to_string(pl.bc) + " rows/chunk" + (pl.ahead ? " staged one chunk ahead" : "") + ", " +
         std::to_string(pl.smem) + " B shared" + (pl.wreg ? ", weights in registers" : "") +
         (pl.stage_async ? ", staged by cp.async" : "") + (pl.stage_walk ? "" : ", staging indexed per element") +
         (pl.inputs_ahead ? ", gate inputs prefetched" : "") + (pl.blocked_product ? ", product 2 columns x " +
         std::to_string(pl.bc / 2) + " rows per thread" : "") + (pl.sums_in_registers ? ", sums added per thread" : "") +
         (pl.tagged ? ", tagged exchange" : "") + ")";
}

// One cooperative launch of the kernel pick(BC, TRACE, AHEAD, TAGGED, WREG) for the plan's rows per
// chunk, its staging-ahead and exchange choices, and the trace when asked for.
template <typename Real, typename Params, typename Pick>
void launch_plan(const Plan& pl, const Params& prm, cudaStream_t stream, Pick pick) {
  const dim3 grid = grid_of(pl.blocks);
  if (pl.tagged && prm.xch == nullptr) throw Error("internal: a tagged persistent launch without its exchange buffer");
  with_variant<Real>(pl.bc, prm.trace != nullptr, pl.ahead, pl.tagged, pl.wreg,
                     [&](auto BCc, auto TRc, auto AHc, auto TGc, auto WRc) {
    auto k = pick(BCc, TRc, AHc, TGc, WRc);
    // (again here: another thread's planning may have lowered the limit since)
    FL_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(pl.smem)));
    launch_cooperative(k, grid, dim3(kThreads), pl.smem, stream, prm);
    return 0;
  });
}

template <typename Real>
void launch_forward(const Plan& pl, const ForwardParams<Real>& prm, cudaStream_t stream) {
  launch_plan<Real>(pl, prm, stream, [](auto BCc, auto TRc, auto AHc, auto TGc, auto WRc) {
    return forward_kernel<Real, decltype(BCc)::value, decltype(TRc)::value, decltype(AHc)::value,
                          decltype(TGc)::value, decltype(WRc)::value>;
  });
}

template <typename Real>
void launch_backward(const Plan& pl, const BackwardParams<Real>& prm, cudaStream_t stream) {
  launch_plan<Real>(pl, prm, stream, [](auto BCc, auto TRc, auto AHc, auto TGc, auto WRc) {
    return backward_kernel<Real, decltype(BCc)::value, decltype(TRc)::value, decltype(AHc)::value,
                           decltype(TGc)::value, decltype(WRc)::value>;
  });
}

}  // namespace persistent
}  // namespace impl
}  // namespace cuda
}  // namespace fastlstm
