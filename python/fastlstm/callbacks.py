"""Keras-style training callbacks (Keras 3 names, arguments and behaviour).

    history = model.fit(x, y, epochs=50, validation_data=(xv, yv), callbacks=[
        fastlstm.callbacks.EarlyStopping(patience=5, restore_best_weights=True),
        fastlstm.callbacks.ReduceLROnPlateau(factor=0.5, patience=2),
        fastlstm.callbacks.ModelCheckpoint("ckpt-{epoch:02d}-{val_loss:.3f}.keras"),
        fastlstm.callbacks.CSVLogger("training.csv"),
    ])
    history.plot(filename="curves.png")

A callback sees the model through ``self.model`` and these members only:
``model.stop_training`` (set True to end ``fit`` after the current batch / epoch),
``model.optimizer.learning_rate`` (a float property, settable), ``model.get_weights()`` /
``model.set_weights(weights)``, ``model.save(path)`` / ``model.save_weights(path)``, and the
``model.history`` attribute that :class:`History` sets.

The training loop wraps its callbacks in a :class:`CallbackList` and calls, like Keras::

    callbacks = CallbackList(user_callbacks, add_history=True, add_progbar=verbose != 0,
                             model=model, verbose=verbose, epochs=epochs, steps=steps)
    callbacks.on_train_begin()
    for epoch in range(epochs):
        callbacks.on_epoch_begin(epoch)
        for batch in range(steps):
            callbacks.on_train_batch_begin(batch)
            ...                                   # one optimisation step
            callbacks.on_train_batch_end(batch, logs)   # logs: running epoch averages
            if model.stop_training: break
        ...                                       # validation: the on_test_* hooks
        callbacks.on_epoch_end(epoch, epoch_logs) # epoch_logs: loss, metrics, val_*
        if model.stop_training: break
    callbacks.on_train_end()

``epoch`` and ``batch`` are 0-based.  A ``CallbackList`` hands the *same* ``logs`` dict to
every callback in turn, so a key one adds (``learning_rate`` from
:class:`ReduceLROnPlateau` / :class:`LearningRateScheduler`) is seen by the ones after it
(:class:`History` and :class:`ProgbarLogger` come last) and by the caller.

``mode="auto"`` (EarlyStopping, ModelCheckpoint, ReduceLROnPlateau) maximises a monitored
quantity whose name, without a ``val_`` prefix, contains ``acc`` (``accuracy``) or ``auc``,
or starts with ``fmeasure``, and minimises anything else (losses, errors).

Invalid arguments raise ``TypeError`` (wrong type) or ``ValueError`` (bad value), naming
the argument and what was expected.  A monitored quantity missing from the logs gives a
``UserWarning`` (via :mod:`warnings`) naming the available keys, as Keras does.
"""

import collections.abc
import csv
import inspect
import math
import numbers
import operator
import os
import warnings

import numpy as np

from ._progbar import Progbar

__all__ = [
    "Callback", "CallbackList", "History", "ProgbarLogger", "EarlyStopping",
    "ModelCheckpoint", "ReduceLROnPlateau", "LearningRateScheduler", "CSVLogger",
    "TerminateOnNaN", "LambdaCallback",
]


# --------------------------------------------------------------------------- helpers

def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_int(name, value, low=None):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Argument `{name}` must be an integer. Received: {name}={value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"Argument `{name}` must be an integer. "
                        f"Received: {name}={value!r}") from None
    if low is not None and value < low:
        raise ValueError(f"Argument `{name}` must be an integer >= {low}. "
                         f"Received: {name}={value}")
    return value


def _check_verbose(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return _check_int("verbose", value, low=0)


def _check_real(name, value, *, low=None, high=None, high_open=False, allow_none=False):
    if value is None and allow_none:
        return None
    if not _is_real(value):
        raise TypeError(f"Argument `{name}` must be a number. Received: {name}={value!r}")
    value = float(value)
    conds = []
    if low is not None:
        conds.append(f">= {low}")
    if high is not None:
        conds.append(f"{'<' if high_open else '<='} {high}")
    if (not math.isfinite(value) or (low is not None and value < low)
            or (high is not None and (value >= high if high_open else value > high))):
        where = f" {' and '.join(conds)}" if conds else ""
        raise ValueError(f"Argument `{name}` must be a finite number{where}. "
                         f"Received: {name}={value!r}")
    return value


def _check_str(name, value):
    if not isinstance(value, str):
        raise TypeError(f"Argument `{name}` must be a string. Received: {name}={value!r}")
    if not value:
        raise ValueError(f"Argument `{name}` must be a non-empty string. Received: {name}=''")
    return value


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Argument `{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def _check_mode(mode):
    if not isinstance(mode, str) or mode not in ("auto", "min", "max"):
        raise ValueError("Argument `mode` must be one of 'auto', 'min' or 'max'. "
                         f"Received: mode={mode!r}")
    return mode


def _check_path(name, value):
    try:
        value = os.fspath(value)
    except TypeError:
        raise TypeError(f"Argument `{name}` must be a path (str or os.PathLike). "
                        f"Received: {name}={value!r}") from None
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not value:
        raise ValueError(f"Argument `{name}` must be a non-empty path. Received: {name}=''")
    return value


def _maximize(monitor, mode):
    """True when larger values of ``monitor`` are better (see the module docstring)."""
    if mode == "max":
        return True
    if mode == "min":
        return False
    name = monitor.lower()
    if name.startswith("val_"):
        name = name[4:]
    return "acc" in name or "auc" in name or name.startswith("fmeasure")


def _to_float(value, what):
    """A monitored log value as a float (a number, NumPy scalar or one-element array)."""
    if isinstance(value, (numbers.Real, np.bool_)):
        return float(value)
    arr = np.asarray(value)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.floating)
                             or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{what} must be a number; got {value!r}")
    return float(arr.reshape(()))


def _learning_rate(model, who):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "learning_rate"):
        raise ValueError(f"{who} needs `model.optimizer.learning_rate`, which this model does "
                         "not have (compile the model with an optimizer first).")
    return float(optimizer.learning_rate)


def _print(message):
    print(message, flush=True)


_HOOKS = (
    "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
    "on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end",
    "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
    "on_predict_begin", "on_predict_end", "on_predict_batch_begin", "on_predict_batch_end",
)


# --------------------------------------------------------------------------- base class

class Callback:
    """Base class of the callbacks: every hook is a no-op.

    Attributes:
        model: the model being trained (set by ``set_model``), None before.
        params: the dict the training loop passes (``verbose``, ``epochs``, ``steps``),
            None before ``set_params``.

    ``on_train_batch_begin`` / ``on_train_batch_end`` call ``on_batch_begin`` /
    ``on_batch_end`` (backward-compatible aliases, as in Keras), so a subclass may
    override either name.
    """

    model = None
    params = None

    def __init__(self):
        self.model = None
        self.params = None

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    # ------------------------------------------------------------------ fit
    def on_train_begin(self, logs=None):
        """Called once at the start of ``fit``."""

    def on_train_end(self, logs=None):
        """Called once at the end of ``fit`` (also after an early stop)."""

    def on_epoch_begin(self, epoch, logs=None):
        """Called at the start of epoch ``epoch`` (0-based)."""

    def on_epoch_end(self, epoch, logs=None):
        """Called at the end of an epoch with its metrics (``loss``, ..., ``val_*``)."""

    def on_batch_begin(self, batch, logs=None):
        """Alias of ``on_train_batch_begin`` (kept for old callbacks)."""

    def on_batch_end(self, batch, logs=None):
        """Alias of ``on_train_batch_end`` (kept for old callbacks)."""

    def on_train_batch_begin(self, batch, logs=None):
        """Called before training batch ``batch`` (0-based, within the epoch)."""
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        """Called after a training batch; ``logs`` hold the running epoch averages."""
        self.on_batch_end(batch, logs)

    # ------------------------------------------------------------------ evaluate
    def on_test_begin(self, logs=None):
        """Called at the start of ``evaluate`` (or of the validation inside ``fit``)."""

    def on_test_end(self, logs=None):
        """Called at the end of ``evaluate`` with its results."""

    def on_test_batch_begin(self, batch, logs=None):
        """Called before an evaluation batch."""

    def on_test_batch_end(self, batch, logs=None):
        """Called after an evaluation batch with the running averages."""

    # ------------------------------------------------------------------ predict
    def on_predict_begin(self, logs=None):
        """Called at the start of ``predict``."""

    def on_predict_end(self, logs=None):
        """Called at the end of ``predict``."""

    def on_predict_batch_begin(self, batch, logs=None):
        """Called before a prediction batch."""

    def on_predict_batch_end(self, batch, logs=None):
        """Called after a prediction batch."""


# --------------------------------------------------------------------------- CallbackList

def _batch_hooks_used(callbacks, hooks):
    """Whether a callback among `callbacks` (Callback objects, e.g. a CallbackList's) does
    anything in one of the per-batch `hooks`, where it could change the model's weights
    between batches. fastlstm's own History and ProgbarLogger never do."""
    for cb in callbacks:
        if isinstance(cb, (History, ProgbarLogger)):
            continue
        for name in hooks:
            fn = getattr(cb, name, None)
            if getattr(fn, "__func__", fn) is not getattr(Callback, name):
                return True
    return False


def _flatten_callbacks(callbacks):
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        return [callbacks]
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, collections.abc.Iterable):
        raise TypeError("Argument `callbacks` must be a list of fastlstm.callbacks.Callback "
                        f"instances. Received: callbacks={callbacks!r}")
    out = []
    for item in callbacks:
        if isinstance(item, Callback):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten_callbacks(item))
        else:
            raise TypeError("Argument `callbacks` must be a list of "
                            "fastlstm.callbacks.Callback instances; it holds "
                            f"{type(item).__name__} {item!r}")
    return out


class CallbackList(Callback):
    """Calls every hook on a list of callbacks, in order.

    Args:
        callbacks: a Callback, a (nested) list of them, or None.
        add_history: append a :class:`History` unless the list already holds one.
        add_progbar: append a :class:`ProgbarLogger` unless the list already holds one.
        model: the model (passed to every callback's ``set_model``; sets
            ``model.history`` to the History callback when there is one).
        **params: passed to every callback's ``set_params`` when not empty; the model
            passes ``verbose``, ``epochs`` and ``steps`` (batches per epoch).

    Each hook gets the same ``logs`` dict (a new empty one when None is passed).
    """

    def __init__(self, callbacks=None, add_history=False, add_progbar=False, model=None,
                 **params):
        super().__init__()
        self.callbacks = _flatten_callbacks(callbacks)
        self._history = None
        self._progbar = None
        for cb in self.callbacks:
            if isinstance(cb, History) and self._history is None:
                self._history = cb
            elif isinstance(cb, ProgbarLogger) and self._progbar is None:
                self._progbar = cb
        if add_history and self._history is None:
            self._history = History()
            self.callbacks.append(self._history)
        if add_progbar and self._progbar is None:
            self._progbar = ProgbarLogger()
            self.callbacks.append(self._progbar)
        self.set_model(model)
        self.set_params(params)

    def __iter__(self):
        return iter(self.callbacks)

    def append(self, callback):
        """Add one more callback at the end (given the current model and params)."""
        if not isinstance(callback, Callback):
            raise TypeError("Argument `callback` must be a fastlstm.callbacks.Callback "
                            f"instance. Received: callback={callback!r}")
        self.callbacks.append(callback)
        if self.model is not None:
            callback.set_model(self.model)
        if self.params:
            callback.set_params(self.params)

    def set_model(self, model):
        if model is None:
            return
        super().set_model(model)
        if self._history is not None:
            model.history = self._history
        for cb in self.callbacks:
            cb.set_model(model)

    def set_params(self, params):
        self.params = params
        if params:
            for cb in self.callbacks:
                cb.set_params(params)

    def _call(self, hook, *args):
        *head, logs = args
        if logs is None:
            logs = {}
        for cb in self.callbacks:
            getattr(cb, hook)(*head, logs)

    def on_train_begin(self, logs=None):
        self._call("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._call("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._call("on_epoch_end", epoch, logs)

    def on_batch_begin(self, batch, logs=None):
        self._call("on_batch_begin", batch, logs)

    def on_batch_end(self, batch, logs=None):
        self._call("on_batch_end", batch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._call("on_train_batch_end", batch, logs)

    def on_test_begin(self, logs=None):
        self._call("on_test_begin", logs)

    def on_test_end(self, logs=None):
        self._call("on_test_end", logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._call("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._call("on_test_batch_end", batch, logs)

    def on_predict_begin(self, logs=None):
        self._call("on_predict_begin", logs)

    def on_predict_end(self, logs=None):
        self._call("on_predict_end", logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._call("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._call("on_predict_batch_end", batch, logs)


# --------------------------------------------------------------------------- History

def _log_value(value):
    """A log entry as a Python float when it is a real scalar; anything else unchanged."""
    if isinstance(value, (numbers.Real, np.bool_)):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1 and (
            np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        return float(value.reshape(()))
    return value


class History(Callback):
    """Records the epoch logs; ``fit`` returns it (and sets ``model.history`` to it).

    Attributes:
        history: dict ``name -> [value per epoch]`` (Python floats), e.g.
            ``{"loss": [...], "val_loss": [...]}``.
        epoch: the 0-based indices of the epochs recorded by the latest ``fit``.

    As in Keras 3, ``on_train_begin`` resets ``epoch`` but not ``history``: a History
    object reused across several ``fit`` calls keeps appending to its lists (``fit``
    normally makes a new one each time).
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []
        if self.model is not None:
            self.model.history = self

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(_log_value(value))
        if self.model is not None:
            self.model.history = self

    # ------------------------------------------------------------------ plotting

    def _panels(self, keys):
        """[(title, [history key, ...])] for the requested metric names."""
        if keys is None:
            names = []
            for key, values in self.history.items():
                base = key[4:] if key.startswith("val_") else key
                if values and base not in names:
                    names.append(base)
            if "loss" in names:
                names.remove("loss")
                names.insert(0, "loss")
        else:
            names = [keys] if isinstance(keys, str) else list(keys)
            if not names:
                raise ValueError("Argument `keys` must name at least one metric. "
                                 "Received: keys=[]")
            for name in names:
                if not isinstance(name, str):
                    raise TypeError("Argument `keys` must be a metric name or a list of "
                                    f"them. Received an item {name!r}")
        panels = []
        for name in names:
            curves = [k for k in (name, "val_" + name) if self.history.get(k)]
            if not curves:
                available = ", ".join(k for k, v in self.history.items() if v)
                raise ValueError(f"Argument `keys`: the history has no values for {name!r}. "
                                 f"Available keys: {available}")
            panels.append((name, curves))
        return panels

    def plot(self, keys=None, ax=None, filename=None, title=None):
        """Plot the training curves: one subplot per metric, with its ``val_`` curve.

        Args:
            keys: a metric name or a list of them (e.g. ``["loss", "accuracy"]``); each
                gets a subplot with the curves ``name`` and ``val_name`` that exist.
                None plots every metric recorded (``loss`` first).
            ax: a matplotlib Axes (when one subplot is drawn) or a sequence of Axes, one
                per metric, to draw into; None makes a new Figure.
            filename: when given, the figure is saved there (a path, format from the
                extension, or a binary file object).
            title: an optional title over the figure.

        Returns:
            The ``matplotlib.figure.Figure``.  The figure is made with the object-oriented
            API (no pyplot), so no GUI backend is needed; display it in a notebook by
            returning it, or save it with ``filename``.

        Raises:
            ImportError: matplotlib is not installed.
            ValueError: the history is empty, or a key has no values.
        """
        try:
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator
        except ImportError as exc:
            raise ImportError("History.plot needs matplotlib, which is not installed: "
                              'pip install matplotlib (or pip install "fastlstm[plot]")') from exc
        if not any(self.history.values()):
            raise ValueError("The history is empty: there is nothing to plot (train the "
                             "model with fit() first).")
        panels = self._panels(keys)

        if ax is None:
            ncols = min(len(panels), 3)
            nrows = -(-len(panels) // ncols)
            fig = Figure(figsize=(4.5 * ncols, 3.5 * nrows), layout="constrained")
            axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(len(panels))]
        else:
            if isinstance(ax, np.ndarray):
                axes = list(ax.ravel())
            elif isinstance(ax, (list, tuple)):
                axes = list(ax)
            else:
                axes = [ax]
            if len(axes) != len(panels):
                raise ValueError(f"Argument `ax` must hold one Axes per metric plotted "
                                 f"({len(panels)}: {', '.join(n for n, _ in panels)}). "
                                 f"Received {len(axes)} Axes.")
            fig = axes[0].figure

        for axis, (name, curves) in zip(axes, panels):
            for key in curves:
                try:
                    y = np.asarray(self.history[key], dtype=np.float64)
                except (TypeError, ValueError):
                    raise ValueError(f"history[{key!r}] holds values that are not numbers; "
                                     "it cannot be plotted.") from None
                x = np.arange(1, y.size + 1)
                axis.plot(x, y, marker="o", markersize=3, label=key)
            axis.set_title(name)
            axis.set_xlabel("epoch")
            axis.set_ylabel(name)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(True, alpha=0.3)
            axis.legend()
        if title is not None:
            fig.suptitle(str(title))
        if filename is not None:
            fig.savefig(filename if hasattr(filename, "write") else _check_path("filename", filename))
        return fig


# --------------------------------------------------------------------------- ProgbarLogger

def _display_order(logs):
    """Log items in display order: training keys sorted, then ``val_`` keys sorted."""
    train = sorted(k for k in logs if not k.startswith("val_"))
    val = sorted(k for k in logs if k.startswith("val_"))
    return [(k, logs[k]) for k in train + val]


class ProgbarLogger(Callback):
    """Prints the progress bar and the metrics (``fit``, ``evaluate``, ``predict``).

    Reads ``verbose`` (0, 1, 2 or "auto" = 1), ``epochs`` and ``steps`` from the params.
    In ``fit`` it prints ``Epoch i/N`` at each epoch start (when ``N > 1``, as Keras), then
    with verbose=1 a bar updated after each batch (in place; on a terminal only) and
    finished at the epoch end with the total time, the time per step and the epoch logs
    (``val_*`` included); with verbose=2 only that final line, as
    ``125/125 - 1s - 4ms/step - loss: ...``.  The validation run inside ``fit`` is silent;
    ``evaluate`` and ``predict`` get one bar each.

    The logs are shown as passed (they already hold running epoch averages), training keys
    sorted by name first, then the ``val_`` keys sorted (the order Keras 3 shows).
    """

    def __init__(self):
        super().__init__()
        self.seen = 0
        self.progbar = None
        self.target = None
        self.verbose = 1
        self.epochs = 1
        self._called_in_fit = False

    def set_params(self, params):
        super().set_params(params)
        params = params or {}
        verbose = params.get("verbose", 1)
        if verbose == "auto":
            verbose = 1
        self.verbose = int(verbose)
        self.epochs = params.get("epochs", 1)
        self.target = params.get("steps")

    def on_train_begin(self, logs=None):
        self._called_in_fit = True

    def on_train_end(self, logs=None):
        self._called_in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        self._reset()
        if self.verbose and self.epochs and self.epochs > 1:
            _print(f"Epoch {epoch + 1}/{self.epochs}")

    def on_train_batch_end(self, batch, logs=None):
        self._update(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._finalize(logs)

    def on_test_begin(self, logs=None):
        if not self._called_in_fit:
            self._reset()

    def on_test_batch_end(self, batch, logs=None):
        if not self._called_in_fit:
            self._update(batch, logs)

    def on_test_end(self, logs=None):
        if not self._called_in_fit:
            self._finalize(logs)

    def on_predict_begin(self, logs=None):
        self._reset()

    def on_predict_batch_end(self, batch, logs=None):
        self._update(batch, None)  # the batch outputs are not metrics

    def on_predict_end(self, logs=None):
        self._finalize(None)

    # ------------------------------------------------------------------ helpers

    def _reset(self):
        self.seen = 0
        self.progbar = None
        self._ensure_progbar()

    def _ensure_progbar(self):
        if self.progbar is None:
            self.progbar = Progbar(target=self.target, verbose=self.verbose, unit_name="step")

    def _items(self, logs):
        logs = logs or {}
        self.progbar.stateful_metrics.update(logs)
        return _display_order(logs)

    def _update(self, batch, logs):
        self._ensure_progbar()
        self.seen = batch + 1
        if self.verbose == 1:
            self.progbar.update(self.seen, self._items(logs), finalize=False)

    def _finalize(self, logs):
        self._ensure_progbar()
        if self.target is None:
            self.target = self.seen
            self.progbar.target = self.seen
        self.progbar.update(self.target, self._items(logs), finalize=True)


# --------------------------------------------------------------------------- EarlyStopping

class EarlyStopping(Callback):
    """Stop training when a monitored quantity has stopped improving (Keras 3 rules).

    Args:
        monitor: the log key watched at each epoch end (default ``"val_loss"``).
        min_delta: an improvement must beat the best value by more than ``abs(min_delta)``.
        patience: number of epochs without improvement after which training stops.
        verbose: 0 (silent) or 1 (print when stopping / restoring).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (see the module docstring).
        baseline: when set, an epoch only resets the patience counter if it beats both
            the best value so far and the baseline; an epoch that improves on the best
            value without beating the baseline neither resets the counter nor counts
            towards stopping (as Keras 3: a metric that keeps improving without ever
            reaching the baseline does not stop training).
        restore_best_weights: at the end of training (early stop or not), put back the
            weights of the best epoch (as Keras 3).
        start_from_epoch: number of initial epochs during which nothing is monitored.

    After training, ``stopped_epoch`` is the 0-based epoch at which it stopped (0 when it
    did not stop), ``best`` the best value and ``best_epoch`` its epoch.  Training never
    stops after the first epoch (epoch 0).
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor = _check_str("monitor", monitor)
        self.min_delta = abs(_check_real("min_delta", min_delta))
        self.patience = _check_int("patience", patience, low=0)
        self.verbose = _check_verbose(verbose)
        self.mode = _check_mode(mode)
        self.baseline = _check_real("baseline", baseline, allow_none=True)
        self.restore_best_weights = _check_bool("restore_best_weights", restore_best_weights)
        self.start_from_epoch = _check_int("start_from_epoch", start_from_epoch, low=0)
        self._maximize = _maximize(self.monitor, self.mode)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = -math.inf if self._maximize else math.inf
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value, reference):
        if self._maximize:
            return value - self.min_delta > reference
        return value + self.min_delta < reference

    def on_train_begin(self, logs=None):
        self._reset()

    def get_monitor_value(self, logs):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(f"Early stopping conditioned on metric `{self.monitor}` which is "
                          f"not available. Available metrics are: {','.join(logs)}",
                          stacklevel=3)
            return None
        return _to_float(value, f"EarlyStopping: logs[{self.monitor!r}]")

    def on_epoch_end(self, epoch, logs=None):
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # The first monitored epoch: its weights are the best seen so far.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch

        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # The counter restarts only when the baseline is beaten too.
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return

        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            _print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                _print("Restoring model weights from the end of the best epoch: "
                       f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


# --------------------------------------------------------------------------- ModelCheckpoint

class ModelCheckpoint(Callback):
    """Save the model (or its weights) during training.

    Args:
        filepath: where to save; may hold ``str.format`` fields filled from the logs and
            ``epoch`` (1-based), plus ``batch`` (1-based) when saving every N batches,
            e.g. ``"ckpt-{epoch:02d}-{val_loss:.2f}.keras"``.  Missing folders are created.
        monitor: the log key compared when ``save_best_only``.
        verbose: 0 (silent) or 1 (print a line per decision).
        save_best_only: save only when ``monitor`` improves on the best value so far (a
            fixed ``filepath`` then always holds the best model).
        save_weights_only: call ``model.save_weights(path)`` instead of ``model.save(path)``.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        save_freq: ``"epoch"`` (save at each epoch end) or an integer N >= 1 (save after
            every N training batches, counted across epochs).
        initial_value_threshold: the initial best value (only with ``save_best_only``).

    ``best`` keeps the best value across ``fit`` calls, so a later run does not overwrite
    a better checkpoint.  With ``save_best_only`` and ``monitor`` missing from the logs it
    warns and saves anyway (as Keras 3).
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch",
                 initial_value_threshold=None):
        super().__init__()
        self.filepath = _check_path("filepath", filepath)
        self.monitor = _check_str("monitor", monitor)
        self.verbose = _check_verbose(verbose)
        self.save_best_only = _check_bool("save_best_only", save_best_only)
        self.save_weights_only = _check_bool("save_weights_only", save_weights_only)
        self.mode = _check_mode(mode)
        if isinstance(save_freq, str):
            if save_freq != "epoch":
                raise ValueError("Argument `save_freq` must be 'epoch' or an integer number "
                                 f"of batches >= 1. Received: save_freq={save_freq!r}")
        else:
            try:
                save_freq = _check_int("save_freq", save_freq, low=1)
            except TypeError:
                raise ValueError("Argument `save_freq` must be 'epoch' or an integer number "
                                 f"of batches >= 1. Received: save_freq={save_freq!r}") from None
        self.save_freq = save_freq
        self.initial_value_threshold = _check_real(
            "initial_value_threshold", initial_value_threshold, allow_none=True)
        self._maximize = _maximize(self.monitor, self.mode)
        if self.initial_value_threshold is not None:
            self.best = self.initial_value_threshold
        else:
            self.best = -math.inf if self._maximize else math.inf
        self._current_epoch = 0
        self._batches_since_save = 0
        self._last_batch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        # A batch index not above the last one means a new epoch began.
        if self._last_batch is None or batch <= self._last_batch:
            self._batches_since_save += batch + 1
        else:
            self._batches_since_save += batch - self._last_batch
        self._last_batch = batch
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _file_path(self, epoch, batch, logs):
        fields = dict(logs)
        fields["epoch"] = epoch + 1
        if batch is not None and "batch" not in logs:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except KeyError as exc:
            raise KeyError(f'Failed to format this callback filepath: "{self.filepath}". '
                           f"Reason: {exc}") from None

    def _should_save(self, epoch, logs, filepath):
        if not self.save_best_only:
            if self.verbose > 0:
                _print(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.",
                          stacklevel=4)
            return True
        if isinstance(current, np.ndarray) and current.size != 1:
            warnings.warn(f"Can save best model only when `monitor` is a scalar value. "
                          f"Received: {current}. Falling back to `save_best_only=False`.",
                          stacklevel=4)
            return True
        current = _to_float(current, f"ModelCheckpoint: logs[{self.monitor!r}]")
        better = current > self.best if self._maximize else current < self.best
        if better:
            if self.verbose > 0:
                _print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} "
                       f"to {current:.5f}, saving model to {filepath}")
            self.best = current
            return True
        if self.verbose > 0:
            _print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
        return False

    def _save(self, epoch, batch, logs):
        logs = logs or {}
        filepath = self._file_path(epoch, batch, logs)
        if not self._should_save(epoch, logs, filepath):
            return
        if os.path.isdir(filepath):
            raise IsADirectoryError("Please specify a non-directory filepath for "
                                    f"ModelCheckpoint. Filepath used is an existing "
                                    f"directory: {filepath}")
        dirname = os.path.dirname(filepath)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(filepath)
        else:
            self.model.save(filepath)


# --------------------------------------------------------------------------- learning rate

class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stops improving.

    Args:
        monitor: the log key watched at each epoch end.
        factor: the new rate is ``max(lr * factor, min_lr)``; 0 <= factor < 1.
        patience: epochs without improvement before the rate is reduced.
        verbose: 0 (silent) or 1 (print each reduction).
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        min_delta: an improvement must beat the best value by more than this (>= 0).
        cooldown: epochs to wait after a reduction before counting again.
        min_lr: lower bound of the learning rate.

    At each epoch end it also adds ``logs["learning_rate"]`` (the rate used during that
    epoch, i.e. before a reduction made at this epoch end), as Keras 3 does.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__()
        self.monitor = _check_str("monitor", monitor)
        self.factor = _check_real("factor", factor, low=0.0, high=1.0, high_open=True)
        self.patience = _check_int("patience", patience, low=0)
        self.verbose = _check_verbose(verbose)
        self.mode = _check_mode(mode)
        self.min_delta = _check_real("min_delta", min_delta, low=0.0)
        self.cooldown = _check_int("cooldown", cooldown, low=0)
        self.min_lr = _check_real("min_lr", min_lr, low=0.0)
        self._maximize = _maximize(self.monitor, self.mode)
        self._reset()

    def _reset(self):
        self.best = -math.inf if self._maximize else math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _is_improvement(self, value):
        if self._maximize:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            logs = {}
        old_lr = _learning_rate(self.model, "ReduceLROnPlateau")
        logs["learning_rate"] = old_lr
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Learning rate reduction is conditioned on metric `{self.monitor}` "
                          f"which is not available. Available metrics are: {','.join(logs)}.",
                          stacklevel=3)
            return
        current = _to_float(current, f"ReduceLROnPlateau: logs[{self.monitor!r}]")
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and old_lr > self.min_lr:
                new_lr = max(old_lr * self.factor, self.min_lr)
                self.model.optimizer.learning_rate = new_lr
                if self.verbose > 0:
                    _print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                           f"to {new_lr}.")
                self.cooldown_counter = self.cooldown
                self.wait = 0


def _schedule_arity(schedule):
    """2 when ``schedule(epoch, lr)`` can be called, 1 for the old ``schedule(epoch)``."""
    try:
        sig = inspect.signature(schedule)
    except (TypeError, ValueError):  # builtins without a signature: assume the new form
        return 2
    try:
        sig.bind(0, 0.1)
        return 2
    except TypeError:
        pass
    try:
        sig.bind(0)
        return 1
    except TypeError:
        raise TypeError("Argument `schedule` must be callable as schedule(epoch, lr) (or "
                        f"schedule(epoch)); its signature is {sig}") from None


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch start to ``schedule(epoch, lr)``.

    Args:
        schedule: a function ``(epoch, lr) -> new_lr`` (``epoch`` 0-based, ``lr`` the
            current rate as a float); a one-argument ``schedule(epoch)`` also works.
        verbose: 0 (silent) or 1 (print the rate set at each epoch).

    At each epoch end it adds ``logs["learning_rate"]``.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError("Argument `schedule` must be a callable (epoch, lr) -> lr. "
                            f"Received: schedule={schedule!r}")
        self._arity = _schedule_arity(schedule)
        self.schedule = schedule
        self.verbose = _check_verbose(verbose)

    def on_epoch_begin(self, epoch, logs=None):
        lr = _learning_rate(self.model, "LearningRateScheduler")
        new_lr = self.schedule(epoch, lr) if self._arity == 2 else self.schedule(epoch)
        if isinstance(new_lr, np.ndarray) and new_lr.shape == ():
            new_lr = new_lr.item()
        if not _is_real(new_lr) or not math.isfinite(new_lr) or new_lr < 0:
            raise ValueError("The output of the `schedule` function should be a finite float "
                             f">= 0. Got: {new_lr!r}")
        new_lr = float(new_lr)
        self.model.optimizer.learning_rate = new_lr
        if self.verbose > 0:
            _print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                   f"{new_lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _learning_rate(self.model, "LearningRateScheduler")


# --------------------------------------------------------------------------- CSVLogger

def _csv_value(value):
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, collections.abc.Iterable):
        return f"[{', '.join(map(str, value))}]"
    if isinstance(value, np.generic):
        return value.item()
    return value


class CSVLogger(Callback):
    """Write the epoch logs to a CSV file, one row per epoch (flushed at each epoch).

    Args:
        filename: the CSV file.
        separator: the one-character column separator.
        append: append to an existing file (its header is kept; one is written only when
            the file is missing or empty) instead of overwriting it.

    The header is ``epoch`` followed by the first epoch's log keys sorted by name; when that
    epoch has no ``val_`` key (validation_freq > 1, or no validation), ``val_<key>`` for each
    of them follows, as Keras 3 does. ``epoch`` is 0-based (as Keras) and a key missing from
    an epoch is written ``NA``.  Lines end with ``\\n``.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = _check_path("filename", filename)
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError("Argument `separator` must be a one-character string. "
                             f"Received: separator={separator!r}")
        self.sep = separator
        self.append = _check_bool("append", append)
        self.keys = None
        self.writer = None
        self.csv_file = None
        self._write_header = True

    def on_train_begin(self, logs=None):
        if self.append:
            try:
                with open(self.filename, encoding="utf-8") as f:
                    self._write_header = not f.readline()
            except FileNotFoundError:
                self._write_header = True
            mode = "a"
        else:
            self._write_header = True
            mode = "w"
        self._close()
        self.csv_file = open(self.filename, mode, newline="", encoding="utf-8")
        self.keys = None
        self.writer = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.csv_file is None or self.csv_file.closed:
            self.on_train_begin()
        if self.keys is None:
            self.keys = sorted(logs)
            if not any(k.startswith("val_") for k in self.keys):
                # (validation may come in later epochs: its columns exist from the start)
                self.keys += ["val_" + k for k in self.keys]
        if self.writer is None:
            self.writer = csv.writer(self.csv_file, delimiter=self.sep, lineterminator="\n")
            if self._write_header:
                self.writer.writerow(["epoch"] + self.keys)
        self.writer.writerow([epoch] + [_csv_value(logs.get(k, "NA")) for k in self.keys])
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        self._close()

    def _close(self):
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


# --------------------------------------------------------------------------- small ones

class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's ``loss`` is NaN or infinite: gracefully
    (``model.stop_training``), or with ``raise_error=True`` by raising RuntimeError at once
    (the other callbacks' ``on_train_end`` then does not run), as Keras 3."""

    def __init__(self, raise_error=False):
        super().__init__()
        if not isinstance(raise_error, (bool, np.bool_)):
            raise TypeError(f"raise_error: expected True or False, got {raise_error!r}")
        self.raise_error = bool(raise_error)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        try:
            value = _to_float(loss, "logs['loss']")
        except TypeError:
            return
        if math.isnan(value) or math.isinf(value):
            if self.raise_error:
                raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. Loss value: "
                                   f"{value}. Terminating training immediately.")
            _print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback made of plain functions.

    Args:
        on_epoch_begin, on_epoch_end: functions ``(epoch, logs)``.
        on_train_begin, on_train_end: functions ``(logs)``.
        on_train_batch_begin, on_train_batch_end: functions ``(batch, logs)``.
        **kwargs: any other hook by name (e.g. ``on_test_end=lambda logs: ...``).

    Hooks left as None do nothing.  Example::

        LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))
    """

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 **kwargs):
        super().__init__()
        hooks = {
            "on_epoch_begin": on_epoch_begin, "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin, "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
        }
        for name, fn in kwargs.items():
            if name not in _HOOKS:
                raise TypeError(f"LambdaCallback got an unexpected argument {name!r}; the "
                                f"hooks are: {', '.join(_HOOKS)}")
            hooks[name] = fn
        for name, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"Argument `{name}` must be a callable or None. "
                                f"Received: {name}={fn!r}")
            setattr(self, name, fn)
