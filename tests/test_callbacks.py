"""Tests of fastlstm.callbacks and fastlstm._progbar (Keras-3-style training callbacks).

The callbacks are driven through a fake model (weights, optimizer with a learning-rate
property, save / save_weights writing small files) and a fake ``fit`` loop written here
that calls the hooks in the order Keras does; each test asserts the exact behaviour
(the epoch training stops at, the learning rates, the files written, the printed lines).
The progress bar's clock is replaced by a fake one so the printed times are exact.
"""

import io
import math
import sys

import numpy as np
import pytest

from fastlstm import callbacks as cbm
import fastlstm._progbar as _progbar

BAR = "\u2501" * 20  # a full 20-character bar


# --------------------------------------------------------------------------- fakes

class FakeOptimizer:
    def __init__(self, lr):
        self._lr = float(lr)

    @property
    def learning_rate(self):
        return self._lr

    @learning_rate.setter
    def learning_rate(self, value):
        self._lr = float(value)


class FakeModel:
    """What the callbacks may use of a model; save() / save_weights() write the epoch."""

    def __init__(self, lr=0.1):
        self.stop_training = False
        self.optimizer = FakeOptimizer(lr)
        self.weights = [np.zeros(2), np.zeros(3)]
        self.saved = []          # (kind, path) in call order
        self.history = None

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [np.array(w, copy=True) for w in weights]

    def _write(self, kind, path):
        with open(path, "w") as f:
            f.write(f"{kind} {self.weights[0][0]:g}")
        self.saved.append((kind, str(path)))

    def save(self, filepath):
        self._write("model", filepath)

    def save_weights(self, filepath):
        self._write("weights", filepath)


def fit(model, callbacks, epoch_logs, *, steps=2, verbose=0, progbar=False, batch_logs=None,
        tick=None, validation=False, declared_steps="same"):
    """A fit loop calling the hooks as Keras does; returns the number of epochs run.

    ``epoch_logs[e]`` is the dict passed to on_epoch_end for epoch e.  The batch logs are
    ``batch_logs(epoch, batch)`` or else the epoch's non-val entries.  During epoch e the
    model's weights are all e + 1 (so restored weights tell which epoch they came from).
    ``declared_steps`` is the ``steps`` param the callbacks get (None: unknown).
    """
    if declared_steps == "same":
        declared_steps = steps
    callbacks = cbm.CallbackList(callbacks, add_history=True, add_progbar=progbar, model=model,
                                 verbose=verbose, epochs=len(epoch_logs), steps=declared_steps)
    model.stop_training = False
    callbacks.on_train_begin()
    run = 0
    for epoch, logs in enumerate(epoch_logs):
        callbacks.on_epoch_begin(epoch)
        for batch in range(steps):
            callbacks.on_train_batch_begin(batch)
            model.weights = [np.full(2, epoch + 1.0), np.full(3, epoch + 1.0)]
            if tick is not None:
                tick()
            if batch_logs is not None:
                blogs = dict(batch_logs(epoch, batch))
            else:
                blogs = {k: v for k, v in logs.items() if not k.startswith("val_")}
            callbacks.on_train_batch_end(batch, blogs)
            if model.stop_training:
                break
        if validation:  # the validation run inside fit calls the test hooks
            callbacks.on_test_begin()
            callbacks.on_test_batch_begin(0)
            callbacks.on_test_batch_end(0, {"loss": 9.0})
            callbacks.on_test_end({"loss": 9.0})
        callbacks.on_epoch_end(epoch, dict(logs))
        run += 1
        if model.stop_training:
            break
    callbacks.on_train_end()
    return run


def val_losses(*values):
    return [{"loss": 1.0, "val_loss": v} for v in values]


@pytest.fixture
def tick(monkeypatch):
    """Fake progress-bar clock; tick(dt) advances it (default 4 ms)."""
    now = [0.0]
    monkeypatch.setattr(_progbar, "_clock", lambda: now[0])

    def advance(dt=0.004):
        now[0] += dt
    return advance


class TTY(io.StringIO):
    def isatty(self):
        return True


# --------------------------------------------------------------------------- Callback / CallbackList

class Recorder(cbm.Callback):
    def __init__(self, calls, name):
        super().__init__()
        self.calls, self.name = calls, name

    def on_train_begin(self, logs=None):
        self.calls.append((self.name, "train_begin"))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append((self.name, "epoch_begin", epoch))

    def on_batch_end(self, batch, logs=None):  # reached through the on_train_batch_end alias
        self.calls.append((self.name, "batch_end", batch, dict(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append((self.name, "epoch_end", epoch))
        logs["seen_by_" + self.name] = 1.0

    def on_train_end(self, logs=None):
        self.calls.append((self.name, "train_end"))


def test_base_callback_hooks_are_noops_and_setters_work():
    cb = cbm.Callback()
    assert cb.model is None and cb.params is None
    model = FakeModel()
    cb.set_model(model)
    cb.set_params({"epochs": 3})
    assert cb.model is model and cb.params == {"epochs": 3}
    for hook in ("on_train_begin", "on_train_end", "on_test_begin", "on_test_end",
                 "on_predict_begin", "on_predict_end"):
        assert getattr(cb, hook)({}) is None
    for hook in ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
                 "on_test_batch_begin", "on_test_batch_end", "on_predict_batch_begin",
                 "on_predict_batch_end"):
        assert getattr(cb, hook)(0, {}) is None


def test_callback_list_forwards_hooks_in_order_and_shares_logs():
    calls = []
    a, b = Recorder(calls, "a"), Recorder(calls, "b")
    model = FakeModel()
    n = fit(model, [a, b], [{"loss": 1.0}, {"loss": 0.5}], steps=1)
    assert n == 2
    assert calls == [
        ("a", "train_begin"), ("b", "train_begin"),
        ("a", "epoch_begin", 0), ("b", "epoch_begin", 0),
        ("a", "batch_end", 0, {"loss": 1.0}), ("b", "batch_end", 0, {"loss": 1.0}),
        ("a", "epoch_end", 0), ("b", "epoch_end", 0),
        ("a", "epoch_begin", 1), ("b", "epoch_begin", 1),
        ("a", "batch_end", 0, {"loss": 0.5}), ("b", "batch_end", 0, {"loss": 0.5}),
        ("a", "epoch_end", 1), ("b", "epoch_end", 1),
        ("a", "train_end"), ("b", "train_end"),
    ]
    # The same logs dict goes to every callback: History (appended last) saw both keys.
    assert model.history.history == {"loss": [1.0, 0.5], "seen_by_a": [1.0, 1.0],
                                     "seen_by_b": [1.0, 1.0]}
    assert a.params == {"verbose": 0, "epochs": 2, "steps": 1} and a.model is model


def test_callback_list_adds_history_and_progbar_once():
    model = FakeModel()
    es = cbm.EarlyStopping()
    cl = cbm.CallbackList([es], add_history=True, add_progbar=True, model=model,
                          verbose=1, epochs=1, steps=1)
    assert [type(c) for c in cl.callbacks] == [cbm.EarlyStopping, cbm.History, cbm.ProgbarLogger]
    assert model.history is cl.callbacks[1]
    assert cl.callbacks[2].target == 1 and cl.callbacks[2].epochs == 1
    # User-supplied ones are used in place, nothing is added.
    hist, bar = cbm.History(), cbm.ProgbarLogger()
    cl = cbm.CallbackList([bar, [hist]], add_history=True, add_progbar=True, model=model)
    assert cl.callbacks == [bar, hist] and model.history is hist
    assert list(cbm.CallbackList(None).callbacks) == []
    assert cbm.CallbackList(es).callbacks == [es]


def test_callback_list_rejects_non_callbacks():
    with pytest.raises(TypeError, match="callbacks"):
        cbm.CallbackList([cbm.History(), "early_stopping"])
    with pytest.raises(TypeError, match="callbacks"):
        cbm.CallbackList(42)
    with pytest.raises(TypeError, match="callback"):
        cbm.CallbackList([]).append(object())


# --------------------------------------------------------------------------- History

def test_history_records_epoch_logs_as_floats():
    model = FakeModel()
    logs = [{"loss": np.float32(0.5), "val_loss": 0.75, "accuracy": np.array(0.25)},
            {"loss": 0.25, "val_loss": 0.5, "accuracy": 0.5}]
    fit(model, [], logs)
    h = model.history
    assert isinstance(h, cbm.History)
    assert h.epoch == [0, 1]
    assert h.history == {"loss": [0.5, 0.25], "val_loss": [0.75, 0.5], "accuracy": [0.25, 0.5]}
    assert all(type(v) is float for vs in h.history.values() for v in vs)


def test_history_reused_resets_epoch_but_keeps_appending():
    model = FakeModel()
    h = cbm.History()
    fit(model, [h], [{"loss": 3.0}, {"loss": 2.0}])
    fit(model, [h], [{"loss": 1.0}])
    assert model.history is h
    assert h.epoch == [0]
    assert h.history == {"loss": [3.0, 2.0, 1.0]}


def _history(**series):
    h = cbm.History()
    h.history = {k: list(v) for k, v in series.items()}
    return h


def test_history_plot_writes_png_with_one_axes_per_metric(tmp_path):
    h = _history(accuracy=[0.5, 0.7, 0.8], loss=[1.0, 0.6, 0.4], val_accuracy=[0.4, 0.6, 0.7],
                 val_loss=[1.1, 0.8, 0.7], learning_rate=[0.1, 0.1, 0.01])
    out = tmp_path / "curves.png"
    fig = h.plot(filename=out, title="run 1")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.figure import Figure
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning_rate"]
    lines = [[ln.get_label() for ln in ax.get_lines()] for ax in fig.axes]
    assert lines == [["loss", "val_loss"], ["accuracy", "val_accuracy"], ["learning_rate"]]
    x, y = fig.axes[0].get_lines()[1].get_data()
    assert list(x) == [1, 2, 3] and list(y) == [1.1, 0.8, 0.7]
    assert fig.get_suptitle() == "run 1"


def test_history_plot_keys_and_ax():
    from matplotlib.figure import Figure
    h = _history(loss=[1.0, 0.5], val_loss=[1.2, 0.9], accuracy=[0.3, 0.6])
    fig = h.plot(keys="accuracy")
    assert len(fig.axes) == 1 and [ln.get_label() for ln in fig.axes[0].get_lines()] == ["accuracy"]
    own = Figure()
    ax1, ax2 = own.subplots(1, 2)
    assert h.plot(keys=["loss", "accuracy"], ax=[ax1, ax2]) is own
    assert len(ax1.get_lines()) == 2 and len(ax2.get_lines()) == 1
    with pytest.raises(ValueError, match="one Axes per metric"):
        h.plot(keys=["loss", "accuracy"], ax=ax1)
    with pytest.raises(ValueError, match="'auc'.*Available keys: loss, val_loss, accuracy"):
        h.plot(keys=["loss", "auc"])


def test_history_plot_errors(monkeypatch):
    with pytest.raises(ValueError, match="empty"):
        cbm.History().plot()
    with pytest.raises(ValueError, match="empty"):
        _history(loss=[]).plot()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        _history(loss=[1.0]).plot()


# --------------------------------------------------------------------------- EarlyStopping

def test_early_stopping_min_mode_stops_after_patience():
    model = FakeModel()
    es = cbm.EarlyStopping(patience=2)
    # best at epoch 1 (0.9); epochs 2 and 3 do not improve -> stop at epoch 3.
    assert fit(model, [es], val_losses(1.0, 0.9, 0.95, 0.92, 0.5, 0.4)) == 4
    assert es.stopped_epoch == 3 and es.best == 0.9 and es.best_epoch == 1
    assert model.stop_training
    assert model.history.history["val_loss"] == [1.0, 0.9, 0.95, 0.92]
    # patience=0 stops at the first epoch without improvement (never at epoch 0).
    es0 = cbm.EarlyStopping(patience=0)
    assert fit(FakeModel(), [es0], val_losses(1.0, 1.1, 0.5)) == 2
    assert es0.stopped_epoch == 1


def test_early_stopping_max_mode_auto_and_explicit():
    logs = [{"val_accuracy": v, "loss": 1.0} for v in (0.5, 0.6, 0.55, 0.58, 0.9)]
    es = cbm.EarlyStopping(monitor="val_accuracy", patience=1)  # auto -> max for "acc"
    assert fit(FakeModel(), [es], logs) == 3 and es.stopped_epoch == 2 and es.best == 0.6
    es = cbm.EarlyStopping(monitor="val_accuracy", patience=1, mode="min")
    assert fit(FakeModel(), [es], logs) == 2 and es.best == 0.5
    # mode="max" on a name that auto would minimise.
    es = cbm.EarlyStopping(monitor="score", mode="max", patience=1)
    assert fit(FakeModel(), [es], [{"score": s} for s in (1.0, 2.0, 1.5, 3.0)]) == 3
    # "auc" is maximised too.
    es = cbm.EarlyStopping(monitor="val_auc", patience=0)
    assert fit(FakeModel(), [es], [{"val_auc": s} for s in (0.6, 0.7, 0.65)]) == 3
    assert es.stopped_epoch == 2


def test_early_stopping_min_delta():
    seq = val_losses(1.0, 0.95, 0.91, 0.9)
    es = cbm.EarlyStopping(patience=2, min_delta=0.1)
    assert fit(FakeModel(), [es], seq) == 3 and es.stopped_epoch == 2 and es.best == 1.0
    es = cbm.EarlyStopping(patience=2, min_delta=-0.1)  # the sign is ignored, as in Keras
    assert fit(FakeModel(), [es], seq) == 3
    es = cbm.EarlyStopping(patience=2)  # every epoch improves without min_delta
    assert fit(FakeModel(), [es], seq) == 4 and es.stopped_epoch == 0 and es.best == 0.9
    # max mode: 0.55 does not beat 0.5 by more than 0.1.
    es = cbm.EarlyStopping(monitor="acc", patience=1, min_delta=0.1)
    assert fit(FakeModel(), [es], [{"acc": a} for a in (0.5, 0.55, 0.7)]) == 2


def test_early_stopping_baseline():
    seq = val_losses(0.9, 0.95, 0.97, 0.99, 0.99)
    es = cbm.EarlyStopping(patience=2, baseline=0.5)  # never beaten: stop after 2 epochs
    assert fit(FakeModel(), [es], seq) == 2 and es.stopped_epoch == 1
    es = cbm.EarlyStopping(patience=2)
    assert fit(FakeModel(), [es], seq) == 3 and es.stopped_epoch == 2
    es = cbm.EarlyStopping(patience=2, baseline=0.95)  # epoch 0 beats it: as without one
    assert fit(FakeModel(), [es], seq) == 3 and es.stopped_epoch == 2


def test_early_stopping_never_stops_at_epoch_0():
    # A NaN is no improvement, but epoch 0 never stops training (Keras rule).
    es = cbm.EarlyStopping(patience=0)
    assert fit(FakeModel(), [es], val_losses(math.nan, math.nan, math.nan)) == 2
    assert es.stopped_epoch == 1 and es.best == math.inf


def test_early_stopping_start_from_epoch():
    seq = val_losses(1.0, 2.0, 3.0, 4.0, 5.0)
    es = cbm.EarlyStopping(patience=0, start_from_epoch=2)
    assert fit(FakeModel(), [es], seq) == 4 and es.stopped_epoch == 3 and es.best == 3.0
    es = cbm.EarlyStopping(patience=0)
    assert fit(FakeModel(), [es], seq) == 2 and es.stopped_epoch == 1


def test_early_stopping_restore_best_weights(capsys):
    # Stopped early: the best epoch (1) is restored; weights during epoch e are e + 1.
    model = FakeModel()
    es = cbm.EarlyStopping(patience=2, restore_best_weights=True, verbose=1)
    assert fit(model, [es], val_losses(1.0, 0.5, 0.7, 0.8, 0.1)) == 4
    assert [w.tolist() for w in model.weights] == [[2.0, 2.0], [2.0, 2.0, 2.0]]
    assert capsys.readouterr().out == ("Epoch 4: early stopping\n"
                                       "Restoring model weights from the end of the best epoch: 2.\n")
    # Not stopped: restored at the end of training anyway (Keras 3).
    model = FakeModel()
    es = cbm.EarlyStopping(patience=5, restore_best_weights=True)
    assert fit(model, [es], val_losses(1.0, 0.5, 0.7)) == 3
    assert model.weights[0].tolist() == [2.0, 2.0] and es.stopped_epoch == 0
    # Without restore_best_weights the last epoch's weights stay.
    model = FakeModel()
    fit(model, [cbm.EarlyStopping(patience=2)], val_losses(1.0, 0.5, 0.7, 0.8))
    assert model.weights[0].tolist() == [4.0, 4.0]
    assert capsys.readouterr().out == ""
    # Nothing improved after the first monitored epoch: its weights come back.
    model = FakeModel()
    es = cbm.EarlyStopping(patience=1, restore_best_weights=True, start_from_epoch=1)
    assert fit(model, [es], val_losses(5.0, 1.0, 2.0, 3.0)) == 3
    assert model.weights[0].tolist() == [2.0, 2.0] and es.best_epoch == 1


def test_early_stopping_reused_and_missing_monitor():
    es = cbm.EarlyStopping(patience=1)
    assert fit(FakeModel(), [es], val_losses(1.0, 2.0, 3.0)) == 2
    assert fit(FakeModel(), [es], val_losses(5.0, 4.0, 3.0)) == 3  # state was reset
    assert es.stopped_epoch == 0 and es.best == 3.0
    es = cbm.EarlyStopping(patience=0)
    with pytest.warns(UserWarning, match="`val_loss` which is not available. "
                                         "Available metrics are: loss,accuracy"):
        assert fit(FakeModel(), [es], [{"loss": 1.0, "accuracy": 0.5}] * 2) == 2


def test_early_stopping_argument_errors():
    with pytest.raises(ValueError, match="mode"):
        cbm.EarlyStopping(mode="maximum")
    with pytest.raises(ValueError, match="patience"):
        cbm.EarlyStopping(patience=-1)
    with pytest.raises(TypeError, match="patience"):
        cbm.EarlyStopping(patience=1.5)
    with pytest.raises(ValueError, match="start_from_epoch"):
        cbm.EarlyStopping(start_from_epoch=-2)
    with pytest.raises(TypeError, match="baseline"):
        cbm.EarlyStopping(baseline="low")
    with pytest.raises(TypeError, match="monitor"):
        cbm.EarlyStopping(monitor=None)
    with pytest.raises(ValueError, match="min_delta"):
        cbm.EarlyStopping(min_delta=math.nan)


# --------------------------------------------------------------------------- ReduceLROnPlateau

def test_reduce_lr_after_patience_and_logs_learning_rate():
    model = FakeModel(lr=0.1)
    cb = cbm.ReduceLROnPlateau(factor=0.5, patience=2)
    fit(model, [cb], val_losses(*[1.0] * 6))
    # Reduced at the ends of epochs 2 and 4; the logged rate is the one the epoch used.
    assert model.history.history["learning_rate"] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025]
    assert model.optimizer.learning_rate == 0.025
    # An improvement resets the wait counter; min_delta=1e-4 makes 0.99995 no improvement.
    model = FakeModel(lr=0.1)
    fit(model, [cbm.ReduceLROnPlateau(factor=0.5, patience=2)],
        val_losses(1.0, 0.9, 0.8, 0.8, 0.79995))
    assert model.history.history["learning_rate"] == [0.1] * 5
    assert model.optimizer.learning_rate == 0.05


def test_reduce_lr_cooldown_and_min_lr(capsys):
    model = FakeModel(lr=0.1)
    fit(model, [cbm.ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2)],
        val_losses(*[1.0] * 7))
    assert model.history.history["learning_rate"] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]
    model = FakeModel(lr=0.1)
    fit(model, [cbm.ReduceLROnPlateau(factor=0.1, patience=1, min_lr=0.005, verbose=1)],
        val_losses(*[1.0] * 5))
    assert model.optimizer.learning_rate == 0.005
    assert model.history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.01, 0.005, 0.005])
    assert capsys.readouterr().out == (
        "\nEpoch 2: ReduceLROnPlateau reducing learning rate to 0.010000000000000002.\n"
        "\nEpoch 3: ReduceLROnPlateau reducing learning rate to 0.005.\n")


def test_reduce_lr_max_mode_and_missing_monitor():
    up = [{"val_accuracy": a} for a in (0.5, 0.6, 0.7, 0.8)]
    down = [{"val_accuracy": a} for a in (0.8, 0.7, 0.6, 0.5)]
    model = FakeModel(lr=1.0)
    fit(model, [cbm.ReduceLROnPlateau(monitor="val_accuracy", patience=1)], up)
    assert model.optimizer.learning_rate == 1.0
    model = FakeModel(lr=1.0)
    fit(model, [cbm.ReduceLROnPlateau(monitor="val_accuracy", patience=1)], down)
    assert model.optimizer.learning_rate == pytest.approx(1e-3)
    model = FakeModel(lr=1.0)
    with pytest.warns(UserWarning, match="`val_loss` which is not available. "
                                         "Available metrics are: loss,learning_rate"):
        fit(model, [cbm.ReduceLROnPlateau(patience=0)], [{"loss": 1.0}, {"loss": 2.0}])
    assert model.optimizer.learning_rate == 1.0


def test_reduce_lr_argument_errors():
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="factor"):
            cbm.ReduceLROnPlateau(factor=bad)
    with pytest.raises(ValueError, match="patience"):
        cbm.ReduceLROnPlateau(patience=-1)
    with pytest.raises(ValueError, match="cooldown"):
        cbm.ReduceLROnPlateau(cooldown=-1)
    with pytest.raises(ValueError, match="min_lr"):
        cbm.ReduceLROnPlateau(min_lr=-1e-3)
    with pytest.raises(ValueError, match="min_delta"):
        cbm.ReduceLROnPlateau(min_delta=-1e-3)
    with pytest.raises(ValueError, match="mode"):
        cbm.ReduceLROnPlateau(mode="auto ")
    cb = cbm.ReduceLROnPlateau()
    cb.set_model(object())
    with pytest.raises(ValueError, match="optimizer"):
        cb.on_epoch_end(0, {"val_loss": 1.0})


# --------------------------------------------------------------------------- LearningRateScheduler

def test_learning_rate_scheduler(capsys):
    model = FakeModel(lr=0.1)
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return lr if epoch == 0 else lr * 0.5

    fit(model, [cbm.LearningRateScheduler(schedule, verbose=1)], [{"loss": 1.0}] * 3)
    assert seen == [(0, 0.1), (1, 0.1), (2, 0.05)]
    assert model.history.history["learning_rate"] == [0.1, 0.05, 0.025]
    assert capsys.readouterr().out == "".join(
        f"\nEpoch {e}: LearningRateScheduler setting learning rate to {lr}.\n"
        for e, lr in ((1, 0.1), (2, 0.05), (3, 0.025)))
    # The old one-argument form and integer / NumPy results.
    model = FakeModel(lr=0.1)
    fit(model, [cbm.LearningRateScheduler(lambda epoch: [1, np.float32(0.5), 0.25][epoch])],
        [{"loss": 1.0}] * 3)
    assert model.history.history["learning_rate"] == [1.0, 0.5, 0.25]


def test_learning_rate_scheduler_errors():
    with pytest.raises(TypeError, match="schedule"):
        cbm.LearningRateScheduler(0.1)
    with pytest.raises(TypeError, match="schedule"):
        cbm.LearningRateScheduler(lambda: 0.1)
    for bad in ("0.1", None, math.nan, -1.0):
        cb = cbm.LearningRateScheduler(lambda epoch, lr, bad=bad: bad)
        with pytest.raises(ValueError, match="schedule"):
            fit(FakeModel(), [cb], [{"loss": 1.0}])


# --------------------------------------------------------------------------- ModelCheckpoint

def test_model_checkpoint_every_epoch_with_formatted_names(tmp_path, capsys):
    model = FakeModel()
    pattern = str(tmp_path / "ckpt" / "m-{epoch:02d}-{val_loss:.2f}.keras")
    fit(model, [cbm.ModelCheckpoint(pattern, verbose=1)], val_losses(0.5, 0.3, 0.456))
    names = ["m-01-0.50.keras", "m-02-0.30.keras", "m-03-0.46.keras"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == names
    assert model.saved == [("model", str(tmp_path / "ckpt" / n)) for n in names]
    assert (tmp_path / "ckpt" / names[1]).read_text() == "model 2"
    assert capsys.readouterr().out == "".join(
        f"\nEpoch {i + 1}: saving model to {tmp_path / 'ckpt' / n}\n" for i, n in enumerate(names))


def test_model_checkpoint_save_best_only_weights(tmp_path, capsys):
    model = FakeModel()
    path = tmp_path / "best.weights.h5"
    cb = cbm.ModelCheckpoint(path, save_best_only=True, save_weights_only=True, verbose=1)
    fit(model, [cb], val_losses(0.5, 0.3, 0.4, 0.2, 0.2))
    assert [kind for kind, _ in model.saved] == ["weights"] * 3
    assert path.read_text() == "weights 4"  # epoch 4 (index 3) was the last improvement
    assert cb.best == 0.2
    out = capsys.readouterr().out
    assert f"\nEpoch 1: val_loss improved from inf to 0.50000, saving model to {path}\n" in out
    assert "\nEpoch 3: val_loss did not improve from 0.30000\n" in out
    assert "\nEpoch 5: val_loss did not improve from 0.20000\n" in out


def test_model_checkpoint_max_mode_and_threshold(tmp_path):
    model = FakeModel()
    cb = cbm.ModelCheckpoint(tmp_path / "e{epoch}.keras", monitor="val_accuracy",
                             save_best_only=True)
    fit(model, [cb], [{"val_accuracy": a} for a in (0.5, 0.4, 0.6, 0.6)])
    assert [p.rsplit("/", 1)[-1] for _, p in model.saved] == ["e1.keras", "e3.keras"]
    model = FakeModel()
    cb = cbm.ModelCheckpoint(tmp_path / "t{epoch}.keras", save_best_only=True,
                             initial_value_threshold=0.35)
    fit(model, [cb], val_losses(0.5, 0.3, 0.4))
    assert [p.rsplit("/", 1)[-1] for _, p in model.saved] == ["t2.keras"]


def test_model_checkpoint_save_freq_batches(tmp_path):
    model = FakeModel()
    cb = cbm.ModelCheckpoint(str(tmp_path / "b-{epoch}-{batch}-{loss:.1f}"), save_freq=3)
    fit(model, [cb], [{"loss": 0.5}] * 3, steps=2,
        batch_logs=lambda e, b: {"loss": float(e * 2 + b)})
    # Batches counted across epochs: the 3rd (epoch 2, batch 1) and the 6th (epoch 3, batch 2).
    assert [p.rsplit("/", 1)[-1] for _, p in model.saved] == ["b-2-1-2.0", "b-3-2-5.0"]


def test_model_checkpoint_save_freq_counts_skipped_batch_indices(tmp_path):
    # A loop reporting every 2nd batch (as with steps_per_execution=2): batch b counts as
    # b + 1 batches after an epoch start, else as the gap since the previous report.
    model = FakeModel()
    cb = cbm.ModelCheckpoint(str(tmp_path / "s-{epoch}-{batch}"), save_freq=4)
    cb.set_model(model)
    for epoch in range(2):
        cb.on_epoch_begin(epoch)
        for batch in (1, 3):
            cb.on_train_batch_end(batch, {})
    assert [p.rsplit("/", 1)[-1] for _, p in model.saved] == ["s-1-4", "s-2-4"]


def test_model_checkpoint_missing_values(tmp_path):
    cb = cbm.ModelCheckpoint(str(tmp_path / "m-{val_acc:.2f}"))
    with pytest.raises(KeyError, match="Failed to format this callback filepath"):
        fit(FakeModel(), [cb], val_losses(0.5))
    model = FakeModel()
    cb = cbm.ModelCheckpoint(str(tmp_path / "m"), monitor="val_acc", save_best_only=True)
    with pytest.warns(UserWarning, match="Can save best model only with val_acc available"):
        fit(model, [cb], val_losses(0.5))
    assert len(model.saved) == 1


def test_model_checkpoint_argument_errors(tmp_path):
    for bad in ("batch", 0, -5, 2.5, True):
        with pytest.raises(ValueError, match="save_freq"):
            cbm.ModelCheckpoint("m.keras", save_freq=bad)
    with pytest.raises(ValueError, match="mode"):
        cbm.ModelCheckpoint("m.keras", mode="best")
    with pytest.raises(TypeError, match="filepath"):
        cbm.ModelCheckpoint(None)
    with pytest.raises(TypeError, match="initial_value_threshold"):
        cbm.ModelCheckpoint("m.keras", initial_value_threshold="0.1")


# --------------------------------------------------------------------------- CSVLogger

def test_csv_logger_writes_sorted_header_and_flushes_each_epoch(tmp_path):
    path = tmp_path / "log.csv"
    contents = []
    peek = cbm.LambdaCallback(on_epoch_end=lambda epoch, logs: contents.append(path.read_text()))
    logs = [{"val_loss": 0.6, "loss": 0.5, "accuracy": 0.7},
            {"val_loss": 0.4, "loss": 0.25, "accuracy": np.float64(0.875)}]
    fit(FakeModel(), [cbm.CSVLogger(path), peek], logs)
    assert contents[0] == "epoch,accuracy,loss,val_loss\n0,0.7,0.5,0.6\n"
    assert path.read_text() == contents[1] == contents[0] + "1,0.875,0.25,0.4\n"


def test_csv_logger_append_separator_and_missing_keys(tmp_path):
    path = tmp_path / "log.csv"
    # (Keras 3: a first epoch without val_ keys gets val_<key> columns, NA until validation runs)
    fit(FakeModel(), [cbm.CSVLogger(path, separator=";")], [{"loss": 1.0}, {"loss": 0.5, "x": 1}])
    assert path.read_text() == "epoch;loss;val_loss\n0;1.0;NA\n1;0.5;NA\n"
    fit(FakeModel(), [cbm.CSVLogger(path, separator=";", append=True)], [{"loss": 0.25}])
    assert path.read_text() == "epoch;loss;val_loss\n0;1.0;NA\n1;0.5;NA\n0;0.25;NA\n"
    fit(FakeModel(), [cbm.CSVLogger(path)], [{"b": 1.0, "a": 2.0}, {"a": 3.0}])
    assert path.read_text() == "epoch,a,b,val_a,val_b\n0,2.0,1.0,NA,NA\n1,3.0,NA,NA,NA\n"
    # validation from the second epoch on (validation_freq=2) gets its columns from the start
    fit(FakeModel(), [cbm.CSVLogger(path)],
        [{"loss": 1.0, "mae": 0.5}, {"loss": 0.5, "mae": 0.25, "val_loss": 0.75, "val_mae": 0.4}])
    assert path.read_text() == "epoch,loss,mae,val_loss,val_mae\n0,1.0,0.5,NA,NA\n1,0.5,0.25,0.75,0.4\n"
    with pytest.raises(ValueError, match="separator"):
        cbm.CSVLogger(path, separator="::")


# --------------------------------------------------------------------------- TerminateOnNaN / Lambda

def test_terminate_on_nan_can_raise():
    model = FakeModel()
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 1"):
        fit(model, [cbm.TerminateOnNaN(raise_error=True)], [{"loss": 1.0}] * 2, steps=3,
            batch_logs=lambda e, b: {"loss": math.nan if (e, b) == (0, 1) else 1.0})
    with pytest.raises(TypeError, match="raise_error"):
        cbm.TerminateOnNaN(raise_error="yes")


@pytest.mark.parametrize("bad", [math.nan, math.inf, np.float32(-np.inf)])
def test_terminate_on_nan(capsys, bad):
    model = FakeModel()
    seen = []
    run = fit(model, [cbm.TerminateOnNaN(), cbm.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(batch))],
        [{"loss": 1.0}] * 4, steps=3,
        batch_logs=lambda e, b: {"loss": bad if (e, b) == (1, 1) else 1.0})
    assert run == 2 and model.stop_training
    assert seen == [0, 1, 2, 0, 1]  # the batch loop stopped right after batch 1 of epoch 1
    assert capsys.readouterr().out == "Batch 1: Invalid loss, terminating training\n"
    assert len(model.history.history["loss"]) == 2


def test_terminate_on_nan_ignores_finite_and_missing_loss():
    model = FakeModel()
    assert fit(model, [cbm.TerminateOnNaN()], [{"acc": 1.0}, {"loss": 1e30}]) == 2


def test_lambda_callback_hooks_and_errors():
    calls = []
    cb = cbm.LambdaCallback(
        on_train_begin=lambda logs: calls.append("train_begin"),
        on_epoch_begin=lambda epoch, logs: calls.append(f"epoch_begin {epoch}"),
        on_train_batch_begin=lambda batch, logs: calls.append(f"batch_begin {batch}"),
        on_train_batch_end=lambda batch, logs: calls.append(f"batch_end {batch} {logs['loss']}"),
        on_epoch_end=lambda epoch, logs: calls.append(f"epoch_end {epoch}"),
        on_train_end=lambda logs: calls.append("train_end"),
        on_test_end=lambda logs: calls.append(f"test_end {logs['loss']}"))
    fit(FakeModel(), [cb], [{"loss": 0.5}], steps=2, validation=True)
    assert calls == ["train_begin", "epoch_begin 0", "batch_begin 0", "batch_end 0 0.5",
                     "batch_begin 1", "batch_end 1 0.5", "test_end 9.0", "epoch_end 0",
                     "train_end"]
    with pytest.raises(TypeError, match="on_epoch_end"):
        cbm.LambdaCallback(on_epoch_end="print")
    with pytest.raises(TypeError, match="on_epoch_finish"):
        cbm.LambdaCallback(on_epoch_finish=print)


# --------------------------------------------------------------------------- ProgbarLogger

EPOCH_LOGS = [{"loss": 0.2311, "accuracy": 0.912, "val_loss": 0.25, "val_accuracy": 0.9}] * 3


def test_progbar_logger_verbose1_non_tty(capsys, tick):
    fit(FakeModel(), [], EPOCH_LOGS, steps=3, verbose=1, progbar=True, tick=tick,
        validation=True)
    out = capsys.readouterr().out
    line = (f"3/3 {BAR} 0s 4ms/step - accuracy: 0.9120 - loss: 0.2311 - val_accuracy: 0.9000 "
            "- val_loss: 0.2500\n")
    # Not a terminal: no per-batch redraw, only the final line; validation is silent.
    assert out == "".join(f"Epoch {e}/3\n" + line for e in (1, 2, 3))
    assert "\r" not in out


def test_progbar_logger_verbose2(capsys, tick):
    fit(FakeModel(), [], EPOCH_LOGS[:2], steps=3, verbose=2, progbar=True, tick=tick)
    line = ("3/3 - 0s - 4ms/step - accuracy: 0.9120 - loss: 0.2311 - val_accuracy: 0.9000 "
            "- val_loss: 0.2500\n")
    assert capsys.readouterr().out == f"Epoch 1/2\n{line}Epoch 2/2\n{line}"


def test_progbar_logger_verbose0_and_single_epoch(capsys, tick):
    fit(FakeModel(), [cbm.ProgbarLogger()], EPOCH_LOGS, steps=3, verbose=0, tick=tick)
    assert capsys.readouterr().out == ""
    # One epoch: no "Epoch 1/1" header (as Keras); learning_rate added by a callback shows.
    fit(FakeModel(lr=1e-4), [cbm.ReduceLROnPlateau()], [{"loss": 0.5, "val_loss": 0.0}],
        steps=10, verbose=1, progbar=True, tick=tick)
    assert capsys.readouterr().out == (
        f"10/10 {BAR} 0s 4ms/step - loss: 0.5000 - learning_rate: 1.0000e-04 "
        "- val_loss: 0.0000\n")


def test_progbar_logger_unknown_steps_and_evaluate_predict(capsys, tick):
    # steps=None (unknown): the count learnt in the first epoch becomes the target.
    fit(FakeModel(), [], [{"loss": 1.0}] * 2, steps=4, declared_steps=None, verbose=1,
        progbar=True, tick=tick)
    line = f"4/4 {BAR} 0s 4ms/step - loss: 1.0000\n"
    assert capsys.readouterr().out == f"Epoch 1/2\n{line}Epoch 2/2\n{line}"
    cl = cbm.CallbackList(add_progbar=True, model=FakeModel(), verbose=1, epochs=1, steps=None)
    cl.on_test_begin()
    for b in range(5):
        tick()
        cl.on_test_batch_end(b, {"loss": 0.125})
    cl.on_test_end({"loss": 0.125, "mae": 0.5})
    assert capsys.readouterr().out == f"5/5 {BAR} 0s 4ms/step - loss: 0.1250 - mae: 0.5000\n"
    cl = cbm.CallbackList(add_progbar=True, model=FakeModel(), verbose=2, epochs=1, steps=2)
    cl.on_predict_begin()
    for b in range(2):
        tick(0.5)
        cl.on_predict_batch_end(b, {"outputs": np.zeros(3)})
    cl.on_predict_end()
    assert capsys.readouterr().out == "2/2 - 1s - 500ms/step\n"


def test_progbar_logger_tty_redraws_in_place(monkeypatch, tick):
    out = TTY()
    monkeypatch.setattr(sys, "stdout", out)
    fit(FakeModel(), [], [{"loss": 0.5}], steps=4, verbose=1, progbar=True,
        tick=lambda: tick(1.0))
    text = out.getvalue()
    # One redraw per batch plus the epoch-end one; a single newline, at the very end.
    assert text.count("\r") == 5 and text.endswith("\n") and text.count("\n") == 1
    plain = _progbar._ANSI_RE.sub("", text)
    frames = plain.split("\r")[1:]
    # ETA while running (1 s per step), elapsed time at the end.
    assert frames[0] == f"1/4 {BAR} 3s 1s/step - loss: 0.5000"
    assert frames[2] == f"3/4 {BAR} 1s 1s/step - loss: 0.5000"
    assert frames[3] == f"4/4 {BAR} 0s 1s/step - loss: 0.5000"
    assert frames[4] == f"4/4 {BAR} 4s 1s/step - loss: 0.5000\n"
    # The done part is green, the rest grey (as Keras 3 draws it): 5 of 20 after 1/4.
    green, grey, reset = "\x1b[32m", "\x1b[37m", "\x1b[0m"
    assert text.split("\r")[1].startswith(
        f"\x1b[1m1/4{reset} {green}{BAR[:5]}{reset}{grey}{BAR[:15]}{reset} \x1b[1m3s{reset} ")


# --------------------------------------------------------------------------- Progbar

def test_format_helpers():
    f = _progbar.format_metric_value
    assert [f(v) for v in (0.2311, 12.345678, 0.0005, -0.0002, 0.0, 1e-3, math.nan, -math.inf)] \
        == ["0.2311", "12.3457", "5.0000e-04", "-2.0000e-04", "0.0000", "0.0010", "nan", "-inf"]
    assert f(np.array([1.0, 2.0])) == "1.5000" and f(np.int64(3)) == "3.0000" and f("x") == "x"
    g = _progbar.format_step_time
    assert [g(t) for t in (2.0, 0.0, 0.004, 5e-5)] == ["2s/step", "0s/step", "4ms/step", "50us/step"]
    assert g(0.25, "sample") == "250ms/sample"
    e = _progbar.format_eta
    assert [e(t) for t in (3.7, 59, 75, 3700)] == ["3s", "59s", "1:15", "1:01:40"]


def test_progbar_averages_stateless_values_and_keeps_stateful(capsys, tick):
    p = _progbar.Progbar(target=4, verbose=2, stateful_metrics=["acc"])
    tick()
    p.update(1, [("loss", 1.0), ("acc", 0.5)])
    tick()
    p.update(3, [("loss", 3.0), ("acc", 0.75)])  # covers 2 steps: weight 2
    assert capsys.readouterr().out == ""  # verbose=2 prints only when finalized
    tick()
    p.add(1, [("loss", 5.0), ("note", "ok")])
    # loss: (1*1 + 3*2 + 5*1) / 4 = 3.0; acc: last value as is.  Time per step leaves the
    # first update out: (0.012 - 0.004) / (4 - 1) s.
    assert capsys.readouterr().out == "4/4 - 0s - 3ms/step - loss: 3.0000 - acc: 0.7500 - note: ok\n"


def test_progbar_unknown_target_and_verbose0(capsys, tick):
    p = _progbar.Progbar(target=None)
    for step in (4, 8):
        tick()
        p.update(step, {"loss": 0.5})
    assert capsys.readouterr().out == ""  # never finalizes by itself
    tick()
    p.update(10, finalize=True)
    assert capsys.readouterr().out == "     10/Unknown 0s 1ms/step - loss: 0.5000\n"
    q = _progbar.Progbar(target=3, verbose=0)
    for step in (1, 2, 3):
        q.update(step, [("loss", 1.0)])
    assert capsys.readouterr().out == ""


def test_progbar_early_finalize_shows_partial_bar(capsys, tick):
    p = _progbar.Progbar(target=10, width=10)
    tick()
    p.update(5, finalize=True)
    assert capsys.readouterr().out == " 5/10 \u2501\u2501\u2501\u2501\u2501" + "\u2500" * 5 \
        + " 0s 800us/step\n"


def test_progbar_tty_interval_skips_fast_updates(monkeypatch, tick):
    out = TTY()
    monkeypatch.setattr(sys, "stdout", out)
    p = _progbar.Progbar(target=100, interval=0.05)
    for step in range(1, 101):
        tick(0.01)
        p.update(step)
    text = out.getvalue()
    # Drawn at step 1, then about every 5 steps (0.05 s), and always at the end.
    assert 18 <= text.count("\r") <= 22
    assert _progbar._ANSI_RE.sub("", text).endswith(f"100/100 {BAR} 1s 10ms/step\n")


def test_progbar_argument_errors():
    with pytest.raises(ValueError, match="target"):
        _progbar.Progbar(target=-1)
    with pytest.raises(TypeError, match="target"):
        _progbar.Progbar(target=2.5)
    with pytest.raises(ValueError, match="verbose"):
        _progbar.Progbar(target=3, verbose=3)
    with pytest.raises(ValueError, match="width"):
        _progbar.Progbar(target=3, width=0)
    with pytest.raises(ValueError, match="interval"):
        _progbar.Progbar(target=3, interval=-1)
    with pytest.raises(ValueError, match="current"):
        _progbar.Progbar(target=3, verbose=0).update(-1)


def test_progbar_redraws_in_a_jupyter_kernel(monkeypatch):
    """A Jupyter kernel's stdout is not a terminal but renders carriage returns, so the bar
    redraws there as in a terminal (Keras does the same); elsewhere a non-terminal stream
    gets only final lines."""
    import types

    class OutStream:  # stands in for ipykernel.iostream.OutStream
        def isatty(self):
            return False
    OutStream.__module__ = "ipykernel.iostream"
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert _progbar._is_tty(OutStream())

    class Plain:
        def isatty(self):
            return False
    assert not _progbar._is_tty(Plain())
    monkeypatch.delitem(sys.modules, "ipykernel")
    assert not _progbar._is_tty(OutStream())


@pytest.mark.parametrize("make,flag", [
    (lambda v: cbm.EarlyStopping(restore_best_weights=v), "restore_best_weights"),
    (lambda v: cbm.ModelCheckpoint("m.keras", save_best_only=v), "save_best_only"),
    (lambda v: cbm.ModelCheckpoint("m.keras", save_weights_only=v), "save_weights_only"),
    (lambda v: cbm.CSVLogger("log.csv", append=v), "append"),
])
def test_boolean_flags_must_be_booleans(make, flag):
    # a string "False" would be truthy: refused with the flag's name, not switched on
    for bad in ("False", 1, None, [True]):
        with pytest.raises(TypeError, match=f"`{flag}` must be True or False"):
            make(bad)
    assert getattr(make(np.bool_(True)), flag) is True and getattr(make(False), flag) is False
