// float64 instantiation of the CUDA kernels (see lstm_impl.cuh).
#include "cuda/lstm_impl.cuh"

namespace fastlstm {
namespace cuda {
template std::string forward<double>(const ForwardArgs<double>&, int, std::uintptr_t, const RunOptions&);
template std::string backward<double>(const BackwardArgs<double>&, int, std::uintptr_t, const RunOptions&);
}  // namespace cuda
}  // namespace fastlstm
