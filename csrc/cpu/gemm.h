// General matrix product for the per-ISA kernel objects (included only by lstm_kernels.cc,
// inside its target namespace; see simd.h for why).
#pragma once

#include <cstdint>

#include "cpu/simd.h"

namespace fastlstm {
namespace cpu {
namespace FASTLSTM_TARGET {
namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------
// General matrix product C (M x N) = A (M x K) . B (K x N) with arbitrary strides, packed
// into panels for an MR x NR register tile. Threads split C into tiles; each C element is
// reduced over K by one thread, in blocks of KC in increasing order.
// ---------------------------------------------------------------------------------------
template <typename Real>
struct Gemm {
  static constexpr int MR = 6;
  static constexpr int NR = 2 * Vec<Real>::N;
  static constexpr int64_t KC = 256;
  static constexpr int64_t MC = 96;   // multiple of MR
  static constexpr int64_t NC = 512;  // multiple of NR
  static constexpr int64_t workspace_per_thread = MC * KC + KC * NC;
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
};

template <typename Real>
void pack_a(const GemmArgs<Real>& g, int64_t i0, int64_t mc, int64_t k0, int64_t kc, Real* Ap) {
  constexpr int MR = Gemm<Real>::MR;
  for (int64_t ip = 0; ip < mc; ip += MR) {
    const int64_t rows = imin(MR, mc - ip);
    for (int64_t k = 0; k < kc; ++k) {
      const Real* src = g.A + (i0 + ip) * g.a_rs + (k0 + k) * g.a_cs;
      int64_t r = 0;
      for (; r < rows; ++r) Ap[r] = src[r * g.a_rs];
      for (; r < MR; ++r) Ap[r] = Real(0);
      Ap += MR;
    }
  }
}

template <typename Real>
void pack_b(const GemmArgs<Real>& g, int64_t j0, int64_t nc, int64_t k0, int64_t kc, Real* Bp) {
  constexpr int NR = Gemm<Real>::NR;
  for (int64_t jp = 0; jp < nc; jp += NR) {
    const int64_t cols = imin(NR, nc - jp);
    for (int64_t k = 0; k < kc; ++k) {
      const Real* src = g.B + (k0 + k) * g.b_rs + (j0 + jp) * g.b_cs;
      int64_t c = 0;
      if (g.b_cs == 1) {
        for (; c < cols; ++c) Bp[c] = src[c];
      } else {
        for (; c < cols; ++c) Bp[c] = src[c * g.b_cs];
      }
      for (; c < NR; ++c) Bp[c] = Real(0);
      Bp += NR;
    }
  }
}

// acc = Ap . Bp over kc; then C = acc (+ row_add) when first, else C += acc.
template <typename Real>
void gemm_micro(int64_t kc, const Real* Ap, const Real* Bp, Real* C, int64_t ldc, int64_t rows,
                int64_t cols, bool first, const Real* row_add) {
  using V = Vec<Real>;
  using R = typename V::R;
  constexpr int MR = Gemm<Real>::MR;
  constexpr int NV = Gemm<Real>::NR / V::N;
  R acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  for (int64_t k = 0; k < kc; ++k) {
    R b[NV];
    for (int v = 0; v < NV; ++v) b[v] = V::load(Bp + k * Gemm<Real>::NR + v * V::N);
    for (int r = 0; r < MR; ++r) {
      R a = V::set1(Ap[k * MR + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(a, b[v], acc[r][v]);
    }
  }
  if (rows == MR && cols == Gemm<Real>::NR) {
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) {
        Real* c = C + r * ldc + v * V::N;
        R base = first ? (row_add ? V::load(row_add + v * V::N) : V::zero()) : V::load(c);
        V::store(c, V::add(base, acc[r][v]));
      }
    return;
  }
  alignas(64) Real tmp[MR][Gemm<Real>::NR];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) V::store(&tmp[r][v * V::N], acc[r][v]);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      Real base = first ? (row_add ? row_add[c] : Real(0)) : C[r * ldc + c];
      C[r * ldc + c] = base + tmp[r][c];
    }
}

// This thread's share of C = A . B (+ row_add). workspace: Gemm::workspace_per_thread.
template <typename Real>
void gemm_part(const GemmArgs<Real>& g, int tid, int nthreads, Real* workspace) {
  using P = Gemm<Real>;
  if (g.M <= 0 || g.N <= 0) return;
  const int64_t m_tiles = ceil_div(g.M, P::MC);
  // Narrow the column tiles when there are too few tiles to go round the threads.
  int64_t nc = P::NC;
  const int64_t want_n_tiles = ceil_div(2 * nthreads, m_tiles);
  if (want_n_tiles > 1) nc = imin(nc, ceil_div(ceil_div(g.N, want_n_tiles), P::NR) * P::NR);
  const int64_t n_tiles = ceil_div(g.N, nc);
  Real* Ap = workspace;
  Real* Bp = workspace + P::MC * P::KC;
  for (int64_t tile = tid; tile < m_tiles * n_tiles; tile += nthreads) {
    const int64_t i0 = (tile % m_tiles) * P::MC, j0 = (tile / m_tiles) * nc;
    const int64_t mc = imin(P::MC, g.M - i0), ncur = imin(nc, g.N - j0);
    if (g.K <= 0) {  // empty product: C = row_add or 0
      for (int64_t i = 0; i < mc; ++i)
        for (int64_t j = 0; j < ncur; ++j)
          g.C[(i0 + i) * g.ldc + j0 + j] = g.row_add ? g.row_add[j0 + j] : Real(0);
      continue;
    }
    for (int64_t k0 = 0; k0 < g.K; k0 += P::KC) {
      const int64_t kc = imin(P::KC, g.K - k0);
      pack_b(g, j0, ncur, k0, kc, Bp);
      pack_a(g, i0, mc, k0, kc, Ap);
      for (int64_t jp = 0; jp < ncur; jp += P::NR)
        for (int64_t ip = 0; ip < mc; ip += P::MR)
          gemm_micro(kc, Ap + ip * kc, Bp + jp * kc, g.C + (i0 + ip) * g.ldc + j0 + jp, g.ldc,
                     imin(P::MR, mc - ip), imin(P::NR, ncur - jp), k0 == 0,
                     g.row_add ? g.row_add + j0 + jp : nullptr);
    }
  }
}

}  // namespace
}  // namespace FASTLSTM_TARGET
}  // namespace cpu
}  // namespace fastlstm
