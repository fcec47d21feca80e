"""Where the model API computes: the device ("cpu" or "cuda"), its array module, transfers.

    fastlstm.set_device("cuda")      # "cpu", "cuda" or "auto" (the default)
    fastlstm.get_device()            # "cpu" or "cuda": where a model built now will run

"auto" means "cuda" when ``fastlstm.cuda_available()`` and CuPy imports, else "cpu". The
environment variable ``FASTLSTM_DEVICE`` (auto|cpu|cuda) sets the initial choice; a bad value
fails ``import fastlstm`` with its reason, and "cuda" there raises RuntimeError with the reason
when a model is built on a machine where CUDA cannot run.

A ``Sequential`` model binds the device when it is built (``model.device``); its weights,
optimizer slots and every intermediate array are then arrays of that device's module ``xp``
(NumPy on "cpu", CuPy on "cuda"), and the LSTM layers run ``fastlstm.ops`` with
``backend="cuda"`` on the GPU. Data moves between host and device only here: batches are
uploaded with ``Device.asarray``; ``to_host`` and ``read_scalars`` bring results back.

CuPy is optional and imported only when the "cuda" device is used (``get_device()`` in "auto"
mode on a machine where CUDA runs, ``set_device("cuda")``, or a model built there): ``import
fastlstm`` never imports it.

The few operations whose NumPy form CuPy lacks or runs differently are written once here
(``take_along_time``, ``index_add_rows``, ``one_hot``, ``copy_into``), in forms that both
modules run, deterministically.
"""

import os
import sys

import numpy as np

from . import _core
from . import cuda as _cuda

__all__ = ["set_device", "get_device", "DEVICES", "ENV_VAR", "Device"]

DEVICES = ("auto", "cpu", "cuda")
ENV_VAR = "FASTLSTM_DEVICE"
CUPY_HINT = 'pip install "fastlstm[cuda]"'

# setting: "auto" | "cpu" | "cuda"; from_env: whether the setting still comes from ENV_VAR;
# gpu: the GPU array module once imported (CuPy; the tests put a stand-in here).
_state = {"setting": "auto", "from_env": False, "gpu": None, "devices": {}}


def _check_name(name, what):
    if not isinstance(name, str) or name not in DEVICES:
        raise ValueError(f"{what}: expected one of {', '.join(repr(d) for d in DEVICES)}, "
                         f"got {name!r}")
    return name


def _read_env():
    """The setting from FASTLSTM_DEVICE (unset or empty: "auto"); ValueError if invalid."""
    raw = os.environ.get(ENV_VAR, "")
    value = raw.strip().lower()
    if not value:
        return "auto", False
    if value not in DEVICES:
        raise ValueError(f"{ENV_VAR}: expected one of {', '.join(DEVICES)}, got {raw!r}")
    return value, True


# --------------------------------------------------------------------------- the GPU module

def _gpu_module():
    """The GPU array module (CuPy), imported now if it was not; ImportError if missing."""
    if _state["gpu"] is None:
        import cupy          # optional: imported on first use only
        _state["gpu"] = cupy
    return _state["gpu"]


def _known_gpu_module():
    """The GPU array module if it is already imported (never imports it), else None."""
    return _state["gpu"] if _state["gpu"] is not None else sys.modules.get("cupy")


def _set_gpu_module(module):
    """Put ``module`` in CuPy's place (tests run the device path on a stand-in this way).

    Returns the previous one; pass it back to restore (None: import CuPy when needed).
    """
    previous = _state["gpu"]
    _state["gpu"] = module
    _state["devices"].pop("cuda", None)
    return previous


def cuda_unavailable_reason():
    """None when the "cuda" device can run here, else why not (never raises)."""
    if not _cuda.available():
        return _cuda.info()["reason"] or "no usable CUDA device"
    try:
        _gpu_module()
    except ImportError as e:
        return (f"the model API needs CuPy on the GPU, which is not installed: {CUPY_HINT} "
                f"({e})")
    return None


# --------------------------------------------------------------------------- choosing

def set_device(name):
    """Choose where models built from now on run: "cpu", "cuda" or "auto" (the default:
    "cuda" when CUDA is available and CuPy is installed, else "cpu").

    "cuda" raises RuntimeError with the reason when it cannot run here (no GPU or driver,
    fastlstm built without CUDA, or CuPy missing). A model keeps the device it was built on.
    """
    name = _check_name(name, "name")
    if name == "cuda":
        why = cuda_unavailable_reason()
        if why is not None:
            raise RuntimeError(f"set_device('cuda'): the CUDA device is not available: {why}")
    _state["setting"] = name
    _state["from_env"] = False


def get_device():
    """Where a model built now runs: "cpu" or "cuda" ("auto" resolved).

    RuntimeError when FASTLSTM_DEVICE=cuda asks for a device that cannot run here.
    """
    setting = _state["setting"]
    if setting == "cpu":
        return "cpu"
    why = cuda_unavailable_reason()
    if setting == "cuda" and why is not None:
        source = f"{ENV_VAR}=cuda" if _state["from_env"] else "set_device('cuda')"
        raise RuntimeError(f"{source} asks for the CUDA device, which is not available: {why}")
    return "cpu" if why is not None else "cuda"


def current():
    """The Device object for ``get_device()``."""
    return device(get_device())


def device(name):
    """The Device object for "cpu" or "cuda" (the latter needs the GPU module)."""
    if isinstance(name, Device):
        return name
    _check_name(name, "device")
    if name == "auto":
        return current()
    cached = _state["devices"].get(name)
    if cached is None:
        xp = np if name == "cpu" else _gpu_module()
        cached = _state["devices"][name] = Device(name, xp)
    return cached


class Device:
    """A place where the model API computes: "cpu" (NumPy arrays) or "cuda" (CuPy arrays).

    ``xp`` is the array module, ``lstm_backend`` the ``fastlstm.ops`` backend of the LSTM
    layers, ``is_host`` whether the arrays live in host memory (reading them back is free).
    """

    def __init__(self, name, xp):
        self.name = name
        self.xp = xp
        self.is_host = name == "cpu"
        self.lstm_backend = "auto" if self.is_host else "cuda"

    def asarray(self, a, dtype=None):
        """``a`` (NumPy, CuPy, a list or a scalar) as an array of this device: uploaded when
        it is on the host and the device is not, downloaded in the opposite case, the same
        object when it is already there (and of ``dtype``)."""
        if self.is_host:
            return np.asarray(to_host(a), dtype=dtype)
        if isinstance(a, np.ndarray) and dtype is not None:
            a = a.astype(dtype, copy=False)   # convert on the host: one upload of the result
        return self.xp.asarray(a, dtype=dtype)

    def owns(self, a):
        """Whether ``a`` is an array of this device's module."""
        return isinstance(a, self.xp.ndarray)

    def __repr__(self):
        return f"<fastlstm device {self.name!r}>"

    def __eq__(self, other):
        return isinstance(other, Device) and other.name == self.name and other.xp is self.xp

    __hash__ = object.__hash__


# --------------------------------------------------------------------------- arrays

def array_module(a):
    """numpy, or the GPU module when ``a`` is one of its arrays (never imports CuPy)."""
    gpu = _known_gpu_module()
    if gpu is not None and isinstance(a, gpu.ndarray):
        return gpu
    return np


def is_device_array(a):
    """Whether ``a`` is an array of the GPU module (False when CuPy was never imported)."""
    return array_module(a) is not np


def is_array(a):
    """Whether ``a`` is a NumPy array or an array of the GPU module."""
    return isinstance(a, np.ndarray) or is_device_array(a)


def to_host(a):
    """``a`` as a NumPy array: a device array is copied to the host (one transfer), anything
    else goes through ``numpy.asarray`` (no copy for a NumPy array)."""
    xp = array_module(a)
    if xp is np:
        return np.asarray(a)
    return xp.asnumpy(a)


def to_numpy_copy(a):
    """A NumPy copy of ``a`` that shares no memory with it."""
    if array_module(a) is np:
        return np.array(a, copy=True)
    return to_host(a)                  # a new host array already


def read_scalars(values):
    """Python floats of ``values`` (Python numbers, NumPy scalars, 0-d or size-1 arrays of any
    device), with at most one device-to-host transfer for all of them together."""
    out = [None] * len(values)
    pending = []
    for i, v in enumerate(values):
        xp = array_module(v)
        if xp is np:
            out[i] = float(np.asarray(v, dtype=np.float64).reshape(()))
        else:
            pending.append((i, xp, v))
    if pending:
        xp = pending[0][1]
        stacked = xp.stack([v.astype(np.float64).reshape(()) for _, _, v in pending])
        host = xp.asnumpy(stacked)
        for (i, _, _), h in zip(pending, host.tolist()):
            out[i] = float(h)
    return out


def copy_into(target, value):
    """Copy ``value`` (a host or device array of target's shape) into ``target`` in place,
    converted to target's dtype (the arrays that hold it, e.g. optimizer slots, stay valid)."""
    xp = array_module(target)
    if xp is np:
        np.copyto(target, to_host(value), casting="unsafe")
        return
    if isinstance(value, np.ndarray):
        value = xp.asarray(value.astype(target.dtype, copy=False))
    elif value.dtype != target.dtype:
        value = value.astype(target.dtype)
    target[...] = value


def take_along_time(x, index):
    """``out[b, t] = x[b, index[b, t]]`` for x (B, T, ...) and integer index (B, T) of the
    same module (NumPy's take_along_axis on axis 1, written as plain fancy indexing)."""
    xp = array_module(x)
    rows = xp.arange(x.shape[0])[:, None]
    return x[rows, index]


def index_add_rows(target, index, values):
    """``target[index[n]] += values[n]`` for every n, repeated indices accumulating
    (numpy.add.at). target (V, D), index (N,) integers in [0, V), values (N, D).

    NumPy: the kernels' ``_core.index_add_rows`` (``numpy.add.at``'s sums in its order) for
    C-contiguous float arrays, else ``numpy.add.at``. Other modules: the rows are sorted by
    index and summed within each run of equal indices by a log-step segmented scan, so the
    sums do not depend on timing (CuPy's scatter_add uses atomics, whose order varies, and
    not for float64).
    """
    xp = array_module(target)
    if xp is np:
        if (type(target) is np.ndarray and target.dtype in (np.float32, np.float64)
                and target.ndim == 2 and target.flags.c_contiguous and target.flags.writeable
                and values.dtype == target.dtype and not np.may_share_memory(target, values)):
            # the same sums in the same order in one pass (numpy.add.at's per-element loop
            # cost 0.7 ms of a 20 ms tagger training step; NOTES 55)
            _core.index_add_rows(target, np.ascontiguousarray(index, dtype=np.int64),
                                 np.ascontiguousarray(values))
        else:
            np.add.at(target, index, values)
        return
    n = index.shape[0]
    if n == 0:
        return
    order = xp.argsort(index)
    keys = index[order]
    sums = values[order]
    # inclusive prefix sums within each run of equal keys (runs are contiguous once sorted)
    step = 1
    while step < n:
        same = (keys[step:] == keys[:-step])[:, None]
        sums = xp.concatenate([sums[:step],
                               sums[step:] + xp.where(same, sums[:-step], sums.dtype.type(0))])
        step *= 2
    # spread each run's total (its last prefix sum) over the whole run, so that the scatter
    # below writes one identical value per key whichever duplicate wins
    step = 1
    while step < n:
        same = (keys[:-step] == keys[step:])[:, None]
        sums = xp.concatenate([xp.where(same, sums[step:], sums[:-step]), sums[-step:]])
        step *= 2
    target[keys] = target[keys] + sums


def one_hot(ids, classes, dtype):
    """ids (...) integers in [0, classes) -> (..., classes) of dtype with ones at the ids."""
    xp = array_module(ids)
    return (ids[..., None] == xp.arange(classes)).astype(dtype)


_state["setting"], _state["from_env"] = _read_env()
