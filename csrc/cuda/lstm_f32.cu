// float32 instantiation of the CUDA kernels (see lstm_impl.cuh). Split from lstm_f64.cu so
// that the two compile in parallel.
#include "cuda/lstm_impl.cuh"

namespace fastlstm {
namespace cuda {
template std::string forward<float>(const ForwardArgs<float>&, int, std::uintptr_t, const RunOptions&);
template std::string backward<float>(const BackwardArgs<float>&, int, std::uintptr_t, const RunOptions&);
}  // namespace cuda
}  // namespace fastlstm
