// SIMD vectors for the per-ISA kernel objects. Included only by lstm_kernels.cc, which is
// compiled once per target with that target's flags; everything here lives in the target's
// namespace, so no inline function compiled for AVX-512 can be picked by the linker for
// another target.
//
// Vec<Real>::R is the register type and N its width in elements:
//   AVX-512: 16 floats / 8 doubles; AVX2+FMA: 8 / 4; scalar: 1 / 1.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef FASTLSTM_TARGET
#error "FASTLSTM_TARGET must name the instruction set this object is compiled for"
#endif

namespace fastlstm {
namespace cpu {
namespace FASTLSTM_TARGET {

template <typename Real>
struct Vec;

#if defined(__AVX512F__) || defined(__AVX2__)
// The first two stages of the in-register float transposes (Vec<float>::transpose), shared by
// AVX-512 (16 x 16) and AVX2 (8 x 8): 32-bit, then 64-bit interleaves within 128-bit lanes.
#if defined(__AVX512F__)
using F32Rows = __m512;
inline __m512 lo32(__m512 a, __m512 b) { return _mm512_unpacklo_ps(a, b); }
inline __m512 hi32(__m512 a, __m512 b) { return _mm512_unpackhi_ps(a, b); }
inline __m512 lo64(__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); }
inline __m512 hi64(__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); }
#else
using F32Rows = __m256;
inline __m256 lo32(__m256 a, __m256 b) { return _mm256_unpacklo_ps(a, b); }
inline __m256 hi32(__m256 a, __m256 b) { return _mm256_unpackhi_ps(a, b); }
inline __m256 lo64(__m256 a, __m256 b) { return _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(a), _mm256_castps_pd(b))); }
inline __m256 hi64(__m256 a, __m256 b) { return _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(a), _mm256_castps_pd(b))); }
#endif
// r[0..n) rows -> u[0..n): lane L of u[4k + c] holds column 4L + c of rows 4k .. 4k + 3.
template <int n>
inline void interleave_rows(const F32Rows* r, F32Rows* u) {
  F32Rows t[n];
  for (int k = 0; k < n / 2; ++k) {
    t[2 * k] = lo32(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = hi32(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < n / 4; ++k) {
    u[4 * k] = lo64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 1] = hi64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 2] = lo64(t[4 * k + 1], t[4 * k + 3]);
    u[4 * k + 3] = hi64(t[4 * k + 1], t[4 * k + 3]);
  }
}
#if defined(__AVX512F__)
// The last stage of the AVX-512 transposes: lane L of x[q s + c] holds rows 4q.. (floats) or
// 2q.. (doubles) of output row L s + c, which is gathered from the four x[q s + c].
template <int imm>
inline __m512 lanes(__m512 a, __m512 b) { return _mm512_shuffle_f32x4(a, b, imm); }
template <int imm>
inline __m512d lanes(__m512d a, __m512d b) { return _mm512_shuffle_f64x2(a, b, imm); }
template <typename R, int s>
inline void gather_lanes(const R* x, R* r) {
  for (int c = 0; c < s; ++c) {
    const R v0 = lanes<0x88>(x[c], x[s + c]), v1 = lanes<0xDD>(x[c], x[s + c]);
    const R w0 = lanes<0x88>(x[2 * s + c], x[3 * s + c]), w1 = lanes<0xDD>(x[2 * s + c], x[3 * s + c]);
    r[c] = lanes<0x88>(v0, w0);
    r[s + c] = lanes<0x88>(v1, w1);
    r[2 * s + c] = lanes<0xDD>(v0, w0);
    r[3 * s + c] = lanes<0xDD>(v1, w1);
  }
}
#endif
#endif

#if defined(__AVX512F__)
template <>
struct Vec<float> {
  using R = __m512;
  static constexpr int N = 16;
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static R set1(float a) { return _mm512_set1_ps(a); }
  static R zero() { return _mm512_setzero_ps(); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }   // a*b + c
  static R fnmadd(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); } // c - a*b
  // max/min return the second operand when either is NaN (x86 semantics); callers pass the
  // data as the second operand so NaN propagates.
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R min(R a, R b) { return _mm512_min_ps(a, b); }
  static R sqrt(R a) { return _mm512_sqrt_ps(a); }
  static float hsum(R a) { return _mm512_reduce_add_ps(a); }
  // p * 2^n for integer-valued n (one instruction here).
  static R scale2n(R p, R n) { return _mm512_scalef_ps(p, n); }
  // r[0..15], 16 rows of a 16 x 16 tile := the tile's columns (an in-register transpose:
  // 32-bit then 64-bit interleaves within 128-bit lanes, then two rounds of lane shuffles).
  static void transpose(R* r) {
    R u[16];
    interleave_rows<16>(r, u);  // lane L of u[4k + c]: column 4L + c of rows 4k .. 4k + 3
    gather_lanes<R, 4>(u, r);
  }
};
template <>
struct Vec<double> {
  using R = __m512d;
  static constexpr int N = 8;
  static R load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, R v) { _mm512_storeu_pd(p, v); }
  static R set1(double a) { return _mm512_set1_pd(a); }
  static R zero() { return _mm512_setzero_pd(); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static R div(R a, R b) { return _mm512_div_pd(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm512_fnmadd_pd(a, b, c); }
  static R max(R a, R b) { return _mm512_max_pd(a, b); }
  static R min(R a, R b) { return _mm512_min_pd(a, b); }
  static R sqrt(R a) { return _mm512_sqrt_pd(a); }
  static double hsum(R a) { return _mm512_reduce_add_pd(a); }
  // 2^n for integer-valued n in [-1022, 1023].
  static R scale2n(R p, R n) { return _mm512_scalef_pd(p, n); }
  // r[0..7], 8 rows of an 8 x 8 tile := the tile's columns.
  static void transpose(R* r) {
    R t[8];
    for (int k = 0; k < 4; ++k) {
      t[2 * k] = _mm512_unpacklo_pd(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm512_unpackhi_pd(r[2 * k], r[2 * k + 1]);
    }
    gather_lanes<R, 2>(t, r);  // lane L of t[2k + c]: column 2L + c of rows 2k, 2k + 1
  }
};
#elif defined(__AVX2__)
template <>
struct Vec<float> {
  using R = __m256;
  static constexpr int N = 8;
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static R set1(float a) { return _mm256_set1_ps(a); }
  static R zero() { return _mm256_setzero_ps(); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R sqrt(R a) { return _mm256_sqrt_ps(a); }
  static float hsum(R a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static R pow2n(R n) {
    R biased = _mm256_add_ps(n, _mm256_set1_ps(8388608.0f + 127.0f));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(biased), 23));
  }
  static R scale2n(R p, R n) { return mul(p, pow2n(n)); }
  // r[0..7], 8 rows of an 8 x 8 tile := the tile's columns.
  static void transpose(R* r) {
    R u[8];
    interleave_rows<8>(r, u);  // lane L of u[4k + c]: column 4L + c of rows 4k .. 4k + 3
    for (int c = 0; c < 4; ++c) {
      r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
      r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
  }
};
template <>
struct Vec<double> {
  using R = __m256d;
  static constexpr int N = 4;
  static R load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, R v) { _mm256_storeu_pd(p, v); }
  static R set1(double a) { return _mm256_set1_pd(a); }
  static R zero() { return _mm256_setzero_pd(); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R div(R a, R b) { return _mm256_div_pd(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm256_fnmadd_pd(a, b, c); }
  static R max(R a, R b) { return _mm256_max_pd(a, b); }
  static R min(R a, R b) { return _mm256_min_pd(a, b); }
  static R sqrt(R a) { return _mm256_sqrt_pd(a); }
  static double hsum(R a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static R pow2n(R n) {
    R biased = _mm256_add_pd(n, _mm256_set1_pd(4503599627370496.0 + 1023.0));
    return _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(biased), 52));
  }
  static R scale2n(R p, R n) { return mul(p, pow2n(n)); }
  // r[0..3], 4 rows of a 4 x 4 tile := the tile's columns.
  static void transpose(R* r) {
    const R t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const R t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
};
#else
// Portable path: one element per "vector", written so the compiler may still vectorise.
template <typename Real, typename Bits, int kMantissa, int kBias>
struct ScalarVec {
  using R = Real;
  static constexpr int N = 1;
  static R load(const Real* p) { return *p; }
  static void store(Real* p, R v) { *p = v; }
  static R set1(Real a) { return a; }
  static R zero() { return Real(0); }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R div(R a, R b) { return a / b; }
  static R fmadd(R a, R b, R c) { return a * b + c; }
  static R fnmadd(R a, R b, R c) { return c - a * b; }
  static R max(R a, R b) { return a > b ? a : b; }  // NaN in b (the data) propagates
  static R min(R a, R b) { return a < b ? a : b; }
  static R sqrt(R a) { return std::sqrt(a); }
  static Real hsum(R a) { return a; }
  static R pow2n(R n) {
    if (n != n) return n;  // NaN
    Bits bits = static_cast<Bits>(static_cast<int64_t>(n) + kBias) << kMantissa;
    Real r;
    std::memcpy(&r, &bits, sizeof r);
    return r;
  }
  static R scale2n(R p, R n) { return mul(p, pow2n(n)); }
  static void transpose(R*) {}  // a 1 x 1 tile
};
template <>
struct Vec<float> : ScalarVec<float, uint32_t, 23, 127> {};
template <>
struct Vec<double> : ScalarVec<double, uint64_t, 52, 1023> {};
#endif

// a, opaque to the optimiser: a product passed through it is rounded on its own, never fused
// with the add or subtract that follows into an FMA (GCC contracts a * b + c by default, for
// intrinsics too). For code that must give the same bits as NumPy's unfused arithmetic.
template <typename T>
inline T unfused(T a) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(a));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(a));
#else
  volatile T keep = a;
  a = keep;
#endif
  return a;
}

// exp(x) to about 1 ulp: x = n ln2 + r with |r| <= ln2/2, exp(r) by its Taylor series
// (7 terms past 1 for float, 13 for double: truncation below 1e-8 / 1e-16 relative), then
// times 2^n. Written for few instructions (the forward's gate epilogue is 5 of these per unit;
// NOTES 20): one FMA per term, no rounding instruction, AVX-512's scalef for the 2^n.
// Inputs are clamped to the range where 2^n is a normal number; NaN propagates.
template <typename Real>
struct ExpConst;
template <>
struct ExpConst<float> {
  static constexpr float lo = -87.0f, hi = 88.0f;
  static constexpr float hi_inf = 89.0f;  // (vexp<float, true>: n = 128 here, see vexp_reduce)
  static constexpr int terms = 7;
  static constexpr float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
};
template <>
struct ExpConst<double> {
  static constexpr double lo = -708.0, hi = 709.0;
  static constexpr double hi_inf = 710.0;
  static constexpr int terms = 13;
  static constexpr double ln2_hi = 0.6931471803691238, ln2_lo = 1.9082149292705877e-10;
};

// 1/k! for the Taylor series of exp.
constexpr double inverse_factorial(int k) { return k <= 1 ? 1.0 : inverse_factorial(k - 1) / k; }

// x clamped, then split as x = n ln2 + r (|r| <= ln2/2): returns n, sets r. OVERFLOW: the
// upper clamp is hi_inf (n = 128 / 1024 there), so exp overflows to +inf: on the scalar and
// AVX2 paths from n = 128 / 1024 on, i.e. x >= 127.5 ln2 = 88.38 (1023.5 ln2 = 709.44), where
// pow2n is +inf; on AVX-512 from ln(FLT_MAX) = 88.72 (709.78), since scalef keeps p 2^n
// finite while p < 1.
template <typename Real, bool OVERFLOW = false>
inline typename Vec<Real>::R vexp_reduce(typename Vec<Real>::R x, typename Vec<Real>::R& r) {
  using V = Vec<Real>;
  using C = ExpConst<Real>;
  using R = typename V::R;
  x = V::max(V::set1(C::lo), x);
  x = V::min(V::set1(OVERFLOW ? C::hi_inf : C::hi), x);
  // n = x / ln2 rounded to the nearest integer (ties to even): adding 1.5 * 2^(mantissa bits)
  // leaves no fraction bits (exact for |x / ln2| << 2^22); subtracting it gives n exactly.
  const R magic = V::set1(std::is_same<Real, float>::value ? Real(12582912.0) : Real(6755399441055744.0));
  const R n = V::sub(V::fmadd(x, V::set1(Real(1.4426950408889634)), magic), magic);
  r = V::fnmadd(n, V::set1(C::ln2_hi), x);
  r = V::fnmadd(n, V::set1(C::ln2_lo), r);
  return n;
}

template <typename Real, bool OVERFLOW = false>
inline typename Vec<Real>::R vexp(typename Vec<Real>::R x) {
  using V = Vec<Real>;
  using C = ExpConst<Real>;
  using R = typename V::R;
  R r;
  const R n = vexp_reduce<Real, OVERFLOW>(x, r);
  // Horner on the coefficients 1/k!, highest first: one FMA per term.
  R p = V::set1(Real(inverse_factorial(C::terms)));
  for (int k = C::terms - 1; k >= 0; --k) p = V::fmadd(p, r, V::set1(Real(inverse_factorial(k))));
  return V::scale2n(p, n);
}

// exp(x) - 1 without cancellation near 0: 2^n (1 + q) - 1 = 2^n q + (2^n - 1), with
// q = exp(r) - 1 = r (1 + r/2! + ... ) by the same Taylor terms as vexp, and 2^n - 1 exact
// for |n| < 25 (54 for double; beyond, 2^n dominates and its rounding is harmless);
// for |x| <= ln2/2 (n = 0) it is q itself, accurate to a few ulp relative however small x is.
template <typename Real>
inline typename Vec<Real>::R vexpm1(typename Vec<Real>::R x) {
  using V = Vec<Real>;
  using C = ExpConst<Real>;
  using R = typename V::R;
  R r;
  const R n = vexp_reduce<Real>(x, r);
  R p = V::set1(Real(inverse_factorial(C::terms)));
  for (int k = C::terms - 1; k >= 1; --k) p = V::fmadd(p, r, V::set1(Real(inverse_factorial(k))));
  const R q = V::mul(p, r);
  const R s = V::scale2n(V::set1(Real(1)), n);
  return V::fmadd(s, q, V::sub(s, V::set1(Real(1))));
}

// sigmoid(x) = 1 / (1 + exp(-x)); from about -88.4 / -709.4 down (AVX-512: -88.72 / -709.78;
// see vexp_reduce) exp(-x) is +inf and the result exactly 0. The true values dropped there
// are subnormals (at most 4.1e-39 / 7.4e-309; the true sigmoid rounds to 0 only below -103.97 /
// -745.13). Before, it was a constant tiny positive number from the clamped exp, whose
// s (1 - s) then gave O(1) gradients times huge weights (session 20's audit).
template <typename Real>
inline typename Vec<Real>::R vsigmoid(typename Vec<Real>::R x) {
  using V = Vec<Real>;
  typename V::R one = V::set1(Real(1));
  return V::div(one, V::add(one, vexp<Real, true>(V::sub(V::zero(), x))));
}

// tanh(x) = m / (m + 2) with m = expm1(2x): a few ulp relative everywhere. (It was
// (1 - e) / (1 + e) with e = exp(-2x), whose 1 - e cancels near 0: an absolute error of about
// 1 ulp of 1, so tanh(1e-8) came out 0 in float32 and small cell states lost their digits;
// session 20's numerics audit.) Large |x|: m is clamped (vexp_reduce), so the result is
// +-1, not inf / inf. tanh(-0) gives +0.
template <typename Real>
inline typename Vec<Real>::R vtanh(typename Vec<Real>::R x) {
  using V = Vec<Real>;
  const typename V::R m = vexpm1<Real>(V::add(x, x));
  return V::div(m, V::add(m, V::set1(Real(2))));
}

}  // namespace FASTLSTM_TARGET
}  // namespace cpu
}  // namespace fastlstm
