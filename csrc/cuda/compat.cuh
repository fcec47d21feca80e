// The few things the kernels and their host code need from CUDA, so that the same source
// (lstm_impl.cuh) compiles either with nvcc for the GPU, or, with FASTLSTM_CUDA_EMU defined,
// with an ordinary C++ compiler against the CPU emulator of csrc/cuda/emu/emu.h (used by
// tests/test_cuda.py to run the kernels' logic on machines without a GPU).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "cuda/api.h"

#if defined(FASTLSTM_CUDA_EMU)
#include "cuda/emu/emu.h"
#else
#include <cuda_runtime.h>
#endif

namespace fastlstm {
namespace cuda {

// "CUDA error: <cudaGetErrorString> [<cudaGetErrorName>] in <call> at <file>:<line>"
[[noreturn]] inline void throw_error(cudaError_t err, const char* call, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  const char* what = cudaGetErrorString(err);
  const char* name = cudaGetErrorName(err);
  throw Error(std::string("CUDA error: ") + (what ? what : "unknown error") + " [" +
              (name ? name : "?") + "] in " + call + " at " + base + ":" + std::to_string(line));
}

inline void check(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) throw_error(err, call, file, line);
}

}  // namespace cuda
}  // namespace fastlstm

#define FL_CHECK(call) ::fastlstm::cuda::check((call), #call, __FILE__, __LINE__)

// FL_LAUNCH(kernel, grid, block, stream, args...): launch and check the launch. `kernel` is a
// plain name (a function pointer variable for templates: the macro cannot take commas).
#if defined(FASTLSTM_CUDA_EMU)
#define FL_LAUNCH(kernel, grid, block, stream, ...) \
  ::fastlstm::cuda::emu::launch((grid), (block), (stream), [&] { kernel(__VA_ARGS__); })
#else
#define FL_LAUNCH(kernel, grid, block, stream, ...)            \
  do {                                                         \
    kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__);     \
    FL_CHECK(cudaGetLastError());                              \
  } while (0)
#endif
