"""fastlstm's CUDA backend: availability, device information, device arrays, and the runners
behind ``fastlstm.ops`` with ``backend="cuda"``.

    fastlstm.cuda_available()   # True when fastlstm._cuda is built and a GPU is usable
    fastlstm.cuda_info()        # dict: available, reason, device name, capability, ...

Arrays: NumPy inputs are copied to the device and the results come back as NumPy arrays.
Device arrays -- CuPy arrays, anything with ``__cuda_array_interface__`` or a CUDA DLPack
capsule (a CUDA torch tensor) -- are used in place (with CuPy installed: ``pip install
"fastlstm[cuda]"``) and the results are CuPy arrays on the same device; the kernels run on
CuPy's current stream.

Recurrent kernels: "auto" (the default) runs, with precision "tf32" / "bf16" / "tf32x3" and enough work
per step (B >= 32 and B * H**2 >= 2**25: at H = 1024 B >= 32, at H = 512 B >= 128), the
"tensor" path (each step's recurrent product on tensor cores); otherwise, for B <= 64,
the persistent kernels -- one cooperative launch for all T steps, each block's slice of the
recurrent weights kept in shared memory -- when they fit the device, else the per-step "simt"
kernels (also for B > 64, where every persistent block would stage all B rows each step).
``set_kernel_path("simt"|"persistent"|"tensor"|"tiled"|"auto")`` or the environment variable
``FASTLSTM_CUDA_KERNEL`` forces one (for tests and benchmarks; "persistent" raises
RuntimeError where it cannot run, "tensor" where the precision is "fp32"). "tiled"
(experimental, never chosen by "auto" until measured on a GPU; float32 data only) runs each
step's recurrent product as a split-k GEMM on the CUDA cores in fp32 (64 x 128 or 128 x 128
tiles) followed by an elementwise kernel: the "tensor" path's structure without tensor cores,
meant for large batches in fp32;
``cuda_info()["last_forward"]`` and ``["last_backward"]`` say which kernels the last call ran.
With the environment variable ``FASTLSTM_CUDA_TRACE=1`` (read at each call; for profiling) the
persistent kernels run in a traced variant and that description ends with their time per step,
phase by phase (``bench/gpu_phase_profile.py``); each traced call synchronises its stream.
With ``FASTLSTM_CUDA_EXCHANGE=tagged`` (read at each call; experimental, off until measured on a
GPU; float32) the persistent kernels pass h / dz between blocks as tagged 64-bit words instead
of meeting at a grid barrier every step: the same results, bit for bit, and the description
ends with "tagged exchange"; ``"barrier"`` forces the barrier, ``"auto"`` (or unset) leaves the
choice to a batch-size rule (for now always the barrier), any other value is an error.

Precision (``ops.lstm_forward(..., precision=)``): "fp32" (default), or with float32 inputs
"tf32" / "bf16" / "tf32x3": the input projection and the backward's weight-gradient and dx
products on tensor cores (operands rounded to tf32 / bf16, or for "tf32x3" split into two tf32
parts and multiplied three times for about float32's accuracy; float32 accumulation; compute
capability 8.0+); the recurrent products too on the "tensor" path (auto: large B * H**2), else
they stay float32.
``cuda_info()["last_forward"]`` then names the precision. With ``FASTLSTM_CUDA_GEMM_PIPELINE=1``
(read at each call; experimental, off until measured on a GPU) the tf32 / tf32x3 tensor-core
products stage their operands with a cp.async pipeline where the operands' layout allows
(same results, bit for bit; the descriptions then say "wmma + cp.async"), and "bf16" runs its
products from bf16 copies of the operands (the large ones, and on the "tensor" path the per-step
ones from copies of R and h / dz; likewise the same bits).

The large products (fp32's SIMT GEMM and the tensor-core GEMM) split K where their grid would be
small and K is deep (the small batches' backward products; a different summation order,
deterministic on a given card); the environment variable ``FASTLSTM_CUDA_GEMM_SPLITK=0`` (read
at each call) turns that off.

Nothing here imports CuPy or touches the CUDA runtime until a function needs it, so
``import fastlstm`` works without CuPy, without the extension and without a GPU.
"""

import contextlib
import importlib
import importlib.util
import os

import numpy as np

__all__ = ["available", "info", "DeviceArray", "is_device_array", "set_kernel_path", "kernel_path",
           "use_kernel_path", "KERNEL_PATHS"]

NOT_BUILT = "fastlstm was built without CUDA"
KERNEL_PATHS = ("auto", "simt", "persistent", "tensor", "tiled")
KERNEL_ENV = "FASTLSTM_CUDA_KERNEL"

_state = {"ext": None, "loaded": False, "import_error": None, "status": None,
          "kernel_path": None, "last_forward": None, "last_backward": None}


def _check_path(path, what):
    if not isinstance(path, str) or path not in KERNEL_PATHS:
        raise ValueError(f"{what}: expected one of {KERNEL_PATHS}, got {path!r}")
    return path


def set_kernel_path(path):
    """Choose the recurrent kernels of backend="cuda": "auto" (tensor with tf32 / bf16 / tf32x3,
    B >= 32 and B * H**2 >= 2**25, else persistent for B <= 64 when it fits, else simt), "simt" (the per-step kernels),
    "persistent" (RuntimeError where it cannot run), "tensor" (the per-step recurrent products
    on tensor cores; RuntimeError with precision "fp32") or "tiled" (the per-step recurrent
    products as fp32 split-k GEMMs on the CUDA cores; RuntimeError for float64; experimental).
    None goes back to the environment variable FASTLSTM_CUDA_KERNEL, else "auto"."""
    _state["kernel_path"] = None if path is None else _check_path(path, "kernel path")


def kernel_path():
    """The kernel path in effect: set_kernel_path's, else $FASTLSTM_CUDA_KERNEL, else "auto"."""
    if _state["kernel_path"] is not None:
        return _state["kernel_path"]
    env = os.environ.get(KERNEL_ENV, "").strip()
    return _check_path(env, KERNEL_ENV) if env else "auto"


@contextlib.contextmanager
def use_kernel_path(path):
    """Context manager: set_kernel_path(path) inside the block, the previous setting after it."""
    previous = _state["kernel_path"]
    set_kernel_path(path)
    try:
        yield
    finally:
        _state["kernel_path"] = previous


def _extension():
    """(fastlstm._cuda or None, why it is None)."""
    if not _state["loaded"]:
        name = __name__.rpartition(".")[0] + "._cuda"
        try:
            ext = importlib.import_module(name)
        except ModuleNotFoundError as e:
            ext = None
            if e.name == name:
                _state["import_error"] = NOT_BUILT
            else:  # the extension is there but something it needs is not
                _state["import_error"] = f"fastlstm._cuda failed to import: {e}"
        except ImportError as e:
            ext = None
            _state["import_error"] = f"fastlstm._cuda failed to import: {e}"
        _state["ext"] = ext
        _state["loaded"] = True
    return _state["ext"], _state["import_error"]


def _set_extension(ext):
    """Swap the extension module (tests run the kernels on a CPU emulator this way).

    Returns the previous one; pass it back to restore. None means "load fastlstm._cuda".
    """
    previous = _state["ext"] if _state["loaded"] else None
    _state.update(ext=ext, loaded=ext is not None, import_error=None, status=None,
                  last_forward=None, last_backward=None)
    return previous


def _status():
    ext, why = _extension()
    if ext is None:
        return None, why
    if _state["status"] is None:
        _state["status"] = dict(ext.status())
    st = _state["status"]
    return ext, (None if st["ok"] else (st["reason"] or "no usable CUDA device"))


def available():
    """True when the CUDA backend can run here (extension built, driver and GPU present)."""
    ext, why = _status()
    return ext is not None and why is None


def info():
    """What the CUDA backend has and uses. Never raises.

    Always: "available" (bool), "reason" (why not, "" when available), "built" (whether
    fastlstm._cuda is present), "cupy" (whether CuPy is installed; it is not imported).
    With the extension: "runtime_version", "driver_version" (CUDA's integers, e.g. 13000),
    "device_count", "kernel_variant", "kernel_path" (the recurrent kernels asked for: auto,
    simt, persistent, tensor or tiled), "last_forward" / "last_backward" (which recurrent kernels the last
    call of this process ran and why, None before the first). When available, the current
    device: "device", "name", "capability" (major, minor), "sm_count", "total_memory"
    (bytes), "l2_cache_bytes".
    """
    ext, why = _status()
    out = {"available": False, "reason": why or "", "built": ext is not None,
           "cupy": importlib.util.find_spec("cupy") is not None}
    if ext is None:
        return out
    st = _state["status"]
    try:
        path = kernel_path()
    except ValueError as e:
        path = f"invalid: {e}"
    out.update(runtime_version=st["runtime_version"], driver_version=st["driver_version"],
               device_count=st["device_count"], kernel_variant=ext.kernel_variant(),
               kernel_path=path, last_forward=_state["last_forward"],
               last_backward=_state["last_backward"])
    if why is not None:
        return out
    try:
        device = ext.current_device()
        props = dict(ext.device_properties(device))
    except RuntimeError as e:  # a device that went away after the status check
        out["reason"] = str(e)
        return out
    out.update(available=True, device=device, name=props["name"],
               capability=tuple(props["capability"]), sm_count=props["sm_count"],
               total_memory=props["total_memory"], l2_cache_bytes=props["l2_cache_bytes"])
    return out


def require():
    """The extension module, or RuntimeError saying why the CUDA backend cannot run."""
    ext, why = _status()
    if why is not None:
        raise RuntimeError(f"backend 'cuda' is not available: {why}")
    return ext


# --------------------------------------------------------------------------- device arrays

class DeviceArray:
    """A C-contiguous array in device memory owned by fastlstm (the NumPy-in, NumPy-out path).

    Exposes ``__cuda_array_interface__`` (so ``cupy.asarray(a)`` views it without a copy);
    ``get()`` copies it back to a NumPy array.
    """

    __slots__ = ("buffer", "shape", "dtype")

    def __init__(self, buffer, shape, dtype):
        self.buffer = buffer
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    @classmethod
    def empty(cls, ext, shape, dtype, device):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return cls(ext.Buffer(nbytes, device), shape, dtype)

    @classmethod
    def from_host(cls, ext, array, device):
        array = np.ascontiguousarray(array)
        out = cls.empty(ext, array.shape, array.dtype, device)
        out.buffer.upload(array)
        return out

    @property
    def ptr(self):
        return self.buffer.ptr

    @property
    def device(self):
        return self.buffer.device

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def get(self):
        """A NumPy copy (synchronises the device)."""
        out = np.empty(self.shape, self.dtype)
        self.buffer.download(out)
        return out

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "version": 3, "strides": None, "stream": None}

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device={self.device})"


_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def is_device_array(obj):
    """Whether obj is an array in CUDA device memory (CuPy, __cuda_array_interface__, DLPack)."""
    if obj is None or isinstance(obj, (np.ndarray, np.generic, list, tuple, int, float, bool)):
        return False
    try:  # DLPack first: torch's __cuda_array_interface__ raises for tensors requiring grad
        dl = getattr(obj, "__dlpack_device__", None)
        if dl is not None and int(dl()[0]) in _DLPACK_CUDA:
            return True
    except Exception:  # noqa: BLE001 - a foreign object's method may raise anything
        pass
    try:
        return hasattr(obj, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001 - hasattr lets errors other than AttributeError through
        return False


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise TypeError("backend 'cuda' got a device array, which needs CuPy: "
                        f"pip install \"fastlstm[cuda]\" ({e})") from None
    return cupy


def _to_cupy(cp, value):
    """A CuPy view of a device array (no copy)."""
    if isinstance(value, cp.ndarray):
        return value
    if hasattr(value, "__cuda_array_interface__"):
        return cp.asarray(value)
    return cp.from_dlpack(value)


def _ptr(a):
    """Device address of a DeviceArray / CuPy array, 0 for None."""
    if a is None:
        return 0
    if isinstance(a, DeviceArray):
        return a.ptr
    return int(a.data.ptr)


class CudaPayload:
    """What a CUDA forward keeps for backward besides the inputs: the saved gates and cells."""

    __slots__ = ("gates", "cells", "device", "kind")

    def __init__(self, gates, cells, device, kind):
        self.gates, self.cells, self.device, self.kind = gates, cells, device, kind


# --------------------------------------------------------------------------- runners
# Called by fastlstm.ops after its checks. `normalize(xp)` runs ops' argument checks with the
# array module xp (numpy or cupy) and returns the normalised arguments.

def device_mode(values):
    """True when any of values is a device array (then everything runs on CuPy arrays)."""
    return any(is_device_array(v) for v in values)


def forward(normalize, raw, names, precision="fp32"):
    """Run the forward. raw: the arguments x ... lengths as given (dict by name); names: the
    array arguments' names; precision: one of ops.PRECISIONS (checked by ops). Returns
    ((y, h_n, c_n), fields of LSTMSaved or None)."""
    ext = require()
    if device_mode(raw.values()):
        cp = _cupy()
        converted = {k: (_to_cupy(cp, v) if is_device_array(v) else v) for k, v in raw.items()}
        device = next(v.device.id for v in converted.values() if isinstance(v, cp.ndarray))
        if isinstance(converted.get("lengths"), cp.ndarray):
            converted["lengths"] = cp.asnumpy(converted["lengths"])  # range-checked on the host
        with cp.cuda.Device(device):
            args = normalize(cp, converted)
            _same_device(args, device, names)
            outs, inputs, payload = _forward_device(ext, cp, args, device, precision)
    else:
        args = normalize(np, raw)
        outs, inputs, payload = _forward_host(ext, args, precision)
    if payload is None:
        return outs, None
    fields = dict(dtype=args["x"].dtype, dims=_dims(args), has_bias=args["bias"] is not None,
                  reverse=args["reverse"], payload=payload, precision=precision, **inputs)
    return outs, fields


def _same_device(args, device, names):
    for name in names:
        a = args.get(name)
        dev = getattr(getattr(a, "device", None), "id", None)
        if dev is not None and dev != device:
            raise ValueError(f"{name}: on CUDA device {dev}, but the other arrays are on device {device}")


def _dims(args):
    T, B, I = args["x"].shape
    H = args["recurrent_kernel"].shape[0]
    return T, B, I, H


def _forward_host(ext, a, precision):
    device = ext.current_device()
    T, B, I, H = dims = _dims(a)
    dtype = a["x"].dtype
    up = {k: (None if a[k] is None else DeviceArray.from_host(ext, a[k], device))
          for k in ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0", "lengths")}
    y = DeviceArray.empty(ext, (T, B, H), dtype, device)
    h_n = DeviceArray.empty(ext, (B, H), dtype, device)
    c_n = DeviceArray.empty(ext, (B, H), dtype, device)
    gates = cells = None
    if a["training"]:
        gates = DeviceArray.empty(ext, (T, B, 4 * H), dtype, device)
        cells = DeviceArray.empty(ext, (T, B, H), dtype, device)
    _state["last_forward"] = ext.forward(
        dtype.name, dims, _ptr(up["x"]), _ptr(up["kernel"]), _ptr(up["recurrent_kernel"]),
        _ptr(up["bias"]), _ptr(up["h0"]), _ptr(up["c0"]), _ptr(up["lengths"]), a["reverse"],
        _ptr(y), _ptr(h_n), _ptr(c_n), _ptr(gates), _ptr(cells), device, 0,
        kernel_path=kernel_path(), precision=precision)
    outs = (y.get(), h_n.get(), c_n.get())  # get() synchronises and raises on a CUDA error
    return outs, up, (CudaPayload(gates, cells, device, "host") if a["training"] else None)


def _forward_device(ext, cp, a, device, precision):
    T, B, I, H = dims = _dims(a)
    dtype = a["x"].dtype
    lengths = None if a["lengths"] is None else cp.asarray(a["lengths"], dtype=cp.int64)
    y = cp.empty((T, B, H), dtype)
    h_n = cp.empty((B, H), dtype)
    c_n = cp.empty((B, H), dtype)
    gates = cells = None
    if a["training"]:
        gates = cp.empty((T, B, 4 * H), dtype)
        cells = cp.empty((T, B, H), dtype)
    stream = cp.cuda.get_current_stream().ptr
    _state["last_forward"] = ext.forward(
        dtype.name, dims, _ptr(a["x"]), _ptr(a["kernel"]), _ptr(a["recurrent_kernel"]),
        _ptr(a["bias"]), _ptr(a["h0"]), _ptr(a["c0"]), _ptr(lengths), a["reverse"],
        _ptr(y), _ptr(h_n), _ptr(c_n), _ptr(gates), _ptr(cells), device, stream,
        kernel_path=kernel_path(), precision=precision)
    inputs = {k: a[k] for k in ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0")}
    inputs["lengths"] = lengths
    return (y, h_n, c_n), inputs, (CudaPayload(gates, cells, device, "device") if a["training"] else None)


def backward(saved, normalize, raw):
    """Gradients for a CUDA forward. raw: dy, dh_n, dc_n as given."""
    ext = require()
    payload = saved.payload
    dtype = np.dtype(saved.dtype)
    if payload.kind == "host":
        for name, v in raw.items():
            if is_device_array(v):
                raise TypeError(f"{name}: the forward ran on NumPy arrays, so backward takes NumPy "
                                "arrays too; got a device array")
        g = normalize(np, raw)
        device = payload.device
        up = {k: (None if g[k] is None else DeviceArray.from_host(ext, g[k], device))
              for k in ("dy", "dh_n", "dc_n")}
        outs = _backward_run(ext, saved, up, lambda shape: DeviceArray.empty(ext, shape, dtype, device),
                             device, 0)
        return tuple(None if o is None else o.get() for o in outs)
    cp = _cupy()
    device = payload.device
    converted = {k: (_to_cupy(cp, v) if is_device_array(v) else v) for k, v in raw.items()}
    with cp.cuda.Device(device):
        g = normalize(cp, converted)
        _same_device(g, device, ("dy", "dh_n", "dc_n"))
        return _backward_run(ext, saved, g, lambda shape: cp.empty(shape, dtype), device,
                             cp.cuda.get_current_stream().ptr)


def _backward_run(ext, saved, g, empty, device, stream):
    T, B, I, H = saved.dims
    payload = saved.payload
    dx = empty((T, B, I))
    dh0 = empty((B, H))
    dc0 = empty((B, H))
    dkernel = empty((I, 4 * H))
    drk = empty((H, 4 * H))
    dbias = empty((4 * H,)) if saved.has_bias else None
    _state["last_backward"] = ext.backward(
        np.dtype(saved.dtype).name, (T, B, I, H), _ptr(saved.x), _ptr(saved.kernel),
        _ptr(saved.recurrent_kernel), _ptr(saved.h0), _ptr(saved.c0), _ptr(saved.lengths),
        saved.reverse, _ptr(payload.gates), _ptr(payload.cells), _ptr(g["dy"]),
        _ptr(g["dh_n"]), _ptr(g["dc_n"]), _ptr(dx), _ptr(dh0), _ptr(dc0), _ptr(dkernel),
        _ptr(drk), _ptr(dbias), device, stream, kernel_path=kernel_path(),
        precision=saved.precision)
    return dx, dh0, dc0, dkernel, drk, dbias


def set_poison(on):
    """Fill every CUDA output and workspace with NaN before the kernels run (for tests)."""
    ext, _ = _extension()
    if ext is not None:
        ext.set_poison(bool(on))


def empty_cache():
    """Return the device memory fastlstm's workspace pool keeps on the current device."""
    ext = require()
    ext.empty_cache(ext.current_device())
