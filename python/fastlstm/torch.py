"""PyTorch front end: ``fastlstm.torch.LSTM``, a drop-in replacement for ``torch.nn.LSTM``.

    import fastlstm.torch
    lstm = fastlstm.torch.LSTM(input_size, hidden_size, num_layers=2, bidirectional=True)
    lstm.load_state_dict(torch_lstm.state_dict())        # and back: same names and shapes
    output, (h_n, c_n) = lstm(x, (h_0, c_0))              # x (T, B, I), a PackedSequence, ...
    lstm.cuda()                                           # fastlstm's CUDA kernels on CUDA tensors

The module has torch.nn.LSTM's constructor, parameters (names, shapes, registration order,
initialisation U(-1/sqrt(H), 1/sqrt(H))), forward signature and results: time-major or
batch_first input, unbatched 2-D input, PackedSequence in and out, optional (h_0, c_0),
bidirectional and multi-layer with dropout between layers in training mode. Each layer and
direction runs fastlstm's fused kernels (fastlstm.ops.lstm_forward / lstm_backward) inside a
torch.autograd.Function, so gradients reach the input, h_0, c_0 and every weight.

Devices: on the CPU, fastlstm's CPU kernels on NumPy views of the tensors. On a CUDA device
(module and inputs on the same one), fastlstm's CUDA kernels (backend "cuda"), which take the
tensors as CuPy arrays without copying them (DLPack): they run on torch's current stream of
that device, as a torch operation would, and the arrays they return are allocated from torch's
caching allocator and handed out as tensors of that memory (so record_stream works on them).
fastlstm's CUDA backend keeps its own workspace pool besides (fastlstm.cuda.empty_cache()
returns it; torch.cuda.memory_allocated does not count it). cache_weights() on CUDA works from several
streams: a stream that first uses the cached copies waits for the one that made them, and their
memory is marked as used there (record_stream), so a refresh cannot free it under a running call.
That needs CuPy (pip install "fastlstm[cuda]") and fastlstm built with CUDA
(fastlstm.cuda_available()); otherwise the forward raises a RuntimeError saying which is
missing. The keyword-only ``precision`` ("fp32" default; "tf32", "bf16", "tf32x3" with float32
weights) is fastlstm.ops' precision option: tensor-core products on CUDA (see fastlstm.ops); on
the CPU, which has no tensor cores, the module computes as with "fp32".

Under torch.autocast (AMP) the module computes in its weights' dtype: float16/bfloat16 inputs
and (h_0, c_0) (the activations of autocast regions) are cast to it, and the outputs are in it
(torch.nn.LSTM's are in the autocast dtype).

Not supported: proj_size > 0 (NotImplementedError at construction), devices other than the
CPU and CUDA, dtypes other than float32 and float64, double backward (create_graph=True
through the LSTM), torch.func transforms (vmap, jacrev) and TorchScript. torch.compile runs it
with a graph break at the LSTM: its forward is marked torch.compiler.disable (dynamo cannot
trace into fastlstm's kernels), so dynamo runs it as it is, without tracing into its Python
code or warning about fastlstm's builtins, and compiles the code around it.

Needs PyTorch: pip install "fastlstm[torch]". Nothing else in fastlstm imports torch.
"""

import contextlib
import math
import numbers
import operator
import warnings
import weakref

try:
    # An absolute import (Python 3): this is PyTorch itself, not this module.
    import torch
except ModuleNotFoundError as exc:
    if exc.name != "torch":
        raise
    raise ImportError('fastlstm.torch needs PyTorch, which is not installed: '
                      'pip install "fastlstm[torch]"') from exc

import numpy as np
from torch.nn.utils.rnn import PackedSequence

from . import _core, ops

__all__ = ["LSTM"]

_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- kernels

def _numpy(t):
    """A NumPy view of a CPU tensor (a copy only when t is not contiguous)."""
    return t.detach().contiguous().numpy()


def _transposed(a):
    """A C-contiguous NumPy copy of a 2-D array's (or CPU tensor's) transpose: fastlstm's tiled
    transpose, ~3x faster than a strided copy for weight matrices (bench/NOTES.md, entry 22)."""
    if isinstance(a, torch.Tensor):
        a = _numpy(a)
    return _core.transpose(np.ascontiguousarray(a))


class _HostRoute:
    """CPU tensors: NumPy views in, fastlstm's CPU kernels, tensors sharing the results out."""

    backend = "auto"
    packs = True        # inference calls can reuse packed weights (ops.pack_weights)

    def scope(self):
        return contextlib.nullcontext()

    def array(self, t):
        """The kernels' view of tensor t (None stays None)."""
        return None if t is None else _numpy(t)

    def transposed(self, t, keep=None):
        """A C-contiguous array holding t's transpose (a weight in fastlstm's layout). keep:
        a list for the tensors behind the arrays (the CUDA route's; nothing here)."""
        return _transposed(t)

    def bias(self, bias_ih, bias_hh, keep=None):
        return (bias_ih.detach() + bias_hh.detach()).numpy()

    def adopt(self, owners, state):
        """Called on every use of cached weights (see _CudaRoute.adopt); nothing on the CPU."""

    def tensor(self, a, transpose=False, copy=False):
        """A tensor of a kernel result (its transpose; a copy of it)."""
        if transpose:
            return torch.from_numpy(_transposed(a))
        return torch.from_numpy(a.copy() if copy else a)


_HOST = _HostRoute()


class _CudaRoute:
    """CUDA tensors: CuPy views in (DLPack, no copy), fastlstm's CUDA kernels on torch's current
    stream of the device, with CuPy's allocations taken from torch's caching allocator (so no
    memory sits in CuPy's own pool), tensors sharing the results out (DLPack)."""

    backend = "cuda"
    packs = False

    def __init__(self, device):
        try:
            import cupy
        except ImportError as e:
            raise RuntimeError(
                f"fastlstm.torch.LSTM on {device} runs fastlstm's CUDA kernels, which take device "
                f"arrays through CuPy, and CuPy is not installed: pip install \"fastlstm[cuda]\" "
                f"({e}); or move the module and its inputs to the CPU") from None
        from . import cuda as fcuda
        if not fcuda.available():
            raise RuntimeError(f"fastlstm.torch.LSTM on {device} needs fastlstm's CUDA backend, "
                               f"which cannot run here: {fcuda.info().get('reason')}")
        self.cp = cupy
        self.device = device
        # address -> the byte tensor _allocate took there, while it lives (see tensor())
        self._owners = weakref.WeakValueDictionary()

    def _allocate(self, nbytes):
        # a byte tensor from torch's caching allocator, on torch's current stream (the one the
        # kernels run on), kept alive by the CuPy memory that refers to it
        owner = torch.empty((max(int(nbytes), 1),), dtype=torch.uint8, device=self.device)
        self._owners[owner.data_ptr()] = owner
        memory = self.cp.cuda.UnownedMemory(owner.data_ptr(), int(nbytes), owner, self.device.index)
        return self.cp.cuda.MemoryPointer(memory, 0)

    def _stream(self):
        """torch's current stream of the device, as a CuPy stream (the CUDA stream protocol
        where CuPy and torch have it, CuPy >= 14; else CuPy's ExternalStream, deprecated there)."""
        stream = torch.cuda.current_stream(self.device)
        from_external = getattr(self.cp.cuda.Stream, "from_external", None)
        if from_external is not None and hasattr(stream, "__cuda_stream__"):
            try:
                return from_external(stream)
            except (TypeError, ValueError):  # a protocol version this CuPy does not take
                pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.cp.cuda.ExternalStream(stream.cuda_stream, self.device.index)

    @contextlib.contextmanager
    def scope(self):
        cp = self.cp
        with cp.cuda.Device(self.device.index), self._stream(), cp.cuda.using_allocator(self._allocate):
            yield

    def array(self, t):
        # The capsule is taken with stream=-1 (no synchronisation: the kernels run on torch's
        # current stream, as a torch operation would) and given to CuPy as a raw capsule, so no
        # stream is negotiated: cupy.from_dlpack(tensor) would pass CuPy's default stream, which
        # is 2 under CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1, and torch refuses that one.
        if t is None:
            return None
        return self.cp.from_dlpack(t.detach().contiguous().__dlpack__(stream=-1))

    def transposed(self, t, keep=None):
        # torch's transpose copy, seen by CuPy without a copy; keep (a list) gets the tensor
        # whose memory the array is (for adopt)
        t = t.detach()
        tt = t.t().contiguous()
        if tt.data_ptr() == t.data_ptr():   # (a dimension of 1: already contiguous, a view)
            tt = tt.clone()
        t = tt
        if keep is not None:
            keep.append(t)
        return self.array(t)

    def bias(self, bias_ih, bias_hh, keep=None):
        b = bias_ih.detach() + bias_hh.detach()
        if keep is not None:
            keep.append(b)
        return self.array(b)

    def adopt(self, owners, state):
        """Cached weights (cache_weights()) used on torch's current stream. `state` (a dict
        kept with them) remembers the stream that made them and the streams that used them
        since. On a stream new to them: that stream waits for the one that made them (its
        copies must be finished before the kernels read them), and their memory is marked as
        used there (Tensor.record_stream), so that when a refresh or cache_weights() frees it,
        torch's caching allocator does not hand it out again before that stream is done with
        it. Calls from one stream cost nothing extra."""
        stream = torch.cuda.current_stream(self.device)
        made = state.setdefault("made", stream)
        seen = state.setdefault("seen", [])
        if stream == made or any(stream == s for s in seen):
            return
        stream.wait_stream(made)
        for t in owners:
            self._record_stream(t, stream)
        seen.append(stream)

    @staticmethod
    def _record_stream(t, stream):
        t.record_stream(stream)

    def tensor(self, a, transpose=False, copy=False):
        # A result that fills memory from _allocate comes back as a view of that byte tensor:
        # memory of torch's caching allocator, so Tensor.record_stream works on it (on a DLPack
        # import it does nothing: the allocator skips memory it did not hand out, and a result
        # used on another stream could then be reused while that stream still reads it).
        ptr = getattr(getattr(a, "data", None), "ptr", None)
        owner = None if ptr is None else self._owners.get(int(ptr))
        if owner is not None and a.flags.c_contiguous and a.nbytes <= owner.numel():
            dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[a.dtype]
            t = owner[:a.nbytes].view(dtype).view(tuple(a.shape))
        else:
            t = torch.from_dlpack(a)
        if transpose:
            return t.t().contiguous()
        return t.clone() if copy else t


def _route(device):
    """The kernels' route for tensors on `device` (checked by LSTM._weight_device_dtype)."""
    return _HOST if device.type == "cpu" else _CudaRoute(device)


def _weights_to_kernels(route, weight_ih, weight_hh, bias_ih, bias_hh, keep=None):
    """torch layout -> fastlstm layout: kernel = W_ih^T, recurrent = W_hh^T, bias = b_ih + b_hh.
    keep: a list that gets the tensors whose memory the arrays are, where the route has them."""
    kernel = route.transposed(weight_ih, keep)
    recurrent_kernel = route.transposed(weight_hh, keep)
    bias = None if bias_ih is None else route.bias(bias_ih, bias_hh, keep)
    return kernel, recurrent_kernel, bias


class _LSTMDirection(torch.autograd.Function):
    """One layer, one direction: (x, h0, c0, weights) -> (y, h_n, c_n) on fastlstm's kernels.

    x (T, B, I) time-major, or (B, T, I) with batch_first (and y likewise); h0, c0 (B, H) or
    None (zeros); weights in torch's layout; bias_ih, bias_hh both None or both (4H,); lengths
    an int64 ndarray (B,) or None; reverse runs each sequence from its last valid step down;
    route: _HOST or a _CudaRoute; precision: fastlstm.ops' precision option.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse, route,
                precision, batch_first):
        with route.scope():
            kernel, recurrent_kernel, bias = _weights_to_kernels(route, weight_ih, weight_hh,
                                                                 bias_ih, bias_hh)
            y, h_n, c_n, saved = ops.lstm_forward(
                route.array(x), kernel, recurrent_kernel, bias, route.array(h0), route.array(c0),
                lengths=lengths, reverse=reverse, training=True, backend=route.backend,
                precision=precision, batch_first=batch_first)
            outs = route.tensor(y), route.tensor(h_n), route.tensor(c_n)
        # The kernels' saved state holds views of x, h0 and c0. Saving the tensors too
        # lets autograd's version counters catch an in-place change before backward.
        ctx.save_for_backward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
        ctx.lstm_saved = saved
        ctx.route = route
        ctx.has_h0 = h0 is not None
        ctx.has_c0 = c0 is not None
        ctx.set_materialize_grads(False)
        return outs

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        inputs = ctx.saved_tensors  # raises if an input was modified in place since forward
        route = ctx.route
        need = ctx.needs_input_grad
        # With create_graph=True, tie each gradient to a node that refuses to be
        # differentiated, so double backward fails loudly instead of yielding zeros.
        anchor = None
        if torch.is_grad_enabled():
            anchor = next((t for t in inputs if t is not None and t.requires_grad), None)
        with route.scope():
            # (dx only when x needs a gradient: not for the first layer over data)
            grads = ops.lstm_backward(ctx.lstm_saved, route.array(dy), route.array(dh_n),
                                      route.array(dc_n), need_dx=bool(need[0]))
            dx, dh0, dc0, dkernel, drecurrent_kernel, dbias = grads

            def wrap(arr, needed, transpose=False, copy=False):
                if not needed or arr is None:
                    return None
                t = route.tensor(arr, transpose=transpose, copy=copy)
                return t if anchor is None else _NoDoubleBackward.apply(anchor, t)

            return (wrap(dx, need[0]),
                    wrap(dh0, need[1] and ctx.has_h0),
                    wrap(dc0, need[2] and ctx.has_c0),
                    wrap(dkernel, need[3], transpose=True),
                    wrap(drecurrent_kernel, need[4], transpose=True),
                    wrap(dbias, need[5]),
                    # bias_ih and bias_hh both get dbias; separate tensors, since autograd may
                    # adopt a returned gradient as a parameter's .grad and then add into it.
                    wrap(dbias, need[6], copy=True),
                    None, None, None, None, None)


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on `grad` whose backward raises: marks a first-order-only gradient."""

    @staticmethod
    def forward(ctx, anchor, grad):
        return grad.clone()

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError("fastlstm.torch.LSTM does not support double backward: its gradient "
                           "(computed with create_graph=True) cannot be differentiated again. "
                           "Use torch.nn.LSTM for higher-order gradients.")


# Steps taken by torch.optim optimizers (any, anywhere in the process), counted by a global
# post-step hook registered when a module first turns caching on: fused optimizers
# (fused=True) update parameters in place without bumping their version counters.
_optimizer_steps = [0]
_step_hook = []


def _count_optimizer_steps():
    if _step_hook:
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def counted(optimizer, args, kwargs):
        _optimizer_steps[0] += 1

    _step_hook.append(register_optimizer_step_post_hook(counted))


def _weights_signature(weights):
    """What identifies the current values of weight tensors without reading them: each
    tensor's storage address, dtype and version counter (bumped by every in-place change
    autograd can see; not by changes made through ``.data``), and the number of optimizer
    steps taken so far (a fused optimizer's step bumps no version counter). None when a
    weight is an inference tensor (made under torch.inference_mode()): those have no version
    counter, and inside inference_mode they can change in place unseen."""
    if any(t is not None and t.is_inference() for t in weights):
        return None
    return (_optimizer_steps[0],) + tuple(
        None if t is None else (t.data_ptr(), t.dtype, t._version) for t in weights)


def _inference_weights(route, weights, cache, slot):
    """(kernel, recurrent_kernel, bias, packed) for an inference call: from cache[slot] when the
    same tensors have an unchanged signature, else converted (and packed, on the CPU) now, and
    stored when cache is a dict; packed is None without a cache or off the CPU."""
    weights = tuple(weights)
    signature = None if cache is None else _weights_signature(weights)
    if signature is None:   # (no cache, or weights whose changes cannot be seen: convert now)
        return _weights_to_kernels(route, *weights) + (None,)
    entry = cache.get(slot)
    # The entry holds the tensors themselves: compared by identity, they cannot be freed and
    # their id or memory reused by new tensors while the entry exists.
    if (entry is None or len(entry[0]) != len(weights)
            or any(a is not b for a, b in zip(entry[0], weights)) or entry[1] != signature):
        # new arrays, not views (the bias a sum, the others transposed copies)
        owners = []
        kernel, recurrent_kernel, bias = _weights_to_kernels(route, *weights, keep=owners)
        packed = ops.pack_weights(kernel, recurrent_kernel) if route.packs else None
        entry = (weights, signature, kernel, recurrent_kernel, bias, packed, tuple(owners), {})
        cache[slot] = entry
    route.adopt(entry[6], entry[7])   # (CUDA: the streams that use them; see _CudaRoute.adopt)
    return entry[2:6]


def _run_direction(x, h0, c0, weights, lengths, reverse, route=_HOST, precision="fp32",
                   cache=None, slot=None, batch_first=False):
    """Run one layer/direction, through autograd only when a gradient is needed. Inference
    calls take their weights from `cache` (a dict, see LSTM.cache_weights) when given.
    batch_first: x (B, T, I) and y (B, T, H), read and written so by the kernels."""
    tensors = (x, h0, c0) + tuple(weights)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _LSTMDirection.apply(x, h0, c0, *weights, lengths, reverse, route, precision,
                                    batch_first)
    with route.scope():
        kernel, recurrent_kernel, bias, packed = _inference_weights(route, weights, cache, slot)
        y, h_n, c_n, _ = ops.lstm_forward(
            route.array(x), kernel, recurrent_kernel, bias, route.array(h0), route.array(c0),
            lengths=lengths, reverse=reverse, training=False, backend=route.backend,
            packed=packed, precision=precision, batch_first=batch_first)
        return route.tensor(y), route.tensor(h_n), route.tensor(c_n)


# --------------------------------------------------------------------------- packed sequences

def _packed_layout(batch_sizes, sorted_indices, n_rows):
    """Index tensors mapping packed rows <-> (time, original batch) and the lengths.

    Row r of packed data is step t_idx[r] of the sequence at original batch position
    b_idx[r]. lengths (B,) int64 ndarray, in the original batch order.
    """
    if batch_sizes.dim() != 1 or batch_sizes.numel() == 0:
        raise ValueError("PackedSequence: batch_sizes must be a non-empty 1-D tensor, got shape "
                         f"{tuple(batch_sizes.shape)}")
    bs = batch_sizes.detach().cpu().numpy().astype(np.int64)
    T, B = bs.shape[0], int(bs[0])
    if (bs < 1).any() or (np.diff(bs) > 0).any():
        raise ValueError("PackedSequence: batch_sizes must be positive and non-increasing, "
                         f"got {bs.tolist()}")
    if int(bs.sum()) != n_rows:
        raise ValueError(f"PackedSequence: data has {n_rows} rows but batch_sizes sum to "
                         f"{int(bs.sum())}")
    t_idx = np.repeat(np.arange(T, dtype=np.int64), bs)
    starts = np.cumsum(bs) - bs
    j_idx = np.arange(n_rows, dtype=np.int64) - starts[t_idx]   # position in sorted batch
    # the sequence at sorted position j lasts while batch_sizes[t] > j (non-increasing)
    lengths_sorted = np.searchsorted(-bs, -np.arange(B), side="left").astype(np.int64)
    if sorted_indices is None:
        order = np.arange(B, dtype=np.int64)
    else:
        order = sorted_indices.detach().cpu().numpy().astype(np.int64)
        if order.shape != (B,) or not np.array_equal(np.sort(order), np.arange(B)):
            raise ValueError("PackedSequence: sorted_indices must be a permutation of "
                             f"range({B}), got {order.tolist()}")
    lengths = np.empty(B, dtype=np.int64)
    lengths[order] = lengths_sorted
    b_idx = order[j_idx]
    return T, B, torch.from_numpy(t_idx), torch.from_numpy(b_idx), lengths


# --------------------------------------------------------------------------- autocast

def _autocast_enabled(device):
    """Whether torch.autocast (AMP) is on for `device`'s type."""
    try:
        return bool(torch.is_autocast_enabled(device.type))
    except (TypeError, RuntimeError):      # a device type this torch's autocast does not know
        return False


def _to_weight_dtype(t, dtype):
    # only the half-precision activations of autocast regions: a float64 tensor given to a
    # float32 module is refused (by _check_tensor) as outside autocast, as torch refuses it
    if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16):
        return t.to(dtype)
    return t


def _autocast_inputs(input, hx, dtype):
    """(input, hx) with floating tensors cast to the weights' dtype, for a forward under
    torch.autocast: there torch.nn.LSTM takes the float16/bfloat16 activations of autocast
    regions, and fastlstm's kernels compute in float32/float64 only (as
    torch.amp.custom_fwd(cast_inputs=...) does; the casts are differentiable)."""
    if isinstance(input, PackedSequence):
        data = _to_weight_dtype(input.data, dtype)
        if data is not input.data:
            input = PackedSequence(data, input.batch_sizes, input.sorted_indices,
                                   input.unsorted_indices)
    else:
        input = _to_weight_dtype(input, dtype)
    if isinstance(hx, (tuple, list)) and len(hx) == 2:
        hx = tuple(_to_weight_dtype(t, dtype) for t in hx)
    return input, hx


# --------------------------------------------------------------------------- the module

def _not_traced(fn):
    """fn marked for torch.compile (dynamo) to call as it is instead of tracing into it: dynamo
    cannot trace fastlstm's kernels, and tracing the Python around them only costs compile time
    (several seconds per call site with inductor), splits the graph into fragments and warns
    about each pybind builtin it meets (torch.compiler.disable, torch >= 2.1; older: as is)."""
    compiler = getattr(torch, "compiler", None)
    disable = getattr(compiler, "disable", None)
    return fn if disable is None else disable(fn)


def _check_int(value, name, minimum):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} should be of type int, got: bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be greater than zero, got {value}")
    return value


def _check_bool(value, name):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} should be a bool, got {value!r}")


class LSTM(torch.nn.Module):
    r"""Multi-layer LSTM on fastlstm's fused kernels (CPU or CUDA), with torch.nn.LSTM's interface.

    Args (as torch.nn.LSTM): input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0 (only 0 is
    supported), device=None, dtype=None. Keyword-only: precision="fp32" (fastlstm.ops'
    precision option: "tf32", "bf16" or "tf32x3" run the products on tensor cores, on CUDA
    with float32 weights only; on the CPU, which has none, the module computes as with "fp32",
    so a model trained that way on the GPU runs there after .cpu(); float64 weights with it
    raise a ValueError at the forward).

    Parameters ``weight_ih_l{k}{suffix}`` (4H, I or D*H), ``weight_hh_l{k}{suffix}`` (4H, H),
    ``bias_ih_l{k}{suffix}``, ``bias_hh_l{k}{suffix}`` (4H,), suffix '' or '_reverse', gates
    i, f, g, o; state dicts load both ways with torch.nn.LSTM.

    forward(input, hx=None) -> output, (h_n, c_n), exactly as torch.nn.LSTM: input (T, B, I),
    (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence (then output is one,
    and h_n, c_n are in the original batch order); hx = (h_0, c_0), each (D*num_layers, B, H)
    or (D*num_layers, H) for unbatched input. float32 or float64, on the CPU or a CUDA device
    (the module and its inputs on the same device; see the module docstring).
    """

    precision = "fp32"  # (the class's: modules pickled before the argument existed)

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 precision="fp32"):
        super().__init__()
        input_size = _check_int(input_size, "input_size", 1)
        hidden_size = _check_int(hidden_size, "hidden_size", 1)
        num_layers = _check_int(num_layers, "num_layers", 1)
        proj_size = _check_int(proj_size, "proj_size", None)
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable "
                             f"projections, got {proj_size}")
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, (bool, np.bool_))
                or not 0 <= dropout <= 1):
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             f"probability of an element being zeroed, got {dropout!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got "
                             f"proj_size={proj_size} and hidden_size={hidden_size}")
        if proj_size > 0:
            raise NotImplementedError(
                f"fastlstm.torch.LSTM does not support proj_size > 0 (got proj_size={proj_size}): "
                "fastlstm's fused kernels have no output projection (weight_hr_l{k}). "
                "Use torch.nn.LSTM for LSTMs with projections.")
        if dtype is not None and dtype not in _DTYPES:
            raise TypeError(f"fastlstm.torch.LSTM supports dtype torch.float32 or torch.float64, "
                            f"got {dtype}")
        if not isinstance(precision, str) or precision not in ops.PRECISIONS:
            raise ValueError(f"precision: expected one of {ops.PRECISIONS}, got {precision!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", UserWarning,
                          stacklevel=2)

        self.mode = "LSTM"
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = _check_bool(bias, "bias")
        self.batch_first = _check_bool(batch_first, "batch_first")
        self.dropout = float(dropout)
        self.bidirectional = _check_bool(bidirectional, "bidirectional")
        self.proj_size = 0
        self.precision = precision
        self._weight_cache = None   # a dict while cache_weights() is on

        factory = {"device": device, "dtype": dtype}
        H = hidden_size
        D = 2 if self.bidirectional else 1
        self._names = []        # per (layer, direction): the parameter names, in torch's order
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else D * H
            for direction in range(D):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = [("weight_ih", (4 * H, layer_input)), ("weight_hh", (4 * H, H))]
                if self.bias:
                    shapes += [("bias_ih", (4 * H,)), ("bias_hh", (4 * H,))]
                names = []
                for stem, shape in shapes:
                    self.register_parameter(stem + suffix,
                                            torch.nn.Parameter(torch.empty(shape, **factory)))
                    names.append(stem + suffix)
                self._names.append(names)
        self.reset_parameters()

    def reset_parameters(self):
        """Every parameter ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as torch.nn.LSTM."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)

    def flatten_parameters(self):
        """No-op, for code written for torch.nn.LSTM (cuDNN weight flattening)."""

    def cache_weights(self, enabled=True):
        """Keep the weights converted to fastlstm's layout and packed between calls that need
        no gradient (torch.no_grad(), inference_mode(), or no tensor requiring grad), for
        inference loops: each such call then skips transposing and packing them. Opt-in.

        A cached copy is refreshed when a weight tensor is replaced or changed in place by an
        operation autograd tracks (its version counter: load_state_dict,
        ``with torch.no_grad(): w.copy_(...)``), and after any torch.optim optimizer's step
        (counted by a global post-step hook: fused optimizers change parameters without
        bumping version counters). In-place changes made through ``w.data`` are not tracked
        and are NOT seen (a new tensor assigned to ``w.data`` is: its storage address is part
        of what is compared): call cache_weights() again after them. Calling it clears the cache;
        ``cache_weights(False)`` turns caching off. Returns self. Weights that are inference
        tensors (the module built or loaded under ``torch.inference_mode()``) have no version
        counter: calls with them convert the weights every time, as without caching.

        On CUDA the module may be called from several streams: a stream that first uses the
        cached copies waits for the stream that made them, and their memory is marked as used
        by it (``Tensor.record_stream``), so freeing them (a refresh, or this method) cannot
        hand the memory to another allocation while that stream's call still reads it.
        """
        enabled = _check_bool(enabled, "enabled")
        if enabled:
            _count_optimizer_steps()
        self._weight_cache = {} if enabled else None
        return self

    def __getstate__(self):
        # Pickling and deepcopy leave the cached copies behind (packed weights do not pickle);
        # the copy keeps caching on when this module has it on.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        if state.get("_weight_cache") is not None:
            state["_weight_cache"] = {}
        return state

    @property
    def all_weights(self):
        """[[weight_ih, weight_hh, bias_ih, bias_hh] per layer and direction], as torch.nn.LSTM."""
        return [[getattr(self, name) for name in names] for names in self._names]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.precision != "fp32":
            s += f", precision={self.precision!r}"
        return s

    # ----------------------------------------------------------------------- checks

    def _check_tensor(self, t, name, dtype, device):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device != device:
            raise RuntimeError(
                f"Input and parameter tensors are not at the same device, found {name} tensor at "
                f"{t.device} and parameter tensor at {device}; move the input and the module to "
                f"the same device (the CPU or a CUDA device)")
        if t.layout != torch.strided:
            raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
        if t.dtype != dtype:
            # (the model converts only to the dtypes its kernels take)
            model_fix = f", or the model: model.to({t.dtype})" if t.dtype in _DTYPES else \
                " (fastlstm.torch.LSTM computes in float32 or float64 only)"
            raise ValueError(f"{name} dtype ({t.dtype}) does not match the weight dtype ({dtype}). "
                             f"Convert the tensor: .to({dtype}){model_fix}")

    def _weight_device_dtype(self):
        # (the module's own parameters, read straight from its dict: 1.4 instead of 6.4 us per
        # call with named_parameters()'s generators and memo set, 2% of a call at H = 64)
        params = [(name, p) for name, p in self._parameters.items() if p is not None]
        if not params:   # (every weight moved into a parametrization's submodule)
            params = list(self.named_parameters())
        device = params[0][1].device
        for name, p in params:
            if p.device != device:
                raise RuntimeError(
                    f"parameter {name} is on {p.device}, but {self._names[0][0]} is on {device}; "
                    f"all parameters must be on one device")
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(
                f"fastlstm.torch.LSTM runs on the CPU or a CUDA device, but parameter "
                f"{self._names[0][0]} is on {device}; move the module with .cpu() or .cuda()")
        dtype = params[0][1].dtype
        if dtype not in _DTYPES:
            raise TypeError(f"fastlstm.torch.LSTM supports float32 and float64 weights, got "
                            f"{dtype}; convert the model with .float() or .double()")
        for name, p in params:
            if p.dtype != dtype:
                raise TypeError(f"parameter {name} has dtype {p.dtype}, but the other weights "
                                f"have {dtype}; all parameters must share one dtype")
        return device, dtype

    def _check_hx(self, hx, batched, B, dtype, device):
        D = 2 if self.bidirectional else 1
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx: expected a tuple (h_0, c_0) of two tensors, got "
                            + (f"a sequence of length {len(hx)}" if isinstance(hx, (tuple, list))
                               else type(hx).__name__))
        h0, c0 = hx
        self._check_tensor(h0, "hx[0] (h_0)", dtype, device)
        self._check_tensor(c0, "hx[1] (c_0)", dtype, device)
        want_dim = 3 if batched else 2
        if h0.dim() != want_dim or c0.dim() != want_dim:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want_dim}-D but got "
                               f"({h0.dim()}-D, {c0.dim()}-D) tensors")
        expected = (D * self.num_layers, B, self.hidden_size) if batched else \
            (D * self.num_layers, self.hidden_size)
        for i, t in enumerate((h0, c0)):
            if tuple(t.shape) != expected:
                raise RuntimeError(f"Expected hidden[{i}] size {expected}, got {list(t.shape)}")
        return h0, c0

    # ----------------------------------------------------------------------- forward

    @_not_traced
    def forward(self, input, hx=None):
        """output, (h_n, c_n) = lstm(input, hx=None); see the class docstring."""
        device, dtype = self._weight_device_dtype()
        if self.precision != "fp32" and dtype != torch.float32:
            raise ValueError(f"precision={self.precision!r} takes float32 weights (tensor cores with "
                             f"float32 accumulation), got {dtype}; use precision='fp32' with them")
        if _autocast_enabled(device):
            input, hx = _autocast_inputs(input, hx, dtype)
        packed = isinstance(input, PackedSequence)
        if packed:
            data = input.data
            self._check_tensor(data, "input (PackedSequence.data)", dtype, device)
            if data.dim() != 2:
                raise ValueError(f"PackedSequence.data: expected 2-D (rows, input_size), got "
                                 f"{data.dim()}-D")
            if data.shape[-1] != self.input_size:
                raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                                   f"{self.input_size}, got {data.shape[-1]}")
            T, B, t_idx, b_idx, lengths = _packed_layout(input.batch_sizes, input.sorted_indices,
                                                         data.shape[0])
            t_idx, b_idx = t_idx.to(device), b_idx.to(device)
            x = data.new_zeros((T, B, self.input_size)).index_put((t_idx, b_idx), data)
            batched = True
        else:
            self._check_tensor(input, "input", dtype, device)
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            if input.shape[-1] != self.input_size:
                raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                                   f"{self.input_size}, got {input.shape[-1]}")
            batched = input.dim() == 3
            # (batch_first: the kernels read x and write y batch-major, no layout copies)
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                B, T = x.shape[:2]
            else:
                T, B = x.shape[:2]
            if T == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            lengths = None

        if hx is None:
            h0_all = c0_all = None
        else:
            h0_all, c0_all = self._check_hx(hx, batched, B, dtype, device)
            if not batched:
                h0_all, c0_all = h0_all.unsqueeze(1), c0_all.unsqueeze(1)

        route = _route(device)
        # no tensor cores off the GPU: fp32 there (the class docstring)
        precision = self.precision if route.backend == "cuda" else "fp32"
        D = 2 if self.bidirectional else 1
        batch_major = self.batch_first and batched and not packed
        h_list, c_list = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                k = layer * D + direction
                weights = [getattr(self, name) for name in self._names[k]]
                if not self.bias:
                    weights += [None, None]
                y, h_n, c_n = _run_direction(
                    layer_input,
                    None if h0_all is None else h0_all[k],
                    None if c0_all is None else c0_all[k],
                    weights, lengths, direction == 1, route, precision,
                    cache=getattr(self, "_weight_cache", None), slot=k,
                    batch_first=batch_major)
                outputs.append(y)
                h_list.append(h_n)
                c_list.append(c_n)
            layer_input = outputs[0] if D == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = torch.nn.functional.dropout(layer_input, p=self.dropout,
                                                          training=True)
        output = layer_input
        h_n = torch.stack(h_list)
        c_n = torch.stack(c_list)

        if packed:
            output = PackedSequence(output[t_idx, b_idx], input.batch_sizes,
                                    input.sorted_indices, input.unsorted_indices)
        elif not batched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)
