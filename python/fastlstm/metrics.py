"""Stateful metrics on NumPy or CuPy arrays (Keras 3 semantics).

    m = fastlstm.metrics.get("accuracy", loss="binary_crossentropy")
    m.update_state(y_true, y_pred)        # per batch
    m.result()                            # Python float over all batches so far
    m.reset_state()                       # per epoch

Every metric except :class:`Mean` turns (y_true, y_pred) into a per-element value
and keeps a running, optionally weighted, mean of it exactly as Keras's
``MeanMetricWrapper`` does: values are averaged per sample (over every axis the
sample weight lacks), multiplied by the sample weight, summed into ``total``, and
``count`` grows by the batch size (or the summed weights).  ``result()`` is
``total / count`` (0.0 before any update).

Arrays: the per-batch values are computed in y_pred's array module (NumPy, or CuPy for a
model on the "cuda" device); ``total`` and ``count`` are Python floats on the host. A batch's
contribution comes back in one transfer; the models collect it with ``_batch_stats`` and
read it together with the loss, then ``_accumulate``.
"""

import numpy as np

from . import losses as _losses
from ._device import array_module, read_scalars

__all__ = [
    "Metric", "Mean", "MeanMetricWrapper", "BinaryAccuracy", "CategoricalAccuracy",
    "SparseCategoricalAccuracy", "MeanAbsoluteError", "MeanSquaredError", "Precision", "Recall",
    "get",
    "accuracy_for_shapes",
]


def _numeric(a, what, xp=None):
    a = (xp or array_module(a)).asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{what} must be numeric, got dtype {a.dtype}")
    return a


def _same_rank(x1, x2):
    """Keras squeeze_or_expand_to_same_rank: reconcile a trailing axis of size 1."""
    r1, r2 = x1.ndim, x2.ndim
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1:
            x2 = x2[..., None]
        else:
            x1 = x1.reshape(x1.shape[:-1])
    elif r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1:
            x1 = x1[..., None]
        else:
            x2 = x2.reshape(x2.shape[:-1])
    return x1, x2


def _check_same_shape(y_true, y_pred):
    y_true, y_pred = _same_rank(y_true, y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred shapes do not match: y_true has shape "
                         f"{y_true.shape}, y_pred has shape {y_pred.shape}")
    return y_true, y_pred


class Metric:
    """Base class: ``update_state``, ``result``, ``reset_state``, ``name``."""

    default_name = "metric"

    def __init__(self, name=None):
        self.name = self.default_name if name is None else str(name)
        self.reset_state()

    def reset_state(self):
        raise NotImplementedError

    def update_state(self, *args, **kwargs):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class Mean(Metric):
    """Running (weighted) mean of values: ``update_state(values, sample_weight=None)``.

    Without weights every sample (first axis) counts once and its value is the mean
    over its other axes; with weights the result is sum(v * w) / sum(w) with w
    broadcast to the values.
    """

    default_name = "mean"

    def reset_state(self):
        self.total = 0.0
        self.count = 0.0

    def update_state(self, values, sample_weight=None):
        self._accumulate(*read_scalars(self._mean_stats(values, sample_weight)))

    def _accumulate(self, total, count):
        """Add a batch's (total, count), read back as floats, to the running sums."""
        self.total += total
        self.count += count

    def _mean_stats(self, values, sample_weight=None):
        """(total, count) of one batch: sums of values' module (on the device) or floats."""
        xp = array_module(values)
        v = _numeric(values, "values", xp).astype(np.float64)
        if sample_weight is not None:
            w_shape = tuple(sample_weight.shape) if hasattr(sample_weight, "shape") \
                else np.shape(sample_weight)
            w = _numeric(sample_weight, "sample_weight", xp).astype(np.float64)
            v, w = _same_rank(v, w)
            if w.ndim > v.ndim:
                raise ValueError(f"sample_weight of shape {w_shape} has more "
                                 f"axes than the values of shape {v.shape}")
            if v.ndim > w.ndim:
                v = v.mean(axis=tuple(range(w.ndim, v.ndim)))
            try:
                w = xp.broadcast_to(w, v.shape)
            except ValueError:
                raise ValueError(f"sample_weight of shape {w_shape} does "
                                 f"not broadcast to the values' shape {v.shape}") from None
            v = v * w
            if w.ndim > 1:
                w = w.mean(axis=tuple(range(1, w.ndim)))
            count = xp.sum(w)
        else:
            count = float(v.shape[0]) if v.ndim >= 1 else 1.0
        if v.ndim > 1:
            v = v.mean(axis=tuple(range(1, v.ndim)))
        return xp.sum(v), count

    def result(self):
        return 0.0 if self.count == 0 else self.total / self.count


class MeanMetricWrapper(Mean):
    """Running mean of ``fn(y_true, y_pred)`` (per-element or per-sample values)."""

    def _values(self, y_true, y_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        self._accumulate(*read_scalars(self._batch_stats(y_true, y_pred, sample_weight)))

    def _batch_stats(self, y_true, y_pred, sample_weight=None):
        """(total, count) of one batch, left on y_pred's device (see Mean._mean_stats)."""
        xp = array_module(y_pred)
        y_true = _numeric(y_true, "y_true", xp)
        y_pred = _numeric(y_pred, "y_pred", xp)
        values = self._values(y_true, y_pred)
        return self._mean_stats(values, sample_weight)


class BinaryAccuracy(MeanMetricWrapper):
    """Fraction of elements where (y_pred > threshold) equals y_true."""

    default_name = "binary_accuracy"

    def __init__(self, threshold=0.5, name=None):
        self.threshold = _losses._check_finite("threshold", threshold)
        super().__init__(name)

    def _values(self, y_true, y_pred):
        y_true, y_pred = _check_same_shape(y_true, y_pred)
        return (y_true == (y_pred > self.threshold)).astype(np.float64)

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}


class CategoricalAccuracy(MeanMetricWrapper):
    """Fraction of samples where argmax(y_pred) equals argmax(y_true) (one-hot)."""

    default_name = "categorical_accuracy"

    def _values(self, y_true, y_pred):
        if y_true.shape != y_pred.shape:
            raise ValueError(f"y_true and y_pred shapes do not match: y_true has shape "
                             f"{y_true.shape}, y_pred has shape {y_pred.shape}")
        if y_pred.ndim == 0:
            raise ValueError("y_pred must have a class axis, got a scalar")
        xp = array_module(y_pred)
        return (xp.argmax(y_true, axis=-1) == xp.argmax(y_pred, axis=-1)).astype(np.float64)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    """Fraction of samples where argmax(y_pred) equals the integer id in y_true."""

    default_name = "sparse_categorical_accuracy"

    def _values(self, y_true, y_pred):
        if y_pred.ndim == 0:
            raise ValueError("y_pred must have a class axis, got a scalar")
        lead = y_pred.shape[:-1]
        if y_true.shape == lead + (1,):
            y_true = y_true.reshape(lead)
        if y_true.shape != lead:
            raise ValueError(f"sparse y_true must have shape y_pred.shape[:-1] = {lead}: "
                             f"y_true has shape {y_true.shape}, y_pred has shape "
                             f"{y_pred.shape}")
        return (y_true == array_module(y_pred).argmax(y_pred, axis=-1)).astype(np.float64)


class MeanAbsoluteError(MeanMetricWrapper):
    """Running mean of mean(|y_true - y_pred|, axis=-1)."""

    default_name = "mean_absolute_error"

    def _values(self, y_true, y_pred):
        y_true, y_pred = _check_same_shape(y_true, y_pred)
        xp = array_module(y_pred)
        d = y_pred.astype(np.float64) - y_true.astype(np.float64)
        return xp.mean(xp.abs(d), axis=-1)


class MeanSquaredError(MeanMetricWrapper):
    """Running mean of mean((y_true - y_pred)**2, axis=-1)."""

    default_name = "mean_squared_error"

    def _values(self, y_true, y_pred):
        y_true, y_pred = _check_same_shape(y_true, y_pred)
        d = y_pred.astype(np.float64) - y_true.astype(np.float64)
        return array_module(d).mean(d * d, axis=-1)


class _ConfusionMetric(Metric):
    """Weighted true/false positive/negative counts at one threshold, as Keras's
    ``Precision`` / ``Recall``: a prediction is positive when ``y_pred > threshold``, a
    label when it is nonzero; every element counts (targets and predictions are flattened),
    weighted by ``sample_weight`` broadcast to ``y_pred`` (masks included)."""

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None):
        if top_k is not None:
            raise NotImplementedError(f"{type(self).__name__}: top_k is not supported by "
                                      f"fastlstm")
        if thresholds is None:
            thresholds = 0.5
        elif isinstance(thresholds, (list, tuple)):
            if len(thresholds) != 1:
                raise NotImplementedError(f"{type(self).__name__}: only one threshold is "
                                          f"supported by fastlstm, got {list(thresholds)}")
            thresholds = thresholds[0]
        self.thresholds = _losses._check_finite("thresholds", thresholds)
        if not 0.0 <= self.thresholds <= 1.0:
            raise ValueError(f"Threshold values must be in [0, 1]. Received: {thresholds}")
        if class_id is not None and (isinstance(class_id, bool) or
                                     not isinstance(class_id, (int, np.integer))):
            raise ValueError(f"class_id: expected an int or None, got {class_id!r}")
        self.class_id = None if class_id is None else int(class_id)
        super().__init__(name)

    def reset_state(self):
        self.true_positives = 0.0
        self.false_positives = 0.0
        self.false_negatives = 0.0

    def update_state(self, y_true, y_pred, sample_weight=None):
        xp = array_module(y_pred)
        y_true = _numeric(y_true, "y_true", xp).astype(np.float64)
        y_pred = _numeric(y_pred, "y_pred", xp).astype(np.float64)
        y_pred, y_true = _same_rank(y_pred, y_true)
        if sample_weight is not None:
            w = _numeric(sample_weight, "sample_weight", xp).astype(np.float64)
            # Keras expands the weights by an axis, then squeezes a trailing 1 back to y_true's
            # rank: only weights of rank y_true.ndim - 1 keep the new axis
            if w.ndim + 1 == y_true.ndim:
                w = w[..., None]
        if self.class_id is not None:
            if y_pred.ndim < 2:
                raise ValueError("When class_id is provided, y_pred must be a 2D array with "
                                 f"shape (num_samples, num_classes), found shape: {y_pred.shape}")
            y_true = y_true[..., self.class_id, None]
            y_pred = y_pred[..., self.class_id, None]
        if y_true.shape != y_pred.shape:
            try:
                y_true = xp.broadcast_to(y_true, y_pred.shape)
            except ValueError:
                raise ValueError(f"y_true and y_pred shapes do not match: y_true has shape "
                                 f"{y_true.shape}, y_pred has shape {y_pred.shape}") from None
        pred = y_pred > self.thresholds
        label = y_true != 0
        if sample_weight is None:
            w = xp.ones(y_pred.shape, np.float64)
        else:
            try:
                w = xp.broadcast_to(w, y_pred.shape)
            except ValueError:
                raise ValueError(f"sample_weight of shape {tuple(w.shape)} does not broadcast "
                                 f"to y_pred's shape {y_pred.shape}") from None
        tp, fp, fn = read_scalars([xp.sum(w * (label & pred)), xp.sum(w * (~label & pred)),
                                   xp.sum(w * (label & ~pred))])
        self.true_positives += tp
        self.false_positives += fp
        self.false_negatives += fn

    def get_config(self):
        return {"name": self.name, "thresholds": self.thresholds, "class_id": self.class_id}


class Precision(_ConfusionMetric):
    """true_positives / (true_positives + false_positives) (0.0 when there are none)."""

    default_name = "precision"

    def result(self):
        d = self.true_positives + self.false_positives
        return 0.0 if d == 0 else self.true_positives / d


class Recall(_ConfusionMetric):
    """true_positives / (true_positives + false_negatives) (0.0 when there are none)."""

    default_name = "recall"

    def result(self):
        d = self.true_positives + self.false_negatives
        return 0.0 if d == 0 else self.true_positives / d


# --------------------------------------------------------------------------- registry

_CLASSES = {cls.__name__: cls for cls in (
    Mean, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
    MeanAbsoluteError, MeanSquaredError, Precision, Recall)}

_NAMES = {
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean": Mean,
    "precision": Precision,
    "recall": Recall,
}

_ACCURACY = ("accuracy", "acc")


def _accuracy_for(loss):
    """The accuracy class Keras would pick for this loss."""
    if loss is not None and not isinstance(loss, _losses.Loss):
        loss = _losses.get(loss)
    if isinstance(loss, _losses.SparseCategoricalCrossentropy):
        return SparseCategoricalAccuracy
    if isinstance(loss, _losses.CategoricalCrossentropy):
        return CategoricalAccuracy
    return BinaryAccuracy  # binary crossentropy, and the default for other losses


def accuracy_for_shapes(y_true_shape, y_pred_shape):
    """The accuracy class Keras 3's compile picks for 'accuracy' from the shapes of a batch's
    targets and predictions: binary when the prediction's last axis is 1, sparse categorical
    when the targets have fewer axes (or a last axis of 1 against several classes), else
    categorical."""
    yt, yp = tuple(y_true_shape), tuple(y_pred_shape)
    if yp and yp[-1] == 1:
        return BinaryAccuracy
    if len(yt) < len(yp) or (yt and yp and yt[-1] == 1 and yp[-1] > 1):
        return SparseCategoricalAccuracy
    return CategoricalAccuracy


def get(identifier, loss=None):
    """Resolve a metric.

    A string makes a fresh metric named by that string (as Keras's compile does, so
    'mae' reports as 'mae'): 'accuracy'/'acc' picks the accuracy matching ``loss`` (a model's
    compile then replaces it by the one ``accuracy_for_shapes`` picks from its first batch,
    as Keras 3 does)
    (sparse categorical crossentropy -> SparseCategoricalAccuracy, categorical ->
    CategoricalAccuracy, anything else -> BinaryAccuracy); other names are the Keras
    names and aliases or class names.  A Metric instance is returned as is; a dict
    is {"class_name": ..., "config": ...}.  Unknown names raise ValueError.
    """
    if identifier is None:
        return None
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = identifier
        if key.lower() in _ACCURACY:
            return _accuracy_for(loss)(name=identifier)
        cls = _NAMES.get(key) or _CLASSES.get(key) or _NAMES.get(key.lower())
        if cls is None:
            raise ValueError(
                f"Unknown metric {identifier!r}. Valid names: "
                f"{', '.join(sorted(_NAMES) + list(_ACCURACY))} "
                f"(or a class name: {', '.join(sorted(_CLASSES))})")
        return cls(name=identifier)
    if isinstance(identifier, dict) and "class_name" in identifier:
        cls = _CLASSES.get(identifier["class_name"])
        if cls is None:
            raise ValueError(f"Unknown metric class {identifier['class_name']!r}. Valid: "
                             f"{', '.join(sorted(_CLASSES))}")
        return cls.from_config(dict(identifier.get("config") or {}))
    raise ValueError(f"Could not interpret metric identifier {identifier!r}")
