"""fastlstm's CUDA backend (ops with backend="cuda") against fastlstm.reference in float64.

Three groups:

* Always: availability and error reporting (cuda_info / cuda_available, a clear RuntimeError
  for backend="cuda" when no GPU is usable, importing fastlstm without CuPy or without the
  extension, the extension being built wherever nvcc is).
* Emulator (no GPU needed): the CUDA kernels and their host code (csrc/cuda/lstm_impl.cuh)
  compiled with the host C++ compiler against the CPU emulator of csrc/cuda/emu/emu.h, put
  behind fastlstm.cuda in place of fastlstm._cuda, so the whole backend="cuda" path (ops.py,
  cuda.py, the kernels' indexing, lengths, reverse, barriers, the numerics) runs here. The
  emulator runs the threads of a block as fibers, checks barriers, bounds-checks fixed-size
  arrays and puts every allocation against a guard page; each case also runs with the
  thread and block order reversed and must give bitwise the same result.
* GPU (marker `cuda`): the same comparisons on a real device, plus CuPy / torch inputs and
  determinism; skipped with the reason from fastlstm.cuda_info() when no GPU is usable.

The precision option (precision="tf32" / "bf16": tensor-core GEMMs) is tested in all three
groups; its tolerances and their justification are at the "precision" section below.

Output poisoning is on for the CUDA backend in every test here: outputs and workspaces start
as NaN, so an element a kernel forgets to write (or reads before writing) fails the checks.
"""

import contextlib
import ctypes
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import pytest

import fastlstm
from fastlstm import cuda as fcuda
from fastlstm import ops, reference

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_sibling(name):
    """A module of this folder (conftest's helpers, the CPU tests' cases), loaded as a plain
    module: its tests and fixtures are not registered again."""
    spec = importlib.util.spec_from_file_location(f"_fastlstm_tests_{name}",
                                                  pathlib.Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_conftest = _load_sibling("conftest")
_cpu_tests = _load_sibling("test_ops_cpu")
rel_err = _conftest.rel_err
TOL, DTYPES = _cpu_tests.TOL, _cpu_tests.DTYPES
FWD_NAMES, BWD_NAMES = _cpu_tests.FWD_NAMES, _cpu_tests.BWD_NAMES

# The CPU tests' shapes (tests/test_ops_cpu.py; the largest, which is slow in the emulator,
# only with BIG_CASES) plus ones that cross the CUDA kernels' tiles: H around the 8-unit
# forward block and the 32-column backward block, B around the 4 / 16 batch rows per block,
# I and T*B around the 64 x 64 x 16 GEMM tile, H past the 64-deep staging chunk of the
# recurrent products.
_SLOW_IN_EMULATOR = "blocking_T30_B11_I300_H130"
CASES = {
    **{k: v for k, v in _cpu_tests.CASES.items() if k != _SLOW_IN_EMULATOR},
    # CUDA tiles
    "B4_H8_I16": dict(T=3, B=4, I=16, H=8),
    "B5_H9_I17_unsorted_lengths": dict(T=6, B=5, I=17, H=9, lengths=[3, 6, 0, 1, 5]),
    "B16_H32_I64_T4": dict(T=4, B=16, I=64, H=32, lengths=[4] * 8 + [2] * 4 + [0, 1, 3, 4]),
    "B17_H33_I65_reverse": dict(T=4, B=17, I=65, H=33, reverse=True,
                                lengths=[(3 * b) % 5 for b in range(17)]),
    "H65_I1_B2": dict(T=3, B=2, I=1, H=65),
    "H130_B3_TB_over_64": dict(T=23, B=3, I=70, H=130, lengths=[23, 11, 0]),
}
# Large H (many blocks per step, several 64-deep chunks, 4H = 4096 columns): on the GPU only
# (it is slow in the emulator).
BIG_CASES = {
    "H1024_B2_I64_T3": dict(T=3, B=2, I=64, H=1024, lengths=[3, 2]),
    "H1024_B33_I16_T2_reverse": dict(T=2, B=33, I=16, H=1024, reverse=True),
    _SLOW_IN_EMULATOR: _cpu_tests.CASES[_SLOW_IN_EMULATOR],
}


# --------------------------------------------------------------------------- helpers

def make_case(*args, **kwargs):
    """Random inputs from conftest's make_case, as (forward kwargs, backward kwargs)."""
    case = _conftest.make_case(*args, **kwargs)
    return case.fwd, case.bwd


def reference64(fwd, bwd):
    up = lambda a: a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a  # noqa: E731
    f64 = {k: up(v) for k, v in fwd.items()}
    b64 = {k: up(v) for k, v in bwd.items()}
    y, h_n, c_n, saved = reference.lstm_forward(**f64)
    return (y, h_n, c_n), reference.lstm_backward(saved, **b64)


def to_host(a):
    if a is None or isinstance(a, np.ndarray):
        return a
    return a.get()  # CuPy


def check_against_reference(fwd, bwd, outs, grads, tol):
    ref_outs, ref_grads = reference64(fwd, bwd)
    for name, a, b in zip(FWD_NAMES + BWD_NAMES, tuple(outs) + tuple(grads),
                          tuple(ref_outs) + tuple(ref_grads)):
        if b is None:
            assert a is None, f"{name}: expected None"
            continue
        a = to_host(a)
        assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape}"
        assert a.dtype == fwd["x"].dtype, f"{name}: dtype {a.dtype}"
        assert np.isfinite(a).all(), f"{name}: non-finite entries (unwritten output?)"
        err = rel_err(a, b)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g}"


def run_cuda(fwd, bwd, training=True):
    y, h_n, c_n, saved = ops.lstm_forward(**fwd, training=training, backend="cuda")
    grads = ops.lstm_backward(saved, **bwd) if training else None
    return (y, h_n, c_n), grads, saved


def run_and_check(name, spec, dtype):
    fwd, bwd = make_case(dtype=dtype, seed=zlib.crc32(name.encode()), **spec)
    outs, grads, _ = run_cuda(fwd, bwd)
    assert len(grads) == 6
    for a in tuple(outs) + tuple(grads):
        assert a is None or isinstance(a, np.ndarray), type(a)
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(dtype)])
    return outs, grads


def assert_bitwise_equal(first, second):
    for a, b in zip(first, second):
        if a is None:
            assert b is None
            continue
        a, b = to_host(a), to_host(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.fixture(autouse=True)
def cuda_poison():
    """Poison the CUDA backend's outputs and workspaces (NaN) in every test of this module."""
    fcuda.set_poison(True)
    try:
        yield
    finally:
        fcuda.set_poison(False)


# --------------------------------------------------------------------------- always

def test_cuda_info_is_a_dict_that_never_raises():
    info = fastlstm.cuda_info()
    assert isinstance(info, dict)
    for key in ("available", "reason", "built", "cupy"):
        assert key in info
    assert isinstance(info["available"], bool)
    assert fastlstm.cuda_available() is info["available"]
    if info["available"]:
        assert info["reason"] == ""
        for key in ("name", "capability", "sm_count", "total_memory", "kernel_variant"):
            assert key in info
    else:
        assert isinstance(info["reason"], str) and info["reason"]
    if info["built"]:
        assert "kernel_variant" in info and info["kernel_variant"]
        assert info["runtime_version"] > 0


def test_backend_cuda_without_gpu_raises_runtime_error_with_reason():
    if fastlstm.cuda_available():
        pytest.skip("a GPU is usable here")
    reason = fastlstm.cuda_info()["reason"]
    fwd, _ = make_case(3, 2, 4, 5, np.float32)
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available") as excinfo:
        ops.lstm_forward(**fwd, backend="cuda")
    assert reason in str(excinfo.value)


@pytest.mark.parametrize("backend", ["gpu", "CUDA", "cuda ", "cuda:0"])
def test_unknown_backend_names_stay_value_errors(backend):
    fwd, _ = make_case(3, 2, 4, 5, np.float32)
    with pytest.raises(ValueError, match="backend"):
        ops.lstm_forward(**fwd, backend=backend)


def _nvcc_present():
    return bool(os.environ.get("CUDACXX")) or shutil.which("nvcc") is not None


def test_extension_is_built_where_nvcc_is():
    # CMake's FASTLSTM_CUDA=AUTO builds fastlstm._cuda whenever it finds a CUDA compiler.
    if not _nvcc_present():
        pytest.skip("no nvcc here, so the build has no CUDA extension")
    if os.environ.get("FASTLSTM_CUDA", "").upper() == "OFF":
        pytest.skip("FASTLSTM_CUDA=OFF")
    info = fastlstm.cuda_info()
    assert info["built"], f"nvcc is on PATH but fastlstm._cuda is missing: {info['reason']}"
    from fastlstm import _cuda
    status = _cuda.status()  # never raises, GPU or not
    assert set(status) >= {"ok", "device_count", "reason", "runtime_version", "driver_version"}
    assert status["runtime_version"] >= 12000
    if not status["ok"]:
        assert status["reason"]
        # any CUDA call then raises RuntimeError with the CUDA error string
        with pytest.raises(RuntimeError, match="CUDA error"):
            _cuda.Buffer(16, 0)
        with pytest.raises(RuntimeError, match="CUDA error"):
            _cuda.device_properties(0)
    assert _cuda.get_poison() is True  # this module's fixture
    assert "deterministic" in _cuda.kernel_variant()


def test_extension_rejects_bad_arguments_before_touching_the_gpu():
    if not fastlstm.cuda_info()["built"]:
        pytest.skip(fastlstm.cuda_info()["reason"])
    from fastlstm import _cuda
    with pytest.raises(TypeError, match="dtype"):
        _cuda.forward("float16", (1, 1, 1, 1), *([0] * 7), False, *([0] * 5), 0, 0)
    with pytest.raises(ValueError, match="dims"):
        _cuda.forward("float32", (1, 1, 1), *([0] * 7), False, *([0] * 5), 0, 0)
    with pytest.raises(ValueError, match="nbytes"):
        _cuda.Buffer(-1, 0)


def _run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_import_fastlstm_does_not_import_cupy():
    r = _run_python("import sys, fastlstm, fastlstm.ops\n"
                    "info = fastlstm.cuda_info(); fastlstm.cuda_available()\n"
                    "assert 'cupy' not in sys.modules, 'cupy imported'\n"
                    "print('ok', info['available'])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_import_without_the_extension():
    # As on a build without CUDA: fastlstm._cuda cannot be found.
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'fastlstm._cuda':\n"
        "            raise ModuleNotFoundError(\"No module named 'fastlstm._cuda'\", name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, fastlstm\n"
        "from fastlstm import ops\n"
        "info = fastlstm.cuda_info()\n"
        "assert info['available'] is False and info['built'] is False, info\n"
        "assert info['reason'] == 'fastlstm was built without CUDA', info\n"
        "assert fastlstm.cuda_available() is False\n"
        "x = np.zeros((2, 1, 3), np.float32); k = np.zeros((3, 8), np.float32)\n"
        "r = np.zeros((2, 8), np.float32)\n"
        "try:\n"
        "    ops.lstm_forward(x, k, r, backend='cuda')\n"
        "except RuntimeError as e:\n"
        "    assert 'fastlstm was built without CUDA' in str(e), e\n"
        "    print('ok')\n"
        "y = ops.lstm_forward(x, k, r, backend='cpu')[0]\n"
        "assert y.shape == (2, 1, 2)\n"
    )
    r = _run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


# --------------------------------------------------------------------------- emulator

EMU_SOURCE = ROOT / "csrc" / "cuda" / "emu" / "emu_capi.cc"


class _EmuBuffer:
    def __init__(self, lib, nbytes, device):
        if nbytes < 0:
            raise ValueError(f"nbytes: expected >= 0, got {nbytes}")
        self._lib = lib
        self.nbytes = int(nbytes)
        self.device = device
        self.ptr = int(lib.fl_emu_alloc(self.nbytes) or 0)
        if self.nbytes and not self.ptr:
            raise RuntimeError("emulator: out of memory")

    def __del__(self):
        if getattr(self, "ptr", 0):
            self._lib.fl_emu_free(ctypes.c_void_p(self.ptr))
            self.ptr = 0

    def _check(self, a):
        if not a.flags.c_contiguous or a.nbytes != self.nbytes:
            raise ValueError("emulator buffer: size or layout mismatch")

    def upload(self, src):
        self._check(src)
        if self.nbytes:
            ctypes.memmove(self.ptr, src.ctypes.data, self.nbytes)

    def download(self, dst):
        self._check(dst)
        if self.nbytes:
            ctypes.memmove(dst.ctypes.data, self.ptr, self.nbytes)


class EmuExtension:
    """Stands in for fastlstm._cuda: the same functions, run by the CPU emulator."""

    def __init__(self, lib):
        self.lib = lib
        self._poison = False
        self._sm_count, self._capability = 4, (9, 0)  # set_device's and set_capability's defaults
        lib.fl_emu_alloc.restype = ctypes.c_void_p
        lib.fl_emu_alloc.argtypes = [ctypes.c_int64]
        lib.fl_emu_free.argtypes = [ctypes.c_void_p]
        lib.fl_emu_live_allocations.restype = ctypes.c_int64
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        ci, cs = ctypes.c_int, ctypes.c_char_p
        lib.fl_emu_forward.argtypes = [ci, i64, i64, i64, i64] + [p] * 7 + [ci] + [p] * 5 + \
            [ci, ci, cs, ci, cs, ci]
        lib.fl_emu_backward.argtypes = [ci, i64, i64, i64, i64] + [p] * 6 + [ci] + [p] * 11 + \
            [ci, ci, cs, ci, cs, ci]
        lib.fl_emu_gemm.argtypes = [ci, i64, i64, i64, p, i64, i64, p, i64, i64, p, p, i64,
                                    cs, ci, cs, ci]
        lib.fl_emu_step_gemm.argtypes = [ci, ci, i64, i64, i64, i64, p, i64, i64, p, i64, i64, p,
                                         cs, ci, cs, ci]
        lib.fl_emu_step_matmul.argtypes = [ci, i64, i64, i64, p, i64, i64, p, i64, i64, p, i64, i64, i64,
                                           cs, ci, cs, ci]
        lib.fl_emu_tensor_auto.argtypes = [i64, i64]
        lib.fl_emu_set_device.argtypes = [ci, ci, ci, ci]
        lib.fl_emu_set_capability.argtypes = [ci, ci]
        lib.fl_emu_set_schedule.argtypes = [ci, i64]

        class Buffer(_EmuBuffer):
            def __init__(buf, nbytes, device):  # noqa: N805
                super().__init__(lib, nbytes, device)

        self.Buffer = Buffer

    def status(self):
        return {"ok": True, "device_count": 1, "reason": "", "runtime_version": 0,
                "driver_version": 0}

    def current_device(self):
        return 0

    def device_properties(self, device):
        """The emulated device as set_device / set_capability last set it."""
        return {"name": "fastlstm CPU emulator", "capability": self._capability, "sm_count": self._sm_count,
                "total_memory": 0, "l2_cache_bytes": 0}

    def kernel_variant(self):
        return "emulator"

    def set_poison(self, on):
        self._poison = bool(on)
        self.lib.fl_emu_set_poison(int(bool(on)))

    def get_poison(self):
        return self._poison

    def empty_cache(self, device):
        pass

    def synchronize(self, device, stream):
        pass

    def set_reverse_order(self, on):
        self.lib.fl_emu_set_reverse_order(int(bool(on)))

    def set_guard_front(self, on):
        self.lib.fl_emu_set_guard_front(int(bool(on)))

    def set_pretend_unaligned(self, on):
        """The persistent kernels' weight loads take R as unaligned: one value per load."""
        self.lib.fl_emu_set_pretend_unaligned(int(bool(on)))

    def set_async_eager(self, on):
        """cp.async copies land at the copy (True) or at the copying thread's wait (False)."""
        self.lib.fl_emu_set_async_eager(int(bool(on)))

    def set_device(self, sm_count=4, smem_per_block_optin=232448, smem_per_sm=233472, cooperative=True):
        """The emulated device the persistent kernels are planned for (default: 4 SMs with an
        H100's shared memory)."""
        self.lib.fl_emu_set_device(int(sm_count), int(smem_per_block_optin), int(smem_per_sm),
                                   int(bool(cooperative)))
        self._sm_count = int(sm_count)

    def set_capability(self, major=9, minor=0):
        """The emulated device's compute capability (tf32 / bf16 need 8.0)."""
        self.lib.fl_emu_set_capability(int(major), int(minor))
        self._capability = (int(major), int(minor))

    def set_schedule(self, mode, seed=1):
        """Cooperative launches: 0 thread order, 1 reversed, 2 random permutation per round."""
        self.lib.fl_emu_set_schedule(int(mode), int(seed))

    @staticmethod
    def _is_double(dtype):
        if dtype not in ("float32", "float64"):
            raise TypeError(f"dtype: expected 'float32' or 'float64', got '{dtype}'")
        return int(dtype == "float64")

    _PATHS = {"auto": 0, "simt": 1, "persistent": 2, "tensor": 3, "tiled": 4}
    _PRECISIONS = {"fp32": 0, "tf32": 1, "bf16": 2, "tf32x3": 3}

    def _precision(self, precision):
        if precision not in self._PRECISIONS:
            raise ValueError(f"precision: expected one of {tuple(self._PRECISIONS)}, got '{precision}'")
        return self._PRECISIONS[precision]

    def _call(self, fn, kernel_path, precision, *args):
        if kernel_path not in self._PATHS:
            raise ValueError(f"kernel_path: expected 'auto', 'simt', 'persistent' or 'tensor', got '{kernel_path}'")
        ran = ctypes.create_string_buffer(2048)  # room for a phase trace (FASTLSTM_CUDA_TRACE)
        err = ctypes.create_string_buffer(1024)
        rc = fn(*args, self._PATHS[kernel_path], self._precision(precision), ran, len(ran), err,
                len(err))
        if rc != 0:
            raise RuntimeError(err.value.decode())
        return ran.value.decode()

    def forward(self, dtype, dims, *ptrs_and_flags, kernel_path="auto", precision="fp32"):
        x, kernel, rk, bias, h0, c0, lengths, reverse, y, h_n, c_n, gates, cells, device, stream = \
            ptrs_and_flags
        return self._call(self.lib.fl_emu_forward, kernel_path, precision, self._is_double(dtype),
                          *dims, x, kernel, rk, bias, h0, c0, lengths, int(reverse), y, h_n, c_n,
                          gates, cells)

    def backward(self, dtype, dims, *ptrs_and_flags, kernel_path="auto", precision="fp32"):
        (x, kernel, rk, h0, c0, lengths, reverse, gates, cells, dy, dh_n, dc_n, dx, dh0, dc0, dk,
         dr, db, device, stream) = ptrs_and_flags
        return self._call(self.lib.fl_emu_backward, kernel_path, precision, self._is_double(dtype),
                          *dims, x, kernel, rk, h0, c0, lengths, int(reverse), gates, cells, dy, dh_n,
                          dc_n, dx, dh0, dc0, dk, dr, db)

    def step_matmul(self, precision, large, kslice, M, N, K, a, sam, sak, b, sbk, sbn, c):
        """The per-step recurrent products' GEMM alone (kernel path "tensor"): partial products
        over k slices of kslice (kslice <= 0: the plan for the emulated device) into c
        (slices x M x N). Returns the plan's description."""
        ran = ctypes.create_string_buffer(256)
        err = ctypes.create_string_buffer(1024)
        rc = self.lib.fl_emu_step_gemm(self._precision(precision), int(bool(large)), kslice, M, N, K, a, sam,
                                       sak, b, sbk, sbn, c, ran, len(ran), err, len(err))
        if rc != 0:
            raise RuntimeError(err.value.decode())
        return ran.value.decode()

    def step_matmul_api(self, precision, M, N, K, a, sam, sak, b, sbk, sbn, c, c_elems, repeat, kslice=0):
        """step_matmul() of api.h (what _cuda.step_matmul binds): its checks and the plan for the
        emulated device, or the kslice override. Returns the plan's description."""
        ran = ctypes.create_string_buffer(256)
        err = ctypes.create_string_buffer(1024)
        rc = self.lib.fl_emu_step_matmul(self._precision(precision), M, N, K, a, sam, sak, b, sbk, sbn, c, c_elems,
                                         repeat, kslice, ran, len(ran), err, len(err))
        if rc != 0:
            raise RuntimeError(err.value.decode())
        return ran.value.decode()

    def tensor_auto(self, B, H):
        """Whether kernel path "auto" (with tf32 / bf16) picks the tensor path for B rows, H units."""
        return bool(self.lib.fl_emu_tensor_auto(B, H))

    def matmul(self, precision, M, N, K, a, sam, sak, b, sbk, sbn, bias, c, ldc, device, stream):
        ran = ctypes.create_string_buffer(256)
        err = ctypes.create_string_buffer(1024)
        rc = self.lib.fl_emu_gemm(self._precision(precision), M, N, K, a, sam, sak, b, sbk, sbn,
                                  bias, c, ldc, ran, len(ran), err, len(err))
        if rc != 0:
            raise RuntimeError(err.value.decode())
        return ran.value.decode()


@pytest.fixture(scope="module")
def emu_lib():
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        pytest.skip("no C++ compiler to build the CUDA emulator")
    if not hasattr(os, "fork") or sys.platform != "linux":
        pytest.skip("the CUDA emulator needs Linux (ucontext, mmap)")
    out = pathlib.Path(tempfile.mkdtemp(prefix="fastlstm_emu_")) / "libfastlstm_cuda_emu.so"
    cmd = [cxx, "-std=c++17", "-O1", "-fPIC", "-shared", f"-I{ROOT / 'csrc'}", "-Wall", "-Wextra",
           "-Wno-unknown-pragmas", "-fsanitize=bounds",
           "-fsanitize-undefined-trap-on-error", str(EMU_SOURCE), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"building the CUDA emulator failed:\n{' '.join(cmd)}\n{r.stderr}"
    lib = ctypes.CDLL(str(out))
    yield lib
    shutil.rmtree(out.parent, ignore_errors=True)


@pytest.fixture
def emu(emu_lib):
    """fastlstm.cuda runs on the emulator for the duration of the test (poisoning on; the
    default tensor-core GEMM unless a test asks for the pipelined one)."""
    pipe = os.environ.pop("FASTLSTM_CUDA_GEMM_PIPELINE", None)
    ext = EmuExtension(emu_lib)
    previous = fcuda._set_extension(ext)
    ext.set_poison(True)
    ext.set_reverse_order(False)
    ext.set_guard_front(False)
    ext.set_async_eager(False)
    ext.set_pretend_unaligned(False)
    ext.set_device()
    ext.set_capability()
    ext.set_schedule(0)
    try:
        yield ext
    finally:
        ext.set_poison(False)
        ext.set_reverse_order(False)
        ext.set_guard_front(False)
        ext.set_async_eager(False)
        ext.set_pretend_unaligned(False)
        ext.set_device()
        ext.set_capability()
        ext.set_schedule(0)
        fcuda.set_kernel_path(None)
        fcuda._set_extension(previous)
        os.environ.pop("FASTLSTM_CUDA_GEMM_PIPELINE", None)
        if pipe is not None:
            os.environ["FASTLSTM_CUDA_GEMM_PIPELINE"] = pipe


# Emulated SM counts for the persistent kernels, cycled over the cases so that the planner
# picks different units per block (1 .. 64), batch chunks and several blocks per SM.
PERSISTENT_SMS = (3, 5, 12, 4, 7)
# (with 4 SMs, H = 130 in float64 needs 17 blocks of 8 units, several per SM: slow to emulate)
PERSISTENT_SMS_OF = {"H130_B3_TB_over_64": 5}


def _persistent_sms(name):
    return PERSISTENT_SMS_OF.get(name, PERSISTENT_SMS[zlib.crc32(name.encode()) % len(PERSISTENT_SMS)])


def _ran(kind):
    return fastlstm.cuda_info()[f"last_{kind}"]


@pytest.mark.parametrize("path", ["simt", "persistent"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_emulated_kernels_match_reference(emu, name, dtype, path):
    assert fastlstm.cuda_available() and fastlstm.cuda_info()["kernel_variant"] == "emulator"
    fcuda.set_kernel_path(path)
    if path == "persistent":
        emu.set_device(sm_count=_persistent_sms(name))
    outs, grads = run_and_check(name, CASES[name], dtype)
    if CASES[name]["T"] > 0 and CASES[name]["B"] > 0:
        assert _ran("forward").startswith(f"{path} forward"), _ran("forward")
        assert _ran("backward").startswith(f"{path} backward"), _ran("backward")
    # Reversed thread order in every barrier round, reversed block order, guard pages before
    # the buffers instead of after: the same bits (no missing barrier, no order dependence).
    emu.set_reverse_order(True)
    emu.set_guard_front(True)
    outs2, grads2 = run_and_check(name, CASES[name], dtype)
    assert_bitwise_equal(tuple(outs) + tuple(grads), tuple(outs2) + tuple(grads2))
    if path == "persistent":
        # The cooperative launches' other schedules: random order with slow blocks whose
        # threads drift apart (a missing block or grid barrier, or a grid barrier that does not
        # wait for its block's writes, reads unwritten NaN), then greedy, each block as far as
        # it can go before the next (a block not held at the grid barrier runs ahead).
        for mode in (2, 3):
            emu.set_schedule(mode, seed=zlib.crc32(name.encode()) + 1)
            outs3, grads3 = run_and_check(name, CASES[name], dtype)
            assert_bitwise_equal(tuple(outs) + tuple(grads), tuple(outs3) + tuple(grads3))


@pytest.mark.parametrize("name", ["B5_H9_I17_unsorted_lengths", "B17_H33_I65_reverse",
                                  "H130_B3_TB_over_64", "B16_H32_I64_T4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_emulated_persistent_and_simt_agree(emu, name, dtype):
    # Different summation orders, same function: within the float tolerance of each other.
    fwd, bwd = make_case(dtype=dtype, seed=zlib.crc32(name.encode()), **CASES[name])
    emu.set_device(sm_count=_persistent_sms(name))
    results = {}
    for path in ("simt", "persistent", "auto"):
        fcuda.set_kernel_path(path)
        outs, grads, _ = run_cuda(fwd, bwd)
        results[path] = tuple(outs) + tuple(grads)
    assert CASES[name]["B"] <= AUTO_PERSISTENT_MAX_ROWS
    assert _ran("forward").startswith("persistent forward")  # auto picks it where it fits
    assert_bitwise_equal(results["auto"], results["persistent"])
    tol = TOL[np.dtype(dtype)]
    for name_, a, b in zip(FWD_NAMES + BWD_NAMES, results["simt"], results["persistent"]):
        if a is not None:
            assert rel_err(b, a) <= tol, f"{name_}: persistent vs simt {rel_err(b, a):.3g}"


def test_emulated_auto_takes_persistent_up_to_64_rows(emu):
    # auto: the persistent kernels for B <= 64 where they fit, the per-step ones above
    # (bench/NOTES_GPU.md); forced, persistent runs at any B that fits
    for B, want in ((1, "persistent"), (64, "persistent"), (65, "simt"), (90, "simt")):
        fwd, bwd = make_case(2, B, 3, 8, np.float32, seed=B)
        run_cuda(fwd, bwd)
        for kind in ("forward", "backward"):
            assert _ran(kind).startswith(f"{want} {kind}"), (B, _ran(kind))
            if want == "simt":
                assert f"persistent not used: auto: B = {B} > 64 rows" in _ran(kind), _ran(kind)
    with fcuda.use_kernel_path("persistent"):
        run_cuda(fwd, bwd)
        assert _ran("forward").startswith("persistent forward") and _ran("backward").startswith("persistent backward")


@pytest.mark.parametrize("H", [600, 601])
def test_emulated_persistent_staging_in_several_passes(emu, H):
    # The forward stages a chunk's rows in passes of 256 threads x 8 loads (stage_rows): with
    # B = 16 rows of H = 600 (150 vectors each: 2400 > 2048) it takes two passes of 16-byte
    # loads; H = 601 (not a multiple of 4) takes the one-value path, five passes. Lengths with
    # a zero and reverse; against the float64 reference and the per-step kernels.
    emu.set_device(sm_count=160)
    lengths = [2, 0, 1] + [2] * 13
    fwd, bwd = make_case(2, 16, 3, H, np.float32, seed=H, lengths=lengths, reverse=True)
    simt = None
    for path in ("simt", "persistent"):
        fcuda.set_kernel_path(path)
        outs, grads, _ = run_cuda(fwd, bwd)
        assert _ran("forward").startswith(f"{path} forward"), _ran("forward")
        if path == "persistent":
            assert "16 rows/chunk" in _ran("forward"), _ran("forward")
        check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(np.float32)])
        if simt is None:
            simt = tuple(outs) + tuple(grads)
    for a, b in zip(simt, tuple(outs) + tuple(grads)):
        if a is not None:
            assert rel_err(b, a) <= TOL[np.dtype(np.float32)]
    fcuda.set_kernel_path("auto")


@pytest.mark.parametrize("B,H,sms,lengths,reverse", [
    (40, 24, 4, None, False),                           # 3 chunks of 16, 16, 8 rows
    (33, 600, 160, [2, 0, 1] * 11, True),               # each chunk's rows staged in two passes
    (6, 40, 4, [3, 1, 0, 2, 3, 3], False),              # shared memory for 4 rows/chunk only
    (20, 9, 5, list(range(20)), True),                  # H % 4 != 0: the forward stages values
])
def test_emulated_persistent_staging_ahead(emu, monkeypatch, B, H, sms, lengths, reverse):
    # With several chunks per step, each chunk's first pass of staging loads is issued before
    # the previous chunk's product (stage_load / stage_store): the same bits as staging each
    # chunk in its turn (FASTLSTM_CUDA_STAGE_AHEAD=0), against the float64 reference, and on
    # the emulator's other block schedules (a chunk stored before the previous one's product
    # was read, or loaded from the wrong rows, would differ).
    T = 3 if lengths is None else max(max(lengths), 1)
    lengths = None if lengths is None else [min(v, T) for v in lengths]
    if H == 40:  # 3 blocks of 16 units: 14976 / 16896 B at 4 rows/chunk, 19712 / 23552 B at 8
        emu.set_device(sm_count=sms, smem_per_block_optin=17000, smem_per_sm=34000)
    else:
        emu.set_device(sm_count=sms)
    fwd, bwd = make_case(T, B, 5, H, np.float32, seed=B * H, lengths=lengths, reverse=reverse)
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_STAGE_AHEAD", "0")
    plain = run_cuda(fwd, bwd)
    for kind in ("forward", "backward"):
        assert "ahead" not in _ran(kind), _ran(kind)
    monkeypatch.delenv("FASTLSTM_CUDA_STAGE_AHEAD")
    results = []
    for mode in (0, 2, 3):
        emu.set_schedule(mode, seed=B + H)
        outs, grads, _ = run_cuda(fwd, bwd)
        results.append(tuple(outs) + tuple(grads))
        assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), results[-1])
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(np.float32)])
    bc = int(_ran("forward").split(" rows/chunk")[0].rsplit(" ", 1)[1])
    assert B > bc, _ran("forward")  # several chunks per step
    assert ("staged one chunk ahead" in _ran("forward")) == (H % 4 == 0), _ran("forward")
    assert "staged one chunk ahead" in _ran("backward"), _ran("backward")
    fcuda.set_kernel_path("auto")


# The tagged exchange (FASTLSTM_CUDA_EXCHANGE=tagged, csrc/cuda/persistent.cuh stage_tagged):
# h_s (forward) and dz_s (backward) reach the other blocks as 64-bit words value | (step << 32)
# in two slots, polled until their tags match, instead of through a grid barrier. The
# arithmetic is unchanged, so the results must be the barrier kernels' bits. In the emulator a
# block that runs ahead (schedule 3: each block as far as it can) spins on words not yet
# written; a slot overwritten before every block read it would leave a reader spinning on a
# tag that never comes (the emulator's deadlock error); a value read before its tag matched
# would be the NaN poison or the zeroed buffer.
@pytest.mark.parametrize("name", [n for n in CASES if CASES[n]["T"] > 0 and CASES[n]["B"] > 0])
def test_emulated_persistent_tagged_exchange_is_bitwise_the_barrier(emu, monkeypatch, name):
    spec = CASES[name]
    fwd, bwd = make_case(dtype=np.float32, seed=zlib.crc32(name.encode()), **spec)
    emu.set_device(sm_count=_persistent_sms(name))
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "barrier")
    outs, grads, _ = run_cuda(fwd, bwd)
    barrier = tuple(outs) + tuple(grads)
    for kind in ("forward", "backward"):
        assert "tagged" not in _ran(kind), _ran(kind)
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "tagged")
    for mode, reverse in ((0, False), (1, True), (2, False), (3, False), (3, True)):
        emu.set_schedule(mode, seed=zlib.crc32(name.encode()) + 7)
        emu.set_reverse_order(reverse)
        outs, grads, _ = run_cuda(fwd, bwd)
        for kind in ("forward", "backward"):
            assert _ran(kind).startswith(f"persistent {kind}") and _ran(kind).endswith(", tagged exchange)"), _ran(kind)
            assert "staged one chunk ahead" not in _ran(kind), _ran(kind)
        assert_bitwise_equal(barrier, tuple(outs) + tuple(grads))
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(np.float32)])


@pytest.mark.parametrize("B,H,sms,lengths,reverse", [
    (40, 24, 4, None, False),                           # 3 chunks of 16, 16, 8 rows per step
    (16, 601, 160, [2, 0, 1] + [2] * 13, True),         # H odd: a pair's second word past H is no value;
                                                        # 5 passes of pairs per chunk
    (33, 600, 160, [2, 0, 1] * 11, True),               # 3 chunks, each staged in several passes
    (1, 70, 12, None, True),                            # one row: 1 row/chunk
])
def test_emulated_persistent_tagged_exchange_chunks_and_passes(emu, monkeypatch, B, H, sms, lengths, reverse):
    T = 3 if lengths is None else max(lengths)
    emu.set_device(sm_count=sms)
    fwd, bwd = make_case(T, B, 5, H, np.float32, seed=B * H + 1, lengths=lengths, reverse=reverse)
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "barrier")
    plain = run_cuda(fwd, bwd)
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "tagged")
    for mode in (0, 2, 3):
        emu.set_schedule(mode, seed=B + H)
        outs, grads, _ = run_cuda(fwd, bwd)
        assert "tagged exchange" in _ran("forward") and "tagged exchange" in _ran("backward")
        assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(np.float32)])
    # the traced tagged kernels (gpu_phase_profile with the switch set): the same bits
    monkeypatch.setenv("FASTLSTM_CUDA_TRACE", "1")
    outs, grads, _ = run_cuda(fwd, bwd)
    for kind in ("forward", "backward"):
        assert "tagged exchange) | trace: " in _ran(kind), _ran(kind)
    assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))


TAGGED_AUTO_MAX_ROWS = 0  # csrc/cuda/lstm_impl.cuh kTaggedAutoMaxRows (0: auto never takes it)


@pytest.mark.parametrize("value", [None, "auto"])
def test_emulated_tagged_exchange_auto_rule(emu, monkeypatch, value):
    # FASTLSTM_CUDA_EXCHANGE unset (or "auto"): the persistent kernels take the tagged exchange
    # for B <= kTaggedAutoMaxRows in float32, the grid barrier above it and in float64; the same
    # bits either way.
    emu.set_device(sm_count=5)

    def choose(v):
        if v is None:
            monkeypatch.delenv("FASTLSTM_CUDA_EXCHANGE", raising=False)
        else:
            monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", v)

    for B in sorted({1, 2, TAGGED_AUTO_MAX_ROWS, TAGGED_AUTO_MAX_ROWS + 1} - {0}):
        for dtype in (np.float32, np.float64):
            fwd, bwd = make_case(3, B, 4, 20, dtype, seed=B)
            choose(value)
            got = run_cuda(fwd, bwd)  # auto path: persistent up to 64 rows
            want = dtype == np.float32 and B <= TAGGED_AUTO_MAX_ROWS
            for kind in ("forward", "backward"):
                assert _ran(kind).startswith(f"persistent {kind}"), _ran(kind)
                assert ("tagged exchange" in _ran(kind)) == want, (B, dtype, _ran(kind))
            choose("barrier")
            barrier = run_cuda(fwd, bwd)
            assert "tagged" not in _ran("forward")
            assert_bitwise_equal(tuple(got[0]) + tuple(got[1]), tuple(barrier[0]) + tuple(barrier[1]))


def test_emulated_persistent_tagged_exchange_float64_env_and_no_leaks(emu, emu_lib, monkeypatch):
    # float64 has no tagged kernels (a word holds a float32 value): the barrier kernels run, the
    # same bits as without the switch; "barrier" and "" are the default; any other value is an
    # error naming the variable; the exchange buffer is freed after each call.
    emu.set_device(sm_count=5)
    fcuda.set_kernel_path("persistent")
    fwd, bwd = make_case(4, 3, 5, 20, np.float64, seed=5, lengths=[4, 0, 2])
    monkeypatch.delenv("FASTLSTM_CUDA_EXCHANGE", raising=False)
    plain = run_cuda(fwd, bwd)
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "tagged")
    tagged = run_cuda(fwd, bwd)
    assert "tagged" not in _ran("forward") and "tagged" not in _ran("backward")
    assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(tagged[0]) + tuple(tagged[1]))
    fwd32, bwd32 = make_case(4, 3, 5, 20, np.float32, seed=5, lengths=[4, 0, 2])
    for value in ("", "auto", "barrier"):  # (B = 3 > TAGGED_AUTO_MAX_ROWS: auto takes the barrier)
        monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", value)
        run_cuda(fwd32, bwd32)
        assert "tagged" not in _ran("forward") and "tagged" not in _ran("backward")
    for value in ("Tagged", "1", "none"):
        monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", value)
        with pytest.raises(RuntimeError, match="FASTLSTM_CUDA_EXCHANGE must be 'auto', 'barrier' or 'tagged'"):
            run_cuda(fwd32, bwd32)
    # the simt path never reads the switch
    fcuda.set_kernel_path("simt")
    run_cuda(fwd32, bwd32)
    assert _ran("forward").startswith("simt forward")
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "tagged")
    emu_lib.fl_emu_live_allocations.restype = ctypes.c_int64
    before = emu_lib.fl_emu_live_allocations()
    y, h_n, c_n, saved = ops.lstm_forward(**fwd32, backend="cuda")
    ops.lstm_backward(saved, **bwd32)
    assert "tagged exchange" in _ran("forward") and "tagged exchange" in _ran("backward")
    del saved
    import gc
    gc.collect()
    assert emu_lib.fl_emu_live_allocations() == before


TRACE_PHASES = ("weights", "wait", "stage", "product", "finish", "barrier", "gates", "reduce")


def _trace_fields(ran):
    """{name: (least, mean, largest)} and the header values of a ' | trace: ...' description."""
    assert " | trace: " in ran, ran
    fields = dict(item.split("=", 1) for item in ran.split(" | trace: ", 1)[1].split())
    out = {k: tuple(float(v) for v in fields[k].split("/")) for k in TRACE_PHASES + ("total", "kernel_us")}
    out.update(steps=int(fields["steps"]), blocks=int(fields["blocks"]), ghz=float(fields["ghz"]))
    return out


# The persistent backward loads phase A's inputs (gates, cells, h_{t-1}'s o, dy) a step early
# where every thread has at most one (row, unit) (B * U <= 256), keeps its running dc and its
# row's length in registers and, with one chunk per step, its running dh
# (csrc/cuda/persistent.cuh gate_inputs; FASTLSTM_CUDA_INPUTS_AHEAD=0 turns it off). The same
# arithmetic: the same bits as loading them in their step. Inputs of the wrong step, a dh or dc
# register that missed an update, or a row past its length treated as live would differ.
@pytest.mark.parametrize("B,H,sms,lengths,reverse,exchange,opts", [
    (5, 9, 5, [3, 6, 0, 1, 5], False, "barrier", {}),            # one chunk: dh in a register
    (5, 9, 5, [3, 6, 0, 1, 5], True, "tagged", dict(dy=False)),  # no dy
    (3, 40, 10, None, True, "barrier", dict(h0=False, c0=False, dh_n=False, dc_n=False)),
    (20, 9, 5, list(range(20)), True, "barrier", {}),            # two chunks (16 + 4): dh from memory
    (20, 9, 5, [7 - b % 8 for b in range(20)], False, "tagged", {}),
    (40, 24, 4, None, False, "barrier", {}),                     # B * U = 320 > 256: loaded in their step
    (1, 70, 12, None, True, "tagged", {}),                       # one row
    (1, 8, 2, None, False, "barrier", dict(T=1)),                # one step: nothing to prefetch
])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_emulated_persistent_backward_gate_inputs_prefetched(emu, monkeypatch, B, H, sms, lengths, reverse,
                                                             exchange, opts, dtype):
    opts = dict(opts)
    T = opts.pop("T", 3 if lengths is None else max(lengths))
    emu.set_device(sm_count=sms)
    fwd, bwd = make_case(T, B, 4, H, dtype, seed=B * H + T, lengths=lengths, reverse=reverse, **opts)
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", exchange)
    monkeypatch.setenv("FASTLSTM_CUDA_INPUTS_AHEAD", "0")
    plain = run_cuda(fwd, bwd)
    assert "prefetched" not in _ran("backward"), _ran("backward")
    monkeypatch.delenv("FASTLSTM_CUDA_INPUTS_AHEAD")
    for mode, rev in ((0, False), (1, True), (2, False), (3, False)):
        emu.set_schedule(mode, seed=B + H)
        emu.set_reverse_order(rev)
        outs, grads, _ = run_cuda(fwd, bwd)
        ran = _ran("backward")
        units = int(ran.split(" units/block")[0].rsplit(" ", 1)[1])
        assert ran.startswith("persistent backward"), ran
        assert ("gate inputs prefetched" in ran) == (B * units <= 256), ran
        assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(dtype)])
    fcuda.set_kernel_path("auto")


# Weights in registers (float32, one row per chunk: B = 1, or any B where shared memory leaves
# room for one row per chunk only): each thread keeps the weight vectors
# it multiplies, at most 32 (csrc/cuda/persistent.cuh kRegVectors), in registers instead of
# reading them from shared memory every step (FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS=0 turns it off).
# The same vectors in the same order: the same bits. A vector loaded from the wrong place, one
# left out (the 32nd, at the limit) or a thread past the last vector multiplying garbage would
# differ.
@pytest.mark.parametrize("H,sms,lengths,reverse,exchange,want", [
    (128, 2, None, False, "barrier", True),   # 32 vectors per thread both ways (the limit): forward
                                              # 256 columns x 32 groups, backward 64 columns x 128
    (129, 3, None, True, "tagged", False),    # 33 both ways: from shared memory
    (70, 12, [3], True, "tagged", True),      # 3 vectors per thread, 9 blocks
    (9, 5, [0], False, "barrier", True),      # length 0: nothing to multiply
])
def test_emulated_persistent_weights_in_registers(emu, monkeypatch, H, sms, lengths, reverse, exchange, want):
    T = 3 if lengths is None else max(lengths[0], 2)
    emu.set_device(sm_count=sms)
    fwd, bwd = make_case(T, 1, 5, H, np.float32, seed=H + sms, lengths=lengths, reverse=reverse)
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", exchange)
    monkeypatch.setenv("FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS", "0")
    plain = run_cuda(fwd, bwd)
    for kind in ("forward", "backward"):
        assert "1 rows/chunk" in _ran(kind) and "registers" not in _ran(kind), _ran(kind)
    monkeypatch.delenv("FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS")
    for mode, rev in ((0, False), (1, True), (2, False), (3, False)):
        emu.set_schedule(mode, seed=H)
        emu.set_reverse_order(rev)
        outs, grads, _ = run_cuda(fwd, bwd)
        for kind in ("forward", "backward"):
            assert ("weights in registers" in _ran(kind)) == want, _ran(kind)
        assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(np.float32)])
    monkeypatch.setenv("FASTLSTM_CUDA_TRACE", "1")  # the traced kernels: the same bits
    outs, grads, _ = run_cuda(fwd, bwd)
    for kind in ("forward", "backward"):
        assert ("weights in registers" in _ran(kind)) == want and " | trace: " in _ran(kind), _ran(kind)
    assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))
    monkeypatch.delenv("FASTLSTM_CUDA_TRACE")
    # float64 and B > 1 keep the weights in shared memory (auto: float64 at H = 128 on 2 SMs
    # does not fit and runs the per-step kernels)
    fcuda.set_kernel_path("auto")
    for dtype, B in ((np.float64, 1), (np.float32, 2)):
        f, b = make_case(2, B, 3, H, dtype, seed=B)
        run_cuda(f, b)
        assert H == 128 or _ran("forward").startswith("persistent forward"), _ran("forward")
        assert "registers" not in _ran("forward") and "registers" not in _ran("backward"), _ran("forward")


def _persistent_switch_case(emu, B, I, H, sms, lengths, reverse, dtype, seed):
    """A case for the tests of a persistent-kernel switch: the emulated device with `sms` SMs,
    kernel path persistent, T = 3 or the longest length; returns (fwd, bwd, the exchanges to run:
    barrier, and tagged in float32)."""
    T = 3 if lengths is None else max(lengths)
    emu.set_device(sm_count=sms)
    fwd, bwd = make_case(T, B, I, H, dtype, seed=seed, lengths=lengths, reverse=reverse)
    fcuda.set_kernel_path("persistent")
    return fwd, bwd, (("barrier", "tagged") if dtype == np.float32 else ("barrier",))


def _run_switched_off(monkeypatch, switch, exchange, fwd, bwd, described):
    """run_cuda(fwd, bwd) with FASTLSTM_CUDA_<switch>=0 and the given exchange (left set); both
    kernels' descriptions must satisfy `described`. Returns the results."""
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", exchange)
    monkeypatch.setenv(f"FASTLSTM_CUDA_{switch}", "0")
    plain = run_cuda(fwd, bwd)
    for kind in ("forward", "backward"):
        assert described(_ran(kind)), _ran(kind)
    monkeypatch.delenv(f"FASTLSTM_CUDA_{switch}")
    return plain


# Each thread walks its staging elements row by row (StageCursor: (row, index) stepped by 256
# without a division, a row's pointer, and in the backward its length, looked up once per row it
# enters) and the weight slices' loads likewise (a 16-byte vector of R per load where R allows);
# FASTLSTM_CUDA_STAGE_WALK=0 divides and looks up per element as before. The same elements reach
# the same places: the same bits, on every staging path. Rows per chunk against the 256
# threads: fewer (rows of 12 values, 9 vectors), exactly 256 / 16 / 64, more than 256 (300),
# with staging ahead (the walk starts at the second pass), tagged pairs, float64; weight slices
# of whole vectors, of units not a multiple of 4, with a last block past H, and one value per
# load (R taken as unaligned).
@pytest.mark.parametrize("B,H,sms,lengths,reverse,dtype", [
    (16, 300, 16, [2, 0, 1] + [2] * 13, True, np.float32),   # forward rows of 75 vectors, backward 300
    (33, 300, 16, [2, 0, 1] * 11, False, np.float32),        # chunks staged ahead: a backward chunk of 8 x 300
                                                             # vectors, the walk from the second pass
    (20, 9, 5, list(range(20)), True, np.float32),           # forward: 12 values, 9 valid; backward 9 vectors
    (5, 64, 4, [2, 1, 0, 2, 2], False, np.float32),          # 16 and 64 per row: 256 divides evenly
    (3, 256, 8, None, True, np.float32),                     # backward rows of exactly 256 vectors
    (6, 40, 4, [3, 1, 0, 2, 3, 3], True, np.float64),        # 2 doubles per vector: 20 / 80 per row
])
def test_emulated_persistent_staging_walk(emu, monkeypatch, B, H, sms, lengths, reverse, dtype):
    fwd, bwd, exchanges = _persistent_switch_case(emu, B, 4, H, sms, lengths, reverse, dtype, seed=B * H + 11)
    for exchange in exchanges:
        plain = _run_switched_off(monkeypatch, "STAGE_WALK", exchange, fwd, bwd,
                                  lambda d: "staging indexed per element" in d)
        # schedules 0 and 2; and the weight slices loaded one value at a time (R taken as unaligned)
        for mode, unaligned in ((0, False), (2, False), (0, True)):
            emu.set_schedule(mode, seed=B + H)
            emu.set_pretend_unaligned(unaligned)
            try:
                outs, grads, _ = run_cuda(fwd, bwd)
            finally:
                emu.set_pretend_unaligned(False)
            for kind in ("forward", "backward"):
                assert _ran(kind).startswith(f"persistent {kind}") and "indexed per element" not in _ran(kind), _ran(kind)
                assert ("tagged exchange" in _ran(kind)) == (exchange == "tagged"), _ran(kind)
            assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))
        emu.set_schedule(0)
        if B == 33 and exchange == "barrier":
            assert " 8 rows/chunk staged one chunk ahead" in _ran("backward"), _ran("backward")  # 2400 > 2048
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(dtype)])
    fcuda.set_kernel_path("auto")


# The barrier kernels stage rows of whole vectors by cp.async (every pass's copies issued before
# one wait; FASTLSTM_CUDA_STAGE_ASYNC=0 turns it off): the same bits as staging through
# registers. The emulator defers each thread's copies to its wait (a read of X before the wait
# and the barrier after it sees stale or NaN bytes) or, eager, lands them at once (a copy issued
# before the previous chunk's product finished reading X overwrites what it still reads).
@pytest.mark.parametrize("B,H,sms,lengths,reverse,dtype", [
    (16, 600, 160, [2, 0, 1] + [2] * 13, True, np.float32),  # forward 2 passes, backward 5
    (33, 600, 160, [2, 0, 1] * 11, True, np.float32),        # 3 chunks: first pass ahead, the rest cp.async
    (20, 9, 5, list(range(20)), True, np.float32),           # H % 4 != 0: the forward stages values
    (6, 40, 4, [3, 1, 0, 2, 3, 3], False, np.float64),
    (1, 70, 12, None, True, np.float32),
])
def test_emulated_persistent_staging_by_cp_async(emu, monkeypatch, B, H, sms, lengths, reverse, dtype):
    T = 3 if lengths is None else max(lengths)
    lengths = None if lengths is None else [min(v, T) for v in lengths]
    emu.set_device(sm_count=sms)
    fwd, bwd = make_case(T, B, 4, H, dtype, seed=B * H + 5, lengths=lengths, reverse=reverse)
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "barrier")
    monkeypatch.setenv("FASTLSTM_CUDA_STAGE_ASYNC", "0")
    plain = run_cuda(fwd, bwd)
    assert "cp.async" not in _ran("forward") and "cp.async" not in _ran("backward"), _ran("backward")
    monkeypatch.delenv("FASTLSTM_CUDA_STAGE_ASYNC")
    try:
        for mode, eager in ((0, False), (2, False), (3, False), (0, True), (2, True)):
            emu.set_schedule(mode, seed=B + H)
            emu.set_async_eager(eager)
            outs, grads, _ = run_cuda(fwd, bwd)
            assert ("staged by cp.async" in _ran("forward")) == (H % 4 == 0), _ran("forward")
            assert "staged by cp.async" in _ran("backward"), _ran("backward")
            assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))
    finally:
        emu.set_async_eager(False)
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(dtype)])
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "tagged")  # the tagged kernels poll with loads
    run_cuda(fwd, bwd)
    if dtype == np.float32:
        assert "cp.async" not in _ran("forward") and "cp.async" not in _ran("backward"), _ran("backward")
    # a card without cp.async (compute capability < 8.0: fl_cp_async16 traps there) stages
    # through registers: the same bits
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "barrier")
    emu.set_capability(7, 5)
    try:
        outs, grads, _ = run_cuda(fwd, bwd)
    finally:
        emu.set_capability(9, 0)
    assert "cp.async" not in _ran("forward") and "cp.async" not in _ran("backward"), _ran("backward")
    assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))
    fcuda.set_kernel_path("auto")


# The cp.async staging row by row (stage_elems, rows of >= 256 vectors) in the forward, which
# no other emulated case reaches (forward rows are H / KV vectors: H >= 1024 in float32, >= 512 in
# float64), and in float64 (double2 vectors): float64 H = 600 (300 vectors per forward row, 1200
# per backward row) at 20 rows: chunks of 16 and 4 rows (12 rows past nb), the first pass staged
# ahead, so e_begin = 2048 falls inside row 6 (6 x 300 = 1800); float32 H = 1024 at 3 rows (256
# vectors per row, a chunk of 4: one row past nb). Bitwise the staging through registers.
@pytest.mark.parametrize("B,H,sms,lengths,reverse,dtype", [
    (20, 600, 160, [2, 0, 1, 2] * 5, True, np.float64),
    (3, 1024, 160, [2, 0, 1], False, np.float32),
])
def test_emulated_persistent_row_by_row_cp_async_forward(emu, monkeypatch, B, H, sms, lengths, reverse, dtype):
    fwd, bwd, _ = _persistent_switch_case(emu, B, 3, H, sms, lengths, reverse, dtype, seed=B * H + 13)
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "barrier")
    monkeypatch.setenv("FASTLSTM_CUDA_STAGE_ASYNC", "0")
    plain = run_cuda(fwd, bwd)
    assert "cp.async" not in _ran("forward") and "cp.async" not in _ran("backward"), _ran("forward")
    monkeypatch.delenv("FASTLSTM_CUDA_STAGE_ASYNC")
    kv = 4 if dtype == np.float32 else 2
    try:
        for mode, eager in ((0, False), (2, True)):
            emu.set_schedule(mode, seed=B + H)
            emu.set_async_eager(eager)
            outs, grads, _ = run_cuda(fwd, bwd)
            desc = _ran("forward")
            # the row-by-row branch's condition: cp.async, walk (default) and rows of >= 256 vectors
            assert "staged by cp.async" in desc and "indexed per element" not in desc, desc
            assert -(-H // kv) >= 256, desc
            rows = int(desc.split(" rows/chunk")[0].rsplit(" ", 1)[1])
            assert B % rows != 0, desc  # the last chunk has rows past nb
            if B > rows:
                assert "staged one chunk ahead" in desc, desc
            assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))
    finally:
        emu.set_async_eager(False)
        emu.set_schedule(0)
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(dtype)])
    fcuda.set_kernel_path("auto")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_emulated_persistent_phase_trace(emu, monkeypatch, dtype):
    # FASTLSTM_CUDA_TRACE=1 runs the traced persistent kernels (bench/gpu_phase_profile.py
    # reads their description): the same bits as the untraced ones, and per-phase times that
    # add up. In the emulator a "cycle" is a nanosecond of the host's clock.
    emu.set_device(sm_count=5)
    fwd, bwd = make_case(3, 6, 5, 40, dtype, seed=11, lengths=[3, 1, 0, 2, 3, 3])
    fcuda.set_kernel_path("persistent")
    monkeypatch.delenv("FASTLSTM_CUDA_TRACE", raising=False)
    plain = run_cuda(fwd, bwd)
    assert " | trace: " not in _ran("forward") and " | trace: " not in _ran("backward")
    monkeypatch.setenv("FASTLSTM_CUDA_TRACE", "1")
    traced = run_cuda(fwd, bwd)
    assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(traced[0]) + tuple(traced[1]))
    for kind in ("forward", "backward"):
        ran = _ran(kind)
        assert ran.startswith(f"persistent {kind}"), ran
        tr = _trace_fields(ran)
        assert tr["steps"] == 3 and f"{tr['blocks']} blocks x 256 threads" in ran, ran
        for name in TRACE_PHASES + ("total", "kernel_us"):
            least, mean, most = tr[name]
            assert 0 <= least <= mean * (1 + 1e-9) and mean <= most * (1 + 1e-9), (name, ran)
        # every step stages and multiplies; the backward computes gate gradients; the forward has
        # none (its slot stays 0)
        assert tr["stage"][0] > 0 and tr["product"][0] > 0 and tr["reduce"][0] > 0 and tr["weights"][0] > 0, ran
        assert (tr["gates"][2] > 0) == (kind == "backward"), ran
        # total = the per-step phases; thread 0's whole time (weights + T steps) is the elapsed
        # time in ns, less what the clock reads in between miss (here cycles are ns: ghz ~ 1)
        per_step = sum(tr[n][1] for n in TRACE_PHASES if n != "weights")
        assert tr["total"][1] == pytest.approx(per_step, rel=0.01, abs=2), ran
        assert tr["kernel_us"][1] * 1e3 >= tr["total"][1] * tr["steps"] * 0.99, ran
        assert 0.5 < tr["ghz"] <= 1.0 + 1e-9, ran
    monkeypatch.setenv("FASTLSTM_CUDA_TRACE", "0")
    run_cuda(fwd, bwd)
    assert " | trace: " not in _ran("forward")
    fcuda.set_kernel_path("auto")


def test_emulated_phase_profile_script(emu, monkeypatch, tmp_path):
    # bench/gpu_phase_profile.py (run by bench/gpu_check.sh on a GPU) end to end on the emulator,
    # host arrays: it reads the traces, converts them and writes its table.
    spec = importlib.util.spec_from_file_location("_fastlstm_gpu_phase_profile", ROOT / "bench" / "gpu_phase_profile.py")
    prof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prof)
    monkeypatch.delenv("FASTLSTM_CUDA_TRACE", raising=False)
    monkeypatch.setattr(prof, "CONFIGS", [(2, 5, 3, 24)])
    monkeypatch.setitem(sys.modules, "cupy", None)  # (host arrays even where CuPy is installed)
    emu.set_device(sm_count=4)
    assert prof.main(["--out", str(tmp_path), "--reps", "1"]) == 0
    text = (tmp_path / "gpu_phase_profile.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 2, 5, 3, 24 |")]
    assert len(rows) == 2 and "| forward |" in rows[0] and "| backward |" in rows[1], text
    assert "blocks x 256 threads" in rows[0] and "trace: steps=2" in text, text
    assert "FASTLSTM_CUDA_TRACE" not in os.environ  # the script leaves the environment as it was
    with pytest.raises(SystemExit):
        prof.main(["--reps", "0"])
    with pytest.raises(SystemExit):
        prof.main(["--config", "2,5,3"])


# --------------------------------------------------------------------------- the GPU A/B scripts, dry

class _FakeTensor:
    """What bench/gpu_persistent_ab.py and bench/gpu_gemm_ab.py do with torch tensors, on host
    arrays (their data_ptr() is the emulator's device pointer): enough to run the scripts'
    measuring code end to end here, so that an error in it shows before a GPU session."""

    def __init__(self, a, alloc=None):
        self.a = np.asarray(a)
        self._alloc = alloc

    @classmethod
    def on_device(cls, a, alloc):
        """A copy of host array a in memory from alloc(nbytes) (an emulator Buffer: the emulator
        takes only its own allocations as device pointers)."""
        a = np.asarray(a)
        buf = alloc(max(a.nbytes, 1))
        view = np.frombuffer((ctypes.c_byte * max(a.nbytes, 1)).from_address(buf.ptr), a.dtype, a.size)
        view = view.reshape(a.shape)
        view[...] = a
        tensor = cls(view, alloc)
        tensor._buf = buf  # keeps the memory alive
        return tensor

    def t(self):
        return _FakeTensor(self.a.T, self._alloc)

    def contiguous(self):
        return self if self.a.flags.c_contiguous else _FakeTensor.on_device(self.a, self._alloc)

    def data_ptr(self):
        assert self.a.flags.c_contiguous, "data_ptr of a non-contiguous tensor"
        return self.a.ctypes.data

    def numel(self):
        return self.a.size

    def view(self, dtype):
        return _FakeTensor(self.a.view(dtype))

    def double(self):
        return _FakeTensor(self.a.astype(np.float64))

    def bfloat16(self):  # (no bf16 on the host: only cuBLAS's contender uses it)
        return _FakeTensor(self.a.astype(np.float32))

    def to(self, dtype):
        return _FakeTensor(self.a.astype(dtype))

    def norm(self):
        return _FakeTensor(np.linalg.norm(self.a))

    def detach(self):
        return self

    def requires_grad_(self, on):
        return self

    def backward(self, grad):
        assert grad.a.shape == self.a.shape

    def __float__(self):
        return float(self.a)

    def __matmul__(self, other):
        return _FakeTensor(self.a @ other.a)

    def __sub__(self, other):
        return _FakeTensor(self.a - other.a)

    def __truediv__(self, other):  # (a device tensor's quotient stays on the device)
        q = self.a / (other.a if isinstance(other, _FakeTensor) else other)
        return _FakeTensor.on_device(q, self._alloc) if self._alloc else _FakeTensor(q)


class _HostClockEvent:
    """torch.cuda.Event for the stand-ins below: timed by the host clock."""

    def __init__(self, enable_timing):
        assert enable_timing

    def record(self):
        import time
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def _fake_torch(alloc):
    """A stand-in for torch with CUDA: "device" tensors in memory from alloc(nbytes), CUDA events
    timed by the host clock, and an nn.LSTM that returns its input's shape (the scripts only time
    it)."""
    import types
    rng = np.random.default_rng(0)
    ns = types.SimpleNamespace

    def randn(*shape, device=None, generator=None, dtype=np.float32):
        assert device == "cuda", device
        return _FakeTensor.on_device((generator or rng).standard_normal(shape).astype(dtype), alloc)

    def empty(*shape, device=None):
        assert device == "cuda", device
        return _FakeTensor.on_device(np.full(shape, np.nan, np.float32), alloc)

    def zeros(*shape, device=None):
        assert device == "cuda", device
        return _FakeTensor.on_device(np.zeros(shape, np.float32), alloc)

    class LSTM:
        def __init__(self, I, H):
            self.H = H

        def cuda(self):
            return self

        def to(self, dtype):
            return self

        def __call__(self, x, state=None):
            T, B = x.a.shape[:2]
            return _FakeTensor(np.zeros((T, B, self.H), np.float32)), None

    def generator(device):
        assert device == "cuda", device
        return ns(manual_seed=lambda seed: np.random.default_rng(seed))

    return _fake_module(
        "torch", __version__="fake", float32=np.float32, bfloat16=np.float32, int32=np.int32,
        randn=randn, empty=empty, zeros=zeros, Generator=generator,
        matmul=lambda a, b: _FakeTensor(a.a @ b.a),
        equal=lambda a, b: bool(a.a.shape == b.a.shape and (a.a == b.a).all()),
        no_grad=contextlib.nullcontext, nn=ns(LSTM=LSTM),
        cuda=ns(Event=_HostClockEvent, synchronize=lambda: None, current_device=lambda: 0,
                get_device_name=lambda: "emulator"),
        backends=ns(cudnn=ns(allow_tf32=False, version=lambda: 0), cuda=ns(matmul=ns(allow_tf32=False))))


def _fake_cupy():
    return _fake_module("cupy", asarray=np.asarray, asnumpy=np.asarray, array_equal=np.array_equal,
                        uint32=np.uint32, int32=np.int32, ndarray=type("_NoDeviceArray", (), {}))


def _fake_module(name, **attrs):
    """A module object (with a spec: importlib.util.find_spec asks for one) holding attrs."""
    import importlib.machinery
    import types
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


def _bench_script(name):
    spec = importlib.util.spec_from_file_location(f"_fastlstm_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def dry_gpu_scripts(emu, monkeypatch):
    """bench/ importable, torch and CuPy replaced by the stand-ins above, fastlstm on the emulator."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(lambda nbytes: emu.Buffer(nbytes, 0)))
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    for name in ("FASTLSTM_CUDA_EXCHANGE", "FASTLSTM_CUDA_STAGE_AHEAD", "FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS",
                 "FASTLSTM_CUDA_INPUTS_AHEAD", "FASTLSTM_CUDA_STAGE_ASYNC", "FASTLSTM_CUDA_GEMM_SPLITK",
                 "FASTLSTM_CUDA_TRACE", "FASTLSTM_CUDA_STAGE_WALK", "FASTLSTM_CUDA_BLOCKED_PRODUCT"):
        monkeypatch.delenv(name, raising=False)
    emu.set_device(sm_count=4)
    yield emu
    assert not any(k in os.environ for k in ("FASTLSTM_CUDA_EXCHANGE", "FASTLSTM_CUDA_STAGE_AHEAD",
                                             "FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS", "FASTLSTM_CUDA_INPUTS_AHEAD",
                                             "FASTLSTM_CUDA_STAGE_ASYNC", "FASTLSTM_CUDA_GEMM_PIPELINE",
                                             "FASTLSTM_CUDA_GEMM_SPLITK", "FASTLSTM_CUDA_STAGE_WALK",
                                             "FASTLSTM_CUDA_BLOCKED_PRODUCT")), "a script left a switch set"


def test_emulated_persistent_ab_script(dry_gpu_scripts, monkeypatch, tmp_path, capsys):
    # bench/gpu_persistent_ab.py's measuring code (run by bench/gpu_check.sh on a GPU, where it
    # decides the pending switches) end to end on the emulator with torch and CuPy stood in for:
    # every contender it gates on a kernel description (weights in registers, gate inputs
    # prefetched, staged by cp.async, several chunks, tiled, tagged) must be timed, its bitwise
    # checks must pass, and bench/gpu_decide.py must read the files back.
    ab = _bench_script("gpu_persistent_ab")
    monkeypatch.setattr(ab, "CONFIGS", [(2, 1, 3, 24), (2, 8, 3, 24), (2, 40, 3, 16)])
    monkeypatch.setattr(ab, "SHORT_CONFIGS", [(1, 3, 24), (8, 5, 16)])
    monkeypatch.setattr(ab, "SHORT_STEPS", (1, 3))
    assert ab.main(["--out", str(tmp_path), "--reps", "1"]) == 0, capsys.readouterr().out
    data = json.loads((tmp_path / "gpu_persistent_ab.json").read_text())
    rows = data["rows"]
    assert [r["config"] for r in data["short"]] == [[1, 3, 24], [8, 5, 16]]
    for row in data["short"]:  # every T checked, then timed, and each path's line fitted
        assert [st["T"] for st in row["steps"]] == [1, 3], row
        for st in row["steps"]:
            assert st["max_rel_persistent_vs_simt"] <= 1e-5 and st["kernels_persistent"][0].startswith("persistent"), st
            assert all(0 < st[n][1] <= st[n][0] <= st[n][2] for n in ("persistent_fwd", "simt_fwd", "persistent_both",
                                                                        "simt_both")), st
        assert all(len(row[f"fit_{n}"]) == 2 for n in ("persistent_fwd", "simt_fwd", "persistent_both", "simt_both"))
    assert [r["config"] for r in rows] == [[2, 1, 3, 24], [2, 8, 3, 24], [2, 40, 3, 16]]
    one, eight, forty = rows
    for row in rows:
        assert row["max_rel_persistent_vs_simt"] <= 1e-5 and row["tagged_bitwise_barrier"], row
        assert row["load_switches_bitwise"], row
        for name in ("persistent", "simt", "cudnn", "tagged"):
            for kind in ("fwd", "both"):
                median, least, most = row[f"{name}_{kind}"]
                assert 0 < least <= median <= most, (name, kind, row)
    assert "wshared_fwd" in one and "wshared_both" in one, one  # one row per chunk: weights in registers
    assert "noprefetch_both" in one and "noprefetch_both" in eight, one
    assert "syncstage_fwd" in eight and "syncstage_both" in eight, eight  # from B = 8, staged by cp.async
    assert "syncstage_fwd" not in one, one
    assert "divstage_fwd" in eight and "divstage_both" in forty and "divstage_fwd" not in one, eight
    assert "noahead_fwd" in forty and "noahead_both" in forty and "noahead_fwd" not in eight, forty
    assert "tiled_fwd" in forty and forty["max_rel_tiled_vs_simt"] <= 1e-5, forty
    assert "tiled_fwd" not in eight, eight
    # forward C = 32 (H = 24: 8 units per block) / 16: sums in registers everywhere, the blocked product from B = 8
    assert all("unblocked_fwd" in r and "unblocked_both" in r for r in rows), rows
    md = (tmp_path / "gpu_persistent_ab.md").read_text()
    assert md.startswith("persistent vs simt vs tiled vs cuDNN fp32 on emulator") and "NOT TIMED" not in md, md
    decide = _bench_script("gpu_decide")
    capsys.readouterr()
    assert decide.main([str(tmp_path)]) == 0
    said = capsys.readouterr().out
    assert "MISMATCH" not in said and "defect" not in said.lower(), said
    assert "- [8, 5, 16] (B, I, H): T = 1 fwd " in said and "NOT timed" not in said, said


def test_emulated_gemm_ab_script(dry_gpu_scripts, monkeypatch, tmp_path, capsys):
    # bench/gpu_gemm_ab.py's measuring code end to end on the emulator (like the persistent A/B
    # script above): the GEMMs with the pipeline off / on (bitwise, then timed), the step
    # products with the fp32 k-per-slice sweep, split-K on / off, the LSTM in tf32 and bf16;
    # then bench/gpu_decide.py reads the file back into every section.
    emu = dry_gpu_scripts
    ab = _bench_script("gpu_gemm_ab")

    class Extension:  # fastlstm._cuda's matmul and step_matmul, on the emulator
        matmul = staticmethod(emu.matmul)

        @staticmethod
        def step_matmul(precision, M, N, K, a, sam, sak, b, sbk, sbn, c, c_elems, repeat, device, stream, kslice=0):
            return emu.step_matmul_api(precision, M, N, K, a, sam, sak, b, sbk, sbn, c, c_elems, repeat, kslice)

    monkeypatch.setattr(fastlstm, "_cuda", Extension, raising=False)
    monkeypatch.setattr(ab, "GEMMS", [("projection", 40, 64, 32, "nn"), ("dkernel", 32, 64, 40, "tn"),
                                      ("dx", 40, 32, 64, "nt")])
    monkeypatch.setattr(ab, "STEPS", [(8, 32, "fwd"), (8, 32, "bwd")])
    monkeypatch.setattr(ab, "STEP_REPEAT", 2)
    monkeypatch.setattr(ab, "SPLITS", [("dx", 8, 32, 512, "nt", "fp32"), ("dkernel", 32, 64, 256, "tn", "tf32"),
                                       ("dx", 8, 32, 512, "nt", "bf16")])
    monkeypatch.setattr(ab, "LSTMS", [(2, 8, 16, 32, "tf32"), (2, 8, 16, 32, "bf16")])
    assert ab.main(["--out", str(tmp_path), "--reps", "1"]) == 0, capsys.readouterr().out
    text = (tmp_path / "gpu_gemm_ab.md").read_text()
    data = json.loads(re.search(r"```json\n(.*)\n```", text, re.S).group(1))
    timed_ok = lambda row, key: 0 < row[key][1] <= row[key][0] <= row[key][2]  # noqa: E731
    assert [r["name"] for r in data["gemm"]] == ["projection", "dkernel", "dx"], data["gemm"]
    for row in data["gemm"]:  # every precision pipelined, bitwise the default, then timed
        for p in ("tf32", "tf32x3", "bf16"):
            assert row[f"{p}_bitwise_equal"] and "cp.async" in row[f"{p}_kernels"][1], (p, row)
            assert timed_ok(row, f"{p}_v1") and timed_ok(row, f"{p}_v2"), (p, row)
        assert row["tf32x3_err"] < 2e-6 and row["tf32_err"] < 5e-3 and row["bf16_err"] < 2e-2, row
        assert all(timed_ok(row, k) for k in ("fp32_simt", "cublas_tf32", "cublas_fp32", "cublas_bf16")), row
    fwd, bwd = data["step"]
    for row in (fwd, bwd):
        assert all(timed_ok(row, k) for k in ("tf32_v1", "tf32_v2", "bf16_v1", "tf32x3_v2", "fp32_tiled")), row
    assert bwd["fp32_kslices"] == [64] and timed_ok(bwd, "fp32_k64"), bwd  # the k-per-slice sweep
    for row in data["split"]:
        assert "k-slices" in row["kernel_on"] and "k-slices" not in row["kernel_off"], row
        assert all(timed_ok(row, k) for k in ("on", "off", "cublas")), row
    for row in data["lstm"]:
        assert row["bitwise_equal"] and "cp.async" in row["kernels_v2"][1], row
        assert all(timed_ok(row, k) for k in ("v1_fwd", "v2_fwd", "cudnn_fwd", "v1_both", "v2_both")), row
    decide = _bench_script("gpu_decide")
    capsys.readouterr()
    assert decide.main([str(tmp_path)]) == 0
    said = capsys.readouterr().out
    assert "gpu_gemm_ab.md: found" in said, said
    for section in ("## tc-gemm-v2", "## split-k-v1", "## tiled_plan's k per slice"):
        body = said.split(section, 1)[1].split("\n## ", 1)[0]
        assert "\n- " in body and "no timed rows" not in body, (section, said)


def _torch_as_if_cuda(torch):
    """Real (CPU) torch dressed as torch with CUDA: device "cuda" is the CPU, CUDA events are
    timed by the host clock, and the cuDNN switches are plain attributes (the real ones are
    left alone). torch.nn.LSTM and autograd are the real ones, so the benchmark's float64
    reference and its error checks are computed for real."""
    import types
    ns = types.SimpleNamespace

    def device(name):
        assert name == "cuda", name
        return torch.device("cpu")

    def randn(*shape, device=None):
        assert device == torch.device("cpu"), device  # (what device("cuda") gave)
        return torch.randn(*shape)

    module = _fake_module("torch (as if CUDA)", __version__=f"{torch.__version__} (CPU, as if CUDA)", device=device,
                          randn=randn,
                          cuda=ns(Event=_HostClockEvent, synchronize=lambda: None, is_available=lambda: True,
                                  empty_cache=lambda: None),
                          backends=ns(cudnn=ns(allow_tf32=False, version=lambda: 0, rnn=ns(fp32_precision="ieee")),
                                      cuda=ns(matmul=ns(allow_tf32=False))))
    module.__getattr__ = lambda name: getattr(torch, name)  # nn, autograd, no_grad, bfloat16, ...
    return module


def _cupy_of_cpu_tensors():
    """CuPy for _torch_as_if_cuda's tensors (given to the benchmark only: sys.modules keeps the
    real modules, which torch's own code imports): asarray copies a tensor into a NumPy array, which
    fastlstm's CUDA backend runs (on the emulator) through its host-array path."""
    import types
    pool = types.SimpleNamespace(free_all_blocks=lambda: None)
    return _fake_module("cupy", __version__="fake", asarray=lambda t: t.detach().numpy().copy(),
                        asnumpy=np.asarray, get_default_memory_pool=lambda: pool)


def test_emulated_gpu_bench(emu, monkeypatch, tmp_path, capsys):
    # python -m fastlstm.bench --device cuda (bench/gpu_check.sh's gpu_bench stage, the issue's
    # table of fastlstm against cuDNN) end to end on the emulator, with real CPU torch standing in
    # for torch with CUDA: every variant is checked against torch's float64 LSTM and timed, the
    # crossover table (tensor-core recurrence against persistent) and the tf32x3 table are
    # written, fastlstm.torch.LSTM (on the emulated CUDA kernels) is checked and timed, the JSON
    # is strict, and a wrong result is a MISMATCH with exit status 1.
    torch = pytest.importorskip("torch")
    import fastlstm.torch as ftorch
    from fastlstm import bench
    route = _emulated_cuda_route()
    monkeypatch.setattr(ftorch, "_route", lambda device: route)
    monkeypatch.setattr(bench, "_gpu_modules", lambda: (_torch_as_if_cuda(torch), _cupy_of_cpu_tensors()))
    emu.set_device(sm_count=4)
    # "tf32" forced onto the tensor-core recurrence (auto takes it only from B = 32, H = 1024),
    # so that its "_persistent" contender and the crossover table run too
    variants = tuple(("tf32", "tensor", "tf32") if v[0] == "tf32" else v for v in bench.GPU_VARIANTS)
    monkeypatch.setattr(bench, "GPU_VARIANTS", variants)
    argv = ["--device", "cuda", "--config", "3,2,5,8", "--config", "2,9,4,16", "--reps", "2", "--warmup", "1",
            "--out", str(tmp_path)]
    assert bench.main(argv) == 0, capsys.readouterr()
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert data["info"]["kernel_variant"] == "emulator" and "CPU emulator (sm_90, 4 SMs)" in data["header"], data["header"]
    assert [r["config"] for r in data["results"]] == [[3, 2, 5, 8], [2, 9, 4, 16]]
    for r in data["results"]:
        assert r["ok"] and "error" not in r, r
        assert "tf32x3_persistent_fwd" not in r, r  # (auto kept tf32x3 off the tensor path: no crossover)
        for name, _, precision in variants:
            if name == "tf32x3_persistent":
                continue
            # fp32 and tf32x3 within float32's accuracy of torch's float64 LSTM; tf32 / bf16 within
            # their sanity bounds (the tests above hold them to tighter ones)
            tol = (2e-6, 2e-5) if precision in ("fp32", "tf32x3") else bench.GPU_PREC_TOL[precision]
            assert r[f"{name}_err_fwd"] <= tol[0] and r[f"{name}_err_grad"] <= tol[1], (name, r)
            for mode in ("fwd", "fwdbwd"):
                assert r[f"{name}_{mode}"] > 0 and r[f"n_{name}_{mode}"] == 2, (name, mode, r)
        assert r["auto_kernels"][0].startswith("persistent forward"), r["auto_kernels"]
        assert r["simt_kernels"][1].startswith("simt backward"), r["simt_kernels"]
        assert r["tf32_kernels"][0].startswith("tensor-core"), r["tf32_kernels"]
        assert r["torch_module_err_fwd"] <= 2e-6 and r["torch_module_err_grad"] <= 2e-5, r
        assert r["torch_module_kernels"][0].startswith("persistent forward"), r["torch_module_kernels"]
        for mode in ("fwd", "fwdbwd"):
            assert r[f"torch_module_{mode}"] > 0 and r[f"n_torch_module_{mode}"] == 2, r
        for mode in bench.CUDNN_MODES:
            # torch's own float32 / bfloat16 LSTM against its float64 one: the benchmark's
            # reference is real
            assert 0 < r[f"cudnn_{mode}_err_fwd"] < (1e-5 if mode != "bf16" else 5e-2), (mode, r)
            assert r[f"cudnn_{mode}_fwd"] > 0 and r[f"cudnn_{mode}_fwdbwd"] > 0, (mode, r)
    md = (tmp_path / "gpu_bench.md").read_text()
    for heading in ("### forward (inference)", "### forward + backward",
                    "### tf32: the tensor-core recurrence (auto) against the persistent kernels",
                    "### tf32x3 (operands split", "### fastlstm.torch.LSTM (fp32",
                    "### errors against the float64 reference"):
        assert heading in md, (heading, md)
    assert "MISMATCH" not in md and md.count("| 3, 2, 5, 8 |") == 6, md
    # bench/gpu_decide.py reads the module's rows back (its overhead over fastlstm.ops)
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    capsys.readouterr()
    assert _bench_script("gpu_decide").main([str(tmp_path)]) == 0
    said = capsys.readouterr().out.split("## fastlstm.torch.LSTM on CUDA tensors", 1)[1]
    assert "- [3, 2, 5, 8] (T, B, I, H): overhead fwd " in said and "no timed rows" not in said, said
    assert "suggests: " in said, said
    # a wrong result is caught: a kernel that returns the fp64 reference's y scaled by 1.01
    real_forward = ops.lstm_forward

    def off_by_one_percent(*args, **kwargs):
        y, h_n, c_n, saved = real_forward(*args, **kwargs)
        return y * np.float32(1.01), h_n, c_n, saved

    monkeypatch.setattr(ops, "lstm_forward", off_by_one_percent)
    capsys.readouterr()
    assert bench.main(argv[:4] + ["--reps", "1", "--warmup", "0", "--out", str(tmp_path / "bad")]) == 1
    assert "| MISMATCH |" in (tmp_path / "bad" / "gpu_bench.md").read_text()


def test_emulated_gpu_bench_keeps_a_row_whose_torch_module_fails(emu, monkeypatch, tmp_path, capsys):
    # fastlstm.torch.LSTM on CUDA tensors had never run on a GPU: when it raises, the benchmark
    # row keeps fastlstm.ops' and cuDNN's measurements, records the module's error and fails
    # the run (exit status 1), instead of losing the whole configuration to one exception
    torch = pytest.importorskip("torch")
    import fastlstm.torch as ftorch
    from fastlstm import bench

    def refuse(device):
        raise RuntimeError("planted: the CUDA route refused")
    monkeypatch.setattr(ftorch, "_route", refuse)
    monkeypatch.setattr(bench, "_gpu_modules", lambda: (_torch_as_if_cuda(torch), _cupy_of_cpu_tensors()))
    emu.set_device(sm_count=4)
    argv = ["--device", "cuda", "--config", "3,2,5,8", "--reps", "1", "--warmup", "0", "--out", str(tmp_path)]
    assert bench.main(argv) == 1
    (r,) = json.loads((tmp_path / "gpu_bench.json").read_text())["results"]
    assert "error" not in r and not r["ok"], r
    assert r["torch_module_error"] == "RuntimeError: planted: the CUDA route refused", r
    assert r["auto_fwd"] > 0 and r["cudnn_fp32_fwd"] > 0 and r["cudnn_bf16_fwdbwd"] > 0, r
    assert "| 3, 2, 5, 8 | FAILED: RuntimeError: planted" in (tmp_path / "gpu_bench.md").read_text()


def test_emulated_sanitizer_case(dry_gpu_scripts, monkeypatch):
    # The small forward + backward case that bench/gpu_check.sh runs under compute-sanitizer on a
    # GPU (its every kernel path, precision, switch and the descriptions it asserts), run here on
    # the emulator, so that a wrong assertion in it cannot cost the GPU session its sanitizer stage.
    script = (ROOT / "bench" / "gpu_check.sh").read_text()
    case = script.split("cat >\"$CASE\" <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    assert "sanitizer case ok" in case
    dry_gpu_scripts.set_device(sm_count=132)  # an H100's SM count (the case's plans assume it)
    monkeypatch.setattr(fastlstm, "_cuda", dry_gpu_scripts, raising=False)
    monkeypatch.setenv("FASTLSTM_POISON", "1")
    exec(compile(case, "gpu_check.sh: sanitizer case", "exec"), {"__name__": "__main__"})


def test_emulated_auto_rule_on_steps(emu):
    # auto takes the persistent kernels from T = kPersistentAutoMinSteps (AUTO_PERSISTENT_MIN_STEPS)
    # and the per-step kernels below it, saying why; forced, the persistent kernels run at any T
    T = AUTO_PERSISTENT_MIN_STEPS
    fcuda.set_kernel_path("auto")
    fwd, bwd = make_case(T, 2, 3, 12, np.float32, seed=T)
    run_cuda(fwd, bwd)
    assert _ran("forward").startswith("persistent forward") and _ran("backward").startswith("persistent backward")
    if T > 1:  # (with 1, every call has enough steps)
        fwd, bwd = make_case(T - 1, 2, 3, 12, np.float32, seed=T)
        run_cuda(fwd, bwd)
        for kind in ("forward", "backward"):
            assert _ran(kind).startswith(f"simt {kind}") and f"auto: T = {T - 1} < {T} steps" in _ran(kind), _ran(kind)
        fcuda.set_kernel_path("persistent")
        run_cuda(fwd, bwd)
        assert _ran("forward").startswith("persistent forward")
    fcuda.set_kernel_path("auto")


def test_emulated_auto_falls_back_to_simt_and_says_why(emu):
    fwd, bwd = make_case(4, 3, 5, 40, np.float32, seed=3, lengths=[4, 1, 0], reverse=True)
    ref = run_cuda(fwd, bwd)
    assert _ran("forward").startswith("persistent forward")
    # shared memory too small for the weight slices
    emu.set_device(sm_count=4, smem_per_block_optin=4096, smem_per_sm=8192)
    got = run_cuda(fwd, bwd)
    assert _ran("forward").startswith("simt forward") and "do not fit" in _ran("forward")
    assert _ran("backward").startswith("simt backward") and "do not fit" in _ran("backward")
    for a, b in zip(tuple(ref[0]) + tuple(ref[1]), tuple(got[0]) + tuple(got[1])):
        if a is not None:
            assert rel_err(b, a) <= TOL[np.dtype(np.float32)]
    # forced, it says why it cannot run
    fcuda.set_kernel_path("persistent")
    with pytest.raises(RuntimeError, match="persistent forward kernel .* cannot run here: .*do not fit"):
        run_cuda(fwd, bwd)
    # no cooperative launches
    emu.set_device(sm_count=4, cooperative=False)
    with pytest.raises(RuntimeError, match="cooperative"):
        run_cuda(fwd, bwd)
    fcuda.set_kernel_path("auto")
    run_cuda(fwd, bwd)
    assert "cooperative" in _ran("forward") and _ran("forward").startswith("simt")


def test_kernel_path_setting_and_environment(emu, monkeypatch):
    fwd, bwd = make_case(3, 2, 4, 6, np.float64, seed=4)
    monkeypatch.setenv("FASTLSTM_CUDA_KERNEL", "simt")
    assert fcuda.kernel_path() == "simt" and fastlstm.cuda_info()["kernel_path"] == "simt"
    run_cuda(fwd, bwd)
    assert _ran("forward").startswith("simt forward (3 step launches, forced")
    with fcuda.use_kernel_path("persistent"):
        assert fcuda.kernel_path() == "persistent"
        run_cuda(fwd, bwd)
        assert _ran("forward").startswith("persistent forward (fp64")
        assert _ran("backward").startswith("persistent backward (fp64")
    assert fcuda.kernel_path() == "simt"
    monkeypatch.setenv("FASTLSTM_CUDA_KERNEL", "fast")
    with pytest.raises(ValueError, match="FASTLSTM_CUDA_KERNEL"):
        run_cuda(fwd, bwd)
    assert fastlstm.cuda_info()["kernel_path"].startswith("invalid")
    with pytest.raises(ValueError, match="kernel path"):
        fcuda.set_kernel_path("gpu")
    monkeypatch.delenv("FASTLSTM_CUDA_KERNEL")
    assert fcuda.kernel_path() == "auto"


@pytest.mark.parametrize("path", ["simt", "persistent"])
def test_emulated_training_false_and_no_leaks(emu, emu_lib, path):
    fcuda.set_kernel_path(path)
    emu_lib.fl_emu_live_allocations.restype = ctypes.c_int64
    before = emu_lib.fl_emu_live_allocations()
    fwd, bwd = make_case(5, 3, 4, 17, np.float32, seed=2, lengths=[5, 0, 2], reverse=True)
    y1, h1, c1, saved = ops.lstm_forward(**fwd, training=True, backend="cuda")
    y0, h0, c0, saved0 = ops.lstm_forward(**fwd, training=False, backend="cuda")
    assert saved0 is None and saved.backend == "cuda"
    for a, b in ((y0, y1), (h0, h1), (c0, c1)):
        np.testing.assert_array_equal(a, b)
    ops.lstm_backward(saved, **bwd)
    del saved
    import gc
    gc.collect()
    assert emu_lib.fl_emu_live_allocations() == before


@pytest.mark.parametrize("path", ["simt", "persistent"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_emulated_padding_semantics_and_nan_in_padding(emu, reverse, path):
    fcuda.set_kernel_path(path)
    T, B = 5, 6
    lengths = [0, 1, 5, 3, 0, 2]
    fwd, bwd = make_case(T, B, 7, 3, np.float32, seed=11, lengths=lengths, reverse=reverse)
    for b, L in enumerate(lengths):
        fwd["x"][L:, b] = np.nan  # padding: must not leak anywhere
    y, h_n, c_n, saved = ops.lstm_forward(**fwd, backend="cuda")
    grads = ops.lstm_backward(saved, **bwd)
    dx, dh0, dc0 = grads[:3]
    for name, a in zip(FWD_NAMES + BWD_NAMES, (y, h_n, c_n) + tuple(grads)):
        assert np.isfinite(a).all(), f"{name}: NaN from x at a padding position"
    for b, L in enumerate(lengths):
        assert np.all(y[L:, b] == 0) and np.all(dx[L:, b] == 0)
        if L == 0:
            np.testing.assert_array_equal(h_n[b], fwd["h0"][b])
            np.testing.assert_array_equal(c_n[b], fwd["c0"][b])
            np.testing.assert_array_equal(dh0[b], bwd["dh_n"][b])
            np.testing.assert_array_equal(dc0[b], bwd["dc_n"][b])
        else:
            np.testing.assert_array_equal(h_n[b], y[0 if reverse else L - 1, b])


@pytest.mark.parametrize("T,B,lengths", [(0, 3, None), (3, 0, None), (0, 0, None), (4, 3, [0, 0, 0])],
                         ids=["T0", "B0", "T0_B0", "all_lengths_0"])
@pytest.mark.parametrize("path", ["simt", "persistent"])
def test_emulated_empty_work(emu, T, B, lengths, path):
    fcuda.set_kernel_path(path)
    fwd, bwd = make_case(T, B, 4, 17, np.float64, seed=18, lengths=lengths, reverse=True)
    y, h_n, c_n, saved = ops.lstm_forward(**fwd, backend="cuda")
    assert y.shape == (T, B, 17) and np.all(y == 0)
    np.testing.assert_array_equal(h_n, fwd["h0"])
    np.testing.assert_array_equal(c_n, fwd["c0"])
    dx, dh0, dc0, dk, dr, db = ops.lstm_backward(saved, **bwd)
    assert dx.shape == (T, B, 4) and np.all(dx == 0)
    np.testing.assert_array_equal(dh0, bwd["dh_n"])
    np.testing.assert_array_equal(dc0, bwd["dc_n"])
    for g, shape in ((dk, (4, 68)), (dr, (17, 68)), (db, (68,))):
        assert g.shape == shape and np.all(g == 0)


def test_emulated_large_inputs_saturate(emu):
    fwd, _ = make_case(3, 2, 4, 3, np.float32, seed=17)
    fwd["x"] *= 1e3
    y, h_n, c_n, _ = ops.lstm_forward(**fwd, backend="cuda")
    ry, rh, rc, _ = reference.lstm_forward(**{k: (v.astype(np.float64) if isinstance(v, np.ndarray)
                                                  and v.dtype.kind == "f" else v)
                                              for k, v in fwd.items()})
    for a, b in ((y, ry), (h_n, rh), (c_n, rc)):
        assert np.isfinite(a).all() and np.max(np.abs(a - b)) <= 1e-4


def test_emulated_argument_errors_match_cpu(emu):
    fwd, bwd = make_case(4, 3, 5, 2, np.float64, seed=1)
    bad = {**fwd, "kernel": fwd["kernel"].astype(np.float32)}
    with pytest.raises(TypeError, match=r"(?<!recurrent_)\bkernel\b"):
        ops.lstm_forward(**bad, backend="cuda")
    with pytest.raises(ValueError, match=r"\bh0\b"):
        ops.lstm_forward(**{**fwd, "h0": np.zeros((4, 2))}, backend="cuda")
    with pytest.raises(ValueError, match=r"\blengths\b"):
        ops.lstm_forward(**{**fwd, "lengths": [4, 5, 0]}, backend="cuda")
    *_, saved = ops.lstm_forward(**fwd, backend="cuda")
    with pytest.raises(ValueError, match=r"\bdy\b"):
        ops.lstm_backward(saved, dy=np.zeros((4, 3, 3)))
    with pytest.raises(TypeError, match=r"\bdh_n\b"):
        ops.lstm_backward(saved, dy=None, dh_n=np.zeros((3, 2), np.float32))
    _, _, _, saved0 = ops.lstm_forward(**fwd, training=False, backend="cuda")
    with pytest.raises(ValueError, match="training"):
        ops.lstm_backward(saved0, **bwd)


def test_emulated_noncontiguous_inputs(emu):
    fwd, bwd = make_case(5, 3, 6, 17, np.float32, seed=12, lengths=[5, 2, 0], reverse=True)
    ref = run_cuda(fwd, bwd)
    strided = {k: (np.asfortranarray(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
               for k, v in fwd.items()}
    got = run_cuda(strided, {k: np.asfortranarray(v) for k, v in bwd.items()})
    assert_bitwise_equal(tuple(ref[0]) + tuple(ref[1]), tuple(got[0]) + tuple(got[1]))


def test_emulated_kernel_errors_become_runtime_errors(emu):
    # A direct call with a null required pointer: the C++ checks raise, nothing runs.
    with pytest.raises(RuntimeError, match=r"\bx\b.*required"):
        emu.forward("float32", (2, 1, 3, 4), 0, 0, 0, 0, 0, 0, 0, False, 0, 0, 0, 0, 0, 0, 0)


# --------------------------------------------------------------------------- fastlstm.torch on the CUDA kernels

# (num_layers, bidirectional, batch_first, input: "padded" / "packed" (unsorted lengths), hx given)
TORCH_MODULE_CONFIGS = [(1, False, False, "padded", False), (2, True, True, "packed", True)]
# Tolerances of fastlstm.torch.LSTM against torch.nn.LSTM in float64 (relative error of every
# output and gradient): float64 1e-10 and float32 1e-5, as tests/test_torch_lstm.py (two layers:
# the second layer's products see the first's rounding); tf32 5e-3 (tensor-core products with
# operands rounded to 10 bits, ~1e-3 after a few steps; a wrong term gives ~1e-1).
TORCH_MODULE_TOL = {("float64", "fp32"): 1e-10, ("float32", "fp32"): 1e-5, ("float32", "tf32"): 5e-3}


def _emulated_cuda_route():
    """fastlstm.torch's CPU route with the kernels' backend "cuda": on the emulator, CPU tensors
    stand in for CUDA tensors (NumPy views in, the CUDA backend's host-array path)."""
    import fastlstm.torch as ftorch

    class EmulatedCudaRoute(ftorch._HostRoute):
        backend = "cuda"
        packs = False

    return EmulatedCudaRoute()


def _torch_module_errors(torch, device, dtype, precision, config, seed=0):
    """fastlstm.torch.LSTM on `device` against torch.nn.LSTM in float64 on the CPU with the same
    weights, inputs and output weights of the loss: ({name: relative error} of the outputs and
    of the gradients of the input, h_0, c_0 and every parameter, fastlstm's output tensors)."""
    import fastlstm.torch as ftorch
    from torch.nn.utils.rnn import pack_padded_sequence
    num_layers, bidirectional, batch_first, mode, use_hx = config
    T, B, I, H = 5, 4, 6, 12
    D = 2 if bidirectional else 1
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(I, H, dtype=torch.float64, **kwargs)
    ours = ftorch.LSTM(I, H, dtype=dtype, precision=precision, **kwargs)
    ours.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    ours.to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=torch.float64)
    h0 = torch.randn(D * num_layers, B, H, generator=g, dtype=torch.float64) * 0.5
    c0 = torch.randn(D * num_layers, B, H, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4, 1])
    results = {}
    for name, model, to in (("ours", ours, lambda t: t.to(dtype).to(device)), ("ref", ref, lambda t: t)):
        leaves = [to(t).requires_grad_() for t in (x, h0, c0)]
        inp = leaves[0]
        if mode == "packed":
            inp = pack_padded_sequence(inp, lengths, batch_first=batch_first, enforce_sorted=False)
        out, (h_n, c_n) = model(inp, (leaves[1], leaves[2]) if use_hx else None)
        outs = (out.data if mode == "packed" else out, h_n, c_n)
        gw = torch.Generator().manual_seed(seed + 2)
        loss = sum((o * torch.randn(o.shape, generator=gw, dtype=torch.float64).to(o.dtype).to(o.device)).sum()
                   for o in outs)
        wrt = leaves[:1] + (leaves[1:] if use_hx else []) + list(model.parameters())
        results[name] = (outs, torch.autograd.grad(loss, wrt))
    names = ["y", "h_n", "c_n", "dx"] + (["dh0", "dc0"] if use_hx else []) + \
        ["d" + n for n, _ in ref.named_parameters()]
    ours_all = results["ours"][0] + results["ours"][1]
    ref_all = results["ref"][0] + results["ref"][1]
    errors = {}
    for n, a, b in zip(names, ours_all, ref_all):
        assert a.device == torch.device(device) and a.dtype == dtype and a.shape == b.shape, (n, a.device, a.dtype)
        errors[n] = rel_err(a.detach().cpu().double().numpy(), b.detach().numpy())
    return errors, results["ours"][0]


@pytest.mark.parametrize("config", TORCH_MODULE_CONFIGS, ids=["1layer", "2layers_bidir_packed_hx"])
@pytest.mark.parametrize("dtype_name, precision", [("float32", "fp32"), ("float64", "fp32"), ("float32", "tf32")])
def test_emulated_torch_module_on_the_cuda_kernels(emu, monkeypatch, config, dtype_name, precision):
    # fastlstm.torch.LSTM with its kernels' backend "cuda" (here the emulator through its
    # host-array path: CPU tensors stand in for CUDA tensors, so torch.nn.LSTM's CPU float64
    # results are the reference): forward, autograd's backward through the CUDA backend's saved
    # state, the weight layout and gradient mapping, precision passed through, inference calls
    # with the weight cache (which packs nothing off the CPU). The real CUDA route (DLPack views,
    # torch's stream and allocator) runs in test_gpu_torch_module_* on a GPU.
    torch = pytest.importorskip("torch")
    import fastlstm.torch as ftorch
    route = _emulated_cuda_route()
    monkeypatch.setattr(ftorch, "_route", lambda device: route)
    monkeypatch.setattr(ops, "pack_weights", None)  # (must not be called off the CPU)
    monkeypatch.setitem(fcuda._state, "last_forward", None)
    monkeypatch.setitem(fcuda._state, "last_backward", None)
    dtype = getattr(torch, dtype_name)
    errors, outs = _torch_module_errors(torch, "cpu", dtype, precision, config)
    tol = TORCH_MODULE_TOL[dtype_name, precision]
    assert max(errors.values()) <= tol, errors
    assert str(_ran("forward")).startswith(("simt forward", "persistent forward")), _ran("forward")
    assert str(_ran("backward")).startswith(("simt backward", "persistent backward")), _ran("backward")
    if precision == "tf32":
        assert "tensor cores" in _ran("backward") and max(errors.values()) > 1e-6, (_ran("backward"), errors)
    # inference (no gradient), cached and not: the training forward's outputs, bitwise
    num_layers, bidirectional, batch_first, mode, use_hx = config
    if mode == "padded":
        model = ftorch.LSTM(6, 12, dtype=dtype, precision=precision, **dict(
            num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first))
        x = torch.randn(5, 4, 6, dtype=dtype)
        trained = model(x)[0].detach().numpy()
        with torch.no_grad():
            plain = model(x)[0].numpy()
            model.cache_weights()
            cached = [model(x)[0].numpy() for _ in range(2)]
        for a in [plain] + cached:
            np.testing.assert_array_equal(a, trained)


def test_emulated_torch_module_cuda_route_glue(emu, monkeypatch):
    # fastlstm.torch's _CudaRoute itself (not a stand-in) on the emulator: CuPy replaced by a
    # recording stand-in whose from_dlpack is NumPy's (so CPU tensors come in as NumPy views and
    # the CUDA backend takes its host-array path), torch.cuda.current_stream by a fake stream.
    # Checks the route's own code: every scope enters the device, torch's stream (through the
    # stream protocol, or ExternalStream where that is refused) and the allocator; results and
    # gradients as torch.nn.LSTM's float64 ones; the allocator hands out torch memory that the
    # CuPy memory keeps alive. What CuPy and torch do with real device memory is for the GPU tests.
    torch = pytest.importorskip("torch")
    import types
    import fastlstm.torch as ftorch
    entered = []

    class Ctx:
        def __init__(self, *what):
            self.what = what

        def __enter__(self):
            entered.append(self.what)

        def __exit__(self, *exc):
            return False

    class FakeStream:
        cuda_stream = 1234

        def __cuda_stream__(self):
            return (0, self.cuda_stream)

    refuse_protocol = []

    def from_external(obj):
        if refuse_protocol:
            raise TypeError("protocol version")
        return Ctx("stream", obj.__cuda_stream__()[1])

    def external_stream(ptr, device_id):
        import warnings
        warnings.warn("ExternalStream is deprecated", DeprecationWarning)
        return Ctx("external stream", ptr, device_id)

    ns = types.SimpleNamespace

    class Capsule:
        def __init__(self, capsule):
            self.capsule = capsule

        def __dlpack__(self, **kwargs):
            return self.capsule

        def __dlpack_device__(self):
            return (1, 0)

    def from_dlpack(capsule):
        # the route hands CuPy raw capsules (taken with stream=-1), so that CuPy negotiates no
        # stream (with an object, CuPy passes its default stream, which torch may refuse)
        assert type(capsule).__name__ == "PyCapsule", type(capsule)
        return np.from_dlpack(Capsule(capsule))

    fake_cp = _fake_module(
        "cupy", from_dlpack=from_dlpack,
        cuda=ns(Device=lambda index: Ctx("device", index), Stream=ns(from_external=from_external),
                ExternalStream=external_stream, using_allocator=lambda f: Ctx("allocator", f.__func__.__name__),
                UnownedMemory=lambda ptr, size, owner, device_id: ns(ptr=ptr, size=size, owner=owner,
                                                                     device_id=device_id),
                MemoryPointer=lambda mem, offset: ns(mem=mem, offset=offset)))
    monkeypatch.setitem(sys.modules, "cupy", fake_cp)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: FakeStream())
    monkeypatch.setattr(ftorch, "_route", lambda device: ftorch._CudaRoute(device))
    for refuse in (False, True):
        refuse_protocol[:] = [True] if refuse else []
        entered.clear()
        errors, outs = _torch_module_errors(torch, "cpu", torch.float32, "fp32", TORCH_MODULE_CONFIGS[1])
        assert max(errors.values()) <= TORCH_MODULE_TOL["float32", "fp32"], errors
        assert str(_ran("forward")).startswith(("simt forward", "persistent forward")), _ran("forward")
        stream = ("external stream", 1234, None) if refuse else ("stream", 1234)
        # 2 layers x 2 directions, forward and backward: 8 scopes, each device, stream, allocator
        assert entered == [("device", None), stream, ("allocator", "_allocate")] * 8, entered
    route = ftorch._CudaRoute(torch.device("cpu"))
    pointer = route._allocate(10)
    assert pointer.offset == 0 and pointer.mem.size == 10 and pointer.mem.ptr == pointer.mem.owner.data_ptr()
    assert pointer.mem.owner.dtype == torch.uint8 and pointer.mem.owner.numel() == 10
    assert route._allocate(0).mem.owner.numel() == 1
    # a result in memory from _allocate comes back as a view of that byte tensor (memory of
    # torch's caching allocator, where record_stream works), anything else through DLPack
    owner = route._allocate(6 * 4).mem.owner
    result = ns(data=ns(ptr=owner.data_ptr()), flags=ns(c_contiguous=True), nbytes=24,
                dtype=np.dtype(np.float32), shape=(2, 3))
    t = route.tensor(result)
    assert t.dtype == torch.float32 and t.shape == (2, 3) and t.data_ptr() == owner.data_ptr()
    assert t.untyped_storage().data_ptr() == owner.untyped_storage().data_ptr()
    assert route.tensor(result, transpose=True).shape == (3, 2)
    assert route.tensor(result, copy=True).data_ptr() != owner.data_ptr()
    plain = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(route.tensor(plain).numpy(), plain)
    del owner, t, result, pointer
    import gc
    gc.collect()
    assert len(route._owners) == 0  # (weak: the route keeps no allocation alive)
    # no CuPy: a clear error naming the extra
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match=r'CuPy is not installed: pip install "fastlstm\[cuda\]"'):
        ftorch._CudaRoute(torch.device("cpu"))


def test_torch_module_cached_weights_follow_streams(monkeypatch):
    # cache_weights() on CUDA from several streams (_CudaRoute.adopt, through the module's
    # cache, on stand-ins: CPU tensors, fake streams): the first call makes the copies on its
    # stream; a call on another stream makes that stream wait for the first and marks the
    # copies' memory as used there (record_stream), once per stream; a refresh starts over.
    torch = pytest.importorskip("torch")
    import fastlstm.torch as ftorch
    waits, records = [], []

    class FakeStream:
        def __init__(self, sid):
            self.sid = sid

        def __eq__(self, other):
            return isinstance(other, FakeStream) and other.sid == self.sid

        __hash__ = None

        def wait_stream(self, other):
            waits.append((self.sid, other.sid))

    current = [FakeStream(1)]
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: current[0])
    monkeypatch.setattr(ftorch._CudaRoute, "_record_stream",
                        staticmethod(lambda t, stream: records.append((t.data_ptr(), stream.sid))))
    route = ftorch._CudaRoute.__new__(ftorch._CudaRoute)   # (no CuPy: array() stubbed below)
    route.device = torch.device("cpu")
    monkeypatch.setattr(ftorch._CudaRoute, "array", lambda self, t: None if t is None else t.numpy())
    H = 3
    weights = [torch.randn(4 * H, 2), torch.randn(4 * H, H), torch.randn(4 * H), torch.randn(4 * H)]
    cache = {}

    def use(sid):
        current[0] = FakeStream(sid)
        return ftorch._inference_weights(route, weights, cache, 0)

    kernel, recurrent, bias, packed = use(1)
    np.testing.assert_array_equal(kernel, weights[0].numpy().T)
    np.testing.assert_array_equal(bias, (weights[2] + weights[3]).numpy())
    owners = cache[0][6]
    assert len(owners) == 3 and owners[0].data_ptr() == kernel.__array_interface__["data"][0]
    assert use(1)[0] is kernel and waits == [] and records == []          # the making stream
    use(2)
    assert waits == [(2, 1)] and records == [(t.data_ptr(), 2) for t in owners]
    use(2), use(1)
    assert len(waits) == 1 and len(records) == 3                          # once per stream
    use(3)
    assert waits[-1] == (3, 1) and records[-3:] == [(t.data_ptr(), 3) for t in owners]
    with torch.no_grad():
        weights[1].add_(1.0)                                              # a tracked change
    waits.clear(), records.clear()
    new_kernel = use(3)[0]
    assert new_kernel is not kernel and cache[0][7]["made"] == FakeStream(3)
    assert waits == [] and records == []                                  # made on stream 3
    use(1)
    assert waits == [(1, 3)] and [r[1] for r in records] == [1, 1, 1]
    # copies, never views of the parameters (a transpose with a dimension of 1 is already
    # contiguous: contiguous() alone would give the parameter's own memory)
    thin = [torch.randn(4, 1), torch.randn(4, 1), None, None]
    owned = []
    route.transposed(thin[0], owned), route.transposed(thin[1], owned)
    assert all(o.data_ptr() != w.data_ptr() for o, w in zip(owned, thin[:2]))
    np.testing.assert_array_equal(owned[0].numpy(), thin[0].numpy().T)
    # the host route keeps nothing and waits for nothing
    cpu_cache = {}
    ftorch._inference_weights(ftorch._HOST, weights, cpu_cache, 0)
    assert cpu_cache[0][6] == () and cpu_cache[0][7] == {}


# --------------------------------------------------------------------------- GPU

def _skip_reason():
    info = fastlstm.cuda_info()
    return info["reason"] or "CUDA not available"


gpu = pytest.mark.skipif(not fastlstm.cuda_available(), reason=f"no usable CUDA GPU: {_skip_reason()}")


@pytest.fixture
def kernel_path_reset():
    yield
    fcuda.set_kernel_path(None)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("path", ["simt", "persistent"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES) + list(BIG_CASES))
def test_gpu_matches_reference(name, dtype, path, kernel_path_reset):
    spec = {**CASES, **BIG_CASES}[name]
    fcuda.set_kernel_path(path)
    try:
        first = run_and_check(name, spec, dtype)
    except RuntimeError as e:
        if path == "persistent" and "cannot run here" in str(e):
            pytest.skip(str(e))  # e.g. H = 1024 in float64: the weights do not fit on chip
        raise
    if spec["T"] > 0 and spec["B"] > 0:
        assert _ran("forward").startswith(f"{path} forward"), _ran("forward")
        assert _ran("backward").startswith(f"{path} backward"), _ran("backward")
    second = run_and_check(name, spec, dtype)
    # deterministic: the same inputs give bitwise the same outputs and gradients
    assert_bitwise_equal(tuple(first[0]) + tuple(first[1]), tuple(second[0]) + tuple(second[1]))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("T,B,I,H", [(7, 1, 64, 256), (5, 16, 32, 512), (4, 3, 16, 1024), (3, 33, 8, 1024),
                                     (6, 70, 24, 96)])
def test_gpu_persistent_and_simt_agree_and_auto_picks_by_batch(T, B, I, H, kernel_path_reset):
    fwd, bwd = make_case(T, B, I, H, np.float32, seed=T * B + H, lengths=None, reverse=B % 2 == 1)
    results = {}
    for path in ("simt", "persistent", "auto"):
        fcuda.set_kernel_path(path)
        outs, grads, _ = run_cuda(fwd, bwd)
        results[path] = tuple(outs) + tuple(grads)
        results[path + "_ran"] = (_ran("forward"), _ran("backward"))
    info = fastlstm.cuda_info()
    if B > AUTO_PERSISTENT_MAX_ROWS:  # auto: the per-step kernels (faster there, measured)
        assert results["auto_ran"][0].startswith("simt forward") and "auto: B = " in results["auto_ran"][0]
        assert results["auto_ran"][1].startswith("simt backward") and "auto: B = " in results["auto_ran"][1]
        assert_bitwise_equal(results["auto"], results["simt"])
    elif info["sm_count"] >= 100 and H <= 1024:  # an H100-class card: the weights fit on chip
        assert results["auto_ran"][0].startswith("persistent forward"), results["auto_ran"]
        assert results["auto_ran"][1].startswith("persistent backward"), results["auto_ran"]
    if results["auto_ran"][0].startswith("persistent"):
        assert_bitwise_equal(results["auto"][:3], results["persistent"][:3])
    tol = TOL[np.dtype(np.float32)]
    for name_, a, b in zip(FWD_NAMES + BWD_NAMES, results["simt"], results["persistent"]):
        if a is not None:
            assert rel_err(b, a) <= 2 * tol, f"{name_}: persistent vs simt {rel_err(b, a):.3g}"
    check_against_reference(fwd, bwd, results["persistent"][:3], results["persistent"][3:], tol)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("name", [n for n in {**CASES, **BIG_CASES}
                                  if {**CASES, **BIG_CASES}[n]["T"] > 0 and {**CASES, **BIG_CASES}[n]["B"] > 0])
def test_gpu_persistent_tagged_exchange_is_bitwise_the_barrier(name, monkeypatch, kernel_path_reset):
    # FASTLSTM_CUDA_EXCHANGE=tagged (h_s / dz_s through tagged words instead of grid barriers):
    # the same arithmetic, so the barrier kernels' bits, run after run, and within the fp32
    # tolerance of the float64 reference. On the card this is where the memory model is real
    # (relaxed 64-bit stores and polls at GPU scope, no fences).
    spec = {**CASES, **BIG_CASES}[name]
    fwd, bwd = make_case(dtype=np.float32, seed=zlib.crc32(name.encode()), **spec)
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "barrier")
    try:
        outs, grads, _ = run_cuda(fwd, bwd)
    except RuntimeError as e:
        if "cannot run here" in str(e):
            pytest.skip(str(e))
        raise
    barrier = tuple(outs) + tuple(grads)
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "tagged")
    for _ in range(3):
        outs, grads, _ = run_cuda(fwd, bwd)
        for kind in ("forward", "backward"):
            assert _ran(kind).startswith(f"persistent {kind}") and "tagged exchange" in _ran(kind), _ran(kind)
        assert_bitwise_equal(barrier, tuple(outs) + tuple(grads))
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(np.float32)])


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("T,B,I,H", [(50, 1, 64, 256), (20, 16, 32, 512), (10, 4, 16, 1024), (8, 40, 24, 200)])
def test_gpu_persistent_tagged_exchange_long_runs(T, B, I, H, monkeypatch, kernel_path_reset):
    # More steps (each slot reused many times), several batch chunks (B = 40), H = 1024 over
    # every SM; bitwise the barrier kernels, repeated, alternating two inputs of the same shapes
    # (a word taken before its tag matched, a slot overwritten early, or an exchange buffer not
    # zeroed before a launch, whose pooled memory then holds the other input's words with the
    # same tags, would show as a difference in some run).
    cases = [make_case(T, B, I, H, np.float32, seed=T + B + H + i, lengths=None, reverse=B % 2 == 0)
             for i in range(2)]
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "barrier")
    barrier = []
    for fwd, bwd in cases:
        outs, grads, _ = run_cuda(fwd, bwd)
        barrier.append(tuple(outs) + tuple(grads))
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "tagged")
    for i in range(6):
        outs, grads, _ = run_cuda(*cases[i % 2])
        assert "tagged exchange" in _ran("forward") and "tagged exchange" in _ran("backward")
        assert_bitwise_equal(barrier[i % 2], tuple(outs) + tuple(grads))


# The product blocked two columns x BC / 2 rows per thread (block_product_blocked: chunks of
# BC >= 8 rows, blocks of C >= 16 columns) sums the same k groups in the same order into the same
# partial sums as block_product, and with C >= 16 the partial sums are added in registers
# (block_reduce_registers), in the shared-memory tree's order; FASTLSTM_CUDA_BLOCKED_PRODUCT=0
# turns both off. The same bits. B = 3 (4 rows per chunk) and B = 1 (one row, weights in
# registers) take the sums added per thread without the blocked product.
# Forward C = 4U, backward C = U: H = 64 on 4 SMs gives U = 16 (C = 64 / 16, 16 rows per chunk);
# H = 40 on 2 SMs U = 32 (C = 128 / 32, 8 rows per chunk, the last block's units past H), and
# H = 40 on 4 SMs U = 16 (three blocks, the last one's units past H); 9 rows (a chunk with 7 zero
# rows), 33 rows (three chunks, staged ahead), lengths, reverse, tagged, float64.
@pytest.mark.parametrize("B,H,sms,lengths,reverse,dtype", [
    (16, 64, 4, None, False, np.float32),
    (9, 40, 2, [3, 1, 0, 2, 3, 3, 2, 1, 3], True, np.float32),
    (33, 64, 4, [2, 0, 1] * 11, False, np.float32),
    (16, 40, 4, None, True, np.float32),
    (12, 64, 4, [3, 2, 1, 0] * 3, True, np.float64),
    (3, 64, 4, [3, 1, 2], False, np.float32),
    (1, 64, 4, None, True, np.float32),
    (16, 64, 8, [3, 1, 0, 2] * 4, False, np.float32),   # U = 8: forward C = 32 at 16 rows per chunk
    (8, 64, 16, [2, 3, 0, 1, 3, 3, 1, 2], True, np.float32),  # U = 4: forward C = 16 at 8 rows per chunk
])
def test_emulated_persistent_blocked_product(emu, monkeypatch, B, H, sms, lengths, reverse, dtype):
    fwd, bwd, exchanges = _persistent_switch_case(emu, B, 5, H, sms, lengths, reverse, dtype, seed=B * H + 7)
    for exchange in exchanges:
        plain = _run_switched_off(monkeypatch, "BLOCKED_PRODUCT", exchange, fwd, bwd,
                                  lambda d: "product 2 columns" not in d and "sums added per thread" not in d)
        emu.set_schedule(2, seed=B + H)
        try:
            outs, grads, _ = run_cuda(fwd, bwd)
        finally:
            emu.set_schedule(0)
        for kind in ("forward", "backward"):
            desc = _ran(kind)
            units = int(desc.split(" units/block")[0].rsplit(" ", 1)[1])
            rows = int(desc.split(" rows/chunk")[0].rsplit(" ", 1)[1])
            cols = units if kind == "backward" else 4 * units
            blocked = rows >= 8 and cols >= 16 and "weights in registers" not in desc
            assert (f"product 2 columns x {rows // 2} rows per thread" in desc) == blocked, desc
            assert ("sums added per thread" in desc) == (cols >= 16), desc
        assert "sums added per thread" in _ran("forward"), _ran("forward")  # every case's forward: C >= 16
        assert ("product 2 columns" in _ran("forward")) == (B > 4), _ran("forward")
        assert_bitwise_equal(tuple(plain[0]) + tuple(plain[1]), tuple(outs) + tuple(grads))
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(dtype)])


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("T,B,I,H", [(50, 1, 64, 1024), (50, 1, 32, 256), (20, 16, 32, 512), (10, 33, 16, 1024)])
def test_gpu_persistent_load_changes_are_bitwise_off(T, B, I, H, monkeypatch, kernel_path_reset):
    # The weights in registers (B = 1), the backward's gate inputs loaded a step early
    # (B * U <= 256), the staging by cp.async (barrier kernels), the staging elements walked
    # row by row and the blocked product (B = 16 / 33) change no arithmetic: the bits of the
    # kernels with all five switched off, with
    # grid barriers and with the tagged exchange, repeated (the registers are loaded once per
    # launch; the prefetched inputs are a step ahead, so a wrong step shows at once; B = 16 / 33
    # stage in several passes).
    fwd, bwd = make_case(T, B, I, H, np.float32, seed=T + B + H, lengths=None, reverse=B % 2 == 1)
    fcuda.set_kernel_path("persistent")
    monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", "barrier")
    monkeypatch.setenv("FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS", "0")
    monkeypatch.setenv("FASTLSTM_CUDA_INPUTS_AHEAD", "0")
    monkeypatch.setenv("FASTLSTM_CUDA_STAGE_ASYNC", "0")
    monkeypatch.setenv("FASTLSTM_CUDA_STAGE_WALK", "0")
    monkeypatch.setenv("FASTLSTM_CUDA_BLOCKED_PRODUCT", "0")
    outs, grads, _ = run_cuda(fwd, bwd)
    off = tuple(outs) + tuple(grads)
    assert "registers" not in _ran("forward") and "prefetched" not in _ran("backward"), _ran("backward")
    assert "cp.async" not in _ran("backward") and "indexed per element" in _ran("backward"), _ran("backward")
    assert "product 2 columns" not in _ran("forward") and "sums added per thread" not in _ran("forward"), _ran("forward")
    for name in ("WEIGHTS_IN_REGISTERS", "INPUTS_AHEAD", "STAGE_ASYNC", "STAGE_WALK", "BLOCKED_PRODUCT"):
        monkeypatch.delenv(f"FASTLSTM_CUDA_{name}")
    for exchange in ("barrier", "tagged", "barrier", "tagged"):
        monkeypatch.setenv("FASTLSTM_CUDA_EXCHANGE", exchange)
        outs, grads, _ = run_cuda(fwd, bwd)
        for kind in ("forward", "backward"):
            units = int(_ran(kind).split(" units/block")[0].rsplit(" ", 1)[1])
            rows = int(_ran(kind).split(" rows/chunk")[0].rsplit(" ", 1)[1])  # 1 at B = 1 (or tight smem)
            cols, groups = (units, H) if kind == "backward" else (4 * units, -(-H // 4))
            per_thread = -(-groups // (256 // cols))  # weight vectors per thread (kRegVectors = 32)
            assert ("weights in registers" in _ran(kind)) == (rows == 1 and per_thread <= 32), _ran(kind)
            assert ("product 2 columns" in _ran(kind)) == (rows >= 8 and cols >= 16), _ran(kind)
            assert ("sums added per thread" in _ran(kind)) == (cols >= 16), _ran(kind)
        assert ("gate inputs prefetched" in _ran("backward")) == (B * units <= 256), _ran("backward")
        assert ("staged by cp.async" in _ran("backward")) == (exchange == "barrier"), _ran("backward")
        assert_bitwise_equal(off, tuple(outs) + tuple(grads))
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(np.float32)])


@pytest.mark.cuda
@gpu
def test_gpu_info():
    info = fastlstm.cuda_info()
    assert info["available"] and info["device_count"] >= 1
    assert isinstance(info["name"], str) and info["name"]
    assert len(info["capability"]) == 2 and info["capability"][0] >= 5
    assert info["sm_count"] > 0 and info["total_memory"] > 0


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gpu_padding_semantics_and_nan_in_padding(reverse):
    T, B = 5, 6
    lengths = [0, 1, 5, 3, 0, 2]
    fwd, bwd = make_case(T, B, 7, 3, np.float32, seed=11, lengths=lengths, reverse=reverse)
    for b, L in enumerate(lengths):
        fwd["x"][L:, b] = np.nan
    y, h_n, c_n, saved = ops.lstm_forward(**fwd, backend="cuda")
    grads = ops.lstm_backward(saved, **bwd)
    for name, a in zip(FWD_NAMES + BWD_NAMES, (y, h_n, c_n) + tuple(grads)):
        assert np.isfinite(a).all(), f"{name}: NaN from x at a padding position"
    for b, L in enumerate(lengths):
        assert np.all(y[L:, b] == 0) and np.all(grads[0][L:, b] == 0)
        if L == 0:
            np.testing.assert_array_equal(h_n[b], fwd["h0"][b])
            np.testing.assert_array_equal(grads[1][b], bwd["dh_n"][b])


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("T,B,lengths", [(0, 3, None), (3, 0, None), (4, 3, [0, 0, 0])],
                         ids=["T0", "B0", "all_lengths_0"])
def test_gpu_empty_work(T, B, lengths):
    fwd, bwd = make_case(T, B, 4, 17, np.float32, seed=18, lengths=lengths)
    y, h_n, c_n, saved = ops.lstm_forward(**fwd, backend="cuda")
    assert y.shape == (T, B, 17) and np.all(y == 0)
    np.testing.assert_array_equal(h_n, fwd["h0"])
    dx, dh0, dc0, dk, dr, db = ops.lstm_backward(saved, **bwd)
    assert np.all(dx == 0) and np.all(dk == 0) and np.all(dr == 0) and np.all(db == 0)
    np.testing.assert_array_equal(dc0, bwd["dc_n"])


@pytest.mark.cuda
@gpu
def test_gpu_training_false_matches_training_true():
    fwd, _ = make_case(5, 3, 4, 17, np.float32, seed=2, lengths=[5, 0, 2], reverse=True)
    a = ops.lstm_forward(**fwd, training=True, backend="cuda")
    b = ops.lstm_forward(**fwd, training=False, backend="cuda")
    assert b[3] is None
    assert_bitwise_equal(a[:3], b[:3])


@pytest.mark.cuda
@gpu
def test_gpu_matches_cpu_backend_closely():
    fwd, bwd = make_case(7, 5, 9, 40, np.float64, seed=21, lengths=[7, 3, 0, 6, 1], reverse=True)
    outs, grads, _ = run_cuda(fwd, bwd)
    y, h_n, c_n, saved = ops.lstm_forward(**fwd, backend="cpu")
    cgrads = ops.lstm_backward(saved, **bwd)
    for a, b in zip(tuple(outs) + tuple(grads), (y, h_n, c_n) + tuple(cgrads)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("device_arrays", [False, True], ids=["numpy", "cupy"])
def test_gpu_batch_first_same_bits_as_time_major(device_arrays):
    # ops transposes copies for the CUDA kernels (time-major only): the same bits both ways
    fwd, bwd = make_case(6, 5, 11, 33, np.float32, seed=8, lengths=[6, 0, 3, 1, 6], reverse=True)
    xp = _cupy_or_skip() if device_arrays else np
    move = lambda a: xp.asarray(a) if isinstance(a, np.ndarray) else a  # noqa: E731
    swap = lambda a: xp.ascontiguousarray(a.transpose(1, 0, 2))  # noqa: E731
    dfwd = {k: (v if k == "lengths" else move(v)) for k, v in fwd.items()}
    dbwd = {k: move(v) for k, v in bwd.items()}
    y, h_n, c_n, saved = ops.lstm_forward(**dfwd, backend="cuda")
    grads = ops.lstm_backward(saved, **dbwd)
    yb, hb, cb, savedb = ops.lstm_forward(**dict(dfwd, x=swap(dfwd["x"])), backend="cuda",
                                          batch_first=True)
    gradsb = ops.lstm_backward(savedb, **dict(dbwd, dy=swap(dbwd["dy"])))
    assert yb.shape == (5, 6, 33) and gradsb[0].shape == (5, 6, 11)
    assert_bitwise_equal((y, h_n, c_n) + tuple(grads),
                         (swap(yb), hb, cb, swap(gradsb[0])) + tuple(gradsb[1:]))


def _cupy_or_skip():
    return pytest.importorskip("cupy", reason="CuPy is not installed")


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gpu_cupy_inputs_give_cupy_outputs(dtype):
    cp = _cupy_or_skip()
    fwd, bwd = make_case(6, 5, 11, 33, dtype, seed=5, lengths=[6, 0, 3, 1, 6], reverse=True)
    dfwd = {k: (cp.asarray(v) if isinstance(v, np.ndarray) and k != "lengths" else v)
            for k, v in fwd.items()}
    dfwd["lengths"] = cp.asarray(fwd["lengths"])
    dbwd = {k: cp.asarray(v) for k, v in bwd.items()}
    y, h_n, c_n, saved = ops.lstm_forward(**dfwd, backend="cuda")
    grads = ops.lstm_backward(saved, **dbwd)
    for a in (y, h_n, c_n) + tuple(grads):
        assert isinstance(a, cp.ndarray)
    check_against_reference(fwd, bwd, (y, h_n, c_n), grads, TOL[np.dtype(dtype)])
    # the same bits as the NumPy path
    outs, hgrads, _ = run_cuda(fwd, bwd)
    assert_bitwise_equal(tuple(outs) + tuple(hgrads), (y, h_n, c_n) + tuple(grads))


@pytest.mark.cuda
@gpu
def test_gpu_cupy_noncontiguous_and_mixed_inputs_and_stream():
    cp = _cupy_or_skip()
    fwd, bwd = make_case(4, 3, 6, 17, np.float32, seed=12, lengths=[4, 2, 0])
    ref_outs, ref_grads, _ = run_cuda(fwd, bwd)
    x = cp.asfortranarray(cp.asarray(fwd["x"]))  # device, not C-contiguous
    with cp.cuda.Stream(non_blocking=True):
        y, h_n, c_n, saved = ops.lstm_forward(**{**fwd, "x": x}, backend="cuda")  # rest NumPy
        grads = ops.lstm_backward(saved, **bwd)
        cp.cuda.get_current_stream().synchronize()
    assert_bitwise_equal(tuple(ref_outs) + tuple(ref_grads), (y, h_n, c_n) + tuple(grads))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gpu_persistent_weights_from_an_unaligned_view(dtype, kernel_path_reset):
    # recurrent_kernel as a C-contiguous CuPy view one element into its buffer (not 16-byte
    # aligned): the persistent kernels' weight loads take their one-value-per-load path, with the
    # same bits as from the aligned upload of the same values
    cp = _cupy_or_skip()
    fwd, bwd = make_case(3, 2, 5, 64, dtype, seed=21, lengths=[3, 1], reverse=True)
    fcuda.set_kernel_path("persistent")
    ref_outs, ref_grads, _ = run_cuda(fwd, bwd)
    rk = fwd["recurrent_kernel"]
    buf = cp.empty(rk.size + 1, dtype=rk.dtype)
    view = buf[1:].reshape(rk.shape)
    view[...] = cp.asarray(rk)
    assert view.flags.c_contiguous and view.data.ptr % 16 != 0
    outs, grads, _ = run_cuda({**fwd, "recurrent_kernel": view}, bwd)
    assert _ran("forward").startswith("persistent forward") and _ran("backward").startswith("persistent backward")
    assert_bitwise_equal(tuple(ref_outs) + tuple(ref_grads), tuple(outs) + tuple(grads))


@pytest.mark.cuda
@gpu
def test_gpu_torch_tensors_via_cuda_array_interface_and_dlpack():
    cp = _cupy_or_skip()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    fwd, bwd = make_case(5, 4, 8, 24, np.float32, seed=9)
    tfwd = {k: (torch.from_numpy(v).cuda() if isinstance(v, np.ndarray) else v) for k, v in fwd.items()}
    torch.cuda.synchronize()
    y, h_n, c_n, saved = ops.lstm_forward(**tfwd, backend="cuda")
    assert isinstance(y, cp.ndarray)
    grads = ops.lstm_backward(saved, **{k: torch.from_numpy(v).cuda() for k, v in bwd.items()})
    check_against_reference(fwd, bwd, (y, h_n, c_n), grads, TOL[np.dtype(np.float32)])

    class DLPackOnly:  # a device array that speaks DLPack only
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kwargs):
            return self.t.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    y2 = ops.lstm_forward(**{**tfwd, "x": DLPackOnly(tfwd["x"])}, backend="cuda")[0]
    assert_bitwise_equal((y,), (y2,))


def _torch_cuda_or_skip():
    _cupy_or_skip()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("config", TORCH_MODULE_CONFIGS, ids=["1layer", "2layers_bidir_packed_hx"])
@pytest.mark.parametrize("dtype_name, precision", [("float32", "fp32"), ("float64", "fp32"), ("float32", "tf32")])
def test_gpu_torch_module_matches_torch_float64(config, dtype_name, precision):
    # fastlstm.torch.LSTM moved to the GPU runs fastlstm's CUDA kernels on the tensors (DLPack
    # views, torch's current stream, torch's allocator): outputs and every gradient against
    # torch.nn.LSTM in float64 on the CPU, the results CUDA tensors on the module's device
    torch = _torch_cuda_or_skip()
    device = torch.device("cuda", torch.cuda.current_device())
    errors, _ = _torch_module_errors(torch, device, getattr(torch, dtype_name), precision, config)
    assert max(errors.values()) <= TORCH_MODULE_TOL[dtype_name, precision], errors
    assert _ran("forward").startswith(("simt forward", "persistent forward")), _ran("forward")
    if precision == "tf32":
        assert "tensor cores" in _ran("backward"), _ran("backward")


@pytest.mark.cuda
@gpu
def test_gpu_torch_module_stream_allocator_and_cache(monkeypatch):
    # on a side stream (torch.cuda.stream): every kernel launched on that stream (the stream the
    # extension is given), the same bits as on the default stream, nothing left in CuPy's memory
    # pool (what the kernels allocate comes from torch's caching allocator), results that are
    # torch allocator memory (record_stream works), inference with the weight cache bitwise the
    # training forward's output, and refreshed after an optimizer step
    cp = _cupy_or_skip()
    torch = _torch_cuda_or_skip()
    ext = fcuda.require()
    streams = []
    for name in ("forward", "backward"):
        def spy(*args, _real=getattr(ext, name), **kwargs):
            streams.append(args[-1])  # (the stream is the last positional argument of both)
            return _real(*args, **kwargs)
        monkeypatch.setattr(ext, name, spy)
    import fastlstm.torch as ftorch
    torch.manual_seed(3)
    model = ftorch.LSTM(7, 33, num_layers=2, bidirectional=True).cuda()
    x = torch.randn(6, 5, 7, device="cuda", requires_grad=True)
    pool = cp.get_default_memory_pool()
    before = pool.used_bytes()
    out, (h_n, c_n) = model(x)
    (out.square().sum() + h_n.sum()).backward()
    reference_bits = (out.detach().clone(), x.grad.clone())
    assert pool.used_bytes() == before, (before, pool.used_bytes())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    assert set(streams) == {torch.cuda.current_stream().cuda_stream} and len(streams) == 8, streams
    streams.clear()
    with torch.cuda.stream(side):
        x2 = x.detach().clone().requires_grad_()
        out2, (h2, _) = model(x2)
        (out2.square().sum() + h2.sum()).backward()
    torch.cuda.current_stream().wait_stream(side)
    out2.record_stream(torch.cuda.current_stream())  # (a no-op on memory torch did not allocate)
    torch.cuda.synchronize()
    assert set(streams) == {side.cuda_stream} and len(streams) == 8, (streams, side.cuda_stream)
    assert torch.equal(out2, reference_bits[0]) and torch.equal(x2.grad, reference_bits[1])
    with torch.no_grad():
        model.cache_weights()
        cached = model(x)[0]
        assert torch.equal(cached, reference_bits[0])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.step()
        changed = model(x)[0]
        # the cached copies (refreshed on the default stream) used on the side stream, then
        # refreshed there after a second step (freeing the copies the side stream read):
        # the same bits as the calls without the cache
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            changed_side = model(x)[0]
            opt.step()
            stepped_side = model(x)[0]
        torch.cuda.current_stream().wait_stream(side)
        model.cache_weights(False)
        fresh = model(x)[0]
    torch.cuda.synchronize()
    assert not torch.equal(changed, reference_bits[0]) and torch.equal(changed, changed_side)
    assert not torch.equal(stepped_side, changed) and torch.equal(stepped_side, fresh)
    with pytest.raises(RuntimeError, match="input is on cpu, but the module's parameters are on cuda"):
        model(x.detach().cpu())


@pytest.mark.cuda
@gpu
def test_gpu_errors():
    fwd, bwd = make_case(4, 3, 5, 2, np.float64, seed=1)
    with pytest.raises(TypeError, match=r"\bx\b"):
        ops.lstm_forward(**{**fwd, "x": fwd["x"].astype(np.float16)}, backend="cuda")
    with pytest.raises(ValueError, match=r"\bc0\b"):
        ops.lstm_forward(**{**fwd, "c0": np.zeros((3, 3))}, backend="cuda")
    *_, saved = ops.lstm_forward(**fwd, backend="cuda")
    with pytest.raises(ValueError, match=r"\bdc_n\b"):
        ops.lstm_backward(saved, dy=None, dc_n=np.zeros((3, 1)))
    from fastlstm import _cuda
    # a host pointer where device memory is expected: a clear RuntimeError, no crash
    host = np.zeros(64, np.float32)
    y = _cuda.Buffer(4 * 3 * 2 * 4, 0)
    with pytest.raises(RuntimeError, match=r"\bx\b"):
        _cuda.forward("float32", (4, 3, 1, 2), host.ctypes.data, y.ptr, y.ptr, 0, 0, 0, 0, False,
                      y.ptr, y.ptr, y.ptr, 0, 0, 0, 0)
    # the device is still usable
    run_and_check("I5_H3_len_0_1_T", CASES["I5_H3_len_0_1_T"], np.float32)


# --------------------------------------------------------------------------- precision (tf32 / bf16)
# precision="tf32" | "bf16" (float32 only): the input projection x . kernel and the backward's
# x^T . dz, h_prev^T . dz and dz . kernel^T run on tensor cores (wmma) with the operands rounded
# to tf32 (cvt.rna: 10 mantissa bits, ties away from zero) or bf16 (round to nearest even, 7
# bits) while staged, float32 accumulation; the recurrent products, the gates and the cell state
# stay float32. The emulator reproduces the operand rounding and float32 accumulation (not the
# tensor cores' internal accumulation order, see csrc/cuda/emu/emu_wmma.h).
#
# Tolerances against the float64 reference (relative Frobenius norm), from the rounding: an
# operand rounded to p stored bits has relative error <= u = 2^-(p+1) (tf32 u = 2^-11 = 4.9e-4,
# bf16 u = 2^-9 = 2.0e-3); a product of two rounded operands <= 2u, and a sum of many such terms
# with random signs ~0.8u in norm. Measured on the emulator (12 cases x simt/persistent):
#   tf32: outputs <= 2.9e-4, gradients <= 5.0e-4;  bf16: outputs <= 2.2e-3, gradients <= 4.7e-3
# (the largest from single-term gradients of the T=1, H=1 case, bounded by 2u + the forward's
# error carried into dz). Bounds: outputs 2u, gradients 4u (tf32) / 5u (bf16), ~2-4x headroom;
# a wrong or missing term gives errors of order 1e-1. Floors (the rounding really happened):
# fp32 arithmetic alone gives ~1e-7, so a mode that silently ran in fp32 is caught by
# "error >= u / 25" on the largest output/gradient error.
# The forward is also checked tightly: against the float64 reference run on x and kernel rounded
# in NumPy (the only rounded operands of the forward), it must match to the fp32 tolerance
# (2e-6; measured <= 1.6e-7): this catches a wrong rounding mode (truncation instead of
# round-to-nearest), a rounded bias or recurrent kernel, or a term of the projection dropped.
# The GEMM alone (ops' four products, every operand layout, edges) is checked the same way
# against NumPy products of the rounded operands (see test_emulated_tensor_gemm_*).
PRECISIONS = ("tf32", "bf16")
UNIT = {"tf32": 2.0 ** -11, "bf16": 2.0 ** -9}
PREC_TOL = {"tf32": (2 * UNIT["tf32"], 4 * UNIT["tf32"]),    # (outputs, gradients): 9.8e-4, 2.0e-3
            "bf16": (2 * UNIT["bf16"], 5 * UNIT["bf16"])}    # 3.9e-3, 9.8e-3
PREC_FLOOR = {p: UNIT[p] / 25 for p in PRECISIONS}          # 2.0e-5, 7.8e-5
AUTO_PERSISTENT_MAX_ROWS = 64  # csrc/cuda/lstm_impl.cuh kPersistentAutoMaxRows
# csrc/cuda/lstm_impl.cuh kPersistentAutoMinSteps (1: auto ignores T). Raising it moves the tests
# that expect auto's persistent choice at T = 2-7 to the per-step kernels: they force the path, or
# use T >= this, with it.
AUTO_PERSISTENT_MIN_STEPS = 1
GEMM_TOL = 2e-6  # the GEMM against the float64 product of the rounded operands (fp32 accumulation)
K_STEP = {"tf32": 8, "bf16": 16}  # products per wmma k-step (one MMA's k-block)


def gemm_tol(K, precision):
    """The bound for a tensor-core GEMM of depth K against the float64 product of its rounded
    operands. tf32 / bf16 accumulate inside the MMAs, and the tensor cores align and truncate
    the running sum with each k-step's products (toward zero: biased, so the error adds up
    linearly): each of the ceil(K / k-step) MMAs loses up to about an ulp of the running sum,
    half of one on average. Random data's partial sums average about 2/3 of the final one, so
    the expected error is ~n 2^-24 (2/3) for n k-steps; the bound allows n 2^-23 on top of
    float32's GEMM_TOL (3x the expectation). Measured on an H200 (2026-11-27): 3.3e-6 at
    K = 700 (tf32 and bf16), where the expectation is 3.5e-6 and the bound 1.3e-5. tf32x3 adds
    each k-step's product to its accumulator in float32 outside the MMAs, so its bound is
    float32's (GEMM_TOL)."""
    if precision in ("tf32", "bf16"):
        return GEMM_TOL + -(-K // K_STEP[precision]) * 2.0 ** -23
    return GEMM_TOL
PRECISION_CASES = ["B5_H9_I17_unsorted_lengths", "H130_B3_TB_over_64", "B16_H32_I64_T4",
                   "I33_H17_B7_reverse_nobias", "I64_H64_no_h0_c0", "I8_H100_B3_no_c0", "dy_None",
                   "B40_no_bias", "T1_B1_I1_H1", "H65_I1_B2", "I5_H3_len_0_1_T_reverse"]


def round_tf32(a):
    """cvt.rna.tf32.f32 in NumPy: round to nearest, ties away from zero, to 10 mantissa bits."""
    a = np.ascontiguousarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = ((u + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(a), np.float32(np.nan), r)


def round_bf16(a):
    """float32 -> bf16 (round to nearest even) -> float32, in NumPy."""
    a = np.ascontiguousarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(a), np.float32(np.nan), r)


ROUND = {"tf32": round_tf32, "bf16": round_bf16}


def test_numpy_rounding_helpers():
    # the tests' own model of the conversions, on hand-made values
    one = np.float32(1.0)
    ulp_tf32, ulp_bf16 = 2.0 ** -10, 2.0 ** -7
    x = np.array([1 + ulp_tf32 / 2, -(1 + ulp_tf32 / 2), 1 + ulp_tf32 / 2 - 2 ** -23, 3.0, np.inf],
                 np.float32)
    np.testing.assert_array_equal(round_tf32(x), np.array([1 + ulp_tf32, -(1 + ulp_tf32), one, 3.0, np.inf],
                                                          np.float32))  # ties away from zero
    y = np.array([1 + ulp_bf16 / 2, 1 + 1.5 * ulp_bf16, -(1 + ulp_bf16 / 2), 1 + ulp_bf16 / 2 + 2 ** -23],
                 np.float32)
    np.testing.assert_array_equal(round_bf16(y), np.array([1.0, 1 + 2 * ulp_bf16, -1.0, 1 + ulp_bf16],
                                                          np.float32))  # ties to even
    assert np.isnan(round_tf32(np.array([np.nan], np.float32))).all()
    assert np.isinf(round_tf32(np.array([np.finfo(np.float32).max], np.float32))).all()


def _prec_case(name, dtype=np.float32):
    return make_case(dtype=dtype, seed=zlib.crc32(name.encode()), **CASES[name])


def _errors_within(fwd, bwd, outs, grads, tols, label):
    """{name: relative error against the float64 reference} of the float32 outputs (within
    tols[0]) and gradients (within tols[1]; grads None: forward only); every array finite."""
    ref_outs, ref_grads = reference64(fwd, bwd)
    errs = {}
    for i, (name, a, b) in enumerate(zip(FWD_NAMES + BWD_NAMES, tuple(outs) + tuple(grads or ()),
                                         tuple(ref_outs) + tuple(ref_grads))):
        if b is None:
            assert a is None, f"{name}: expected None"
            continue
        a = to_host(a)
        assert a.shape == b.shape and a.dtype == np.float32, (name, a.shape, a.dtype)
        assert np.isfinite(a).all(), f"{name}: non-finite entries (unwritten output?)"
        errs[name] = rel_err(a, b)
        tol = tols[0] if i < 3 else tols[1]
        assert errs[name] <= tol, f"{name} ({label}): relative error {errs[name]:.3g} > {tol:.3g}"
    return errs


def check_precision_against_reference(fwd, bwd, outs, grads, precision, floor=True):
    """Outputs and gradients within the precision's tolerance of the float64 reference, and the
    forward within the fp32 tolerance of the reference run on the rounded x and kernel."""
    errs = list(_errors_within(fwd, bwd, outs, grads, PREC_TOL[precision], precision).values())
    if floor and max(errs) > 0:
        assert max(errs) >= PREC_FLOOR[precision], \
            f"{precision}: largest error {max(errs):.3g} is fp32-sized: were the operands rounded?"
    rounded = {**fwd, "x": ROUND[precision](fwd["x"]), "kernel": ROUND[precision](fwd["kernel"])}
    tight_outs, _ = reference64(rounded, bwd)
    for name, a, b in zip(FWD_NAMES, outs, tight_outs):
        err = rel_err(to_host(a), b)
        assert err <= TOL[np.dtype(np.float32)], \
            f"{name} ({precision}): {err:.3g} from the reference on rounded x and kernel"
    return errs


def _assert_repeatable_in_any_order(emu, fwd, bwd, precision, outs, grads):
    """Deterministic, and independent of the thread / block order and of the guard side: a
    second run, and one in reversed order with the guard page in front, give the same bits."""
    again = run_cuda_precision(fwd, bwd, precision)
    emu.set_reverse_order(True)
    emu.set_guard_front(True)
    reversed_ = run_cuda_precision(fwd, bwd, precision)
    first = tuple(outs) + tuple(grads)
    assert_bitwise_equal(first, tuple(again[0]) + tuple(again[1]))
    assert_bitwise_equal(first, tuple(reversed_[0]) + tuple(reversed_[1]))


def run_cuda_precision(fwd, bwd, precision, training=True):
    y, h_n, c_n, saved = ops.lstm_forward(**fwd, training=training, backend="cuda", precision=precision)
    grads = ops.lstm_backward(saved, **bwd) if training else None
    return (y, h_n, c_n), grads, saved


def _run_prec_case_on_path(emu, name, path, precision):
    """Case `name` (PRECISION_CASES) on kernel path simt / persistent in `precision`; checks that
    the saved forward carries the precision. Returns (fwd, bwd, outs, grads)."""
    fcuda.set_kernel_path(path)
    if path == "persistent":
        emu.set_device(sm_count=_persistent_sms(name))
    fwd, bwd = _prec_case(name)
    outs, grads, saved = run_cuda_precision(fwd, bwd, precision)
    assert saved.precision == precision and f"precision={precision!r}" in repr(saved)
    return fwd, bwd, outs, grads


@pytest.mark.parametrize("path", ["simt", "persistent"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", PRECISION_CASES)
def test_emulated_precision_matches_reference(emu, name, precision, path):
    fwd, bwd, outs, grads = _run_prec_case_on_path(emu, name, path, precision)
    check_precision_against_reference(fwd, bwd, outs, grads, precision)
    for kind in ("forward", "backward"):
        assert _ran(kind).startswith(f"{path} {kind}"), _ran(kind)
        assert f"GEMMs: {precision} tensor cores" in _ran(kind), _ran(kind)
    if path == "persistent":
        return  # the GEMMs are the same code on both paths: order independence checked on simt
    _assert_repeatable_in_any_order(emu, fwd, bwd, precision, outs, grads)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_emulated_precision_paths_agree_and_training_false(emu, precision):
    fwd, bwd = _prec_case("B16_H32_I64_T4")
    emu.set_device(sm_count=_persistent_sms("B16_H32_I64_T4"))
    results = {}
    for path in ("simt", "persistent"):
        fcuda.set_kernel_path(path)
        outs, grads, _ = run_cuda_precision(fwd, bwd, precision)
        results[path] = tuple(outs) + tuple(grads)
        inference = run_cuda_precision(fwd, bwd, precision, training=False)[0]
        assert_bitwise_equal(outs, inference)  # training=False: the same forward bits
    # the GEMMs are the same code on both paths; the recurrences differ in summation order only
    for name_, a, b in zip(FWD_NAMES + BWD_NAMES, results["simt"], results["persistent"]):
        if a is not None:
            assert rel_err(b, a) <= 1e-5, f"{name_}: simt vs persistent {rel_err(b, a):.3g}"


def test_emulated_fp32_precision_is_the_default_and_unchanged(emu):
    fwd, bwd = _prec_case("B16_H32_I64_T4")
    default = run_cuda(fwd, bwd)
    explicit = run_cuda_precision(fwd, bwd, "fp32")
    assert explicit[2].precision == "fp32" and default[2].precision == "fp32"
    assert_bitwise_equal(tuple(default[0]) + tuple(default[1]), tuple(explicit[0]) + tuple(explicit[1]))
    assert "tensor cores" not in _ran("forward") and "tensor cores" not in _ran("backward")
    check_against_reference(fwd, bwd, explicit[0], explicit[1], TOL[np.dtype(np.float32)])
    tf32 = run_cuda_precision(fwd, bwd, "tf32")
    assert not np.array_equal(tf32[0][0], explicit[0][0])  # the modes really differ


@pytest.mark.parametrize("precision", PRECISIONS)
def test_emulated_precision_nan_in_padding(emu, precision):
    T, B = 5, 6
    lengths = [0, 1, 5, 3, 0, 2]
    fwd, bwd = make_case(T, B, 7, 3, np.float32, seed=11, lengths=lengths, reverse=True)
    for b, L in enumerate(lengths):
        fwd["x"][L:, b] = np.nan
    outs, grads, _ = run_cuda_precision(fwd, bwd, precision)
    for name, a in zip(FWD_NAMES + BWD_NAMES, tuple(outs) + tuple(grads)):
        assert np.isfinite(a).all(), f"{name}: NaN from x at a padding position"
    for b, L in enumerate(lengths):
        assert np.all(outs[0][L:, b] == 0) and np.all(grads[0][L:, b] == 0)


def test_emulated_precision_argument_errors(emu):
    fwd64, bwd64 = make_case(4, 3, 5, 2, np.float64, seed=1)
    for precision in PRECISIONS:
        with pytest.raises(ValueError, match=rf"precision='{precision}' takes float32 inputs.*float64"):
            ops.lstm_forward(**fwd64, backend="cuda", precision=precision)
    for bad in ("fp16", "TF32", "", None, 32):
        with pytest.raises(ValueError, match=r"precision: expected one of \('fp32', 'tf32', 'bf16', 'tf32x3'\)"):
            ops.lstm_forward(**fwd64, backend="cuda", precision=bad)
    # the extension refuses too (a direct call with float64 data)
    with pytest.raises(RuntimeError, match="takes float32 data"):
        emu.forward("float64", (2, 1, 3, 4), *([0] * 7), False, *([0] * 5), 0, 0, precision="tf32")
    with pytest.raises(ValueError, match="precision"):
        emu.forward("float32", (2, 1, 3, 4), *([0] * 7), False, *([0] * 5), 0, 0, precision="fp16")
    # a device without tf32 / bf16 tensor cores
    fwd, bwd = make_case(3, 2, 4, 5, np.float32, seed=2)
    emu.set_capability(7, 5)
    for precision in PRECISIONS:
        with pytest.raises(RuntimeError, match=rf"precision '{precision}' needs tensor cores of compute "
                                               r"capability 8\.0 or newer; this device is 7\.5"):
            ops.lstm_forward(**fwd, backend="cuda", precision=precision)
    ops.lstm_forward(**fwd, backend="cuda")  # fp32 still runs there


# ---- the GEMM alone: C = A . B (+ bias) against NumPy on the rounded operands

def _gemm_operands(M, N, K, layout, rng):
    """(a, sam, sak, b, sbk, sbn, A, B): A (M, K) and B (K, N) as float32 arrays, stored as given
    by layout ("nn": both row-major; "tn": A stored transposed (K, M); "nt": B stored (N, K))."""
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    if layout[0] == "t":
        a, sam, sak = np.ascontiguousarray(A.T), 1, M
    else:
        a, sam, sak = np.ascontiguousarray(A), K, 1
    if layout[1] == "t":
        b, sbk, sbn = np.ascontiguousarray(B.T), 1, K
    else:
        b, sbk, sbn = np.ascontiguousarray(B), N, 1
    return a, sam, sak, b, sbk, sbn, A, B


def _run_gemm(ext, precision, M, N, K, layout, seed, bias=True, pad=3):
    """Runs ext.matmul on uploaded operands; returns (C, A, B, bias, description). C has pad
    guard columns (ldc = N + pad) that must keep their value."""
    rng = np.random.default_rng(seed)
    a, sam, sak, b, sbk, sbn, A, B = _gemm_operands(M, N, K, layout, rng)
    bv = rng.standard_normal(N).astype(np.float32) if bias else None
    ldc = N + pad
    c0 = np.full((M, ldc), np.nan, np.float32)
    c0[:, N:] = 7.0
    bufs = {}
    for key, arr in (("a", a), ("b", b), ("bias", bv), ("c", c0)):
        if arr is None or arr.size == 0:
            bufs[key] = None
            continue
        buf = ext.Buffer(arr.nbytes, 0)
        buf.upload(np.ascontiguousarray(arr))
        bufs[key] = buf
    ptr = lambda k: 0 if bufs[k] is None else bufs[k].ptr  # noqa: E731
    ran = ext.matmul(precision, M, N, K, ptr("a"), sam, sak, ptr("b"), sbk, sbn, ptr("bias"), ptr("c"), ldc,
                     0, 0)
    c = np.empty_like(c0)
    if bufs["c"] is not None:
        bufs["c"].download(c)
    if hasattr(ext, "synchronize"):
        ext.synchronize(0, 0)
    assert np.all(c[:, N:] == 7.0), "the GEMM wrote past column N"
    return c[:, :N], A, B, bv, ran


def split_tf32(a):
    """tf32x3's operand split in NumPy: (hi, lo) = (tf32(a), tf32(a - hi)), float32 arrays."""
    a = np.ascontiguousarray(a, np.float32)
    hi = round_tf32(a)
    return hi, round_tf32(a - hi)  # a - hi is exact in float32


def model_product(A, B, precision):
    """The float64 product the tensor-core GEMM computes up to float32 accumulation: of the
    rounded operands (tf32 / bf16), of the split ones without the lo.lo term (tf32x3), or of the
    operands themselves (fp32)."""
    if precision == "tf32x3":
        (ah, al), (bh, bl) = split_tf32(A), split_tf32(B)
        ah, al, bh, bl = (v.astype(np.float64) for v in (ah, al, bh, bl))
        return al @ bh + ah @ bl + ah @ bh
    rnd = ROUND[precision] if precision != "fp32" else (lambda v: v)
    return rnd(A).astype(np.float64) @ rnd(B).astype(np.float64)


def check_gemm(C, A, B, bias, precision):
    want = model_product(A, B, precision)
    exact = A.astype(np.float64) @ B.astype(np.float64)
    if bias is not None:
        want += bias
        exact += bias
    assert np.isfinite(C).all(), "unwritten outputs"
    err = rel_err(C, want)
    tol = gemm_tol(A.shape[1], precision)
    assert err <= tol, f"{precision}: {err:.3g} from the product of the rounded operands (bound {tol:.3g})"
    if precision == "tf32x3":  # float32's accuracy: a dropped or unsplit term shows as ~1e-4
        assert rel_err(C, exact) <= GEMM_TOL, f"tf32x3: {rel_err(C, exact):.3g} from the exact product"
    elif precision != "fp32" and A.shape[1] >= 16:
        assert rel_err(C, exact) >= PREC_FLOOR[precision], "the operands were not rounded"
    return err


GEMM_SHAPES = [(1, 1, 1), (130, 67, 45), (128, 128, 64), (33, 260, 100), (5, 7, 0), (200, 17, 300)]
EMU_SMS = 4  # the emulated device's SM count unless a test sets another (EmuExtension.set_device)


def _tc_splits(M, N, K, sms):
    """tc::plan_large_split's slice count (split-k-v1 on the tensor cores): where the 128 x 128
    grid is smaller than the device, as many k slices (<= 16, >= 2 passes of 32 each) as keep the
    grid within one block per SM; 1 otherwise."""
    tiles = -(-M // 128) * -(-N // 128)
    passes = -(-K // 32)
    if K <= 0 or tiles <= 0 or tiles >= sms:
        return 1
    want = min(sms // tiles, 16, -(-passes // 2))
    if want < 2:
        return 1
    kslice = -(-passes // want) * 32
    return -(-K // kslice)


def _tc_desc(precision, M, N, K, sms=EMU_SMS, kind="wmma"):
    """The tensor-core GEMM's description (matmul): kind "wmma", "wmma + cp.async" or
    "wmma + cp.async, bf16 copies", and the k slices where it splits."""
    S = _tc_splits(M, N, K, sms)
    return f"tensor-core gemm ({precision}, {kind}" + (f", 128x128 tiles x {S} k-slices)" if S > 1 else ")")


@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
@pytest.mark.parametrize("precision", PRECISIONS + ("tf32x3",))
def test_emulated_tensor_gemm_split_k(emu, monkeypatch, precision, layout):
    # split-k-v1 on the tensor cores: where the 128 x 128 grid is smaller than the device, the k
    # slices' partials (each accumulated from zero) summed in order, + bias: within the GEMM's
    # bound of the product of the rounded operands, repeatable in any order; off, the unsplit
    # kernel (a different result, the same bound)
    emu.set_device(sm_count=16)
    split = None
    for i, (M, N, K) in enumerate([(100, 300, 1000), (40, 20, 300), (129, 5, 200)]):
        C, A, B, bias, ran = _run_gemm(emu, precision, M, N, K, layout, seed=40 + i, bias=i % 2 == 0)
        assert ran == _tc_desc(precision, M, N, K, 16) and "k-slices" in ran, ran
        check_gemm(C, A, B, bias, precision)
        if i == 0:
            split = C
        emu.set_reverse_order(True)
        emu.set_guard_front(True)
        again = _run_gemm(emu, precision, M, N, K, layout, seed=40 + i, bias=i % 2 == 0)[0]
        emu.set_reverse_order(False)
        emu.set_guard_front(False)
        np.testing.assert_array_equal(C.view(np.uint32), again.view(np.uint32))
    monkeypatch.setenv("FASTLSTM_CUDA_GEMM_SPLITK", "0")
    C0, A, B, bias, ran = _run_gemm(emu, precision, 100, 300, 1000, layout, seed=40, bias=True)
    assert ran == f"tensor-core gemm ({precision}, wmma)", ran
    check_gemm(C0, A, B, bias, precision)
    assert not np.array_equal(split, C0), "split-K changed nothing (did it run?)"


@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_emulated_tensor_gemm_matches_rounded_operands(emu, precision, layout):
    for i, (M, N, K) in enumerate(GEMM_SHAPES):
        C, A, B, bias, ran = _run_gemm(emu, precision, M, N, K, layout, seed=100 + i, bias=i % 2 == 0)
        assert ran == _tc_desc(precision, M, N, K), ran
        check_gemm(C, A, B, bias, precision)
    # run-to-run and thread-order independent, bit for bit
    first = _run_gemm(emu, precision, 130, 67, 45, layout, seed=7)[0]
    emu.set_reverse_order(True)
    emu.set_guard_front(True)
    second = _run_gemm(emu, precision, 130, 67, 45, layout, seed=7)[0]
    np.testing.assert_array_equal(first.view(np.uint32), second.view(np.uint32))


def sequential_product_f32(A, B, bias):
    """C[m, n] = sum over k = 0 .. K-1, in order, of A[m, k] * B[k, n] in float32 arithmetic with
    the product and every sum rounded (no fused multiply-add: the emulator's build), + bias."""
    acc = np.zeros((A.shape[0], B.shape[1]), np.float32)
    for k in range(A.shape[1]):
        acc = acc + A[:, k:k + 1] * B[k:k + 1, :]
    return acc if bias is None else acc + bias


@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
def test_emulated_gemm_fp32_is_the_simt_gemm(emu, layout):
    # Both float32 SIMT GEMMs (128 x 128 blocks with 8 x 8 outputs per thread; 64 x 64 with 4 x 4,
    # which float64 uses too) sum every output over k in order, one multiply and one add per k:
    # bitwise the sequential float32 sum, at edges and across passes, whichever runs.
    # The 128 x 128 kernel runs when its grid fills the device once (blocks >= SMs), else the
    # 64 x 64 one: with 1 emulated SM always the first, with 10^6 always the second.
    for sms, kernel in ((1, "128x128"), (10 ** 6, "64x64")):
        emu.set_device(sm_count=sms)
        for i, (M, N, K) in enumerate([(70, 33, 20), (1, 1, 1), (130, 260, 45), (128, 128, 16), (5, 7, 0),
                                       (257, 3, 9), (3, 129, 100)]):
            C, A, B, bias, ran = _run_gemm(emu, "fp32", M, N, K, layout, seed=30 + i, bias=i % 2 == 0)
            assert ran == f"simt gemm (fp32, {kernel})"
            check_gemm(C, A, B, bias, "fp32")
            np.testing.assert_array_equal(C.view(np.uint32), sequential_product_f32(A, B, bias).view(np.uint32))
    emu.set_device(sm_count=6)  # (130, 260): 2 x 3 blocks of 128 x 128 fill 6 SMs, (70, 33) does not
    assert _run_gemm(emu, "fp32", 130, 260, 8, layout, seed=1)[4] == "simt gemm (fp32, 128x128)"
    assert _run_gemm(emu, "fp32", 70, 33, 8, layout, seed=1)[4] == "simt gemm (fp32, 64x64)"


def _fp32_gemm_kind(M, N, K, sms):
    """Which fp32 GEMM runs (lstm_impl.cuh gemm()): 128 x 128 where that grid fills the device,
    else split-K where tiled_plan makes two or more slices and at least as many blocks as the
    64 x 64 kernel's grid, else 64 x 64."""
    if -(-M // 128) * -(-N // 128) >= sms:
        return "simt gemm (fp32, 128x128)"
    plan, _ = _plan_tiled(M, N, K, sms)
    splits = int(plan.split(" x ")[-1].split()[0])
    blocks = -(-M // (128 if M > 64 else 64)) * -(-N // 128) * splits
    if splits >= 2 and blocks >= -(-M // 64) * -(-N // 64):
        return f"simt gemm (fp32, {plan})"
    return "simt gemm (fp32, 64x64)"


def split_k_product_f32(A, B, bias, kslice):
    """Split-K's arithmetic: each slice's sequential float32 sum, the slices added in order, then
    + bias."""
    parts = [sequential_product_f32(A[:, k0:k0 + kslice], B[k0:k0 + kslice], None)
             for k0 in range(0, A.shape[1], kslice)]
    acc = parts[0]
    for p in parts[1:]:
        acc = acc + p
    return acc if bias is None else acc + bias


@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
def test_emulated_gemm_fp32_split_k(emu, monkeypatch, layout):
    # Small grids with a deep K (split-k-v1): the slices' partials on the tiled path's kernel, then
    # summed in order (+ bias): bitwise that arithmetic; edges, short last slices, both tiles
    emu.set_device(sm_count=16)
    for i, (M, N, K) in enumerate([(100, 300, 1000), (5, 40, 600), (130, 17, 513), (64, 129, 129), (1, 1, 2000)]):
        C, A, B, bias, ran = _run_gemm(emu, "fp32", M, N, K, layout, seed=60 + i, bias=i % 2 == 0)
        kind = _fp32_gemm_kind(M, N, K, 16)
        assert ran == kind and "k-slices" in ran, (ran, kind)
        check_gemm(C, A, B, bias, "fp32")
        kslice = _plan_tiled(M, N, K, 16)[1]
        np.testing.assert_array_equal(C.view(np.uint32), split_k_product_f32(A, B, bias, kslice).view(np.uint32),
                                      err_msg=ran)
    # the rule's edge: as many split blocks as the 64 x 64 grid's (64 x 128 x 256: 1 tile x 2
    # slices against 1 x 2 blocks) splits
    assert _fp32_gemm_kind(64, 128, 256, 16) == "simt gemm (fp32, 64x128 tiles x 2 k-slices)"
    assert _run_gemm(emu, "fp32", 64, 128, 256, layout, seed=3)[4] == _fp32_gemm_kind(64, 128, 256, 16)
    # a shallow K keeps the 64 x 64 kernel, and so does a split with fewer blocks than its grid
    # (100 x 1024 x 256: 8 tiles x 2 slices against 2 x 16 blocks); switched off
    # (FASTLSTM_CUDA_GEMM_SPLITK=0) too
    assert _run_gemm(emu, "fp32", 100, 300, 128, layout, seed=1)[4] == "simt gemm (fp32, 64x64)"
    assert _plan_tiled(100, 1024, 256, 16)[0] == "128x128 tiles x 2 k-slices"
    C, A, B, bias, ran = _run_gemm(emu, "fp32", 100, 1024, 256, layout, seed=2)
    assert ran == "simt gemm (fp32, 64x64)" == _fp32_gemm_kind(100, 1024, 256, 16), ran
    np.testing.assert_array_equal(C.view(np.uint32), sequential_product_f32(A, B, bias).view(np.uint32))
    monkeypatch.setenv("FASTLSTM_CUDA_GEMM_SPLITK", "0")
    C, A, B, bias, ran = _run_gemm(emu, "fp32", 100, 300, 1000, layout, seed=60)
    assert ran == "simt gemm (fp32, 64x64)", ran
    np.testing.assert_array_equal(C.view(np.uint32), sequential_product_f32(A, B, bias).view(np.uint32))


def test_emulated_lstm_backward_takes_split_k(emu, monkeypatch):
    # At B = 1 the backward's dx (T x I x 4H) and, with T B < SMs' worth of tiles, dkernel and
    # drecurrent have small grids and deep K: split-K; the gradients to fp32's tolerance, and
    # within it of the same call with split-K off
    emu.set_device(sm_count=16)
    fwd, bwd = make_case(3, 1, 40, 70, np.float32, seed=71, lengths=[3])
    assert _fp32_gemm_kind(3, 40, 280, 16).endswith("k-slices)")  # dx: M = T B, N = I, K = 4H
    fcuda.set_kernel_path("simt")
    outs, grads, _ = run_cuda(fwd, bwd)
    check_against_reference(fwd, bwd, outs, grads, TOL[np.dtype(np.float32)])
    monkeypatch.setenv("FASTLSTM_CUDA_GEMM_SPLITK", "0")
    outs0, grads0, _ = run_cuda(fwd, bwd)
    assert_bitwise_equal(outs, outs0)  # the forward's projection (K = I = 40) never splits
    assert not np.array_equal(grads[0], grads0[0]), "dx: split-K did not run (or changed nothing)"
    for name_, a, b in zip(BWD_NAMES, grads, grads0):
        if a is not None:
            assert rel_err(a, b) <= TOL[np.dtype(np.float32)], f"{name_}: split-K vs not {rel_err(a, b):.3g}"


# ---- on a GPU

@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("path", ["simt", "persistent"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", PRECISION_CASES[:6] + ["H1024_B2_I64_T3", "H1024_B33_I16_T2_reverse"])
def test_gpu_precision_matches_reference(name, precision, path, kernel_path_reset):
    spec = {**CASES, **BIG_CASES}[name]
    fcuda.set_kernel_path(path)
    fwd, bwd = make_case(dtype=np.float32, seed=zlib.crc32(name.encode()), **spec)
    outs, grads, saved = run_cuda_precision(fwd, bwd, precision)
    assert saved.precision == precision
    check_precision_against_reference(fwd, bwd, outs, grads, precision)
    assert f"GEMMs: {precision} tensor cores" in _ran("forward"), _ran("forward")
    assert _ran("backward").startswith(f"{path} backward"), _ran("backward")
    again = run_cuda_precision(fwd, bwd, precision)
    assert_bitwise_equal(tuple(outs) + tuple(grads), tuple(again[0]) + tuple(again[1]))


@pytest.mark.cuda
@gpu
def test_gpu_fp32_gemm_both_kernels():
    # fp32's SIMT GEMM: 128 x 128 tiles where the grid fills the card, else split-K where K is
    # deep, else 64 x 64 (the same arithmetic per output in the first and the last; on the GPU
    # they multiply-add with FMA). Against float64 products.
    from fastlstm import _cuda
    sms = fastlstm.cuda_info()["sm_count"]
    side = 128 * int(np.ceil(np.sqrt(sms))) + 5
    for layout in ("nn", "tn", "nt", "tt"):
        for (M, N, K), kernel in (((side, side, 37), "128x128"), ((70, 33, 100), "64x64"),
                                  ((70, 33, 3000), None), ((100, 1024, 4096), None)):
            C, A, B, bias, ran = _run_gemm(_cuda, "fp32", M, N, K, layout, seed=700, bias=layout == "nn")
            assert ran == (f"simt gemm (fp32, {kernel})" if kernel else _fp32_gemm_kind(M, N, K, sms)), ran
            assert kernel or "k-slices" in ran, ran
            check_gemm(C, A, B, bias, "fp32")
        first = _run_gemm(_cuda, "fp32", side, side, 37, layout, seed=700, bias=layout == "nn")[0]
        again = _run_gemm(_cuda, "fp32", side, side, 37, layout, seed=700, bias=layout == "nn")[0]
        np.testing.assert_array_equal(first.view(np.uint32), again.view(np.uint32))  # deterministic


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gpu_tensor_gemm_matches_rounded_operands(precision):
    from fastlstm import _cuda
    shapes = GEMM_SHAPES + [(1000, 520, 700), (64, 4096, 3000)]
    for layout in ("nn", "tn", "nt", "tt"):
        for i, (M, N, K) in enumerate(shapes):
            C, A, B, bias, ran = _run_gemm(_cuda, precision, M, N, K, layout, seed=200 + i, bias=i % 2 == 1)
            assert ran == _tc_desc(precision, M, N, K, fastlstm.cuda_info()["sm_count"]), ran
            check_gemm(C, A, B, bias, precision)
        first = _run_gemm(_cuda, precision, 1000, 520, 700, layout, seed=9)[0]
        second = _run_gemm(_cuda, precision, 1000, 520, 700, layout, seed=9)[0]
        np.testing.assert_array_equal(first.view(np.uint32), second.view(np.uint32))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gpu_precision_cupy_inputs_and_errors(precision):
    cp = _cupy_or_skip()
    fwd, bwd = make_case(6, 5, 11, 33, np.float32, seed=5, lengths=[6, 0, 3, 1, 6], reverse=True)
    host = run_cuda_precision(fwd, bwd, precision)
    dfwd = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in fwd.items()}
    y, h_n, c_n, saved = ops.lstm_forward(**dfwd, backend="cuda", precision=precision)
    grads = ops.lstm_backward(saved, **{k: cp.asarray(v) for k, v in bwd.items()})
    assert isinstance(y, cp.ndarray)
    assert_bitwise_equal(tuple(host[0]) + tuple(host[1]), (y, h_n, c_n) + tuple(grads))
    fwd64, _ = make_case(3, 2, 4, 5, np.float64, seed=1)
    with pytest.raises(ValueError, match="float32"):
        ops.lstm_forward(**fwd64, backend="cuda", precision=precision)


# --------------------------------------------------------------------------- tensor-core recurrence
# Kernel path "tensor" (set_kernel_path("tensor"), or "auto" with precision tf32 / bf16, B >= 32
# and B H^2 >= 2^25, i.e. H = 1024 and B >= 32): every step's recurrent product -- h_{s-1} . R
# forward, dz_s . R^T backward -- runs on the tensor cores (tc::step_gemm: 64 x 128 tiles for
# B <= 64, else 128 x 128; k split into slices whose partial products the step kernels add in a
# fixed order), h / dz and R rounded to tf32 / bf16 like the other products' operands. fp32
# never takes this path.
#
# Tolerances against the float64 reference: the recurrence now rounds h and R (forward) and dz
# and R (backward) at every step, on top of the four large products' rounding, so the errors
# are larger than on the other paths and grow with T (each step's rounding error is carried by
# the state). Measured on the emulator (TENSOR_CASES, T <= 6; printed by the test with -s):
#   tf32: outputs <= 3.0e-4, gradients <= 6.2e-4;  bf16: outputs <= 4.4e-3, gradients <= 8.2e-3
# (the largest from T1_B1_I1_H1, single values with no averaging; the other cases <= 2.8e-4 /
# 5.7e-4 tf32, <= 2.3e-3 / 4.1e-3 bf16; the simt / persistent paths measure 2.9e-4 / 5.0e-4 and
# 2.2e-3 / 4.7e-3). Bounds: outputs 4u, gradients 6u (tf32) / 8u (bf16), u = 2^-11 / 2^-9:
# 1.8-6x headroom; a wrong or missing term gives errors of order 1e-1. Long sequences at
# H = 1024 (the benchmark) are expected to be larger; gpu_bench reports them.
# Floors (the recurrence really was rounded): the tensor path against the simt path in the same
# precision differs only by the recurrent products' rounding; a tensor path that silently ran
# its recurrent products in fp32 would differ by ~1e-7. So y, and dh0 of the backward run on the
# same saved forward, must differ from simt's by >= u / 25 (2.0e-5 / 7.8e-5; measured on
# B33_H20_I12: y 8.8e-5 / 6.9e-4, dh0 1.5e-4 / 1.2e-3 for tf32 / bf16).
# Tight check: the forward against a float64 NumPy mirror that rounds x, kernel, R and (every
# step) h exactly as the device does must agree to TENSOR_TIGHT = 2e-5 on the emulator (fp32
# accumulation order, and the rare h element whose rounding flips between the two; measured
# <= 1.2e-7): not rounding R or h gives 4e-5-1e-4 (tf32) / 3e-4-9e-4 (bf16) (a planted fp32
# recurrence: 6e-5 / 3.9e-4). On a GPU at H = 1024 the hardware's accumulation differs from
# the mirror's by ~1e-7-1e-6 and flips the rounding of more h elements: a 1e-6 perturbation of
# h0 gives 1.3e-5 (tf32) / 4.7e-5 (bf16) against 8e-5 / 6.5e-4 for R left unrounded (NumPy at
# B = 64, H = 1024, T = 3), hence TENSOR_TIGHT_GPU 4e-5 / 2e-4, between the two.
TENSOR_MIN_BATCH, TENSOR_MIN_WORK = 32, 2 ** 25  # lstm_impl.cuh kTensorMinBatch, kTensorMinWork (B H^2)
TENSOR_TOL = {"tf32": (4 * UNIT["tf32"], 6 * UNIT["tf32"]),   # (outputs, gradients): 2.0e-3, 2.9e-3
              "bf16": (4 * UNIT["bf16"], 8 * UNIT["bf16"])}   # 7.8e-3, 1.6e-2
TENSOR_TIGHT = 2e-5
TENSOR_TIGHT_GPU = {"tf32": 4e-5, "bf16": 2e-4}
# name: (spec, emulated SM count, kernel path). The SM count steers tc::plan_step: with 64 SMs
# small products are split into several k slices (the last one shorter), with 4 they are not.
TENSOR_CASES = {
    "B5_H9_I17_unsorted_lengths": (CASES["B5_H9_I17_unsorted_lengths"], 4, "tensor"),
    "B17_H33_I65_reverse_bwd_split": (dict(T=4, B=17, I=65, H=33, reverse=True,
                                           lengths=[(3 * b) % 5 for b in range(17)]), 64, "tensor"),
    "H65_I1_B2_fwd_bwd_split": (CASES["H65_I1_B2"], 64, "tensor"),
    "T1_B1_I1_H1": (CASES["T1_B1_I1_H1"], 4, "tensor"),
    "I33_H17_B7_reverse_nobias": (CASES["I33_H17_B7_reverse_nobias"], 64, "tensor"),
    "dh_n_dc_n_None": (CASES["dh_n_dc_n_None"], 4, "tensor"),
    "B33_H20_I12": (dict(T=5, B=33, I=12, H=20, lengths=[(7 * b) % 6 for b in range(33)]), 4, "tensor"),
    "B70_H9_I5_reverse_128_tiles": (dict(T=3, B=70, I=5, H=9, reverse=True, dy=False,
                                         lengths=[(b * 5) % 4 for b in range(70)]), 64, "tensor"),
}


def _plan_step(M, N, K, sms):
    """tc::plan_step's choice, as its description: 64 x 128 tiles for M <= 64, else 128 x 128;
    as many k slices (<= 16, >= 2 passes of 32 each) as keep the grid within one block per SM."""
    large = M > 64
    blocks = -(-M // (128 if large else 64)) * -(-N // 128)
    passes = -(-K // 32)
    want = sms // blocks if 0 < blocks < sms else 1
    want = max(1, min(want, 16, -(-passes // 2)))
    kslice = -(-passes // want) * 32
    splits = -(-K // kslice) if K > 0 else 1
    return f"{'128x128' if large else '64x128'} tiles x {splits} k-slices"


def forward_rounded_reference(fwd, precision):
    """The forward in float64 with the device's rounded operands: x, kernel, R rounded once, and
    h_{s-1} (the float32 state) rounded at every step before the recurrent product."""
    rnd = ROUND[precision]
    x, kernel, rk = fwd["x"], fwd["kernel"], fwd["recurrent_kernel"]
    T, B, _ = x.shape
    H = rk.shape[0]
    xr, kr, rr = (rnd(a).astype(np.float64) for a in (x, kernel, rk))
    bias = np.zeros(4 * H) if fwd.get("bias") is None else fwd["bias"].astype(np.float64)
    h = np.zeros((B, H)) if fwd.get("h0") is None else fwd["h0"].astype(np.float64)
    c = np.zeros((B, H)) if fwd.get("c0") is None else fwd["c0"].astype(np.float64)
    lengths = np.full(B, T) if fwd.get("lengths") is None else np.asarray(fwd["lengths"], np.int64)
    reverse = bool(fwd.get("reverse", False))
    y = np.zeros((T, B, H))
    sig = lambda v: 0.5 * (1 + np.tanh(v / 2))  # noqa: E731
    rows = np.arange(B)
    for s in range(T):
        active = s < lengths
        t = np.where(active, (lengths - 1 - s) if reverse else s, 0)
        hq = rnd(h.astype(np.float32)).astype(np.float64)
        z = xr[t, rows] @ kr + bias + hq @ rr
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        cn = f * c + i * g
        hn = o * np.tanh(cn)
        c = np.where(active[:, None], cn, c)
        h = np.where(active[:, None], hn, h)
        y[t[active], rows[active]] = hn[active]
    return y, h, c


def check_tensor_against_reference(fwd, bwd, outs, grads, precision, tight=TENSOR_TIGHT):
    """The tensor path's outputs / gradients within TENSOR_TOL of the float64 reference, the
    forward within `tight` of the rounded-operand mirror. Returns the errors."""
    errs = _errors_within(fwd, bwd, outs, grads, TENSOR_TOL[precision], f"{precision}, tensor path")
    for name, a, b in zip(FWD_NAMES, outs, forward_rounded_reference(fwd, precision)):
        err = rel_err(to_host(a), b)
        errs["tight_" + name] = err
        assert err <= tight, f"{name} ({precision}): {err:.3g} from the mirror with rounded h and R"
    return errs


def _tensor_case(name):
    spec, sms, path = TENSOR_CASES[name]
    fwd, bwd = make_case(dtype=np.float32, seed=zlib.crc32(name.encode()), **spec)
    return spec, sms, path, fwd, bwd


def _assert_ran_tensor(precision, kind="both"):
    for k in (("forward", "backward") if kind == "both" else (kind,)):
        ran = _ran(k)
        assert ran.startswith(f"tensor-core recurrent {k} ("), ran
        assert f"{precision} wmma" in ran and "k-slices" in ran, ran
        assert f"recurrent product {precision} tensor cores" in ran, ran


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", list(TENSOR_CASES))
def test_emulated_tensor_recurrence_matches_reference(emu, name, precision):
    spec, sms, path, fwd, bwd = _tensor_case(name)
    emu.set_device(sm_count=sms)
    fcuda.set_kernel_path(path)
    outs, grads, _ = run_cuda_precision(fwd, bwd, precision)
    _assert_ran_tensor(precision)
    assert "forced" in _ran("forward") and "forced" in _ran("backward")
    B, H = spec["B"], spec["H"]
    plans = (_plan_step(B, 4 * H, H, sms), _plan_step(B, H, 4 * H, sms))
    assert plans[0] in _ran("forward") and plans[1] in _ran("backward"), (plans, _ran("forward"), _ran("backward"))
    if name.endswith("_split"):  # the k slices really are several
        assert "x 1 k-slices" not in plans[1] and ("fwd" not in name or "x 1 k-slices" not in plans[0]), plans
    if name.endswith("_128_tiles"):
        assert plans[0].startswith("128x128") and plans[1].startswith("128x128")
    errs = check_tensor_against_reference(fwd, bwd, outs, grads, precision)
    print(name, precision, {k: f"{v:.2e}" for k, v in errs.items()})
    _assert_repeatable_in_any_order(emu, fwd, bwd, precision, outs, grads)
    # training=False: the same forward bits
    assert_bitwise_equal(outs, run_cuda_precision(fwd, bwd, precision, training=False)[0])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_emulated_tensor_recurrence_is_rounded_error_floor(emu, precision):
    # The tensor path against simt in the same precision: the only difference is the
    # recurrent products' rounding, so it must show (a path that silently ran fp32 fails).
    spec, sms, _, fwd, bwd = _tensor_case("B33_H20_I12")
    emu.set_device(sm_count=sms)
    floor = UNIT[precision] / 25
    fcuda.set_kernel_path("simt")
    simt_outs, simt_grads, saved = run_cuda_precision(fwd, bwd, precision)
    fcuda.set_kernel_path("tensor")
    tc_outs, tc_grads, _ = run_cuda_precision(fwd, bwd, precision)
    diff = rel_err(tc_outs[0], simt_outs[0])
    print(f"{precision}: y tensor vs simt {diff:.2e}")
    assert floor <= diff <= TENSOR_TOL[precision][0], f"y: tensor vs simt {diff:.3g}"
    # the backward alone, on the same saved forward: dh0 = dz_0 . R^T (and earlier steps')
    tensor_grads = ops.lstm_backward(saved, **bwd)
    _assert_ran_tensor(precision, "backward")
    diff = rel_err(tensor_grads[1], simt_grads[1])
    print(f"{precision}: dh0 tensor vs simt backward {diff:.2e}")
    assert floor <= diff <= TENSOR_TOL[precision][1], f"dh0: tensor vs simt backward {diff:.3g}"
    for name_, a, b in zip(BWD_NAMES, tensor_grads, simt_grads):
        if a is not None:
            assert rel_err(a, b) <= TENSOR_TOL[precision][1], f"{name_}: tensor vs simt {rel_err(a, b):.3g}"
    del tc_grads


def test_emulated_tensor_path_choice_and_fp32_unaffected(emu, monkeypatch):
    # auto's rule (tf32 / bf16): B >= 32 and B H^2 >= 2^25
    for B, H in ((32, 1024), (31, 1024), (32, 1023), (128, 512), (127, 512), (512, 256), (511, 256),
                 (2 ** 20, 6), (2 ** 40, 2 ** 19), (1, 2 ** 20), (0, 2 ** 20)):
        assert emu.tensor_auto(B, H) == (B >= TENSOR_MIN_BATCH and B * H * H >= TENSOR_MIN_WORK), (B, H)
    # end to end at the smallest H = 1024 batch (forward only: slow in the emulator)
    big, _ = make_case(1, TENSOR_MIN_BATCH, 1, 1024, np.float32, seed=30, lengths=[1, 0] * 16)
    ops.lstm_forward(**big, backend="cuda", precision="tf32", training=False)
    _assert_ran_tensor("tf32", "forward")
    assert f"auto: B >= {TENSOR_MIN_BATCH}, B*H^2 >= 2^25" in _ran("forward")
    ops.lstm_forward(**big, backend="cuda", training=False)  # fp32: never
    assert _ran("forward").startswith("simt forward") and "tensor" not in _ran("forward")
    fwd, bwd = make_case(3, TENSOR_MIN_BATCH, 6, 10, np.float32, seed=31, lengths=[3, 0, 1, 2] * 8)
    small, small_bwd = make_case(3, TENSOR_MIN_BATCH - 1, 6, 10, np.float32, seed=32)
    # auto below the rule: persistent (B <= 64, fits the emulated device) with the recurrence in fp32
    for precision in PRECISIONS:
        for f, b in ((fwd, bwd), (small, small_bwd)):
            run_cuda_precision(f, b, precision)
            assert _ran("forward").startswith("persistent forward") and "recurrent product fp32" in _ran("forward")
            assert _ran("backward").startswith("persistent backward")
    # fp32 at B >= 32: never the tensor path, and the same bits as forcing its path
    auto = run_cuda(fwd, bwd)
    assert _ran("forward").startswith("persistent forward") and "tensor" not in _ran("forward")
    assert _ran("backward").startswith("persistent backward") and "tensor" not in _ran("backward")
    fcuda.set_kernel_path("persistent")
    forced = run_cuda(fwd, bwd)
    assert_bitwise_equal(tuple(auto[0]) + tuple(auto[1]), tuple(forced[0]) + tuple(forced[1]))
    check_against_reference(fwd, bwd, auto[0], auto[1], TOL[np.dtype(np.float32)])
    # simt / persistent forced with tf32: the recurrence stays fp32 (today's behaviour)
    for path in ("simt", "persistent"):
        fcuda.set_kernel_path(path)
        run_cuda_precision(fwd, bwd, "tf32")
        assert _ran("forward").startswith(f"{path} forward") and "recurrent product fp32" in _ran("forward")
        assert _ran("backward").startswith(f"{path} backward") and "recurrent product fp32" in _ran("backward")
    # forced "tensor" in fp32 (float32 or float64): a clear error, forward and backward
    fcuda.set_kernel_path("tensor")
    with pytest.raises(RuntimeError, match=r"kernel path 'tensor'.*needs precision 'tf32', 'bf16' or 'tf32x3'"):
        run_cuda(fwd, bwd)
    fwd64, bwd64 = make_case(3, 2, 4, 5, np.float64, seed=33)
    with pytest.raises(RuntimeError, match=r"kernel path 'tensor'.*needs precision"):
        run_cuda(fwd64, bwd64)
    fcuda.set_kernel_path("simt")
    saved = ops.lstm_forward(**fwd, backend="cuda")[3]
    fcuda.set_kernel_path("tensor")
    with pytest.raises(RuntimeError, match=r"tensor-core recurrent backward .*needs precision"):
        ops.lstm_backward(saved, **bwd)
    # forced "tensor" at small B runs it; the environment variable names it too
    fcuda.set_kernel_path(None)
    monkeypatch.setenv("FASTLSTM_CUDA_KERNEL", "tensor")
    assert fcuda.kernel_path() == "tensor" and fastlstm.cuda_info()["kernel_path"] == "tensor"
    run_cuda_precision(small, small_bwd, "bf16")
    _assert_ran_tensor("bf16")
    assert "forced" in _ran("forward") and "forced" in _ran("backward")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_emulated_tensor_padding_empty_work_and_no_leaks(emu, emu_lib, precision):
    import gc
    fcuda.set_kernel_path("tensor")
    gc.collect()
    before = emu_lib.fl_emu_live_allocations()
    T, B = 5, 6
    lengths = [0, 1, 5, 3, 0, 2]
    fwd, bwd = make_case(T, B, 7, 3, np.float32, seed=11, lengths=lengths, reverse=True)
    for b, L in enumerate(lengths):
        fwd["x"][L:, b] = np.nan  # padding: must not leak anywhere
    outs, grads, _ = run_cuda_precision(fwd, bwd, precision)
    _assert_ran_tensor(precision)
    y, h_n, c_n = outs
    dx, dh0, dc0 = grads[:3]
    for name, a in zip(FWD_NAMES + BWD_NAMES, tuple(outs) + tuple(grads)):
        assert np.isfinite(a).all(), f"{name}: NaN from x at a padding position"
    for b, L in enumerate(lengths):
        assert np.all(y[L:, b] == 0) and np.all(dx[L:, b] == 0)
        if L == 0:  # never started: the state and its gradients carry over exactly
            np.testing.assert_array_equal(h_n[b], fwd["h0"][b])
            np.testing.assert_array_equal(c_n[b], fwd["c0"][b])
            np.testing.assert_array_equal(dh0[b], bwd["dh_n"][b])
            np.testing.assert_array_equal(dc0[b], bwd["dc_n"][b])
        else:
            np.testing.assert_array_equal(h_n[b], y[0, b])  # reverse: the last step is at t = 0
    for T, B, lens in ((0, 3, None), (3, 0, None), (4, 3, [0, 0, 0])):
        fwd, bwd = make_case(T, B, 4, 17, np.float32, seed=18, lengths=lens)
        (y, h_n, c_n), (dx, dh0, dc0, dk, dr, db), _ = run_cuda_precision(fwd, bwd, precision)
        assert np.all(y == 0) and np.all(dx == 0) and np.all(dk == 0) and np.all(dr == 0) and np.all(db == 0)
        np.testing.assert_array_equal(h_n, fwd["h0"])
        np.testing.assert_array_equal(dh0, bwd["dh_n"])
        np.testing.assert_array_equal(dc0, bwd["dc_n"])
    del _  # the saved forward (device buffers)
    gc.collect()
    assert emu_lib.fl_emu_live_allocations() == before


# ---- the per-step GEMM alone: k-slice partial products against NumPy on the rounded operands

def _run_step_gemm(ext, precision, large, kslice, M, N, K, layout, seed):
    """ext.step_matmul on uploaded operands (layout "fwd": B k-major like R in h . R; "bwd": B
    n-major like R read as R^T in dz . R^T). Returns (partials (S, M, N), A, B, description)."""
    rng = np.random.default_rng(seed)
    a, sam, sak, b, sbk, sbn, A, Bm = _gemm_operands(M, N, K, "nn" if layout == "fwd" else "nt", rng)
    splits = 1 if K == 0 else (-(-K // kslice) if kslice > 0 else None)
    if splits is None:  # the planner's choice: allocate for the most slices it can make
        splits = max(1, -(-K // 64))
    c0 = np.full((splits, M, N), np.nan, np.float32)
    bufs = []
    for arr in (a, b, c0):
        buf = ext.Buffer(arr.nbytes, 0)
        buf.upload(np.ascontiguousarray(arr))
        bufs.append(buf)
    ran = ext.step_matmul(precision, large, kslice, M, N, K, bufs[0].ptr, sam, sak, bufs[1].ptr, sbk, sbn,
                          bufs[2].ptr)
    c = np.empty_like(c0)
    bufs[2].download(c)
    used = int(ran.split(" x ")[1].split()[0])
    assert np.all(np.isnan(c[used:])), "a slice past the plan's count was written"
    return c[:used], A, Bm, ran


def check_step_gemm(parts, A, Bm, kslice, precision):
    """Each partial within gemm_tol of the float64 product of the rounded (tf32x3: split)
    operands over its k slice, and their sum (in order) within that of the whole product."""
    assert np.isfinite(parts).all(), "unwritten outputs"
    for z in range(parts.shape[0]):
        k0, k1 = z * kslice, min(A.shape[1], (z + 1) * kslice)
        want = model_product(A[:, k0:k1], Bm[k0:k1], precision)
        err = rel_err(parts[z], want) if np.any(want) else float(np.abs(parts[z]).max(initial=0))
        assert err <= gemm_tol(k1 - k0, precision), f"slice {z}: {err:.3g}"
    total = parts[0].astype(np.float32)
    for z in range(1, parts.shape[0]):
        total = total + parts[z]
    assert rel_err(total, model_product(A, Bm, precision)) <= gemm_tol(kslice, precision) + GEMM_TOL


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("layout", ["fwd", "bwd"])
def test_emulated_step_gemm_k_slices(emu, precision, layout):
    # (large tile, kslice, M, N, K): one slice, several, a short last slice, K = 0, edge tiles
    shapes = [(False, 64, 5, 36, 40), (False, 32, 64, 130, 100), (False, 64, 65, 20, 129),
              (True, 96, 70, 140, 200), (True, 128, 129, 17, 64), (False, 32, 3, 8, 0)]
    for i, (large, kslice, M, N, K) in enumerate(shapes):
        parts, A, Bm, ran = _run_step_gemm(emu, precision, large, kslice, M, N, K, layout, seed=300 + i)
        assert ran == f"{'128x128' if large else '64x128'} tiles x {max(1, -(-K // kslice))} k-slices", ran
        if K == 0:
            assert np.all(parts == 0)
            continue
        check_step_gemm(parts, A, Bm, kslice, precision)
    # the planner: 64 x 128 tiles for M <= 64, slices to fill the emulated SMs
    emu.set_device(sm_count=16)
    parts, A, Bm, ran = _run_step_gemm(emu, precision, False, 0, 40, 72, 300, layout, seed=9)
    assert ran == "64x128 tiles x 5 k-slices", ran  # 10 passes, 16 SMs / 1 block, >= 2 passes a slice
    check_step_gemm(parts, A, Bm, 64, precision)
    parts2 = _run_step_gemm(emu, precision, False, 0, 40, 72, 300, layout, seed=9)[0]
    emu.set_reverse_order(True)
    emu.set_guard_front(True)
    parts3 = _run_step_gemm(emu, precision, False, 0, 40, 72, 300, layout, seed=9)[0]
    np.testing.assert_array_equal(parts.view(np.uint32), parts2.view(np.uint32))
    np.testing.assert_array_equal(parts.view(np.uint32), parts3.view(np.uint32))


# ---- on a GPU

TENSOR_GPU_CASES = {
    # name: (spec, kernel path)
    "B64_H1024_I256_T3_auto": (dict(T=3, B=64, I=256, H=1024, lengths=[3, 2, 0, 1] * 16), "auto"),
    "B256_H1024_I64_T2_reverse_auto": (dict(T=2, B=256, I=64, H=1024, reverse=True), "auto"),
    "B100_H1000_I30_T4_auto": (dict(T=4, B=100, I=30, H=1000, lengths=[(b * 3) % 5 for b in range(100)]),
                               "auto"),
    "B33_H129_I17_T6": (dict(T=6, B=33, I=17, H=129, reverse=True, dy=False), "tensor"),
    **{k: (spec, "tensor") for k, (spec, _, _) in TENSOR_CASES.items()},
}


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", list(TENSOR_GPU_CASES))
def test_gpu_tensor_recurrence_matches_reference(name, precision, kernel_path_reset):
    spec, path = TENSOR_GPU_CASES[name]
    fcuda.set_kernel_path(path)
    fwd, bwd = make_case(dtype=np.float32, seed=zlib.crc32(name.encode()), **spec)
    outs, grads, _ = run_cuda_precision(fwd, bwd, precision)
    _assert_ran_tensor(precision)
    errs = check_tensor_against_reference(fwd, bwd, outs, grads, precision, TENSOR_TIGHT_GPU[precision])
    print(name, precision, {k: f"{v:.2e}" for k, v in errs.items()})
    again = run_cuda_precision(fwd, bwd, precision)
    assert_bitwise_equal(tuple(outs) + tuple(grads), tuple(again[0]) + tuple(again[1]))
    assert_bitwise_equal(outs, run_cuda_precision(fwd, bwd, precision, training=False)[0])


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gpu_tensor_recurrence_is_rounded_and_fp32_unaffected(precision, kernel_path_reset):
    fwd, bwd = make_case(4, 64, 32, 256, np.float32, seed=41, lengths=[4, 3, 0, 2] * 16, reverse=True)
    floor = UNIT[precision] / 25
    fcuda.set_kernel_path("simt")
    simt_outs, simt_grads, saved = run_cuda_precision(fwd, bwd, precision)
    fcuda.set_kernel_path("tensor")
    tc_outs, _, _ = run_cuda_precision(fwd, bwd, precision)
    _assert_ran_tensor(precision)
    assert floor <= rel_err(tc_outs[0], simt_outs[0]) <= TENSOR_TOL[precision][0]
    tensor_grads = ops.lstm_backward(saved, **bwd)
    _assert_ran_tensor(precision, "backward")
    assert floor <= rel_err(tensor_grads[1], simt_grads[1]) <= TENSOR_TOL[precision][1]
    # auto below the rule (B H^2 = 2^22): not the tensor path
    fcuda.set_kernel_path("auto")
    run_cuda_precision(fwd, bwd, precision)
    assert "tensor-core recurrent" not in _ran("forward") + _ran("backward")
    # fp32 at the same B: not the tensor path, the same bits as the paths auto picks, forced
    auto = run_cuda(fwd, bwd)
    assert "tensor" not in _ran("forward") and "tensor" not in _ran("backward")
    picked = (_ran("forward").split(" forward")[0], _ran("backward").split(" backward")[0])
    fcuda.set_kernel_path(picked[0])
    forced = run_cuda(fwd, bwd)
    assert_bitwise_equal(auto[0], forced[0])
    if picked[0] == picked[1]:
        assert_bitwise_equal(auto[1], forced[1])
    check_against_reference(fwd, bwd, auto[0], auto[1], TOL[np.dtype(np.float32)])


# --------------------------------------------------------------------------- precision tf32x3
# precision="tf32x3" (float32 only): the same tensor-core kernels as "tf32", but each operand v
# is split into hi = tf32(v) and lo = tf32(v - hi) once its fragment is loaded, and each product
# is accumulated as lo.hi + hi.lo + hi.hi (three MMAs; the lo.lo term, <= 2^-22 |a b|, is left
# out). hi + lo keeps 22 of float32's 24 significant bits, so the products are float32-accurate
# up to ~2^-21 relative, below float32 accumulation over the sums' lengths. The claim is
# float32's accuracy, so the bound is float32's: TOL (2e-6) for every output and gradient
# against the float64 reference, on every kernel path (the recurrent products too on the
# tensor path), and GEMM_TOL (2e-6) for the GEMM against the exact product. A term dropped or
# an operand left unsplit gives tf32-sized errors (~1e-4), 50x over; the emulator refuses
# unrounded operands at mma_sync, so a kernel that skipped the split cannot pass as float32.
# The tensor cores' accumulation truncates (csrc/cuda/emu/emu_wmma.h models it): inside the
# MMAs it cost tf32x3 its float32 accuracy on an H200 (2026-11-27: GEMM 4.2e-6 from the exact
# product at K = 300, an LSTM's dx 4.6e-5 at K = 4H = 4096), so each k-step's product is added
# to the accumulator in float32 outside them (csrc/cuda/tensor_gemm.cuh). The emulator's model of the truncation is
# calibrated to the H200's errors; with it, the kernel that accumulated inside the MMAs fails
# test_emulated_tf32x3_gemm_is_float32_accurate on the emulator too (checked 2026-11-27).
X3 = "tf32x3"
X3_PATH_CASES = ["B5_H9_I17_unsorted_lengths", "H130_B3_TB_over_64", "I33_H17_B7_reverse_nobias",
                 "T1_B1_I1_H1", "I5_H3_len_0_1_T_reverse", "dy_None"]


def test_numpy_split_tf32_model():
    rng = np.random.default_rng(3)
    a = rng.standard_normal(1000).astype(np.float32) * np.float32(10.0) ** rng.integers(-3, 4, 1000)
    hi, lo = split_tf32(a)
    assert not np.any(round_tf32(hi) != hi) and not np.any(round_tf32(lo) != lo)  # both tf32 values
    err = np.abs((hi.astype(np.float64) + lo) - a) / np.abs(a)
    assert err.max() <= 2.0 ** -21 and err.max() > 2.0 ** -26  # 22 bits kept, not all 24
    assert np.abs(round_tf32(a).astype(np.float64) - a).max() / np.abs(a).max() > 2.0 ** -16


@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
def test_emulated_tf32x3_gemm_is_float32_accurate(emu, layout):
    errs = []
    for i, (M, N, K) in enumerate(GEMM_SHAPES):
        C, A, B, bias, ran = _run_gemm(emu, X3, M, N, K, layout, seed=400 + i, bias=i % 2 == 0)
        assert ran == _tc_desc(X3, M, N, K), ran
        errs.append(check_gemm(C, A, B, bias, X3))
        if K >= 16:  # tf32 on the same operands is ~1e-4 off: the split is what buys the bits
            tf32 = _run_gemm(emu, "tf32", M, N, K, layout, seed=400 + i, bias=i % 2 == 0)[0]
            exact = A.astype(np.float64) @ B.astype(np.float64) + (0 if bias is None else bias)
            assert rel_err(C, exact) * 50 < rel_err(tf32, exact), (rel_err(C, exact), rel_err(tf32, exact))
    print(layout, "tf32x3 gemm vs model", [f"{e:.1e}" for e in errs])
    first = _run_gemm(emu, X3, 130, 67, 45, layout, seed=7)[0]
    emu.set_reverse_order(True)
    emu.set_guard_front(True)
    second = _run_gemm(emu, X3, 130, 67, 45, layout, seed=7)[0]
    np.testing.assert_array_equal(first.view(np.uint32), second.view(np.uint32))


@pytest.mark.parametrize("layout", ["fwd", "bwd"])
def test_emulated_tf32x3_step_gemm_k_slices(emu, layout):
    for i, (large, kslice, M, N, K) in enumerate([(False, 64, 5, 36, 40), (True, 96, 70, 140, 200),
                                                   (False, 32, 64, 130, 100)]):
        parts, A, Bm, ran = _run_step_gemm(emu, X3, large, kslice, M, N, K, layout, seed=500 + i)
        assert ran == f"{'128x128' if large else '64x128'} tiles x {-(-K // kslice)} k-slices", ran
        check_step_gemm(parts, A, Bm, kslice, X3)
        total = parts.astype(np.float64).sum(axis=0)
        assert rel_err(total, A.astype(np.float64) @ Bm.astype(np.float64)) <= GEMM_TOL


@pytest.mark.parametrize("path", ["simt", "persistent"])
@pytest.mark.parametrize("name", X3_PATH_CASES)
def test_emulated_tf32x3_matches_reference_to_fp32_tolerance(emu, name, path):
    fwd, bwd, outs, grads = _run_prec_case_on_path(emu, name, path, X3)
    tol = TOL[np.dtype(np.float32)]
    errs = _errors_within(fwd, bwd, outs, grads, (tol, tol), X3)
    print(name, path, {k: f"{v:.1e}" for k, v in errs.items()})
    for kind in ("forward", "backward"):
        assert _ran(kind).startswith(f"{path} {kind}"), _ran(kind)
        assert f"GEMMs: {X3} tensor cores" in _ran(kind) and "recurrent product fp32" in _ran(kind), _ran(kind)
    if path == "simt":
        _assert_repeatable_in_any_order(emu, fwd, bwd, X3, outs, grads)


@pytest.mark.parametrize("name", list(TENSOR_CASES))
def test_emulated_tf32x3_tensor_recurrence_matches_reference_to_fp32_tolerance(emu, name):
    spec, sms, path, fwd, bwd = _tensor_case(name)
    emu.set_device(sm_count=sms)
    fcuda.set_kernel_path(path)
    outs, grads, _ = run_cuda_precision(fwd, bwd, X3)
    _assert_ran_tensor(X3)
    tol = TOL[np.dtype(np.float32)]
    errs = _errors_within(fwd, bwd, outs, grads, (tol, tol), f"{X3}, tensor path")
    print(name, {k: f"{v:.1e}" for k, v in errs.items()})
    # against plain tf32 on the same path: ~1e-4 apart (the split really happened in the
    # recurrence too: with h . R in tf32, y would be tf32-sized off)
    tf32_outs = run_cuda_precision(fwd, bwd, "tf32")[0]
    if spec["H"] >= 9:
        assert rel_err(tf32_outs[0], outs[0]) >= PREC_FLOOR["tf32"], rel_err(tf32_outs[0], outs[0])
    _assert_repeatable_in_any_order(emu, fwd, bwd, X3, outs, grads)
    assert_bitwise_equal(outs, run_cuda_precision(fwd, bwd, X3, training=False)[0])


def test_emulated_tf32x3_auto_rule_and_errors(emu):
    # auto takes the tensor path for tf32x3 on the same rule as tf32 / bf16 (B >= 32, B H^2 >= 2^25)
    big, _ = make_case(1, TENSOR_MIN_BATCH, 1, 1024, np.float32, seed=30, lengths=[1, 0] * 16)
    y = ops.lstm_forward(**big, backend="cuda", precision=X3, training=False)[0]
    _assert_ran_tensor(X3, "forward")
    assert f"auto: B >= {TENSOR_MIN_BATCH}" in _ran("forward")
    want = reference.lstm_forward(**{k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f"
                                         else v) for k, v in big.items()}, training=False)[0]
    assert rel_err(y, want) <= TOL[np.dtype(np.float32)], rel_err(y, want)
    fwd64, _ = make_case(4, 3, 5, 2, np.float64, seed=1)
    with pytest.raises(ValueError, match=rf"precision='{X3}' takes float32 inputs.*float64"):
        ops.lstm_forward(**fwd64, backend="cuda", precision=X3)
    with pytest.raises(RuntimeError, match="takes float32 data"):
        emu.forward("float64", (2, 1, 3, 4), *([0] * 7), False, *([0] * 5), 0, 0, precision=X3)
    with pytest.raises(ValueError, match=r"precision=.tf32x3. needs backend=.cuda."):
        ops.lstm_forward(*make_case(2, 1, 3, 4, np.float32, seed=1)[0].values(), backend="cpu",
                         precision=X3)
    fwd, _ = make_case(3, 2, 4, 5, np.float32, seed=2)
    emu.set_capability(7, 5)
    with pytest.raises(RuntimeError, match=rf"precision '{X3}' needs tensor cores of compute capability 8\.0"):
        ops.lstm_forward(**fwd, backend="cuda", precision=X3)


# ---- tc-gemm-v2: the tensor-core GEMM with its operands staged by a cp.async pipeline
# (FASTLSTM_CUDA_GEMM_PIPELINE=1; tf32 / tf32x3 only). Same tiles, fragments, k order and
# epilogue as the default kernel, so its results must be the same bits; the emulator defers each
# thread's copies to its wait (a stage read before its copies landed reads old data or the NaN
# bytes of a fresh launch).

PIPE = "FASTLSTM_CUDA_GEMM_PIPELINE"
PIPE_PRECISIONS = ("tf32", X3)
# M, N, K multiples of 4 (16-byte copies along every operand layout): edge tiles, one pass,
# passes that wrap the 3-stage ring several times, K = 0, a 4 x 4 x 4 corner
PIPE_SHAPES = [(132, 68, 44), (128, 128, 64), (36, 260, 100), (200, 20, 300), (8, 12, 0), (4, 4, 4)]


@pytest.mark.parametrize("eager", [False, True], ids=["copies_at_wait", "copies_at_once"])
@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
@pytest.mark.parametrize("precision", PIPE_PRECISIONS)
def test_emulated_pipelined_gemm_is_bitwise_the_default_kernel(emu, monkeypatch, precision, layout, eager):
    # copies deferred to the wait: a stage read too early shows; landing at once: a stage
    # refilled while other threads still read it shows
    emu.set_async_eager(eager)
    for i, (M, N, K) in enumerate(PIPE_SHAPES):
        monkeypatch.delenv(PIPE, raising=False)
        C0, A, B, bias, ran0 = _run_gemm(emu, precision, M, N, K, layout, seed=500 + i, bias=i % 2 == 0, pad=4)
        assert ran0 == _tc_desc(precision, M, N, K), ran0
        monkeypatch.setenv(PIPE, "1")
        C1, _, _, _, ran1 = _run_gemm(emu, precision, M, N, K, layout, seed=500 + i, bias=i % 2 == 0, pad=4)
        assert ran1 == _tc_desc(precision, M, N, K, kind="wmma + cp.async"), (M, N, K, ran1)
        check_gemm(C1, A, B, bias, precision)
        np.testing.assert_array_equal(C1.view(np.uint32), C0.view(np.uint32), err_msg=str((M, N, K)))
    # reversed thread and block order, guard page in front: the same bits
    monkeypatch.setenv(PIPE, "1")
    first = _run_gemm(emu, precision, 200, 20, 300, layout, seed=7, pad=4)[0]
    emu.set_reverse_order(True)
    emu.set_guard_front(True)
    second, _, _, _, ran = _run_gemm(emu, precision, 200, 20, 300, layout, seed=7, pad=4)
    assert ran == _tc_desc(precision, 200, 20, 300, kind="wmma + cp.async") and "k-slices" in ran, ran
    np.testing.assert_array_equal(first.view(np.uint32), second.view(np.uint32))


@pytest.mark.parametrize("eager", [False, True], ids=["copies_at_wait", "copies_at_once"])
@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
def test_emulated_pipelined_bf16_gemm_from_copies_is_bitwise_the_default(emu, monkeypatch, layout, eager):
    # bf16: both operands converted to bf16 copies (the default kernel's staging rounding),
    # then the pipelined kernel; M, N, K multiples of 8 (16-byte rows of bf16)
    emu.set_async_eager(eager)
    for i, (M, N, K) in enumerate([(136, 72, 48), (128, 128, 64), (40, 264, 104), (8, 16, 296)]):
        monkeypatch.delenv(PIPE, raising=False)
        C0, A, B, bias, ran0 = _run_gemm(emu, "bf16", M, N, K, layout, seed=900 + i, bias=i % 2 == 0)
        assert ran0 == _tc_desc("bf16", M, N, K), ran0
        monkeypatch.setenv(PIPE, "1")
        C1, _, _, _, ran1 = _run_gemm(emu, "bf16", M, N, K, layout, seed=900 + i, bias=i % 2 == 0)
        assert ran1 == _tc_desc("bf16", M, N, K, kind="wmma + cp.async, bf16 copies"), ran1
        check_gemm(C1, A, B, bias, "bf16")
        np.testing.assert_array_equal(C1.view(np.uint32), C0.view(np.uint32), err_msg=str((M, N, K)))


@pytest.mark.parametrize("precision", PIPE_PRECISIONS + ("bf16",))
def test_emulated_pipelined_gemm_falls_back_where_it_cannot_copy(emu, monkeypatch, precision):
    # extents that are not multiples of 4 floats (bf16: 8) along a unit-stride axis: the
    # default kernel runs, correctly
    monkeypatch.setenv(PIPE, "1")
    for i, (M, N, K, layout) in enumerate([(130, 67, 45, "nn"), (33, 260, 100, "tn"), (40, 20, 30, "nt"),
                                           (128, 128, 68, "nn")]):
        if precision != "bf16" and i == 3:
            continue  # aligned for float32 copies: pipelined (the test above)
        C, A, B, bias, ran = _run_gemm(emu, precision, M, N, K, layout, seed=600 + i)
        assert ran == _tc_desc(precision, M, N, K), (M, N, K, layout, ran)
        check_gemm(C, A, B, bias, precision)
    if precision != "bf16":
        # a device whose blocks get 99 KB of shared memory (sm_86 / sm_89): the 128 x 128 ring
        # (101-111 KB) does not fit, so the old kernel runs there
        emu.set_device(smem_per_block_optin=99 * 1024, smem_per_sm=100 * 1024)
        C, A, B, bias, ran = _run_gemm(emu, precision, 128, 128, 64, "nn", seed=610)
        assert ran == _tc_desc(precision, 128, 128, 64), ran
        check_gemm(C, A, B, bias, precision)


@pytest.mark.parametrize("eager", [False, True], ids=["copies_at_wait", "copies_at_once"])
@pytest.mark.parametrize("precision", PIPE_PRECISIONS)
@pytest.mark.parametrize("layout", ["fwd", "bwd"])
def test_emulated_pipelined_step_gemm_k_slices(emu, monkeypatch, precision, layout, eager):
    # the per-step products' k slices (split-K grid): each slice's pipeline starts at its own k
    emu.set_async_eager(eager)
    shapes = [(False, 64, 8, 36, 40), (False, 32, 64, 128, 100), (False, 96, 68, 20, 292),
              (True, 96, 72, 140, 200), (True, 128, 132, 16, 64)]
    for i, (large, kslice, M, N, K) in enumerate(shapes):
        monkeypatch.delenv(PIPE, raising=False)
        parts0, A, Bm, ran0 = _run_step_gemm(emu, precision, large, kslice, M, N, K, layout, seed=700 + i)
        monkeypatch.setenv(PIPE, "1")
        parts1, _, _, ran1 = _run_step_gemm(emu, precision, large, kslice, M, N, K, layout, seed=700 + i)
        assert ran1 == ran0 + " (cp.async)", (ran0, ran1)
        check_step_gemm(parts1, A, Bm, kslice, precision)
        np.testing.assert_array_equal(parts1.view(np.uint32), parts0.view(np.uint32))


@pytest.mark.parametrize("precision", PIPE_PRECISIONS + ("bf16",))
def test_emulated_pipelined_lstm_tensor_path_is_bitwise_the_default(emu, monkeypatch, precision):
    # The LSTM on kernel path "tensor" with H % 4 == 0 (the step products pipelined) and on the
    # simt path (the large products pipelined where x, kernel and dz allow): the same bits.
    emu.set_device(sm_count=64)
    for spec, path in ((dict(T=4, B=20, I=12, H=16, reverse=True, lengths=[(3 * b) % 5 for b in range(20)]), "tensor"),
                       (dict(T=3, B=70, I=8, H=12, lengths=[(b * 5) % 4 for b in range(70)]), "tensor"),
                       (dict(T=3, B=6, I=16, H=8), "simt")):
        fcuda.set_kernel_path(path)
        fwd, bwd = make_case(dtype=np.float32, seed=41, **spec)
        monkeypatch.delenv(PIPE, raising=False)
        outs0, grads0, _ = run_cuda_precision(fwd, bwd, precision)
        monkeypatch.setenv(PIPE, "1")
        outs1, grads1, _ = run_cuda_precision(fwd, bwd, precision)
        unit = 8 if precision == "bf16" else 4  # elements per 16-byte copy
        for kind in ("forward", "backward"):
            if spec["I"] % unit == 0 and spec["H"] % unit == 0:  # every large product can be copied
                assert f"GEMMs: {precision} tensor cores (wmma + cp.async" in _ran(kind), _ran(kind)
            if path == "tensor" and spec["H"] % unit == 0:
                assert f"{precision} wmma + cp.async, " in _ran(kind), _ran(kind)
        assert_bitwise_equal(tuple(outs1) + tuple(grads1), tuple(outs0) + tuple(grads0))
        if path == "tensor" and precision == "tf32":
            check_tensor_against_reference(fwd, bwd, outs1, grads1, precision)



@pytest.mark.parametrize("eager", [False, True], ids=["copies_at_wait", "copies_at_once"])
def test_emulated_pipelined_bf16_tensor_path_is_bitwise_the_default(emu, monkeypatch, eager):
    # bf16 on the tensor path with the pipeline: the step products read bf16 copies of R and of
    # h / dz made with the rounding the default kernel applies while staging, so the same bits;
    # H % 8 != 0 (no 16-byte rows of bf16) keeps the default kernel
    emu.set_device(sm_count=64)
    emu.set_async_eager(eager)
    fcuda.set_kernel_path("tensor")
    for spec, bf16_copies in ((dict(T=4, B=20, I=12, H=16, reverse=True, lengths=[(3 * b) % 5 for b in range(20)]),
                               True),
                              (dict(T=3, B=70, I=8, H=24, lengths=[(b * 5) % 4 for b in range(70)]), True),
                              (dict(T=3, B=9, I=5, H=12), False)):
        fwd, bwd = make_case(dtype=np.float32, seed=47, **spec)
        monkeypatch.delenv(PIPE, raising=False)
        outs0, grads0, _ = run_cuda_precision(fwd, bwd, "bf16")
        assert "bf16 copies" not in _ran("forward") + _ran("backward")
        monkeypatch.setenv(PIPE, "1")
        outs1, grads1, _ = run_cuda_precision(fwd, bwd, "bf16")
        if bf16_copies:
            assert "bf16 wmma + cp.async, bf16 copies of R and h, " in _ran("forward"), _ran("forward")
            assert "bf16 wmma + cp.async, bf16 copies of R and dz, " in _ran("backward"), _ran("backward")
        else:
            assert "bf16 wmma, " in _ran("forward") and "bf16 wmma, " in _ran("backward")
        assert_bitwise_equal(tuple(outs1) + tuple(grads1), tuple(outs0) + tuple(grads0))
        check_tensor_against_reference(fwd, bwd, outs1, grads1, "bf16")


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("precision", PIPE_PRECISIONS)
def test_gpu_pipelined_gemm_is_bitwise_the_default_kernel(monkeypatch, precision, kernel_path_reset):
    # on the card: the cp.async ring gives the old kernel's bits (GEMM alone, every layout, and
    # the LSTM on the tensor path, whose step products are k-sliced). Cards with 99 KB of shared
    # memory per block (sm_86 / 89 / 120) run every 128 x 128 tf32 ring on the old kernel.
    from fastlstm import _cuda
    big_smem = tuple(_cuda.device_properties(0)["capability"]) in ((8, 0), (9, 0), (10, 0))
    for layout in ("nn", "tn", "nt", "tt"):
        for i, (M, N, K) in enumerate(PIPE_SHAPES + [(1000, 520, 700), (64, 4096, 3000)]):
            monkeypatch.delenv(PIPE, raising=False)
            C0, A, B, bias, _ = _run_gemm(_cuda, precision, M, N, K, layout, seed=800 + i, bias=i % 2 == 0)
            monkeypatch.setenv(PIPE, "1")
            C1, _, _, _, ran = _run_gemm(_cuda, precision, M, N, K, layout, seed=800 + i, bias=i % 2 == 0)
            sms = fastlstm.cuda_info()["sm_count"]
            assert ran == _tc_desc(precision, M, N, K, sms, "wmma + cp.async") or not big_smem, ran
            check_gemm(C1, A, B, bias, precision)
            np.testing.assert_array_equal(C1.view(np.uint32), C0.view(np.uint32), err_msg=str((M, N, K, layout)))
    fcuda.set_kernel_path("tensor")
    fwd, bwd = make_case(dtype=np.float32, seed=43, T=5, B=72, I=36, H=64, reverse=True,
                         lengths=[(3 * b) % 6 for b in range(72)])
    monkeypatch.delenv(PIPE, raising=False)
    outs0, grads0, _ = run_cuda_precision(fwd, bwd, precision)
    monkeypatch.setenv(PIPE, "1")
    outs1, grads1, _ = run_cuda_precision(fwd, bwd, precision)
    assert f"{precision} wmma + cp.async, " in _ran("forward") and f"{precision} wmma + cp.async, " in _ran("backward")
    assert_bitwise_equal(tuple(outs1) + tuple(grads1), tuple(outs0) + tuple(grads0))


@pytest.mark.cuda
@gpu
def test_gpu_pipelined_bf16_tensor_path_is_bitwise_the_default(monkeypatch, kernel_path_reset):
    # on the card: bf16 step products from bf16 copies of R and h / dz, the same bits
    fcuda.set_kernel_path("tensor")
    fwd, bwd = make_case(dtype=np.float32, seed=53, T=5, B=72, I=36, H=64, reverse=True,
                         lengths=[(3 * b) % 6 for b in range(72)])
    monkeypatch.delenv(PIPE, raising=False)
    outs0, grads0, _ = run_cuda_precision(fwd, bwd, "bf16")
    monkeypatch.setenv(PIPE, "1")
    outs1, grads1, _ = run_cuda_precision(fwd, bwd, "bf16")
    assert "bf16 copies of R and h" in _ran("forward") and "bf16 copies of R and dz" in _ran("backward")
    assert_bitwise_equal(tuple(outs1) + tuple(grads1), tuple(outs0) + tuple(grads0))

@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("precision", PRECISIONS + (X3, "fp32"))
def test_gpu_step_matmul_binding(precision):
    # _cuda.step_matmul (bench/gpu_gemm_ab.py times it): the plan's k-slice partials, `repeat`
    # times into the same place; their sum is the product; C too small is refused. fp32: kernel
    # path "tiled"'s SIMT split-k product
    from fastlstm import _cuda
    rng = np.random.default_rng(5)
    M, N, K = 40, 72, 300
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bm = rng.standard_normal((K, N)).astype(np.float32)
    c = np.full(16 * M * N, np.nan, np.float32)
    bufs = [_cuda.Buffer(v.nbytes, 0) for v in (A, Bm, c)]
    for buf, v in zip(bufs, (A, Bm, c)):
        buf.upload(v)
    ran = _cuda.step_matmul(precision, M, N, K, bufs[0].ptr, K, 1, bufs[1].ptr, N, 1, bufs[2].ptr, c.size, 3, 0, 0)
    bufs[2].download(c)
    splits = int(ran.split(" x ")[1].split()[0])
    parts = c.reshape(16, M, N)
    assert np.isfinite(parts[:splits]).all() and np.isnan(parts[splits:]).all(), ran
    total = parts[0].copy()
    for z in range(1, splits):
        total = total + parts[z]
    err = rel_err(total, model_product(A, Bm, precision))
    assert err <= gemm_tol(K, precision) + GEMM_TOL, (ran, err)
    with pytest.raises(RuntimeError, match="C holds"):
        _cuda.step_matmul(precision, M, N, K, bufs[0].ptr, K, 1, bufs[1].ptr, N, 1, bufs[2].ptr, M * N - 1, 1, 0, 0)
    # another slicing than the plan's (the benchmark's sweep): 64 k per slice, 5 slices
    c[:] = np.nan
    bufs[2].upload(c)
    ran = _cuda.step_matmul(precision, M, N, K, bufs[0].ptr, K, 1, bufs[1].ptr, N, 1, bufs[2].ptr, c.size, 1, 0, 0,
                            kslice=64)
    bufs[2].download(c)
    assert " x 5 k-slices" in ran, ran
    assert np.isfinite(parts[:5]).all() and np.isnan(parts[5:]).all(), ran
    total = parts[0].copy()
    for z in range(1, 5):
        total = total + parts[z]
    assert rel_err(total, model_product(A, Bm, precision)) <= gemm_tol(K, precision) + GEMM_TOL, ran
    for bad, match in ((36, "kslice must be a multiple of"), (-1, "kslice must be >= 0")):
        with pytest.raises(RuntimeError, match=match):
            _cuda.step_matmul(precision, M, N, K, bufs[0].ptr, K, 1, bufs[1].ptr, N, 1, bufs[2].ptr, c.size, 1, 0, 0,
                              kslice=bad)


# --------------------------------------------------------------------------- kernel path "tiled"
# set_kernel_path("tiled") (float32 data; auto never takes it until it is measured on a GPU):
# the tensor path's structure -- each step's recurrent product into k-slice partials, then the
# pointwise kernels that add them in order -- with the products on the CUDA cores in fp32
# (simt_step_kernel: gemm_big_kernel's body over one k slice, 64 x 128 tiles for M <= 64 rows,
# else 128 x 128). Each partial is summed in k order with one multiply and one add per k, so in
# the emulator (no FMA) it is bitwise the sequential float32 sum over its slice; the LSTM is
# held to fp32's tolerance against the float64 reference (TOL: the summation order differs from
# simt's, the accuracy class does not).

def _plan_tiled(M, N, K, sms):
    """tiled_plan's choice, as its description: 64 x 128 tiles for M <= 64, else 128 x 128; as
    many k slices (<= 32 and <= ceil(K / 128), so more than 64 k each; whole 8-k passes) as keep
    the grid within two blocks per SM."""
    large = M > 64
    blocks = -(-M // (128 if large else 64)) * -(-N // 128)
    want = (2 * sms) // blocks if 0 < blocks < 2 * sms else 1
    want = max(1, min(want, 32, -(-K // 128)))
    kslice = -(-(-(-K // want)) // 8) * 8
    splits = -(-K // kslice) if K > 0 else 1
    return f"{'128x128' if large else '64x128'} tiles x {splits} k-slices", kslice


def _assert_ran_tiled(spec, sms):
    B, H = spec["B"], spec["H"]
    for kind, (M, N, K) in (("forward", (B, 4 * H, H)), ("backward", (B, H, 4 * H))):
        ran = _ran(kind)
        assert ran.startswith(f"tiled recurrent {kind} ("), ran
        assert "fp32 simt split-k GEMM, " + _plan_tiled(M, N, K, sms)[0] + ", forced" in ran, ran


# Emulated SM counts: 64 splits the backward's K = 4H (and H130's forward) into several slices,
# 1 leaves one slice wherever the grid already has two blocks.
TILED_SMS = (64, 1)


@pytest.mark.parametrize("sms", TILED_SMS)
@pytest.mark.parametrize("name", list(CASES))
def test_emulated_tiled_matches_reference(emu, name, sms):
    spec = CASES[name]
    emu.set_device(sm_count=sms)
    fcuda.set_kernel_path("tiled")
    outs, grads = run_and_check(name, spec, np.float32)
    if spec["T"] > 0 and spec["B"] > 0 and spec["H"] > 0:
        _assert_ran_tiled(spec, sms)
        assert "tensor" not in _ran("forward") and "tensor" not in _ran("backward")
    # reversed thread and block order, guard pages in front: the same bits
    emu.set_reverse_order(True)
    emu.set_guard_front(True)
    outs2, grads2 = run_and_check(name, spec, np.float32)
    assert_bitwise_equal(tuple(outs) + tuple(grads), tuple(outs2) + tuple(grads2))


def test_emulated_tiled_splits_and_agrees_with_simt(emu):
    # The cases above that really run several k slices (forward and backward), and the tiled
    # results against simt's: the same function in another summation order.
    emu.set_device(sm_count=64)
    name = "H130_B3_TB_over_64"
    spec = CASES[name]
    fwd_plan, bwd_plan = _plan_tiled(3, 520, 130, 64)[0], _plan_tiled(3, 130, 520, 64)[0]
    assert fwd_plan == "64x128 tiles x 2 k-slices" and bwd_plan == "64x128 tiles x 5 k-slices", (fwd_plan, bwd_plan)
    fwd, bwd = make_case(dtype=np.float32, seed=zlib.crc32(name.encode()), **spec)
    results = {}
    for path in ("simt", "tiled"):
        fcuda.set_kernel_path(path)
        outs, grads, _ = run_cuda(fwd, bwd)
        results[path] = tuple(outs) + tuple(grads)
    assert fwd_plan in _ran("forward") and bwd_plan in _ran("backward"), (_ran("forward"), _ran("backward"))
    for name_, a, b in zip(FWD_NAMES + BWD_NAMES, results["tiled"], results["simt"]):
        if a is not None:
            assert rel_err(a, b) <= TOL[np.dtype(np.float32)], f"{name_}: tiled vs simt {rel_err(a, b):.3g}"
    # training=False: the same forward bits
    fcuda.set_kernel_path("tiled")
    assert_bitwise_equal(results["tiled"][:3], run_cuda(fwd, bwd, training=False)[0])


def test_emulated_tiled_128_tiles_padding_and_no_leaks(emu, emu_lib):
    # B > 64: 128 x 128 tiles (M = 70: the second row group half empty); lengths with zeros,
    # reverse, NaN in the padding of x; then empty work; no device memory left behind
    import gc
    emu.set_device(sm_count=64)
    fcuda.set_kernel_path("tiled")
    gc.collect()
    before = emu_lib.fl_emu_live_allocations()
    T, B = 3, 70
    lengths = [(b * 5) % 4 for b in range(B)]
    fwd, bwd = make_case(T, B, 5, 9, np.float32, seed=12, lengths=lengths, reverse=True)
    for b, L in enumerate(lengths):
        fwd["x"][L:, b] = np.nan
    outs, grads, _ = run_cuda(fwd, bwd)
    _assert_ran_tiled(dict(B=B, H=9), 64)
    assert _ran("forward").split(", ")[2].startswith("128x128"), _ran("forward")
    check_against_reference({**fwd, "x": np.nan_to_num(fwd["x"])}, bwd, outs, grads, TOL[np.dtype(np.float32)])
    y, h_n, c_n = outs
    dx, dh0, dc0 = grads[:3]
    for b, L in enumerate(lengths):
        assert np.all(y[L:, b] == 0) and np.all(dx[L:, b] == 0)
        if L == 0:
            np.testing.assert_array_equal(h_n[b], fwd["h0"][b])
            np.testing.assert_array_equal(dh0[b], bwd["dh_n"][b])
            np.testing.assert_array_equal(dc0[b], bwd["dc_n"][b])
    for T, B, lens in ((0, 3, None), (3, 0, None), (4, 3, [0, 0, 0])):
        fwd, bwd = make_case(T, B, 4, 17, np.float32, seed=18, lengths=lens)
        (y, h_n, c_n), (dx, dh0, dc0, dk, dr, db), _ = run_cuda(fwd, bwd)
        assert np.all(y == 0) and np.all(dx == 0) and np.all(dk == 0) and np.all(dr == 0) and np.all(db == 0)
        np.testing.assert_array_equal(h_n, fwd["h0"])
        np.testing.assert_array_equal(dh0, bwd["dh_n"])
    del _
    gc.collect()
    assert emu_lib.fl_emu_live_allocations() == before


def test_emulated_tiled_precision_float64_and_errors(emu, monkeypatch):
    fwd, bwd = make_case(4, 6, 7, 33, np.float32, seed=41, lengths=[4, 0, 2, 3, 1, 4])
    emu.set_device(sm_count=64)
    # tf32 on the tiled path: the large products on tensor cores, the recurrence in fp32
    fcuda.set_kernel_path("tiled")
    outs, grads, _ = run_cuda_precision(fwd, bwd, "tf32")
    for kind in ("forward", "backward"):
        assert _ran(kind).startswith(f"tiled recurrent {kind} ("), _ran(kind)
        assert "GEMMs: tf32 tensor cores" in _ran(kind) and "recurrent product fp32" in _ran(kind), _ran(kind)
    check_precision_against_reference(fwd, bwd, outs, grads, "tf32")
    # float64: a clear error naming the path and what it needs, forward and backward
    fwd64, bwd64 = make_case(3, 2, 4, 5, np.float64, seed=33)
    with pytest.raises(RuntimeError, match=r"tiled recurrent forward was asked for \(kernel path 'tiled'\) but "
                                           r"needs float32 data"):
        run_cuda(fwd64, bwd64)
    fcuda.set_kernel_path("simt")
    saved = ops.lstm_forward(**fwd64, backend="cuda")[3]
    fcuda.set_kernel_path("tiled")
    with pytest.raises(RuntimeError, match=r"tiled recurrent backward .*needs float32 data"):
        ops.lstm_backward(saved, **bwd64)
    # the environment variable names it; auto never picks it (fp32 at B = 70 runs simt)
    fcuda.set_kernel_path(None)
    monkeypatch.setenv("FASTLSTM_CUDA_KERNEL", "tiled")
    assert fcuda.kernel_path() == "tiled" and fastlstm.cuda_info()["kernel_path"] == "tiled"
    monkeypatch.delenv("FASTLSTM_CUDA_KERNEL")
    big, big_bwd = make_case(2, 70, 3, 8, np.float32, seed=42)
    run_cuda(big, big_bwd)
    assert _ran("forward").startswith("simt forward") and _ran("backward").startswith("simt backward")
    with pytest.raises(ValueError, match="kernel path: expected one of"):
        fcuda.set_kernel_path("tiles")


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_emulated_step_matmul_checks_and_kslice_override(emu, precision):
    # step_matmul() (bench/gpu_gemm_ab.py's per-step table and its k-per-slice sweep): the plan,
    # `repeat` runs into the same place, another k per slice, and its argument errors
    emu.set_device(sm_count=16)
    rng = np.random.default_rng(8)
    M, N, K = 40, 72, 300
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bm = rng.standard_normal((K, N)).astype(np.float32)
    c = np.full(16 * M * N, np.nan, np.float32)
    bufs = [emu.Buffer(v.nbytes, 0) for v in (A, Bm, c)]
    for buf, v in zip(bufs, (A, Bm, c)):
        buf.upload(v)
    call = lambda c_elems=c.size, repeat=1, kslice=0: emu.step_matmul_api(  # noqa: E731
        precision, M, N, K, bufs[0].ptr, K, 1, bufs[1].ptr, N, 1, bufs[2].ptr, c_elems, repeat, kslice)
    plan = _plan_tiled(M, N, K, 16)[0] + " (simt)" if precision == "fp32" else _plan_step(M, N, K, 16)
    assert call(repeat=2) == plan
    for kslice, splits in ((64, 5), (128, 3)):
        c[:] = np.nan
        bufs[2].upload(c)
        ran = call(kslice=kslice)
        assert f" x {splits} k-slices" in ran, ran
        bufs[2].download(c)
        parts = c.reshape(16, M, N)
        assert np.isnan(parts[splits:]).all(), ran
        check_step_gemm(parts[:splits], A, Bm, kslice, precision)
    bad = [(dict(c_elems=M * N - 1), "C holds"), (dict(kslice=36), "kslice must be a multiple of"),
           (dict(kslice=-1), "kslice must be >= 0"), (dict(repeat=0), "bad dimensions or repeat")]
    if precision == "fp32":  # 8 k per slice: 38 slices, more than C holds
        bad.append((dict(kslice=8), "C holds"))
    for kw, match in bad:
        with pytest.raises(RuntimeError, match=match):
            call(**kw)


@pytest.mark.parametrize("layout", ["fwd", "bwd"])
def test_emulated_tiled_step_product_is_the_sequential_sum_per_slice(emu, layout):
    # (large tile, kslice, M, N, K): one slice, several, a short last slice, K = 0, edge tiles,
    # 64 and 128 rows
    shapes = [(False, 8, 5, 36, 40), (False, 16, 64, 130, 100), (False, 24, 65, 20, 129),
              (True, 96, 70, 140, 200), (True, 128, 129, 17, 64), (False, 32, 3, 8, 0),
              (True, 8, 200, 3, 9)]
    for i, (large, kslice, M, N, K) in enumerate(shapes):
        parts, A, Bm, ran = _run_step_gemm(emu, "fp32", large, kslice, M, N, K, layout, seed=500 + i)
        splits = max(1, -(-K // kslice))
        assert ran == f"{'128x128' if large else '64x128'} tiles x {splits} k-slices (simt)", ran
        for z in range(splits):
            k0, k1 = z * kslice, min(K, (z + 1) * kslice)
            want = sequential_product_f32(A[:, k0:k1], Bm[k0:k1], None)
            np.testing.assert_array_equal(parts[z].view(np.uint32), want.view(np.uint32), err_msg=f"{ran} slice {z}")
    # the planner for the emulated device, and a slice that is not a whole 8-k pass refused
    for sms, (M, N, K) in ((16, (40, 72, 600)), (2, (300, 520, 130)), (64, (3, 130, 520))):
        emu.set_device(sm_count=sms)
        parts, A, Bm, ran = _run_step_gemm(emu, "fp32", False, 0, M, N, K, layout, seed=9)
        plan, kslice = _plan_tiled(M, N, K, sms)
        assert ran == plan + " (simt)", (ran, plan)
        check_step_gemm(parts, A, Bm, kslice, "fp32")
    with pytest.raises(RuntimeError, match="inconsistent k slices"):
        _run_step_gemm(emu, "fp32", False, 12, 5, 8, 40, layout, seed=1)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("name", list(CASES) + list(BIG_CASES))
def test_gpu_tiled_matches_reference(name, kernel_path_reset):
    spec = {**CASES, **BIG_CASES}[name]
    fcuda.set_kernel_path("tiled")
    first = run_and_check(name, spec, np.float32)
    if spec["T"] > 0 and spec["B"] > 0 and spec["H"] > 0:
        _assert_ran_tiled(spec, fastlstm.cuda_info()["sm_count"])
    second = run_and_check(name, spec, np.float32)
    assert_bitwise_equal(tuple(first[0]) + tuple(first[1]), tuple(second[0]) + tuple(second[1]))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("T,B,I,H", [(3, 70, 24, 1024), (4, 33, 16, 512), (3, 257, 8, 256)])
def test_gpu_tiled_agrees_with_simt(T, B, I, H, kernel_path_reset):
    # 128 x 128 tiles (B > 64; B = 257: a third, almost empty, row tile), several k slices
    fwd, bwd = make_case(T, B, I, H, np.float32, seed=T * B + H)
    results = {}
    for path in ("simt", "tiled"):
        fcuda.set_kernel_path(path)
        outs, grads, _ = run_cuda(fwd, bwd)
        results[path] = tuple(outs) + tuple(grads)
    _assert_ran_tiled(dict(B=B, H=H), fastlstm.cuda_info()["sm_count"])
    for name_, a, b in zip(FWD_NAMES + BWD_NAMES, results["tiled"], results["simt"]):
        if a is not None:
            assert rel_err(a, b) <= TOL[np.dtype(np.float32)], f"{name_}: tiled vs simt {rel_err(a, b):.3g}"
    check_against_reference(fwd, bwd, results["tiled"][:3], results["tiled"][3:], TOL[np.dtype(np.float32)])


# ---- on a GPU

@pytest.mark.cuda
@gpu
def test_gpu_tf32x3_gemm_is_float32_accurate():
    from fastlstm import _cuda
    for layout in ("nn", "tn", "nt", "tt"):
        for i, (M, N, K) in enumerate(GEMM_SHAPES + [(1000, 520, 700), (64, 4096, 3000)]):
            C, A, B, bias, ran = _run_gemm(_cuda, X3, M, N, K, layout, seed=600 + i, bias=i % 2 == 1)
            assert ran == _tc_desc(X3, M, N, K, fastlstm.cuda_info()["sm_count"]), ran
            err = check_gemm(C, A, B, bias, X3)
            print(layout, (M, N, K), f"{err:.2e}")
        first = _run_gemm(_cuda, X3, 1000, 520, 700, layout, seed=9)[0]
        second = _run_gemm(_cuda, X3, 1000, 520, 700, layout, seed=9)[0]
        np.testing.assert_array_equal(first.view(np.uint32), second.view(np.uint32))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("name", ["B5_H9_I17_unsorted_lengths", "H1024_B2_I64_T3", "B64_H1024_I256_T3_auto",
                                  "B256_H1024_I64_T2_reverse_auto", "B33_H129_I17_T6"])
def test_gpu_tf32x3_matches_reference_to_fp32_tolerance(name, kernel_path_reset):
    if name in TENSOR_GPU_CASES:
        spec, path = TENSOR_GPU_CASES[name]
    else:
        spec, path = {**CASES, **BIG_CASES}[name], "auto"
    fcuda.set_kernel_path(path)
    fwd, bwd = make_case(dtype=np.float32, seed=zlib.crc32(name.encode()), **spec)
    outs, grads, _ = run_cuda_precision(fwd, bwd, X3)
    tol = TOL[np.dtype(np.float32)]
    errs = _errors_within(fwd, bwd, outs, grads, (tol, tol), X3)
    print(name, _ran("forward")[:40], {k: f"{v:.1e}" for k, v in errs.items()})
    again = run_cuda_precision(fwd, bwd, X3)
    assert_bitwise_equal(tuple(outs) + tuple(grads), tuple(again[0]) + tuple(again[1]))


def test_emulated_backward_without_dx(emu):
    # need_dx=False on the CUDA backend: dx is computed there (the kernels have no switch) and
    # dropped; the other gradients are the same bits as with it.
    fwd, bwd = make_case(5, 3, 4, 17, np.float32, seed=4, lengths=[5, 0, 2], reverse=True)
    _, _, _, saved = ops.lstm_forward(**fwd, backend="cuda")
    full = ops.lstm_backward(saved, **bwd)
    part = ops.lstm_backward(saved, **bwd, need_dx=False)
    assert full[0] is not None and part[0] is None and len(part) == 6
    for a, b in zip(part[1:], full[1:]):
        np.testing.assert_array_equal(to_host(a), to_host(b))
