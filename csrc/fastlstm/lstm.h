// fastlstm: the specification of the LSTM kernels. Framework-free; every backend
// implements exactly what this header states.
//
// Sizes: T = time steps, B = batch, I = input features, H = hidden units.
// All arrays are dense, row-major (C order), one dtype (float or double).
//
//   x                (T, B, I)   time-major input
//   kernel           (I, 4H)     input weights
//   recurrent_kernel (H, 4H)     recurrent weights
//   bias             (4H,)       optional (nullptr = no bias)
//   h0, c0           (B, H)      optional initial states (nullptr = zeros)
//   lengths          (B,)        optional, 0 <= lengths[b] <= T (nullptr = all T)
//   y                (T, B, H)   output hidden states
//   h_n, c_n         (B, H)      final states
//
// batch_major: x and y (and the backward's dy and dx) are (B, T, I) and (B, T, H) instead:
// element (t, b) at row b * T + t rather than t * B + b. Everything else, the saved gates
// and cells included, keeps the layouts above. The CPU backend implements it; the CUDA
// backend rejects it (fastlstm.ops transposes for that backend instead).
//
// Gate order along the 4H axis: blocks of H columns [i | f | g | o] (Keras's layout;
// PyTorch's weight_ih / weight_hh are the transposes of kernel / recurrent_kernel).
//
//   z   = x_t . kernel + h_{t-1} . recurrent_kernel + bias          (B, 4H)
//   i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(c_t)
//
// Variable lengths follow PyTorch's packed sequences: sequence b uses time steps
// 0 .. lengths[b]-1; y[t, b] = 0 for t >= lengths[b]; h_n[b], c_n[b] are its state after
// its last valid step (its initial state when lengths[b] == 0).
// reverse: sequence b runs from time lengths[b]-1 down to 0; y[t] stays at position t.
//
// Training saves, per valid (t, b): the four gate activations [i|f|g|o] in
// gates (T, B, 4H) and the cell state c_t in cells (T, B, H). Entries of invalid
// positions (t >= lengths[b]) are unspecified. Backward recomputes h_{t-1} as
// o_{t-1} * tanh(c_{t-1}) rather than storing it.
#pragma once

#include <cstdint>

namespace fastlstm {

struct Dims {
  int64_t T = 0, B = 0, I = 0, H = 0;
};

template <typename Real>
struct ForwardArgs {
  Dims dims;
  const Real* x = nullptr;                 // (T, B, I)
  const Real* kernel = nullptr;            // (I, 4H)
  const Real* recurrent_kernel = nullptr;  // (H, 4H)
  const Real* bias = nullptr;              // (4H,) or nullptr
  const Real* h0 = nullptr;                // (B, H) or nullptr
  const Real* c0 = nullptr;                // (B, H) or nullptr
  const int64_t* lengths = nullptr;        // (B,) or nullptr
  bool reverse = false;
  bool batch_major = false;                // x and y (B, T, .) (see above)
  Real* y = nullptr;                       // (T, B, H)       written in full
  Real* h_n = nullptr;                     // (B, H)          written in full
  Real* c_n = nullptr;                     // (B, H)          written in full
  Real* gates = nullptr;                   // (T, B, 4H) or nullptr (inference)
  Real* cells = nullptr;                   // (T, B, H)  or nullptr (inference)
};

template <typename Real>
struct BackwardArgs {
  Dims dims;
  // What the forward saw and saved.
  const Real* x = nullptr;                 // (T, B, I)
  const Real* kernel = nullptr;            // (I, 4H)
  const Real* recurrent_kernel = nullptr;  // (H, 4H)
  const Real* h0 = nullptr;                // (B, H) or nullptr
  const Real* c0 = nullptr;                // (B, H) or nullptr
  const int64_t* lengths = nullptr;        // (B,) or nullptr
  bool reverse = false;
  bool batch_major = false;                // x, dy and dx (B, T, .) (see above)
  const Real* gates = nullptr;             // (T, B, 4H) from the forward
  const Real* cells = nullptr;             // (T, B, H)  from the forward
  // Incoming gradients; nullptr means zero.
  const Real* dy = nullptr;                // (T, B, H)
  const Real* dh_n = nullptr;              // (B, H)
  const Real* dc_n = nullptr;              // (B, H)
  // Outgoing gradients, each written in full.
  Real* dx = nullptr;                      // (T, B, I) or nullptr (not computed)
  Real* dh0 = nullptr;                     // (B, H)
  Real* dc0 = nullptr;                     // (B, H)
  Real* dkernel = nullptr;                 // (I, 4H)
  Real* drecurrent_kernel = nullptr;       // (H, 4H)
  Real* dbias = nullptr;                   // (4H,) or nullptr
};

// Checks the arguments against this specification (sizes, required pointers,
// lengths in range). Returns nullptr when they are valid, else a message.
template <typename Real>
const char* validate(const ForwardArgs<Real>& a);
template <typename Real>
const char* validate(const BackwardArgs<Real>& a);

}  // namespace fastlstm
