"""Loss functions with gradients, on NumPy or CuPy arrays (Keras 3 semantics).

Every loss is a class whose instances give the reduced loss value and its gradient
with respect to the predictions::

    loss = fastlstm.losses.get("binary_crossentropy")
    value = loss(y_true, y_pred)               # Python float
    dy = loss.gradient(y_true, y_pred)         # d value / d y_pred, like y_pred

Reduction (Keras's default ``"sum_over_batch_size"``): a per-sample loss is formed
first -- the mean over the last axis for the mean squared / absolute error, Huber
and binary crossentropy, the crossentropy over the class axis for the categorical
losses -- so it has the shape ``y_pred.shape[:-1]``.  It is multiplied by
``sample_weight`` (broadcast to that shape; a weight of shape ``(batch,)`` weighs
every step of a sample), summed, and divided by the number of per-sample losses.
Without weights this is the plain mean. Entries a loss leaves out
(``SparseCategoricalCrossentropy(ignore_class=...)``) have a loss of 0 and no gradient and
are not counted in that number, as Keras leaves masked entries out.

Probabilities (``from_logits=False``) are clipped to ``[1e-7, 1 - 1e-7]`` as Keras
does, and the categorical losses first rescale each probability vector to sum to 1
(also as Keras does); the gradient is that of the clipped function, so it is 0
where the clip is active.  With ``from_logits=True`` the losses use the stable
log-sum-exp / ``log1p(exp(-|x|))`` forms and are finite for any finite logits.

Arithmetic runs in y_pred's dtype (float64 stays float64; float32, and float16 via
float32, give float32 arithmetic; non-float predictions are treated as float32)
and the gradient has y_pred's dtype when that is a float dtype.

Arrays: everything runs in y_pred's array module (NumPy, or CuPy for a model on the "cuda"
device; a NumPy y_true or sample_weight is uploaded to it), and the gradient is an array of
that module. The value is returned as a Python float; the models use ``_value_and_gradient``,
which keeps it on the device as a float64 scalar so that a batch reads back one number.
"""

import math

import numpy as np

from ._device import array_module, one_hot, read_scalars, to_host

__all__ = [
    "Loss", "BinaryCrossentropy", "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy", "MeanSquaredError", "MeanAbsoluteError", "Huber",
    "get", "serialize", "deserialize",
]

EPSILON = 1e-7  # Keras's backend.epsilon(), the probability clip


# --------------------------------------------------------------------------- helpers

def _work_dtype(y_pred):
    """(arithmetic dtype, gradient dtype) for predictions y_pred."""
    dt = y_pred.dtype
    if dt == np.float64:
        return np.dtype(np.float64), dt
    if np.issubdtype(dt, np.floating):
        return np.dtype(np.float32), dt
    return np.dtype(np.float32), np.dtype(np.float32)


def _as_pred(y_pred):
    y_pred = array_module(y_pred).asarray(y_pred)
    if y_pred.dtype == object or not (np.issubdtype(y_pred.dtype, np.number)
                                      or y_pred.dtype == np.bool_):
        raise TypeError(f"y_pred must be a numeric array, got dtype {y_pred.dtype}")
    if y_pred.ndim == 0:
        raise ValueError("y_pred must have at least one axis, got a scalar (shape ())")
    return y_pred


def _match_true(y_true, y_pred, dtype):
    """y_true as an array of y_pred's shape (Keras also squeezes/expands a trailing
    axis of size 1 when the ranks differ by one); any other mismatch is an error."""
    y_true = array_module(y_pred).asarray(y_true)
    if y_true.dtype == object or not (np.issubdtype(y_true.dtype, np.number)
                                      or y_true.dtype == np.bool_):
        raise TypeError(f"y_true must be a numeric array, got dtype {y_true.dtype}")
    ts, ps = y_true.shape, y_pred.shape
    if ts != ps:
        trailing_one = ((len(ts) == len(ps) + 1 and ts[-1] == 1 and ts[:-1] == ps)
                        or (len(ps) == len(ts) + 1 and ps[-1] == 1 and ps[:-1] == ts))
        if not trailing_one:
            raise ValueError(
                f"y_true and y_pred shapes do not match: y_true has shape {ts}, "
                f"y_pred has shape {ps}")
        y_true = y_true.reshape(ps)
    return y_true.astype(dtype, copy=False)


def _weights(sample_weight, loss_shape, dtype, xp):
    """sample_weight broadcast to the per-sample loss shape, an array of module xp
    (None -> None)."""
    if sample_weight is None:
        return None
    given_shape = tuple(sample_weight.shape) if hasattr(sample_weight, "shape") \
        else np.shape(sample_weight)
    w = xp.asarray(sample_weight)
    if w.dtype == object or not (np.issubdtype(w.dtype, np.number) or w.dtype == np.bool_):
        raise TypeError(f"sample_weight must be numeric, got dtype {w.dtype}")
    w = w.astype(dtype, copy=False)
    if w.ndim == len(loss_shape) + 1 and w.shape[-1] == 1:
        w = w.reshape(w.shape[:-1])                  # (batch, 1) for (batch,)
    while w.ndim < len(loss_shape):
        w = w[..., None]                             # (batch,) for (batch, time)
    try:
        if np.broadcast_shapes(w.shape, loss_shape) != tuple(loss_shape):
            raise ValueError
        w = xp.broadcast_to(w, loss_shape)
    except ValueError:
        raise ValueError(
            f"sample_weight of shape {given_shape} does not broadcast to the "
            f"per-sample loss shape {tuple(loss_shape)}") from None
    return w


def _reduce(per_sample, w):
    """Keras "sum_over_batch_size": sum(per_sample * w) / per_sample.size, as a float64
    scalar of per_sample's module (a 0-d array; it stays on the device)."""
    xp = array_module(per_sample)
    n = per_sample.size
    if n == 0:
        return xp.zeros((), dtype=np.float64)
    values = per_sample if w is None else per_sample * w
    return xp.sum(values, dtype=np.float64) / n


def _loss_mask(valid, mask, loss_shape, xp):
    """The per-sample losses that count, a boolean array of loss_shape (None: all of them):
    the loss's own ``valid`` entries (e.g. not ``ignore_class``) and the nonzero entries of a
    ``mask`` given by the caller (a model's output mask), as Keras combines them."""
    if mask is not None:
        given_shape = tuple(mask.shape) if hasattr(mask, "shape") else np.shape(mask)
        m = xp.asarray(mask)
        if m.ndim == len(loss_shape) + 1 and m.shape[-1] == 1:
            m = m.reshape(m.shape[:-1])
        while m.ndim < len(loss_shape):
            m = m[..., None]      # (batch, time) for (batch, time, ...), as sample_weight
        try:
            if np.broadcast_shapes(m.shape, loss_shape) != tuple(loss_shape):
                raise ValueError
            m = xp.broadcast_to(m != 0, loss_shape)
        except ValueError:
            raise ValueError(f"mask of shape {given_shape} does not broadcast to the "
                             f"per-sample loss shape {tuple(loss_shape)}") from None
        valid = m if valid is None else valid & m
    return valid


def _apply_mask(w, valid, dtype, xp):
    """Keras's apply_mask for "sum_over_batch_size": the entries that count get weight
    size / count (times their sample weight), the others 0, so that the reduction divides
    the weighted sum by the number of entries that count (0 when none does)."""
    if valid is None:
        return w
    count = xp.sum(valid, dtype=np.float64)
    scale = xp.where(count > 0, valid.size / xp.maximum(count, 1.0), 0.0).astype(dtype)
    m = valid.astype(dtype) * scale
    return m if w is None else w * m


def _dper_sample(loss_shape, w, dtype, xp):
    """d value / d per_sample, shaped loss_shape + (1,) to broadcast over the last axis."""
    n = max(int(np.prod(loss_shape, dtype=np.int64)), 1)
    if w is None:
        d = xp.full(loss_shape, 1.0 / n, dtype=dtype)
    else:
        d = (w / dtype.type(n)).astype(dtype, copy=False)
    return d[..., None]


def _stable_sigmoid(x):
    xp = array_module(x)
    e = xp.exp(-xp.abs(x))                           # in (0, 1]: never overflows
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def _check_finite(name, value, low=None):
    """``value`` as a float; ValueError naming the argument unless it is a finite real number
    (>= ``low`` when given)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or (low is not None and value < low):
        bound = "" if low is None else f" >= {low:g}"
        raise ValueError(f"Argument `{name}` must be a finite number{bound}. Received: {name}={value!r}")
    return float(value)


def _check_label_smoothing(value):
    value = _check_finite("label_smoothing", value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing: expected a float in [0, 1], got {value!r}")
    return value


def _log_softmax(x):
    xp = array_module(x)
    m = xp.max(x, axis=-1, keepdims=True)
    with np.errstate(over="ignore"):  # a logit gap above the largest float gives -inf (callers clamp it)
        z = x - m
    return z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))


# --------------------------------------------------------------------------- base

class Loss:
    """Base class: subclasses implement ``_forward(y_true, y_pred) -> (per_sample,
    ctx)`` and ``_backward(y_true, y_pred, ctx, dper) -> grad`` where dper is
    d value / d per_sample with a trailing broadcast axis."""

    default_name = "loss"

    def __init__(self, name=None):
        self.name = self.default_name if name is None else str(name)

    # subclasses may override: how y_true is turned into an array for y_pred; check=False
    # skips checks of the values (not of the shapes) that the caller has made already
    def _prepare_true(self, y_true, y_pred, dtype, check=True):
        return _match_true(y_true, y_pred, dtype)

    # subclasses may override instead: (y_true as above, a boolean array of the per-sample
    # loss shape marking the entries that count, or None when all do); the others must get
    # a per-sample loss of 0 and no gradient, and are left out of the mean
    def _prepare(self, y_true, y_pred, dtype, check=True):
        return self._prepare_true(y_true, y_pred, dtype, check), None

    def _inputs(self, y_true, y_pred, check=True):
        y_pred = _as_pred(y_pred)
        work, grad_dtype = _work_dtype(y_pred)
        yp = y_pred.astype(work, copy=False)
        yt, valid = self._prepare(y_true, y_pred, work, check)
        return yt, yp, work, grad_dtype, valid

    def _sample_weights(self, sample_weight, mask, valid, loss_shape, work, xp):
        """The weights of the per-sample losses: sample_weight, and the entries that do not
        count (``valid``, ``mask``) left out of the mean as Keras leaves masked ones out."""
        w = _weights(sample_weight, loss_shape, work, xp)
        return _apply_mask(w, _loss_mask(valid, mask, loss_shape, xp), work, xp)

    def __call__(self, y_true, y_pred, sample_weight=None):
        return read_scalars([self._value(y_true, y_pred, sample_weight)])[0]

    def _value(self, y_true, y_pred, sample_weight=None, check=True, mask=None):
        """The loss as a float64 scalar of y_pred's module (stays on the device).

        ``mask`` (for the models; None: no mask): an array of the per-sample loss shape whose
        zero entries are left out, as Keras leaves out the steps a model's output mask
        hides: the weighted sum over the others divided by their number (rather than the
        mask folded into ``sample_weight`` by the caller, which cannot be combined with the
        entries the loss itself leaves out, e.g. ``ignore_class``)."""
        yt, yp, work, _, valid = self._inputs(y_true, y_pred, check)
        per_sample, _ = self._forward(yt, yp)
        w = self._sample_weights(sample_weight, mask, valid, per_sample.shape, work,
                                 array_module(yp))
        return _reduce(per_sample, w)

    def gradient(self, y_true, y_pred, sample_weight=None):
        """d loss / d y_pred, same shape as y_pred."""
        return self._value_and_gradient(y_true, y_pred, sample_weight)[1]

    def value_and_gradient(self, y_true, y_pred, sample_weight=None):
        """Both at once (one forward pass): (float, gradient like y_pred)."""
        value, g = self._value_and_gradient(y_true, y_pred, sample_weight)
        return read_scalars([value])[0], g

    def _value_and_gradient(self, y_true, y_pred, sample_weight=None, check=True, mask=None):
        """value_and_gradient with the value left on the device (a float64 scalar); ``mask``
        as for ``_value``."""
        yt, yp, work, grad_dtype, valid = self._inputs(y_true, y_pred, check)
        xp = array_module(yp)
        per_sample, ctx = self._forward(yt, yp)
        w = self._sample_weights(sample_weight, mask, valid, per_sample.shape, work, xp)
        value = _reduce(per_sample, w)
        g = self._backward(yt, yp, ctx, _dper_sample(per_sample.shape, w, work, xp))
        return value, xp.ascontiguousarray(g, dtype=grad_dtype).reshape(yp.shape)

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


# --------------------------------------------------------------------------- regression

class MeanSquaredError(Loss):
    """mean((y_true - y_pred)**2, axis=-1), reduced over the batch."""

    default_name = "mean_squared_error"

    def _forward(self, yt, yp):
        d = yp - yt
        return array_module(d).mean(d * d, axis=-1), d

    def _backward(self, yt, yp, d, dper):
        return dper * (2.0 / yp.shape[-1]) * d


class MeanAbsoluteError(Loss):
    """mean(|y_true - y_pred|, axis=-1), reduced over the batch (gradient 0 at a tie)."""

    default_name = "mean_absolute_error"

    def _forward(self, yt, yp):
        d = yp - yt
        xp = array_module(d)
        return xp.mean(xp.abs(d), axis=-1), d

    def _backward(self, yt, yp, d, dper):
        return dper * (1.0 / yp.shape[-1]) * array_module(d).sign(d)


class Huber(Loss):
    """Keras Huber: e = y_pred - y_true; 0.5*e**2 where |e| <= delta, else
    delta*|e| - 0.5*delta**2; mean over the last axis, reduced over the batch."""

    default_name = "huber_loss"

    def __init__(self, delta=1.0, name=None):
        super().__init__(name)
        self.delta = _check_finite("delta", delta, low=0)

    def _forward(self, yt, yp):
        xp = array_module(yp)
        e = yp - yt
        a = xp.abs(e)
        delta = yp.dtype.type(self.delta)
        quad = a <= delta
        per = xp.where(quad, 0.5 * e * e, delta * a - 0.5 * delta * delta)
        return xp.mean(per, axis=-1), (e, quad)

    def _backward(self, yt, yp, ctx, dper):
        xp = array_module(yp)
        e, quad = ctx
        delta = yp.dtype.type(self.delta)
        de = xp.where(quad, e, delta * xp.sign(e))
        return dper * (1.0 / yp.shape[-1]) * de

    def get_config(self):
        return {"name": self.name, "delta": self.delta}


# --------------------------------------------------------------------------- crossentropy

class BinaryCrossentropy(Loss):
    """-(t*log(p) + (1-t)*log(1-p)) averaged over the last axis, reduced over the batch.

    from_logits=False: p = clip(y_pred, 1e-7, 1 - 1e-7).  from_logits=True: the
    stable form max(x, 0) - x*t + log1p(exp(-|x|)), gradient sigmoid(x) - t.
    """

    default_name = "binary_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, name=None):
        super().__init__(name)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_label_smoothing(label_smoothing)

    def _prepare_true(self, y_true, y_pred, dtype, check=True):
        t = super()._prepare_true(y_true, y_pred, dtype, check)
        if self.label_smoothing:    # as Keras: towards 0.5
            ls = dtype.type(self.label_smoothing)
            t = t * (1 - ls) + dtype.type(0.5) * ls
        return t

    def _forward(self, t, x):
        xp = array_module(x)
        if self.from_logits:
            per = xp.maximum(x, x.dtype.type(0)) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
            return xp.mean(per, axis=-1), None
        eps = x.dtype.type(EPSILON)
        p = xp.clip(x, eps, 1 - eps)
        per = -(t * xp.log(p) + (1 - t) * xp.log(1 - p))
        return xp.mean(per, axis=-1), p

    def _backward(self, t, x, p, dper):
        scale = dper * (1.0 / x.shape[-1])
        if self.from_logits:
            return scale * (_stable_sigmoid(x) - t)
        eps = x.dtype.type(EPSILON)
        inside = (x >= eps) & (x <= 1 - eps)
        g = (1 - t) / (1 - p) - t / p
        return scale * array_module(x).where(inside, g, g.dtype.type(0))

    def get_config(self):
        config = {"name": self.name, "from_logits": self.from_logits}
        if self.label_smoothing:
            config["label_smoothing"] = self.label_smoothing
        return config


def _categorical_forward(t, x, from_logits):
    """Per-sample -sum(t * log q) over the last axis, q = softmax(x) or the clipped,
    renormalised probabilities; also returns what the backward pass needs."""
    xp = array_module(x)
    if from_logits:
        # a logit gap above the largest float gives -inf; clamp it so that t == 0 adds 0, not NaN
        logq = xp.maximum(_log_softmax(x), xp.finfo(x.dtype).min)
        return -xp.sum(t * logq, axis=-1), logq
    s = xp.sum(x, axis=-1, keepdims=True)
    q = x / s
    eps = x.dtype.type(EPSILON)
    p = xp.clip(q, eps, 1 - eps)
    return -xp.sum(t * xp.log(p), axis=-1), (s, q, p)


def _categorical_backward(t, x, ctx, dper, from_logits):
    xp = array_module(x)
    if from_logits:
        softmax = xp.exp(ctx)
        return dper * (softmax * xp.sum(t, axis=-1, keepdims=True) - t)
    s, q, p = ctx
    eps = x.dtype.type(EPSILON)
    inside = (q >= eps) & (q <= 1 - eps)
    gq = xp.where(inside, -t / p, t.dtype.type(0))   # d per / d q
    # q = x / s: d per / d x_k = (gq_k - sum_j gq_j q_j) / s
    return dper * (gq - xp.sum(gq * q, axis=-1, keepdims=True)) / s


class CategoricalCrossentropy(Loss):
    """-sum(t * log(p)) over the class (last) axis, reduced over the batch.

    from_logits=False: p = clip(y_pred / sum(y_pred, -1), 1e-7, 1 - 1e-7) (Keras
    rescales each row to sum to 1 first).  from_logits=True: log_softmax, gradient
    softmax(x) * sum(t) - t.  y_true holds one-hot (or soft) targets like y_pred.
    """

    default_name = "categorical_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, name=None):
        super().__init__(name)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_label_smoothing(label_smoothing)

    def _prepare_true(self, y_true, y_pred, dtype, check=True):
        t = super()._prepare_true(y_true, y_pred, dtype, check)
        if self.label_smoothing:    # as Keras: towards 1 / classes
            ls = dtype.type(self.label_smoothing)
            t = t * (1 - ls) + ls / dtype.type(y_pred.shape[-1])
        return t

    def _forward(self, t, x):
        return _categorical_forward(t, x, self.from_logits)

    def _backward(self, t, x, ctx, dper):
        return _categorical_backward(t, x, ctx, dper, self.from_logits)

    def get_config(self):
        config = {"name": self.name, "from_logits": self.from_logits}
        if self.label_smoothing:
            config["label_smoothing"] = self.label_smoothing
        return config


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """CategoricalCrossentropy with integer class ids as y_true: shape
    y_pred.shape[:-1] (or with a trailing axis of 1), each id in [0, classes).

    ``ignore_class`` (an int, or None), as Keras 3's: the entries whose id equals it (it may
    lie outside [0, classes), e.g. -1 or 255 for a "void" label) have a loss of 0 and no
    gradient, whatever their predictions, and are left out of the mean: the weighted sum of
    the other losses is divided by their number (0 when every entry is ignored), not by the
    number of all entries.
    """

    default_name = "sparse_categorical_crossentropy"

    # (no label_smoothing, as in Keras)
    def __init__(self, from_logits=False, ignore_class=None, name=None):
        super().__init__(from_logits=from_logits, name=name)
        if ignore_class is not None and (isinstance(ignore_class, (bool, np.bool_)) or
                                         not isinstance(ignore_class, (int, np.integer))):
            raise ValueError(f"Argument `ignore_class` must be an integer or None. "
                             f"Received: ignore_class={ignore_class!r}")
        self.ignore_class = None if ignore_class is None else int(ignore_class)

    def _prepare_true(self, y_true, y_pred, dtype, check=True):
        return self._prepare(y_true, y_pred, dtype, check)[0]

    def _prepare(self, y_true, y_pred, dtype, check=True):
        xp = array_module(y_pred)
        ids = xp.asarray(y_true)
        lead, classes = y_pred.shape[:-1], y_pred.shape[-1]
        if ids.shape != lead:
            if ids.shape == lead + (1,):
                ids = ids.reshape(lead)
            else:
                raise ValueError(
                    f"sparse y_true must hold class ids of shape y_pred.shape[:-1] = {lead} "
                    f"(or {lead + (1,)}): y_true has shape {ids.shape}, y_pred has shape "
                    f"{y_pred.shape}")
        if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.number) \
                or np.issubdtype(ids.dtype, np.complexfloating):
            raise ValueError(f"sparse y_true must hold integer class ids, got dtype {ids.dtype}")
        valid = None if self.ignore_class is None else ids != self.ignore_class
        if check and ids.size:
            # one read of the checks' outcome (ids may be on the device)
            integral = xp.all(xp.isfinite(ids) & (ids == xp.rint(ids))) \
                if not np.issubdtype(ids.dtype, np.integer) else True
            bad_ids = (ids < 0) | (ids >= classes)
            if valid is not None:
                bad_ids = bad_ids & valid
            integral, in_range = read_scalars([integral, ~xp.any(bad_ids)])
            if not integral:
                raise ValueError("sparse y_true must hold integer class ids, got "
                                 "non-integral values")
            if not in_range:
                bad = to_host(ids)[to_host(bad_ids)].ravel()[0].item()
                ignored = "" if self.ignore_class is None else \
                    f", and not ignore_class={self.ignore_class}"
                raise ValueError(
                    f"sparse y_true holds class id {bad!r} outside [0, {classes}){ignored} "
                    f"(y_pred has {classes} classes, shape {y_pred.shape})")
        if valid is None:
            return one_hot(ids.astype(np.intp, copy=False), classes, dtype), None
        # an ignored entry has an all-zero target row (a loss of 0, no gradient)
        safe = xp.where(valid, ids, 0).astype(np.intp, copy=False)
        return one_hot(safe, classes, dtype) * valid[..., None].astype(dtype), valid

    def _inputs(self, y_true, y_pred, check=True):
        yt, yp, work, grad_dtype, valid = super()._inputs(y_true, y_pred, check)
        if valid is not None:
            # as Keras (which zeroes them): the predictions of ignored entries do not matter,
            # so that a NaN, inf or all-zero row there gives no NaN
            yp = array_module(yp).where(valid[..., None], yp, yp.dtype.type(1))
        return yt, yp, work, grad_dtype, valid

    def get_config(self):
        config = super().get_config()
        if self.ignore_class is not None:     # (configs without the key: None)
            config["ignore_class"] = self.ignore_class
        return config


# --------------------------------------------------------------------------- registry

_CLASSES = {
    cls.__name__: cls for cls in (
        BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy,
        MeanSquaredError, MeanAbsoluteError, Huber)
}

_NAMES = {
    "binary_crossentropy": BinaryCrossentropy,
    "bce": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "huber": Huber,
    "huber_loss": Huber,
}


def _lookup(name):
    cls = _NAMES.get(name) or _CLASSES.get(name) or _NAMES.get(name.lower())
    if cls is None:
        cls = {k.lower(): v for k, v in _CLASSES.items()}.get(name.lower())
    if cls is None:
        raise ValueError(
            f"Unknown loss {name!r}. Valid names: {', '.join(sorted(_NAMES))} "
            f"(or a class name: {', '.join(sorted(_CLASSES))})")
    return cls


def serialize(loss):
    """Keras-style {"class_name": ..., "config": ...} for a Loss instance."""
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize(config):
    """A Loss from serialize()'s dict, or from a bare get_config() dict (resolved by
    its "name", which must then be a known loss name)."""
    if not isinstance(config, dict):
        raise ValueError(f"Could not interpret loss config {config!r}: expected a dict")
    if "class_name" in config:
        cls = _lookup(str(config["class_name"]))
        return cls.from_config(dict(config.get("config") or {}))
    if "name" in config:
        cls = _lookup(str(config["name"]))
        return cls.from_config(dict(config))
    raise ValueError(f"Could not interpret loss config {config!r}: it needs a "
                     f"'class_name' (with 'config') or a 'name' key")


def get(identifier):
    """Resolve a loss: a name (Keras names and aliases, or a class name), a Loss
    instance (returned as is), a config dict, or None (-> None)."""
    if identifier is None:
        return None
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        return _lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    raise ValueError(f"Could not interpret loss identifier {identifier!r}: expected a "
                     f"name, a fastlstm.losses.Loss instance or a config dict")
