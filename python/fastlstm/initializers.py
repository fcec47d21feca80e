"""Weight initializers (Keras 3 class names, arguments, defaults and fan rules).

An initializer is called with a shape and an optional dtype and returns a new
NumPy array (also for a model on the "cuda" device: the layers draw on the host and upload
the values, so both devices start from the same weights)::

    init = fastlstm.initializers.get("glorot_uniform")
    kernel = init((input_dim, 4 * units))              # float32 by default
    kernel = init((input_dim, 4 * units), "float64")

Provided: ``Zeros``, ``Ones``, ``Constant``, ``Identity``, ``RandomNormal``,
``RandomUniform``, ``TruncatedNormal``, ``VarianceScaling`` and its presets
``GlorotUniform``, ``GlorotNormal``, ``HeNormal``, ``HeUniform``, ``LecunNormal``,
``LecunUniform``, and ``Orthogonal``.  ``get`` resolves Keras's snake_case names
(``"glorot_uniform"``, ``"orthogonal"``, ``"zeros"``, ...), the class names, an
instance (returned as is), a class (instantiated) or a ``{"class_name", "config"}``
dict; ``serialize`` produces that dict.

Fans, as Keras computes them: a 2-D shape ``(a, b)`` has fan_in = a, fan_out = b; a
1-D shape ``(n,)`` has both equal to n; a scalar shape has both 1; a shape with more
axes is a convolution-style kernel ``(..., in, out)`` whose fans are ``in`` and
``out`` times the product of the leading (receptive field) axes.  VarianceScaling and its
presets also take Keras 3.15's ``input_axes`` / ``output_axes``: given both, the fans are the
products of the sizes along those axes.  A fan of 0 is treated as 1.

Randomness: every draw goes through ``fastlstm._random.generator``.  An initializer
with an integer ``seed`` uses a fresh generator seeded with it on every call, so it
returns the same values every time it is called with the same shape (as a seeded
Keras 3 initializer does).  With ``seed=None`` it draws from the package-wide
generator at call time, so ``fastlstm.utils.set_random_seed(n)`` makes a whole model
construction reproducible.  (Keras 3 instead fixes a random seed when an unseeded
initializer is constructed, so that each instance repeats itself; here unseeded
initializers give new values on each call.)  Values are drawn in float64 and rounded
to the requested dtype, so a seeded initializer gives the same values, up to
rounding, in float32 and float64.

The truncated normal redraws every value more than two standard deviations from the
mean (Keras's definition); VarianceScaling's ``"truncated_normal"`` divides the
standard deviation by 0.87962566103423978, the standard deviation of a unit normal
truncated to [-2, 2], so the values have variance ``scale / fan``.
"""

import math
import numbers
import operator

import numpy as np

from ._configurable import Configurable, resolve

from . import _random

__all__ = [
    "Initializer", "Zeros", "Ones", "Constant", "Identity", "RandomNormal",
    "RandomUniform", "TruncatedNormal", "VarianceScaling", "GlorotUniform",
    "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform",
    "Orthogonal", "compute_fans", "get", "serialize", "deserialize",
    # Keras's lowercase aliases of the classes (defined below)
    "zeros", "ones", "constant", "identity", "random_normal", "random_uniform",
    "truncated_normal", "variance_scaling", "orthogonal", "glorot_uniform", "glorot_normal",
    "he_normal", "he_uniform", "lecun_normal", "lecun_uniform",
]

# Standard deviation of a unit normal truncated to [-2, 2] (Keras's constant).
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


# --------------------------------------------------------------------------- helpers

def _check_shape(shape):
    """``shape`` as a tuple of non-negative ints (an int n means (n,))."""
    if isinstance(shape, (numbers.Integral, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of non-negative integers, got "
                         f"{shape!r}") from None
    out = []
    for d in dims:
        try:
            if isinstance(d, (bool, np.bool_)):
                raise TypeError
            d = operator.index(d)
        except TypeError:
            raise ValueError(f"shape must be a tuple of non-negative integers, got "
                             f"{shape!r}") from None
        if d < 0:
            raise ValueError(f"shape must be a tuple of non-negative integers, got "
                             f"{shape!r} (negative dimension {d})")
        out.append(d)
    return tuple(out)


def _check_dtype(dtype, floating_only):
    """``dtype`` (None: float32) as a NumPy dtype."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype: {dtype!r} is not a NumPy dtype") from None
    if floating_only:
        if dt.kind != "f":
            raise ValueError(f"dtype: this initializer draws random floats and needs a "
                             f"floating dtype, got {dt}")
    elif dt.kind not in "biuf":
        raise ValueError(f"dtype: expected a boolean, integer or floating dtype, got {dt}")
    return dt


def _check_number(value, name):
    """``value`` as a finite Python float; ValueError naming ``name`` otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise ValueError(f"Argument `{name}` must be a number. Received: {name}={value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Argument `{name}` must be finite. Received: {name}={value}")
    return value


def _check_seed(seed):
    if seed is None:
        return None
    return _random.check_seed(seed, "seed")


def _check_axes(axes, name):
    """None, or a tuple of ints from a list/tuple of ints (Keras's input_axes / output_axes)."""
    if axes is None:
        return None
    if isinstance(axes, (str, bytes)) or not hasattr(axes, "__iter__"):
        raise TypeError(f"Argument `{name}` must be None or a list of integers. Received: "
                        f"{name}={axes!r}")
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise TypeError(f"Argument `{name}` must be None or a list of integers. Received: "
                            f"{name}={axes!r}")
        out.append(int(a))
    return tuple(out)


def compute_fans(shape, input_axes=None, output_axes=None):
    """(fan_in, fan_out) of a weight shape, with Keras's rules (see the module doc). When both
    ``input_axes`` and ``output_axes`` are given (Keras 3.15's VarianceScaling arguments), the
    fans are instead the products of the shape's sizes along those axes (negative axes count
    from the end)."""
    shape = _check_shape(shape)
    input_axes = _check_axes(input_axes, "input_axes")
    output_axes = _check_axes(output_axes, "output_axes")
    if input_axes is not None and output_axes is not None:
        fans = []
        for name, axes in (("input_axes", input_axes), ("output_axes", output_axes)):
            n = 1
            for a in axes:
                if not -len(shape) <= a < len(shape):
                    raise ValueError(f"Argument `{name}` has axis {a}, out of range for a weight "
                                     f"of shape {shape}")
                n *= shape[a]
            fans.append(n)
        return fans[0], fans[1]
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = 1
    for d in shape[:-2]:
        receptive *= d
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_standard_normal(rng, shape):
    """Unit normal values, those with |z| > 2 redrawn until none is left."""
    z = rng.standard_normal(shape)
    flat = z.reshape(-1)
    bad = np.flatnonzero(np.abs(flat) > 2.0)
    while bad.size:
        flat[bad] = rng.standard_normal(bad.size)
        bad = bad[np.abs(flat[bad]) > 2.0]
    return z


# --------------------------------------------------------------------------- base

class Initializer(Configurable):
    """Base class: ``__call__(shape, dtype=None)`` returns a new array."""

    def __call__(self, shape, dtype=None):
        raise NotImplementedError


class Zeros(Initializer):
    """All zeros."""

    def __call__(self, shape, dtype=None):
        return np.zeros(_check_shape(shape), dtype=_check_dtype(dtype, False))


class Ones(Initializer):
    """All ones."""

    def __call__(self, shape, dtype=None):
        return np.ones(_check_shape(shape), dtype=_check_dtype(dtype, False))


class Constant(Initializer):
    """Every element equal to the scalar ``value``."""

    def __init__(self, value=0.0):
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"Argument `value` must be a scalar number. "
                             f"Received: value={value!r}")
        self.value = value

    def __call__(self, shape, dtype=None):
        return np.full(_check_shape(shape), self.value, dtype=_check_dtype(dtype, False))

    def get_config(self):
        return {"value": self.value}


class Identity(Initializer):
    """``gain`` times the identity matrix (2-D shapes only; rectangular allowed)."""

    def __init__(self, gain=1.0):
        self.gain = _check_number(gain, "gain")

    def __call__(self, shape, dtype=None):
        shape = _check_shape(shape)
        if len(shape) != 2:
            raise ValueError(f"shape: the Identity initializer needs a 2-D shape, got "
                             f"{shape} of rank {len(shape)}")
        dt = _check_dtype(dtype, False)
        return (self.gain * np.eye(*shape)).astype(dt)

    def get_config(self):
        return {"gain": self.gain}


class RandomInitializer(Initializer):
    """Base of the random initializers: holds and checks ``seed``."""

    def __init__(self, seed=None):
        self.seed = _check_seed(seed)

    def _rng(self):
        return _random.generator(self.seed)

    def get_config(self):
        return {"seed": self.seed}


class RandomNormal(RandomInitializer):
    """Normal values with mean ``mean`` and standard deviation ``stddev``."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean = _check_number(mean, "mean")
        self.stddev = _check_number(stddev, "stddev")
        if self.stddev < 0:
            raise ValueError(f"Argument `stddev` must be >= 0. Received: stddev={stddev}")
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        shape, dt = _check_shape(shape), _check_dtype(dtype, True)
        z = self._rng().standard_normal(shape)
        return (self.mean + self.stddev * z).astype(dt)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


class TruncatedNormal(RandomInitializer):
    """Normal values with mean ``mean`` and standard deviation ``stddev`` (before
    truncation); values more than two stddev from the mean are redrawn."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean = _check_number(mean, "mean")
        self.stddev = _check_number(stddev, "stddev")
        if self.stddev < 0:
            raise ValueError(f"Argument `stddev` must be >= 0. Received: stddev={stddev}")
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        shape, dt = _check_shape(shape), _check_dtype(dtype, True)
        z = _truncated_standard_normal(self._rng(), shape)
        return (self.mean + self.stddev * z).astype(dt)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


class RandomUniform(RandomInitializer):
    """Uniform values in [minval, maxval)."""

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval = _check_number(minval, "minval")
        self.maxval = _check_number(maxval, "maxval")
        if self.minval > self.maxval:
            raise ValueError(f"Arguments `minval` and `maxval`: minval must be <= maxval. "
                             f"Received: minval={minval}, maxval={maxval}")
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        shape, dt = _check_shape(shape), _check_dtype(dtype, True)
        u = self._rng().random(shape)
        out = (self.minval + (self.maxval - self.minval) * u).astype(dt)
        # rounding to a narrower dtype could land exactly on maxval; keep [minval, maxval]
        return np.clip(out, dt.type(self.minval), dt.type(self.maxval), out=out)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, **super().get_config()}


_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")


class VarianceScaling(RandomInitializer):
    """Values with variance ``scale / n``, n the fan given by ``mode`` ("fan_in",
    "fan_out" or "fan_avg" = (fan_in + fan_out) / 2), from ``distribution``:

    * "truncated_normal" (also "normal"): a normal truncated at two standard
      deviations, with stddev sqrt(scale / n) / 0.87962566103423978;
    * "untruncated_normal": a normal with stddev sqrt(scale / n);
    * "uniform": uniform in [-limit, limit], limit = sqrt(3 * scale / n).
    """

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None,
                 input_axes=None, output_axes=None):
        scale = _check_number(scale, "scale")
        if scale <= 0:
            raise ValueError(f"Argument `scale` must be a positive float. Received: "
                             f"scale={scale}")
        if not isinstance(mode, str) or mode.lower() not in _MODES:
            raise ValueError(f"Invalid `mode` argument: {mode!r}. Please use one of "
                             f"{', '.join(_MODES)}")
        if not isinstance(distribution, str):
            raise ValueError(f"Invalid `distribution` argument: {distribution!r}. Please "
                             f"use one of {', '.join(_DISTRIBUTIONS)}")
        dist = distribution.lower()
        if dist == "normal":
            dist = "truncated_normal"
        if dist not in _DISTRIBUTIONS:
            raise ValueError(f"Invalid `distribution` argument: {distribution!r}. Please "
                             f"use one of {', '.join(_DISTRIBUTIONS)}")
        self.scale = scale
        self.mode = mode.lower()
        self.distribution = dist
        self.input_axes = _check_axes(input_axes, "input_axes")
        self.output_axes = _check_axes(output_axes, "output_axes")
        super().__init__(seed)

    def _variance(self, shape):
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        if self.mode == "fan_in":
            n = fan_in
        elif self.mode == "fan_out":
            n = fan_out
        else:
            n = (fan_in + fan_out) / 2.0
        return self.scale / max(1.0, n)

    def __call__(self, shape, dtype=None):
        shape, dt = _check_shape(shape), _check_dtype(dtype, True)
        var = self._variance(shape)
        rng = self._rng()
        if self.distribution == "truncated_normal":
            stddev = math.sqrt(var) / TRUNCATED_NORMAL_STDDEV
            out = stddev * _truncated_standard_normal(rng, shape)
        elif self.distribution == "untruncated_normal":
            out = math.sqrt(var) * rng.standard_normal(shape)
        else:
            limit = math.sqrt(3.0 * var)
            out = limit * (2.0 * rng.random(shape) - 1.0)
        return out.astype(dt)

    def _axes_config(self):
        # Only where set, so that configs without them read as before (and as older Keras's).
        return {k: list(v) for k, v in (("input_axes", self.input_axes),
                                        ("output_axes", self.output_axes)) if v is not None}

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution,
                **super().get_config(), **self._axes_config()}


class _VarianceScalingPreset(VarianceScaling):
    _preset = None   # (scale, mode, distribution)

    def __init__(self, seed=None, input_axes=None, output_axes=None):
        scale, mode, distribution = self._preset
        super().__init__(scale=scale, mode=mode, distribution=distribution, seed=seed,
                         input_axes=input_axes, output_axes=output_axes)

    def get_config(self):
        return {"seed": self.seed, **self._axes_config()}


class GlorotUniform(_VarianceScalingPreset):
    """Uniform in [-limit, limit], limit = sqrt(6 / (fan_in + fan_out))."""
    _preset = (1.0, "fan_avg", "uniform")


class GlorotNormal(_VarianceScalingPreset):
    """Truncated normal with variance 2 / (fan_in + fan_out)."""
    _preset = (1.0, "fan_avg", "truncated_normal")


class HeNormal(_VarianceScalingPreset):
    """Truncated normal with variance 2 / fan_in."""
    _preset = (2.0, "fan_in", "truncated_normal")


class HeUniform(_VarianceScalingPreset):
    """Uniform in [-limit, limit], limit = sqrt(6 / fan_in)."""
    _preset = (2.0, "fan_in", "uniform")


class LecunNormal(_VarianceScalingPreset):
    """Truncated normal with variance 1 / fan_in."""
    _preset = (1.0, "fan_in", "truncated_normal")


class LecunUniform(_VarianceScalingPreset):
    """Uniform in [-limit, limit], limit = sqrt(3 / fan_in)."""
    _preset = (1.0, "fan_in", "uniform")


class Orthogonal(RandomInitializer):
    """``gain`` times a random orthogonal matrix.

    For a shape (rows, cols) (a shape with more axes is treated as
    (product of all but the last axis, last axis) and reshaped back), a normal matrix
    of shape (max(rows, cols), min(rows, cols)) is QR-factorized, the columns of Q
    are multiplied by the signs of R's diagonal (which makes the distribution
    uniform over orthogonal matrices), and Q is transposed when rows < cols: the
    result has orthonormal columns (rows >= cols) or orthonormal rows (rows < cols).
    """

    def __init__(self, gain=1.0, seed=None):
        self.gain = _check_number(gain, "gain")
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        shape, dt = _check_shape(shape), _check_dtype(dtype, True)
        if len(shape) < 2:
            raise ValueError(f"shape: the Orthogonal initializer needs a shape of rank >= 2, "
                             f"got {shape} of rank {len(shape)}")
        cols = shape[-1]
        rows = 1
        for d in shape[:-1]:
            rows *= d
        if rows == 0 or cols == 0:
            return np.zeros(shape, dtype=dt)
        a = self._rng().standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.where(np.diagonal(r) < 0, -1.0, 1.0)
        if rows < cols:
            q = q.T
        return (self.gain * q).reshape(shape).astype(dt)

    def get_config(self):
        return {"gain": self.gain, **super().get_config()}


# --------------------------------------------------------------------------- registry

_CLASSES = {cls.__name__: cls for cls in (
    Zeros, Ones, Constant, Identity, RandomNormal, RandomUniform, TruncatedNormal,
    VarianceScaling, GlorotUniform, GlorotNormal, HeNormal, HeUniform, LecunNormal,
    LecunUniform, Orthogonal)}
_CLASSES.update({"IdentityInitializer": Identity, "OrthogonalInitializer": Orthogonal})

_NAMES = {
    "zeros": Zeros, "zero": Zeros,
    "ones": Ones, "one": Ones,
    "constant": Constant,
    "identity": Identity,
    "random_normal": RandomNormal, "normal": RandomNormal,
    "random_uniform": RandomUniform, "uniform": RandomUniform,
    "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
    "he_normal": HeNormal,
    "he_uniform": HeUniform,
    "lecun_normal": LecunNormal,
    "lecun_uniform": LecunUniform,
    "orthogonal": Orthogonal,
}


# Keras's lowercase aliases of the classes (``kernel_initializer=initializers.he_normal(seed=1)``).
zeros, ones, constant, identity = Zeros, Ones, Constant, Identity
random_normal, random_uniform, truncated_normal = RandomNormal, RandomUniform, TruncatedNormal
variance_scaling, orthogonal = VarianceScaling, Orthogonal
glorot_uniform, glorot_normal, he_normal, he_uniform = GlorotUniform, GlorotNormal, HeNormal, HeUniform
lecun_normal, lecun_uniform = LecunNormal, LecunUniform


def _lookup(name):
    cls = _NAMES.get(name) or _CLASSES.get(name)
    if cls is None:
        raise ValueError(f"Unknown initializer {name!r}. Valid names: "
                         f"{', '.join(sorted(_NAMES))} (or a class name: "
                         f"{', '.join(sorted(_CLASSES))})")
    return cls


def serialize(initializer):
    """``{"class_name": ..., "config": ...}`` for an Initializer instance."""
    if not isinstance(initializer, Initializer):
        raise ValueError(f"Could not serialize {initializer!r}: expected a "
                         f"fastlstm.initializers.Initializer")
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}


def deserialize(config):
    """An Initializer from ``serialize``'s dict (a bare name is accepted too)."""
    if isinstance(config, str):
        return _lookup(config)()
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"Could not interpret initializer config {config!r}: expected a "
                         f"dict with 'class_name' and 'config'")
    name = config["class_name"]
    if not isinstance(name, str):
        raise ValueError(f"Could not interpret initializer config {config!r}: "
                         f"'class_name' must be a string")
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise ValueError(f"Could not interpret initializer config {config!r}: 'config' "
                         f"must be a dict")
    return _lookup(name).from_config(dict(inner))


def get(identifier):
    """Resolve an initializer: a name, an Initializer instance (as is), an Initializer
    class (instantiated with its defaults), a config dict, or None (-> None)."""
    return resolve(identifier, Initializer, deserialize, "initializer", ", ".join(sorted(_NAMES)))
