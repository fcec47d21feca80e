// Run-time choice of the CPU kernel table, and argument validation.
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace fastlstm {

namespace {

bool dims_ok(const Dims& d) { return d.T >= 0 && d.B >= 0 && d.I >= 1 && d.H >= 1; }

const char* lengths_ok(const int64_t* lengths, const Dims& d) {
  if (!lengths) return nullptr;
  for (int64_t b = 0; b < d.B; ++b)
    if (lengths[b] < 0 || lengths[b] > d.T) return "lengths: every entry must be in [0, T]";
  return nullptr;
}

}  // namespace

template <typename Real>
const char* validate(const ForwardArgs<Real>& a) {
  if (!dims_ok(a.dims)) return "dims: need T >= 0, B >= 0, I >= 1, H >= 1";
  if (!a.x || !a.kernel || !a.recurrent_kernel) return "x, kernel and recurrent_kernel are required";
  if (!a.y || !a.h_n || !a.c_n) return "y, h_n and c_n outputs are required";
  if ((a.gates == nullptr) != (a.cells == nullptr)) return "gates and cells must be given together";
  return lengths_ok(a.lengths, a.dims);
}

template <typename Real>
const char* validate(const BackwardArgs<Real>& a) {
  if (!dims_ok(a.dims)) return "dims: need T >= 0, B >= 0, I >= 1, H >= 1";
  if (!a.x || !a.kernel || !a.recurrent_kernel) return "x, kernel and recurrent_kernel are required";
  if (!a.gates || !a.cells) return "gates and cells saved by the forward are required";
  if (!a.dh0 || !a.dc0 || !a.dkernel || !a.drecurrent_kernel)
    return "dh0, dc0, dkernel and drecurrent_kernel outputs are required";
  return lengths_ok(a.lengths, a.dims);
}

template const char* validate(const ForwardArgs<float>&);
template const char* validate(const ForwardArgs<double>&);
template const char* validate(const BackwardArgs<float>&);
template const char* validate(const BackwardArgs<double>&);

namespace cpu {
namespace {

struct Target {
  const char* name;
  const KernelTable& (*table)();
  bool (*supported)();
};

#if defined(__x86_64__) || defined(__i386__)
// The OS must save the wider registers (XCR0) as well as the CPU having the instructions.
unsigned long long xcr0() {
  unsigned a, b, c, d;
  __cpuid(1, a, b, c, d);
  if (!(c & (1u << 27))) return 0;  // no OSXSAVE
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}
bool has_avx2() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  unsigned a1, b1, c1, d1;
  __cpuid(1, a1, b1, c1, d1);
  const bool fma = c1 & (1u << 12), avx = c1 & (1u << 28), avx2 = b & (1u << 5);
  return fma && avx && avx2 && (xcr0() & 0x6) == 0x6;
}
bool has_avx512() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  return has_avx2() && f && dq && bw && vl && (xcr0() & 0xe6) == 0xe6;
}
#endif
bool always() { return true; }

const std::vector<Target>& targets() {
  static const std::vector<Target> all = {
#if defined(FASTLSTM_HAVE_SCALAR)
      {"scalar", &scalar::kernel_table, &always},
#endif
#if defined(FASTLSTM_HAVE_AVX2)
      {"avx2", &avx2::kernel_table, &has_avx2},
#endif
#if defined(FASTLSTM_HAVE_AVX512)
      {"avx512", &avx512::kernel_table, &has_avx512},
#endif
  };
  return all;
}

const Target* find(const std::string& name) {
  for (const Target& t : targets())
    if (name == t.name) return &t;
  return nullptr;
}

std::mutex g_mutex;
const KernelTable* g_active = nullptr;

const KernelTable& select(const std::string& name, const char* source) {
  static const char* known[] = {"scalar", "avx2", "avx512"};
  bool is_known = false;
  for (const char* k : known) is_known = is_known || name == k;
  if (!is_known) {
    const std::string message = std::string(source) + ": unknown instruction set '" + name +
                                "'; expected one of scalar, avx2, avx512";
    // A bad argument is a ValueError; a bad environment is a RuntimeError at import.
    if (std::string(source) == "FASTLSTM_ISA") throw std::runtime_error(message);
    throw std::invalid_argument(message);
  }
  const Target* t = find(name);
  if (!t)
    throw std::runtime_error(std::string(source) + ": instruction set '" + name +
                             "' was not compiled into this build of fastlstm");
  if (!t->supported())
    throw std::runtime_error(std::string(source) + ": this processor does not support '" + name + "'");
  return t->table();
}

}  // namespace

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (const Target& t : targets()) names.push_back(t.name);
  return names;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const Target& t : targets())
    if (t.supported()) names.push_back(t.name);
  return names;
}

const KernelTable& active() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_active) {
    const char* forced = std::getenv("FASTLSTM_ISA");
    if (forced && *forced) {
      g_active = &select(forced, "FASTLSTM_ISA");
    } else {
      const std::vector<std::string> ok = supported_isas();
      g_active = &select(ok.back(), "fastlstm");
    }
  }
  return *g_active;
}

void set_isa(const std::string& name) {
  const KernelTable& table = select(name, "set_isa");
  std::lock_guard<std::mutex> lock(g_mutex);
  g_active = &table;
}

namespace {
template <typename Args>
void check(const Args& a) {
  if (const char* message = validate(a)) throw std::invalid_argument(message);
}
}  // namespace

namespace {
template <typename Real>
void check_packed(const ForwardArgs<Real>& a, const PackedWeights* p) {
  if (!p) return;
  if (p->is_double != std::is_same<Real, double>::value || p->I != a.dims.I || p->H != a.dims.H)
    throw std::invalid_argument("packed: weights packed for I=" + std::to_string(p->I) + ", H=" +
                                std::to_string(p->H) + ", " + (p->is_double ? "float64" : "float32") +
                                " do not match this call's I=" + std::to_string(a.dims.I) + ", H=" +
                                std::to_string(a.dims.H) + ", " +
                                (std::is_same<Real, double>::value ? "float64" : "float32"));
}
void check_pack_dims(int64_t I, int64_t H) {
  if (I < 1 || H < 1) throw std::invalid_argument("pack: need I >= 1 and H >= 1");
}
}  // namespace

void forward(const ForwardArgs<float>& a, const PackedWeights* p) { check(a); check_packed(a, p); active().forward_f32(a, p); }
void forward(const ForwardArgs<double>& a, const PackedWeights* p) { check(a); check_packed(a, p); active().forward_f64(a, p); }
PackedWeights pack(const float* k, const float* r, int64_t I, int64_t H) { check_pack_dims(I, H); return active().pack_f32(k, r, I, H); }
PackedWeights pack(const double* k, const double* r, int64_t I, int64_t H) { check_pack_dims(I, H); return active().pack_f64(k, r, I, H); }
void backward(const BackwardArgs<float>& a) { check(a); active().backward_f32(a); }
void backward(const BackwardArgs<double>& a) { check(a); active().backward_f64(a); }
void matmul(const MatmulArgs<float>& a) { active().matmul_f32(a); }
void matmul(const MatmulArgs<double>& a) { active().matmul_f64(a); }
void transpose(const float* s, int64_t rows, int64_t cols, int64_t lds, float* d) { active().transpose_f32(s, rows, cols, lds, d); }
void transpose(const double* s, int64_t rows, int64_t cols, int64_t lds, double* d) { active().transpose_f64(s, rows, cols, lds, d); }
void adam(const AdamArgs<float>& a) { active().adam_f32(a); }
void adam(const AdamArgs<double>& a) { active().adam_f64(a); }
void rmsprop(const RmspropArgs<float>& a) { active().rmsprop_f32(a); }
void rmsprop(const RmspropArgs<double>& a) { active().rmsprop_f64(a); }
void sgd(const SgdArgs<float>& a) { active().sgd_f32(a); }
void sgd(const SgdArgs<double>& a) { active().sgd_f64(a); }
void index_add_rows(float* t, int64_t D, const int64_t* r, int64_t n, const float* v) { active().index_add_rows_f32(t, D, r, n, v); }
void index_add_rows(double* t, int64_t D, const int64_t* r, int64_t n, const double* v) { active().index_add_rows_f64(t, D, r, n, v); }

}  // namespace cpu
}  // namespace fastlstm
