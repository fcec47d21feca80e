// fastlstm CPU backend: instruction-set dispatch and the kernel table.
//
// csrc/cpu/lstm_kernels.cc is compiled once per instruction set (scalar, avx2,
// avx512), each copy in namespace fastlstm::cpu::<target>, and exports one
// KernelTable. dispatch.cc picks one table at load time (or from FASTLSTM_ISA).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "fastlstm/lstm.h"

namespace fastlstm {
namespace cpu {

// The forward's weights in the layouts its kernels stream (kernel as the input projection's
// matrix-product panels, recurrent_kernel one block of units at a time), packed once so that
// calls with unchanged weights skip the packing. Made by one table's pack functions for that
// table only: forward() with another table in use ignores it (and packs as usual). The
// caller promises that kernel and recurrent_kernel have not changed since they were packed.
struct PackedWeights {
  std::string isa;           // the table that packed them
  int64_t I = 0, H = 0;
  bool is_double = false;
  std::shared_ptr<void> kernel_panels;  // see pack() in lstm_kernels.cc
  std::shared_ptr<void> recurrent;
};

// C (M, N; row stride ldc) = A (M, K) . B (K, N) (+ row_add (N,) on every row), A and B read
// through element strides: A(m, k) = A[m a_rs + k a_cs], B(k, n) = B[k b_rs + n b_cs]. The
// kernels' own matrix product (gemm.h) on their thread pool, for the model's Dense layers:
// NumPy's BLAS would wake its own threads, which then spin beside the LSTM kernels' (NOTES
// 50). Each element is summed in an order that depends on K alone: the same bits for any
// thread count.
template <typename Real>
struct MatmulArgs {
  int64_t M = 0, N = 0, K = 0;
  const Real* A = nullptr;
  int64_t a_rs = 0, a_cs = 0;
  const Real* B = nullptr;
  int64_t b_rs = 0, b_cs = 0;
  const Real* row_add = nullptr;
  Real* C = nullptr;
  int64_t ldc = 0;
};

// An element-wise optimizer step in place over n elements: the variable w and its gradient g,
// then each optimizer's slots and scalars (rounded to Real). All arrays contiguous, none
// overlapping another.
template <typename Real>
struct UpdateArgs {
  Real* w = nullptr;
  const Real* g = nullptr;
  int64_t n = 0;
};

// Adam (fastlstm.optimizers.Adam, Keras's form), each element:
//   m += (g - m) * c1;   v += (g * g - v) * c2;   w -= (m * alpha) / (sqrt(v) + epsilon)
// with c1 = 1 - beta_1, c2 = 1 - beta_2 and alpha the step's bias-corrected learning rate.
template <typename Real>
struct AdamArgs : UpdateArgs<Real> {
  Real *m = nullptr, *v = nullptr;
  Real c1 = 0, c2 = 0, alpha = 0, epsilon = 0;
};

// RMSprop (fastlstm.optimizers.RMSprop, not centered), each element:
//   v = v * rho + c * (g * g);   step = (lr * g) / sqrt(v + epsilon);
//   w -= step, or with mom: mom = mom * momentum + step; w -= mom
// with c = 1 - rho; mom may be null.
template <typename Real>
struct RmspropArgs : UpdateArgs<Real> {
  Real *v = nullptr, *mom = nullptr;
  Real rho = 0, c = 0, lr = 0, epsilon = 0, momentum = 0;
};

// SGD (fastlstm.optimizers.SGD), each element:
//   without m: w -= g * lr;   with m: m = m * momentum - g * lr, then w += m, or with
//   nesterov w += m * momentum - g * lr (the updated m).
template <typename Real>
struct SgdArgs : UpdateArgs<Real> {
  Real* m = nullptr;
  Real lr = 0, momentum = 0;
  bool nesterov = false;
};

struct KernelTable {
  const char* name;
  void (*forward_f32)(const ForwardArgs<float>&, const PackedWeights*);
  void (*forward_f64)(const ForwardArgs<double>&, const PackedWeights*);
  void (*backward_f32)(const BackwardArgs<float>&);
  void (*backward_f64)(const BackwardArgs<double>&);
  PackedWeights (*pack_f32)(const float* kernel, const float* recurrent_kernel, int64_t I, int64_t H);
  PackedWeights (*pack_f64)(const double* kernel, const double* recurrent_kernel, int64_t I, int64_t H);
  void (*matmul_f32)(const MatmulArgs<float>&);
  void (*matmul_f64)(const MatmulArgs<double>&);
  void (*transpose_f32)(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst);
  void (*transpose_f64)(const double* src, int64_t rows, int64_t cols, int64_t lds, double* dst);
  void (*adam_f32)(const AdamArgs<float>&);
  void (*adam_f64)(const AdamArgs<double>&);
  void (*rmsprop_f32)(const RmspropArgs<float>&);
  void (*rmsprop_f64)(const RmspropArgs<double>&);
  void (*sgd_f32)(const SgdArgs<float>&);
  void (*sgd_f64)(const SgdArgs<double>&);
  void (*index_add_rows_f32)(float* target, int64_t D, const int64_t* rows, int64_t n, const float* values);
  void (*index_add_rows_f64)(double* target, int64_t D, const int64_t* rows, int64_t n, const double* values);
};

namespace scalar { const KernelTable& kernel_table(); }
namespace avx2 { const KernelTable& kernel_table(); }
namespace avx512 { const KernelTable& kernel_table(); }

// ISAs compiled into this build, in increasing order of preference.
std::vector<std::string> compiled_isas();
// ISAs compiled in and runnable on this processor.
std::vector<std::string> supported_isas();
// The table in use. The first call selects it: FASTLSTM_ISA if set, else the best supported.
// Throws std::runtime_error (bad FASTLSTM_ISA or ISA not supported).
const KernelTable& active();
// Switches the table in use; throws std::invalid_argument for an unknown name and
// std::runtime_error when this build or processor cannot run it.
void set_isa(const std::string& name);

// Typed entry points that check the arguments and run the active table.
// They throw std::invalid_argument with the message of validate(). `packed` (optional):
// weights packed by pack() from a.kernel and a.recurrent_kernel; its I, H and dtype must
// match a's (std::invalid_argument otherwise).
void forward(const ForwardArgs<float>& a, const PackedWeights* packed = nullptr);
void forward(const ForwardArgs<double>& a, const PackedWeights* packed = nullptr);
// Packs kernel (I, 4H) and recurrent_kernel (H, 4H) with the active table.
PackedWeights pack(const float* kernel, const float* recurrent_kernel, int64_t I, int64_t H);
PackedWeights pack(const double* kernel, const double* recurrent_kernel, int64_t I, int64_t H);
void backward(const BackwardArgs<float>& a);
void backward(const BackwardArgs<double>& a);
void matmul(const MatmulArgs<float>& a);
void matmul(const MatmulArgs<double>& a);
// dst (cols, rows; C-contiguous) = src (rows, cols; row stride lds >= cols)^T, on the kernels'
// threads when large (fastlstm.torch converts weights between torch's layout and fastlstm's).
void transpose(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst);
void transpose(const double* src, int64_t rows, int64_t cols, int64_t lds, double* dst);
// An Adam step (AdamArgs), on the kernels' threads when large.
void adam(const AdamArgs<float>& a);
void adam(const AdamArgs<double>& a);
// An RMSprop step (RmspropArgs), likewise.
void rmsprop(const RmspropArgs<float>& a);
void rmsprop(const RmspropArgs<double>& a);
void sgd(const SgdArgs<float>& a);
void sgd(const SgdArgs<double>& a);
// target[rows[i], :] += values[i, :] for i = 0 .. n-1 in this order (rows valid, already
// wrapped): numpy.add.at's sums, bit for bit (the Embedding layer's weight gradient).
void index_add_rows(float* target, int64_t D, const int64_t* rows, int64_t n, const float* values);
void index_add_rows(double* target, int64_t D, const int64_t* rows, int64_t n, const double* values);

}  // namespace cpu
}  // namespace fastlstm
