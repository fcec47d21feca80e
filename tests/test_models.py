"""Sequential: compile/fit/evaluate/predict, training arithmetic, callbacks, saving, errors."""

import io
import json
import os
import zipfile
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest

import fastlstm
from fastlstm import callbacks, layers, losses, models, optimizers, utils
from fastlstm.layers import LSTM, Dense
from fastlstm.models import Sequential, load_model


def toy_data(n=96, T=6, F=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.float32)
    return x, y


def small_model(dtype=None, **lstm_kwargs):
    m = Sequential([LSTM(8, input_shape=(6, 3), **lstm_kwargs), Dense(1, activation="sigmoid")],
                   dtype=dtype)
    m.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    return m


def test_issue_snippet_runs_and_learns():
    """The document's snippet, imports changed to fastlstm, on a learnable problem."""
    utils.set_random_seed(0)
    timesteps, features = 10, 2
    rng = np.random.default_rng(1)
    X = rng.standard_normal((600, timesteps, features)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(np.float32)
    X_train, y_train, X_test, y_test = X[:500], y[:500], X[500:], y[500:]
    model = Sequential()
    model.add(LSTM(128, input_shape=(timesteps, features)))
    model.add(Dense(1, activation='sigmoid'))
    model.compile(loss='binary_crossentropy', optimizer='adam', metrics=['accuracy'])
    model.fit(X_train, y_train, epochs=10, batch_size=32, verbose=0)
    loss, accuracy = model.evaluate(X_test, y_test, verbose=0)
    assert accuracy > 0.9 and loss < 0.3     # chance is 0.5 / log(2) = 0.69


def test_fit_step_equals_manual_sgd_step():
    """One fit epoch of one batch = forward, loss gradient, layer backward, SGD update."""
    x, y = toy_data(16)
    m = small_model(dtype="float64")
    m.compile(loss="mse", optimizer=optimizers.SGD(0.1))
    w0 = m.get_weights()
    # manual: same arithmetic through the layers' own API
    y_pred = m._forward(x.astype(np.float64), training=True)
    _, dy = losses.MeanSquaredError().value_and_gradient(y, y_pred)
    m._backward(dy)
    grads = [g for l in m.layers for g in l.grads]
    m.set_weights(w0)
    m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for w, g, new in zip(w0, grads, m.get_weights()):
        np.testing.assert_allclose(new, w - 0.1 * g, rtol=1e-12, atol=1e-14)


def test_history_evaluate_predict_shapes():
    x, y = toy_data()
    m = small_model()
    h = m.fit(x, y, epochs=3, batch_size=20, validation_split=0.25, verbose=0)
    assert isinstance(h, callbacks.History) and m.history is h
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in h.history.values())
    assert h.epoch == [0, 1, 2]
    out = m.predict(x, batch_size=7, verbose=0)
    assert out.shape == (96, 1) and out.dtype == np.float32
    assert np.all((out > 0) & (out < 1))
    loss, acc = m.evaluate(x, y, verbose=0)
    d = m.evaluate(x, y, verbose=0, return_dict=True)
    assert d == {"loss": loss, "accuracy": acc}
    # evaluate = the mean loss over samples (batches weighted by their size)
    want = losses.BinaryCrossentropy()(y, out)
    assert abs(loss - want) < 1e-5
    m2 = Sequential([Dense(1, input_shape=(3,))])
    m2.compile(loss="mse")
    assert isinstance(m2.evaluate(np.ones((4, 3)), np.ones(4), verbose=0), float)


def test_validation_data_and_split_are_the_last_samples():
    x, y = toy_data(40)
    m = small_model()
    seen = []

    class Spy(callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(batch)
    h = m.fit(x, y, epochs=1, batch_size=10, validation_split=0.5, verbose=0, callbacks=[Spy()])
    assert seen == [0, 1]                               # 20 training samples -> 2 batches
    val_loss = m.evaluate(x[20:], y[20:], verbose=0)[0]
    assert abs(h.history["val_loss"][0] - val_loss) < 1e-6
    h2 = m.fit(x, y, epochs=1, verbose=0, validation_data=(x[:5], y[:5]))
    assert "val_loss" in h2.history


def test_sample_weight_and_class_weight():
    x, y = toy_data(32)
    m = small_model(dtype="float64")
    m.compile(loss="binary_crossentropy", optimizer=optimizers.SGD(0.5))
    w0 = m.get_weights()
    cw = {0: 0.0, 1: 3.0}
    m.fit(x, y, batch_size=32, epochs=1, shuffle=False, class_weight=cw, verbose=0)
    a = m.get_weights()
    m.set_weights(w0)
    sw = np.where(y == 1, 3.0, 0.0)
    m.fit(x, y, batch_size=32, epochs=1, shuffle=False, sample_weight=sw, verbose=0)
    for p, q in zip(a, m.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-12)
    # zero weight on every sample: nothing to learn, the weights stay
    m.set_weights(w0)
    m.compile(loss="binary_crossentropy", optimizer=optimizers.SGD(0.5))
    m.fit(x, y, batch_size=32, epochs=1, sample_weight=np.zeros(32), verbose=0)
    for p, q in zip(w0, m.get_weights()):
        np.testing.assert_array_equal(p, q)


def test_masked_inputs_without_time_steps_give_the_unmasked_results():
    # T = 0 is accepted (the initial state comes back); with a Masking layer it raised NumPy's
    # "argmax of an empty sequence" instead
    x = np.zeros((2, 0, 3), np.float32)
    for make in (lambda: LSTM(3), lambda: LSTM(3, return_sequences=True), lambda: layers.Bidirectional(LSTM(3))):
        fastlstm.utils.set_random_seed(3)
        plain = Sequential([layers.Input((None, 3)), make()])
        masked = Sequential([layers.Input((None, 3)), layers.Masking(), make()])
        masked.set_weights(plain.get_weights())
        a, b = plain.predict(x, verbose=0), masked.predict(x, verbose=0)
        assert a.shape == b.shape and a.shape[0] == 2
        np.testing.assert_array_equal(a, b)


def test_class_weight_errors_name_the_argument():
    x, y = toy_data(16)
    m = small_model(dtype="float64")
    m.compile(loss="binary_crossentropy", optimizer=optimizers.SGD(0.5))
    w0 = m.get_weights()
    for cw, err in (({"neg": 1.0, "pos": 3.0}, TypeError), ({None: 2.0}, TypeError), ({0.5: 2.0}, TypeError),
                    ({0: "1", 1: "heavy"}, TypeError), ({True: 2.0}, TypeError), ({0: None}, TypeError)):
        with pytest.raises(err, match="class_weight"):
            m.fit(x, y, class_weight=cw, epochs=1, verbose=0)
    for p, q in zip(w0, m.get_weights()):  # refused before any step
        np.testing.assert_array_equal(p, q)
    # integral float and NumPy keys and weights are classes like ints (Keras looks them up by value)
    a = small_model(dtype="float64")
    a.set_weights(w0)
    a.compile(loss="binary_crossentropy", optimizer=optimizers.SGD(0.5))
    a.fit(x, y, class_weight={0: 1.0, 1: 3.0}, batch_size=16, epochs=1, shuffle=False, verbose=0)
    m.fit(x, y, class_weight={np.int64(0): np.float32(1), 1.0: 3}, batch_size=16, epochs=1, shuffle=False,
          verbose=0)
    for p, q in zip(a.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(p, q)


def test_one_optimizer_instance_per_model():
    # Keras: an optimizer serves the variables it was built with; a second model compiled with
    # the same instance gets a clear error instead of the first model's moments and step count
    x, y = toy_data(16)
    opt = optimizers.Adam(0.01)
    a, b = small_model(), small_model()
    a.compile(loss="binary_crossentropy", optimizer=opt)
    a.fit(x, y, epochs=1, verbose=0)
    b.compile(loss="binary_crossentropy", optimizer=opt)
    w0 = b.get_weights()
    with pytest.raises(ValueError, match="give each model its own"):
        b.fit(x, y, epochs=1, verbose=0)
    for p, q in zip(w0, b.get_weights()):
        np.testing.assert_array_equal(p, q)
    a.fit(x, y, epochs=1, verbose=0)  # the first model goes on with it
    b.compile(loss="binary_crossentropy", optimizer="adam")
    b.fit(x, y, epochs=1, verbose=0)


def test_steps_per_epoch_goes_on_through_the_data_as_keras():
    # Keras's epoch iterator: with steps_per_epoch an epoch takes the next batches of the pass
    # over the data; a pass that runs out ends the epoch early and the next epoch starts anew.
    # (It used to restart at the first batch every epoch: with shuffle=False the samples past
    # steps_per_epoch * batch_size were never trained on.)
    x, y = toy_data(12)                       # 3 batches of 4
    a, b = small_model(), small_model()
    b.set_weights(a.get_weights())
    for m in (a, b):
        m.compile(loss="binary_crossentropy", optimizer=optimizers.SGD(0.1))
    steps = []
    count = callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: steps.append(0),
                                     on_train_batch_end=lambda i, logs: steps.__setitem__(-1, i + 1))
    a.fit(x, y, batch_size=4, epochs=3, steps_per_epoch=2, shuffle=False, verbose=0,
          callbacks=[count])
    assert steps == [2, 1, 2]
    b.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)     # batches 0, 1, 2
    b.train_on_batch(x[:4], y[:4])                                     # then 0, 1 again
    b.train_on_batch(x[4:8], y[4:8])
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("steps_per_epoch", [None, 2])
def test_shuffle_draws_a_new_order_for_every_pass(steps_per_epoch, monkeypatch):
    # shuffle=True: each pass over the data (each epoch; with steps_per_epoch, each time a
    # pass runs out) is a new permutation of all the samples; shuffle=False keeps the order
    x, y = toy_data(12)
    x[:, 0, 0] = np.arange(12)                # each sample says which it is
    for shuffle in (True, False):
        m = small_model()
        seen = []
        real = m._train_batch
        monkeypatch.setattr(m, "_train_batch",
                            lambda xb, yb, sw: (seen.extend(int(v) for v in xb[:, 0, 0]),
                                                real(xb, yb, sw))[1])
        m.fit(x, y, batch_size=4, epochs=6 if steps_per_epoch else 3, shuffle=shuffle,
              steps_per_epoch=steps_per_epoch, verbose=0)
        passes = [seen[i:i + 12] for i in range(0, len(seen), 12)]
        assert len(passes) == 3 and all(sorted(p) == list(range(12)) for p in passes)
        if shuffle:
            assert len({tuple(p) for p in passes}) == 3 and passes[0] != list(range(12))
        else:
            assert all(p == list(range(12)) for p in passes)


def test_a_layer_frozen_after_training_trains_on_with_the_same_optimizer():
    # Keras 3: an optimizer updates any subset of the variables it was built with, so fit goes
    # on after layer.trainable = False (with or without compiling again with model.optimizer);
    # the frozen weights and their slots stay as they are
    x, y = toy_data(16)
    a, b = small_model(), small_model()
    b.set_weights(a.get_weights())
    for m in (a, b):
        m.compile(loss="binary_crossentropy", optimizer=optimizers.Adam(0.01))
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    a.layers[0].trainable = False
    frozen = a.get_weights()[:3]
    slots = [s.copy() for s in a.optimizer.get_state()["momentums"][:3]]
    a.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for p, q in zip(frozen, a.get_weights()[:3]):
        np.testing.assert_array_equal(p, q)
    for p, q in zip(slots, a.optimizer.get_state()["momentums"][:3]):
        np.testing.assert_array_equal(p, q)
    assert a.optimizer.iterations == 4
    # the Dense layer got the Adam steps it would get with the LSTM's gradients dropped
    opt = b.optimizer
    for xb, yb in ((x[:8], y[:8]), (x[8:], y[8:])):
        y_pred = b._forward(xb, training=True)
        _, dy = b.loss.value_and_gradient(yb[:, None], y_pred)
        b._backward(dy)
        grads = [None] * 3 + [g for g in b.layers[1].grads]
        opt.apply(grads, b.weights)
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
    a.compile(loss="binary_crossentropy", optimizer=a.optimizer)     # compiled again: the same
    a.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert a.optimizer.iterations == 6


def test_get_layer_and_set_weights_errors():
    m = small_model()
    with pytest.raises(ValueError, match="get_layer: index 5 is out of range"):
        m.get_layer(index=5)
    with pytest.raises(TypeError, match="get_layer: index must be an integer"):
        m.get_layer(index="0")
    assert m.get_layer(index=-1) is m.layers[-1]
    with pytest.raises(TypeError, match="set_weights: expected a list of arrays"):
        m.set_weights(None)


def test_seeded_runs_are_reproducible():
    x, y = toy_data()

    def run():
        utils.set_random_seed(123)
        m = small_model(dropout=0.2)
        m.add(layers.Dropout(0.1))
        h = m.fit(x, y, epochs=2, batch_size=16, verbose=0)
        return m.get_weights(), h.history["loss"]

    (w1, l1), (w2, l2) = run(), run()
    assert l1 == l2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_training_with_message():
    x, y = toy_data(64)
    x[5, 2, 1] = np.nan
    m = small_model()
    with pytest.warns(RuntimeWarning, match="became nan"):
        h = m.fit(x, y, epochs=5, batch_size=8, shuffle=False, verbose=0)
    assert len(h.history["loss"]) == 1


def test_terminate_on_nan_callback_prints():
    x, y = toy_data(32)
    x[9, 0, 0] = np.inf          # batch 1 (of size 8) gets an infinite input -> NaN loss
    m = small_model()
    out = io.StringIO()
    with redirect_stdout(out), pytest.warns(RuntimeWarning, match="became nan"):
        h = m.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False,
                  callbacks=[callbacks.TerminateOnNaN()])
    assert "Batch 1: Invalid loss, terminating training" in out.getvalue()
    assert len(h.history["loss"]) == 1


def test_early_stopping_and_reduce_lr_with_a_model():
    x, y = toy_data()
    m = small_model()
    m.compile(loss="binary_crossentropy", optimizer=optimizers.SGD(0.0))   # never improves
    es = callbacks.EarlyStopping(monitor="loss", patience=2)
    rl = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1.0)
    h = m.fit(x, y, epochs=20, verbose=0, callbacks=[es, rl])
    assert len(h.history["loss"]) == 3
    assert "learning_rate" in h.history


def test_on_train_end_gets_the_last_epochs_logs():
    # Keras 3 passes the last epoch's logs (val_* included) to on_train_end, not the last
    # batch's running averages; with no epoch run, empty logs
    x, y = toy_data()
    got = {}
    cb = callbacks.LambdaCallback(on_epoch_end=lambda e, logs: got.update(epoch=dict(logs)),
                                  on_train_end=lambda logs: got.update(end=dict(logs)))
    small_model().fit(x, y, epochs=2, validation_split=0.25, verbose=0, callbacks=[cb])
    assert sorted(got["end"]) == ["accuracy", "loss", "val_accuracy", "val_loss"], got
    assert got["end"] == got["epoch"]
    got.clear()
    small_model().fit(x, y, epochs=2, initial_epoch=2, verbose=0, callbacks=[cb])
    assert got == {"end": {}}


def test_verbose_output_formats(capsys):
    x, y = toy_data(40)
    m = small_model()
    m.fit(x, y, epochs=2, batch_size=10, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "4/4" in out
    assert "loss:" in out and "accuracy:" in out and "/step" in out
    m.fit(x, y, epochs=2, batch_size=10, verbose=2)
    out = capsys.readouterr().out
    assert "Epoch 2/2" in out and "4/4 - " in out and "━" not in out and "loss:" in out
    m.fit(x, y, epochs=1, verbose=0)
    m.predict(x, verbose=0)
    m.evaluate(x, y, verbose=0)
    assert capsys.readouterr().out == ""


def test_summary_matches_keras_counts(capsys):
    m = Sequential([layers.Embedding(100, 16, input_shape=(20,)),
                    layers.Bidirectional(LSTM(32, return_sequences=True)),
                    LSTM(8), Dense(3, activation="softmax")])
    m.summary()
    out = capsys.readouterr().out
    # Keras: Embedding 1600; Bidirectional 2 * 4 * 32 * (16 + 32 + 1) = 12544;
    # LSTM 4 * 8 * (64 + 8 + 1) = 2336; Dense 8 * 3 + 3 = 27
    for text in ("(Embedding)", "(None, 20, 16)", "1,600", "(None, 20, 64)",
                 "12,544", "(None, 8)", "2,336", "(None, 3)", "27",
                 "Total params: 16,507"):
        assert text in out, text
    assert m.count_params() == 16507


def test_float64_model_runs_in_float64():
    x, y = toy_data(16)
    m = small_model(dtype="float64")
    assert all(w.dtype == np.float64 for w in m.get_weights())
    m.fit(x, y, epochs=1, verbose=0)
    assert m.predict(x, verbose=0).dtype == np.float64


def test_train_test_predict_on_batch():
    x, y = toy_data(16)
    m = small_model()
    loss, acc = m.train_on_batch(x, y)
    assert np.isfinite(loss) and 0 <= acc <= 1
    assert m.optimizer.iterations == 1
    t = m.test_on_batch(x, y, return_dict=True)
    assert set(t) == {"loss", "accuracy"}
    np.testing.assert_array_equal(m.predict_on_batch(x), m.predict(x, verbose=0))


def test_regularization_is_in_the_loss():
    x, y = toy_data(16)
    m = Sequential([LSTM(4, input_shape=(6, 3), kernel_regularizer=fastlstm.regularizers.L2(0.1)),
                    Dense(1)])
    m.compile(loss="mse", optimizer="sgd")
    base = losses.MeanSquaredError()(y, m.predict(x, verbose=0))
    reg = 0.1 * float(np.sum(m.layers[0].kernel.astype(np.float64) ** 2))
    assert abs(m.evaluate(x, y, verbose=0) - (base + reg)) < 1e-5 * (base + reg)


def test_masked_sequence_loss_ignores_padding():
    """A return_sequences model's masked steps do not count in the loss (Keras's rule:
    the mean over unmasked steps)."""
    rng = np.random.default_rng(3)
    m = Sequential([layers.Embedding(5, 3, mask_zero=True, input_shape=(4,)),
                    LSTM(2, return_sequences=True), layers.TimeDistributed(Dense(1))])
    m.compile(loss="mse")
    x = np.array([[1, 2, 0, 0], [3, 4, 1, 0]])
    y = rng.standard_normal((2, 4, 1)).astype(np.float32)
    pred = m.predict(x, verbose=0)
    mask = x != 0
    want = float(np.mean(((pred - y)[..., 0] ** 2)[mask]))
    got = m.evaluate(x, y, verbose=0)
    assert abs(got - want) < 1e-6
    y2 = y.copy()
    y2[~mask] = 1e6      # targets at padded steps must not matter
    assert abs(m.evaluate(x, y2, verbose=0) - got) < 1e-6


# --------------------------------------------------------------------------- saving

def test_save_load_round_trip_with_optimizer_state(tmp_path):
    x, y = toy_data()
    m = Sequential([layers.Masking(input_shape=(6, 3)), LSTM(5, return_sequences=True,
                                                               dropout=0.1),
                    layers.Bidirectional(LSTM(3), merge_mode="ave"), Dense(2),
                    layers.Activation("softmax")])
    m.compile(loss="sparse_categorical_crossentropy", optimizer=optimizers.Adam(0.01,
                                                                               clipnorm=1.0),
              metrics=["accuracy"])
    yi = y.astype(np.int64)
    m.fit(x, yi, epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    m.save(path)
    m2 = load_model(path)
    np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))
    assert m2.optimizer.get_config() == m.optimizer.get_config()
    assert m2.optimizer.iterations == m.optimizer.iterations
    assert m2.metrics_names == m.metrics_names
    # training continues identically from the restored state
    utils.set_random_seed(7)
    m.fit(x, yi, epochs=1, verbose=0)
    utils.set_random_seed(7)
    m2.fit(x, yi, epochs=1, verbose=0)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_is_plain_data(tmp_path):
    m = small_model()
    path = tmp_path / "m.any_name"
    m.save(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        index = json.loads(zf.read("fastlstm.json"))
        for n in names:
            if n.endswith(".npy"):
                arr = np.load(io.BytesIO(zf.read(n)), allow_pickle=False)
                assert arr.dtype.kind == "f"
    assert index["format"] == "fastlstm.model"
    assert index["model_config"]["config"]["layers"][0]["class_name"] == "LSTM"


def test_save_is_atomic(tmp_path, monkeypatch):
    m = small_model()
    path = tmp_path / "m.keras"
    m.save(path)
    before = path.read_bytes()
    from fastlstm import saving

    def boom(array):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(saving, "_npy_bytes", boom)
    with pytest.raises(OSError, match="simulated"):
        m.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.keras"]     # no temporary file left behind


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "x.keras"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a fastlstm model file"):
        load_model(bad)
    foreign = tmp_path / "k.keras"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"\x89HDF")
    with pytest.raises(ValueError, match="Keras"):
        load_model(foreign)
    m = small_model()
    good = tmp_path / "good.keras"
    m.save(good)
    # truncate the archive: corrupt
    data = good.read_bytes()
    trunc = tmp_path / "trunc.keras"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        load_model(trunc)
    # a pickled array inside is refused, not executed
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for n in src.namelist():
            data = src.read(n)
            if n == "weights/00000.npy":
                buf = io.BytesIO()
                np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
                data = buf.getvalue()
            dst.writestr(n, data)
    with pytest.raises(ValueError, match="corrupt"):
        load_model(evil)
    # an unknown layer class in the JSON is refused
    odd = tmp_path / "odd.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(odd, "w") as dst:
        for n in src.namelist():
            data = src.read(n)
            if n == "fastlstm.json":
                idx = json.loads(data)
                idx["model_config"]["config"]["layers"][0]["class_name"] = "os.system"
                data = json.dumps(idx)
            dst.writestr(n, data)
    with pytest.raises(ValueError, match="Unknown layer class"):
        load_model(odd)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.keras")


def _rewrite(src, dst, replace=None, drop=(), edit_index=None, deflate=()):
    """A copy of the model file src with entries replaced / dropped / the index edited."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for n in zin.namelist():
            if n in drop:
                continue
            data = (replace or {}).get(n, zin.read(n))
            if n == "fastlstm.json" and edit_index is not None:
                idx = json.loads(data)
                edit_index(idx)
                data = json.dumps(idx)
            zout.writestr(n, data, compress_type=zipfile.ZIP_DEFLATED if n in deflate else zipfile.ZIP_STORED)
    return dst


def test_load_a_zip_directory_asking_for_a_newer_zip_version_is_a_value_error(tmp_path):
    # a damaged byte in the central directory (the version needed to extract) made zipfile
    # raise NotImplementedError out of load_model / load_weights instead of the promised
    # ValueError naming the file
    m = small_model()
    p = tmp_path / "m.keras"
    m.save(p)
    data = bytearray(p.read_bytes())
    i = data.find(b"PK\x01\x02")
    data[i + 6] = 0xFF                       # version needed to extract: 25.5
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="m.keras"):
        load_model(p)
    with pytest.raises(ValueError, match="m.keras"):
        small_model().load_weights(p)


def test_load_bounds_what_a_hostile_file_can_make_it_read(tmp_path):
    # Every entry's uncompressed size and .npy header are checked against the index before
    # anything is read or the model is built: a small file cannot make load_model allocate
    # gigabytes, and every damaged file gives a ValueError naming it.
    m = small_model()
    m.fit(*toy_data(16), epochs=1, verbose=0)
    good = tmp_path / "good.keras"
    m.save(good)
    w0 = zipfile.ZipFile(good).read("weights/00000.npy")
    # a deflated entry that inflates far past its array (a zip bomb): 1 MiB of zeros after it
    bomb = _rewrite(good, tmp_path / "bomb.keras", replace={"weights/00000.npy": w0 + bytes(1 << 20)},
                    deflate={"weights/00000.npy"})
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(ValueError, match=r"bomb\.keras.*weights/00000\.npy is compressed"):
        load_model(bomb)
    # (even one that inflates to exactly its array: fastlstm writes entries stored, so an entry's
    # size is bytes the file holds)
    with pytest.raises(ValueError, match=r"d\.keras.*weights/00000\.npy is compressed"):
        load_model(_rewrite(good, tmp_path / "d.keras", deflate={"weights/00000.npy"}))
    # an index declaring a huge weight, and a .npy header declaring one
    def huge(idx):
        idx["weights"][0]["shape"] = [10 ** 12]
    with pytest.raises(ValueError, match="too small for shape"):
        load_model(_rewrite(good, tmp_path / "h1.keras", edit_index=huge))
    hdr = io.BytesIO()      # (sized like the real slot, (3, 32) float32, so only the header lies)
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)})
    with pytest.raises(ValueError, match=r"header says shape \(1000000000000,\)"):
        load_model(_rewrite(good, tmp_path / "h2.keras",
                            replace={"optimizer/momentums/00000.npy": hdr.getvalue() + bytes(3 * 32 * 4)}))
    # entries missing or of the wrong shape, before the architecture is built
    with pytest.raises(ValueError, match="weights/00001.npy is missing"):
        load_model(_rewrite(good, tmp_path / "m1.keras", drop={"weights/00001.npy"}))
    slot = io.BytesIO()
    np.save(slot, np.zeros(1000, np.float32))
    with pytest.raises(ValueError, match=r"optimizer/momentums/00000\.npy.*expected"):
        load_model(_rewrite(good, tmp_path / "s1.keras", replace={"optimizer/momentums/00000.npy": slot.getvalue()}))
    # mistyped index fields and deeply nested JSON: ValueError, not AttributeError / KeyError /
    # RecursionError
    def bad_weights(idx):
        idx["weights"] = [1, 2]
    def no_optimizer(idx):
        del idx["compile_config"]["optimizer"]
    def slots_list(idx):
        idx["optimizer_state"]["slots"] = [1]
    for i, edit in enumerate((bad_weights, no_optimizer, slots_list)):
        with pytest.raises(ValueError, match=f"e{i}\\.keras"):
            load_model(_rewrite(good, tmp_path / f"e{i}.keras", edit_index=edit))
    deep = tmp_path / "deep.keras"
    with zipfile.ZipFile(deep, "w") as zf:
        zf.writestr("fastlstm.json", "[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="fastlstm.json unreadable"):
        load_model(deep)
    # corrupt deflate data
    cor = _rewrite(good, tmp_path / "c.keras", deflate={"weights/00001.npy"})
    raw = bytearray(cor.read_bytes())
    info = zipfile.ZipFile(cor).getinfo("weights/00001.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start:start + 8] = b"\xff" * 8
    cor.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"c\.keras"):
        load_model(cor)
    with pytest.raises(ValueError, match="is a folder"):
        load_model(tmp_path)
    assert load_model(good).predict(toy_data(4)[0], verbose=0).shape == (4, 1)   # the good one loads


def test_load_checks_the_architecture_before_allocating_it(tmp_path):
    # The index's weight shapes are checked against the architecture built with placeholders
    # (nothing allocated, no initializer run) before it is built for real: a 4 KB file whose
    # JSON asks for a 20-million-feature input or 10^6 units fails at once, small.
    import resource
    import time
    m = Sequential([LSTM(4, input_shape=(6, 3), return_sequences=True), LSTM(4), Dense(1)])
    m.compile(loss="mse", optimizer="adam")
    good = tmp_path / "good.keras"
    m.save(good)

    def units(n):
        def edit(idx):
            idx["model_config"]["config"]["layers"][0]["config"]["units"] = n
        return edit

    def features(n):
        def edit(idx):
            cfg = idx["model_config"]["config"]
            layer0 = cfg["layers"][0]["config"]
            for where in (cfg, layer0):
                for key in ("batch_input_shape", "build_input_shape", "input_shape"):
                    if isinstance(where.get(key), list):
                        where[key][-1] = n
        return edit

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i, edit in enumerate((units(1500), units(10 ** 6), features(20_000_000))):
        bad = _rewrite(good, tmp_path / f"big{i}.keras", edit_index=edit)
        assert bad.stat().st_size < 16 << 10
        start = time.perf_counter()
        with pytest.raises(ValueError, match=rf"big{i}\.keras: the weights do not fit the architecture"):
            load_model(bad)
        assert time.perf_counter() - start < 5.0  # (was 10-20 s and GBs: the layers were initialised)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024  # (KiB on Linux)
    assert grown_mib < 200, grown_mib  # (the 20-million-feature kernel alone would be 320 MB)
    # the good file still loads, its weights and seeded unit_forget_bias untouched by the dry build
    loaded = load_model(good)
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_saved_files_get_the_mode_open_would_give(tmp_path):
    # not mkstemp's owner-only 0600: 0666 less the umask for a new file, the old file's mode when
    # one is replaced (a model saved by one user can be served by another)
    m = small_model()
    old = os.umask(0o022)
    try:
        m.save(tmp_path / "a.keras")
        m.save_weights(tmp_path / "a.weights")
        assert (tmp_path / "a.keras").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "a.weights").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        m.save(tmp_path / "b.keras")
        assert (tmp_path / "b.keras").stat().st_mode & 0o777 == 0o600
        os.chmod(tmp_path / "a.keras", 0o640)
        m.save(tmp_path / "a.keras")  # replaced: keeps its mode
        assert (tmp_path / "a.keras").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert load_model(tmp_path / "a.keras").predict(toy_data(2)[0], verbose=0).shape == (2, 1)


def test_load_restores_the_optimizer_state_of_layers_frozen_after_training(tmp_path):
    # the optimizer keeps the state of every weight it was built with (as Keras's); the file
    # says which weights those are, so a model saved after freezing a layer loads with its
    # whole state and trains on as the original does, bit for bit
    x, y = toy_data(16)
    for train_frozen in (False, True):
        m = small_model()
        m.fit(x, y, epochs=1, verbose=0)
        m.layers[0].trainable = False        # frozen after training: the state is for 5 weights
        if train_frozen:
            m.fit(x, y, epochs=1, verbose=0)
        p = tmp_path / f"f{train_frozen}.keras"
        m.save(p)
        with zipfile.ZipFile(p) as z:
            assert json.loads(z.read("fastlstm.json"))["optimizer_state"]["variables"] == [0, 1, 2, 3, 4]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = load_model(p)
        for name, arrays in m.optimizer.get_state().items():
            if name == "iterations":
                assert loaded.optimizer.iterations == arrays
                continue
            for a, b in zip(arrays, loaded.optimizer.get_state()[name]):
                np.testing.assert_array_equal(a, b)
        m.fit(x, y, epochs=1, verbose=0, shuffle=False)
        loaded.fit(x, y, epochs=1, verbose=0, shuffle=False)
        for a, b in zip(m.get_weights(), loaded.get_weights()):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(m.optimizer.get_state()["momentums"], loaded.optimizer.get_state()["momentums"]):
            np.testing.assert_array_equal(a, b)
    # a file without that list (written before it existed) whose slots do not match the
    # trainable weights: the model loads, the state is left out with a warning
    old = _rewrite(p, tmp_path / "old.keras", edit_index=lambda idx: idx["optimizer_state"].pop("variables"))
    with pytest.warns(RuntimeWarning, match="optimizer state was not restored"):
        loaded = load_model(old)
    for a, b in zip(loaded.get_weights(), load_model(p).get_weights()):
        np.testing.assert_array_equal(a, b)
    loaded.fit(x, y, epochs=1, verbose=0)     # trains (a fresh optimizer state)
    for bad in ([0, 0, 1, 2, 3], [0, 1, 2, 3, 9], "all", [0, 1, 2, 3, True]):
        def edit(idx, bad=bad):
            idx["optimizer_state"]["variables"] = bad
        with pytest.raises(ValueError, match="corrupt model file .optimizer_state's variables"):
            load_model(_rewrite(p, tmp_path / "bad.keras", edit_index=edit))


def test_load_restores_a_slotless_optimizer_of_layers_frozen_after_training(tmp_path):
    # SGD without momentum has no slots: its state (iterations only) builds nothing in
    # set_state, and binding it to the recorded weights failed ("corrupt or unsupported
    # fastlstm model file (TypeError ...)"): the model could not be loaded at all
    x, y = toy_data(16)
    m = small_model()
    m.compile(loss="binary_crossentropy", optimizer=optimizers.SGD(0.1))
    m.fit(x, y, epochs=1, verbose=0)
    m.layers[0].trainable = False
    p = tmp_path / "sgd.keras"
    m.save(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(p)
    assert loaded.optimizer.iterations == m.optimizer.iterations
    for model in (m, loaded):
        model.fit(x, y, epochs=1, verbose=0, shuffle=False)
        model.layers[0].trainable = True        # unfrozen: the optimizer knows those weights
        model.fit(x, y, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_slotless_optimizer_keeps_its_iterations_through_load_and_save(tmp_path):
    # SGD without momentum: loaded, its state (iterations only) builds nothing until a step;
    # saved again before any step, the iterations were dropped (saved only when built)
    x, y = toy_data(16)
    m = small_model()
    m.compile(loss="binary_crossentropy", optimizer=optimizers.SGD(0.1))
    m.fit(x, y, epochs=1, verbose=0)
    assert m.optimizer.iterations == 1
    m.save(tmp_path / "a.keras")
    load_model(tmp_path / "a.keras").save(tmp_path / "b.keras")
    assert load_model(tmp_path / "b.keras").optimizer.iterations == 1


def test_save_and_load_weights(tmp_path):
    m = small_model()
    p = tmp_path / "w.weights"
    m.save_weights(p)
    m2 = small_model()
    m2.load_weights(p)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    other = Sequential([LSTM(3, input_shape=(6, 3)), Dense(1)])
    with pytest.raises(ValueError, match="do not fit"):
        other.load_weights(p)
    with pytest.raises(ValueError, match="only weights"):
        load_model(p)


def test_model_checkpoint_saves_loadable_models(tmp_path):
    x, y = toy_data(32)
    m = small_model()
    pattern = str(tmp_path / "ckpt-{epoch:02d}.keras")
    m.fit(x, y, epochs=2, verbose=0, callbacks=[callbacks.ModelCheckpoint(pattern,
                                                                          monitor="loss")])
    assert sorted(os.listdir(tmp_path)) == ["ckpt-01.keras", "ckpt-02.keras"]
    again = load_model(tmp_path / "ckpt-02.keras")
    np.testing.assert_array_equal(again.predict(x, verbose=0), m.predict(x, verbose=0))


# --------------------------------------------------------------------------- errors

def test_fit_before_compile():
    x, y = toy_data(8)
    m = Sequential([LSTM(2, input_shape=(6, 3)), Dense(1)])
    with pytest.raises(RuntimeError, match="compile"):
        m.fit(x, y)
    with pytest.raises(RuntimeError, match="compile"):
        m.evaluate(x, y)


def test_shape_errors_say_what_was_expected():
    x, y = toy_data(8)
    m = small_model()
    with pytest.raises(ValueError, match=r"expects inputs of shape \(None, 6, 3\)"):
        m.fit(x[:, :, :2], y, verbose=0)
    with pytest.raises(ValueError, match="expected 8 targets"):
        m.fit(x, y[:5], verbose=0)
    with pytest.raises(ValueError, match=r"does not match the model's output \(None, 1\)"):
        m.fit(x, np.ones((8, 3)), verbose=0)
    mc = Sequential([LSTM(2, input_shape=(6, 3)), Dense(4, activation="softmax")])
    mc.compile(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="sparse_categorical_crossentropy"):
        mc.fit(x, np.zeros(8, int), verbose=0)
    mc.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        mc.fit(x, np.full(8, 4), verbose=0)
    with pytest.raises(TypeError, match="numeric"):
        m.predict(np.array([["a"] * 3] * 6).reshape(1, 6, 3))


def test_unknown_strings_and_bad_arguments():
    m = Sequential([Dense(1, input_shape=(2,))])
    with pytest.raises(ValueError, match="optimizer"):
        m.compile(optimizer="adamm", loss="mse")
    with pytest.raises(ValueError, match="Unknown loss"):
        m.compile(optimizer="adam", loss="mean_sq")
    with pytest.raises(ValueError, match="Unknown metric"):
        m.compile(optimizer="adam", loss="mse", metrics=["acuracy"])
    m.compile(loss="mse")
    x = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(x, np.ones(4), batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        m.fit(x, np.ones(4), validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match="verbose"):
        m.fit(x, np.ones(4), verbose=3)
    with pytest.raises(ValueError, match="return_state"):
        Sequential([LSTM(2, return_state=True)])
    with pytest.raises(TypeError, match="fastlstm layer"):
        Sequential([lambda x: x])
    with pytest.raises(ValueError, match="already has a layer named"):
        Sequential([Dense(1, name="a"), Dense(1, name="a")])


def test_binary_accuracy_follows_from_logits():
    m = Sequential([Dense(1, input_shape=(2,))])
    m.compile(loss=losses.BinaryCrossentropy(from_logits=True), metrics=["accuracy"])
    assert m.compiled_metrics[0].threshold == 0.0


def test_variable_length_time_axis_and_integer_input():
    """Input((None,), dtype='int32') + return_sequences: targets are checked against the
    output shape of the actual inputs (the time axis is None in the model)."""
    rng = np.random.default_rng(0)
    m = Sequential([layers.Input((None,), dtype="int32"), layers.Embedding(10, 4),
                    LSTM(8, return_sequences=True), Dense(10)])
    m.compile(optimizer="adam", loss=losses.SparseCategoricalCrossentropy(from_logits=True))
    h = m.fit(rng.integers(0, 10, (4, 5)), rng.integers(0, 10, (4, 5)), verbose=0)
    assert np.isfinite(h.history["loss"][0])
    assert m.predict(rng.integers(0, 10, (2, 9)), verbose=0).shape == (2, 9, 10)
    with pytest.raises(ValueError, match="integer class labels"):
        m.fit(rng.integers(0, 10, (4, 5)), rng.integers(0, 10, (4, 6)), verbose=0)
    m2 = Sequential([layers.Input((None, 3)), LSTM(8, return_sequences=True), Dense(2)])
    m2.compile(loss="mse")
    m2.fit(np.ones((4, 5, 3)), np.ones((4, 5, 2)), verbose=0)
    with pytest.raises(ValueError, match="does not match"):
        m2.fit(np.ones((4, 5, 3)), np.ones((4, 4, 2)), verbose=0)


# ---------------------------------------------------------------- Keras 3 behaviours (session 11)

def _sigmoid_model(loss="binary_crossentropy", lr=0.0, metrics=("accuracy", "mae")):
    m = Sequential([Dense(1, activation="sigmoid", input_shape=(3,))], dtype="float64")
    m.compile(optimizer=optimizers.SGD(lr), loss=loss, metrics=list(metrics))
    return m


def test_metrics_are_not_weighted_by_sample_or_class_weight():
    # Keras 3: `metrics=` are updated without sample_weight (only the loss, and Keras's
    # weighted_metrics, use it); class_weight likewise.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3))
    y = (rng.random((10, 1)) > 0.5).astype(np.float64)
    sw = np.array([5, 0, 0, 1, 1, 1, 0, 0, 3, 1], np.float64)
    m = _sigmoid_model()
    plain = m.evaluate(x, y, verbose=0)
    weighted = m.evaluate(x, y, sample_weight=sw, verbose=0)
    p = m.predict(x, verbose=0)
    np.testing.assert_allclose(plain[1:], [np.mean((p > 0.5) == (y > 0.5)), np.mean(np.abs(y - p))],
                               rtol=1e-12)
    np.testing.assert_allclose(weighted[1:], plain[1:], rtol=1e-12)
    assert abs(weighted[0] - plain[0]) > 1e-3       # the loss is weighted
    h = m.fit(x, y, sample_weight=sw, class_weight={0: 10.0, 1: 1.0}, batch_size=10, epochs=1,
              verbose=0)
    np.testing.assert_allclose([h.history["accuracy"][0], h.history["mae"][0]], plain[1:], rtol=1e-12)


def test_masked_metrics_do_not_depend_on_the_batch_size():
    # The mean over the valid steps of every sequence, however the batches fall (Keras).
    rng = np.random.default_rng(1)
    N, T, V = 12, 6, 5
    x = np.zeros((N, T), np.int64)
    lens = rng.integers(1, T + 1, N)
    for i, n in enumerate(lens):
        x[i, :n] = rng.integers(1, V, n)
    y = rng.integers(0, 3, (N, T))
    m = Sequential([layers.Embedding(V, 4, mask_zero=True, input_shape=(T,)),
                    LSTM(3, return_sequences=True), Dense(3, activation="softmax")], dtype="float64")
    m.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    p = m.predict(x, verbose=0)
    valid = x != 0
    want = np.sum((np.argmax(p, -1) == y) & valid) / valid.sum()
    for bs in (12, 5, 4, 1):
        assert m.evaluate(x, y, batch_size=bs, verbose=0)[1] == pytest.approx(want, rel=1e-12), bs


def test_class_weight_does_not_reach_the_validation_split():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 3))
    y = (rng.random((20, 1)) > 0.5).astype(np.float64)
    m = _sigmoid_model(metrics=("accuracy",))
    sw = rng.random(20) + 0.5
    h = m.fit(x, y, validation_split=0.5, class_weight={0: 10.0, 1: 1.0}, sample_weight=sw,
              epochs=1, shuffle=False, verbose=0)
    # the validation half keeps its sample weights (as Keras splits them) but no class weights
    want = m.evaluate(x[10:], y[10:], sample_weight=sw[10:], verbose=0)
    np.testing.assert_allclose([h.history["val_loss"][0], h.history["val_accuracy"][0]], want, rtol=1e-12)
    # a sample weight of shape (N, 1) combines with class weights (it used to broadcast to (N, N))
    m.fit(x, y, sample_weight=sw[:, None], class_weight={0: 2.0, 1: 1.0}, verbose=0)


@pytest.mark.parametrize("wrapper", ["time_distributed", "bidirectional"])
def test_a_frozen_layer_inside_a_wrapper_is_not_trained(wrapper):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 5, 3))
    y = rng.standard_normal((8, 5, 2))
    if wrapper == "time_distributed":
        frozen = Dense(2, trainable=False)
        m = Sequential([LSTM(4, return_sequences=True, input_shape=(5, 3)), layers.TimeDistributed(frozen)],
                       dtype="float64")
        trained = m.layers[0]
    else:
        frozen = LSTM(3, return_sequences=True, trainable=False)
        m = Sequential([layers.Bidirectional(frozen, input_shape=(5, 3)),
                        layers.TimeDistributed(Dense(2))], dtype="float64")
        trained = m.layers[1]
    m.compile(optimizers.SGD(0.1), "mse")
    wrapped = m.layers[1] if wrapper == "time_distributed" else m.layers[0]
    before = [w.copy() for w in wrapped.get_weights()]
    other = [w.copy() for w in trained.get_weights()]
    m.fit(x, y, epochs=2, verbose=0)
    for a, b in zip(before, wrapped.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(other, trained.get_weights()))
    assert len(wrapped.trainable_weights) == 0 and len(wrapped.non_trainable_weights) == len(before)
    assert len(m.trainable_weights) == len(trained.weights)


def test_save_keeps_the_learning_rate_of_now(tmp_path):
    # A learning rate lowered by a callback (or by hand) after compile is what is saved.
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((8, 5, 3)), rng.standard_normal((8, 1))
    m = Sequential([LSTM(4, input_shape=(5, 3)), Dense(1)], dtype="float64")
    m.compile(optimizer=optimizers.Adam(0.01), loss="mse")
    m.fit(x, y, epochs=3, verbose=0,
          callbacks=[callbacks.ReduceLROnPlateau(monitor="loss", factor=0.1, patience=0, min_delta=10)])
    assert m.optimizer.learning_rate == pytest.approx(1e-4)
    m.save(tmp_path / "m.keras")
    assert load_model(tmp_path / "m.keras").optimizer.learning_rate == pytest.approx(1e-4)


def test_verbose_takes_bools_and_validation_freq_counts_epochs_from_zero():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 1))
    m = _sigmoid_model(loss="mse", metrics=())
    out = io.StringIO()
    with redirect_stdout(out):
        m.fit(x, y, verbose=False)
        m.evaluate(x, y, verbose=False)
        m.predict(x, verbose=False)
    assert out.getvalue() == ""
    with redirect_stdout(out):
        m.fit(x, y, verbose=True)
    assert "loss" in out.getvalue()
    with pytest.raises(ValueError, match="verbose"):
        m.fit(x, y, verbose="yes")
    # Keras validates after epochs whose 1-based number divides by validation_freq, counting
    # from epoch 0 also when training resumes at initial_epoch
    seen = []

    class Record(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, "val_loss" in logs))

    m.fit(x, y, epochs=5, initial_epoch=1, validation_freq=2, validation_data=(x, y), verbose=0,
          callbacks=[Record()])
    assert seen == [(1, True), (2, False), (3, True), (4, False)]


def test_fit_and_evaluate_refuse_empty_data():
    m = _sigmoid_model(loss="mse", metrics=("mae",))
    x, y = np.zeros((0, 3)), np.zeros((0, 1))
    with pytest.raises(ValueError, match="at least one sample to train"):
        m.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="at least one sample to evaluate"):
        m.evaluate(x, y, verbose=0)
    assert m.predict(x, verbose=0).shape == (0, 1)      # predict: an empty answer is fine


def test_pad_sequences_and_its_errors():
    seqs = [[1, 2, 3], [4], []]
    np.testing.assert_array_equal(utils.pad_sequences(seqs), [[1, 2, 3], [0, 0, 4], [0, 0, 0]])
    np.testing.assert_array_equal(utils.pad_sequences(seqs, maxlen=2, padding="post", truncating="post"),
                                  [[1, 2], [4, 0], [0, 0]])
    np.testing.assert_array_equal(utils.pad_sequences(seqs, maxlen=2), [[2, 3], [0, 4], [0, 0]])
    feats = utils.pad_sequences([np.ones((2, 3)), np.full((1, 3), 2.0)], dtype="float32", value=-1.0)
    assert feats.shape == (2, 2, 3) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats[1], [[-1, -1, -1], [2, 2, 2]])
    with pytest.raises(ValueError, match="sequences: expected a list of sequences, but item 0"):
        utils.pad_sequences([1, 2, 3])     # one flat sequence (Keras: ValueError too)
    with pytest.raises(ValueError, match="padding"):
        utils.pad_sequences(seqs, padding="middle")


@pytest.mark.parametrize("seqs, dtype, message", [
    ([[2**40, 1]], "int32", "outside the range of dtype int32"),      # Keras: OverflowError
    ([[-2**33]], "int32", "outside the range of dtype int32"),
    ([[3_000_000_000]], "int32", "outside the range of dtype int32"),
    ([[300]], "uint8", "outside the range of dtype uint8"),
    ([np.array([1, 2**40])], "int32", "outside the range"),
    ([[float("nan"), 1.0]], "int32", "NaN or infinite"),            # Keras: ValueError
    ([[1.0], [float("inf")]], "int64", "sequence 1 holds NaN or infinite"),
    # floats at the first value past the range (a float bound would round up to it and pass)
    ([np.array([2.0**31], np.float32)], "int32", "outside the range of dtype int32"),
    ([[2.0**63]], "int64", "outside the range of dtype int64"),
    ([[-2.0**31 - 1]], "int32", "outside the range of dtype int32"),
])
def test_pad_sequences_refuses_values_the_dtype_cannot_hold(seqs, dtype, message):
    # The assignment into the padded array would wrap them silently (2**40 -> 0, NaN -> -2**31).
    with pytest.raises(ValueError, match=message):
        utils.pad_sequences(seqs, dtype=dtype)


def test_pad_sequences_checks_only_what_it_keeps_and_still_casts_in_range_values():
    # Truncated-away values are not checked (as Keras converts only the kept part).
    np.testing.assert_array_equal(utils.pad_sequences([[2**40, 1, 2]], maxlen=2), [[1, 2]])
    out = utils.pad_sequences([[2**31 - 1, -2**31], [1.9, -1.9]])     # floats truncate, as Keras
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[2**31 - 1, -2**31], [1, -1]])
    np.testing.assert_array_equal(utils.pad_sequences([[2**40]], dtype="int64"), [[2**40]])
    f = utils.pad_sequences([[float("nan"), 1e300]], dtype="float64")
    assert np.isnan(f[0, 0]) and f[0, 1] == 1e300


@pytest.mark.parametrize("loss, units, labels, want", [
    ("mse", 4, "onehot", "CategoricalAccuracy"),             # Keras 3: from the shapes, not the loss
    ("binary_crossentropy", 4, "onehot", "CategoricalAccuracy"),
    ("categorical_crossentropy", 4, "onehot", "CategoricalAccuracy"),
    ("sparse_categorical_crossentropy", 4, "sparse", "SparseCategoricalAccuracy"),
    ("sparse_categorical_crossentropy", 4, "sparse1", "SparseCategoricalAccuracy"),  # labels (N, 1)
    ("binary_crossentropy", 1, "binary", "BinaryAccuracy"),
    ("mse", 1, "binary", "BinaryAccuracy"),
])
def test_accuracy_by_name_is_picked_from_the_shapes(loss, units, labels, want, tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((12, 3))
    cls = rng.integers(0, units if units > 1 else 2, 12)
    y = {"onehot": np.eye(units)[cls % units], "sparse": cls, "sparse1": cls[:, None],
         "binary": cls[:, None].astype(np.float64)}[labels]
    m = Sequential([Dense(units, activation="softmax" if units > 1 else "sigmoid", input_shape=(3,))],
                   dtype="float64")
    m.compile(optimizers.SGD(0.0), loss, metrics=["accuracy"])
    got = m.evaluate(x, y, verbose=0)[1]
    assert type(m.compiled_metrics[0]).__name__ == want
    p = m.predict(x, verbose=0)
    if want == "BinaryAccuracy":
        expect = np.mean((p > 0.5) == (y > 0.5))
    else:
        expect = np.mean(np.argmax(p, -1) == (np.argmax(y, -1) if labels == "onehot" else cls))
    assert got == pytest.approx(expect, rel=1e-12)
    m.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.evaluate(x, y, verbose=0)[1] == pytest.approx(expect, rel=1e-12)
    assert type(loaded.compiled_metrics[0]).__name__ == want


def test_accuracy_by_name_with_logits_keeps_the_zero_threshold():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 3))
    y = (rng.random((16, 1)) > 0.5).astype(np.float64)
    m = Sequential([Dense(1, input_shape=(3,))], dtype="float64")
    m.compile(optimizers.SGD(0.0), losses.BinaryCrossentropy(from_logits=True), metrics=["accuracy"])
    got = m.evaluate(x, y, verbose=0)[1]
    assert got == pytest.approx(np.mean((m.predict(x, verbose=0) > 0) == (y > 0.5)), rel=1e-12)


def test_pop_of_the_last_layer_leaves_an_unbuilt_model():
    m = models.Sequential([layers.Input((5, 3)), layers.LSTM(2)])
    m.pop()
    assert not m.built and m.output_shape is None
    with pytest.raises(ValueError, match="no layers"):
        m.predict(np.zeros((2, 5, 3)), verbose=0)
    m.add(layers.LSTM(3))                          # the Input's shape still builds it
    assert m.built and m.output_shape == (None, 3)


def test_config_errors_name_the_layer_and_the_argument():
    # a refused value in a model's config (e.g. a Keras model's) says which layer and which
    # argument: a config can hold several layers of one class
    config = {"name": "m", "layers": [
        {"class_name": "LSTM", "config": {"name": "lstm_a", "units": 3, "return_sequences": True}},
        {"class_name": "LSTM", "config": {"name": "lstm_b", "units": 3,
                                          "recurrent_activation": "hard_sigmoid"}}]}
    with pytest.raises(ValueError, match=r"^Sequential config, layer 1 \(LSTM 'lstm_b'\): "
                                         r"recurrent_activation: Unknown activation 'hard_sigmoid'"):
        Sequential.from_config(config)
    config["layers"][1]["config"] = {"name": "lstm_b", "units": 3, "kernel_initializer": "nope"}
    with pytest.raises(ValueError, match=r"layer 1 \(LSTM 'lstm_b'\): kernel_initializer: Unknown initializer 'nope'"):
        Sequential.from_config(config)
    with pytest.raises(ValueError, match=r"^kernel_regularizer: Unknown regularizer 'l3'"):
        layers.Dense(2, kernel_regularizer="l3")
    with pytest.raises(ValueError, match=r"^embeddings_initializer: "):
        layers.Embedding(4, 2, embeddings_initializer="nope")
    with pytest.raises(ValueError, match=r"^activation: "):
        layers.Activation("nope")


# --------------------------------------------------------------------------- data sources

def _source_pair(seed=0):
    x, y = toy_data(10)
    a, b = small_model(), small_model()
    b.set_weights(a.get_weights())
    for m in (a, b):
        m.compile(loss="binary_crossentropy", optimizer=optimizers.SGD(0.1), metrics=["accuracy"])
    return x, y, a, b


class _Indexed:
    """len() + indexing of batches, like keras.utils.PyDataset; records what it gives."""

    def __init__(self, x, y, batch_size, sw=None):
        self.x, self.y, self.sw, self.bs = x, y, sw, batch_size
        self.given, self.epochs_ended = [], 0

    def __len__(self):
        return -(-len(self.x) // self.bs)

    def __getitem__(self, i):
        self.given.append(i)
        s = slice(i * self.bs, (i + 1) * self.bs)
        return (self.x[s], self.y[s]) if self.sw is None else (self.x[s], self.y[s], self.sw[s])

    def on_epoch_end(self):
        self.epochs_ended += 1


class _Iterable:
    """Read once per pass, like a torch DataLoader (no indexing)."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.bs, self.passes = x, y, batch_size, 0

    def __iter__(self):
        self.passes += 1
        return ((self.x[i:i + self.bs], self.y[i:i + self.bs]) for i in range(0, len(self.x), self.bs))


def _same_weights(a, b):
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(p, q)


def test_fit_from_a_generator_a_dataset_or_an_iterable_as_from_arrays():
    # the same batches in the same order: the same History and weights, bit for bit
    x, y, a, b = _source_pair()
    ha = a.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    hb = b.fit(((x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)), epochs=1, verbose=0)
    assert ha.history == hb.history
    _same_weights(a, b)
    x, y, a, b = _source_pair()
    ha = a.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, validation_data=(x[:6], y[:6]))
    ds = _Indexed(x, y, 4)
    hb = b.fit(ds, epochs=3, shuffle=False, verbose=0, validation_data=_Indexed(x[:6], y[:6], 4))
    assert ha.history == hb.history and ds.given == [0, 1, 2] * 3 and ds.epochs_ended == 3
    _same_weights(a, b)
    x, y, a, b = _source_pair()
    a.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    it = _Iterable(x, y, 4)
    b.fit(it, epochs=2, verbose=0)
    assert it.passes == 2
    _same_weights(a, b)
    # steps_per_epoch: each epoch takes the generator's next batches (it is one stream): the
    # weights of training on all of them in one go
    x, y, a, b = _source_pair()
    starts = [0, 4, 0, 4, 0, 4]
    a.fit(np.concatenate([x[i:i + 4] for i in starts]), np.concatenate([y[i:i + 4] for i in starts]),
          batch_size=4, shuffle=False, verbose=0)
    hb = b.fit(((x[i:i + 4], y[i:i + 4]) for i in starts), epochs=2, steps_per_epoch=3, verbose=0)
    assert len(hb.history["loss"]) == 2
    _same_weights(a, b)


def test_fit_from_a_dataset_shuffles_its_batch_order_and_weighs_its_batches():
    x, y, a, b = _source_pair()
    ds = _Indexed(x, y, 4)
    a.fit(ds, epochs=4, verbose=0)                # shuffle=True: a new batch order per epoch
    passes = [ds.given[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(p) == [0, 1, 2] for p in passes) and len({tuple(p) for p in passes}) > 1
    # sample weights from the batches, class weights from fit: as with arrays
    x, y, a, b = _source_pair()
    sw = np.linspace(0.5, 2.0, 10)
    ha = a.fit(x, y, sample_weight=sw, class_weight={0: 0.3, 1: 2.0}, batch_size=4, shuffle=False, verbose=0)
    hb = b.fit(_Indexed(x, y, 4, sw), class_weight={0: 0.3, 1: 2.0}, shuffle=False, verbose=0)
    assert ha.history == hb.history
    _same_weights(a, b)


def test_a_data_source_with_array_validation_data():
    # the arrays are batched by batch_size (default 32) although x's batches are the source's
    # (an unset batch_size used to reach the validation batching: a TypeError)
    x, y, a, b = _source_pair()
    ha = a.fit(x, y, batch_size=4, shuffle=False, verbose=0, validation_data=(x[:6], y[:6]))
    hb = b.fit(((x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)), verbose=0,
               validation_data=(x[:6], y[:6]))
    assert ha.history == hb.history


def test_a_generator_that_runs_out_stops_training_with_a_warning():
    x, y, a, _ = _source_pair()
    with pytest.warns(UserWarning, match="the data ran out at epoch 2"):
        h = a.fit(((x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)), epochs=3, verbose=0)
    assert len(h.history["loss"]) == 1
    with pytest.warns(UserWarning, match="ran out after 1 of the 2 steps of epoch 2"):
        h = a.fit(((x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)), epochs=3, steps_per_epoch=2,
                  verbose=0)
    assert len(h.history["loss"]) == 2


def test_evaluate_and_predict_from_data_sources_as_from_arrays():
    x, y, a, _ = _source_pair()
    want = a.evaluate(x, y, batch_size=4, verbose=0)
    assert a.evaluate(((x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)), verbose=0) == want
    assert a.evaluate(_Indexed(x, y, 4), verbose=0) == want
    assert a.evaluate(_Iterable(x, y, 4), verbose=0) == want
    assert a.evaluate(_Indexed(x, y, 4), steps=2, verbose=0) == a.evaluate(x[:8], y[:8], batch_size=4, verbose=0)
    pred = a.predict(x, batch_size=4, verbose=0)
    np.testing.assert_array_equal(a.predict((x[i:i + 4] for i in range(0, 10, 4)), verbose=0), pred)
    np.testing.assert_array_equal(a.predict(_Indexed(x, y, 4), verbose=0), pred)  # (y unused)
    np.testing.assert_array_equal(a.predict(_Iterable(x, y, 4), steps=2, verbose=0), pred[:8])
    endless = ((x[:4], y[:4]) for _ in iter(int, 1))
    assert a.evaluate(endless, steps=3, verbose=0) == a.evaluate(np.concatenate([x[:4]] * 3),
                                                                 np.concatenate([y[:4]] * 3), batch_size=4, verbose=0)


def test_what_counts_as_a_data_source():
    import array
    kind = models._source_kind
    assert [kind(v) for v in (np.ones(3), [[1.0]], (1.0,), array.array("f", [1.0]),
                              memoryview(b"ab"), None, 3.0)] == [None] * 7
    assert kind(iter([])) == kind(v for v in ()) == "iterator"
    assert kind(_Indexed(np.ones((2, 6, 3)), np.ones(2), 1)) == "indexed"
    assert kind(_Iterable(np.ones((2, 6, 3)), np.ones(2), 1)) == "iterable"


def test_data_source_argument_errors():
    x, y, a, _ = _source_pair()
    gen = lambda: ((x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4))  # noqa: E731
    with pytest.raises(ValueError, match="^y: must not be given when x is a generator or dataset"):
        a.fit(gen(), y, verbose=0)
    with pytest.raises(ValueError, match="^sample_weight: must not be given"):
        a.evaluate(gen(), sample_weight=np.ones(10), verbose=0)
    with pytest.raises(ValueError, match="^validation_split: only for array data"):
        a.fit(gen(), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="the dataset has no batches"):
        a.fit(_Indexed(x[:0], y[:0], 4), verbose=0)
    with pytest.raises(ValueError, match="gave no batch to evaluate on"):
        a.evaluate(iter([]), verbose=0)
    with pytest.raises(ValueError, match="must be x, .x, y. or .x, y, sample_weight.; got a tuple of 4"):
        a.fit(iter([(x, y, None, None)]), verbose=0)
    with pytest.raises(ValueError, match=r"x \(batch 1 of the pass\): the model expects inputs"):
        a.fit(iter([(x[:4], y[:4]), (x[:4, :, :2], y[:4])]), verbose=0)
    with pytest.raises(ValueError, match=r"x \(batch 0 of the pass\) y: targets are required"):
        a.fit(iter([x[:4]]), verbose=0)


def test_fit_from_a_torch_dataloader():
    # a torch DataLoader (an iterable of [x, y] tensor batches, read once per epoch)
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset
    x, y, a, b = _source_pair()
    ha = a.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=4)
    hb = b.fit(loader, epochs=2, verbose=0)
    assert ha.history == hb.history
    _same_weights(a, b)
    np.testing.assert_array_equal(b.predict(loader, verbose=0), b.predict(x, verbose=0))


def test_steps_per_epoch_goes_on_through_a_dataset_or_an_iterable_as_through_arrays():
    # the next epoch takes the next batches of the pass (not the first ones again); the
    # dataset's on_epoch_begin / on_epoch_end are called every epoch all the same
    x, y, a, b = _source_pair()
    ha = a.fit(x, y, batch_size=4, epochs=3, steps_per_epoch=2, shuffle=False, verbose=0)
    ds = _Indexed(x, y, 4)
    ds.epochs_begun = 0
    ds.on_epoch_begin = lambda: setattr(ds, "epochs_begun", ds.epochs_begun + 1)
    hb = b.fit(ds, epochs=3, steps_per_epoch=2, shuffle=False, verbose=0)
    assert ds.given == [0, 1, 2, 0, 1] and ds.epochs_begun == ds.epochs_ended == 3
    assert ha.history == hb.history
    _same_weights(a, b)
    x, y, a, b = _source_pair()
    a.fit(x, y, batch_size=4, epochs=3, steps_per_epoch=2, shuffle=False, verbose=0)
    it = _Iterable(x, y, 4)
    b.fit(it, epochs=3, steps_per_epoch=2, verbose=0)
    assert it.passes == 2
    _same_weights(a, b)


def test_validation_from_a_source_is_in_order_limited_by_validation_steps_and_after_on_epoch_end():
    # as arrays with validation_steps: the first validation_steps batches, unshuffled even
    # with shuffle=True; the training dataset's on_epoch_end comes before the validation
    x, y, a, b = _source_pair()
    ha = a.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
               validation_data=(x, y), validation_steps=2)
    events = []
    train, val = _Indexed(x, y, 4), _Indexed(x, y, 4)
    train.on_epoch_end = lambda: events.append(("train on_epoch_end", len(val.given)))
    hb = b.fit(train, epochs=2, shuffle=False, verbose=0, validation_data=val,
               validation_steps=2)
    assert ha.history == hb.history and val.given == [0, 1, 0, 1]
    assert events == [("train on_epoch_end", 0), ("train on_epoch_end", 2)]
    val = _Indexed(x, y, 4)
    b.fit(_Indexed(x, y, 4), epochs=3, shuffle=True, verbose=0, validation_data=val)
    assert val.given == [0, 1, 2] * 3


def test_sources_that_give_no_data_are_errors():
    x, y, a, _ = _source_pair()
    gen = lambda n: ((x[i:i + 4], y[i:i + 4]) for i in range(0, 4 * n, 4))  # noqa: E731
    with pytest.raises(ValueError, match="^x: the data source gave no batch to train on"):
        a.fit(gen(0), verbose=0)
    with pytest.raises(ValueError, match=r"batch 1 of the pass\): a batch of 0 samples"):
        a.fit(iter([(x[:4], y[:4]), (x[:0], y[:0])]), verbose=0)
    with pytest.raises(ValueError, match="a batch of 0 samples"):
        a.evaluate(iter([(x[:0], y[:0])]), verbose=0)
    # a finite validation generator without validation_steps is read once: the next
    # validation has nothing (an error naming the remedy, not an AttributeError)
    with pytest.raises(ValueError, match="^validation_data: the data source gave no batch at epoch 2"):
        a.fit(x, y, epochs=2, verbose=0, validation_data=gen(2))
    with pytest.raises(ValueError, match="^validation_data: expected at least one sample"):
        a.fit(x, y, verbose=0, validation_data=(x[:0], y[:0]))


def test_sequences_of_samples_are_still_array_data():
    import collections
    x, y, a, b = _source_pair()
    assert models._source_kind(collections.deque(x)) is None
    assert models._source_kind(range(3)) is None
    ha = a.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    hb = b.fit(collections.deque(x), y, batch_size=4, shuffle=False, verbose=0)
    assert ha.history == hb.history


@pytest.mark.parametrize("stack, wanted", [
    # (the layers, whether each LSTM's backward computes dx)
    ("lstm,lstm,dense", [False, True]),
    ("masking,lstm,dense", [False]),
    ("embedding,lstm,dense", [True]),
    ("frozen_embedding,lstm,dense", [False]),
    ("bidirectional,dense", [False, False]),
])
def test_backward_skips_the_input_gradient_nothing_uses(stack, wanted, monkeypatch):
    # A layer's input gradient is computed only when a layer before it trains: the first
    # LSTM over data skips its dx product. Weights after a step are the same bits as with dx.
    calls = []
    real = layers.ops.lstm_backward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("need_dx", True))
        return real(*args, **kwargs)

    def build():
        utils.set_random_seed(3)
        names = stack.split(",")
        made = []
        for i, name in enumerate(names):
            if name == "lstm":       # (sequences out when another LSTM follows)
                made.append(LSTM(6, return_sequences=names[i + 1] == "lstm"))
            elif name == "dense":
                made.append(Dense(1))
            elif name == "masking":
                made.append(layers.Masking(0.0))
            elif name in ("embedding", "frozen_embedding"):
                made.append(layers.Embedding(9, 3, trainable=name == "embedding"))
            elif name == "bidirectional":
                made.append(layers.Bidirectional(LSTM(5)))
        m = Sequential([layers.Input((4,) if "embedding" in stack else (4, 3))] + made)
        m.compile(loss="mse", optimizer=optimizers.SGD(0.1))
        return m

    rng = np.random.default_rng(0)
    x = (rng.integers(1, 9, (8, 4)) if "embedding" in stack
         else rng.standard_normal((8, 4, 3)).astype(np.float32))
    y = rng.standard_normal((8, 1)).astype(np.float32)
    monkeypatch.setattr(layers.ops, "lstm_backward", spy)
    m = build()
    m.train_on_batch(x, y)
    assert calls == wanted[::-1]
    # the same step with every input gradient computed
    calls.clear()
    monkeypatch.setattr(layers.ops, "lstm_backward",
                        lambda *a, **k: real(*a, **dict(k, need_dx=True)))
    m2 = build()
    m2.train_on_batch(x, y)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        assert np.array_equal(a, b)
    # after the step every layer's own backward gives its input gradient again
    assert all(l._input_grad_wanted for l in m.layers)
    first = next(l for l in m.layers if isinstance(l, (LSTM, layers.Bidirectional)))
    xin = rng.standard_normal((2, 4, 3)).astype(np.float32)
    out = first.forward(xin, training=True)
    dx = first.backward(np.ones_like(out))
    assert dx is not None and dx.shape == xin.shape


@pytest.mark.parametrize("stack", ["lstm_seq_dense", "dense_first", "td_dense"])
def test_train_on_batch_with_no_steps(stack):
    # Sequences of 0 steps: Dense's weight gradient over no rows is zeros (NumPy's product
    # gave them; the kernels' product was reached through a.reshape(-1, 0), refused)
    utils.set_random_seed(0)
    if stack == "lstm_seq_dense":
        made, y = [LSTM(4, return_sequences=True), Dense(2)], np.zeros((2, 0, 2), np.float32)
    elif stack == "dense_first":
        made, y = [Dense(4), LSTM(2)], np.zeros((2, 2), np.float32)
    else:
        made, y = [Dense(4), layers.TimeDistributed(Dense(2))], np.zeros((2, 0, 2), np.float32)
    m = Sequential([layers.Input((None, 3))] + made)
    m.compile(loss="mse", optimizer="sgd")
    before = m.get_weights()
    assert np.isfinite(m.train_on_batch(np.zeros((2, 0, 3), np.float32), y))
    assert all(np.isfinite(w).all() for w in m.get_weights())
    assert len(before) == len(m.get_weights())


@pytest.mark.parametrize("B, T, X", [(2, 5, 3), (4, 4, 4)])
def test_output_mask_of_lower_rank_than_the_loss(B, T, X):
    # Outputs (batch, time, X, classes) with a (batch, time) output mask
    # (TimeDistributed(RepeatVector)): the loss is the mean over the entries of the unmasked
    # steps, as when the model folded the mask into the weights; the mask is not broadcast
    # against (time, X) (an error for batch != time, the wrong axes for batch == time)
    utils.set_random_seed(0)
    m = Sequential([layers.Input((T,), dtype="int32"), layers.Embedding(5, 4, mask_zero=True),
                    LSTM(4, return_sequences=True), layers.TimeDistributed(layers.RepeatVector(X)),
                    Dense(3)])
    m.compile(loss="mse", optimizer="sgd")
    rng = np.random.default_rng(0)
    x = rng.integers(1, 5, (B, T))
    x[:, -2:] = 0
    x[0, 1:] = 0
    y = rng.standard_normal((B, T, X, 3))
    sw = rng.uniform(0.5, 2.0, B)
    per = ((m.predict(x, verbose=0).astype(np.float64) - y) ** 2).mean(axis=-1)
    keep = np.broadcast_to((x != 0)[..., None], per.shape)
    assert m.evaluate(x, y, verbose=0) == pytest.approx(per[keep].mean(), rel=1e-6)
    weighted = (per * sw[:, None, None])[keep].sum() / keep.sum()
    assert m.evaluate(x, y, sample_weight=sw, verbose=0) == pytest.approx(weighted, rel=1e-6)


@pytest.mark.parametrize("first", ["dense", "time_distributed"])
def test_a_first_dense_layer_skips_its_input_gradient(first, monkeypatch):
    # Dense (alone or inside TimeDistributed) as the first layer: its backward computes the
    # weight gradient but not dx (nothing before it trains); the layer after it still gets one.
    utils.set_random_seed(0)
    front = Dense(5) if first == "dense" else layers.TimeDistributed(Dense(5))
    m = Sequential([layers.Input((4, 3)), front, LSTM(3), Dense(1)])
    m.compile(loss="mse", optimizer="sgd")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 4, 3)).astype(np.float32), rng.standard_normal((6, 1))
    shapes = []
    real = layers._matmul
    monkeypatch.setattr(layers, "_matmul", lambda a, b, bias=None: (shapes.append(b.shape),
                                                                     real(a, b, bias))[1])
    m.train_on_batch(x, y)
    # forward: first (3 -> 5), last (3 -> 1); backward: last dW and dx, first dW only
    assert shapes == [(3, 5), (3, 1), (6, 1), (1, 3), (24, 5)]
    assert all(l._input_grad_wanted for l in m.layers)


# --------------------------------------------------------------------------- predict's packing

def _packing_model():
    utils.set_random_seed(3)
    m = Sequential([layers.Input((7, 5)), LSTM(16, return_sequences=True),
                    layers.Bidirectional(LSTM(9, return_sequences=True)),
                    layers.TimeDistributed(Dense(4))])
    return m


def _spy_packing(monkeypatch):
    """Record the weights ops.pack_weights packs and the `packed` of each lstm_forward."""
    from fastlstm import ops
    packs, forwards = [], []
    real_pack, real_forward = ops.pack_weights, ops.lstm_forward

    def pack(kernel, recurrent_kernel):
        packs.append(recurrent_kernel.shape)
        return real_pack(kernel, recurrent_kernel)

    def forward(*args, **kwargs):
        forwards.append(kwargs.get("packed"))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(ops, "pack_weights", pack)
    monkeypatch.setattr(ops, "lstm_forward", forward)
    return packs, forwards


def _lstms(model):
    return list(layers._lstm_layers(model.layers))


def test_predict_packs_the_lstm_weights_once(monkeypatch):
    # predict over several batches packs each LSTM's weights once (wrapped ones too), every
    # batch's forward takes them, and the outputs are the same bits as unpacked calls
    m = _packing_model()
    x = np.random.default_rng(4).standard_normal((10, 7, 5)).astype(np.float32)
    expected = np.concatenate([m(x[i:i + 4]) for i in range(0, 10, 4)])
    packs, forwards = _spy_packing(monkeypatch)
    out = m.predict(x, batch_size=4, verbose=0)
    assert sorted(packs) == [(9, 36), (9, 36), (16, 64)]
    assert len(forwards) == 9 and all(p is not None for p in forwards)
    np.testing.assert_array_equal(out, expected)
    assert all(layer._inference_packed is None for layer in _lstms(m))
    # a change of the weights between calls is seen by the next one
    lstm = _lstms(m)[0]
    lstm.recurrent_kernel[...] *= 0.5
    np.testing.assert_array_equal(m.predict(x, batch_size=4, verbose=0),
                                  np.concatenate([m(x[i:i + 4]) for i in range(0, 10, 4)]))
    assert not np.array_equal(m.predict(x, batch_size=4, verbose=0), expected)


class _ChangesWeightsMidPass(callbacks.Callback):
    """Halves the first LSTM's recurrent_kernel after each predict and test batch."""

    def on_predict_batch_end(self, batch, logs=None):
        self.model.layers[0].recurrent_kernel[...] *= 0.5

    on_test_batch_end = on_predict_batch_end


def test_predict_packing_and_callbacks(monkeypatch):
    # A callback that acts between batches may change the weights there: then each batch packs
    # its own (and sees the change); callbacks without per-batch hooks, and fastlstm's own,
    # leave the packing on. One batch gains nothing: no packing.
    x = np.random.default_rng(5).standard_normal((6, 7, 5)).astype(np.float32)
    packs, forwards = _spy_packing(monkeypatch)
    m = _packing_model()
    out = m.predict(x, batch_size=2, verbose=0, callbacks=[_ChangesWeightsMidPass()])
    assert packs == [] and len(forwards) == 9 and all(p is None for p in forwards)
    fresh = _packing_model()
    expected = []
    for i in range(0, 6, 2):
        expected.append(fresh(x[i:i + 2]))
        fresh.layers[0].recurrent_kernel[...] *= 0.5
    np.testing.assert_array_equal(out, np.concatenate(expected))
    hook = callbacks.LambdaCallback(on_predict_batch_begin=lambda batch, logs: None)
    m.predict(x, batch_size=8, verbose=0)
    m.predict(x, batch_size=2, verbose=0, callbacks=[hook])
    assert packs == []
    m.predict(x, batch_size=2, verbose=0,
              callbacks=[callbacks.Callback(), callbacks.EarlyStopping(), callbacks.History()])
    assert len(packs) == 3


def test_evaluate_and_validation_pack_once(monkeypatch):
    # evaluate and fit's validation pass pack the LSTM weights once too (same loss and
    # metrics bits), not with a callback acting at the test batches
    x = np.random.default_rng(7).standard_normal((12, 7, 5)).astype(np.float32)
    y = np.random.default_rng(8).standard_normal((12, 7, 4)).astype(np.float32)
    m = _packing_model()
    m.compile(loss="mse", optimizer=optimizers.SGD(0.01), metrics=["mae"])
    unpacked = m.evaluate(x, y, batch_size=4, verbose=0, return_dict=True,
                          callbacks=[callbacks.LambdaCallback(on_test_batch_end=lambda b, l: None)])
    packs, forwards = _spy_packing(monkeypatch)
    assert m.evaluate(x, y, batch_size=4, verbose=0, return_dict=True) == unpacked
    assert len(packs) == 3 and len(forwards) == 9 and all(p is not None for p in forwards)
    del packs[:]
    m.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y),
          callbacks=[callbacks.EarlyStopping(patience=5)])
    assert len(packs) == 6                    # each epoch's validation pass: 3 LSTMs once
    del packs[:]
    m.fit(x, y, batch_size=4, epochs=1, verbose=0, validation_data=(x, y),
          callbacks=[_ChangesWeightsMidPass()])
    assert packs == []
    assert all(layer._inference_packed is None for layer in _lstms(m))


def test_predict_packing_ends_with_an_error():
    # the packed weights are dropped however predict ends
    m = _packing_model()
    x = np.random.default_rng(6).standard_normal((4, 7, 5)).astype(np.float32)

    seen = []

    def batches():
        yield x
        seen.append([layer._inference_packed is not None for layer in _lstms(m)])
        yield x
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        m.predict(batches(), verbose=0)
    assert seen == [[True, True, True]]
    assert all(layer._inference_packed is None for layer in _lstms(m))
