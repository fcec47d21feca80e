// fastlstm._core: a thin pybind11 layer over the CPU kernels of csrc/cpu.
//
// It checks every array it is handed (type, dtype, C order, exact shape) so that a direct
// call with bad arguments raises instead of reading out of bounds; the friendly checks
// and conversions live in python/fastlstm/ops.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/cpu.h"
#include "cpu/threadpool.h"
#include "cpu/workspace.h"

namespace py = pybind11;

namespace fastlstm {
namespace {

bool g_poison = false;  // fill new outputs with NaN before the kernel runs (for tests)

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// A required or optional input: a C-contiguous numpy array of dtype Real and exact shape.
template <typename Real>
const Real* input(const py::object& obj, const char* name, const std::vector<int64_t>& shape,
                  bool optional = false) {
  if (obj.is_none()) {
    if (optional) return nullptr;
    throw py::type_error(std::string(name) + ": expected an array of shape " + shape_str(shape) + ", got None");
  }
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + ": expected a numpy array");
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  // (equivalent, not the same object: an unpickled array's dtype is a fresh float32 object)
  if (!py::array_t<Real>::check_(arr))
    throw py::type_error(std::string(name) + ": expected dtype " +
                         std::string(py::str(py::dtype::of<Real>())) + ", got " +
                         std::string(py::str(arr.dtype())));
  std::vector<int64_t> got(arr.shape(), arr.shape() + arr.ndim());
  if (got != shape)
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " + shape_str(got));
  if (!(arr.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  return static_cast<const Real*>(arr.data());
}

const int64_t* lengths_input(const py::object& obj, int64_t B) {
  if (obj.is_none()) return nullptr;
  return input<int64_t>(obj, "lengths", {B});
}

// A new output array. All but small ones (y, the saved gates and cells, dx: from 128 KiB, up to
// tens of MBs at B >= 64) live in a workspace block that goes back to the cache when the
// array is freed, so the next call's outputs need no fresh pages either (NOTES 30, 37); their
// base is a capsule.
struct OwnedBlock {
  explicit OwnedBlock(size_t bytes) : ptr(cpu::workspace::acquire(bytes, &capacity)) {}
  ~OwnedBlock() { cpu::workspace::release(ptr, capacity); }
  OwnedBlock(const OwnedBlock&) = delete;
  OwnedBlock& operator=(const OwnedBlock&) = delete;
  size_t capacity = 0;  // declared before ptr: acquire() sets it
  void* ptr;
};

template <typename Real>
py::array_t<Real> output(const std::vector<int64_t>& shape) {
  const std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  size_t bytes = sizeof(Real);
  for (int64_t d : shape) bytes *= static_cast<size_t>(d);
  py::array_t<Real> arr;
  if (bytes >= cpu::workspace::kCachedBytes) {
    auto owned = std::make_unique<OwnedBlock>(bytes);
    py::capsule base(owned.get(), [](void* p) { delete static_cast<OwnedBlock*>(p); });
    Real* data = static_cast<Real*>(owned.release()->ptr);  // the capsule owns it now
    arr = py::array_t<Real>(dims, data, base);
  } else {
    arr = py::array_t<Real>(dims);
  }
  if (g_poison) {
    Real* p = arr.mutable_data();
    for (py::ssize_t i = 0; i < arr.size(); ++i) p[i] = std::numeric_limits<Real>::quiet_NaN();
  }
  return arr;
}

// The sizes from x ((T, B, I), or (B, T, I) when batch_major) and recurrent_kernel (H, 4H).
Dims dims_of(const py::object& x, const py::object& recurrent_kernel, bool batch_major) {
  if (!py::isinstance<py::array>(x) || py::reinterpret_borrow<py::array>(x).ndim() != 3)
    throw py::value_error(batch_major ? "x: expected a 3-D array (B, T, I)" : "x: expected a 3-D array (T, B, I)");
  if (!py::isinstance<py::array>(recurrent_kernel) ||
      py::reinterpret_borrow<py::array>(recurrent_kernel).ndim() != 2)
    throw py::value_error("recurrent_kernel: expected a 2-D array (H, 4H)");
  py::array xa = py::reinterpret_borrow<py::array>(x);
  py::array ra = py::reinterpret_borrow<py::array>(recurrent_kernel);
  Dims d;
  d.T = xa.shape(batch_major ? 1 : 0);
  d.B = xa.shape(batch_major ? 0 : 1);
  d.I = xa.shape(2);
  d.H = ra.shape(0);
  if (d.I < 1) throw py::value_error("x: the feature size I must be at least 1");
  if (d.H < 1) throw py::value_error("recurrent_kernel: the hidden size H must be at least 1");
  return d;
}

// The PackedWeights passed as `packed`, or nullptr for None.
const cpu::PackedWeights* packed_input(const py::object& obj) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<cpu::PackedWeights>(obj))
    throw py::type_error("packed: expected weights from pack_weights() or None");
  return obj.cast<const cpu::PackedWeights*>();
}

template <typename Real>
py::tuple forward_impl(const Dims& d, py::object x, py::object kernel, py::object recurrent_kernel,
                       py::object bias, py::object h0, py::object c0, py::object lengths, bool reverse,
                       bool training, py::object packed, bool batch_major) {
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H;
  // x and y: (T, B, .), or (B, T, .) batch-major
  auto io = [&](int64_t n) { return batch_major ? std::vector<int64_t>{B, T, n} : std::vector<int64_t>{T, B, n}; };
  ForwardArgs<Real> a;
  a.dims = d;
  a.batch_major = batch_major;
  a.x = input<Real>(x, "x", io(I));
  a.kernel = input<Real>(kernel, "kernel", {I, 4 * H});
  a.recurrent_kernel = input<Real>(recurrent_kernel, "recurrent_kernel", {H, 4 * H});
  a.bias = input<Real>(bias, "bias", {4 * H}, true);
  a.h0 = input<Real>(h0, "h0", {B, H}, true);
  a.c0 = input<Real>(c0, "c0", {B, H}, true);
  a.lengths = lengths_input(lengths, B);
  a.reverse = reverse;
  auto y = output<Real>(io(H));
  auto h_n = output<Real>({B, H});
  auto c_n = output<Real>({B, H});
  py::object gates = py::none(), cells = py::none();
  if (training) {
    auto g = output<Real>({T, B, 4 * H});
    auto c = output<Real>({T, B, H});
    a.gates = g.mutable_data();
    a.cells = c.mutable_data();
    gates = g;
    cells = c;
  }
  a.y = y.mutable_data();
  a.h_n = h_n.mutable_data();
  a.c_n = c_n.mutable_data();
  const cpu::PackedWeights* pw = packed_input(packed);
  {
    py::gil_scoped_release release;
    cpu::forward(a, pw);
  }
  return py::make_tuple(y, h_n, c_n, gates, cells);
}

template <typename Real>
py::tuple backward_impl(const Dims& d, py::object x, py::object kernel, py::object recurrent_kernel,
                        bool has_bias, py::object h0, py::object c0, py::object lengths, bool reverse,
                        py::object gates, py::object cells, py::object dy, py::object dh_n,
                        py::object dc_n, bool need_dx, bool batch_major) {
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H;
  // x, dy and dx: (T, B, .), or (B, T, .) batch-major
  auto io = [&](int64_t n) { return batch_major ? std::vector<int64_t>{B, T, n} : std::vector<int64_t>{T, B, n}; };
  BackwardArgs<Real> a;
  a.dims = d;
  a.batch_major = batch_major;
  a.x = input<Real>(x, "x", io(I));
  a.kernel = input<Real>(kernel, "kernel", {I, 4 * H});
  a.recurrent_kernel = input<Real>(recurrent_kernel, "recurrent_kernel", {H, 4 * H});
  a.h0 = input<Real>(h0, "h0", {B, H}, true);
  a.c0 = input<Real>(c0, "c0", {B, H}, true);
  a.lengths = lengths_input(lengths, B);
  a.reverse = reverse;
  a.gates = input<Real>(gates, "gates", {T, B, 4 * H});
  a.cells = input<Real>(cells, "cells", {T, B, H});
  a.dy = input<Real>(dy, "dy", io(H), true);
  a.dh_n = input<Real>(dh_n, "dh_n", {B, H}, true);
  a.dc_n = input<Real>(dc_n, "dc_n", {B, H}, true);
  py::object dx = py::none();
  if (need_dx) {
    auto arr = output<Real>(io(I));
    a.dx = arr.mutable_data();
    dx = arr;
  }
  auto dh0 = output<Real>({B, H});
  auto dc0 = output<Real>({B, H});
  auto dkernel = output<Real>({I, 4 * H});
  auto drecurrent_kernel = output<Real>({H, 4 * H});
  py::object dbias = py::none();
  if (has_bias) {
    auto db = output<Real>({4 * H});
    a.dbias = db.mutable_data();
    dbias = db;
  }
  a.dh0 = dh0.mutable_data();
  a.dc0 = dc0.mutable_data();
  a.dkernel = dkernel.mutable_data();
  a.drecurrent_kernel = drecurrent_kernel.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::backward(a);
  }
  return py::make_tuple(dx, dh0, dc0, dkernel, drecurrent_kernel, dbias);
}

// A new C-contiguous (cols, rows) array holding src (rows, cols)^T, by the kernels' vector
// transpose (cpu::transpose). Used by fastlstm.torch to move weights between torch's layout and
// fastlstm's.
template <typename Real>
py::array_t<Real> transpose_impl(const py::array& a) {
  const int64_t rows = a.shape(0), cols = a.shape(1);
  const Real* src = static_cast<const Real*>(a.data());
  py::array_t<Real> out = output<Real>({cols, rows});  // (from the block cache when large)
  Real* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::transpose(src, rows, cols, cols, dst);
  }
  return out;
}

// The arrays of an element-wise optimizer step (cpu::adam, rmsprop, sgd), checked: each of
// dtype Real and the variable's shape, C-contiguous, writeable when the step updates it, no
// two overlapping; an optional one may be None (nullptr). Returns their data.
struct UpdateArray {
  py::object obj;
  const char* name;
  bool written;
  bool optional;
};
template <typename Real>
std::vector<Real*> update_arrays(const py::array& w, const std::vector<UpdateArray>& arrays) {
  const std::vector<int64_t> shape(w.shape(), w.shape() + w.ndim());
  const int64_t n = static_cast<int64_t>(w.size());
  std::vector<Real*> data;
  for (const auto& a : arrays) {
    data.push_back(const_cast<Real*>(input<Real>(a.obj, a.name, shape, a.optional)));
    if (data.back() && a.written && !py::reinterpret_borrow<py::array>(a.obj).writeable())
      throw py::value_error(std::string(a.name) + ": expected a writeable array");
  }
  for (size_t i = 0; i < data.size(); ++i)
    for (size_t j = i + 1; j < data.size(); ++j)
      if (n > 0 && data[i] && data[j] && data[i] < data[j] + n && data[j] < data[i] + n)
        throw py::value_error(std::string(arrays[i].name) + " and " + arrays[j].name +
                              ": expected arrays that do not overlap");
  return data;
}

// target[index[i]] += values[i] for every i (cpu::index_add_rows): target (V, D) C-contiguous
// and writeable, index (n,) int64 in [-V, V) (negative ones count from the end, as in NumPy),
// values (n, D) C-contiguous, of target's dtype. Every index is checked before any row changes.
template <typename Real>
void index_add_rows_impl(const py::array& target, const py::object& index, const py::object& values) {
  if (target.ndim() != 2) throw py::value_error("target: expected a 2-D array");
  const int64_t rows = target.shape(0), D = target.shape(1);
  Real* t = const_cast<Real*>(input<Real>(target, "target", {rows, D}));
  if (!target.writeable()) throw py::value_error("target: expected a writeable array");
  if (!py::isinstance<py::array>(index) || py::reinterpret_borrow<py::array>(index).ndim() != 1)
    throw py::value_error("index: expected a 1-D array");
  const int64_t n = py::reinterpret_borrow<py::array>(index).shape(0);
  const int64_t* idx = input<int64_t>(index, "index", {n});
  const Real* v = input<Real>(values, "values", {n, D});
  std::vector<int64_t> wrapped(idx, idx + n);
  for (int64_t& r : wrapped) {
    if (r < -rows || r >= rows)
      throw py::index_error("index " + std::to_string(r) + " is out of bounds for axis 0 with size " +
                            std::to_string(rows));
    if (r < 0) r += rows;
  }
  const Real* tv = t;
  if (n > 0 && rows > 0 && D > 0 && v < tv + rows * D && tv < v + n * D)
    throw py::value_error("target and values: expected arrays that do not overlap");
  py::gil_scoped_release release;
  cpu::index_add_rows(t, D, wrapped.data(), n, v);
}

// a (M, K) . b (K, N) (+ bias (N,)) with the kernels' matrix product: a and b 2-D arrays of
// dtype Real with any strides that are whole elements (views, transposes), bias C-contiguous.
template <typename Real>
py::array_t<Real> matmul_impl(const py::array& a, const py::array& b, const py::object& bias) {
  auto strides = [](const py::array& x, const char* name, int64_t* rs, int64_t* cs) {
    if (!py::array_t<Real>::check_(x))
      throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(py::dtype::of<Real>())) +
                           ", got " + std::string(py::str(x.dtype())));
    const int64_t item = static_cast<int64_t>(sizeof(Real));
    if (x.strides(0) % item || x.strides(1) % item)
      throw py::value_error(std::string(name) + ": expected strides of whole elements");
    *rs = x.strides(0) / item;
    *cs = x.strides(1) / item;
  };
  cpu::MatmulArgs<Real> m;
  m.M = a.shape(0);
  m.K = a.shape(1);
  m.N = b.shape(1);
  if (b.shape(0) != m.K)
    throw py::value_error("b: expected " + std::to_string(m.K) + " rows (a's columns), got " +
                          std::to_string(b.shape(0)));
  strides(a, "a", &m.a_rs, &m.a_cs);
  strides(b, "b", &m.b_rs, &m.b_cs);
  m.A = static_cast<const Real*>(a.data());
  m.B = static_cast<const Real*>(b.data());
  m.row_add = input<Real>(bias, "bias", {m.N}, true);
  py::array_t<Real> out = output<Real>({m.M, m.N});
  m.C = out.mutable_data();
  m.ldc = m.N;
  {
    py::gil_scoped_release release;
    cpu::matmul(m);
  }
  return out;
}

// pack_weights for one dtype (every array checked like forward's).
template <typename Real>
cpu::PackedWeights pack_impl(const py::object& kernel, const py::object& recurrent_kernel, int64_t I, int64_t H) {
  const Real* k = input<Real>(kernel, "kernel", {I, 4 * H});
  const Real* r = input<Real>(recurrent_kernel, "recurrent_kernel", {H, 4 * H});
  py::gil_scoped_release release;
  return cpu::pack(k, r, I, H);
}

// float32 or float64, taken from x (or the array named `name`).
bool is_double(const py::object& x, const char* name = "x") {
  py::array xa = py::reinterpret_borrow<py::array>(x);
  if (py::array_t<float>::check_(xa)) return false;
  if (py::array_t<double>::check_(xa)) return true;
  throw py::type_error(std::string(name) + ": expected dtype float32 or float64, got " + std::string(py::str(xa.dtype())));
}

// Runs an element-wise optimizer step on the variable's dtype (TypeError for another): the
// arrays checked (update_arrays; the variable first), `fill` sets an Args<Real> from their data
// and the scalars, then `kernel` (cpu::adam, ...) runs on it without the GIL.
template <template <typename> class Args, typename Fill, typename Kernel>
void run_update(const py::object& w, const std::vector<UpdateArray>& arrays, Fill fill, Kernel kernel) {
  if (!py::isinstance<py::array>(w)) throw py::type_error("variable: expected a numpy array");
  const py::array wa = py::reinterpret_borrow<py::array>(w);
  auto typed = [&](auto zero) {
    using Real = decltype(zero);
    const std::vector<Real*> d = update_arrays<Real>(wa, arrays);
    Args<Real> a;
    a.n = static_cast<int64_t>(wa.size());
    fill(a, d);
    py::gil_scoped_release release;
    kernel(a);
  };
  if (is_double(w, "variable")) typed(0.0);
  else typed(0.0f);
}

}  // namespace
}  // namespace fastlstm

PYBIND11_MODULE(_core, m) {
  using namespace fastlstm;
  m.doc() = "fastlstm's compiled CPU kernels (private; use fastlstm.ops)";

  m.def(
      "forward",
      [](py::object x, py::object kernel, py::object recurrent_kernel, py::object bias, py::object h0,
         py::object c0, py::object lengths, bool reverse, bool training, py::object packed, bool batch_major) {
        const Dims d = dims_of(x, recurrent_kernel, batch_major);
        return is_double(x) ? forward_impl<double>(d, x, kernel, recurrent_kernel, bias, h0, c0, lengths, reverse,
                                                   training, packed, batch_major)
                            : forward_impl<float>(d, x, kernel, recurrent_kernel, bias, h0, c0, lengths, reverse,
                                                  training, packed, batch_major);
      },
      py::arg("x"), py::arg("kernel"), py::arg("recurrent_kernel"), py::arg("bias"), py::arg("h0"),
      py::arg("c0"), py::arg("lengths"), py::arg("reverse"), py::arg("training"), py::arg("packed") = py::none(),
      py::arg("batch_major") = false,
      "LSTM forward. Returns (y, h_n, c_n, gates, cells); gates and cells are None unless training.\n"
      "packed: None, or pack_weights(kernel, recurrent_kernel) of these same, unchanged weights.\n"
      "batch_major: x (B, T, I) and y (B, T, H) instead of (T, B, .); gates and cells stay (T, B, .).");

  py::class_<cpu::PackedWeights>(m, "PackedWeights",
                                 "kernel and recurrent_kernel packed for the forward (see pack_weights)")
      .def_property_readonly("isa", [](const cpu::PackedWeights& w) { return w.isa; })
      .def_property_readonly("I", [](const cpu::PackedWeights& w) { return w.I; })
      .def_property_readonly("H", [](const cpu::PackedWeights& w) { return w.H; })
      .def_property_readonly("dtype", [](const cpu::PackedWeights& w) {
        return w.is_double ? py::dtype::of<double>() : py::dtype::of<float>();
      });
  m.def(
      "pack_weights",
      [](py::object kernel, py::object recurrent_kernel) {
        if (!py::isinstance<py::array>(recurrent_kernel) ||
            py::reinterpret_borrow<py::array>(recurrent_kernel).ndim() != 2)
          throw py::value_error("recurrent_kernel: expected a 2-D array (H, 4H)");
        if (!py::isinstance<py::array>(kernel) || py::reinterpret_borrow<py::array>(kernel).ndim() != 2)
          throw py::value_error("kernel: expected a 2-D array (I, 4H)");
        const int64_t H = py::reinterpret_borrow<py::array>(recurrent_kernel).shape(0);
        const int64_t I = py::reinterpret_borrow<py::array>(kernel).shape(0);
        if (H < 1 || I < 1) throw py::value_error("kernel, recurrent_kernel: need I >= 1 and H >= 1");
        return is_double(kernel, "kernel") ? pack_impl<double>(kernel, recurrent_kernel, I, H)
                                           : pack_impl<float>(kernel, recurrent_kernel, I, H);
      },
      py::arg("kernel"), py::arg("recurrent_kernel"),
      "Pack kernel (I, 4H) and recurrent_kernel (H, 4H) for forward(..., packed=) with the "
      "instruction set in use (another one ignores them).");

  m.def(
      "backward",
      [](py::object x, py::object kernel, py::object recurrent_kernel, bool has_bias, py::object h0,
         py::object c0, py::object lengths, bool reverse, py::object gates, py::object cells,
         py::object dy, py::object dh_n, py::object dc_n, bool need_dx, bool batch_major) {
        const Dims d = dims_of(x, recurrent_kernel, batch_major);
        return is_double(x) ? backward_impl<double>(d, x, kernel, recurrent_kernel, has_bias, h0, c0, lengths,
                                                    reverse, gates, cells, dy, dh_n, dc_n, need_dx, batch_major)
                            : backward_impl<float>(d, x, kernel, recurrent_kernel, has_bias, h0, c0, lengths,
                                                   reverse, gates, cells, dy, dh_n, dc_n, need_dx, batch_major);
      },
      py::arg("x"), py::arg("kernel"), py::arg("recurrent_kernel"), py::arg("has_bias"), py::arg("h0"),
      py::arg("c0"), py::arg("lengths"), py::arg("reverse"), py::arg("gates"), py::arg("cells"),
      py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("need_dx") = true, py::arg("batch_major") = false,
      "LSTM backward. Returns (dx, dh0, dc0, dkernel, drecurrent_kernel, dbias); dbias is None unless "
      "has_bias, dx None unless need_dx (then its product is skipped).\n"
      "batch_major: x, dy and dx (B, T, .) (as the forward's x and y); gates and cells (T, B, .).");

  m.def(
      "transpose",
      [](py::object a) {
        if (!py::isinstance<py::array>(a) || py::reinterpret_borrow<py::array>(a).ndim() != 2)
          throw py::value_error("a: expected a 2-D array");
        py::array arr = py::reinterpret_borrow<py::array>(a);
        if (!(arr.flags() & py::array::c_style)) throw py::value_error("a: expected a C-contiguous array");
        return is_double(a, "a") ? py::object(transpose_impl<double>(arr)) : py::object(transpose_impl<float>(arr));
      },
      py::arg("a"), "A new C-contiguous array holding a.T (a: 2-D, C-contiguous, float32 or float64).");

  m.def(
      "adam_update",
      [](py::object w, py::object g, py::object m, py::object v, double c1, double c2, double alpha,
         double epsilon) {
        const std::vector<UpdateArray> arrays{
            {w, "variable", true, false}, {g, "gradient", false, false}, {m, "m", true, false}, {v, "v", true, false}};
        auto fill = [&](auto& a, const auto& d) {
          using Real = std::remove_pointer_t<std::decay_t<decltype(d[0])>>;
          std::tie(a.w, a.g, a.m, a.v) = std::make_tuple(d[0], d[1], d[2], d[3]);
          std::tie(a.c1, a.c2, a.alpha, a.epsilon) = std::make_tuple(Real(c1), Real(c2), Real(alpha), Real(epsilon));
        };
        run_update<cpu::AdamArgs>(w, arrays, fill, [](const auto& a) { cpu::adam(a); });
      },
      py::arg("variable"), py::arg("gradient"), py::arg("m"), py::arg("v"), py::arg("c1"), py::arg("c2"),
      py::arg("alpha"), py::arg("epsilon"),
      "One Adam step in place, each element: m += (g - m) * c1; v += (g * g - v) * c2; "
      "variable -= (m * alpha) / (sqrt(v) + epsilon). The four arrays: one shape, one dtype (float32 "
      "or float64), C-contiguous, not overlapping; the scalars are rounded to that dtype.");

  m.def(
      "rmsprop_update",
      [](py::object w, py::object g, py::object v, py::object mom, double rho, double c, double lr,
         double epsilon, double momentum) {
        const std::vector<UpdateArray> arrays{
            {w, "variable", true, false}, {g, "gradient", false, false}, {v, "v", true, false}, {mom, "mom", true, true}};
        auto fill = [&](auto& a, const auto& d) {
          using Real = std::remove_pointer_t<std::decay_t<decltype(d[0])>>;
          std::tie(a.w, a.g, a.v, a.mom) = std::make_tuple(d[0], d[1], d[2], d[3]);
          std::tie(a.rho, a.c, a.lr, a.epsilon, a.momentum) =
              std::make_tuple(Real(rho), Real(c), Real(lr), Real(epsilon), Real(momentum));
        };
        run_update<cpu::RmspropArgs>(w, arrays, fill, [](const auto& a) { cpu::rmsprop(a); });
      },
      py::arg("variable"), py::arg("gradient"), py::arg("v"), py::arg("mom"), py::arg("rho"), py::arg("c"),
      py::arg("lr"), py::arg("epsilon"), py::arg("momentum"),
      "One RMSprop step in place (not centered), each element: v = v * rho + c * (g * g); "
      "step = (lr * g) / sqrt(v + epsilon); variable -= step, or with mom (None: no momentum) "
      "mom = mom * momentum + step, variable -= mom. Arrays as for adam_update.");

  m.def(
      "sgd_update",
      [](py::object w, py::object g, py::object m, double lr, double momentum, bool nesterov) {
        const std::vector<UpdateArray> arrays{{w, "variable", true, false}, {g, "gradient", false, false}, {m, "m", true, true}};
        auto fill = [&](auto& a, const auto& d) {
          using Real = std::remove_pointer_t<std::decay_t<decltype(d[0])>>;
          std::tie(a.w, a.g, a.m) = std::make_tuple(d[0], d[1], d[2]);
          std::tie(a.lr, a.momentum, a.nesterov) = std::make_tuple(Real(lr), Real(momentum), nesterov);
        };
        run_update<cpu::SgdArgs>(w, arrays, fill, [](const auto& a) { cpu::sgd(a); });
      },
      py::arg("variable"), py::arg("gradient"), py::arg("m"), py::arg("lr"), py::arg("momentum"),
      py::arg("nesterov"),
      "One SGD step in place, each element: with m None, variable -= g * lr; else "
      "m = m * momentum - g * lr, then variable += m (nesterov: += m * momentum - g * lr). "
      "Arrays as for adam_update.");

  m.def(
      "index_add_rows",
      [](py::object target, py::object index, py::object values) {
        if (!py::isinstance<py::array>(target)) throw py::type_error("target: expected a numpy array");
        py::array ta = py::reinterpret_borrow<py::array>(target);
        if (is_double(target, "target"))
          index_add_rows_impl<double>(ta, index, values);
        else
          index_add_rows_impl<float>(ta, index, values);
      },
      py::arg("target"), py::arg("index"), py::arg("values"),
      "target[index[i]] += values[i] for every i, in order (numpy.add.at's sums, bit for bit): "
      "target (V, D) float32/float64 C-contiguous, index (n,) int64 in [-V, V), values (n, D).");

  m.def(
      "matmul",
      [](py::object a, py::object b, py::object bias) {
        for (const auto& [obj, name] : {std::pair<py::object, const char*>{a, "a"}, {b, "b"}})
          if (!py::isinstance<py::array>(obj) || py::reinterpret_borrow<py::array>(obj).ndim() != 2)
            throw py::value_error(std::string(name) + ": expected a 2-D array");
        py::array aa = py::reinterpret_borrow<py::array>(a), ba = py::reinterpret_borrow<py::array>(b);
        return is_double(a, "a") ? py::object(matmul_impl<double>(aa, ba, bias))
                                 : py::object(matmul_impl<float>(aa, ba, bias));
      },
      py::arg("a"), py::arg("b"), py::arg("bias") = py::none(),
      "a . b (+ bias on every row): a (M, K), b (K, N), 2-D float32 or float64 arrays of one dtype "
      "with any strides of whole elements; bias (N,) C-contiguous. A new C-contiguous (M, N) array, "
      "computed by the kernels' matrix product on their threads (the same bits for any thread count).");
  m.def("compiled_isas", &cpu::compiled_isas, "Instruction sets compiled into this build.");
  m.def("supported_isas", &cpu::supported_isas, "Compiled instruction sets this processor can run.");
  m.def("get_isa", [] { return std::string(cpu::active().name); }, "The instruction set in use.");
  m.def("set_isa", &cpu::set_isa, py::arg("name"), "Switch the instruction set in use (for tests).");
  m.def("get_num_threads", &cpu::num_threads);
  m.def("threads_for_next_run", &cpu::threads_for_run,
        "Threads the next kernel call will use: get_num_threads(), or 1 while backing off after "
        "calls whose threads were not all given a core.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw py::value_error("n: expected a number of threads >= 1, got " + std::to_string(n));
        cpu::set_num_threads(n);
      },
      py::arg("n"));
  m.def(
      "pool_info",
      [] {
        const cpu::PoolInfo info = cpu::pool_info();
        return py::make_tuple(info.choice, info.last, info.runtime, info.fallback);
      },
      "(choice, what the last kernel call ran on, the OpenMP runtime found or '', why 'auto' runs "
      "on the own pool: 'short team', 'forked' or '') (see set_pool).");
  m.def("set_backoff", &cpu::set_backoff, py::arg("enabled"),
        "Tests and benchmarks: whether calls back off to one thread after contended calls "
        "(default True); either way a back-off in progress ends.");
  m.def(
      "set_pool",
      [](const std::string& name) {
        if (!cpu::set_pool(name))
          throw py::value_error("name: expected \"auto\" or \"own\", got \"" + name + "\"");
      },
      py::arg("name"),
      "Where the kernels' threads run: \"auto\" (an OpenMP runtime already in the process, "
      "else the own pool) or \"own\".");
  m.def("set_cache_limit", &cpu::workspace::set_cache_limit, py::arg("nbytes"),
        "The most bytes of large working buffers kept between calls (0: none).");
  m.def("get_cache_limit", &cpu::workspace::cache_limit);
  m.def("cached_bytes", &cpu::workspace::cached_bytes, "Bytes of working buffers cached now.");
  m.def("clear_cache", &cpu::workspace::clear, "Free the cached working buffers.");
  m.def(
      "set_poison",
      [](bool on) {
        g_poison = on;
        cpu::workspace::set_poison(on);
      },
      py::arg("on"),
      "Fill every output, and every large working buffer, with NaN before the kernel runs (tests "
      "use it to catch elements read before they are written).");
  m.def("get_poison", [] { return g_poison; });
}
