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
from ._device import array_module, read_scalars, to_host

__all__ = [
    "Metric", "Mean", "MeanMetricWrapper", "BinaryAccuracy", "CategoricalAccuracy",
    "SparseCategoricalAccuracy", "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy",
    "MeanAbsoluteError", "MeanSquaredError", "Precision", "Recall", "AUC", "get",
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


def _sparse_ids(y_true, y_pred):
    """Sparse targets of shape y_pred.shape[:-1] (or with a trailing axis of 1), reshaped to
    y_pred.shape[:-1]; ValueError naming both shapes otherwise."""
    if y_pred.ndim == 0:
        raise ValueError("y_pred must have a class axis, got a scalar")
    lead = y_pred.shape[:-1]
    if y_true.shape == lead + (1,):
        y_true = y_true.reshape(lead)
    if y_true.shape != lead:
        raise ValueError(f"sparse y_true must have shape y_pred.shape[:-1] = {lead}: "
                         f"y_true has shape {y_true.shape}, y_pred has shape "
                         f"{y_pred.shape}")
    return y_true


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
        y_true = _sparse_ids(y_true, y_pred)
        return (y_true == array_module(y_pred).argmax(y_pred, axis=-1)).astype(np.float64)


def _in_top_k(ids, y_pred, k):
    """Whether class ``ids`` (integers of shape y_pred.shape[:-1]) is among the ``k`` largest
    scores of y_pred's last axis, as Keras's ``ops.in_top_k`` (torch backend) decides it: when
    fewer than k scores are above the target's (a tie with the k-th largest is in), a NaN score
    counting as above every number. A NaN target score, or an id outside [0, classes), is not
    in; with k >= classes every other target is."""
    xp = array_module(y_pred)
    classes = y_pred.shape[-1]
    if classes == 0:
        raise ValueError(f"y_pred must have at least one class, got shape {y_pred.shape}")
    valid = (ids >= 0) & (ids < classes)
    safe = xp.where(valid, ids, 0)[..., None]
    target = xp.take_along_axis(y_pred, safe, axis=-1)
    above = y_pred > target
    if np.issubdtype(y_pred.dtype, np.floating):
        above = above | xp.isnan(y_pred)
        valid = valid & ~xp.isnan(target[..., 0])
    return valid & (xp.sum(above, axis=-1) < k)


def _check_k(k):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"Argument `k` must be a positive integer. Received: k={k!r}")
    return int(k)


class TopKCategoricalAccuracy(MeanMetricWrapper):
    """Fraction of samples whose target class (argmax of the one-hot y_true) is among the
    ``k`` largest scores of y_pred, as Keras's ``TopKCategoricalAccuracy``.

    Ties follow Keras's ``ops.in_top_k``: a target is in when fewer than ``k`` scores are
    strictly above its score, so a target tied with the k-th largest score counts (and all
    tied classes may count); a NaN score counts as above every number, and a target whose
    own score is NaN is never in. With ``k`` at least the number of classes every target is
    in (as Keras's TensorFlow, JAX and NumPy backends give; its torch backend raises).
    y_true and y_pred have the same shape, (batch, classes) or (batch, time, classes);
    ``dtype`` is accepted for Keras code and configs, and ignored.
    """

    default_name = "top_k_categorical_accuracy"

    def __init__(self, k=5, name=None, dtype=None):
        self.k = _check_k(k)
        super().__init__(name)

    def _values(self, y_true, y_pred):
        if y_true.shape != y_pred.shape:
            raise ValueError(f"y_true and y_pred shapes do not match: y_true has shape "
                             f"{y_true.shape}, y_pred has shape {y_pred.shape}")
        if y_pred.ndim == 0:
            raise ValueError("y_pred must have a class axis, got a scalar")
        ids = array_module(y_pred).argmax(y_true, axis=-1)
        return _in_top_k(ids, y_pred, self.k).astype(np.float64)

    def get_config(self):
        return {"name": self.name, "k": self.k}

    def __repr__(self):
        return f"{type(self).__name__}(k={self.k}, name={self.name!r})"


class SparseTopKCategoricalAccuracy(MeanMetricWrapper):
    """Fraction of samples whose integer class id in y_true is among the ``k`` largest
    scores of y_pred, as Keras's ``SparseTopKCategoricalAccuracy`` (ties, NaN and ``k`` at
    least the number of classes as :class:`TopKCategoricalAccuracy`).

    y_true has shape y_pred.shape[:-1] (or with a trailing axis of 1); its ids are truncated
    to integers as Keras casts them, and an id outside [0, classes) (or not finite) is never
    in the top k. With ``from_sorted_ids=True`` y_pred instead holds class ids sorted from
    the highest score down, (batch, N): a sample counts when its id is among the first ``k``
    of them (all N when N < k). ``dtype`` is accepted for Keras code and configs, and
    ignored.
    """

    default_name = "sparse_top_k_categorical_accuracy"

    def __init__(self, k=5, name=None, dtype=None, from_sorted_ids=False):
        self.k = _check_k(k)
        self.from_sorted_ids = bool(from_sorted_ids)
        super().__init__(name)

    def _values(self, y_true, y_pred):
        y_true = _sparse_ids(y_true, y_pred)
        xp = array_module(y_pred)
        if self.from_sorted_ids:
            # as Keras: the targets in y_pred's dtype, compared with the first k ids
            t = y_true.astype(y_pred.dtype, copy=False)[..., None]
            return xp.any(y_pred[..., :self.k] == t, axis=-1).astype(np.float64)
        if np.issubdtype(y_true.dtype, np.floating):
            # truncated towards 0 as Keras's cast; NaN and ids out of range become -1 (never
            # in the top k) before the cast, which could not hold them
            ok = (y_true > -1) & (y_true < y_pred.shape[-1])
            ids = xp.where(ok, xp.trunc(xp.where(ok, y_true, 0)), -1)
        else:
            ids = y_true
        return _in_top_k(ids.astype(np.int64), y_pred, self.k).astype(np.float64)

    def get_config(self):
        config = {"name": self.name, "k": self.k}
        if self.from_sorted_ids:
            config["from_sorted_ids"] = True
        return config

    def __repr__(self):
        extra = ", from_sorted_ids=True" if self.from_sorted_ids else ""
        return f"{type(self).__name__}(k={self.k}, name={self.name!r}{extra})"


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
    weighted by ``sample_weight`` broadcast to ``y_pred``. In a model, as in Keras 3, they
    are not given the output mask (only the mean metrics are): masked steps count too."""

    _masked = False

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        # (dtype: accepted for Keras code and configs, and ignored, as AUC does)
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
            classes = y_pred.shape[-1]
            if not -classes <= self.class_id < classes:
                raise ValueError(f"class_id={self.class_id} is out of range for y_pred of shape "
                                 f"{y_pred.shape} ({classes} classes)")
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


class AUC(Metric):
    """Area under the ROC or precision-recall curve, approximated at fixed thresholds exactly
    as Keras 3's ``AUC`` does (same buckets, same Riemann sums).

    ``num_thresholds`` thresholds: ``-1e-7``, ``i / (num_thresholds - 1)`` for
    ``i = 1 .. num_thresholds - 2``, and ``1 + 1e-7``; or the sorted ``thresholds`` given, with
    the same two end points added. An element counts as predicted positive at a threshold
    when its prediction is above it (``sigmoid(y_pred)`` with ``from_logits``), and as a
    positive label when its target is nonzero. The weighted true/false positive/negative
    counts at every threshold are summed over the batches (``true_positives``,
    ``false_positives``, ``true_negatives``, ``false_negatives``: float64 arrays of
    ``num_thresholds``, or ``(num_thresholds, num_labels)`` with ``multi_label``);
    ``result()`` integrates the curve through those points:

    - ``curve="ROC"``: recall against the false positive rate; ``"PR"``: precision against
      recall; ``"PRGAIN"``: precision gain against recall gain.
    - ``summation_method="interpolation"``: trapezoids (for PR, Davis & Goadrich's
      interpolation of the counts, as Keras); ``"minoring"`` / ``"majoring"``: rectangles of
      the smaller / larger of the two heights.

    As in Keras, predictions are read as float32 and, with evenly spaced thresholds (the
    default), clipped to [0, 1] before they are bucketed; other explicit thresholds compare
    the unclipped predictions. ``sample_weight`` weighs every element (in a model the output
    mask is not applied: as in Keras 3, whose compiled AUC counts masked steps too);
    ``label_weights`` weighs the last axis's positions (without ``multi_label``), or the
    per-label AUCs in their average (with ``multi_label``, which takes 2-D predictions
    ``(samples, labels)`` and averages the labels' AUCs). ``dtype`` is accepted for Keras code
    and ignored. A NaN prediction counts as below every threshold.

    On a device the batch's counts are computed there and come back in one transfer.
    """

    default_name = "auc"
    # Keras 3 gives a model's output mask to the mean metrics only: AUC (as Precision and
    # Recall) counts masked steps too
    _masked = False
    _CURVES = {"roc": "ROC", "pr": "PR", "prgain": "PRGAIN"}
    _SUMMATIONS = ("interpolation", "minoring", "majoring")
    _EPSILON = 1e-7                    # Keras's backend.epsilon(): the end points' margin

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation",
                 name=None, dtype=None, thresholds=None, multi_label=False, num_labels=None,
                 label_weights=None, from_logits=False):
        curve_key = str(getattr(curve, "value", curve))
        if curve_key not in ("roc", "ROC", "pr", "PR", "prgain", "PRGAIN"):
            raise ValueError(f'Invalid AUC curve value: "{curve}". '
                             f'Expected values are ["PR", "ROC", "PRGAIN"]')
        self.curve = self._CURVES[curve_key.lower()]
        sum_key = str(getattr(summation_method, "value", summation_method))
        if sum_key not in self._SUMMATIONS + tuple(m.capitalize() for m in self._SUMMATIONS):
            raise ValueError(f'Invalid AUC summation method value: "{summation_method}". '
                             f'Expected values are ["interpolation", "majoring", "minoring"]')
        self.summation_method = sum_key.lower()
        self._init_from_thresholds = thresholds is not None
        if thresholds is not None:
            if np.ndim(thresholds) != 1:
                raise ValueError(f"thresholds: expected a list of numbers, got {thresholds!r}")
            inner = sorted(_losses._check_finite("thresholds", t) for t in list(thresholds))
            self.num_thresholds = len(inner) + 2
            ends = np.array([0.0] + inner + [1.0])
            even = np.arange(len(ends), dtype=np.float32) / (len(ends) - 1)
            # (Keras's test: within 1e-7 of evenly spaced, and at least one inner threshold)
            self._evenly = len(ends) >= 3 and bool(np.allclose(ends, even, atol=self._EPSILON))
        else:
            if isinstance(num_thresholds, bool) or \
                    not isinstance(num_thresholds, (int, np.integer)):
                raise ValueError(f"Argument `num_thresholds` must be an integer > 1. "
                                 f"Received: num_thresholds={num_thresholds!r}")
            if num_thresholds <= 1:
                raise ValueError(f"Argument `num_thresholds` must be an integer > 1. "
                                 f"Received: num_thresholds={num_thresholds}")
            self.num_thresholds = int(num_thresholds)
            inner = (np.arange(1, self.num_thresholds - 1) * 1.0
                     / (self.num_thresholds - 1)).tolist()
            self._evenly = True
        self._thresholds = np.array([0.0 - self._EPSILON] + inner + [1.0 + self._EPSILON])
        self.multi_label = bool(multi_label)
        if num_labels is not None:
            if not self.multi_label:
                raise ValueError("`num_labels` is needed only when `multi_label` is True.")
            if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) \
                    or num_labels < 1:
                raise ValueError(f"num_labels: expected a positive int, got {num_labels!r}")
            num_labels = int(num_labels)
        self.num_labels = num_labels
        self._num_labels = num_labels          # the labels' count once known
        if label_weights is not None:
            lw = np.array(label_weights, dtype=np.float64)
            if lw.ndim != 1 or not np.all(np.isfinite(lw)):
                raise ValueError(f"label_weights: expected a list of finite numbers, got "
                                 f"{label_weights!r}")
            label_weights = lw
        self.label_weights = label_weights
        self.from_logits = bool(from_logits)
        super().__init__(name)

    @property
    def thresholds(self):
        """Every threshold, the two end points included (as Keras's ``AUC.thresholds``)."""
        return [float(t) for t in self._thresholds]

    def reset_state(self):
        if self.multi_label and self._num_labels is None:
            shape = None                         # built by the first batch
        elif self.multi_label:
            shape = (self.num_thresholds, self._num_labels)
        else:
            shape = (self.num_thresholds,)
        for attr in ("true_positives", "false_positives", "true_negatives", "false_negatives"):
            setattr(self, attr, None if shape is None else np.zeros(shape))

    def _weights(self, xp, y_true, y_pred, sample_weight):
        """The weight of every element of y_pred (None: all 1), as Keras reconciles them."""
        w = None
        if sample_weight is not None:
            w_shape = tuple(sample_weight.shape) if hasattr(sample_weight, "shape") \
                else np.shape(sample_weight)
            w = _numeric(sample_weight, "sample_weight", xp).astype(np.float64)
            # Keras adds an axis, then squeezes a trailing 1 back to y_true's rank: only weights
            # of rank y_true.ndim - 1 keep the new axis
            if w.ndim + 1 == y_true.ndim:
                w = w[..., None]
            try:
                w = xp.broadcast_to(w, y_pred.shape)
            except ValueError:
                raise ValueError(f"sample_weight of shape {w_shape} does not broadcast to "
                                 f"y_pred's shape {y_pred.shape}") from None
        if self.label_weights is not None and not self.multi_label:
            try:
                lw = xp.broadcast_to(xp.asarray(self.label_weights), y_pred.shape)
            except ValueError:
                raise ValueError(f"label_weights of length {len(self.label_weights)} does not "
                                 f"broadcast to y_pred's shape {y_pred.shape}") from None
            w = lw if w is None else w * lw
        return w

    def _counts(self, xp, y_pred):
        """How many thresholds each prediction is above (positive at thresholds 0..k-1)."""
        n = self.num_thresholds
        if self._evenly:
            # Keras's bucketing for evenly spaced thresholds: ceil(p (n - 1)) - 1 on the
            # prediction clipped to [0, 1], at least 0 (so 0 is above the first threshold,
            # -1e-7, and 1 is not above the last, 1 + 1e-7), in float32
            p = xp.clip(y_pred, np.float32(0.0), np.float32(1.0))
            k = xp.maximum(xp.ceil(p * np.float32(n - 1)), np.float32(1.0))
        else:
            t = xp.asarray(self._thresholds.astype(np.float32))
            k = xp.searchsorted(t, y_pred, side="left").astype(np.float32)  # thresholds < p
        return xp.where(xp.isnan(y_pred), np.float32(0.0), k).astype(np.int64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        xp = array_module(y_pred)
        y_true = _numeric(y_true, "y_true", xp)
        y_pred = _numeric(y_pred, "y_pred", xp).astype(np.float32)   # as Keras's variables
        if self.multi_label:
            if y_pred.ndim != 2:
                raise ValueError(f"`y_pred` must have rank 2 when `multi_label=True`. Found "
                                 f"rank {y_pred.ndim}. Full shape received for `y_pred`: "
                                 f"{y_pred.shape}")
            if self._num_labels is None:
                self._num_labels = int(y_pred.shape[1])
                self.reset_state()
            elif y_pred.shape[1] != self._num_labels:
                raise ValueError(f"AUC(multi_label=True) counts {self._num_labels} labels, "
                                 f"got y_pred of shape {y_pred.shape}")
        if self.from_logits:
            with np.errstate(over="ignore"):
                y_pred = np.float32(1.0) / (np.float32(1.0) + xp.exp(-y_pred))
        y_pred, y_true = _same_rank(y_pred, y_true)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"y_true and y_pred shapes do not match: y_true has shape "
                             f"{y_true.shape}, y_pred has shape {y_pred.shape}")
        w = self._weights(xp, y_true, y_pred, sample_weight)
        label = (y_true != 0).astype(np.float64)
        pos = label if w is None else label * w
        neg = (1.0 - label) if w is None else (1.0 - label) * w
        k = self._counts(xp, y_pred)
        n = self.num_thresholds
        if self.multi_label:
            labels = y_pred.shape[1]
            idx = (k * labels + xp.arange(labels)[None, :]).ravel()
            size = (n + 1) * labels
        else:
            idx, size = k.ravel(), n + 1
        # per count of thresholds passed: the weights of positives and negatives
        hist = xp.stack([xp.bincount(idx, weights=pos.ravel(), minlength=size),
                         xp.bincount(idx, weights=neg.ravel(), minlength=size)])
        hist = to_host(hist).astype(np.float64)          # one transfer
        if self.multi_label:
            hist = hist.reshape(2, n + 1, labels)
        # above threshold i: the elements that passed more than i thresholds
        above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
        tp, fp = above[0, 1:], above[1, 1:]
        self.true_positives = self.true_positives + tp
        self.false_positives = self.false_positives + fp
        self.false_negatives = self.false_negatives + (above[0, 0] - tp)
        self.true_negatives = self.true_negatives + (above[1, 0] - fp)

    @staticmethod
    def _div(a, b):
        """a / b, 0 where b is 0 (Keras's divide_no_nan)."""
        a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
        out = np.zeros(a.shape)
        np.divide(a, b, out=out, where=b != 0)
        return out

    def _interpolated_pr(self, tp, fp, fn):
        """Davis & Goadrich's PR interpolation (Keras's closed form): TP and TP + FP linear
        between neighbouring thresholds, precision integrated over recall in each interval."""
        p = tp + fp
        dtp = tp[:-1] - tp[1:]
        dp = p[:-1] - p[1:]
        slope = self._div(dtp, np.maximum(dp, 0))
        intercept = tp[1:] - slope * p[1:]
        both = (p[:-1] > 0) & (p[1:] > 0)
        ratio = np.where(both, self._div(p[:-1], np.maximum(p[1:], 0)), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = np.log(np.where(ratio > 0, ratio, 1.0))
        return self._div(slope * (dtp + intercept * log_ratio),
                         np.maximum(tp[1:] + fn[1:], 0))

    def _riemann(self, tp, fp, tn, fn):
        recall = self._div(tp, tp + fn)
        if self.curve == "ROC":
            x, y = self._div(fp, fp + tn), recall
        elif self.curve == "PR":
            x, y = recall, self._div(tp, tp + fp)
        else:                                                      # PRGAIN
            scale = self._div(tp + fn, tn + fp)
            recall_gain = np.where(tp == 0, 0.0, 1.0 - scale * self._div(fn, tp))
            precision_gain = np.where(tp == 0, 1.0, 1.0 - scale * self._div(fp, tp))
            x, y = np.maximum(recall_gain, 0.0), precision_gain
        if self.summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:-1], y[1:])
        else:
            heights = np.maximum(y[:-1], y[1:])
        return (x[:-1] - x[1:]) * heights

    def result(self):
        if self.true_positives is None:                 # multi_label, nothing seen yet
            return 0.0
        tp, fp = self.true_positives, self.false_positives
        tn, fn = self.true_negatives, self.false_negatives
        if self.curve == "PR" and self.summation_method == "interpolation":
            terms = self._interpolated_pr(tp, fp, fn)
        else:
            terms = self._riemann(tp, fp, tn, fn)
        if not self.multi_label:
            return float(np.sum(terms))
        by_label = np.sum(terms, axis=0)
        if self.label_weights is None:
            return float(np.mean(by_label))
        lw = self.label_weights
        if lw.shape != by_label.shape:
            raise ValueError(f"label_weights of length {len(lw)} for {len(by_label)} labels")
        total = float(np.sum(lw))
        return 0.0 if total == 0 else float(np.sum(by_label * lw) / total)

    def get_config(self):
        config = {"name": self.name, "num_thresholds": self.num_thresholds,
                  "curve": self.curve, "summation_method": self.summation_method,
                  "multi_label": self.multi_label, "num_labels": self.num_labels,
                  "label_weights": None if self.label_weights is None
                  else [float(v) for v in self.label_weights],
                  "from_logits": self.from_logits}
        if self._init_from_thresholds:
            config["thresholds"] = self.thresholds[1:-1]
        return config

    # A config (a model file) asks for at most this many thresholds: four float64 arrays of
    # num_thresholds are allocated at once, so a few bytes of JSON must not ask for gigabytes
    _MAX_CONFIG_THRESHOLDS = 1 << 20

    @classmethod
    def from_config(cls, config):
        n = config.get("num_thresholds") if isinstance(config, dict) else None
        if config.get("thresholds") is None and isinstance(n, (int, np.integer)) and \
                not isinstance(n, bool) and n > cls._MAX_CONFIG_THRESHOLDS:
            raise ValueError(f"AUC config: num_thresholds={n} is more than "
                             f"{cls._MAX_CONFIG_THRESHOLDS} (build AUC(num_thresholds=...) "
                             "directly for more)")
        return cls(**config)

    def __repr__(self):
        return (f"AUC(name={self.name!r}, curve={self.curve!r}, "
                f"num_thresholds={self.num_thresholds})")


# --------------------------------------------------------------------------- registry

_CLASSES = {cls.__name__: cls for cls in (
    Mean, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
    TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy,
    MeanAbsoluteError, MeanSquaredError, Precision, Recall, AUC)}

_NAMES = {
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean": Mean,
    "precision": Precision,
    "recall": Recall,
    "auc": AUC,
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
