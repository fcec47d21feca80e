"""Weight regularizers with gradients, on NumPy or CuPy arrays (Keras 3 semantics).

A regularizer maps a weight array to a penalty that is added to the loss, and gives
the gradient of that penalty for the optimizer step::

    reg = fastlstm.regularizers.get("l2")        # L2(l2=0.01)
    penalty = reg(kernel)                        # Python float: 0.01 * sum(kernel ** 2)
    grad = reg.gradient(kernel)                  # 0.02 * kernel, kernel's dtype

Penalties, exactly as Keras defines them (no factor 1/2 on the L2 term):

* ``L1(l1=0.01)``: ``l1 * sum(|w|)``, gradient ``l1 * sign(w)`` (0 at w == 0, the
  subgradient TensorFlow's and PyTorch's ``abs`` use);
* ``L2(l2=0.01)``: ``l2 * sum(w ** 2)``, gradient ``2 * l2 * w``;
* ``L1L2(l1=0.0, l2=0.0)``: the sum of both.

The factors must be finite, non-negative real numbers (``None`` means the default,
as in Keras); anything else raises ValueError naming the argument.  The penalty is
accumulated in float64 and returned as a Python float; the gradient has w's dtype
when that is a floating dtype (integer or boolean weights give float32), and is an array of
w's module (NumPy, or CuPy for a model on the "cuda" device). The models add the penalties
up on the device (``_penalty``) and read the total back once per batch.

``get`` accepts ``"l1"``, ``"l2"``, ``"l1_l2"`` (also spelled ``"l1l2"``), the class
names, an instance (returned as is), a class (instantiated), a
``{"class_name", "config"}`` dict, or None (-> None).  The names give Keras's
string defaults: ``L1(0.01)``, ``L2(0.01)`` and, for ``"l1_l2"``,
``L1L2(l1=0.01, l2=0.01)`` -- what Keras documents for that string (the Keras 3
code instantiates ``L1L2()``, whose factors are both 0, i.e. no penalty at all).
"""

import math
import numbers

import numpy as np

from ._configurable import Configurable, resolve
from ._device import array_module, read_scalars

__all__ = ["Regularizer", "L1", "L2", "L1L2", "l1", "l2", "l1_l2", "get", "serialize",
           "deserialize"]


def _check_factor(value, name, default):
    """A regularization factor as a float; None -> default; ValueError otherwise."""
    if value is None:
        return default
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise ValueError(f"Invalid value for argument `{name}`: expected a non-negative "
                         f"float. Received: {name}={value!r}")
    f = float(value)
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"Invalid value for argument `{name}`: expected a non-negative "
                         f"float. Received: {name}={value!r}")
    return f


def _as_weights(w):
    w = array_module(w).asarray(w)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"weights must be a real numeric array, got dtype {w.dtype}")
    return w


def _grad_dtype(w):
    return w.dtype if w.dtype.kind == "f" else np.dtype(np.float32)


class Regularizer(Configurable):
    """Base class: ``__call__(w) -> float`` and ``gradient(w) -> ndarray``.

    Subclasses implement ``_penalty(w)``: the penalty as a float64 scalar of w's module
    (a 0-d array; it stays on the device), which ``__call__`` reads back as a float.
    """

    def __call__(self, w):
        return read_scalars([self._penalty(_as_weights(w))])[0]

    def _penalty(self, w):
        return array_module(w).zeros((), dtype=np.float64)

    def gradient(self, w):
        w = _as_weights(w)
        return array_module(w).zeros(w.shape, dtype=_grad_dtype(w))

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))


def _l1_value(w):
    xp = array_module(w)
    return xp.sum(xp.abs(w), dtype=np.float64)


def _l2_value(w):
    w64 = w.astype(np.float64, copy=False).reshape(-1)
    return array_module(w).dot(w64, w64)


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w ** 2)``."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _check_factor(l1, "l1", 0.0)
        self.l2 = _check_factor(l2, "l2", 0.0)

    def _penalty(self, w):
        total = array_module(w).zeros((), dtype=np.float64)
        if self.l1:
            total = total + self.l1 * _l1_value(w)
        if self.l2:
            total = total + self.l2 * _l2_value(w)
        return total

    def gradient(self, w):
        w = _as_weights(w)
        xp = array_module(w)
        dt = _grad_dtype(w)
        wf = w.astype(dt, copy=False)
        g = xp.zeros(w.shape, dtype=dt)
        if self.l1:
            g += dt.type(self.l1) * xp.sign(wf)
        if self.l2:
            g += dt.type(2.0 * self.l2) * wf
        return g

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(Regularizer):
    """``l1 * sum(|w|)``."""

    def __init__(self, l1=0.01):
        self.l1 = _check_factor(l1, "l1", 0.01)

    def _penalty(self, w):
        return self.l1 * _l1_value(w)

    def gradient(self, w):
        w = _as_weights(w)
        dt = _grad_dtype(w)
        return dt.type(self.l1) * array_module(w).sign(w.astype(dt, copy=False))

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """``l2 * sum(w ** 2)`` (no factor 1/2, as in Keras)."""

    def __init__(self, l2=0.01):
        self.l2 = _check_factor(l2, "l2", 0.01)

    def _penalty(self, w):
        return self.l2 * _l2_value(w)

    def gradient(self, w):
        w = _as_weights(w)
        dt = _grad_dtype(w)
        return dt.type(2.0 * self.l2) * w.astype(dt, copy=False)

    def get_config(self):
        return {"l2": self.l2}


# Keras's lowercase aliases of the classes (``kernel_regularizer=regularizers.l2(0.01)``);
# as in Keras 3, ``l1_l2()`` is ``L1L2()`` with both factors 0 unless given.
l1 = L1
l2 = L2
l1_l2 = L1L2


# --------------------------------------------------------------------------- registry

_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}
_NAMES = {
    "l1": lambda: L1(),
    "l2": lambda: L2(),
    "l1_l2": lambda: L1L2(l1=0.01, l2=0.01),
    "l1l2": lambda: L1L2(l1=0.01, l2=0.01),
}


def _valid_names():
    return f"{', '.join(sorted(_NAMES))} (or a class name: {', '.join(sorted(_CLASSES))})"


def serialize(regularizer):
    """``{"class_name": ..., "config": ...}`` for a Regularizer (None -> None)."""
    if regularizer is None:
        return None
    if not isinstance(regularizer, Regularizer):
        raise ValueError(f"Could not serialize {regularizer!r}: expected a "
                         f"fastlstm.regularizers.Regularizer")
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def deserialize(config):
    """A Regularizer from ``serialize``'s dict (a bare name is accepted too)."""
    if isinstance(config, str):
        if config in _NAMES:
            return _NAMES[config]()
        if config in _CLASSES:
            return _CLASSES[config]()
        raise ValueError(f"Unknown regularizer {config!r}. Valid names: {_valid_names()}")
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"Could not interpret regularizer config {config!r}: expected a "
                         f"dict with 'class_name' and 'config'")
    name = config["class_name"]
    cls = _CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"Unknown regularizer class {name!r}. Valid class names: "
                         f"{', '.join(sorted(_CLASSES))}")
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise ValueError(f"Could not interpret regularizer config {config!r}: 'config' "
                         f"must be a dict")
    return cls.from_config(dict(inner))


def get(identifier):
    """Resolve a regularizer: a name, a Regularizer (as is), a Regularizer class
    (instantiated), a config dict, or None (-> None)."""
    return resolve(identifier, Regularizer, deserialize, "regularizer", _valid_names())
