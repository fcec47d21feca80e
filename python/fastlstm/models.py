"""Keras-like ``Sequential`` model: compile, fit, evaluate, predict, summary, save, load.

    from fastlstm.models import Sequential
    from fastlstm.layers import LSTM, Dense
    model = Sequential()
    model.add(LSTM(128, input_shape=(timesteps, features)))
    model.add(Dense(1, activation='sigmoid'))
    model.compile(loss='binary_crossentropy', optimizer='adam', metrics=['accuracy'])
    model.fit(X_train, y_train, epochs=10, batch_size=32)
    loss, accuracy = model.evaluate(X_test, y_test)

The model only orchestrates: each layer runs its own forward and backward
(``fastlstm.layers``), the loss gives the gradient of the predictions
(``fastlstm.losses``), the optimizer updates the weights in place
(``fastlstm.optimizers``). Masks made by Embedding(mask_zero=True) or Masking flow from
layer to layer as in Keras; when the model's output still carries a mask (a
``return_sequences`` model), masked steps are left out of the loss and the metrics.

``Sequential(dtype="float64")`` runs every layer in float64 (the default is float32), which
makes finite-difference checks of the backward pass possible.

Devices: a model is bound to ``fastlstm.get_device()`` ("cpu" or "cuda"; see
``fastlstm.set_device``) when it is built, and ``model.device`` says which. On "cuda" its
weights, the optimizer's slots and every array between the layers live on the GPU (CuPy
arrays; the LSTM layers run fastlstm's CUDA kernels). ``fit``, ``evaluate`` and ``predict``
take NumPy (or CuPy) arrays and upload one batch at a time; per training or test batch one
small transfer brings back the loss, the metrics' sums and whether the gradients are
finite, so History and logs hold Python floats. ``predict`` and ``predict_on_batch`` return
NumPy arrays, ``get_weights`` NumPy copies; ``model(x)`` returns an array of the device.

Data that does not fit in one array: ``fit``, ``evaluate`` and ``predict`` also take, as
``x``, batches from a Python generator or iterator, from an object with ``len()`` and
indexing that gives batches (like ``keras.utils.PyDataset``), or from any other iterable of
batches (like a ``torch.utils.data.DataLoader``), as Keras does. Each batch is ``(x, y)``,
``(x, y, sample_weight)`` or (for ``predict``) ``x`` alone; then ``y``, ``sample_weight``
and ``validation_split`` must not be given, and ``batch_size`` is not used. An indexed
dataset gives ``len()`` batches per epoch, in a new random order per epoch when
``shuffle=True`` (its ``on_epoch_begin()`` and ``on_epoch_end()``, where it has them, are
called around each epoch of ``fit``); an iterable is read
once per epoch; a generator or iterator is one stream for the whole of ``fit``. With
``steps_per_epoch`` an epoch takes the next that many batches and the next epoch goes on from
there (as with arrays); a batch of 0 samples, or no batch at all, is an error; a generator
that runs out later stops training with a warning, so give it
``steps_per_epoch * epochs`` batches, or make it endless. ``validation_data`` may be such a
source too (``validation_steps`` limits it; an endless generator needs it), and so may
``evaluate``'s ``x`` (``steps`` likewise) and ``predict``'s.
"""

import collections.abc
import math
import numbers
import operator
import sys
import time
import warnings

import numpy as np

from . import _device as _devices
from . import _random, callbacks as callbacks_module, layers as layers_module
from . import losses as losses_module, metrics as metrics_module
from . import optimizers as optimizers_module

__all__ = ["Sequential", "load_model"]


def _with_class_weights(sw, cw):
    """Sample weights times class weights (either may be None); a sample weight of shape
    (N, 1) or (N, T) meets class weights of shape (N,) or (N, T)."""
    if cw is None:
        return sw
    if sw is None:
        return cw
    if sw.ndim > cw.ndim:
        cw = cw.reshape(cw.shape + (1,) * (sw.ndim - cw.ndim))
    else:
        sw = sw.reshape(sw.shape + (1,) * (cw.ndim - sw.ndim))
    return sw * cw


def _int_arg(value, name, low):
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {value!r}") from None
    if v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v}")
    return v


def _fmt(shape):
    return layers_module._fmt_shape(tuple(shape))


_TEST_BATCH_HOOKS = ("on_test_batch_begin", "on_test_batch_end")


def _source_kind(x):
    """How x gives batches: "iterator" (a generator or other iterator: one stream),
    "indexed" (len() and x[i] give batches, like keras.utils.PyDataset), "iterable" (read
    once per pass, like a torch DataLoader), or None (array data: arrays, array-likes,
    nested lists)."""
    # (collections.abc.Sequence: deque, range, ... of samples, which np.asarray reads as
    # array data, as fit did before data sources; a PyDataset or a torch Dataset is not one)
    if x is None or isinstance(x, (np.ndarray, list, tuple, dict, str, bytes, numbers.Number,
                                   collections.abc.Sequence)) \
            or _devices.is_array(x) or any(hasattr(x, a) for a in (
                "__array__", "__array_interface__", "__cuda_array_interface__", "__dlpack__")):
        return None
    try:
        memoryview(x)       # the buffer protocol (array.array, ...): array data too
        return None
    except TypeError:
        pass
    if hasattr(x, "__next__"):
        return "iterator"
    if hasattr(x, "__getitem__") and hasattr(x, "__len__"):
        return "indexed"
    if hasattr(x, "__iter__"):
        return "iterable"
    return None


def _unpack_batch(batch):
    """(x, y, sample_weight) of one batch from a data source: (x, y), (x, y, sample_weight),
    (x,) or x alone (Keras's unpacking; a list counts as a tuple)."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if not isinstance(batch, tuple):
        return batch, None, None
    if not 1 <= len(batch) <= 3:
        raise ValueError(f"a batch from the data source must be x, (x, y) or (x, y, "
                         f"sample_weight); got a tuple of {len(batch)}")
    return batch + (None,) * (3 - len(batch))


class Sequential:
    """A linear stack of layers (Keras's ``keras.Sequential``)."""

    def __init__(self, layers=None, name=None, dtype=None, trainable=True):
        self.name = name if name is not None else layers_module._unique_name("sequential")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        self.dtype = layers_module._check_dtype(dtype) or np.dtype(np.float32)
        self.trainable = layers_module._bool(trainable, "trainable")
        self.layers = []
        self._input_layer = None
        self.built = False
        self._build_input_shape = None
        self.output_shape = None
        self.optimizer = None
        self.loss = None
        self.compiled = False
        self.compiled_metrics = []
        self._compile_config = None
        self.stop_training = False
        self.history = None
        self._output_mask = None
        self._device = None          # a fastlstm._device.Device, bound by the first build
        if layers is not None:
            for layer in layers:
                self.add(layer)

    # ------------------------------------------------------------------ structure

    def add(self, layer):
        """Append a layer; the model builds as soon as its input shape is known."""
        if isinstance(layer, Sequential):
            raise TypeError("add: nesting Sequential models is not supported; add their "
                            "layers instead")
        if not isinstance(layer, layers_module.Layer):
            raise TypeError(f"add: expected a fastlstm layer (fastlstm.layers), got "
                            f"{type(layer).__name__}")
        if any(existing is layer for existing in self.layers) or layer is self._input_layer:
            raise ValueError(f"add: layer {layer.name!r} is already in the model")
        names = {l.name for l in self.layers}
        if layer.name in names:
            raise ValueError(f"add: the model already has a layer named {layer.name!r}; "
                             "layer names must be unique")
        if isinstance(layer, layers_module.InputLayer):
            if self.layers or self._input_layer is not None:
                raise ValueError("add: an Input can only be the first layer of the model")
            self._input_layer = layer
            layer._set_dtype(self.dtype)
            self._build_input_shape = layer._batch_input_shape
            return
        if getattr(layer, "return_state", False):
            raise ValueError(f"add: layer {layer.name!r} has return_state=True; a Sequential "
                             "model passes one output from layer to layer")
        if self._device is not None:
            layer._bind_device(self._device)   # ValueError for a layer built elsewhere
        if not self.layers and self._input_layer is None and layer._batch_input_shape is not None:
            self._build_input_shape = layer._batch_input_shape
        self.layers.append(layer)
        self.built = False
        if self._build_input_shape is not None:
            self.build(self._build_input_shape)

    def pop(self):
        """Remove and return the last layer."""
        if not self.layers:
            raise IndexError("pop: the model has no layers")
        layer = self.layers.pop()
        if not self.layers:            # nothing left to run: unbuilt until a layer is added
            self.built = False
            self.output_shape = None
        elif self._build_input_shape is not None:
            self.build(self._build_input_shape)
        return layer

    def build(self, input_shape=None):
        """Build every layer for inputs of ``input_shape`` (batch axis first, may be None)."""
        if input_shape is None:
            input_shape = self._build_input_shape
        if input_shape is None:
            raise ValueError("build: the input shape is unknown; give input_shape=(None, "
                             "timesteps, features), or set input_shape= on the first layer")
        if not self.layers:
            raise ValueError("build: the model has no layers; add() some first")
        shape = tuple(input_shape)
        if self._device is None:
            self._device = _devices.current()
        for layer in self.layers:
            layer._set_dtype(self.dtype)
            layer._bind_device(self._device)
            if layer.built:
                layer._check_input_shape(shape)
            else:
                layer._ensure_built(shape)
            out = layer.compute_output_shape(shape)
            shape = tuple(out)
        self._build_input_shape = tuple(input_shape)
        self.output_shape = shape
        self.built = True

    @property
    def input_shape(self):
        return self._build_input_shape

    @property
    def device(self):
        """"cpu" or "cuda": where the model runs, fixed when it is first built (None before)."""
        return None if self._device is None else self._device.name

    def get_layer(self, name=None, index=None):
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                raise TypeError(f"get_layer: index must be an integer, got {type(index).__name__}")
            if not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"get_layer: index {index} is out of range for a model of "
                                 f"{len(self.layers)} layers")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"get_layer: no layer named {name!r}; layers: "
                         f"{', '.join(l.name for l in self.layers)}")

    @property
    def weights(self):
        return [w for layer in self.layers for w in layer.weights]

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return [w for layer in self.layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        if not self.trainable:
            return self.weights
        return [w for layer in self.layers for w in layer.non_trainable_weights]

    def get_weights(self):
        """NumPy copies of every layer's weights, in order (Keras's get_weights())."""
        return [_devices.to_numpy_copy(w) for w in self.weights]

    def set_weights(self, weights):
        """Copy a get_weights()-style list into the layers."""
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"set_weights: expected a list of arrays (as get_weights() returns), "
                            f"got {type(weights).__name__}")
        weights = list(weights)
        self._require_built("set_weights")
        total = len(self.weights)
        if len(weights) != total:
            raise ValueError(f"set_weights: the model has {total} weight arrays, got "
                             f"{len(weights)}")
        pos = 0
        for layer in self.layers:
            n = len(layer.weights)
            layer.set_weights(weights[pos:pos + n])
            pos += n

    def count_params(self):
        return int(sum(w.size for w in self.weights))

    def reset_states(self):
        """Forget the carried state of every stateful layer."""
        for layer in self._all_layers():
            if getattr(layer, "stateful", False):
                layer.reset_states()

    reset_state = reset_states

    def _all_layers(self):
        out = []
        for layer in self.layers:
            out.append(layer)
            if isinstance(layer, layers_module._Wrapper):
                out.extend(layer._sublayers())
        return out

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"{what}: the model is not built yet; give the first layer an "
                             "input_shape, call build(), or call fit()/predict() first")

    # ------------------------------------------------------------------ forward / backward

    def _prepare_x(self, x, what="x"):
        """The inputs checked and cast by the first layer (once for the whole array): a NumPy
        array, or a device array when x is already on the model's device."""
        if x is None:
            raise ValueError(f"{what}: expected an array of inputs, got None")
        if isinstance(x, (list, tuple)) and len(x) == 1 and _devices.is_array(x[0]):
            x = x[0]
        try:
            arr = x if _devices.is_device_array(x) else np.asarray(x)
        except ValueError as e:
            raise ValueError(f"{what}: could not make an array of it ({e}); sequences of "
                             "different lengths must be padded first (pad_sequences)") from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(f"{what}: expected a numeric array, got dtype {arr.dtype}")
        if arr.ndim == 0:
            raise ValueError(f"{what}: expected an array with a batch axis, got a scalar")
        if not self.built:
            self.build((None,) + arr.shape[1:])
        expected = self._build_input_shape
        # rank and feature axis must match; the time axis may differ (the layers check
        # whatever else their weights fix, naming themselves)
        if len(arr.shape) != len(expected) or (
                len(expected) >= 2 and expected[-1] is not None
                and arr.shape[-1] != expected[-1]
                and not isinstance(self.layers[0], layers_module.Embedding)):
            raise ValueError(f"{what}: the model expects inputs of shape {_fmt(expected)}, "
                             f"got {_fmt(arr.shape)}")
        if _devices.is_device_array(arr) and not self._device.owns(arr):
            arr = _devices.to_host(arr)        # a GPU array for a model on the CPU
        return self.layers[0]._cast_input(arr)

    def _forward(self, x, training):
        """The outputs for x (cast by the first layer here), an array of the device."""
        return self._run(self.layers[0]._cast_input(x), training)

    def _run(self, x, training):
        """The outputs for x already cast by the first layer (host or device array).

        The batch is uploaded here; the first layer's mask comes from the host copy, so that
        the masks (host arrays) cost no transfer back."""
        inputs = x
        x = self._device.asarray(x)
        mask = None
        for i, layer in enumerate(self.layers):
            out = layer.forward(x, training=training, mask=mask)
            mask = layer.compute_mask(inputs if i == 0 else x, mask)
            x = out
        self._output_mask = mask
        return x

    def _backward(self, dy):
        # A layer's input gradient is wanted only when a layer before it has weights to train:
        # else it would flow to the model's input (data) alone. Layers that can skip computing
        # it (LSTM: its dx product, as many FLOPs as its input projection) read the flag.
        wanted, seen = [], False
        for layer in self.layers:
            wanted.append(seen)
            seen = seen or bool(layer.trainable_weights)
        for layer, want in zip(reversed(self.layers), reversed(wanted)):
            dy = layers_module._backward_wanting(layer, dy, want)
            if dy is None:
                break

    def __call__(self, x, training=False):
        """The outputs for x, an array of the model's device (``predict`` gives NumPy)."""
        x = self._prepare_x(x)
        return self._run(x, training=bool(training))

    # ------------------------------------------------------------------ compile

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
                jit_compile="auto", auto_scale_loss=True):
        """Configure training. ``run_eagerly``, ``steps_per_execution``, ``jit_compile``
        and ``auto_scale_loss`` are accepted for Keras code and have no effect.

        A binary accuracy named by string (``"accuracy"`` / ``"binary_accuracy"``) with a
        ``BinaryCrossentropy(from_logits=True)`` loss thresholds the logits at 0 (where the
        probability is 0.5); Keras keeps 0.5, which on logits is a different boundary. An
        explicit ``metrics.BinaryAccuracy(threshold=...)`` is used as given."""
        if loss_weights is not None or weighted_metrics is not None:
            raise NotImplementedError("compile: loss_weights and weighted_metrics are for "
                                      "multi-output models, which fastlstm does not have")
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = losses_module.get(loss)
        if metrics is None:
            metrics = []
        if isinstance(metrics, (str, metrics_module.Metric)):
            metrics = [metrics]
        if isinstance(metrics, dict):
            raise TypeError("compile: metrics must be a list (one output), got a dict")
        self.compiled_metrics = []
        for m in metrics:
            metric = self._string_metric_threshold(m, metrics_module.get(m, loss=self.loss))
            if isinstance(m, str) and m.lower() in ("accuracy", "acc"):
                # Keras 3 picks the accuracy from the first batch's target and prediction
                # shapes (see _resolve_accuracy); until then, the one matching the loss
                metric._accuracy_from_shapes = m
            self.compiled_metrics.append(metric)
        names = [m.name for m in self.compiled_metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"compile: metric names must be unique, got {names}")
        self._compile_config = {
            "optimizer": optimizers_module.serialize(self.optimizer),
            "loss": None if self.loss is None else losses_module.serialize(self.loss),
            # ('accuracy' by name stays a name, so that a loaded model picks it the same way)
            "metrics": [getattr(m, "_accuracy_from_shapes", None)
                        or {"class_name": type(m).__name__, "config": m.get_config()}
                        for m in self.compiled_metrics],
        }
        self.compiled = True

    def _string_metric_threshold(self, identifier, metric):
        """With from_logits the decision boundary of a logit is 0, not 0.5: a BinaryAccuracy
        named by string follows a from_logits binary crossentropy (an explicit instance is
        left alone)."""
        if isinstance(identifier, str) and isinstance(metric, metrics_module.BinaryAccuracy) and \
                isinstance(self.loss, losses_module.BinaryCrossentropy) and self.loss.from_logits:
            metric.threshold = 0.0
        return metric

    def _resolve_accuracy(self, yb, y_pred):
        """'accuracy' by name becomes the accuracy Keras 3 picks from the shapes of the first
        batch (binary for one output unit, sparse categorical for integer labels, else
        categorical: e.g. categorical for one-hot targets whatever the loss)."""
        for i, m in enumerate(self.compiled_metrics):
            name = getattr(m, "_accuracy_from_shapes", None)
            if name is None:
                continue
            cls = metrics_module.accuracy_for_shapes(yb.shape, y_pred.shape)
            if type(m) is not cls:
                m = self._string_metric_threshold(name, cls(name=name))
                self.compiled_metrics[i] = m
            m._accuracy_from_shapes = None       # decided

    @property
    def metrics_names(self):
        return ["loss"] + [m.name for m in self.compiled_metrics]

    def _require_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(f"You must call compile() before {what}(), e.g. "
                               "model.compile(optimizer='adam', loss='mse')")
        if self.loss is None:
            raise ValueError(f"{what}: the model was compiled without a loss; "
                             "compile(loss=...) first")

    # ------------------------------------------------------------------ data checks

    def _output_shape_for(self, x_shape):
        """The model's output shape for inputs of x_shape (batch axis None)."""
        shape = (None,) + tuple(x_shape[1:])
        for layer in self.layers:
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    def _prepare_y(self, y, n, what="y", x_shape=None):
        if y is None:
            raise ValueError(f"{what}: targets are required (got None)")
        try:
            y = _devices.to_host(y)      # targets stay on the host; batches are uploaded
        except ValueError as e:
            raise ValueError(f"{what}: could not make an array of it ({e})") from None
        if y.dtype == object or y.dtype.kind not in "biuf":
            raise TypeError(f"{what}: expected numeric targets, got dtype {y.dtype}")
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"{what}: expected {n} targets (one per input sample), got shape "
                             f"{_fmt(y.shape)}")
        full = self._output_shape_for(x_shape) if x_shape is not None else self.output_shape
        out = tuple(full[1:])
        loss = self.loss
        lname = type(loss).__name__

        def fits(got, want):     # None in the model's shape matches any size
            return len(got) == len(want) and all(w is None or g == w
                                                 for g, w in zip(got, want))
        if isinstance(loss, losses_module.SparseCategoricalCrossentropy):
            ok = fits(y.shape[1:], out[:-1]) or fits(y.shape[1:], tuple(out[:-1]) + (1,))
            if not ok:
                raise ValueError(f"{what}: {lname} expects integer class labels of shape "
                                 f"{_fmt((None,) + tuple(out[:-1]))} for the model's output "
                                 f"{_fmt(self.output_shape)}, got {_fmt(y.shape)}")
            if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
                raise ValueError(f"{what}: {lname} expects integer class labels, got "
                                 "non-integral values")
            ignore = getattr(loss, "ignore_class", None)
            labels = y if ignore is None else y[y != ignore]
            if labels.size and (labels.min() < 0 or labels.max() >= out[-1]):
                raise ValueError(f"{what}: class labels must be in [0, {out[-1]}) for the "
                                 f"model's {out[-1]} outputs, got min {labels.min()} and max "
                                 f"{labels.max()}")
            return y
        ok = (fits(y.shape[1:], out) or (len(y.shape) == len(out) + 2 and y.shape[-1] == 1
                                         and fits(y.shape[1:-1], out))
              or (len(y.shape) == len(out) and out[-1] == 1 and fits(y.shape[1:], out[:-1])))
        if not ok:
            hint = ""
            if isinstance(loss, losses_module.CategoricalCrossentropy) and \
                    fits(y.shape[1:], out[:-1]):
                hint = (" (integer labels need loss='sparse_categorical_crossentropy', or "
                        "one-hot targets from fastlstm.utils.to_categorical)")
            raise ValueError(f"{what}: shape {_fmt(y.shape)} does not match the model's "
                             f"output {_fmt(self.output_shape)} for loss {lname}{hint}")
        return y

    @staticmethod
    def _prepare_sample_weight(sw, n, what="sample_weight"):
        if sw is None:
            return None
        sw = _devices.to_host(sw)
        if sw.dtype.kind not in "biuf":
            raise TypeError(f"{what}: expected numeric weights, got dtype {sw.dtype}")
        if sw.ndim == 0 or sw.shape[0] != n:
            raise ValueError(f"{what}: expected one weight per sample ({n}), got shape "
                             f"{_fmt(sw.shape)}")
        return sw.astype(np.float64)

    def _class_weights(self, class_weight, y):
        if class_weight is None:
            return None
        if not isinstance(class_weight, dict):
            raise TypeError(f"class_weight: expected a dict {{class: weight}}, got "
                            f"{type(class_weight).__name__}")
        y = np.asarray(y)
        if isinstance(self.loss, losses_module.CategoricalCrossentropy) and \
                not isinstance(self.loss, losses_module.SparseCategoricalCrossentropy):
            labels = np.argmax(y, axis=-1)
        elif y.ndim >= 2 and y.shape[-1] == 1:
            labels = np.round(y[..., 0]).astype(np.int64)
        elif y.ndim >= 2 and y.shape[-1] > 1:
            labels = np.argmax(y, axis=-1)
        else:
            labels = np.round(y).astype(np.int64)
        w = np.ones(labels.shape, dtype=np.float64)
        for cls, weight in class_weight.items():
            real = (int, float, np.integer, np.floating)
            if isinstance(cls, (bool, np.bool_)) or not isinstance(cls, real) or \
                    (isinstance(cls, (float, np.floating)) and not float(cls).is_integer()):
                raise TypeError(f"class_weight: expected integer class indices as keys, got "
                                f"{cls!r} ({type(cls).__name__})")
            if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, real):
                raise TypeError(f"class_weight: expected a number as the weight of class {cls}, "
                                f"got {weight!r} ({type(weight).__name__})")
            w[labels == int(cls)] = float(weight)
        return w

    # ------------------------------------------------------------------ batches

    def _batch_weights(self, sw, y_pred):
        """(loss sample weights, loss mask, metric weights) on y_pred's device, each None when
        there are none. The loss gets the output mask apart (``mask=``) and leaves the masked
        steps out of its mean itself (Keras's masked-loss rule), combined with the entries it
        leaves out on its own (``ignore_class``) as Keras combines them. The metrics: the mask
        as 0/1 alone (a metric is the mean over the valid steps, however the batches fall); as
        in Keras 3, ``metrics=`` are not weighted by sample_weight or class_weight."""
        mask = self._output_mask
        xp = _devices.array_module(y_pred)
        sw = None if sw is None else xp.asarray(sw)
        if mask is None or y_pred.ndim < 3:
            return sw, None, None
        m = xp.asarray(_devices.to_host(mask).astype(np.float64))
        return sw, m, m

    def _regularization(self):
        """The regularizers' penalties on every layer (a float)."""
        return sum(layer.regularization_loss() for layer in self.layers)

    def _regularization_penalty(self):
        """The same on the device (a float64 scalar), or None without regularizers."""
        total = None
        for layer in self.layers:
            p = layer._regularization_penalty()
            if p is not None:
                total = p if total is None else total + p
        return total

    def _metric_stats(self, yb, y_pred, w):
        """Each compiled metric's (total, count) for the batch, left on the device (None for
        a metric that can only update itself)."""
        self._resolve_accuracy(yb, y_pred)
        return [m._batch_stats(yb, y_pred, w) if hasattr(m, "_batch_stats") else None
                for m in self.compiled_metrics]

    def _update_metrics(self, stats, host, yb, y_pred, w):
        """Add the batch's metric sums read back in ``host`` (pairs, in order). A metric with
        ``_masked = False`` (Precision, Recall, AUC, as in Keras 3) is not given the output mask."""
        it = iter(host)
        for m, st in zip(self.compiled_metrics, stats):
            if st is None:
                m.update_state(yb, y_pred, w if getattr(m, "_masked", True) else None)
            else:
                m._accumulate(next(it), next(it))

    def _train_batch(self, xb, yb, swb):
        """One optimizer step. xb: cast by the first layer (host or device), yb and swb on the
        host. Returns (loss as a float, y_pred); the step is skipped when the loss or a
        gradient is not finite."""
        dev = self._device
        y_pred = self._run(xb, training=True)
        yb = dev.asarray(yb)
        w, lm, mw = self._batch_weights(swb, y_pred)
        value, dy = self.loss._value_and_gradient(yb, y_pred, w, check=False, mask=lm)
        penalty = self._regularization_penalty()
        if penalty is not None:
            value = value + penalty
        # Keras would apply a non-finite step and leave NaN weights; fastlstm skips it, so the
        # model keeps its last finite weights (fit then stops with a warning). On the host the
        # loss is checked before the backward pass (reading it is free, and NumPy would warn
        # in a backward pass through NaN); on a device one read after it checks everything.
        if dev.is_host and not math.isfinite(float(value)):
            return float(value), y_pred
        self._backward(dy)
        grads, variables = [], []
        if self.trainable:
            for layer in self.layers:
                if not layer.trainable or not layer.weights:
                    continue
                for var, g, rg, t in zip(layer.weights, layer.grads, layer.regularization_grads(),
                                         layer._weight_trainable()):
                    if t:     # (a frozen layer inside a wrapper is not trained)
                        grads.append(g if rg is None else g + rg)
                        variables.append(var)
        xp = dev.xp
        finite = xp.all(xp.stack([xp.all(xp.isfinite(g)) for g in grads])) if grads else True
        stats = self._metric_stats(yb, y_pred, mw)
        host = _devices.read_scalars(
            [value, finite] + [v for st in stats if st is not None for v in st])
        value, finite = host[0], host[1]
        if not math.isfinite(value):
            return value, y_pred
        if not finite:
            return float("nan"), y_pred      # e.g. inf inputs: finite loss, NaN gradient
        if variables:
            grads, variables = self._as_optimizer_variables(grads, variables)
            self.optimizer.apply(grads, variables)
        self._update_metrics(stats, host[2:], yb, y_pred, mw)
        return value, y_pred

    def _as_optimizer_variables(self, grads, variables):
        """The gradients for the variables the optimizer was built with, None for those no
        longer trained (a layer frozen after training): as in Keras, where an optimizer updates
        any subset of its variables, freezing a layer needs no new optimizer (fastlstm's
        Optimizer.apply itself takes all of them, None for those without a gradient). A
        variable the optimizer does not know is left to its own error."""
        bound = getattr(self.optimizer, "_variables", None)
        if bound is None or (len(bound) == len(variables)
                             and all(a is b for a, b in zip(bound, variables))):
            return grads, variables
        by_id = {id(v): g for v, g in zip(variables, grads)}
        known = {id(v) for v in bound}
        if not all(id(v) in known for v in variables):
            return grads, variables
        return [by_id.get(id(v)) for v in bound], list(bound)

    def _batches(self, n, batch_size, order=None):
        idx = np.arange(n) if order is None else order
        for start in range(0, n, batch_size):
            yield idx[start:start + batch_size]

    def _take(self, x, idx):
        """The rows idx (host integers) of x, a host or device array."""
        if _devices.is_device_array(x):
            return x[self._device.asarray(idx)]
        return x[idx]

    def _source_pass(self, data, kind, rng, shuffle, what, need_y, class_weight=None):
        """One pass over a data source (_source_kind): an iterator of prepared batches
        (x, y, sample_weight, rows), as the array path makes them (y and sample_weight None
        where not needed). A generator's pass is the rest of its stream."""
        if kind == "iterator":
            raw = data
        elif kind == "iterable":
            raw = iter(data)
        else:       # indexed: len() batches, in a new random order per pass with shuffle
            order = rng.permutation(len(data)) if shuffle else range(len(data))
            raw = (data[int(i)] for i in order)
        return self._prepared_batches(raw, what, need_y, class_weight)

    def _prepared_batches(self, raw, what, need_y, class_weight):
        for i, batch in enumerate(raw):
            bx, by, bsw = _unpack_batch(batch)
            label = f"{what} (batch {i} of the pass)"
            xb = self._prepare_x(bx, label)
            if need_y and xb.shape[0] == 0:     # (an optimizer step on nothing would still
                # move Adam's moments; a pass of empty batches would read as a loss of 0.0)
                raise ValueError(f"{label}: a batch of 0 samples")
            if not need_y:
                yield xb, None, None, xb.shape[0]
                continue
            yb = self._prepare_y(by, xb.shape[0], f"{label} y", x_shape=xb.shape)
            swb = self._prepare_sample_weight(bsw, xb.shape[0], f"{label} sample_weight")
            yield xb, yb, _with_class_weights(swb, self._class_weights(class_weight, yb)), \
                xb.shape[0]

    @staticmethod
    def _check_source_args(kind, data, what, **given):
        """A data source brings its own targets and weights (as Keras refuses them too)."""
        if kind == "indexed" and len(data) == 0:
            raise ValueError(f"{what}: the dataset has no batches (len() is 0)")
        for name, value in given.items():
            if value is not None:
                raise ValueError(f"{name}: must not be given when {what} is a generator or "
                                 f"dataset: its batches carry (x, y) or (x, y, sample_weight)")

    def _logs(self, loss_tracker, prefix=""):
        logs = {prefix + "loss": loss_tracker.result()}
        for m in self.compiled_metrics:
            logs[prefix + m.name] = m.result()
        return logs

    def _reset_metrics(self):
        for m in self.compiled_metrics:
            m.reset_state()

    # ------------------------------------------------------------------ fit

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None,
            validation_steps=None, validation_batch_size=None, validation_freq=1):
        """Train for ``epochs`` epochs; returns the History (``history.history``). x: arrays
        (with y), or a generator / dataset of batches (see the module's docstring)."""
        self._require_compiled("fit")
        kind = _source_kind(x)
        rng = _random.generator()
        if kind is None:
            x = self._prepare_x(x)
            n = x.shape[0]
            if n == 0:     # (Keras refuses empty data too; fit would silently do nothing)
                raise ValueError("x: expected at least one sample to train on, got an empty array")
            y = self._prepare_y(y, n, x_shape=x.shape)
        else:
            self._check_source_args(kind, x, "x", y=y, sample_weight=sample_weight)
            if validation_split:
                raise ValueError("validation_split: only for array data; give a generator or "
                                 "dataset its validation data as validation_data")
        # (with a data source, only array validation data is batched by it)
        batch_size = 32 if batch_size is None else _int_arg(batch_size, "batch_size", 1)
        epochs = _int_arg(epochs, "epochs", 0)
        initial_epoch = _int_arg(initial_epoch, "initial_epoch", 0)
        verbose = self._verbose(verbose)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle: expected True or False, got {shuffle!r}")
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"validation_split: expected a float in [0, 1), got "
                             f"{validation_split!r}")
        validation_freq = _int_arg(validation_freq, "validation_freq", 1)
        val = None
        val_kind = _source_kind(validation_data)
        if val_kind is not None:
            self._check_source_args(val_kind, validation_data, "validation_data")
            val = validation_data
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data: expected a tuple (x_val, y_val) or "
                                 "(x_val, y_val, sample_weight_val), or a generator or dataset "
                                 "of such batches")
            xv = self._prepare_x(validation_data[0], "validation_data x")
            if xv.shape[0] == 0:   # (val_loss 0.0 over no samples would read as a perfect model)
                raise ValueError("validation_data: expected at least one sample to validate "
                                 "on, got an empty array")
            yv = self._prepare_y(validation_data[1], xv.shape[0], "validation_data y",
                                 x_shape=xv.shape)
            swv = self._prepare_sample_weight(validation_data[2], xv.shape[0],
                                              "validation_data sample_weight") \
                if len(validation_data) == 3 else None
            val = (xv, yv, swv)
        if kind is None:
            sw = self._prepare_sample_weight(sample_weight, n)
            if val is None and validation_split > 0:
                split = int(n * (1.0 - float(validation_split)))   # Keras: the last samples
                if split == 0 or split == n:
                    raise ValueError(f"validation_split={validation_split} leaves "
                                     f"{'no training' if split == 0 else 'no validation'} "
                                     f"samples out of {n}")
                val = (x[split:], y[split:], None if sw is None else sw[split:])
                x, y = x[:split], y[:split]
                sw = None if sw is None else sw[:split]
                n = split
            # class_weight weighs the training samples only (as in Keras: applied after the
            # split)
            sw = _with_class_weights(sw, self._class_weights(class_weight, y))
            n_batches = math.ceil(n / batch_size)

            def new_pass():     # a new random order per pass (drawn when the pass begins)
                return self._array_batches(x, y, sw, batch_size,
                                           rng.permutation(n) if shuffle else None)
        else:
            n_batches = len(x) if kind == "indexed" else None

            def new_pass():
                return self._source_pass(x, kind, rng, shuffle, "x", True, class_weight)
        per_epoch = None if steps_per_epoch is None else \
            _int_arg(steps_per_epoch, "steps_per_epoch", 1)
        # batches per epoch: the pass's, at most steps_per_epoch (None: until the data ends)
        steps = per_epoch if n_batches is None else \
            (n_batches if per_epoch is None else min(n_batches, per_epoch))
        val_bs = batch_size if validation_batch_size is None else \
            _int_arg(validation_batch_size, "validation_batch_size", 1)
        if validation_steps is not None:
            validation_steps = _int_arg(validation_steps, "validation_steps", 1)

        cbs = callbacks_module.CallbackList(callbacks, add_history=True,
                                            add_progbar=verbose != 0, model=self,
                                            verbose=verbose, epochs=epochs, steps=steps)
        self.stop_training = False
        # (no callback at the validation's batches: its LSTM weights packed once; see predict)
        test_batch_hooks = callbacks_module._batch_hooks_used(cbs.callbacks, _TEST_BATCH_HOOKS)
        loss_tracker = metrics_module.Mean(name="loss")
        cbs.on_train_begin()
        logs = {}
        training_logs = {}
        # With steps_per_epoch, an epoch takes the next `steps` batches of a pass over the
        # data and the next epoch goes on from there, as Keras's epoch iterator does (a pass
        # whose batches run out ends the epoch early; the next epoch starts a new pass, newly
        # shuffled): every sample is seen, not only the first steps * batch_size.
        pending = None      # (the current pass's batches, how many it has given)
        trained_any = False
        for epoch in range(initial_epoch, epochs):
            self._reset_metrics()
            loss_tracker.reset_state()
            cbs.on_epoch_begin(epoch)
            if kind == "indexed" and hasattr(x, "on_epoch_begin"):
                x.on_epoch_begin()          # (keras.utils.PyDataset's hooks, as Keras calls them)
            batches, taken = (new_pass(), 0) if pending is None else pending
            step, ended = 0, False
            while steps is None or step < steps:
                try:
                    xb, yb, swb, rows = next(batches)
                except StopIteration:
                    ended = True
                    break
                cbs.on_train_batch_begin(step)
                value, _ = self._train_batch(xb, yb, swb)
                loss_tracker.update_state(np.full(1, value), sample_weight=[rows])
                logs = self._logs(loss_tracker)
                cbs.on_train_batch_end(step, logs)
                step, taken, trained_any = step + 1, taken + 1, True
                if not math.isfinite(value):
                    warnings.warn(f"fit: the loss (or its gradient) became {value} at epoch {epoch + 1}, batch "
                                  f"{step}; training stopped and that batch's update was "
                                  "not applied. Check the data for NaN/inf, or try a lower "
                                  "learning rate or gradient clipping (e.g. "
                                  "Adam(clipnorm=1.0)).",
                                  RuntimeWarning, stacklevel=2)
                    self.stop_training = True
                if self.stop_training:
                    break
            ended = ended or (n_batches is not None and taken >= n_batches)
            pending = (batches, taken) if per_epoch is not None and not ended else None
            if kind == "indexed" and hasattr(x, "on_epoch_end"):
                x.on_epoch_end()            # (before the validation, as in Keras)
            if not trained_any:     # (as Keras and evaluate refuse an empty data source)
                raise ValueError("x: the data source gave no batch to train on")
            if step == 0:
                # (only a generator can have nothing left: a pass of arrays or of a dataset
                # has at least one batch)
                warnings.warn(f"fit: the data ran out at epoch {epoch + 1}; training stopped. A "
                              "generator gives its batches once for the whole of fit: make it "
                              "yield steps_per_epoch * epochs batches (with steps_per_epoch), or "
                              "pass a dataset or an iterable that can be read again",
                              UserWarning, stacklevel=2)
                break
            if kind == "iterator" and ended and per_epoch is not None and step < per_epoch:
                warnings.warn(f"fit: the generator ran out after {step} of the "
                              f"{per_epoch} steps of epoch {epoch + 1}; training stopped after "
                              "this epoch (make it yield steps_per_epoch * epochs batches)",
                              UserWarning, stacklevel=2)
                self.stop_training = True
            epoch_logs = dict(logs)
            if val is not None and (epoch + 1) % validation_freq == 0 \
                    and math.isfinite(epoch_logs.get("loss", 0.0)):
                val_logs = self._evaluate_batches(self._data_batches(val, val_kind, val_bs),
                                                  callbacks=cbs, steps=validation_steps,
                                                  pack_once=not test_batch_hooks)
                if val_logs is None:
                    raise ValueError(
                        f"validation_data: the data source gave no batch at epoch {epoch + 1}. "
                        "A generator gives its batches once for the whole of fit: give "
                        "validation_steps and make it yield validation_steps batches per "
                        "validation (or endlessly), or pass a dataset or an iterable")
                epoch_logs.update({"val_" + k: v for k, v in val_logs.items()})
            cbs.on_epoch_end(epoch, epoch_logs)
            training_logs = epoch_logs
            if self.stop_training:
                break
        cbs.on_train_end(training_logs)   # the last epoch's logs, val_* included (Keras 3)
        return self.history

    @staticmethod
    def _verbose(verbose):
        if isinstance(verbose, str) and verbose == "auto":
            return 1
        if isinstance(verbose, (bool, np.bool_)):     # Keras accepts verbose=True / False
            return int(verbose)
        if isinstance(verbose, str) or verbose not in (0, 1, 2):
            raise ValueError(f"verbose: expected 0, 1, 2, 'auto' or a bool, got {verbose!r}")
        return int(verbose)

    # ------------------------------------------------------------------ evaluate / predict

    def _data_batches(self, data, kind, batch_size):
        """Prepared batches (x, y, sample_weight, rows) of evaluation data: (x, y, sw) arrays
        in order, or one pass of a data source (kind: _source_kind's), unshuffled."""
        if kind is not None:
            return self._source_pass(data, kind, None, False, "validation_data", True)
        return self._array_batches(*data, batch_size)

    def _array_batches(self, x, y, sw, batch_size, order=None):
        """Batches (x, y, sample_weight, rows) of arrays, in `order` (None: as stored)."""
        return ((self._take(x, idx), y[idx], None if sw is None else sw[idx], len(idx))
                for idx in self._batches(x.shape[0], batch_size, order))

    def _evaluate_arrays(self, x, y, sw, batch_size, callbacks=None, steps=None):
        return self._evaluate_batches(self._data_batches((x, y, sw), None, batch_size),
                                      callbacks, steps)

    def _evaluate_batches(self, batches, callbacks=None, steps=None, pack_once=False):
        """The loss and metrics over the batches (at most `steps` of them); None when there
        was no batch (a data source that gave none). pack_once: the LSTM weights packed once
        for all batches (no callback acting between batches, where it might change them)."""
        self._reset_metrics()
        tracker = metrics_module.Mean(name="loss")
        if callbacks is not None:
            callbacks.on_test_begin()
        with layers_module._inference_packing(self.layers, pack_once):
            step = self._evaluate_loop(batches, callbacks, steps, tracker)
        logs = self._logs(tracker) if step else None
        if callbacks is not None:
            callbacks.on_test_end(logs)
        return logs

    def _evaluate_loop(self, batches, callbacks, steps, tracker):
        """_evaluate_batches' pass over the batches; returns how many it took."""
        step = 0
        for xb, yb, swb, rows in batches:
            if callbacks is not None:
                callbacks.on_test_batch_begin(step)
            y_pred = self._run(xb, training=False)
            yb = self._device.asarray(yb)
            w, lm, mw = self._batch_weights(swb, y_pred)
            value = self.loss._value(yb, y_pred, w, check=False, mask=lm)
            penalty = self._regularization_penalty()
            if penalty is not None:
                value = value + penalty
            stats = self._metric_stats(yb, y_pred, mw)
            host = _devices.read_scalars(     # one transfer per batch
                [value] + [v for st in stats if st is not None for v in st])
            tracker.update_state(np.full(1, host[0]), sample_weight=[rows])
            self._update_metrics(stats, host[1:], yb, y_pred, mw)
            if callbacks is not None:
                callbacks.on_test_batch_end(step, self._logs(tracker))
            step += 1
            if steps is not None and step >= steps:
                break
        return step

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """The loss (and metrics) on (x, y): a float, or [loss, metric, ...] with metrics.
        x: arrays (with y), or a generator / dataset of batches (see the module's docstring)."""
        self._require_compiled("evaluate")
        kind = _source_kind(x)
        verbose = self._verbose(verbose)
        if steps is not None:
            steps = _int_arg(steps, "steps", 1)
        if kind is None:
            x = self._prepare_x(x)
            if x.shape[0] == 0:   # a loss of 0.0 over no samples would read as a perfect model
                raise ValueError("x: expected at least one sample to evaluate on, got an empty array")
            y = self._prepare_y(y, x.shape[0], x_shape=x.shape)
            sw = self._prepare_sample_weight(sample_weight, x.shape[0])
            batch_size = 32 if batch_size is None else _int_arg(batch_size, "batch_size", 1)
            n_steps = math.ceil(x.shape[0] / batch_size)
            batches = self._data_batches((x, y, sw), None, batch_size)
        else:
            self._check_source_args(kind, x, "x", y=y, sample_weight=sample_weight)
            n_steps = len(x) if kind == "indexed" else None
            batches = self._source_pass(x, kind, None, False, "x", True)
        if steps is not None:
            n_steps = steps if n_steps is None else min(n_steps, steps)
        cbs = callbacks_module.CallbackList(callbacks, add_progbar=verbose != 0, model=self,
                                            verbose=verbose, epochs=1, steps=n_steps)
        pack_once = (n_steps is None or n_steps > 1) and \
            not callbacks_module._batch_hooks_used(cbs.callbacks, _TEST_BATCH_HOOKS)
        logs = self._evaluate_batches(batches, cbs, steps, pack_once=pack_once)
        if logs is None:
            raise ValueError("x: the data source gave no batch to evaluate on")
        if return_dict:
            return logs
        values = [logs["loss"]] + [logs[m.name] for m in self.compiled_metrics]
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """The model's outputs for x, computed in batches (inference mode). x: an array, or
        a generator / dataset of batches (x alone, or (x, y[, sample_weight]) with y unused;
        see the module's docstring)."""
        kind = _source_kind(x)
        verbose = self._verbose(verbose)
        if steps is not None:
            steps = _int_arg(steps, "steps", 1)
        if kind is None:
            x = self._prepare_x(x)
            batch_size = 32 if batch_size is None else _int_arg(batch_size, "batch_size", 1)
            n_steps = math.ceil(x.shape[0] / batch_size)
            batches = (self._take(x, idx) for idx in self._batches(x.shape[0], batch_size))
        else:
            self._check_source_args(kind, x, "x")
            n_steps = len(x) if kind == "indexed" else None
            batches = (b[0] for b in self._source_pass(x, kind, None, False, "x", False))
        if steps is not None:
            n_steps = steps if n_steps is None else min(n_steps, steps)
        cbs = callbacks_module.CallbackList(callbacks, add_progbar=verbose != 0, model=self,
                                            verbose=verbose, epochs=1, steps=n_steps)
        cbs.on_predict_begin()
        outs = []
        # The LSTM weights packed once for all batches, unless a callback acts between batches
        # (it might change them) or there is one batch only (a call's own packing runs on all
        # threads)
        once = (n_steps is None or n_steps > 1) and not callbacks_module._batch_hooks_used(
            cbs.callbacks, ("on_predict_batch_begin", "on_predict_batch_end"))
        with layers_module._inference_packing(self.layers, once):
            for step, xb in enumerate(batches):
                cbs.on_predict_batch_begin(step)
                outs.append(_devices.to_host(self._run(xb, training=False)))
                cbs.on_predict_batch_end(step, {"outputs": outs[-1]})
                if n_steps is not None and step + 1 >= n_steps:
                    break
        cbs.on_predict_end()
        if not outs:
            return np.zeros((0,) + tuple(d or 0 for d in self.output_shape[1:]), self.dtype)
        return np.concatenate(outs, axis=0)

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on one batch; returns the loss (and metrics) of that batch."""
        self._require_compiled("train_on_batch")
        x = self._prepare_x(x)
        y = self._prepare_y(y, x.shape[0], x_shape=x.shape)
        sw = _with_class_weights(self._prepare_sample_weight(sample_weight, x.shape[0]),
                                 self._class_weights(class_weight, y))
        self._reset_metrics()
        value, _ = self._train_batch(x, y, sw)
        logs = {"loss": value, **{m.name: m.result() for m in self.compiled_metrics}}
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        self._require_compiled("test_on_batch")
        x = self._prepare_x(x)
        y = self._prepare_y(y, x.shape[0], x_shape=x.shape)
        sw = self._prepare_sample_weight(sample_weight, x.shape[0])
        logs = self._evaluate_arrays(x, y, sw, max(x.shape[0], 1))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict_on_batch(self, x):
        """The outputs for one batch, as a NumPy array."""
        return _devices.to_host(self._run(self._prepare_x(x), training=False))

    # ------------------------------------------------------------------ summary

    def summary(self, line_length=None, print_fn=None):
        """Print the layers, their output shapes and parameter counts, as Keras does."""
        print_fn = print_fn or (lambda s: print(s, file=sys.stdout))
        rows = []
        shape = self._build_input_shape
        for layer in self.layers:
            if self.built:
                shape = layer.compute_output_shape(shape)
                out = _fmt(shape) if not isinstance(shape, list) else str(shape)
                params = f"{layer.count_params():,}"
            else:
                out, params = "?", "0 (unbuilt)"
            rows.append((f"{layer.name} ({type(layer).__name__})", out, params))
        w = [max([len("Layer (type)")] + [len(r[0]) for r in rows]) + 2,
             max([len("Output Shape")] + [len(r[1]) for r in rows]) + 2,
             max([len("Param #")] + [len(r[2]) for r in rows]) + 2]
        if line_length is not None and line_length > sum(w) + 4:
            w[0] += line_length - (sum(w) + 4)

        def line(l, m, r, fill):
            return l + m.join(fill * n for n in w) + r

        def row(cells):
            return "│" + "│".join(
                (" " + c).ljust(n) if i < 2 else (c + " ").rjust(n)
                for i, (c, n) in enumerate(zip(cells, w))) + "│"

        lines = [f'Model: "{self.name}"', line("┏", "┳", "┓", "━"),
                 "┃" + "┃".join((" " + h).ljust(n) if i < 2 else (h + " ").rjust(n)
                                for i, (h, n) in enumerate(zip(
                                    ("Layer (type)", "Output Shape", "Param #"), w))) + "┃",
                 line("┡", "╇", "┩", "━")]
        for i, r in enumerate(rows):
            lines.append(row(r))
            if i < len(rows) - 1:
                lines.append(line("├", "┼", "┤", "─"))
        lines.append(line("└", "┴", "┘", "─"))
        total = self.count_params()
        trainable = int(sum(w_.size for w_ in self.trainable_weights))
        itemsize = self.dtype.itemsize
        lines += [f" Total params: {total:,} ({_bytes(total * itemsize)})",
                  f" Trainable params: {trainable:,} ({_bytes(trainable * itemsize)})",
                  f" Non-trainable params: {total - trainable:,} "
                  f"({_bytes((total - trainable) * itemsize)})"]
        if self.optimizer is not None and self.optimizer.built:
            slots = sum(a.size for arrays in self.optimizer._slots.values() for a in arrays)
            lines.append(f" Optimizer params: {slots:,} ({_bytes(slots * itemsize)})")
        print_fn("\n".join(lines))

    # ------------------------------------------------------------------ config and saving

    def get_config(self):
        return {"name": self.name, "dtype": str(self.dtype), "trainable": self.trainable,
                "layers": ([layers_module.serialize(self._input_layer)]
                           if self._input_layer is not None else [])
                + [layers_module.serialize(l) for l in self.layers],
                "build_input_shape": None if self._build_input_shape is None
                else list(self._build_input_shape)}

    @classmethod
    def from_config(cls, config):
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("Sequential config: expected a dict with a 'layers' list")
        model = cls(name=config.get("name"), dtype=config.get("dtype"),
                    trainable=config.get("trainable", True))
        for i, lc in enumerate(config["layers"]):
            try:
                layer = layers_module.deserialize(lc)
            except (ValueError, TypeError, NotImplementedError) as e:
                # which layer of the config (Keras's messages name none: a model's config
                # can hold several layers of one class)
                what = lc.get("class_name") if isinstance(lc, dict) else None
                name = (lc.get("config") or {}).get("name") if isinstance(lc, dict) and \
                    isinstance(lc.get("config"), dict) else None
                raise type(e)(f"Sequential config, layer {i}"
                              + (f" ({what}" + (f" {name!r}" if name else "") + ")" if what else "")
                              + f": {e}") from None
            model.add(layer)
        shape = config.get("build_input_shape")
        if shape is not None and not model.built:
            model.build(tuple(shape))
        return model

    def save(self, filepath, overwrite=True, include_optimizer=True):
        """Save architecture, weights and optimizer state to one file (see fastlstm.saving)."""
        from . import saving
        saving.save_model(self, filepath, overwrite=overwrite,
                          include_optimizer=include_optimizer)

    def save_weights(self, filepath, overwrite=True):
        from . import saving
        saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath):
        from . import saving
        saving.load_weights(self, filepath)

    def __repr__(self):
        return f"<Sequential name={self.name!r}, layers={len(self.layers)}, built={self.built}>"


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024.0


def load_model(filepath, compile=True):
    """Load a model written by ``model.save`` (no code from the file is executed)."""
    from . import saving
    return saving.load_model(filepath, compile=compile)
