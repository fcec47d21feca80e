"""Checked functional LSTM API: validates and normalises arguments, then runs a backend.

    y, h_n, c_n, saved = lstm_forward(x, kernel, recurrent_kernel, bias=None, h0=None, c0=None,
                                      lengths=None, reverse=False, training=True, backend="auto",
                                      packed=None, precision="fp32", batch_first=False)
    dx, dh0, dc0, dkernel, drecurrent_kernel, dbias = lstm_backward(saved, dy, dh_n=None, dc_n=None,
                                                                    need_dx=True)
    packed = pack_weights(kernel, recurrent_kernel)   # reuse across forwards (CPU backend)

Shapes (time-major): x (T, B, I); kernel (I, 4H); recurrent_kernel (H, 4H); bias (4H,);
h0, c0, h_n, c_n (B, H); y (T, B, H); lengths (B,) integers in [0, T]. Gate blocks along the
4H axis are ordered i, f, g, o. All arrays share one dtype, float32 or float64.

lengths follow PyTorch's packed sequences: sequence b uses steps 0..lengths[b]-1, y is 0
past its length, h_n/c_n are its state after its last valid step. reverse=True runs each
sequence from its last valid step down to 0, with y[t] kept at position t.

batch_first=True: x is (B, T, I) and y (B, T, H) (PyTorch's batch_first, Keras's layout), and
lstm_backward takes dy (B, T, H) and returns dx (B, T, I). The CPU backend reads and writes
these layouts in place; the "numpy" and "cuda" backends transpose a copy. The results are the
same, bit for bit, as for the time-major arrays.

Backends: "cpu" (the fused C++ kernels), "numpy" (fastlstm.reference), "auto" (= "cpu"),
"cuda" (fastlstm's CUDA kernels; RuntimeError with the reason when fastlstm.cuda_available()
is False). On "cuda", NumPy inputs are copied to the device and the results come back as
NumPy arrays; device arrays (CuPy, __cuda_array_interface__, CUDA DLPack) need CuPy and give
CuPy arrays on their device, computed on CuPy's current stream. See fastlstm.cuda.

precision: "fp32" (default: every product in the inputs' dtype, exactly as before), or, on
backend "cuda" with float32 inputs only, "tf32" / "bf16" / "tf32x3": the input projection
x . kernel and the weight-gradient and dx products of lstm_backward run on tensor cores with
float32 accumulation, their operands rounded to tf32 (10 mantissa bits) or bf16 (7 bits), or,
for "tf32x3", each split into two tf32 parts (hi + lo, 22 significant bits) and multiplied
with three tensor-core products (lo.hi + hi.lo + hi.hi), each k-step's sum added in float32
outside the tensor cores. With large batches (see
fastlstm.cuda: kernel path "tensor") the recurrent product h . R runs that way too; the gate
math and the cell state stay float32. Expect relative errors against a float64 reference near
1e-3 (tf32) and 1e-2 (bf16) instead of ~1e-6; "tf32x3" has float32's accuracy (on an H200:
2e-7 for outputs, up to 1.2e-6 for gradients, like "fp32"). The saved object keeps the precision, so
lstm_backward uses the forward's.
"""

import numpy as np

from . import _core, reference
from . import cuda as _cuda

__all__ = ["lstm_forward", "lstm_backward", "pack_weights", "PackedWeights", "LSTMSaved",
           "BACKENDS", "PRECISIONS"]

# kernel and recurrent_kernel packed by pack_weights(); opaque (attributes isa, I, H, dtype).
PackedWeights = _core.PackedWeights

BACKENDS = ("auto", "cpu", "numpy", "cuda")
PRECISIONS = ("fp32", "tf32", "bf16", "tf32x3")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class LSTMSaved:
    """What lstm_backward needs from lstm_forward(..., training=True). Treat as opaque.

    It keeps references to the (contiguous) inputs of the forward; modifying them in place
    before calling lstm_backward changes the gradients. On backend "cuda" it holds device
    arrays (copies of NumPy inputs, or the CuPy arrays themselves) and the saved gates/cells.
    """

    __slots__ = ("backend", "dtype", "dims", "x", "kernel", "recurrent_kernel", "has_bias",
                 "h0", "c0", "lengths", "reverse", "payload", "precision", "batch_first")

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields[name])

    def __repr__(self):
        T, B, I, H = self.dims
        extra = "" if self.precision == "fp32" else f", precision={self.precision!r}"
        extra += ", batch_first=True" if self.batch_first else ""
        return (f"LSTMSaved(backend={self.backend!r}, T={T}, B={B}, I={I}, H={H}, "
                f"dtype={self.dtype}, reverse={self.reverse}{extra})")


def _shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _as_float_array(value, name, dtype=None, xp=np, dtype_of="x"):
    """value as an array (of module xp: numpy, or cupy on "cuda") of a supported float dtype
    (and of `dtype` when given: that of the argument named dtype_of)."""
    arr = xp.asarray(value)
    if arr.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name}: dtype {arr.dtype} does not match {dtype_of}'s dtype {dtype}; "
                        f"all arrays must share one dtype")
    return arr


def _checked(value, name, shape, dtype, what, xp=np):
    """A C-contiguous array of `dtype` and exactly `shape`; `what` names the axes."""
    arr = _as_float_array(value, name, dtype, xp)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {what} = {_shape_str(shape)}, "
                         f"got {_shape_str(arr.shape)}")
    return xp.ascontiguousarray(arr)


def _optional(value, name, shape, dtype, what, xp=np):
    return None if value is None else _checked(value, name, shape, dtype, what, xp)


def _check_flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _check_lengths(lengths, T, B):
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if B == 0 and arr.shape == (0,) and arr.dtype.kind == "f":
        return np.zeros(0, np.int64)   # an empty list ([] reads as float64) for an empty batch
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise TypeError(f"lengths: expected an integer array of shape (B,) = ({B},), "
                        f"got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape (B,) = ({B},), got {_shape_str(arr.shape)}")
    if B and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"lengths: every entry must be in [0, T] = [0, {T}], "
                         f"got min {arr.min()} and max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _resolve_backend(backend):
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "cuda":
        _cuda.require()  # RuntimeError naming the reason when CUDA cannot run here
    return "cpu" if backend == "auto" else backend


def _check_precision(precision, backend):
    """precision (one of PRECISIONS); anything but "fp32" needs backend "cuda"."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision != "fp32" and backend != "cuda":
        raise ValueError(f"precision={precision!r} needs backend=\"cuda\" (tensor cores) and float32 "
                         f"inputs; backend {backend!r} computes in the inputs' dtype only: use "
                         f"precision=\"fp32\"")
    return precision


def _check_precision_dtype(precision, dtype):
    if precision != "fp32" and dtype != np.float32:
        raise ValueError(f"precision={precision!r} takes float32 inputs (tensor cores with float32 "
                         f"accumulation), got {np.dtype(dtype).name}; use precision=\"fp32\" for "
                         f"{np.dtype(dtype).name}")


def _recurrent_kernel(value, dtype=None, xp=np):
    """recurrent_kernel checked: a float array of shape (H, 4H), H >= 1 (and of `dtype`)."""
    arr = _as_float_array(value, "recurrent_kernel", dtype, xp)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != 4 * arr.shape[0]:
        raise ValueError("recurrent_kernel: expected shape (H, 4H) with H >= 1, got "
                         f"{_shape_str(arr.shape)}")
    return arr


def _normalize_forward(xp, x, kernel, recurrent_kernel, bias, h0, c0, lengths, reverse, training,
                       batch_first=False):
    """The checked forward arguments (arrays of module xp, lengths as int64 NumPy); x stays in
    its layout, (B, T, I) when batch_first."""
    x = _as_float_array(x, "x", xp=xp)
    layout = "(B, T, I)" if batch_first else "(T, B, I)"
    if x.ndim != 3:
        raise ValueError(f"x: expected a 3-D array {layout}, got shape {_shape_str(x.shape)}")
    dtype = x.dtype
    T, B, I = _sizes(x, batch_first)
    if I < 1:
        raise ValueError("x: the feature axis I must have size >= 1, got shape "
                         f"{_shape_str(x.shape)}")
    recurrent_kernel = _recurrent_kernel(recurrent_kernel, dtype, xp)
    H = recurrent_kernel.shape[0]
    x = xp.ascontiguousarray(x)
    recurrent_kernel = xp.ascontiguousarray(recurrent_kernel)
    kernel = _checked(kernel, "kernel", (I, 4 * H), dtype, "(I, 4H)", xp)
    bias = _optional(bias, "bias", (4 * H,), dtype, "(4H,)", xp)
    h0 = _optional(h0, "h0", (B, H), dtype, "(B, H)", xp)
    c0 = _optional(c0, "c0", (B, H), dtype, "(B, H)", xp)
    lengths = _check_lengths(lengths, T, B)
    reverse = _check_flag(reverse, "reverse")
    training = _check_flag(training, "training")
    return dict(x=x, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias, h0=h0, c0=c0,
                lengths=lengths, reverse=reverse, training=training)


def pack_weights(kernel, recurrent_kernel):
    """kernel (I, 4H) and recurrent_kernel (H, 4H) packed into the layouts the CPU forward
    streams, for lstm_forward(..., packed=...): calls with unchanged weights then skip packing
    them (worth it for short sequences and small batches; bench/NOTES.md, entry 21). The
    result is a copy: after changing the weights, pack them again. It is tied to the
    instruction set in use (fastlstm.cpu_info()["isa"]); under another one the forward ignores it.
    """
    recurrent_kernel = _recurrent_kernel(recurrent_kernel)
    H = recurrent_kernel.shape[0]
    kernel = _as_float_array(kernel, "kernel", recurrent_kernel.dtype, dtype_of="recurrent_kernel")
    if kernel.ndim != 2 or kernel.shape[0] < 1 or kernel.shape[1] != 4 * H:
        raise ValueError(f"kernel: expected shape (I, 4H) = (I, {4 * H}) with I >= 1, got "
                         f"{_shape_str(kernel.shape)}")
    return _core.pack_weights(np.ascontiguousarray(kernel), np.ascontiguousarray(recurrent_kernel))


def _check_packed(packed, I, H, dtype):
    if packed is None:
        return None
    if not isinstance(packed, PackedWeights):
        raise TypeError("packed: expected the result of fastlstm.ops.pack_weights(kernel, "
                        f"recurrent_kernel) or None, got {type(packed).__name__}")
    if (packed.I, packed.H, packed.dtype) != (I, H, dtype):
        raise ValueError(f"packed: packed for I={packed.I}, H={packed.H}, {packed.dtype}, but this "
                         f"call has I={I}, H={H}, {dtype}")
    return packed


def lstm_forward(x, kernel, recurrent_kernel, bias=None, h0=None, c0=None, lengths=None,
                 reverse=False, training=True, backend="auto", packed=None, precision="fp32",
                 batch_first=False):
    """Run an LSTM over x. Returns (y, h_n, c_n, saved); saved is None when training=False.

    x (T, B, I); kernel (I, 4H); recurrent_kernel (H, 4H); bias (4H,) or None;
    h0, c0 (B, H) or None (zeros); lengths (B,) ints in [0, T] or None (all T).
    Returns y (T, B, H), h_n (B, H), c_n (B, H) in x's dtype.
    batch_first: x (B, T, I) and y (B, T, H) instead (and lstm_backward's dy and dx).
    packed: None, or pack_weights(kernel, recurrent_kernel) made from these same values
    (not checked; with stale packed weights the result is unspecified, as short calls may read
    the arrays directly); used by the "cpu" backend, ignored by the others.
    precision: "fp32" (default), or "tf32" / "bf16" / "tf32x3" on backend "cuda" with float32
    inputs (tensor-core input projection and weight/input gradients; see the module docstring);
    anything else is a ValueError.
    """
    _check_precision(precision, "cuda")  # the value first: ValueError listing the allowed ones
    backend_given = backend
    backend = _resolve_backend(backend)
    _check_precision(precision, backend_given)
    batch_first = _check_flag(batch_first, "batch_first")
    if backend == "cuda":   # (time-major kernels: a batch-major x is transposed into a copy)
        raw = dict(x=x, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias, h0=h0,
                   c0=c0, lengths=lengths)

        def normalize(xp, r):
            args = _normalize_forward(xp, **r, reverse=reverse, training=training,
                                      batch_first=batch_first)
            _check_precision_dtype(precision, args["x"].dtype)
            if batch_first:
                args["x"] = _swap_time_batch(args["x"])
            return args

        (y, h_n, c_n), fields = _cuda.forward(
            normalize, raw, names=("x", "kernel", "recurrent_kernel", "bias", "h0", "c0"),
            precision=precision)
        if batch_first:
            y = _swap_time_batch(y)
        if fields is None:
            return y, h_n, c_n, None
        return y, h_n, c_n, LSTMSaved(backend="cuda", batch_first=batch_first, **fields)
    args = _normalize_forward(np, x, kernel, recurrent_kernel, bias, h0, c0, lengths, reverse,
                              training, batch_first)
    x, kernel, recurrent_kernel, bias, h0, c0, lengths, reverse, training = (
        args[k] for k in ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0", "lengths",
                          "reverse", "training"))
    dtype = x.dtype
    T, B, I = _sizes(x, batch_first)
    H = recurrent_kernel.shape[0]

    packed = _check_packed(packed, I, H, dtype)
    if backend == "cpu":
        y, h_n, c_n, gates, cells = _core.forward(x, kernel, recurrent_kernel, bias, h0, c0,
                                                  lengths, reverse, training, packed,
                                                  batch_major=batch_first)
        payload = (gates, cells)
    else:   # the reference is time-major (its saved payload keeps its own copy of x)
        y, h_n, c_n, payload = reference.lstm_forward(
            _swap_time_batch(x) if batch_first else x, kernel, recurrent_kernel, bias, h0, c0,
            lengths, reverse, training)
        if batch_first:
            y = _swap_time_batch(y)
    if not training:
        return y, h_n, c_n, None
    saved = LSTMSaved(backend=backend, dtype=dtype, dims=(T, B, I, H), x=x, kernel=kernel,
                      recurrent_kernel=recurrent_kernel, has_bias=bias is not None, h0=h0, c0=c0,
                      lengths=lengths, reverse=reverse, payload=payload, precision="fp32",
                      batch_first=batch_first)
    return y, h_n, c_n, saved


def _sizes(x, batch_first):
    """(T, B, I) of a 3-D x, (B, T, I) when batch_first."""
    return (x.shape[1], x.shape[0], x.shape[2]) if batch_first else tuple(x.shape)


def _swap_time_batch(a):
    """A C-contiguous copy of a 3-D array (NumPy or CuPy) with its first two axes swapped."""
    return a.transpose(1, 0, 2).copy()


def lstm_backward(saved, dy, dh_n=None, dc_n=None, *, need_dx=True):
    """Gradients of every input of the forward that produced `saved`.

    dy (T, B, H) or None; dh_n, dc_n (B, H) or None (zero). Returns
    (dx, dh0, dc0, dkernel, drecurrent_kernel, dbias); dbias is None when the forward had
    no bias. After a forward with batch_first=True, dy is (B, T, H) and dx (B, T, I).
    dh0/dc0 are returned even when h0/c0 were None (the gradient at zeros).
    The products run in the forward's precision (saved.precision).
    need_dx=False: dx is returned as None, and on the CPU backend its matrix product
    (dz . kernel^T, as many FLOPs as the forward's input projection) is skipped: for an LSTM
    whose input is data, not another layer's output. The other gradients are unchanged.
    """
    if saved is None:
        raise ValueError("saved: got None; the forward ran with training=False, which stores "
                         "nothing for backward. Call lstm_forward(..., training=True).")
    if not isinstance(saved, LSTMSaved):
        raise TypeError("saved: expected the saved object returned by "
                        f"fastlstm.ops.lstm_forward(..., training=True), got {type(saved).__name__}")
    need_dx = _check_flag(need_dx, "need_dx")
    T, B, I, H = saved.dims
    dtype = saved.dtype
    if saved.backend == "cuda":   # (dx computed there, dropped below)
        def normalize(xp, r):
            g = dict(dy=_checked_dy(r["dy"], saved, xp),
                     dh_n=_optional(r["dh_n"], "dh_n", (B, H), dtype, "(B, H)", xp),
                     dc_n=_optional(r["dc_n"], "dc_n", (B, H), dtype, "(B, H)", xp))
            if saved.batch_first and g["dy"] is not None:
                g["dy"] = _swap_time_batch(g["dy"])
            return g

        grads = _cuda.backward(saved, normalize, dict(dy=dy, dh_n=dh_n, dc_n=dc_n))
        if saved.batch_first and grads[0] is not None:
            grads = (_swap_time_batch(grads[0]),) + tuple(grads[1:])
    else:
        grads = _backward_host(saved, dy, dh_n, dc_n, need_dx)
    return grads if need_dx else (None,) + tuple(grads[1:])


def _checked_dy(dy, saved, xp=np):
    """dy checked: None, or of shape (T, B, H), (B, T, H) after a batch_first forward."""
    T, B, I, H = saved.dims
    if saved.batch_first:
        return _optional(dy, "dy", (B, T, H), saved.dtype, "(B, T, H)", xp)
    return _optional(dy, "dy", (T, B, H), saved.dtype, "(T, B, H)", xp)


def _backward_host(saved, dy, dh_n, dc_n, need_dx):
    """lstm_backward on the "cpu" (dx skipped unless need_dx) or "numpy" backend."""
    T, B, I, H = saved.dims
    dtype = saved.dtype
    dy = _checked_dy(dy, saved)
    dh_n = _optional(dh_n, "dh_n", (B, H), dtype, "(B, H)")
    dc_n = _optional(dc_n, "dc_n", (B, H), dtype, "(B, H)")
    if saved.backend == "cpu":
        gates, cells = saved.payload
        return _core.backward(saved.x, saved.kernel, saved.recurrent_kernel, saved.has_bias,
                              saved.h0, saved.c0, saved.lengths, saved.reverse, gates, cells,
                              dy, dh_n, dc_n, need_dx, batch_major=saved.batch_first)
    if not saved.batch_first:
        return reference.lstm_backward(saved.payload, dy, dh_n, dc_n)
    grads = reference.lstm_backward(saved.payload, None if dy is None else _swap_time_batch(dy),
                                    dh_n, dc_n)
    return (_swap_time_batch(grads[0]),) + tuple(grads[1:])
