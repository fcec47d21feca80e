// General matrix product for the per-ISA kernel objects (included only by lstm_kernels.cc,
// inside its target namespace; see simd.h for why).
//
// C (M x N) = A (M x K) . B (K x N) [+ row_add], arbitrary strides, BLIS-style:
//   thread grid   C is split once into tm x tn rectangles (whole MR / NR panels), one per
//                 thread; every C element is reduced over K by exactly one thread.
//   jc (NC)       columns of this thread's rectangle
//     pc (KC)     K blocks, always in increasing order from 0 (so the arithmetic of every
//                 element is the same for any thread count / tile position)
//       pack B    KC x NC block into NR-wide panels (lives in L2)
//       ic (MC)   pack an MC x KC block of A into MR-high panels (L2; one panel in L1)
//        ir (MR)
//         jr (NR) micro-kernel: MR x NR register tile over kc, then C = base + acc
//                 (base = row_add or 0 on the first K block, else C).
// Edge tiles use the same micro-kernel on zero-padded panels and copy out the valid part,
// so an element's value never depends on where tile boundaries fall.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/simd.h"

namespace fastlstm {
namespace cpu {
namespace FASTLSTM_TARGET {
namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void gemm_prefetch(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 1, 3);
#else
  (void)p;
#endif
}

// Prefetch for reading the n elements from p (packing: the rows a few ahead of the one being
// copied, which the hardware prefetcher does not follow across pages).
template <typename Real>
inline void gemm_prefetch_range(const Real* p, int64_t n) {
#if defined(__GNUC__)
  constexpr int64_t line = 64 / sizeof(Real);
  for (int64_t i = 0; i < n; i += line) __builtin_prefetch(p + i, 0, 3);
  __builtin_prefetch(p + n - 1, 0, 3);
#else
  (void)p;
  (void)n;
#endif
}

// Register tile MR x NR (NR = NV vectors). AVX-512: 14 x 2 vectors = 28 accumulators of 32
// registers, the A value broadcast straight from memory; AVX2: 6 x 2 = 12 of 16.
template <typename Real>
struct Gemm {
#if defined(__AVX512F__)
  static constexpr int MR = 14;
  static constexpr int NV = 2;
#elif defined(__AVX2__)
  static constexpr int MR = 6;
  static constexpr int NV = 2;
#else
  static constexpr int MR = 4;
  static constexpr int NV = 4;
#endif
  static constexpr int NR = NV * Vec<Real>::N;
  // KC x MR panel of A in L1 (~21 KiB of 48); KC x NC block of B (~1.2 MiB) and MC x KC
  // block of A (~170 KiB) in L2 (2 MiB).
  // (FASTLSTM_GEMM_KC / _NC override them for tuning with bench/gemm; KC in float units.)
#ifndef FASTLSTM_GEMM_KC
#define FASTLSTM_GEMM_KC 384
#endif
#ifndef FASTLSTM_GEMM_NC
#define FASTLSTM_GEMM_NC 768
#endif
  static constexpr int64_t KC = FASTLSTM_GEMM_KC * 4 / static_cast<int64_t>(sizeof(Real));
  static constexpr int64_t NC = FASTLSTM_GEMM_NC / NR * NR;
  static constexpr int64_t MC = 8 * MR;
  static constexpr int64_t a_block = (KC * MC + 15) / 16 * 16;  // keeps the B block 64-byte aligned
  static constexpr int64_t workspace_per_thread = a_block + (KC * NC + 15) / 16 * 16;
};

template <typename Real>
struct GemmArgs {
  int64_t M, N, K;
  const Real* A;
  int64_t a_rs, a_cs;  // A(m, k) = A[m * a_rs + k * a_cs]
  const Real* B;
  int64_t b_rs, b_cs;  // B(k, n) = B[k * b_rs + n * b_cs]
  Real* C;
  int64_t ldc;
  const Real* row_add;  // (N,) added to every row of C, or nullptr
  bool accumulate = false;  // C += A . B instead of C = A . B (+ row_add)
  const Real* b_packed = nullptr;  // B already packed by pack_b_all(), or nullptr (pack here)
  const int64_t* c_rows = nullptr;  // row m of the product goes to row c_rows[m] of C (a
                                    // scatter), or nullptr: to row m
  const int64_t* a_rows = nullptr;  // row m of the product is row a_rows[m] of A (a gather),
                                    // or nullptr: row m. Not with a_rs == 1.
  const int64_t* a_cols = nullptr;  // column k of A (along the sum) is column a_cols[k], or
                                    // nullptr: column k. Only with a_rs == 1, without a_rows.
};

// Row m of A (at column 0), and the offset of column k in a row.
template <typename Real>
inline const Real* a_row(const GemmArgs<Real>& g, int64_t m) {
  return g.A + (g.a_rows ? g.a_rows[m] : m) * g.a_rs;
}
template <typename Real>
inline int64_t a_col(const GemmArgs<Real>& g, int64_t k) {
  return (g.a_cols ? g.a_cols[k] : k) * g.a_cs;
}

// K blocks of (nearly) equal length <= KC, a function of K alone.
template <typename Real>
inline int64_t gemm_kstep(int64_t K) {
  return imin(Gemm<Real>::KC, ceil_div(ceil_div(K, ceil_div(K, Gemm<Real>::KC)), 16) * 16);
}

#if defined(__AVX512F__)
// (Vec<Real>::transpose, simd.h: the 16 x 16 / 8 x 8 register transposes)
// d[k * 14 + r] = rows[r][k] for r < 14, k < kc16 (a multiple of 16 / 8).
inline void pack_rows14(const float* const* rows, int64_t kc16, float* d) {
  for (int64_t k = 0; k < kc16; k += 16) {
    __m512 r[16];
    for (int i = 0; i < 14; ++i) r[i] = _mm512_loadu_ps(rows[i] + k);
    r[14] = r[15] = _mm512_setzero_ps();
    Vec<float>::transpose(r);
    for (int q = 0; q < 16; ++q) _mm512_mask_storeu_ps(d + (k + q) * 14, 0x3FFF, r[q]);
  }
}
inline void pack_rows14(const double* const* rows, int64_t kc8, double* d) {
  for (int64_t k = 0; k < kc8; k += 8) {
    __m512d lo[8], hi[8];
    for (int i = 0; i < 8; ++i) lo[i] = _mm512_loadu_pd(rows[i] + k);
    for (int i = 0; i < 6; ++i) hi[i] = _mm512_loadu_pd(rows[8 + i] + k);
    hi[6] = hi[7] = _mm512_setzero_pd();
    Vec<double>::transpose(lo);
    Vec<double>::transpose(hi);
    for (int q = 0; q < 8; ++q) {
      _mm512_storeu_pd(d + (k + q) * 14, lo[q]);
      _mm512_mask_storeu_pd(d + (k + q) * 14 + 8, 0x3F, hi[q]);
    }
  }
}
#endif

// Rows i0 .. i0+mc-1 of the mc x kc block of A at column k0 as ceil(mc / MR) panels of
// kc x MR (Ap[panel * kc * MR + k * MR + r]), zero-padded.
template <typename Real>
void pack_a(const GemmArgs<Real>& g, int64_t i0, int64_t mc, int64_t k0, int64_t kc, Real* Ap) {
  constexpr int MR = Gemm<Real>::MR;
  const int64_t full = mc / MR * MR;
  if (g.a_rs == 1 && !g.a_rows) {
    // Transposed A (column k contiguous): read each column once, in runs of mc values, and
    // scatter MR at a time into the panels.
    for (int64_t k = 0; k < kc; ++k) {
      const Real* s = g.A + i0 + a_col(g, k0 + k);
      if (k + 4 < kc) gemm_prefetch_range(g.A + i0 + a_col(g, k0 + k + 4), mc);
      Real* d = Ap + k * MR;
      for (int64_t ip = 0; ip < full; ip += MR, d += kc * MR) std::memcpy(d, s + ip, MR * sizeof(Real));
    }
  } else if (g.a_cs == 1) {
    // Row-major A: MR rows read along k, 8 values of k at a time.
    for (int64_t ip = 0; ip < full; ip += MR) {
      const Real* src[MR];
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) src[r] = a_row(g, i0 + ip + r) + k0;
      Real* d = Ap + ip * kc;
      int64_t k = 0;
#if defined(__AVX512F__)
      static_assert(MR == 14, "pack_rows14 packs 14 rows");
      k = kc / Vec<Real>::N * Vec<Real>::N;
      pack_rows14(src, k, d);
#endif
      for (; k + 8 <= kc; k += 8) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          const Real* s = src[r] + k;
#pragma GCC unroll 8
          for (int q = 0; q < 8; ++q) d[(k + q) * MR + r] = s[q];
        }
      }
      for (; k < kc; ++k)
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) d[k * MR + r] = src[r][k];
    }
  } else {
    for (int64_t ip = 0; ip < full; ip += MR)
      for (int r = 0; r < MR; ++r) {
        const Real* s = a_row(g, i0 + ip + r);
        for (int64_t k = 0; k < kc; ++k) Ap[ip * kc + k * MR + r] = s[a_col(g, k0 + k)];
      }
  }
  if (full < mc) {  // last, partial panel
    const int64_t rows = mc - full;
    Real* d = Ap + full * kc;
    for (int64_t r = 0; r < MR; ++r) {
      const Real* s = r < rows ? a_row(g, i0 + full + r) : nullptr;
      for (int64_t k = 0; k < kc; ++k) d[k * MR + r] = s ? s[a_col(g, k0 + k)] : Real(0);
    }
  }
}

// Columns j0 .. j0+nc-1 of the kc x nc block at row k0 as ceil(nc / NR) panels of kc x NR
// (Bp[panel * kc * NR + k * NR + c]), zero-padded.
template <typename Real>
void pack_b(const GemmArgs<Real>& g, int64_t j0, int64_t nc, int64_t k0, int64_t kc, Real* Bp) {
  using V = Vec<Real>;
  constexpr int NR = Gemm<Real>::NR, NV = Gemm<Real>::NV;
  if (g.b_cs == 1) {
    // Row-major B: read each row of the block once, contiguously, and scatter NR values at a
    // time into the panels (reading a panel at a time would touch a new page for every k).
    const int64_t full = nc / NR * NR;
    for (int64_t k = 0; k < kc; ++k) {
      const Real* src = g.B + (k0 + k) * g.b_rs + j0;
      if (k + 4 < kc) gemm_prefetch_range(src + 4 * g.b_rs, nc);
      Real* d = Bp + k * NR;
      for (int64_t jp = 0; jp < full; jp += NR, d += kc * NR)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) V::store(d + v * V::N, V::load(src + jp + v * V::N));
      if (full < nc) {
        int64_t c = 0;
        for (; c < nc - full; ++c) d[c] = src[full + c];
        for (; c < NR; ++c) d[c] = Real(0);
      }
    }
    return;
  }
  for (int64_t jp = 0; jp < nc; jp += NR, Bp += kc * NR) {
    const int64_t cols = imin(NR, nc - jp);
    const Real* src = g.B + k0 * g.b_rs + (j0 + jp) * g.b_cs;
    if (cols == NR && g.b_rs == 1) {  // transposed B: each column contiguous along k
      for (int64_t k = 0; k < kc; k += 8) {
        const int64_t kk = imin(8, kc - k);
        for (int c = 0; c < NR; ++c) {
          const Real* s = src + c * g.b_cs + k;
          for (int64_t q = 0; q < kk; ++q) Bp[(k + q) * NR + c] = s[q];
        }
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        int64_t c = 0;
        for (; c < cols; ++c) Bp[k * NR + c] = src[k * g.b_rs + c * g.b_cs];
        for (; c < NR; ++c) Bp[k * NR + c] = Real(0);
      }
    }
  }
}

// All of B packed as gemm_part packs it, for reuse across calls (GemmArgs::b_packed): for
// each K block (gemm_kstep) of kc rows, all ceil(N / NR) column panels of kc x NR. Needs
// b_packed_size(K, N) elements.
template <typename Real>
inline int64_t b_packed_size(int64_t K, int64_t N) {
  return K * ceil_div(N, Gemm<Real>::NR) * Gemm<Real>::NR;
}
template <typename Real>
void pack_b_all(const GemmArgs<Real>& g, Real* dst) {
  const int64_t kstep = gemm_kstep<Real>(g.K), np = ceil_div(g.N, Gemm<Real>::NR);
  for (int64_t pc = 0; pc < g.K; pc += kstep) {
    const int64_t kc = imin(kstep, g.K - pc);
    pack_b(g, 0, g.N, pc, kc, dst + pc * np * Gemm<Real>::NR);
  }
}

// acc = Ap . Bp over kc; then C = base + acc with base = (row_add or 0) when first, else C.
// Only the leading rows x cols of the tile are written. Row r of the tile is at C + r * ldc,
// or at C + c_rows[r] * ldc.
template <typename Real>
inline void gemm_micro(int64_t kc, const Real* __restrict Ap, const Real* __restrict Bp, Real* C, int64_t ldc,
                       int64_t rows, int64_t cols, bool first, const Real* row_add, const int64_t* c_rows) {
  auto crow = [&](int64_t r) { return C + (c_rows ? c_rows[r] : r) * ldc; };
  using V = Vec<Real>;
  using R = typename V::R;
  constexpr int MR = Gemm<Real>::MR, NR = Gemm<Real>::NR, NV = Gemm<Real>::NV;
  R acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  // The C tile is needed at the end: start fetching it now.
  if (!first)
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
      if (r < rows) {
        gemm_prefetch(crow(r));
        gemm_prefetch(crow(r) + NR - 1);
      }
#if defined(__AVX2__) && !defined(__AVX512F__)
  // 12 FMAs per k leave the loop's own instructions a share of the issue slots on AVX2:
  // unrolled 4 times, 1.03-1.1x single-threaded on a Zen 3 (bench/gemm, NOTES 60). Same
  // arithmetic.
#pragma GCC unroll 4
#endif
  for (int64_t k = 0; k < kc; ++k) {
    R b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = V::load(Bp + v * V::N);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const R a = V::set1(Ap[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(a, b[v], acc[r][v]);
    }
    Ap += MR;
    Bp += NR;
  }
  if (rows == MR && cols == NR) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        Real* c = crow(r) + v * V::N;
        const R base = first ? (row_add ? V::load(row_add + v * V::N) : V::zero()) : V::load(c);
        V::store(c, V::add(base, acc[r][v]));
      }
    return;
  }
  alignas(64) Real tmp[MR][NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) V::store(&tmp[r][v * V::N], acc[r][v]);
  for (int64_t r = 0; r < rows; ++r) {
    Real* row = crow(r);
    for (int64_t c = 0; c < cols; ++c) row[c] = (first ? (row_add ? row_add[c] : Real(0)) : row[c]) + tmp[r][c];
  }
}

// This thread's share of the products parts[0..NPARTS) that share B: the same K x N matrix
// B (pointer, strides, b_packed) and the same accumulate flag, each with its own A, C, rows
// and row_add. They run as one product of their stacked rows (each part starting a new
// panel), so B is packed once for all of them; every element's arithmetic is the same as in
// a product of its part alone. workspace: Gemm::workspace_per_thread elements (64-byte
// aligned for speed; any alignment is correct).
template <typename Real, int NPARTS>
void gemm_part_stacked(const GemmArgs<Real> (&parts)[NPARTS], int tid, int nthreads, Real* workspace) {
  using P = Gemm<Real>;
  constexpr int MR = P::MR, NR = P::NR;
  const GemmArgs<Real>& g0 = parts[0];
  int64_t panels[NPARTS], mp = 0;  // panels of each part, of all parts
  for (int i = 0; i < NPARTS; ++i) mp += panels[i] = ceil_div(imax(parts[i].M, 0), MR);
  if (mp <= 0 || g0.N <= 0 || tid < 0 || tid >= nthreads) return;
  // Thread grid tm x tn over whole panels: least work for the busiest thread, then the
  // least packing (rows + columns per thread).
  const int64_t np = ceil_div(g0.N, NR);
  int tm = 1;
  int64_t best_work = -1, best_edge = 0;
  for (int t = 1; t <= nthreads; ++t) {
    if (nthreads % t) continue;
    const int64_t rows = ceil_div(mp, t) * MR, cols = ceil_div(np, nthreads / t) * NR;
    const int64_t work = rows * cols, edge = rows + cols;
    if (best_work < 0 || work * 32 < best_work * 31 || (work * 31 <= best_work * 32 && edge < best_edge)) {
      tm = t;
      best_work = work;
      best_edge = edge;
    }
  }
  const int tn = nthreads / tm, ti = tid % tm, tj = tid / tm;
  const int64_t p0 = mp * ti / tm, p1 = mp * (ti + 1) / tm;  // this thread's panels
  const int64_t n0 = imin(g0.N, np * tj / tn * NR), n1 = imin(g0.N, np * (tj + 1) / tn * NR);
  if (p0 >= p1 || n0 >= n1) return;
  // Each part's rows [m0[i], m1[i]) among this thread's panels.
  int64_t m0[NPARTS], m1[NPARTS];
  int64_t first_panel = 0;
  for (int i = 0; i < NPARTS; ++i) {
    const int64_t a = imax(p0, first_panel) - first_panel, b = imin(p1, first_panel + panels[i]) - first_panel;
    m0[i] = imin(parts[i].M, imax(a, 0) * MR);
    m1[i] = imin(parts[i].M, imax(b, 0) * MR);
    first_panel += panels[i];
  }
  if (g0.K <= 0) {  // empty product: C = row_add or 0 (unchanged when accumulating)
    if (g0.accumulate) return;
    for (int p = 0; p < NPARTS; ++p) {
      const GemmArgs<Real>& g = parts[p];
      for (int64_t i = m0[p]; i < m1[p]; ++i)
        for (int64_t j = n0; j < n1; ++j)
          g.C[(g.c_rows ? g.c_rows[i] : i) * g.ldc + j] = g.row_add ? g.row_add[j] : Real(0);
    }
    return;
  }
  Real* Ap = workspace;
  Real* Bp = workspace + P::a_block;
  const int64_t kstep = gemm_kstep<Real>(g0.K);
  for (int64_t jc = n0; jc < n1; jc += P::NC) {
    const int64_t nc = imin(P::NC, n1 - jc);
    for (int64_t pc = 0; pc < g0.K; pc += kstep) {
      const int64_t kc = imin(kstep, g0.K - pc);
      const bool first = pc == 0 && !g0.accumulate;
      // The K block at pc from the column panel of jc on (jc starts a panel), packed earlier
      // or now.
      const Real* Bq = g0.b_packed ? g0.b_packed + pc * np * NR + jc / NR * kc * NR : Bp;
      if (!g0.b_packed) pack_b(g0, jc, nc, pc, kc, Bp);
      for (int p = 0; p < NPARTS; ++p) {
        const GemmArgs<Real>& g = parts[p];
        for (int64_t ic = m0[p]; ic < m1[p]; ic += P::MC) {
          const int64_t mc = imin(P::MC, m1[p] - ic);
          pack_a(g, ic, mc, pc, kc, Ap);
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t rows = imin(MR, mc - ir);
            Real* Crow = g.C + (g.c_rows ? 0 : (ic + ir) * g.ldc) + jc;
            const int64_t* c_rows = g.c_rows ? g.c_rows + ic + ir : nullptr;
            for (int64_t jr = 0; jr < nc; jr += NR)
              gemm_micro(kc, Ap + ir * kc, Bq + jr * kc, Crow + jr, g.ldc, rows, imin(NR, nc - jr), first,
                         g.row_add ? g.row_add + jc + jr : nullptr, c_rows);
          }
        }
      }
    }
  }
}

// This thread's share of C = A . B (+ row_add).
template <typename Real>
void gemm_part(const GemmArgs<Real>& g, int tid, int nthreads, Real* workspace) {
  const GemmArgs<Real> one[1] = {g};
  gemm_part_stacked(one, tid, nthreads, workspace);
}

}  // namespace
}  // namespace FASTLSTM_TARGET
}  // namespace cpu
}  // namespace fastlstm
