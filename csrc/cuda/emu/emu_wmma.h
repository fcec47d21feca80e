// The CPU emulator's subset of CUDA's warp matrix functions (nvcuda::wmma, <mma.h>) and of
// bf16 (<cuda_bf16.h>): what csrc/cuda/tensor_gemm.cuh uses, for the tf32 and bf16 precision
// modes. Included by emu.h (after threadIdx is defined); not used by the real build.
//
// What it reproduces:
//   * the rounding of the operands: wmma::__float_to_tf32 is cvt.rna.tf32.f32 (round to
//     nearest, ties away from zero, to 10 stored mantissa bits: the low 13 bits of the float
//     become zero; NaN stays NaN, infinities stay, a finite value past the largest tf32 rounds
//     to infinity); __float2bfloat16_rn rounds to nearest even to 7 stored mantissa bits
//     (bf16 = the high 16 bits of a float; NaN stays NaN);
//   * the products: exact (tf32 x tf32 and bf16 x bf16 fit in a double exactly), accumulated
//     with float32 accumulators, one rounding to float per MMA (wmma k-step) with a model of
//     the hardware's truncation (see below);
//   * the API's contracts that the GPU enforces silently or by faulting: the pointers of
//     load_matrix_sync / store_matrix_sync 256-bit (32-byte) aligned, ldm a multiple of 16 bytes,
//     tf32 operands really rounded to tf32 when they reach mma_sync (a kernel that forgets the
//     rounding is an emulation error here; on the GPU the hardware would silently use the
//     value's high bits). A tf32 fragment may be loaded unrounded and rounded element by element
//     afterwards (precision tf32x3 splits each operand into two tf32 parts that way);
//   * that a warp's fragment is distributed over its 32 threads: each emulated thread computes
//     and stores only the accumulator elements it "owns" (element e of the 16 x 16 tile, in
//     row-major order, belongs to lane (e / 8) % 32: 8 consecutive elements per lane), and the
//     others are NaN in its copy. So a kernel that reads the stored tile before every lane has
//     stored its part (a missing __syncwarp) reads NaN or stale values in one of the emulator's
//     thread orders. (The mapping deliberately differs from the usual "lane + 32 i" read loops,
//     which an e % 32 mapping would make look race-free.)
//
// What it cannot reproduce (so the GPU's results differ from the emulator's in the last bits,
// and the tests compare both to a float64 reference with tolerances, never bitwise):
//   * exactly the accumulation inside the hardware MMA: the tensor cores add the products of
//     one instruction's k-block (8 for tf32 m16n8k8, 16 for bf16 m16n8k16) and the accumulator
//     with their own alignment and truncation (not IEEE round-to-nearest; measured by others to
//     align the terms to the largest and truncate, then normalise toward zero), in an order
//     and with a number of kept bits that NVIDIA does not document. The emulator models it: per
//     8 products, the products and the accumulator are each truncated toward zero to 22
//     significant bits of the largest term, and their sum is rounded toward zero to float
//     (detail::truncating_sum). That has the hardware's bias (each step shrinks the running
//     sum's magnitude), which is what grows with K. The 8 and the 22 are a calibration, not the
//     hardware's design: on an H200 (2026-11-27), GEMMs accumulated inside the MMAs were
//     3.3e-6 (tf32, 1000 x 520 x 700), 3.2e-6 (bf16, the same shape) and 4.2e-6 (tf32x3, three
//     MMAs per k-step, 200 x 17 x 300) from the float64 product of their rounded (split)
//     operands; on the same shapes and data this model gives 3.6e-6, 1.8e-6 (bf16, 64 x 64 x
//     700) and 4.1e-6, where 24 kept bits gave about 4x less than the GPU. The exact bits
//     differ from the GPU's.
//   * the real fragment layouts (which lane holds which element; documented as unspecified for
//     wmma): the emulator keeps whole tiles per thread and only models ownership of the
//     accumulator's elements. Element-wise access (fragment::x, num_elements) is provided, as on
//     the GPU, for operations that do the same to every element (which do not depend on the
//     layout); here x is the whole tile, so num_elements differs from the GPU's per-lane count,
//     and a kernel that picked elements by index would compute nonsense in one or the other.
//   * warp convergence: the GPU requires every lane of the warp to execute each wmma call
//     together (the kernels call them warp-uniformly); the emulator does not check it.
//   * subnormal and NaN payload details of the hardware conversions (NaN is canonicalised).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

// ---- bf16 ----------------------------------------------------------------------------------
struct __nv_bfloat16 {
  uint16_t bits;
};

inline uint32_t fl_emu_float_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
inline float fl_emu_bits_float(uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// Round to nearest, ties to even, keeping the high 16 bits of the float.
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  const uint32_t u = fl_emu_float_bits(v);
  __nv_bfloat16 out;
  if (std::isnan(v)) {
    out.bits = static_cast<uint16_t>(((u >> 16) & 0x8000u) | 0x7FC0u);
    return out;
  }
  const uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  out.bits = static_cast<uint16_t>(rounded >> 16);
  return out;
}
inline float __bfloat162float(__nv_bfloat16 b) { return fl_emu_bits_float(static_cast<uint32_t>(b.bits) << 16); }

namespace nvcuda {
namespace wmma {

// cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 stored mantissa bits.
inline float __float_to_tf32(float v) {
  if (std::isnan(v)) return std::numeric_limits<float>::quiet_NaN();
  const uint32_t u = fl_emu_float_bits(v);
  // add half a tf32 ulp to the magnitude (sign-magnitude: ties go away from zero), drop 13 bits;
  // a carry into the exponent is the correct rounding up (to infinity past the largest tf32)
  return fl_emu_bits_float((u + 0x1000u) & 0xFFFFE000u);
}

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
namespace precision {
struct tf32;
}
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
inline void fail(const std::string& what) {
  if (::fastlstm::cuda::emu::g_error.empty()) ::fastlstm::cuda::emu::g_error = "wmma: " + what;
}
inline void check_pointer(const void* p, unsigned ldm, size_t elem_bytes, const char* fn) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) fail(std::string(fn) + ": pointer not 256-bit aligned");
  if ((static_cast<size_t>(ldm) * elem_bytes) % 16 != 0)
    fail(std::string(fn) + ": ldm " + std::to_string(ldm) + " is not a multiple of 16 bytes");
}
template <class T>
struct storage;  // the memory type load_matrix_sync reads for fragment element type T
template <>
struct storage<precision::tf32> {
  using type = float;
  static float value(float v) { return v; }  // checked when it reaches mma_sync (rounded_tf32)
};
template <class Frag>
void check_rounded_tf32(const Frag& f) {
  for (int t = 0; t < Frag::num_elements; ++t)
    if (!std::isnan(f.x[t]) && (fl_emu_float_bits(f.x[t]) & 0x1FFFu)) {
      fail("a tf32 operand was not rounded to tf32 (low 13 bits set)");
      return;
    }
}
template <>
struct storage<__nv_bfloat16> {
  using type = __nv_bfloat16;
  static float value(__nv_bfloat16 v) { return __bfloat162float(v); }
};
template <class T, int K>
struct supported : std::false_type {};
template <>
struct supported<precision::tf32, 8> : std::true_type {};
template <>
struct supported<__nv_bfloat16, 16> : std::true_type {};
inline unsigned lane() { return threadIdx.x % 32u; }
// The model of the tensor cores' accumulation (see the notes at the top): the N terms (the
// products, exact in double, and the accumulator) are aligned to the largest one's exponent e
// and each is truncated toward zero to a multiple of 2^(e - kKeptBits + 1); the sum of those
// (exact in double: at most N * 2^kKeptBits quanta) is rounded toward zero to float. NaN and
// infinity pass through as in IEEE arithmetic.
constexpr int kChunk = 8;       // products per truncation step (tf32: one k-step; bf16: two per k-step)
constexpr int kKeptBits = 22;  // significant bits of the largest term that survive the alignment
template <int N>
float truncating_sum(const double (&t)[N]) {
  double big = 0.0, plain = 0.0;
  for (int i = 0; i < N; ++i) {
    plain += t[i];
    if (std::fabs(t[i]) > big) big = std::fabs(t[i]);
  }
  if (!std::isfinite(plain) || big == 0.0) return static_cast<float>(plain);
  const double q = std::ldexp(1.0, std::ilogb(big) - (kKeptBits - 1));
  double s = 0.0;
  for (int i = 0; i < N; ++i) s += std::trunc(t[i] / q) * q;
  float f = static_cast<float>(s);  // to nearest; then toward zero if that rounded up in magnitude
  if (std::fabs(static_cast<double>(f)) > std::fabs(s)) f = std::nextafter(f, 0.0f);
  return f;
}
inline unsigned owner(int e) { return static_cast<unsigned>(e / 8) % 32u; }  // the lane holding element e
}  // namespace detail

// A fragment holds the whole tile as floats in every emulated thread (rows x cols: m x k for
// matrix_a, k x n for matrix_b, m x n for the accumulator); see the notes above.
template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
 public:
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static_assert(M == 16 && N == 16, "emulated wmma: 16 x 16 tiles only");
  static constexpr int num_elements = rows * cols;
  float x[num_elements];  // row-major rows x cols
  float& at(int r, int c) { return x[r * cols + c]; }
  const float& at(int r, int c) const { return x[r * cols + c]; }
};

template <class T, int K, class L>
void load_matrix_sync(fragment<matrix_a, 16, 16, K, T, L>& f, const typename detail::storage<T>::type* p, unsigned ldm) {
  static_assert(detail::supported<T, K>::value, "emulated wmma: tf32 16x16x8 or bf16 16x16x16");
  detail::check_pointer(p, ldm, sizeof(*p), "load_matrix_sync(matrix_a)");
  for (int m = 0; m < 16; ++m)
    for (int k = 0; k < K; ++k)
      f.at(m, k) = detail::storage<T>::value(std::is_same<L, row_major>::value ? p[m * ldm + k] : p[k * ldm + m]);
}

template <class T, int K, class L>
void load_matrix_sync(fragment<matrix_b, 16, 16, K, T, L>& f, const typename detail::storage<T>::type* p, unsigned ldm) {
  static_assert(detail::supported<T, K>::value, "emulated wmma: tf32 16x16x8 or bf16 16x16x16");
  detail::check_pointer(p, ldm, sizeof(*p), "load_matrix_sync(matrix_b)");
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < 16; ++n)
      f.at(k, n) = detail::storage<T>::value(std::is_same<L, row_major>::value ? p[k * ldm + n] : p[n * ldm + k]);
}

template <int K>
void fill_fragment(fragment<accumulator, 16, 16, K, float>& f, float v) {
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) f.at(m, n) = v;
}

// d = a . b + c for the elements this lane owns (d may be c); the others become NaN.
template <int K, class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, K, float>& d, const fragment<matrix_a, 16, 16, K, T, LA>& a,
              const fragment<matrix_b, 16, 16, K, T, LB>& b, const fragment<accumulator, 16, 16, K, float>& c) {
  if (std::is_same<T, precision::tf32>::value) {
    detail::check_rounded_tf32(a);
    detail::check_rounded_tf32(b);
  }
  const unsigned lane = detail::lane();
  for (int e = 0; e < 256; ++e) {
    const int m = e / 16, n = e % 16;
    if (detail::owner(e) != lane) {
      d.at(m, n) = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    static_assert(K % detail::kChunk == 0, "whole truncation steps per k-step");
    float acc = c.at(m, n);
    for (int k0 = 0; k0 < K; k0 += detail::kChunk) {
      double terms[detail::kChunk + 1];
      for (int k = 0; k < detail::kChunk; ++k)
        terms[k] = static_cast<double>(a.at(m, k0 + k)) * static_cast<double>(b.at(k0 + k, n));
      terms[detail::kChunk] = static_cast<double>(acc);
      acc = detail::truncating_sum<detail::kChunk + 1>(terms);
    }
    d.at(m, n) = acc;
  }
}

// Stores the elements this lane owns.
template <int K>
void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, K, float>& f, unsigned ldm, layout_t layout) {
  detail::check_pointer(p, ldm, sizeof(float), "store_matrix_sync");
  const unsigned lane = detail::lane();
  for (int e = 0; e < 256; ++e) {
    if (detail::owner(e) != lane) continue;
    const int m = e / 16, n = e % 16;
    p[layout == mem_row_major ? m * ldm + n : n * ldm + m] = f.at(m, n);
  }
}

}  // namespace wmma
}  // namespace nvcuda
