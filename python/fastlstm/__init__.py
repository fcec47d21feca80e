"""fastlstm: fused LSTM forward and backward kernels with a NumPy reference.

    import fastlstm
    y, h_n, c_n, saved = fastlstm.ops.lstm_forward(x, kernel, recurrent_kernel, bias)
    grads = fastlstm.ops.lstm_backward(saved, dy)

A Keras-like model API sits on top: fastlstm.models.Sequential with the layers of
fastlstm.layers, fastlstm.optimizers, fastlstm.losses, fastlstm.metrics and
fastlstm.callbacks. Models run on the device of fastlstm.set_device("cpu" | "cuda" | "auto")
(environment variable FASTLSTM_DEVICE; "auto", the default, is "cuda" when CUDA is available
and CuPy is installed); fastlstm.get_device() says which.

Layouts (gate order i, f, g, o): x (T, B, I), kernel (I, 4H), recurrent_kernel (H, 4H),
bias (4H,). See fastlstm.ops for the full contract and fastlstm.reference for the oracle.
"""

import operator
import os

from . import _core
from . import cuda, ops, reference
from . import activations, initializers, regularizers, losses, metrics, optimizers
from . import layers, callbacks, models, saving, utils
from ._device import set_device, get_device
from .models import Sequential          # keras.Sequential, keras.Input
from .layers import Input

__version__ = "0.1.0"
__all__ = ["ops", "reference", "activations", "initializers", "regularizers", "losses",
           "metrics", "optimizers", "layers", "callbacks", "models", "saving", "utils",
           "cpu_info", "set_num_threads", "get_num_threads", "set_cpu_pool", "set_cpu_cache_limit",
           "empty_cpu_cache", "cuda", "cuda_available",
           "cuda_info", "set_device", "get_device", "Sequential", "Input"]

# Choose the CPU kernels now, so a bad FASTLSTM_ISA fails at import with its reason.
_core.get_isa()


def cpu_info():
    """What the CPU backend can run and what it uses.

    Returns a dict: "compiled" (instruction sets built in), "supported" (those this
    processor runs), "isa" (the one in use; FASTLSTM_ISA forces it), "num_threads",
    "cache_limit" and "cached_bytes" (see set_cpu_cache_limit), and where the threads run
    (see set_cpu_pool): "pool_choice" ("auto" or "own"), "openmp_runtime" (the path of the
    OpenMP runtime found in the process, or None), "pool" (what the last kernel call ran
    on: "openmp", "own", "one thread", or "none" before the first call) and "pool_fallback"
    (why "auto" no longer uses the runtime found: "short team", its team came back smaller
    than asked for, OMP_THREAD_LIMIT or OMP_DYNAMIC, until set_cpu_pool("auto") tries again;
    "forked", this process is a fork() child; or None).
    """
    choice, last, runtime, fallback = _core.pool_info()
    return {
        "compiled": list(_core.compiled_isas()),
        "supported": list(_core.supported_isas()),
        "isa": _core.get_isa(),
        "num_threads": _core.get_num_threads(),
        "cache_limit": _core.get_cache_limit(),
        "cached_bytes": _core.cached_bytes(),
        "pool_choice": choice,
        "pool": last,
        "openmp_runtime": runtime or None,
        "pool_fallback": fallback or None,
    }


def cuda_available():
    """True when backend="cuda" can run: fastlstm._cuda is built and a GPU and driver work.

    Never raises; fastlstm.cuda_info()["reason"] says why not.
    """
    return cuda.available()


def cuda_info():
    """What the CUDA backend has and uses (a dict; never raises).

    "available" (bool) and "reason" (why not: the CUDA error string, or "fastlstm was built
    without CUDA"); "built"; "cupy" (whether CuPy is installed, not imported); with the
    extension "runtime_version", "driver_version", "device_count", "kernel_variant"; when
    available the current device's "device", "name", "capability", "sm_count",
    "total_memory", "l2_cache_bytes". See fastlstm.cuda.
    """
    return cuda.info()


def get_num_threads():
    """Number of threads the CPU kernels use. The default, set at import: FASTLSTM_NUM_THREADS
    when set, else OMP_NUM_THREADS (the count PyTorch and OpenMP code take from the
    environment), else the number of cores this process may run on (its CPU affinity: taskset,
    a container's cpuset), else all cores. torch.set_num_threads does not change it."""
    return _core.get_num_threads()


def _whole_number(value, name, low, what):
    """value as an int >= low; TypeError / ValueError naming the argument otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer {what}, got {type(value).__name__}") from None
    if value < low:
        raise ValueError(f"{name}: expected a {what} >= {low}, got {value}")
    return value


# More threads than this would only fail later, allocating per-thread buffers for every call.
_MAX_THREADS = 1024


def set_num_threads(n):
    """Set the number of threads the CPU kernels use (an integer from 1 to 1024)."""
    n = _whole_number(n, "n", 1, "number of threads")
    if n > _MAX_THREADS:
        raise ValueError(f"n: expected a number of threads <= {_MAX_THREADS}, got {n}")
    _core.set_num_threads(n)


_POOLS = ("auto", "own")


def set_cpu_pool(name):
    """Choose where the CPU kernels run their threads: "auto" (the default) or "own".

    "auto": on the worker threads of an OpenMP runtime that is already loaded in the process
    (libgomp, which PyTorch and scikit-learn bring; LLVM's libomp; Intel's libiomp5), else on
    fastlstm's own pool. After each parallel operation an OpenMP runtime's workers keep
    spinning for some milliseconds (libgomp's default), holding their cores: with the own
    pool, fastlstm's threads would share those cores with them, and a kernel call right after
    a PyTorch operation ran at about one thread's speed (bench/NOTES.md 48). On the runtime's
    team, the spinning workers take fastlstm's work at once. The runtime is looked for, never
    linked; with several loaded (scikit-learn's wheel brings its own libgomp), the one PyTorch's
    code calls, else the first libgomp loaded. A team smaller than asked for runs nothing and
    the own pool runs the call: inside a parallel region for that call only, at the top level
    (OMP_THREAD_LIMIT, OMP_DYNAMIC) for the calls after it too, until set_cpu_pool("auto") is
    called again (cpu_info()["pool_fallback"] says "short team" meanwhile). A fork()ed child
    never uses the parent's runtime. Results are the same bit for bit on either pool. "own":
    always fastlstm's pool.
    The default comes from FASTLSTM_POOL ("auto" or "own") when set at import.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, one of {_POOLS}, got {type(name).__name__}")
    if name not in _POOLS:
        raise ValueError(f"name: expected one of {_POOLS}, got {name!r}")
    _core.set_pool(name)


def _pool_from_environment():
    text = os.environ.get("FASTLSTM_POOL")
    if text is None or text.strip() == "":
        return
    if text.strip() not in _POOLS:
        raise ValueError(f"FASTLSTM_POOL: expected one of {_POOLS}, got {text!r}")
    _core.set_pool(text.strip())


_pool_from_environment()


def set_cpu_cache_limit(nbytes):
    """Set how many bytes of large blocks the CPU kernels keep between calls.

    Working buffers of 4 MiB and more (the input projection, the backward's gate gradients)
    and outputs as large (y, the saved gates and cells, dx; their memory returns when the
    array is freed) are kept for the next call instead of going back to the system, which
    saves faulting in and zeroing fresh memory every call (5-14% of a call at batch 64).
    The default is 512 MiB, or FASTLSTM_CPU_CACHE_MB (MiB) when set at import; 0 turns the
    cache off. Lowering the limit frees what is cached beyond it. Results do not depend on
    it: every buffer is written before it is read.
    """
    nbytes = _whole_number(nbytes, "nbytes", 0, "number of bytes")
    _core.set_cache_limit(min(nbytes, _NO_LIMIT))


def empty_cpu_cache():
    """Free the blocks the CPU kernels keep between calls (the limit stays)."""
    _core.clear_cache()


_NO_LIMIT = 2**63 - 1  # larger limits mean the same: keep everything


def _cache_limit_from_environment():
    text = os.environ.get("FASTLSTM_CPU_CACHE_MB")
    if text is None or text.strip() == "":
        return
    try:
        mib = int(text.strip())
    except ValueError:
        mib = -1
    if mib < 0:
        raise ValueError(f"FASTLSTM_CPU_CACHE_MB: expected a whole number of MiB >= 0, got {text!r}")
    _core.set_cache_limit(min(mib << 20, _NO_LIMIT))


_cache_limit_from_environment()


def _threads_from_environment():
    """The default thread count (see get_num_threads); None: keep the extension's (all cores)."""
    text = os.environ.get("FASTLSTM_NUM_THREADS")
    if text is not None and text.strip() != "":
        try:
            n = int(text.strip())
        except ValueError:
            n = 0
        if not 1 <= n <= _MAX_THREADS:
            raise ValueError(f"FASTLSTM_NUM_THREADS: expected a whole number of threads from 1 to "
                             f"{_MAX_THREADS}, got {text!r}")
        return n
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()   # ("4,2": nested levels)
    # (ASCII digits only: str.isdigit() also accepts "²", which int() refuses)
    if omp.isascii() and omp.isdigit() and 1 <= int(omp) <= _MAX_THREADS:
        return int(omp)
    try:
        return max(1, min(len(os.sched_getaffinity(0)), _MAX_THREADS))
    except (AttributeError, OSError):    # (no sched_getaffinity: macOS, Windows)
        return None


def _set_default_threads():
    n = _threads_from_environment()
    if n is not None and n != _core.get_num_threads():
        _core.set_num_threads(n)


_set_default_threads()
