// float32 instantiation of the CUDA kernels (see lstm_impl.cuh), with the tensor-core GEMMs
// of the tf32 / bf16 precision modes (tensor_gemm.cuh) and matmul() for tests. Split from
// lstm_f64.cu so that the two compile in parallel.
#include "cuda/lstm_impl.cuh"

namespace fastlstm {
namespace cuda {
template std::string forward<float>(const ForwardArgs<float>&, int, std::uintptr_t, const RunOptions&);
template std::string backward<float>(const BackwardArgs<float>&, int, std::uintptr_t, const RunOptions&);

std::string matmul(Precision precision, int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak,
                   const float* B, int64_t sbk, int64_t sbn, const float* bias, float* C, int64_t ldc, int device,
                   std::uintptr_t stream) {
  impl::DeviceGuard guard(device);
  return impl::matmul_impl<float>(precision, M, N, K, A, sam, sak, B, sbk, sbn, bias, C, ldc, device,
                           reinterpret_cast<cudaStream_t>(stream));
}

std::string step_matmul(Precision precision, int64_t M, int64_t N, int64_t K, const float* A, int64_t sam,
                        int64_t sak, const float* B, int64_t sbk, int64_t sbn, float* C, int64_t c_elems,
                        int64_t repeat, int device, std::uintptr_t stream, int64_t kslice) {
  impl::DeviceGuard guard(device);
  return impl::step_matmul_impl<float>(precision, M, N, K, A, sam, sak, B, sbk, sbn, C, c_elems, repeat, device,
                                       reinterpret_cast<cudaStream_t>(stream), kslice);
}
}  // namespace cuda
}  // namespace fastlstm
