// float64 instantiation of the CUDA kernels (see lstm_impl.cuh).
#include "cuda/lstm_impl.cuh"

namespace fastlstm {
namespace cuda {
template void forward<double>(const ForwardArgs<double>&, int, std::uintptr_t);
template void backward<double>(const BackwardArgs<double>&, int, std::uintptr_t);
}  // namespace cuda
}  // namespace fastlstm
