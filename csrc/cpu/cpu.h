// fastlstm CPU backend: instruction-set dispatch and the kernel table.
//
// csrc/cpu/lstm_kernels.cc is compiled once per instruction set (scalar, avx2,
// avx512), each copy in namespace fastlstm::cpu::<target>, and exports one
// KernelTable. dispatch.cc picks one table at load time (or from FASTLSTM_ISA).
#pragma once

#include <string>
#include <vector>

#include "fastlstm/lstm.h"

namespace fastlstm {
namespace cpu {

struct KernelTable {
  const char* name;
  void (*forward_f32)(const ForwardArgs<float>&);
  void (*forward_f64)(const ForwardArgs<double>&);
  void (*backward_f32)(const BackwardArgs<float>&);
  void (*backward_f64)(const BackwardArgs<double>&);
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
// They throw std::invalid_argument with the message of validate().
void forward(const ForwardArgs<float>& a);
void forward(const ForwardArgs<double>& a);
void backward(const BackwardArgs<float>& a);
void backward(const BackwardArgs<double>& a);

}  // namespace cpu
}  // namespace fastlstm
