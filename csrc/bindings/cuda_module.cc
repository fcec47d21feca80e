// fastlstm._cuda: a thin pybind11 layer over the CUDA backend of csrc/cuda (api.h).
//
// Compiled by the ordinary C++ compiler: it sees no CUDA header. Device memory is passed as
// integers (raw device pointers, 0 = none) with the sizes in `dims`; the checked, friendly
// layer is python/fastlstm/cuda.py (and ops.py, backend="cuda"). Importing this module does
// not touch the CUDA runtime, so it imports on machines without a driver or GPU; status()
// then reports why CUDA cannot be used. CUDA errors raise RuntimeError with the CUDA error
// string.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/api.h"

namespace py = pybind11;

namespace fastlstm {
namespace cuda {
namespace {

// Owned device memory (cudaMalloc / cudaFree) for NumPy inputs and outputs.
class Buffer {
 public:
  Buffer(int64_t nbytes, int device) : nbytes_(nbytes), device_(device) {
    if (nbytes < 0) throw py::value_error("nbytes: expected >= 0, got " + std::to_string(nbytes));
    if (device < 0) throw py::value_error("device: expected >= 0, got " + std::to_string(device));
    ptr_ = device_alloc(static_cast<size_t>(nbytes), device);
  }
  ~Buffer() { device_free(ptr_, device_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  std::uintptr_t ptr() const { return reinterpret_cast<std::uintptr_t>(ptr_); }
  int64_t nbytes() const { return nbytes_; }
  int device() const { return device_; }

  void upload(const py::array& src) {
    check(src, "src");
    copy_to_device(ptr_, src.data(), static_cast<size_t>(nbytes_), device_);
  }
  void download(py::array& dst) {
    check(dst, "dst");
    if (!dst.writeable()) throw py::value_error("dst: the array is read-only");
    copy_to_host(dst.mutable_data(), ptr_, static_cast<size_t>(nbytes_), device_);
  }

 private:
  void check(const py::array& a, const char* name) const {
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": expected a C-contiguous array");
    if (static_cast<int64_t>(a.nbytes()) != nbytes_)
      throw py::value_error(std::string(name) + ": expected " + std::to_string(nbytes_) + " bytes, got " +
                            std::to_string(a.nbytes()));
  }
  void* ptr_ = nullptr;
  int64_t nbytes_;
  int device_;
};

Dims dims_of(const std::vector<int64_t>& d) {
  if (d.size() != 4) throw py::value_error("dims: expected (T, B, I, H)");
  Dims out;
  out.T = d[0];
  out.B = d[1];
  out.I = d[2];
  out.H = d[3];
  return out;
}

KernelPath path_of(const std::string& kernel) {
  if (kernel == "auto") return KernelPath::kAuto;
  if (kernel == "simt") return KernelPath::kSimt;
  if (kernel == "persistent") return KernelPath::kPersistent;
  if (kernel == "tensor") return KernelPath::kTensor;
  if (kernel == "tiled") return KernelPath::kTiled;
  throw py::value_error("kernel_path: expected 'auto', 'simt', 'persistent', 'tensor' or 'tiled', got '" + kernel +
                        "'");
}

Precision precision_of(const std::string& p) {
  if (p == "fp32") return Precision::kFp32;
  if (p == "tf32") return Precision::kTf32;
  if (p == "bf16") return Precision::kBf16;
  if (p == "tf32x3") return Precision::kTf32x3;
  throw py::value_error("precision: expected 'fp32', 'tf32', 'bf16' or 'tf32x3', got '" + p + "'");
}

bool is_double(const std::string& dtype) {
  if (dtype == "float32") return false;
  if (dtype == "float64") return true;
  throw py::type_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
}

template <typename Real>
const Real* cptr(std::uintptr_t p) {
  return reinterpret_cast<const Real*>(p);
}
template <typename Real>
Real* mptr(std::uintptr_t p) {
  return reinterpret_cast<Real*>(p);
}

template <typename Real>
std::string run_forward(const RunOptions& opt, const Dims& d, std::uintptr_t x, std::uintptr_t kernel, std::uintptr_t rk, std::uintptr_t bias,
                 std::uintptr_t h0, std::uintptr_t c0, std::uintptr_t lengths, bool reverse, std::uintptr_t y,
                 std::uintptr_t h_n, std::uintptr_t c_n, std::uintptr_t gates, std::uintptr_t cells, int device,
                 std::uintptr_t stream) {
  ForwardArgs<Real> a;
  a.dims = d;
  a.x = cptr<Real>(x);
  a.kernel = cptr<Real>(kernel);
  a.recurrent_kernel = cptr<Real>(rk);
  a.bias = cptr<Real>(bias);
  a.h0 = cptr<Real>(h0);
  a.c0 = cptr<Real>(c0);
  a.lengths = reinterpret_cast<const int64_t*>(lengths);
  a.reverse = reverse;
  a.y = mptr<Real>(y);
  a.h_n = mptr<Real>(h_n);
  a.c_n = mptr<Real>(c_n);
  a.gates = mptr<Real>(gates);
  a.cells = mptr<Real>(cells);
  py::gil_scoped_release release;
  return forward<Real>(a, device, stream, opt);
}

template <typename Real>
std::string run_backward(const RunOptions& opt, const Dims& d, std::uintptr_t x, std::uintptr_t kernel, std::uintptr_t rk, std::uintptr_t h0,
                  std::uintptr_t c0, std::uintptr_t lengths, bool reverse, std::uintptr_t gates, std::uintptr_t cells,
                  std::uintptr_t dy, std::uintptr_t dh_n, std::uintptr_t dc_n, std::uintptr_t dx, std::uintptr_t dh0,
                  std::uintptr_t dc0, std::uintptr_t dkernel, std::uintptr_t drk, std::uintptr_t dbias, int device,
                  std::uintptr_t stream) {
  BackwardArgs<Real> a;
  a.dims = d;
  a.x = cptr<Real>(x);
  a.kernel = cptr<Real>(kernel);
  a.recurrent_kernel = cptr<Real>(rk);
  a.h0 = cptr<Real>(h0);
  a.c0 = cptr<Real>(c0);
  a.lengths = reinterpret_cast<const int64_t*>(lengths);
  a.reverse = reverse;
  a.gates = cptr<Real>(gates);
  a.cells = cptr<Real>(cells);
  a.dy = cptr<Real>(dy);
  a.dh_n = cptr<Real>(dh_n);
  a.dc_n = cptr<Real>(dc_n);
  a.dx = mptr<Real>(dx);
  a.dh0 = mptr<Real>(dh0);
  a.dc0 = mptr<Real>(dc0);
  a.dkernel = mptr<Real>(dkernel);
  a.drecurrent_kernel = mptr<Real>(drk);
  a.dbias = mptr<Real>(dbias);
  py::gil_scoped_release release;
  return backward<Real>(a, device, stream, opt);
}

}  // namespace
}  // namespace cuda
}  // namespace fastlstm

PYBIND11_MODULE(_cuda, m) {
  using namespace fastlstm::cuda;
  m.doc() = "fastlstm's CUDA kernels (private; use fastlstm.ops with backend='cuda')";

  m.def(
      "status",
      [] {
        const Status s = status();
        py::dict d;
        d["ok"] = s.ok;
        d["device_count"] = s.device_count;
        d["reason"] = s.reason;
        d["runtime_version"] = s.runtime_version;
        d["driver_version"] = s.driver_version;
        return d;
      },
      "Whether CUDA works here: {ok, device_count, reason, runtime_version, driver_version}. Never raises.");
  m.def(
      "device_properties",
      [](int device) {
        const DeviceProps p = device_properties(device);
        py::dict d;
        d["name"] = p.name;
        d["capability"] = py::make_tuple(p.major, p.minor);
        d["sm_count"] = p.sm_count;
        d["total_memory"] = p.total_memory;
        d["l2_cache_bytes"] = p.l2_cache_bytes;
        d["shared_memory_per_block"] = p.shared_memory_per_block;
        d["max_threads_per_block"] = p.max_threads_per_block;
        return d;
      },
      py::arg("device"));
  m.def("current_device", &current_device);
  m.def("kernel_variant", &kernel_variant);
  m.def("set_poison", &set_poison, py::arg("on"),
        "Fill every output and workspace with NaN bytes before the kernels run (for tests).");
  m.def("get_poison", &get_poison);
  m.def("empty_cache", &empty_cache, py::arg("device"),
        "Return the device memory cached by fastlstm's workspace pool on `device`.");
  m.def("synchronize", &synchronize, py::arg("device"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>());

  py::class_<Buffer>(m, "Buffer", "Device memory owned by fastlstm (freed with the object).")
      .def(py::init<int64_t, int>(), py::arg("nbytes"), py::arg("device"))
      .def_property_readonly("ptr", &Buffer::ptr)
      .def_property_readonly("nbytes", &Buffer::nbytes)
      .def_property_readonly("device", &Buffer::device)
      .def("upload", &Buffer::upload, py::arg("src"), "Copy a C-contiguous array of exactly nbytes to the device.")
      .def("download", &Buffer::download, py::arg("dst"),
           "Copy the buffer into a writable C-contiguous array of exactly nbytes (synchronises).");

  m.def(
      "forward",
      [](const std::string& dtype, const std::vector<int64_t>& dims, std::uintptr_t x, std::uintptr_t kernel,
         std::uintptr_t rk, std::uintptr_t bias, std::uintptr_t h0, std::uintptr_t c0, std::uintptr_t lengths,
         bool reverse, std::uintptr_t y, std::uintptr_t h_n, std::uintptr_t c_n, std::uintptr_t gates,
         std::uintptr_t cells, int device, std::uintptr_t stream, const std::string& kernel_path,
         const std::string& precision) {
        const fastlstm::Dims d = dims_of(dims);
        RunOptions opt;
        opt.path = path_of(kernel_path);
        opt.precision = precision_of(precision);
        if (is_double(dtype))
          return run_forward<double>(opt, d, x, kernel, rk, bias, h0, c0, lengths, reverse, y, h_n, c_n, gates, cells,
                                     device, stream);
        return run_forward<float>(opt, d, x, kernel, rk, bias, h0, c0, lengths, reverse, y, h_n, c_n, gates, cells,
                                  device, stream);
      },
      py::arg("dtype"), py::arg("dims"), py::arg("x"), py::arg("kernel"), py::arg("recurrent_kernel"),
      py::arg("bias"), py::arg("h0"), py::arg("c0"), py::arg("lengths"), py::arg("reverse"), py::arg("y"),
      py::arg("h_n"), py::arg("c_n"), py::arg("gates"), py::arg("cells"), py::arg("device"), py::arg("stream"),
      py::arg("kernel_path") = "auto", py::arg("precision") = "fp32",
      "LSTM forward on device pointers (0 = none); asynchronous on `stream`. kernel_path: 'auto' (tensor with "
      "tf32 / bf16 / tf32x3, B >= 32 and B*H^2 >= 2^25, else persistent when it fits, else simt), 'simt', 'persistent' "
      "(RuntimeError when it cannot run) or 'tensor' (the recurrent products on tensor cores; tf32 / bf16 / tf32x3 only). "
      "precision: 'fp32', or 'tf32' / 'bf16' / 'tf32x3' (float32 only, sm_80+: the input projection on tensor cores). Returns "
      "a description of the recurrent kernel that ran.");

  m.def(
      "backward",
      [](const std::string& dtype, const std::vector<int64_t>& dims, std::uintptr_t x, std::uintptr_t kernel,
         std::uintptr_t rk, std::uintptr_t h0, std::uintptr_t c0, std::uintptr_t lengths, bool reverse,
         std::uintptr_t gates, std::uintptr_t cells, std::uintptr_t dy, std::uintptr_t dh_n, std::uintptr_t dc_n,
         std::uintptr_t dx, std::uintptr_t dh0, std::uintptr_t dc0, std::uintptr_t dkernel, std::uintptr_t drk,
         std::uintptr_t dbias, int device, std::uintptr_t stream, const std::string& kernel_path,
         const std::string& precision) {
        const fastlstm::Dims d = dims_of(dims);
        RunOptions opt;
        opt.path = path_of(kernel_path);
        opt.precision = precision_of(precision);
        if (is_double(dtype))
          return run_backward<double>(opt, d, x, kernel, rk, h0, c0, lengths, reverse, gates, cells, dy, dh_n, dc_n,
                                      dx, dh0, dc0, dkernel, drk, dbias, device, stream);
        return run_backward<float>(opt, d, x, kernel, rk, h0, c0, lengths, reverse, gates, cells, dy, dh_n, dc_n,
                                   dx, dh0, dc0, dkernel, drk, dbias, device, stream);
      },
      py::arg("dtype"), py::arg("dims"), py::arg("x"), py::arg("kernel"), py::arg("recurrent_kernel"),
      py::arg("h0"), py::arg("c0"), py::arg("lengths"), py::arg("reverse"), py::arg("gates"), py::arg("cells"),
      py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("dx"), py::arg("dh0"), py::arg("dc0"),
      py::arg("dkernel"), py::arg("drecurrent_kernel"), py::arg("dbias"), py::arg("device"), py::arg("stream"),
      py::arg("kernel_path") = "auto", py::arg("precision") = "fp32",
      "LSTM backward on device pointers (0 = none); asynchronous on `stream`. kernel_path, precision: as for "
      "forward (tf32 / bf16 / tf32x3: the weight-gradient and dx products on tensor cores). Returns a description of the "
      "recurrent kernel that ran.");

  m.def(
      "matmul",
      [](const std::string& precision, int64_t M, int64_t N, int64_t K, std::uintptr_t a, int64_t sam, int64_t sak,
         std::uintptr_t b, int64_t sbk, int64_t sbn, std::uintptr_t bias, std::uintptr_t c, int64_t ldc, int device,
         std::uintptr_t stream) {
        const Precision p = precision_of(precision);
        py::gil_scoped_release release;
        return matmul(p, M, N, K, cptr<float>(a), sam, sak, cptr<float>(b), sbk, sbn, cptr<float>(bias),
                      mptr<float>(c), ldc, device, stream);
      },
      py::arg("precision"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("a"), py::arg("sam"), py::arg("sak"),
      py::arg("b"), py::arg("sbk"), py::arg("sbn"), py::arg("bias"), py::arg("c"), py::arg("ldc"), py::arg("device"),
      py::arg("stream"),
      "For tests: C (M x N, leading dimension ldc) = A . B (+ bias) in float32 on device pointers, A(m, k) = "
      "a[m*sam + k*sak], B(k, n) = b[k*sbk + n*sbn], by the LSTM's GEMM in `precision` ('fp32': the SIMT GEMM; "
      "'tf32' / 'bf16' / 'tf32x3': the tensor-core GEMM). Returns a description of the kernel.");

  m.def(
      "step_matmul",
      [](const std::string& precision, int64_t M, int64_t N, int64_t K, std::uintptr_t a, int64_t sam, int64_t sak,
         std::uintptr_t b, int64_t sbk, int64_t sbn, std::uintptr_t c, int64_t c_elems, int64_t repeat, int device,
         std::uintptr_t stream, int64_t kslice) {
        const Precision p = precision_of(precision);
        py::gil_scoped_release release;
        return step_matmul(p, M, N, K, cptr<float>(a), sam, sak, cptr<float>(b), sbk, sbn, mptr<float>(c), c_elems,
                           repeat, device, stream, kslice);
      },
      py::arg("precision"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("a"), py::arg("sam"), py::arg("sak"),
      py::arg("b"), py::arg("sbk"), py::arg("sbn"), py::arg("c"), py::arg("c_elems"), py::arg("repeat"),
      py::arg("device"), py::arg("stream"), py::arg("kslice") = 0,
      "For benchmarks and tests: the tensor path's per-step recurrent product, `repeat` times back to back: the "
      "k-slice partials of A (M x K) . B (K x N) into c (slices x M x N float32; c_elems: its size), on the tile and "
      "k slices planned for the device. precision 'tf32' / 'bf16' / 'tf32x3' (the tensor path's product) or 'fp32' "
      "(kernel path 'tiled''s SIMT split-k product). kslice > 0 replaces the plan's k per slice (a multiple of 32; "
      "fp32: of 8). Returns the plan's description.");
}
