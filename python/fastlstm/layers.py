"""Keras-like layers on NumPy (or CuPy) arrays, each with its own forward and backward.

    from fastlstm.layers import LSTM, Dense
    layer = LSTM(32, return_sequences=True)
    y = layer(x)                       # x (batch, time, features) -> y (batch, time, 32)

Names, arguments, defaults, shapes and weight layouts follow Keras 3, so that
``get_weights()`` returns the same arrays a Keras layer holds (LSTM: kernel (in, 4u),
recurrent_kernel (u, 4u), bias (4u,), gate blocks i, f, c, o).

Every layer implements

* ``build(input_shape)``: create the weights; ``input_shape`` includes the batch axis
  (``None`` for any size), as in Keras;
* ``forward(x, training=False, mask=None)``: the output, remembering what ``backward``
  needs;
* ``backward(dy)``: the gradient with respect to the input of the last ``forward``
  (``None`` for integer inputs), storing the weight gradients in ``layer.grads``
  (aligned with ``layer.trainable_weights``);
* ``compute_output_shape(input_shape)`` and ``compute_mask(x, mask)``.

Masks are (batch, time) booleans made by ``Embedding(mask_zero=True)`` or ``Masking``.
An LSTM turns a mask into per-sequence lengths for the fused kernels: each row's True
steps must form one contiguous run (right-padded ``padding='post'`` or left-padded
``padding='pre'`` sequences, as ``pad_sequences`` makes); anything else is rejected with
a ValueError. Outputs at masked steps follow Keras: the state is carried over, and a
``return_sequences`` output repeats the last valid output (0 before the first valid step,
and 0 everywhere masked inside ``Bidirectional``, which Keras forces).

The LSTM runs on the fused C++ kernels (``fastlstm.ops``) for the default activations
(tanh, sigmoid) without recurrent dropout. Other activations, and ``recurrent_dropout``
while training, take a NumPy step-by-step path that is several times slower.

Devices: a layer is bound to a device ("cpu" or "cuda", see ``fastlstm.set_device``) when it
is built -- by its model, or standalone to ``fastlstm.get_device()`` -- and ``layer.device``
says which. Its weights are then arrays of that device's module (NumPy or CuPy), and so are
its outputs and gradients; on "cuda" the LSTM runs ``fastlstm.ops`` with ``backend="cuda"``.
Initial weights, dropout masks and the other random draws are made on the host with
fastlstm's generator and uploaded, so a model gives the same numbers on either device.
Masks are small host (NumPy) arrays on both devices: the LSTM needs each row's run of
valid steps on the host to turn it into lengths.
"""

import contextlib
import functools
import operator
import re
import threading

import numpy as np

from . import _core
from . import _device as _devices
from . import _random, activations, initializers, ops, regularizers

__all__ = [
    "Layer", "InputLayer", "Input", "LSTM", "Dense", "Embedding", "Dropout", "Masking",
    "Bidirectional", "TimeDistributed", "Flatten", "Activation", "RepeatVector",
    "GlobalAveragePooling1D", "GlobalMaxPooling1D", "GlobalAvgPool1D", "GlobalMaxPool1D", "get",
    "serialize", "deserialize",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_name_counters = {}


def _snake(name):
    # (a digit stays with the capital after it, as Keras names GlobalAveragePooling1D
    # "global_average_pooling1d")
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[0-9])(?=[A-Z][a-z])", "_", name).lower()


def _unique_name(prefix):
    n = _name_counters.get(prefix, 0)
    _name_counters[prefix] = n + 1
    return prefix if n == 0 else f"{prefix}_{n}"


def _positive_int(value, name):
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected a positive integer, got {value!r}") from None
    if v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v}")
    return v


def _rate(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a float in [0, 1), got {value!r}")
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {v}")
    return v


def _resolved(getter, value, name):
    """getter(value) (activations.get, initializers.get, regularizers.get), its errors saying
    which argument the value was given for."""
    try:
        return getter(value)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name}: {e}") from None


def _bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _shape_tuple(shape, name):
    """A shape given by the user (without the batch axis) as a tuple of ints/None."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{name}: expected a tuple of dimensions, got {shape!r}") from None
    out = []
    for d in dims:
        if d is None:
            out.append(None)
            continue
        try:
            if isinstance(d, bool):
                raise TypeError
            d = operator.index(d)
        except TypeError:
            raise TypeError(f"{name}: dimensions must be integers or None, got {shape!r}") from None
        if d < 1:
            raise ValueError(f"{name}: dimensions must be >= 1, got {shape!r}")
        out.append(d)
    return tuple(out)


def _fmt_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        (",)" if len(shape) == 1 else ")")


_POLICY_CLASSES = ("DTypePolicy", "FloatDTypePolicy")


def _policy_name(dtype, name):
    """The dtype name inside a Keras 3 dtype policy: its serialized dict
    ``{"class_name": "DTypePolicy", "config": {"name": "float32"}}`` (what Keras's get_config
    writes for ``dtype``) or a ``keras.DTypePolicy`` object; None for anything else. A mixed
    policy (different compute and variable dtypes) is refused by name."""
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        if dtype.get("class_name") not in _POLICY_CLASSES or not isinstance(inner, dict) \
                or not isinstance(inner.get("name"), str):
            raise TypeError(f"{name}: expected 'float32' or 'float64' (or a Keras dtype policy "
                            f"{{'class_name': 'DTypePolicy', 'config': {{'name': ...}}}}), "
                            f"got {dtype!r}")
        policy = inner["name"]
    elif type(dtype).__name__ in _POLICY_CLASSES and isinstance(getattr(dtype, "name", None), str):
        policy = dtype.name
    else:
        return None
    if policy.startswith("mixed_"):
        raise ValueError(f"{name}: mixed-precision policy {policy!r} is not supported by "
                         "fastlstm; expected 'float32' or 'float64'")
    return policy


def _check_dtype(dtype, name="dtype"):
    if dtype is None:
        return None
    policy = _policy_name(dtype, name)
    if policy is not None:
        dtype = policy
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):  # ValueError: np.dtype reads other dicts as record layouts
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dtype!r}") from None
    if dt not in _FLOATS:
        raise ValueError(f"{name}: expected 'float32' or 'float64', got {dt}")
    return dt


# --------------------------------------------------------------------------- base class


class _UnitForgetBias(initializers.Initializer):
    """An LSTM's bias of 4 units values: ``init`` for gates i, g, o and ones for the forget gate
    (Keras's unit_forget_bias), drawn in that order: i, then g and o together."""

    def __init__(self, init, units):
        self.init, self.units = init, units

    def __call__(self, shape, dtype=None):
        u = self.units
        return np.concatenate([self.init((u,), dtype=dtype), np.ones((u,), dtype=dtype),
                               self.init((2 * u,), dtype=dtype)])


_shapes_only = threading.local()


@contextlib.contextmanager
def _weights_as_shapes():
    """Inside the block, layers that build (in this thread) hold read-only zero-stride placeholders
    of their weights' shapes: nothing is allocated and no initializer runs. ``load_model`` builds a
    file's architecture this way first, to check it against the stored weights before it
    allocates anything (a few bytes of JSON can ask for any size of layer)."""
    before = getattr(_shapes_only, "on", False)
    _shapes_only.on = True
    try:
        yield
    finally:
        _shapes_only.on = before

class Layer:
    """Base class: weights, names, building, shape checks and (de)serialisation."""

    #: Rank of the input including the batch axis (None: any rank >= 2).
    input_rank = None

    # Set to False around backward() (by _backward_wanting) when nothing before the layer
    # takes its input gradient; backward() may then skip computing it and return None.
    _input_grad_wanted = True

    def __init_subclass__(cls, **kwargs):
        # A subclass's build() only creates weights; wrapping it marks the layer built
        # whichever way it is called (directly, by __call__ or by a model).
        super().__init_subclass__(**kwargs)
        if "build" in cls.__dict__:
            inner = cls.__dict__["build"]

            @functools.wraps(inner)
            def build(self, input_shape, _inner=inner):
                if self.dtype is None:
                    self._set_dtype(None)
                if self._device is None:
                    self._bind_device(_devices.current())
                _inner(self, tuple(input_shape))
                self.input_shape = tuple(input_shape)
                self.built = True
            cls.build = build
    #: Whether the layer passes an incoming mask on unchanged.
    supports_masking = False

    def __init__(self, name=None, dtype=None, trainable=True, input_shape=None,
                 batch_input_shape=None, batch_size=None, input_dim=None, **kwargs):
        # Keras arguments fastlstm does not implement: accepted at their default (None), so
        # that Keras code passing them explicitly runs; anything else is refused by name.
        for key in [k for k in kwargs if k in ("activity_regularizer", "quantization_config")
                    or k.endswith("_constraint")]:
            if kwargs.pop(key) is not None:
                raise NotImplementedError(f"{type(self).__name__}: {key} is not supported by "
                                          "fastlstm (only its default, None)")
        if kwargs:
            bad = ", ".join(sorted(kwargs))
            raise TypeError(f"{type(self).__name__}: unexpected keyword argument(s): {bad}")
        if name is None:
            name = _unique_name(_snake(type(self).__name__))
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        self.name = name
        self._dtype_arg = _check_dtype(dtype)
        self.dtype = self._dtype_arg
        self.trainable = _bool(trainable, "trainable")
        if input_dim is not None and input_shape is None:
            input_shape = (_positive_int(input_dim, "input_dim"),)
        self._batch_input_shape = None
        if batch_input_shape is not None:
            shape = _shape_tuple(batch_input_shape, "batch_input_shape")
            self._batch_input_shape = shape
        elif input_shape is not None:
            shape = _shape_tuple(input_shape, "input_shape")
            bs = None if batch_size is None else _positive_int(batch_size, "batch_size")
            self._batch_input_shape = (bs,) + shape
        self.built = False
        self.input_shape = None       # full input shape with the batch axis, once built
        self._weight_names = []
        self._weights = []
        self._regularizers = []
        self.grads = []
        self._cache = None
        self._device = None           # a fastlstm._device.Device once bound (at build)

    # -- device ----------------------------------------------------------------------

    @property
    def device(self):
        """"cpu" or "cuda": where the layer's weights live and it computes (None until the
        layer is built or added to a built model)."""
        return None if self._device is None else self._device.name

    def _bind_device(self, device):
        """Run on ``device`` (a fastlstm._device.Device). A built layer cannot move: its
        weights live on the device it was built on."""
        if self._device is not None and self._device != device and self.built:
            raise ValueError(f"Layer {self.name!r} was built on device {self._device.name!r} "
                             f"and cannot run on {device.name!r}; create a new layer and copy "
                             "the weights with get_weights()/set_weights()")
        self._device = device

    @property
    def _xp(self):
        """The array module of the layer's device (numpy or cupy)."""
        if self._device is None:
            self._bind_device(_devices.current())
        return self._device.xp

    def _on_device(self, a, dtype=None):
        """``a`` as an array of the layer's device (uploaded or downloaded when needed)."""
        if self._device is None:
            self._bind_device(_devices.current())
        return self._device.asarray(a, dtype)

    # -- weights ---------------------------------------------------------------------

    def add_weight(self, name, shape, initializer, regularizer=None):
        if getattr(_shapes_only, "on", False):   # a placeholder (see _weights_as_shapes)
            value, regularizer = np.broadcast_to(np.zeros((), self.dtype), tuple(int(d) for d in shape)), None
        else:
            init = initializers.get(initializer)
            # drawn on the host, so that both devices start from the same values
            value = self._on_device(np.ascontiguousarray(init(tuple(shape), dtype=self.dtype), dtype=self.dtype))
        self._weight_names.append(name)
        self._weights.append(value)
        self._regularizers.append(regularizers.get(regularizer))
        return value

    @property
    def weights(self):
        """The layer's weight arrays (the live arrays of its device, updated in place by
        training; NumPy or CuPy). ``get_weights()`` gives NumPy copies."""
        return list(self._weights)

    def _weight_trainable(self):
        """Whether each of ``weights`` is trained (a list of bools, in the same order)."""
        return [bool(self.trainable)] * len(self.weights)

    @property
    def trainable_weights(self):
        return [w for w, t in zip(self.weights, self._weight_trainable()) if t]

    @property
    def non_trainable_weights(self):
        return [w for w, t in zip(self.weights, self._weight_trainable()) if not t]

    @property
    def weight_names(self):
        return list(self._weight_names)

    def get_weights(self):
        """NumPy copies of the weights (from the device when the layer is on one), in Keras's
        order."""
        return [_devices.to_numpy_copy(w) for w in self.weights]

    def set_weights(self, weights):
        """Copy ``weights`` (a list of arrays shaped like get_weights()) into the layer."""
        mine = self.weights
        weights = list(weights)
        if len(weights) != len(mine):
            raise ValueError(f"Layer {self.name!r} expects {len(mine)} weight arrays "
                             f"({', '.join(self._all_weight_names()) or 'none'}), "
                             f"got {len(weights)}")
        arrays = []
        for wname, target, value in zip(self._all_weight_names(), mine, weights):
            value = _devices.to_host(value)
            if value.shape != target.shape:
                raise ValueError(f"Layer {self.name!r} weight {wname!r}: expected shape "
                                 f"{target.shape}, got {value.shape}")
            if not np.issubdtype(value.dtype, np.number) or value.dtype.kind == "c":
                raise TypeError(f"Layer {self.name!r} weight {wname!r}: expected a real numeric "
                                f"array, got dtype {value.dtype}")
            arrays.append(value)
        for target, value in zip(mine, arrays):
            _devices.copy_into(target, value)   # in place: optimizer slots stay valid

    def _all_weight_names(self):
        return list(self._weight_names)

    def count_params(self):
        return int(sum(w.size for w in self.weights))

    def regularization_loss(self):
        """Sum of the regularizers' penalties on this layer's weights (a float)."""
        penalty = self._regularization_penalty()
        return 0.0 if penalty is None else _devices.read_scalars([penalty])[0]

    def _regularization_penalty(self):
        """The penalties' sum as a float64 scalar on the layer's device (None without
        regularizers), summed in the same order as regularization_loss."""
        total = None
        for r, w in zip(self._all_regularizers(), self.weights):
            if r is not None:
                p = r._penalty(w)
                total = p if total is None else total + p
        return total

    def _all_regularizers(self):
        return list(self._regularizers)

    def regularization_grads(self):
        """Gradients of the penalties, aligned with ``weights`` (None where none)."""
        return [None if r is None else r.gradient(w)
                for r, w in zip(self._all_regularizers(), self.weights)]

    # -- building and calling --------------------------------------------------------

    def _set_dtype(self, dtype):
        if self._dtype_arg is not None and dtype is not None and self._dtype_arg != dtype:
            raise ValueError(f"Layer {self.name!r} was created with dtype {self._dtype_arg} "
                             f"but the model uses {dtype}")
        self.dtype = self._dtype_arg or dtype or np.dtype(np.float32)

    def build(self, input_shape):
        self.input_shape = tuple(input_shape)
        self.built = True

    def _ensure_built(self, input_shape):
        if self.dtype is None:
            self._set_dtype(None)
        if self._device is None:
            self._bind_device(_devices.current())
        if not self.built:
            self._check_rank(input_shape)
            self.build(tuple(input_shape))
            self.input_shape = tuple(input_shape)
            self.built = True

    def _check_rank(self, shape):
        if self.input_rank is not None and len(shape) != self.input_rank:
            raise ValueError(
                f"Input of layer {self.name!r} ({type(self).__name__}) must have rank "
                f"{self.input_rank} {self._rank_hint()}, got shape {_fmt_shape(shape)}")

    def _rank_hint(self):
        return ""

    def _check_input_shape(self, shape):
        """Raise when an input shape does not fit the shape the layer was built for.

        The rank and the last (feature) axis must match; the batch axis too for a
        stateful layer; other axes (time steps) may vary from call to call, as in Keras.
        """
        self._check_rank(shape)
        expected = self.input_shape
        if expected is None:
            return
        bad = len(shape) != len(expected)
        if not bad and self._feature_axis_fixed and len(shape) >= 2:
            bad = expected[-1] is not None and shape[-1] != expected[-1]
        if not bad and getattr(self, "stateful", False) and expected[0] is not None:
            bad = shape[0] != expected[0]
        if bad:
            raise ValueError(
                f"Input of layer {self.name!r} ({type(self).__name__}) is incompatible with "
                f"the layer: expected shape {_fmt_shape(expected)}, got {_fmt_shape(shape)}")

    #: Whether the last input axis is fixed by the weights (False for Embedding).
    _feature_axis_fixed = True

    def _cast_input(self, x):
        """x as an array of the layer's dtype; a host array stays on the host, a device array
        on the device (the caller moves it)."""
        x = _devices.array_module(x).asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"Input of layer {self.name!r}: expected a numeric array, "
                            f"got dtype {x.dtype}")
        return x.astype(self.dtype, copy=False)

    def __call__(self, inputs, training=False, mask=None, **kwargs):
        if self.dtype is None:
            self._set_dtype(None)
        x = self._cast_input(inputs)
        self._ensure_built(x.shape)
        self._check_input_shape(x.shape)
        if mask is not None:
            mask = _devices.to_host(mask).astype(bool, copy=False)
        return self.forward(self._on_device(x), training=training, mask=mask, **kwargs)

    def forward(self, x, training=False, mask=None):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_mask(self, inputs, mask=None):
        """The output mask: a (batch, time) NumPy bool array or None."""
        return mask if self.supports_masking else None

    def _no_cache(self):
        raise RuntimeError(f"Layer {self.name!r}: backward() called without a forward() "
                           "with training data to go back through")

    # -- config ----------------------------------------------------------------------

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable,
                  "dtype": None if self.dtype is None else str(self.dtype)}
        if self._batch_input_shape is not None:
            config["batch_input_shape"] = list(self._batch_input_shape)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}, built={self.built}>"


# --------------------------------------------------------------------------- Input

class InputLayer(Layer):
    """Declares the input shape of a Sequential model (``Input(shape=(T, F))``)."""

    def __init__(self, shape=None, batch_size=None, dtype=None, name=None,
                 batch_shape=None, **kwargs):
        if shape is None and batch_shape is None:
            raise ValueError("Input: give `shape` (without the batch axis), e.g. "
                             "Input(shape=(timesteps, features))")
        # Keras's flags for other tensor kinds (written by its get_config): only their default.
        for key in ("optional", "ragged", "sparse"):
            if kwargs.pop(key, False) not in (False, None):
                raise NotImplementedError(f"Input: {key}=True is not supported by fastlstm "
                                          "(only dense inputs that are always given)")
        if batch_shape is not None:
            kwargs["batch_input_shape"] = batch_shape
        else:
            kwargs["input_shape"] = shape
            kwargs["batch_size"] = batch_size
        # An integer dtype (token ids for an Embedding) describes the input only; the
        # model's compute dtype is set by the model.
        self.input_dtype = None
        if dtype is not None:
            dtype = _policy_name(dtype, "dtype") or dtype
            try:
                dt = np.dtype(dtype)
            except (TypeError, ValueError):
                raise TypeError(f"dtype: expected a NumPy dtype, got {dtype!r}") from None
            if dt.kind in "iu":
                self.input_dtype, dtype = dt, None
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.supports_masking = True

    def forward(self, x, training=False, mask=None):
        self._cache = True
        return x

    def backward(self, dy):
        return dy

    def get_config(self):
        config = super().get_config()
        config["batch_shape"] = config.pop("batch_input_shape")
        config.pop("trainable")
        if self.input_dtype is not None:
            config["dtype"] = str(self.input_dtype)
        return config


def Input(shape=None, batch_size=None, dtype=None, name=None, batch_shape=None):
    """An InputLayer to start a Sequential model with, as ``keras.Input`` is used there."""
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name,
                      batch_shape=batch_shape)


# --------------------------------------------------------------------------- Dense

def _backward_wanting(layer, dy, wanted):
    """layer.backward(dy), the layer told whether its input gradient is wanted (see Layer);
    the flag is back to True afterwards, for a direct call of backward()."""
    layer._input_grad_wanted = wanted
    try:
        return layer.backward(dy)
    finally:
        layer._input_grad_wanted = True


def _whole_strides(a):
    """a, or a C-contiguous copy when a stride is not a whole number of elements (a field of
    a packed structured array): _core.matmul reads through element strides."""
    return a if all(st % a.itemsize == 0 for st in a.strides) else np.ascontiguousarray(a)


def _matmul(a, b, bias=None):
    """a @ b (+ bias) over a's last axis, b 2-D. NumPy arrays of one float dtype go to the
    kernels' own matrix product on their threads: NumPy's BLAS would wake its worker threads,
    which keep spinning after the product and take the cores from the LSTM kernels that run
    next (1.7x slower training steps measured, bench/NOTES.md 50). Others (CuPy) use their
    module's product."""
    if (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim >= 1 and b.ndim == 2
            and a.dtype in _FLOATS and b.dtype == a.dtype
            and (bias is None or (type(bias) is np.ndarray and bias.dtype == a.dtype))):
        # (rows counted, not -1: reshape(-1, 0) of an empty array is ambiguous, e.g. the
        # weight gradient's x.T of a batch of 0 rows)
        rows = functools.reduce(operator.mul, a.shape[:-1], 1)
        out = _core.matmul(_whole_strides(a.reshape(rows, a.shape[-1])), _whole_strides(b),
                           None if bias is None else np.ascontiguousarray(bias))
        return out.reshape(a.shape[:-1] + (b.shape[1],))
    z = a @ b
    if bias is not None:
        z += bias
    return z


class Dense(Layer):
    """``activation(x @ kernel + bias)`` on the last axis; kernel (in, units), bias (units,)."""

    supports_masking = True

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.units = _positive_int(units, "units")
        self.activation = _resolved(activations.get, activation, "activation")
        self.use_bias = _bool(use_bias, "use_bias")
        self.kernel_initializer = _resolved(initializers.get, kernel_initializer,
                                            "kernel_initializer")
        self.bias_initializer = _resolved(initializers.get, bias_initializer, "bias_initializer")
        self.kernel_regularizer = _resolved(regularizers.get, kernel_regularizer,
                                            "kernel_regularizer")
        self.bias_regularizer = _resolved(regularizers.get, bias_regularizer, "bias_regularizer")

    def _check_rank(self, shape):
        if len(shape) < 2:
            raise ValueError(f"Input of layer {self.name!r} (Dense) must have at least 2 axes "
                             f"(batch, ..., features), got shape {_fmt_shape(shape)}")
        if shape[-1] is None:
            raise ValueError(f"Layer {self.name!r} (Dense) needs a known last axis, got "
                             f"input shape {_fmt_shape(shape)}")

    def build(self, input_shape):
        fan_in = input_shape[-1]
        self.kernel = self.add_weight("kernel", (fan_in, self.units), self.kernel_initializer,
                                      self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight("bias", (self.units,), self.bias_initializer,
                                        self.bias_regularizer)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, training=False, mask=None):
        z = _matmul(x, self.kernel, self.bias if self.use_bias else None)
        y = self.activation(z)
        self._cache = (x, z, y)
        return y

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        x, z, y = self._cache
        dz = self.activation.backward(z, y, self._on_device(dy, self.dtype))
        x2 = x.reshape(-1, x.shape[-1])
        dz2 = dz.reshape(-1, self.units)
        grads = [_matmul(x2.T, dz2)]
        if self.use_bias:
            grads.append(dz2.sum(axis=0))
        self.grads = grads
        if not self._input_grad_wanted:
            return None
        return _matmul(dz, self.kernel.T)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, activation=activations.serialize(self.activation),
                      use_bias=self.use_bias,
                      kernel_initializer=initializers.serialize(self.kernel_initializer),
                      bias_initializer=initializers.serialize(self.bias_initializer),
                      kernel_regularizer=_ser_reg(self.kernel_regularizer),
                      bias_regularizer=_ser_reg(self.bias_regularizer))
        return config


def _ser_reg(reg):
    return None if reg is None else regularizers.serialize(reg)


class Activation(Layer):
    """Applies an activation function ('relu', 'softmax', ...) elementwise."""

    supports_masking = True

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = _resolved(activations.get, activation, "activation")

    def forward(self, x, training=False, mask=None):
        y = self.activation(x)
        self._cache = (x, y)
        return y

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        x, y = self._cache
        return self.activation.backward(x, y, self._on_device(dy, self.dtype))

    def get_config(self):
        config = super().get_config()
        config["activation"] = activations.serialize(self.activation)
        return config


class Flatten(Layer):
    """Flattens every axis but the batch axis."""

    def __init__(self, data_format=None, **kwargs):
        # Keras's argument (written by its get_config): only the channels-last order is built.
        if data_format not in (None, "channels_last"):
            raise NotImplementedError(f"Flatten: data_format={data_format!r} is not supported by "
                                      "fastlstm (only 'channels_last', the default)")
        super().__init__(**kwargs)

    def _check_rank(self, shape):
        if len(shape) < 2:
            raise ValueError(f"Input of layer {self.name!r} (Flatten) needs a batch axis and "
                             f"at least one more, got shape {_fmt_shape(shape)}")

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        n = None if any(d is None for d in rest) else int(np.prod(rest, dtype=np.int64))
        return (input_shape[0], n)

    def forward(self, x, training=False, mask=None):
        self._cache = x.shape
        # (the size of the rest explicitly: -1 cannot be inferred for an empty batch)
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        return dy.reshape(self._cache)


# --------------------------------------------------------------------------- RepeatVector / pooling

def _grad_like(layer, dy, shape, axes):
    """dy on the layer's device and dtype, checked against the output's shape (an error
    naming the layer and the axes, rather than a broadcast into wrong gradients)."""
    dy = layer._on_device(dy, layer.dtype)
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"Layer {layer.name!r}: backward: the gradient of the output must "
                         f"have shape {axes} = {_fmt_shape(tuple(shape))}, got "
                         f"{_fmt_shape(tuple(dy.shape))}")
    return dy


class RepeatVector(Layer):
    """(batch, features) -> (batch, n, features): the input repeated ``n`` times along a new
    time axis, as in an LSTM autoencoder (LSTM -> RepeatVector(T) ->
    LSTM(return_sequences=True) -> TimeDistributed(Dense)). Its output carries no mask
    (Keras's RepeatVector does not support masking)."""

    input_rank = 2

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = _positive_int(n, "n")

    def _rank_hint(self):
        return "(batch, features)"

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n, input_shape[1])

    def forward(self, x, training=False, mask=None):
        self._cache = tuple(x.shape)
        B, F = x.shape
        return self._xp.ascontiguousarray(self._xp.broadcast_to(x[:, None, :], (B, self.n, F)))

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        B, F = self._cache
        dy = _grad_like(self, dy, (B, self.n, F), "(batch, n, features)")
        return dy.sum(axis=1)

    def get_config(self):
        config = super().get_config()
        config["n"] = self.n
        return config


class _GlobalPooling1D(Layer):
    """Shared arguments, shapes and config of the two global pooling layers: (batch, steps,
    features) -> (batch, features), or (batch, 1, features) with ``keepdims=True``."""

    input_rank = 3

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        name = type(self).__name__
        if data_format == "channels_first":
            raise NotImplementedError(f"{name}: data_format='channels_first' is not supported "
                                      "by fastlstm (only 'channels_last', the default)")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{name}: data_format: expected 'channels_last' (or None), got "
                             f"{data_format!r}")
        super().__init__(**kwargs)
        self.keepdims = _bool(keepdims, "keepdims")

    def _rank_hint(self):
        return "(batch, steps, features)"

    def compute_output_shape(self, input_shape):
        B, _, F = input_shape
        return (B, 1, F) if self.keepdims else (B, F)

    def compute_mask(self, inputs, mask=None):
        return None                      # the time axis is gone: no mask goes further

    def _out_grad(self, dy, B, F):
        """dy checked against the output's shape, as (batch, features)."""
        if self.keepdims:
            return _grad_like(self, dy, (B, 1, F), "(batch, 1, features)").reshape(B, F)
        return _grad_like(self, dy, (B, F), "(batch, features)")

    def _shaped(self, y):
        return y[:, None, :] if self.keepdims else y

    def get_config(self):
        config = super().get_config()
        config.update(data_format="channels_last", keepdims=self.keepdims)
        return config


class GlobalAveragePooling1D(_GlobalPooling1D):
    """The mean over the time axis. With a mask (Embedding(mask_zero=True) or Masking, through
    layers that pass it on, e.g. LSTM(return_sequences=True)) the mean of the unmasked steps
    only, as Keras: a row with no unmasked step gives NaN (0 / 0, as Keras does). The output
    carries no mask."""

    supports_masking = True

    def forward(self, x, training=False, mask=None):
        xp = self._xp
        B, T, F = x.shape
        dt = x.dtype
        if mask is None:
            with np.errstate(invalid="ignore"):           # T == 0: NaN, as Keras's mean
                y = x.sum(axis=1) / dt.type(T)
            self._cache = (B, T, F, None, None)
            return self._shaped(y)
        mask = _devices.to_host(mask).astype(bool, copy=False)
        if mask.shape != (B, T):
            raise ValueError(f"Layer {self.name!r}: the mask must have shape (batch, steps) = "
                             f"({B}, {T}), got {mask.shape}")
        keep = self._on_device(mask)[:, :, None]
        count = self._on_device(mask.sum(axis=1, keepdims=True), dt)          # (B, 1)
        with np.errstate(invalid="ignore"):               # all steps masked: 0 / 0 = NaN
            y = xp.where(keep, x, dt.type(0)).sum(axis=1) / count
        self._cache = (B, T, F, keep, count)
        return self._shaped(y)

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        B, T, F, keep, count = self._cache
        dy = self._out_grad(dy, B, F)
        xp = self._xp
        dt = dy.dtype
        with np.errstate(divide="ignore", invalid="ignore"):
            if keep is None:
                return xp.ascontiguousarray(xp.broadcast_to((dy / dt.type(T))[:, None, :],
                                                            (B, T, F)))
            # (rows with no unmasked step: every step masked, so no inf/NaN reaches dx)
            return xp.where(keep, (dy / count)[:, None, :], dt.type(0))


class GlobalMaxPooling1D(_GlobalPooling1D):
    """The maximum over the time axis. As Keras 3's, it does not support masking: an incoming
    mask is ignored (the maximum runs over every step, padded ones included) and goes no
    further. The gradient is shared equally between the steps that reach the maximum (as
    Keras's backends do)."""

    def forward(self, x, training=False, mask=None):
        if x.shape[1] == 0:
            raise ValueError(f"Layer {self.name!r} (GlobalMaxPooling1D): the input has no steps "
                             f"to take the maximum over (shape {_fmt_shape(tuple(x.shape))})")
        y = x.max(axis=1)
        self._cache = (x, y)
        return self._shaped(y)

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        x, y = self._cache
        B, _, F = x.shape
        dy = self._out_grad(dy, B, F)
        xp = self._xp
        hit = x == y[:, None, :]
        ties = xp.maximum(hit.sum(axis=1), 1).astype(dy.dtype)         # (B, F)
        return xp.where(hit, (dy / ties)[:, None, :], dy.dtype.type(0))


GlobalAvgPool1D = GlobalAveragePooling1D      # Keras's aliases
GlobalMaxPool1D = GlobalMaxPooling1D


# --------------------------------------------------------------------------- Dropout / Masking

def _noise_shape(value):
    """Dropout's noise_shape as a tuple of positive ints / None; errors name the argument."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"noise_shape: expected a tuple of dimensions (ints or None), got {value!r}")
    return _shape_tuple(value, "noise_shape")


class Dropout(Layer):
    """While training, zeroes each element with probability ``rate`` and scales the rest
    by 1/(1 - rate); the identity at inference."""

    supports_masking = True

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _rate(rate, "rate")
        self.noise_shape = None if noise_shape is None else _noise_shape(noise_shape)
        self.seed = None if seed is None else _random.check_seed(seed)
        self._rng = None if seed is None else _random.generator(self.seed)

    def forward(self, x, training=False, mask=None):
        if not training or self.rate == 0.0:
            self._cache = None
            return x
        rng = self._rng or _random.generator()
        shape = x.shape
        if self.noise_shape is not None:
            if len(self.noise_shape) != x.ndim or any(
                    n is not None and n not in (1, s) for s, n in zip(x.shape, self.noise_shape)):
                raise ValueError(f"Layer {self.name!r}: noise_shape {self.noise_shape} does not "
                                 f"broadcast to the input's shape {tuple(x.shape)} (one entry per "
                                 "axis, each None, 1 or that axis's size)")
            shape = tuple(s if n is None else n for s, n in zip(x.shape, self.noise_shape))
        # drawn on the host (the same mask on every device), then uploaded
        keep = (rng.random(shape) >= self.rate).astype(x.dtype) * \
            x.dtype.type(1.0 / (1.0 - self.rate))
        keep = self._on_device(keep)
        self._cache = keep
        return x * keep

    def backward(self, dy):
        dy = self._on_device(dy)
        return dy if self._cache is None else dy * self._cache

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, noise_shape=None if self.noise_shape is None
                      else list(self.noise_shape), seed=self.seed)
        return config


class Masking(Layer):
    """Masks the time steps whose features all equal ``mask_value`` (and zeroes them)."""

    input_rank = 3

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(mask_value, bool) or not isinstance(mask_value, (int, float, np.number)):
            raise TypeError(f"mask_value: expected a number, got {mask_value!r}")
        self.mask_value = float(mask_value)

    def _rank_hint(self):
        return "(batch, time, features)"

    def compute_mask(self, inputs, mask=None):
        xp = _devices.array_module(inputs)
        return _devices.to_host(xp.any(inputs != self.mask_value, axis=-1))

    def forward(self, x, training=False, mask=None):
        keep = self._xp.any(x != self.mask_value, axis=-1, keepdims=True)
        self._cache = keep
        return x * keep

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        return self._on_device(dy) * self._cache

    def get_config(self):
        config = super().get_config()
        config["mask_value"] = self.mask_value
        return config


# --------------------------------------------------------------------------- Embedding

class Embedding(Layer):
    """Integer indices (batch, time) -> vectors (batch, time, output_dim)."""

    _feature_axis_fixed = False

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, mask_zero=False, input_length=None, **kwargs):
        if input_length is not None and "input_shape" not in kwargs:
            kwargs["input_shape"] = (input_length,)
        super().__init__(**kwargs)
        self.input_dim = _positive_int(input_dim, "input_dim")
        self.output_dim = _positive_int(output_dim, "output_dim")
        self.embeddings_initializer = _resolved(initializers.get, embeddings_initializer,
                                                "embeddings_initializer")
        self.embeddings_regularizer = _resolved(regularizers.get, embeddings_regularizer,
                                                "embeddings_regularizer")
        self.mask_zero = _bool(mask_zero, "mask_zero")

    def _check_rank(self, shape):
        if len(shape) < 1:
            raise ValueError(f"Input of layer {self.name!r} (Embedding) must have a batch "
                             f"axis, got shape {_fmt_shape(shape)}")

    def build(self, input_shape):
        self.embeddings = self.add_weight("embeddings", (self.input_dim, self.output_dim),
                                          self.embeddings_initializer,
                                          self.embeddings_regularizer)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def _cast_input(self, x):
        xp = _devices.array_module(x)
        x = xp.asarray(x)
        if x.dtype.kind in "iu":
            idx = x.astype(np.int64, copy=False)
            integral = True
        elif x.dtype.kind == "f":
            idx = x.astype(np.int64)
            integral = xp.all(idx == x)
        else:
            raise TypeError(f"Input of layer {self.name!r} (Embedding): expected integer "
                            f"indices, got dtype {x.dtype}")
        if not idx.size:
            return idx
        # one read of the checks (x may be a device array)
        integral, low, high = _devices.read_scalars([integral, idx.min(), idx.max()])
        if not integral:
            raise ValueError(f"Input of layer {self.name!r} (Embedding): expected integer "
                             "indices, got non-integral floats")
        if low < 0 or high >= self.input_dim:
            raise ValueError(f"Input of layer {self.name!r} (Embedding): indices must be in "
                             f"[0, input_dim) = [0, {self.input_dim}), got min {int(low)} "
                             f"and max {int(high)}")
        return idx

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return _devices.to_host(inputs) != 0

    def forward(self, x, training=False, mask=None):
        self._cache = x
        return self.embeddings[x]

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        grad = self._xp.zeros_like(self.embeddings)
        _devices.index_add_rows(grad, self._cache.reshape(-1),
                                self._on_device(dy, self.dtype).reshape(-1, self.output_dim))
        self.grads = [grad]
        return None

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                      embeddings_initializer=initializers.serialize(self.embeddings_initializer),
                      embeddings_regularizer=_ser_reg(self.embeddings_regularizer),
                      mask_zero=self.mask_zero)
        return config


# --------------------------------------------------------------------------- LSTM

def _mask_runs(mask, B, T, layer_name):
    """(start, length) of each row's one contiguous run of True steps.

    Rows without any True step get (0, 0). Any other pattern raises ValueError. The mask
    and the results are host (NumPy) arrays.
    """
    mask = _devices.to_host(mask).astype(bool, copy=False)
    if mask.shape != (B, T):
        raise ValueError(f"Layer {layer_name!r}: the mask must have shape (batch, timesteps) = "
                         f"({B}, {T}), got {mask.shape}")
    counts = mask.sum(axis=1)
    if T == 0:  # (no steps: every row has no run; argmax of an empty axis would raise)
        return np.zeros(mask.shape[0], np.int64), np.zeros(mask.shape[0], np.int64)
    start = np.where(counts > 0, np.argmax(mask, axis=1), 0)
    end = np.where(counts > 0, T - np.argmax(mask[:, ::-1], axis=1), 0)
    if np.any(end - start != counts):
        bad = int(np.flatnonzero(end - start != counts)[0])
        raise ValueError(
            f"Layer {layer_name!r}: the mask of sample {bad} has gaps; fastlstm's LSTM needs "
            "each sequence's unmasked steps to be one contiguous run (padding only at the "
            "start or only at the end, as pad_sequences makes)")
    return start.astype(np.int64), counts.astype(np.int64)


class _Generic:
    """The NumPy step-by-step LSTM for non-default activations and recurrent dropout.

    Time-major like fastlstm.ops: x (T, B, I), y (T, B, H); same lengths/reverse rules.
    ``rec_mask`` (4, B, H): gate k's recurrent product takes h_{t-1} * rec_mask[k] (recurrent
    dropout); ``in_masks`` (4, B, I): gate k's input projection takes x * in_masks[k] (input
    dropout alongside recurrent dropout). Four independent masks per sample, as Keras 3's LSTM
    cell draws them when recurrent_dropout > 0 (its "implementation 1").
    All arrays, lengths (B,) included, are of one module (NumPy or CuPy).
    """

    @staticmethod
    def forward(x, kernel, rk, bias, h0, c0, lengths, reverse, act, rec_act, rec_mask, in_masks=None):
        xp = _devices.array_module(x)
        T, B, _ = x.shape
        H = rk.shape[0]
        if in_masks is None:
            proj = x @ kernel
        else:
            proj = xp.concatenate([(x * in_masks[k][None]) @ kernel[:, k * H:(k + 1) * H]
                                   for k in range(4)], axis=-1)
        if bias is not None:
            proj += bias
        h, c = h0.copy(), c0.copy()
        y = xp.zeros((T, B, H), dtype=x.dtype)
        zero = x.dtype.type(0)
        steps = []
        for s in range(T):
            t = T - 1 - s if reverse else s
            valid = (lengths > t)[:, None]
            h_in = h
            if rec_mask is None:
                z = proj[t] + h @ rk
            else:
                z = proj[t] + xp.concatenate([(h * rec_mask[k]) @ rk[:, k * H:(k + 1) * H]
                                              for k in range(4)], axis=-1)
            zi, zf, zg, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            i, f, g, o = rec_act(zi), rec_act(zf), act(zg), rec_act(zo)
            c_new = f * c + i * g
            a = act(c_new)
            h_new = o * a
            steps.append((t, valid, h_in, z, i, f, g, o, c.copy(), c_new, a))
            c = xp.where(valid, c_new, c)
            h = xp.where(valid, h_new, h)
            y[t] = xp.where(valid, h_new, zero)
        return y, h, c, (x, kernel, rk, bias is not None, steps, act, rec_act, rec_mask, in_masks)

    @staticmethod
    def backward(saved, dy, dh_n, dc_n):
        x, kernel, rk, has_bias, steps, act, rec_act, rec_mask, in_masks = saved
        xp = _devices.array_module(x)
        T, B, I = x.shape
        H = rk.shape[0]
        dh, dc = dh_n.copy(), dc_n.copy()
        dz_all = xp.zeros((T, B, 4 * H), dtype=x.dtype)
        drk = xp.zeros_like(rk)
        for (t, valid, h_in, z, i, f, g, o, c_prev, c_new, a) in reversed(steps):
            dh_new = dh + dy[t]
            do = dh_new * a
            dc_new = dc + act.backward(c_new, a, dh_new * o)
            dz = xp.empty((B, 4 * H), dtype=x.dtype)
            dz[:, :H] = rec_act.backward(z[:, :H], i, dc_new * g)
            dz[:, H:2 * H] = rec_act.backward(z[:, H:2 * H], f, dc_new * c_prev)
            dz[:, 2 * H:3 * H] = act.backward(z[:, 2 * H:3 * H], g, dc_new * i)
            dz[:, 3 * H:] = rec_act.backward(z[:, 3 * H:], o, do)
            dz *= valid
            if rec_mask is None:
                dh_prev = dz @ rk.T
                drk += h_in.T @ dz
            else:
                dh_prev = xp.zeros_like(dh)
                for k in range(4):
                    cols = slice(k * H, (k + 1) * H)
                    dh_prev += (dz[:, cols] @ rk[:, cols].T) * rec_mask[k]
                    drk[:, cols] += (h_in * rec_mask[k]).T @ dz[:, cols]
            dz_all[t] = dz
            dh = xp.where(valid, dh_prev, dh)
            dc = xp.where(valid, dc_new * f, dc)
        if in_masks is None:
            dkernel = x.reshape(-1, I).T @ dz_all.reshape(-1, 4 * H)
            dx = dz_all @ kernel.T
        else:
            dkernel = xp.empty_like(kernel)
            dx = xp.zeros_like(x)
            for k in range(4):
                cols = slice(k * H, (k + 1) * H)
                dkernel[:, cols] = (x * in_masks[k][None]).reshape(-1, I).T @ dz_all[..., cols].reshape(-1, H)
                dx += (dz_all[..., cols] @ kernel[:, cols].T) * in_masks[k][None]
        dbias = dz_all.reshape(-1, 4 * H).sum(axis=0) if has_bias else None
        return dx, dh, dc, dkernel, drk, dbias


class LSTM(Layer):
    """Long short-term memory layer (Keras 3 arguments), batch-major (batch, time, features).

    Weights: kernel (input_dim, 4 * units), recurrent_kernel (units, 4 * units),
    bias (4 * units,), gate blocks i, f, c, o.

    precision (fastlstm's own, not Keras's): "fp32" (default: every product in the model's
    dtype), or "tf32" / "bf16" / "tf32x3" for a float32 layer: on the "cuda" device the LSTM's
    matrix products run on tensor cores, as ``fastlstm.ops``' option of that name (errors near
    1e-3 for tf32 and 1e-2 for bf16 against float64; tf32x3 float32's accuracy). On the CPU,
    which has no tensor cores, the layer computes in float32 as with "fp32" (so a model trained
    on the GPU loads and predicts on the CPU, more exactly). It needs the fused kernels (the
    default activations and no recurrent_dropout: a ValueError at construction otherwise) and
    a float32 layer (a ValueError when built in float64).
    """

    input_rank = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias=True, kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, dropout=0.0, recurrent_dropout=0.0,
                 return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, seed=None, unroll=False, zero_output_for_mask=False,
                 use_cudnn="auto", precision="fp32", **kwargs):
        super().__init__(**kwargs)
        # Keras's cuDNN switch: fastlstm always runs its own kernels, so it has no effect
        if not (isinstance(use_cudnn, bool) or (isinstance(use_cudnn, str) and use_cudnn == "auto")):
            raise ValueError(f"use_cudnn: expected 'auto', True or False, got {use_cudnn!r}")
        self.units = _positive_int(units, "units")
        self.activation = _resolved(activations.get, activation, "activation")
        self.recurrent_activation = _resolved(activations.get, recurrent_activation,
                                              "recurrent_activation")
        if self.activation.name == "softmax" or self.recurrent_activation.name == "softmax":
            raise ValueError("activation/recurrent_activation: 'softmax' is not an elementwise "
                             "function and cannot be used inside an LSTM cell")
        self.use_bias = _bool(use_bias, "use_bias")
        self.kernel_initializer = _resolved(initializers.get, kernel_initializer,
                                            "kernel_initializer")
        self.recurrent_initializer = _resolved(initializers.get, recurrent_initializer,
                                               "recurrent_initializer")
        self.bias_initializer = _resolved(initializers.get, bias_initializer, "bias_initializer")
        self.unit_forget_bias = _bool(unit_forget_bias, "unit_forget_bias")
        self.kernel_regularizer = _resolved(regularizers.get, kernel_regularizer,
                                            "kernel_regularizer")
        self.recurrent_regularizer = _resolved(regularizers.get, recurrent_regularizer,
                                               "recurrent_regularizer")
        self.bias_regularizer = _resolved(regularizers.get, bias_regularizer, "bias_regularizer")
        self.dropout = _rate(dropout, "dropout")
        self.recurrent_dropout = _rate(recurrent_dropout, "recurrent_dropout")
        self.return_sequences = _bool(return_sequences, "return_sequences")
        self.return_state = _bool(return_state, "return_state")
        self.go_backwards = _bool(go_backwards, "go_backwards")
        self.stateful = _bool(stateful, "stateful")
        self.unroll = _bool(unroll, "unroll")          # accepted for Keras code; no effect
        self.zero_output_for_mask = _bool(zero_output_for_mask, "zero_output_for_mask")
        self.seed = None if seed is None else _random.check_seed(seed)
        self._rng = None if seed is None else _random.generator(self.seed)
        self.states = None           # [h, c] carried between calls when stateful
        self.last_path = None        # "fused" or "numpy": which implementation ran last
        if not isinstance(precision, str) or precision not in ops.PRECISIONS:
            raise ValueError(f"precision: expected one of {ops.PRECISIONS}, got {precision!r}")
        if precision != "fp32" and not self.uses_fused_kernels:
            raise ValueError(f"precision={precision!r} needs the fused kernels (activation='tanh', "
                             f"recurrent_activation='sigmoid'); layer {self.name!r} has "
                             f"{self.activation.name!r} / {self.recurrent_activation.name!r}, which "
                             f"compute in the layer's dtype only: use precision='fp32'")
        if precision != "fp32" and self.recurrent_dropout > 0:
            raise ValueError(f"precision={precision!r} needs the fused kernels, and "
                             f"recurrent_dropout > 0 (layer {self.name!r}) trains on the NumPy path, "
                             f"which computes in the layer's dtype only: use precision='fp32'")
        self.precision = precision

    def _rank_hint(self):
        return "(batch, timesteps, features)"

    # Weights packed once for a run of inference forwards (ops.pack_weights), set only by
    # _inference_packing (predict, evaluate); None: each forward packs them itself.
    _inference_packed = None

    @property
    def uses_fused_kernels(self):
        """True when the default activations let the layer run on the fused kernels."""
        return self.activation.name == "tanh" and self.recurrent_activation.name == "sigmoid"

    def build(self, input_shape):
        if input_shape[-1] is None or input_shape[-1] < 1:
            raise ValueError(f"Layer {self.name!r} (LSTM) needs a known feature axis of size "
                             f">= 1, got input shape {_fmt_shape(input_shape)}")
        if self.precision != "fp32" and self.dtype != np.float32:
            raise ValueError(f"Layer {self.name!r} (LSTM): precision={self.precision!r} takes a "
                             f"float32 layer (tensor cores with float32 accumulation), but the "
                             f"layer is {self.dtype.name}; use precision='fp32' for it")
        u = self.units
        self.kernel = self.add_weight("kernel", (input_shape[-1], 4 * u),
                                      self.kernel_initializer, self.kernel_regularizer)
        self.recurrent_kernel = self.add_weight("recurrent_kernel", (u, 4 * u),
                                                self.recurrent_initializer,
                                                self.recurrent_regularizer)
        if self.use_bias:
            if self.unit_forget_bias:
                self.bias = self.add_weight("bias", (4 * u,), _UnitForgetBias(self.bias_initializer, u),
                                            self.bias_regularizer)
            else:
                self.bias = self.add_weight("bias", (4 * u,), self.bias_initializer,
                                            self.bias_regularizer)
        else:
            self.bias = None

    def compute_output_shape(self, input_shape):
        B, T = input_shape[0], input_shape[1]
        out = (B, T, self.units) if self.return_sequences else (B, self.units)
        if self.return_state:
            return [out, (B, self.units), (B, self.units)]
        return out

    def compute_mask(self, inputs, mask=None):
        if mask is None or not self.return_sequences:
            return None
        # Keras passes the input mask on unchanged, also with go_backwards (whose outputs
        # are in reversed time order); fastlstm does the same so models behave alike.
        return _devices.to_host(mask).astype(bool, copy=False)

    def reset_states(self, states=None):
        """Forget (or set, with ``[h, c]``) the carried state of a stateful layer."""
        if not self.stateful:
            raise AttributeError(f"Layer {self.name!r} is not stateful")
        if states is None:
            self.states = None
            return
        if isinstance(states, (str, bytes)) or not hasattr(states, "__len__") or len(states) != 2:
            n = len(states) if hasattr(states, "__len__") else type(states).__name__
            raise ValueError(f"Layer {self.name!r}: reset_states(states) expects [h, c], got {n}"
                             f"{' arrays' if isinstance(n, int) else ''}")
        batch = None if self.input_shape is None else self.input_shape[0]
        out = []
        for nm, s in zip(("h", "c"), states):
            s = self._xp.array(self._on_device(s, self.dtype))
            if s.ndim != 2 or s.shape[1] != self.units or (batch is not None and s.shape[0] != batch):
                want = f"({'batch' if batch is None else batch}, {self.units})"
                raise ValueError(f"Layer {self.name!r}: reset_states: state {nm} must have shape "
                                 f"(batch, units) = {want}, got {tuple(s.shape)}")
            out.append(s)
        if out[0].shape != out[1].shape:
            raise ValueError(f"Layer {self.name!r}: reset_states: h and c must have the same shape, "
                             f"got {tuple(out[0].shape)} and {tuple(out[1].shape)}")
        self.states = out

    reset_state = reset_states

    def _initial(self, B, initial_state):
        H = self.units
        xp = self._xp
        if initial_state is not None:
            if len(initial_state) != 2:
                raise ValueError(f"Layer {self.name!r}: initial_state must be [h, c], got "
                                 f"{len(initial_state)} arrays")
            out = []
            for nm, s in zip(("h", "c"), initial_state):
                s = xp.ascontiguousarray(self._on_device(s, self.dtype))
                if s.shape != (B, H):
                    raise ValueError(f"Layer {self.name!r}: initial state {nm} must have shape "
                                     f"(batch, units) = ({B}, {H}), got {s.shape}")
                out.append(s)
            return out, True
        if self.stateful and self.states is not None:
            if self.states[0].shape != (B, H):
                raise ValueError(f"Layer {self.name!r} is stateful and holds states for batch "
                                 f"size {self.states[0].shape[0]}, got a batch of {B}; use a "
                                 "fixed batch size or call reset_states()")
            return [self.states[0], self.states[1]], False
        return [xp.zeros((B, H), self.dtype), xp.zeros((B, H), self.dtype)], False

    def forward(self, x, training=False, mask=None, initial_state=None):
        B, T, I = x.shape
        H = self.units
        xp = self._xp
        rng = self._rng or _random.generator()
        (h0, c0), grad_to_state = self._initial(B, initial_state)

        # Dropout masks are drawn on the host (the same on every device) and uploaded; held
        # over time. As Keras 3: one mask per sample for all gates, or, with recurrent dropout
        # (its per-gate cell), four independent masks per sample, one per gate, for each of
        # the input and the recurrent dropout.
        per_gate = training and self.recurrent_dropout > 0
        in_mask = in_masks = None
        if training and self.dropout > 0:
            keep = self.dtype.type(1.0 / (1.0 - self.dropout))
            if per_gate:
                in_masks = self._on_device((rng.random((4, B, I)) >= self.dropout).astype(self.dtype) * keep)
            else:
                in_mask = self._on_device((rng.random((B, 1, I)) >= self.dropout).astype(self.dtype) * keep)
                x = x * in_mask
        rec_mask = None
        if per_gate:
            rec_mask = self._on_device(
                (rng.random((4, B, H)) >= self.recurrent_dropout).astype(self.dtype) *
                self.dtype.type(1.0 / (1.0 - self.recurrent_dropout)))

        # Masks (host arrays): shift each sequence so its valid run starts at step 0, then
        # use lengths (host int64, as fastlstm.ops takes them on every backend).
        gather = scatter = None         # (B, T) time indices on the device
        if mask is not None:
            mask = _devices.to_host(mask).astype(bool, copy=False)
            start, lengths = _mask_runs(mask, B, T, self.name)
            if np.any(start):
                steps = np.arange(T)[None, :]
                # x[b, (t + start) % T] moves to t; scatter undoes it: y[b, t] moves to
                # (t + start) % T, the steps that wrap around holding y's zeros past the run
                gather = self._on_device((steps + start[:, None]) % T)
                scatter = self._on_device((steps - start[:, None]) % T)
                x = _devices.take_along_time(x, gather)
            if np.all(lengths == T):
                lengths = None
        else:
            lengths = None

        fused = self.uses_fused_kernels and rec_mask is None
        if fused:   # (the kernels read x and write y batch-major: no layout copies)
            y, h_n, c_n, saved = ops.lstm_forward(
                x, self.kernel, self.recurrent_kernel, self.bias, h0, c0, lengths,
                reverse=self.go_backwards, training=bool(training),
                backend=self._device.lstm_backend,
                precision="fp32" if self._device.is_host else self.precision, batch_first=True,
                packed=None if training else self._inference_packed)
        else:
            lens = self._on_device(np.full(B, T, np.int64) if lengths is None else lengths)
            y_tm, h_n, c_n, saved = _Generic.forward(
                xp.ascontiguousarray(x.transpose(1, 0, 2)), self.kernel,      # x (T, B, I)
                self.recurrent_kernel, self.bias, h0, c0, lens,
                self.go_backwards, self.activation, self.recurrent_activation, rec_mask,
                None if in_masks is None else xp.ascontiguousarray(in_masks))
            y = y_tm.transpose(1, 0, 2)
            if not training:
                saved = None
        self.last_path = "fused" if fused else "numpy"

        # y (B, T, H): in the time order and with the fill values Keras gives.
        fill_last = zero_last = None
        if self.return_sequences:
            if scatter is not None:
                y = _devices.take_along_time(xp.ascontiguousarray(y), scatter)
            # (reversed in time, if at all, by the one copy)
            y = xp.ascontiguousarray(y[:, ::-1] if self.go_backwards else y)
            if mask is not None:
                m = mask[:, ::-1] if self.go_backwards else mask
                # steps after the last valid one repeat the final output (Keras)
                after = ~m & (np.cumsum(m, axis=1) == m.sum(axis=1, keepdims=True)) & \
                    (m.sum(axis=1, keepdims=True) > 0)
                if not self.zero_output_for_mask and after.any():
                    fill_last = self._on_device(after)[:, :, None]           # (B, T, 1)
                    y = xp.where(fill_last, h_n[:, None, :], y)
            output = y
        else:
            output = h_n.copy()
            zero = None
            if mask is not None and self.zero_output_for_mask and T > 0:
                # Keras (its rnn loop): the output of a masked step is zeros, and the
                # layer's output is that of the last step it processed (the last one; the
                # first with go_backwards), so a row masked there outputs zeros (its returned
                # state is still the last valid one)
                zero = ~(mask[:, 0] if self.go_backwards else mask[:, -1])
            elif lengths is not None:
                # a sequence with no valid step has no last output: Keras gives zeros (its
                # returned state stays the initial one)
                zero = lengths == 0
            if zero is not None and zero.any():
                zero_last = self._on_device(zero)[:, None]                          # (B, 1)
                output = xp.where(zero_last, self.dtype.type(0), output)

        if self.stateful:
            self.states = [h_n.copy(), c_n.copy()]
        self._cache = None
        if training:
            self._cache = dict(fused=fused, saved=saved, in_mask=in_mask, gather=gather,
                               scatter=scatter, fill_last=fill_last, zero_last=zero_last, T=T, B=B,
                               grad_to_state=grad_to_state)
        if self.return_state:
            return [output, h_n, c_n]
        return output

    def backward(self, dy):
        cache = self._cache
        if cache is None:
            self._no_cache()
        if self.return_state:
            dy, dh_extra, dc_extra = (list(dy) + [None, None])[:3]
        else:
            dh_extra = dc_extra = None
        T, B = cache["T"], cache["B"]
        H = self.units
        dt = self.dtype
        xp = self._xp

        def checked(value, what, shape, axes):
            value = self._on_device(value, dt)
            if tuple(value.shape) != shape:
                raise ValueError(f"Layer {self.name!r}: backward: the gradient of {what} must "
                                 f"have shape {axes} = {_fmt_shape(shape)}, got "
                                 f"{_fmt_shape(tuple(value.shape))}")
            return value
        dh_n = None if dh_extra is None else xp.array(
            checked(dh_extra, "the returned state h", (B, H), "(batch, units)"))
        dc_n = None if dc_extra is None else xp.ascontiguousarray(
            checked(dc_extra, "the returned state c", (B, H), "(batch, units)"))
        dy_seq = None
        if dy is not None:
            if self.return_sequences:
                dy = checked(dy, "the output", (B, T, H), "(batch, timesteps, units)")
            else:
                dy = checked(dy, "the output", (B, H), "(batch, units)")
            if self.return_sequences:
                if cache["fill_last"] is not None:
                    extra = xp.sum(dy * cache["fill_last"], axis=1)
                    dh_n = extra if dh_n is None else dh_n + extra
                    dy = xp.where(cache["fill_last"], dt.type(0), dy)
                if self.go_backwards:
                    dy = dy[:, ::-1]
                if cache["gather"] is not None:
                    dy = _devices.take_along_time(dy, cache["gather"])
                # (B, T, H) for the kernels, (T, B, H) for the NumPy path
                dy_seq = xp.ascontiguousarray(dy if cache["fused"] else dy.transpose(1, 0, 2))
            else:
                if cache["zero_last"] is not None:     # rows whose output is zeros
                    dy = xp.where(cache["zero_last"], dt.type(0), dy)
                dh_n = dy.copy() if dh_n is None else dh_n + dy
        need_dx = self._input_grad_wanted
        if cache["fused"]:   # dx (B, T, I)
            dx, dh0, dc0, dk, drk, db = ops.lstm_backward(
                cache["saved"], dy_seq,
                None if dh_n is None else xp.ascontiguousarray(dh_n, dtype=dt),
                dc_n, need_dx=need_dx)
        else:
            zeros = xp.zeros((B, H), dt)
            dx_tm, dh0, dc0, dk, drk, db = _Generic.backward(
                cache["saved"], xp.zeros((T, B, H), dt) if dy_seq is None else dy_seq,
                zeros if dh_n is None else dh_n, zeros if dc_n is None else dc_n)
            dx = dx_tm.transpose(1, 0, 2)
        self.grads = [dk, drk] + ([db] if self.use_bias else [])
        self.initial_state_grads = [dh0, dc0] if cache["grad_to_state"] else None
        if not need_dx:
            return None
        if cache["scatter"] is not None:
            dx = _devices.take_along_time(dx, cache["scatter"])
        if cache["in_mask"] is not None:
            dx = dx * cache["in_mask"]
        return xp.ascontiguousarray(dx)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, activation=activations.serialize(self.activation),
            recurrent_activation=activations.serialize(self.recurrent_activation),
            use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            recurrent_initializer=initializers.serialize(self.recurrent_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            unit_forget_bias=self.unit_forget_bias,
            kernel_regularizer=_ser_reg(self.kernel_regularizer),
            recurrent_regularizer=_ser_reg(self.recurrent_regularizer),
            bias_regularizer=_ser_reg(self.bias_regularizer),
            dropout=self.dropout, recurrent_dropout=self.recurrent_dropout,
            return_sequences=self.return_sequences, return_state=self.return_state,
            go_backwards=self.go_backwards, stateful=self.stateful, seed=self.seed,
            zero_output_for_mask=self.zero_output_for_mask)
        if self.precision != "fp32":  # (fastlstm's own argument: Keras configs stay Keras's)
            config["precision"] = self.precision
        return config


# --------------------------------------------------------------------------- wrappers

class _Wrapper(Layer):
    """Shared weight handling for layers that own other layers."""

    def _sublayers(self):
        raise NotImplementedError

    @property
    def weights(self):
        return [w for layer in self._sublayers() for w in layer.weights]

    def _weight_trainable(self):
        # Keras: a wrapped layer frozen on its own stays frozen inside a trainable wrapper
        return [bool(self.trainable) and t for layer in self._sublayers() for t in layer._weight_trainable()]

    def _all_weight_names(self):
        return [f"{layer.name}/{n}" for layer in self._sublayers() for n in layer._weight_names]

    def _all_regularizers(self):
        return [r for layer in self._sublayers() for r in layer._all_regularizers()]

    def _set_dtype(self, dtype):
        if dtype is None and self._dtype_arg is None:
            dtype = next((l._dtype_arg for l in self._sublayers() if l._dtype_arg), None)
        super()._set_dtype(dtype)
        for layer in self._sublayers():
            layer._set_dtype(self.dtype)

    def _bind_device(self, device):
        super()._bind_device(device)
        for layer in self._sublayers():
            layer._bind_device(device)


def _lstm_layers(layers):
    """The LSTM layers among `layers`, those inside wrappers (Bidirectional, TimeDistributed)
    included."""
    for layer in layers:
        if isinstance(layer, LSTM):
            yield layer
        elif isinstance(layer, _Wrapper):
            yield from _lstm_layers(layer._sublayers())


@contextlib.contextmanager
def _inference_packing(layers, enabled=True):
    """Within it, every built LSTM among `layers` that runs on the CPU kernels takes its
    inference forwards from weights packed once on entry, instead of packing them in each call
    (bench/NOTES.md 59). The caller promises that the weights do not change meanwhile
    (predict, evaluate, validation: when no callback acts between batches)."""
    chosen = [layer for layer in _lstm_layers(layers)
              if layer.built and layer.uses_fused_kernels and layer._device is not None
              and layer._device.is_host] if enabled else []
    try:
        for layer in chosen:
            layer._inference_packed = ops.pack_weights(layer.kernel, layer.recurrent_kernel)
        yield
    finally:
        for layer in chosen:
            layer._inference_packed = None


class TimeDistributed(_Wrapper):
    """Applies ``layer`` to every time step: (batch, time, ...) -> (batch, time, ...)."""

    supports_masking = True

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer: expected a fastlstm layer, got {type(layer).__name__}")
        super().__init__(**kwargs)
        self.layer = layer

    def _sublayers(self):
        return [self.layer]

    def _check_rank(self, shape):
        if len(shape) < 3:
            raise ValueError(f"Input of layer {self.name!r} (TimeDistributed) must have at "
                             f"least 3 axes (batch, time, ...), got shape {_fmt_shape(shape)}")

    def _cast_input(self, x):
        return self.layer._cast_input(x)

    def build(self, input_shape):
        self.layer._set_dtype(self.dtype)
        self.layer._ensure_built((None,) + tuple(input_shape[2:]))

    def compute_output_shape(self, input_shape):
        inner = self.layer.compute_output_shape((None,) + tuple(input_shape[2:]))
        return (input_shape[0], input_shape[1]) + tuple(inner[1:])

    def forward(self, x, training=False, mask=None):
        B, T = x.shape[:2]
        y = self.layer.forward(x.reshape((B * T,) + x.shape[2:]), training=training)
        self._cache = (B, T, x.shape)
        return y.reshape((B, T) + y.shape[1:])

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        B, T, xshape = self._cache
        dx = _backward_wanting(self.layer, dy.reshape((B * T,) + dy.shape[2:]),
                               self._input_grad_wanted)
        self.grads = list(self.layer.grads)
        return None if dx is None else dx.reshape(xshape)

    def get_config(self):
        config = super().get_config()
        config["layer"] = serialize(self.layer)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = deserialize(config["layer"])
        return cls(**config)


_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


class Bidirectional(_Wrapper):
    """Runs an LSTM forwards and a copy of it backwards, and merges the two outputs.

    Weights: the forward layer's, then the backward layer's (Keras's order).
    """

    input_rank = 3

    def __init__(self, layer, merge_mode="concat", backward_layer=None, **kwargs):
        if not isinstance(layer, LSTM):
            raise TypeError(f"layer: Bidirectional wraps an LSTM layer, got "
                            f"{type(layer).__name__}")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of 'concat', 'sum', 'mul', 'ave' or "
                             f"None, got {merge_mode!r}")
        if merge_mode is None:
            raise NotImplementedError("merge_mode=None (two separate outputs) is not "
                                      "supported: fastlstm models take one output per layer")
        if layer.return_state:
            raise NotImplementedError("Bidirectional with return_state=True is not supported")
        super().__init__(**kwargs)
        self.merge_mode = merge_mode

        def clone(prefix, **changes):    # Keras: fresh layers from the given one's config
            config = layer.get_config()
            config.pop("batch_input_shape", None)
            base = layer.name[len(prefix):] if layer.name.startswith(prefix) else layer.name
            config.update(name=prefix + base, **changes)
            return LSTM.from_config(config)
        forward_layer = clone("forward_")
        if backward_layer is None:
            backward_layer = clone("backward_", go_backwards=True)
        elif not isinstance(backward_layer, LSTM):
            raise TypeError(f"backward_layer: expected an LSTM, got "
                            f"{type(backward_layer).__name__}")
        if forward_layer.go_backwards == backward_layer.go_backwards:
            raise ValueError(f"Forward layer and backward layer should have different "
                             f"`go_backwards` value. Received: forward_layer.go_backwards="
                             f"{forward_layer.go_backwards}, backward_layer.go_backwards="
                             f"{backward_layer.go_backwards}")
        for attr in ("stateful", "return_sequences", "return_state"):
            if getattr(forward_layer, attr) != getattr(backward_layer, attr):
                raise ValueError(f"backward_layer: {attr} must match the forward layer's "
                                 f"({getattr(forward_layer, attr)}), got "
                                 f"{getattr(backward_layer, attr)}")
        if forward_layer.name == backward_layer.name:
            raise ValueError("backward_layer: must have a different name from the forward layer")
        # The given layer itself is left as it was (Keras wraps a copy of it, unbuilt).
        self.forward_layer = forward_layer
        self.backward_layer = backward_layer
        self.return_sequences = layer.return_sequences
        for sub in (forward_layer, backward_layer):   # Keras: zeros at masked steps of sequences
            sub.zero_output_for_mask = sub.return_sequences
        if self._batch_input_shape is None:
            self._batch_input_shape = layer._batch_input_shape

    def _sublayers(self):
        return [self.forward_layer, self.backward_layer]

    def reset_states(self):
        """Forget the carried states of both directions; AttributeError unless the wrapped
        layers are stateful (as Keras 3's and LSTM.reset_states)."""
        if not self.forward_layer.stateful:
            raise AttributeError(f"Layer {self.name!r} is not stateful")
        for layer in self._sublayers():
            layer.reset_states()

    reset_state = reset_states

    def _rank_hint(self):
        return "(batch, timesteps, features)"

    def build(self, input_shape):
        for layer in self._sublayers():
            layer._set_dtype(self.dtype)
            layer._ensure_built(tuple(input_shape))

    def compute_output_shape(self, input_shape):
        shape = self.forward_layer.compute_output_shape(input_shape)
        if self.merge_mode == "concat":
            shape = tuple(shape[:-1]) + (shape[-1] + self.backward_layer.units,)
        return shape

    def compute_mask(self, inputs, mask=None):
        return mask if self.return_sequences else None

    def forward(self, x, training=False, mask=None):
        if mask is not None:             # one host copy for both directions
            mask = _devices.to_host(mask).astype(bool, copy=False)
        yf = self.forward_layer.forward(x, training=training, mask=mask)
        yb = self.backward_layer.forward(x, training=training, mask=mask)
        if self.return_sequences:
            yb = yb[:, ::-1]
        self._cache = (yf, yb) if training else None
        m = self.merge_mode
        if m == "concat":
            return self._xp.concatenate([yf, yb], axis=-1)
        if m == "sum":
            return yf + yb
        if m == "ave":
            return (yf + yb) * self.dtype.type(0.5)
        return yf * yb

    def backward(self, dy):
        if self._cache is None:
            self._no_cache()
        yf, yb = self._cache
        m = self.merge_mode
        if m == "concat":
            Hf = yf.shape[-1]
            dyf, dyb = dy[..., :Hf], dy[..., Hf:]
        elif m == "sum":
            dyf = dyb = dy
        elif m == "ave":
            dyf = dyb = dy * self.dtype.type(0.5)
        else:
            dyf, dyb = dy * yb, dy * yf
        if self.return_sequences:
            dyb = dyb[:, ::-1]
        want = self._input_grad_wanted
        # (views: each LSTM's backward makes its one time-major copy from them)
        dxf = _backward_wanting(self.forward_layer, dyf, want)
        dxb = _backward_wanting(self.backward_layer, dyb, want)
        self.grads = list(self.forward_layer.grads) + list(self.backward_layer.grads)
        return dxf + dxb if want else None

    def get_config(self):
        config = super().get_config()
        config.update(layer=serialize(self.forward_layer), merge_mode=self.merge_mode,
                      backward_layer=serialize(self.backward_layer))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = deserialize(config["layer"])
        config["backward_layer"] = deserialize(config["backward_layer"])
        return cls(**config)


# --------------------------------------------------------------------------- registry

_CLASSES = {cls.__name__: cls for cls in (
    InputLayer, Dense, Activation, Flatten, Dropout, Masking, Embedding, LSTM,
    TimeDistributed, Bidirectional, RepeatVector, GlobalAveragePooling1D, GlobalMaxPooling1D)}
_CLASSES.update(GlobalAvgPool1D=GlobalAveragePooling1D, GlobalMaxPool1D=GlobalMaxPooling1D)


def serialize(layer):
    """``{"class_name": ..., "config": ...}`` for a layer."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(config):
    """A new layer from serialize()'s dict. Only fastlstm's own layer classes are known;
    nothing in the dict is imported or executed."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"Could not interpret layer config: expected a dict with "
                         f"'class_name' and 'config', got {config!r:.200}")
    cls = _CLASSES.get(config["class_name"])
    if cls is None:
        raise ValueError(f"Unknown layer class {config['class_name']!r}. Known: "
                         f"{', '.join(sorted(_CLASSES))}")
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise ValueError(f"Layer config of {config['class_name']} must be a dict")
    try:
        return cls.from_config(dict(inner))
    except TypeError as e:
        raise ValueError(f"Could not rebuild layer {config['class_name']}: {e}") from None


def get(identifier):
    """A layer: ``identifier`` itself if it is one, else ``deserialize(identifier)`` (a
    ``{"class_name", "config"}`` dict, as ``serialize`` writes)."""
    if isinstance(identifier, Layer):
        return identifier
    return deserialize(identifier)
