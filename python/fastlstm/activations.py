"""Activation functions and their derivatives, on NumPy or CuPy arrays (Keras 3 names).

Two interfaces:

* plain functions ``sigmoid``, ``tanh``, ``relu``, ``softmax(x, axis=-1)`` and
  ``linear`` (also ``elu``, ``selu``, ``softplus``, ``softsign``, ``exponential``,
  ``silu``/``swish``) that map an array to a new array;
* ``Activation`` objects, which the layers use because they also know their
  derivative::

      act = fastlstm.activations.get("tanh")
      y = act(x)                      # the forward value f(x)
      dx = act.backward(x, y, dy)     # the vector-Jacobian product dy . df/dx
      act.name                        # "tanh"; serialize(act) gives the same string

  ``get`` accepts a name, an ``Activation`` (returned as is), one of this module's
  functions (``activation=fastlstm.activations.relu``, as Keras code passes
  ``keras.activations.relu``) or None (linear). Other Python callables are refused:
  a function the library did not define cannot be differentiated by the layers'
  backward passes, nor saved by name.

  ``backward(x, y, dy)`` takes the input x, the output y = f(x) (None: computed from
  x) and the upstream gradient dy, all of one shape, and returns dL/dx.  Element-wise
  activations give dy * f'(x); softmax (over the last axis) gives
  y * (dy - sum(dy * y, axis=-1, keepdims=True)).  Where the derivative follows from
  y alone (sigmoid, tanh, relu, softmax, linear, elu, selu, exponential) x may be
  None; softplus, softsign and silu need x.  At the kink of relu (x == 0) the
  derivative is taken as 0, as TensorFlow and PyTorch do.

Arrays: the computation runs in the array module of the input (NumPy, or CuPy for a model
on the "cuda" device; see fastlstm.set_device), and the result is an array of that module.

Dtypes: float32 and float64 inputs give outputs of the same dtype, computed in that
dtype; float16 is computed in float32 and rounded back to float16; integer and
boolean inputs are treated as float32 (Keras's default float type).  Every formula
is written so that it never overflows for finite inputs (sigmoid and softplus go
through exp(-|x|), softmax subtracts the row maximum, elu/selu exponentiate only
min(x, 0)); the one exception is ``exponential``, whose true value overflows to inf
for x above ~88 (float32) or ~709 (float64), which it returns without a warning.

Not provided (Keras 3.15 has them; asking for one raises a ValueError listing the
names above): gelu (Keras's default is the exact erf form, and NumPy has no vectorized
erf), celu, glu, hard_shrink, hard_sigmoid, hard_silu / hard_swish, hard_tanh,
leaky_relu, log_sigmoid, log_softmax, mish, relu6, soft_shrink, sparse_plus,
sparse_sigmoid, sparsemax, squareplus, tanh_shrink, threshold; nor the parametrized
forms (relu's negative_slope, max_value and threshold, elu's alpha), since an
activation here is identified by its name alone. An LSTM with
recurrent_activation="hard_sigmoid" (the default of standalone Keras 2) cannot be
reproduced here; "sigmoid" (Keras 3's default) is the nearest, with other results.
"""

import numpy as np

from ._device import array_module

__all__ = [
    "Activation", "sigmoid", "tanh", "relu", "softmax", "linear", "elu", "selu",
    "softplus", "softsign", "exponential", "silu", "swish",
    "get", "serialize", "deserialize",
]

# Keras's SELU constants (Klambauer et al., 2017).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# --------------------------------------------------------------------------- dtype helpers

def _prepare(x, what="x"):
    """(array in its working dtype, dtype of the result) for an input array."""
    x = array_module(x).asarray(x)
    dt = x.dtype
    if dt.kind == "f":
        if dt.itemsize >= 4:
            return x, dt
        return x.astype(np.float32), dt          # float16: compute in float32
    if dt.kind in "biu":
        return x.astype(np.float32), np.dtype(np.float32)
    raise TypeError(f"{what} must be a real numeric array, got dtype {dt}")


def _finish(result, out_dtype):
    return result if result.dtype == out_dtype else result.astype(out_dtype)


def _stable_sigmoid(x):
    """1 / (1 + exp(-x)) without ever overflowing exp: exp(-|x|) is in (0, 1]."""
    xp = array_module(x)
    z = xp.exp(-xp.abs(x))
    one = x.dtype.type(1)
    return xp.where(x >= 0, one / (one + z), z / (one + z))


# --------------------------------------------------------------------------- objects

class Activation:
    """An activation function with its derivative.

    Subclasses implement ``_forward(x)`` and ``_backward(x, y, dy)`` on arrays that
    are already in the working dtype; ``__call__`` and ``backward`` do the dtype
    handling and the argument checks.  Instances are stateless; two activations are
    equal when they have the same class and name.
    """

    name = None
    needs_input = False   # True when backward needs x and not only y

    def __call__(self, x):
        x, out = _prepare(x)
        return _finish(self._forward(x), out)

    def backward(self, x, y, dy):
        """dL/dx given the input x, the output y = f(x) (None: recomputed) and dL/dy.

        The result has dy's dtype (float16 dy: computed in float32, rounded back).
        """
        if x is None and (y is None or self.needs_input):
            raise ValueError(
                f"Activation {self.name!r}: backward needs the input x"
                + ("" if y is None else " (its derivative is not a function of y alone)"))
        dy, out = _prepare(dy, "dy")
        work = dy.dtype
        xp = array_module(dy)
        if x is not None:
            x = xp.asarray(x)
            if x.shape != dy.shape:
                raise ValueError(f"Activation {self.name!r}: x has shape {x.shape} but dy "
                                 f"has shape {dy.shape}")
            x = x.astype(work, copy=False)
        if y is None:
            y = self._forward(x)
        else:
            y = xp.asarray(y)
            if y.shape != dy.shape:
                raise ValueError(f"Activation {self.name!r}: y has shape {y.shape} but dy "
                                 f"has shape {dy.shape}")
            y = y.astype(work, copy=False)
        return _finish(self._backward(x, y, dy), out)

    def _forward(self, x):
        raise NotImplementedError

    def _backward(self, x, y, dy):
        raise NotImplementedError

    def __repr__(self):
        return f"<fastlstm.activations.Activation {self.name!r}>"

    def __eq__(self, other):
        return type(self) is type(other) and self.name == other.name

    def __hash__(self):
        return hash((type(self), self.name))


class _Linear(Activation):
    name = "linear"

    def _forward(self, x):
        return x.copy()   # a new array, so that callers may write into the result

    def _backward(self, x, y, dy):
        return dy.copy()


class _Sigmoid(Activation):
    name = "sigmoid"

    def _forward(self, x):
        return _stable_sigmoid(x)

    def _backward(self, x, y, dy):
        return dy * y * (1 - y)


class _Tanh(Activation):
    name = "tanh"

    def _forward(self, x):
        return array_module(x).tanh(x)

    def _backward(self, x, y, dy):
        return dy * (1 - y * y)


class _ReLU(Activation):
    name = "relu"

    def _forward(self, x):
        return array_module(x).maximum(x, x.dtype.type(0))

    def _backward(self, x, y, dy):
        mask = (x > 0) if x is not None else (y > 0)
        return array_module(dy).where(mask, dy, dy.dtype.type(0))


def _softmax(x, axis):
    xp = array_module(x)
    m = xp.max(x, axis=axis, keepdims=True)
    e = xp.exp(x - m)            # every exponent <= 0: no overflow
    return e / xp.sum(e, axis=axis, keepdims=True)


class _Softmax(Activation):
    name = "softmax"

    def _forward(self, x):
        if x.ndim == 0:
            raise ValueError("softmax needs an array with at least one axis, got a scalar")
        return _softmax(x, -1)

    def _backward(self, x, y, dy):
        return y * (dy - array_module(dy).sum(dy * y, axis=-1, keepdims=True))


class _ELU(Activation):
    name = "elu"   # alpha = 1, Keras's default

    def _forward(self, x):
        xp = array_module(x)
        return xp.where(x > 0, x, xp.expm1(xp.minimum(x, x.dtype.type(0))))

    def _backward(self, x, y, dy):
        mask = (x > 0) if x is not None else (y > 0)
        return array_module(dy).where(mask, dy, dy * (y + 1))   # exp(x) = y + 1 for x <= 0


class _SELU(Activation):
    name = "selu"

    def _forward(self, x):
        xp = array_module(x)
        scale = x.dtype.type(SELU_SCALE)
        sa = x.dtype.type(SELU_SCALE * SELU_ALPHA)
        return xp.where(x > 0, scale * x, sa * xp.expm1(xp.minimum(x, x.dtype.type(0))))

    def _backward(self, x, y, dy):
        scale = dy.dtype.type(SELU_SCALE)
        sa = dy.dtype.type(SELU_SCALE * SELU_ALPHA)
        mask = (x > 0) if x is not None else (y > 0)
        # scale*alpha*exp(x) = y + scale*alpha
        return array_module(dy).where(mask, scale * dy, dy * (y + sa))


class _Softplus(Activation):
    name = "softplus"
    needs_input = True

    def _forward(self, x):
        # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))
        xp = array_module(x)
        return xp.maximum(x, x.dtype.type(0)) + xp.log1p(xp.exp(-xp.abs(x)))

    def _backward(self, x, y, dy):
        return dy * _stable_sigmoid(x)


class _Softsign(Activation):
    name = "softsign"
    needs_input = True

    def _forward(self, x):
        return x / (1 + array_module(x).abs(x))

    def _backward(self, x, y, dy):
        d = 1 + array_module(x).abs(x)
        return dy / (d * d)


class _Exponential(Activation):
    name = "exponential"

    def _forward(self, x):
        with np.errstate(over="ignore"):   # exp(x) really is beyond the dtype's range
            return array_module(x).exp(x)

    def _backward(self, x, y, dy):
        return dy * y


class _SiLU(Activation):
    name = "silu"   # x * sigmoid(x); Keras also calls it "swish"
    needs_input = True

    def _forward(self, x):
        return x * _stable_sigmoid(x)

    def _backward(self, x, y, dy):
        s = _stable_sigmoid(x)
        return dy * (s + y * (1 - s))     # s + x s (1 - s), with x s = y


_OBJECTS = {cls.name: cls() for cls in (
    _Linear, _Sigmoid, _Tanh, _ReLU, _Softmax, _ELU, _SELU, _Softplus, _Softsign,
    _Exponential, _SiLU)}
_ALIASES = {"swish": "silu"}


def _valid_names():
    return ", ".join(sorted(set(_OBJECTS) | set(_ALIASES)))


# --------------------------------------------------------------------------- functions

def linear(x):
    """The identity, f(x) = x (as a new array)."""
    return _OBJECTS["linear"](x)


def sigmoid(x):
    """1 / (1 + exp(-x)), computed without overflow for any finite x."""
    return _OBJECTS["sigmoid"](x)


def tanh(x):
    """The hyperbolic tangent."""
    return _OBJECTS["tanh"](x)


def relu(x):
    """max(x, 0)."""
    return _OBJECTS["relu"](x)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x), axis), with the maximum along ``axis`` subtracted first."""
    x, out = _prepare(x)
    if x.ndim == 0:
        raise ValueError("softmax needs an array with at least one axis, got a scalar")
    return _finish(_softmax(x, axis), out)


def elu(x):
    """x for x > 0, exp(x) - 1 otherwise (alpha = 1)."""
    return _OBJECTS["elu"](x)


def selu(x):
    """scale * elu(x, alpha) with Keras's SELU constants."""
    return _OBJECTS["selu"](x)


def softplus(x):
    """log(1 + exp(x)), computed without overflow."""
    return _OBJECTS["softplus"](x)


def softsign(x):
    """x / (1 + |x|)."""
    return _OBJECTS["softsign"](x)


def exponential(x):
    """exp(x) (inf where that exceeds the dtype's range)."""
    return _OBJECTS["exponential"](x)


def silu(x):
    """x * sigmoid(x) (also called swish)."""
    return _OBJECTS["silu"](x)


swish = silu


# --------------------------------------------------------------------------- registry

# This module's own functions (``activation=fastlstm.activations.relu``, as Keras code passes
# ``keras.activations.relu``) stand for their Activation objects.
_FUNCTIONS = {linear: "linear", sigmoid: "sigmoid", tanh: "tanh", relu: "relu",
              softmax: "softmax", elu: "elu", selu: "selu", softplus: "softplus",
              softsign: "softsign", exponential: "exponential", silu: "silu"}


def get(identifier):
    """An Activation for a name ('tanh', 'sigmoid', ...), one of this module's functions
    (``fastlstm.activations.relu``), an Activation (returned as is) or None (linear).
    Anything else raises ValueError."""
    if identifier is None:
        return _OBJECTS["linear"]
    if isinstance(identifier, Activation):
        return identifier
    own = next((name for fn, name in _FUNCTIONS.items() if fn is identifier), None)
    if own is not None:
        return _OBJECTS[own]
    if isinstance(identifier, str):
        name = _ALIASES.get(identifier, identifier)
        obj = _OBJECTS.get(name)
        if obj is None:
            raise ValueError(f"Unknown activation {identifier!r}. Valid names: {_valid_names()}")
        return obj
    if callable(identifier):
        raise ValueError(
            f"Unsupported activation {identifier!r}: only the built-in activations "
            f"(given by name or as a fastlstm.activations.Activation object) are "
            f"supported, because a custom function can be neither differentiated by "
            f"the layers nor saved. Valid names: {_valid_names()}")
    raise ValueError(f"Could not interpret activation identifier {identifier!r}: expected "
                     f"a name, an Activation or None. Valid names: {_valid_names()}")


def serialize(activation):
    """The name of an activation (anything ``get`` accepts)."""
    return get(activation).name


def deserialize(name):
    """The Activation for a name produced by ``serialize``."""
    if not isinstance(name, str):
        raise ValueError(f"Could not deserialize activation {name!r}: expected a name "
                         f"string. Valid names: {_valid_names()}")
    return get(name)
