"""Against Keras itself (optional: runs only where keras and torch are installed, on Keras's
torch backend, which tests/conftest.py selects where KERAS_BACKEND is unset; the `test` extra
installs neither, CI's .ci/run installs both).

The same weights go into a Keras 3 model (torch backend) and a fastlstm model; outputs,
the loss and the weights after one SGD step must agree to float32 rounding (1e-5
relative: both compute in float32, with sums in a different order).
"""

import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("these comparisons are written for Keras's torch backend "
                "(KERAS_BACKEND=torch)", allow_module_level=True)

from fastlstm import layers as fl, models as fm, optimizers as fo  # noqa: E402

TOL = 1e-5
# Keras 3.15's Variable.__array__ triggers NumPy 2's copy-keyword DeprecationWarning.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def build_pair(padding, go_backwards, return_sequences, bidirectional, T=7, I=3, H=5,
               zero_output_for_mask=False):
    kw = dict(return_sequences=return_sequences, go_backwards=go_backwards,
              zero_output_for_mask=zero_output_for_mask)
    kl = keras.layers.LSTM(H, **kw)
    ours = fl.LSTM(H, **kw)
    if bidirectional:
        kl, ours = keras.layers.Bidirectional(kl), fl.Bidirectional(ours)
    inp = keras.Input((T, I))
    h = keras.layers.Masking(0.0)(inp) if padding else inp
    h = kl(h)
    if return_sequences:
        h = keras.layers.TimeDistributed(keras.layers.Dense(1))(h)
    else:
        h = keras.layers.Dense(1)(h)
    km = keras.Model(inp, h)
    first = fl.Masking(0.0, input_shape=(T, I)) if padding else fl.Input((T, I))
    head = fl.TimeDistributed(fl.Dense(1)) if return_sequences else fl.Dense(1)
    ours_m = fm.Sequential([first, ours, head])
    return km, ours_m


CASES = [(p, gb, rs, bi) for p in (None, "post", "pre") for gb in (False, True)
         for rs in (False, True) for bi in (False, True) if not (gb and bi)]


@pytest.mark.parametrize("padding,go_backwards,return_sequences,bidirectional", CASES)
def test_outputs_loss_and_one_sgd_step_match_keras(padding, go_backwards, return_sequences,
                                                   bidirectional):
    _outputs_loss_and_one_sgd_step(padding, go_backwards, return_sequences, bidirectional)


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_zero_output_for_mask_matches_keras(padding, go_backwards, return_sequences):
    # zeros at masked steps; without return_sequences Keras's output is the last processed
    # step's, so zeros for a row masked there (post padding; pre padding with go_backwards),
    # and one row of no valid step at all
    _outputs_loss_and_one_sgd_step(padding, go_backwards, return_sequences, False,
                                   zero_output_for_mask=True, lengths=[7, 4, 0, 2])


def _outputs_loss_and_one_sgd_step(padding, go_backwards, return_sequences, bidirectional,
                                   zero_output_for_mask=False, lengths=(7, 4, 1, 2)):
    rng = np.random.default_rng(0)
    B, T, I = 4, 7, 3
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    for b, L in enumerate(lengths):
        if padding == "post":
            x[b, L:] = 0
        elif padding == "pre":
            x[b, :T - L] = 0
    y = rng.standard_normal((B, T, 1) if return_sequences else (B, 1)).astype(np.float32)
    km, om = build_pair(padding, go_backwards, return_sequences, bidirectional,
                        zero_output_for_mask=zero_output_for_mask)
    w = [rng.standard_normal(a.shape).astype(np.float32) * 0.5 for a in km.get_weights()]
    km.set_weights(w)
    om.set_weights(w)
    assert rel(om.predict(x, verbose=0), km.predict(x, verbose=0)) <= TOL

    km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    om.compile(optimizer=fo.SGD(0.1), loss="mse")
    k_loss = float(km.train_on_batch(x, y))
    o_loss = float(om.train_on_batch(x, y))
    assert abs(o_loss - k_loss) <= TOL * abs(k_loss)
    for a, b in zip(om.get_weights(), km.get_weights()):
        assert rel(a, b) <= TOL


def test_embedding_mask_zero_sparse_softmax_adam():
    rng = np.random.default_rng(1)
    x = np.array([[3, 1, 4, 0, 0], [5, 2, 6, 5, 3], [2, 0, 0, 0, 0]])
    y = np.array([1, 0, 2])
    km = keras.Sequential([keras.Input((5,)), keras.layers.Embedding(7, 4, mask_zero=True),
                           keras.layers.LSTM(6), keras.layers.Dense(3, activation="softmax")])
    om = fm.Sequential([fl.Embedding(7, 4, mask_zero=True, input_shape=(5,)), fl.LSTM(6),
                        fl.Dense(3, activation="softmax")])
    w = [rng.standard_normal(a.shape).astype(np.float32) * 0.5 for a in km.get_weights()]
    km.set_weights(w)
    om.set_weights(w)
    km.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
               metrics=["accuracy"])
    om.compile(optimizer=fo.Adam(0.01), loss="sparse_categorical_crossentropy",
               metrics=["accuracy"])
    for _ in range(3):
        kl = km.train_on_batch(x, y)
        ol = om.train_on_batch(x, y)
        assert abs(ol[0] - kl[0]) <= TOL * abs(kl[0])
    for a, b in zip(om.get_weights(), km.get_weights()):
        assert rel(a, b) <= 1e-4     # three Adam steps: rounding differences grow a little
    assert os.environ.get("KERAS_BACKEND", "torch") == "torch"


def _keras_layers():
    return [keras.layers.LSTM(4, return_sequences=True, go_backwards=True, dropout=0.25),
            keras.layers.Dense(3, activation="tanh"), keras.layers.Dropout(0.1),
            keras.layers.Embedding(10, 3, mask_zero=True), keras.layers.Flatten(),
            keras.layers.InputLayer(shape=(3, 4)), keras.layers.Masking(-1.0),
            keras.layers.Activation("relu"), keras.layers.Bidirectional(keras.layers.LSTM(3)),
            keras.layers.TimeDistributed(keras.layers.Dense(3)), keras.layers.RepeatVector(4),
            keras.layers.GlobalAveragePooling1D(keepdims=True), keras.layers.GlobalMaxPooling1D()]


@pytest.mark.parametrize("kl", _keras_layers(), ids=lambda kl: type(kl).__name__)
def test_layers_read_keras_get_config(kl):
    """A Keras 3.15 layer's get_config (dtype policies, initializer configs with input_axes,
    quantization_config, ...) gives the same fastlstm layer."""
    cfg = kl.get_config()
    ours = getattr(fl, type(kl).__name__).from_config(cfg)
    mine = ours.get_config()
    for key, value in cfg.items():
        if key in ("units", "rate", "activation", "return_sequences", "go_backwards", "dropout",
                   "input_dim", "output_dim", "mask_zero", "mask_value", "merge_mode", "name",
                   "n", "keepdims"):
            assert mine[key] == value, key
    if "keepdims" in cfg:           # the pooling layers write data_format as Keras does
        assert mine["data_format"] == cfg["data_format"] == "channels_last"
    if "dtype" in mine and not isinstance(kl, keras.layers.InputLayer):
        assert mine["dtype"] == "float32"


def test_sequential_from_keras_config_and_weights_predicts_as_keras():
    km = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(6, return_sequences=True),
                           keras.layers.LSTM(4), keras.layers.Dense(2, activation="softmax")])
    m = fm.Sequential.from_config(km.get_config())
    assert [type(layer).__name__ for layer in m.layers] == ["LSTM", "LSTM", "Dense"]
    m.set_weights([np.asarray(w) for w in km.get_weights()])
    x = np.random.default_rng(0).standard_normal((7, 5, 3)).astype(np.float32)
    assert rel(m.predict(x, verbose=0), km.predict(x, verbose=0)) < TOL


@pytest.mark.parametrize("shape,axes", [((3, 5, 7), ([0, 1], [-1])), ((3, 5, 7), ([2], [0, 1])),
                                        ((4, 6), (None, None)), ((2, 3, 4, 5), (None, [0]))])
def test_fans_and_variance_scaling_axes_match_keras(shape, axes):
    from fastlstm import initializers as fi
    from keras.src.initializers.random_initializers import compute_fans
    assert fi.compute_fans(shape, *axes) == compute_fans(shape, *axes)
    ki = keras.initializers.VarianceScaling(2.0, "fan_avg", "uniform", input_axes=axes[0],
                                            output_axes=axes[1])
    ours = fi.get({"class_name": "VarianceScaling", "config": ki.get_config()})
    w_keras, w_ours = np.asarray(ki(shape)), ours(shape)
    # same distribution bounds: the limit sqrt(3 scale / fan_avg) from the same fans
    fan_in, fan_out = compute_fans(shape, *axes)
    limit = np.sqrt(3 * 2.0 / ((fan_in + fan_out) / 2))
    for w in (w_keras, w_ours):
        assert np.abs(w).max() <= limit * (1 + 1e-6) and np.abs(w).max() > 0.5 * limit


def test_fit_from_a_keras_pydataset_and_a_generator_as_keras():
    # a keras.utils.PyDataset (len + indexing of batches) and a Python generator as fit's x:
    # the same weights as Keras trained from the same data (SGD, no shuffling)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 7, 3)).astype(np.float32)
    y = rng.standard_normal((10, 1)).astype(np.float32)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]

    for source in ("pydataset", "generator"):
        km, om = build_pair(None, False, False, False)
        w = [rng.standard_normal(a.shape).astype(np.float32) * 0.5 for a in km.get_weights()]
        km.set_weights(w)
        om.set_weights(w)
        km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        om.compile(optimizer=fo.SGD(0.1), loss="mse")
        for m in (km, om):
            if source == "pydataset":
                hist = m.fit(Batches(), epochs=2, shuffle=False, verbose=0).history
            else:
                gen = ((x[i:i + 4], y[i:i + 4]) for i in [0, 4, 8, 0, 4, 8])
                hist = m.fit(gen, epochs=2, steps_per_epoch=3, shuffle=False, verbose=0).history
            assert len(hist["loss"]) == 2
        for a, b in zip(om.get_weights(), km.get_weights()):
            assert rel(a, b) <= TOL, source


# ---------------------------------------------------------------- ported-program gaps (audit F)

def test_label_smoothing_losses_match_keras():
    from fastlstm import losses as fls
    rng = np.random.default_rng(0)
    yt = (rng.random((8, 1)) > 0.5).astype("float32")
    yc = np.eye(4, dtype="float32")[rng.integers(0, 4, 8)]
    pb, lb = rng.random((8, 1)).astype("float32"), rng.standard_normal((8, 1)).astype("float32")
    pc = rng.random((8, 4)).astype("float32")
    pc /= pc.sum(1, keepdims=True)
    lc = rng.standard_normal((8, 4)).astype("float32")
    for from_logits in (False, True):
        for name, t, p in (("BinaryCrossentropy", yt, lb if from_logits else pb),
                           ("CategoricalCrossentropy", yc, lc if from_logits else pc)):
            k = getattr(keras.losses, name)(from_logits=from_logits, label_smoothing=0.2)
            f = getattr(fls, name)(from_logits=from_logits, label_smoothing=0.2)
            assert rel(f(t, p), float(k(t, p))) < 1e-6
            tt = torch.tensor(p, requires_grad=True)
            k(torch.tensor(t), tt).backward()
            np.testing.assert_allclose(f.gradient(t, p), tt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_precision_recall_metrics_match_keras():
    from fastlstm import metrics as fmet
    rng = np.random.default_rng(1)
    cases = [((50,), (50, 1), None), ((50, 1), (50, 1), rng.random(50)),
             ((6, 7), (6, 7, 1), (rng.random((6, 7)) > 0.3).astype("float32")),
             ((20, 3), (20, 3), None)]
    for shape_t, shape_p, sw in cases:
        yt = (rng.random(shape_t) > 0.5).astype("float32")
        yp = rng.random(shape_p).astype("float32")
        for cls in ("Precision", "Recall"):
            for kw in ({}, {"thresholds": 0.3}, {"class_id": 1} if shape_p == (20, 3) else {}):
                k, f = getattr(keras.metrics, cls)(**kw), getattr(fmet, cls)(**kw)
                for _ in range(2):
                    k.update_state(yt, yp, sample_weight=sw)
                    f.update_state(yt, yp, sample_weight=sw)
                assert abs(f.result() - float(k.result())) < 1e-6, (cls, shape_t, kw)


def _fit_classifier_like_keras(keras_metrics, our_metrics):
    """A small LSTM classifier in Keras and in fastlstm with the same weights, each compiled
    with its metrics and fit for 2 epochs on the same data: (fastlstm History, Keras History,
    x, y)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 5, 2)).astype("float32")
    y = (x[:, :, 0].sum(1) > 0).astype("float32")
    km = keras.Sequential([keras.Input((5, 2)), keras.layers.LSTM(4),
                           keras.layers.Dense(1, activation="sigmoid")])
    fmodel = fm.Sequential([fl.Input((5, 2)), fl.LSTM(4), fl.Dense(1, activation="sigmoid")])
    fmodel.set_weights(km.get_weights())
    km.compile("sgd", "binary_crossentropy", metrics=keras_metrics)
    fmodel.compile("sgd", "binary_crossentropy", metrics=our_metrics)
    hk = km.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
    hf = fmodel.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
    return hf, hk, x, y


def test_fit_with_precision_recall_strings_and_objects_matches_keras():
    from fastlstm import metrics as fmet
    hf, hk, _, _ = _fit_classifier_like_keras(
        ["precision", keras.metrics.Recall(thresholds=0.4, name="rec")],
        ["precision", fmet.Recall(thresholds=0.4, name="rec")])
    for key in ("loss", "precision", "rec", "val_precision", "val_rec"):
        np.testing.assert_allclose(hf.history[key], hk.history[key], atol=1e-6, err_msg=key)


AUC_KWARGS = [{}, {"curve": "PR"}, {"curve": "PRGAIN"}, {"num_thresholds": 7},
              {"thresholds": [0.3, 0.1, 0.7]}, {"thresholds": [0.25, 0.5, 0.75]},
              {"curve": "PR", "num_thresholds": 3}, {"label_weights": [1.0, 2.0, 0.5]}]


@pytest.mark.parametrize("summation_method", ["interpolation", "minoring", "majoring"])
@pytest.mark.parametrize("kw", AUC_KWARGS, ids=str)
def test_auc_metric_matches_keras(kw, summation_method):
    # several batches, with and without sample weights, probabilities (some tied on the
    # thresholds, some outside [0, 1]) and logits; the four count arrays and the result
    from fastlstm import metrics as fmet
    rng = np.random.default_rng(1)
    cases = [((50,), (50, 1), None), ((50, 1), (50, 1), rng.random(50)),
             ((6, 7), (6, 7, 1), (rng.random((6, 7)) > 0.3).astype("float32")),
             ((20, 3), (20, 3), None), ((20, 3), (20, 3), rng.random((20, 3)))]
    for shape_t, shape_p, sw in cases:
        if "label_weights" in kw and shape_p[-1] != 3:
            continue
        for from_logits in (False, True):
            k = keras.metrics.AUC(summation_method=summation_method, from_logits=from_logits,
                                  **kw)
            f = fmet.AUC(summation_method=summation_method, from_logits=from_logits, **kw)
            for step in range(3):
                yt = (rng.random(shape_t) > 0.5).astype("float32")
                if from_logits:
                    yp = (rng.standard_normal(shape_p) * 2).astype("float32")
                elif step == 1:
                    yp = (np.round(rng.random(shape_p) * 6) / 6).astype("float32")  # ties
                else:
                    yp = (rng.random(shape_p) * 1.2 - 0.1).astype("float32")
                k.update_state(yt, yp, sample_weight=sw)
                f.update_state(yt, yp, sample_weight=sw)
                assert abs(f.result() - float(k.result())) < 1e-6, (shape_p, from_logits, step)
            for name in ("true_positives", "false_positives", "true_negatives",
                         "false_negatives"):
                np.testing.assert_allclose(getattr(f, name), np.asarray(getattr(k, name)),
                                           rtol=1e-5, atol=1e-4, err_msg=name)
            assert f.get_config() == {key: value for key, value in k.get_config().items()
                                      if key not in ("name", "dtype", "label_weights")} | \
                {"name": "auc", "label_weights": kw.get("label_weights")}


@pytest.mark.parametrize("kw", [{}, {"curve": "PR"}, {"label_weights": [1.0, 0.0, 2.0]},
                                {"num_labels": 3, "summation_method": "majoring"}], ids=str)
def test_auc_multi_label_matches_keras(kw):
    from fastlstm import metrics as fmet
    rng = np.random.default_rng(2)
    k, f = keras.metrics.AUC(multi_label=True, **kw), fmet.AUC(multi_label=True, **kw)
    for _ in range(3):
        yt = (rng.random((20, 3)) > 0.5).astype("float32")
        yp = rng.random((20, 3)).astype("float32")
        sw = rng.random(20)
        k.update_state(yt, yp, sample_weight=sw)
        f.update_state(yt, yp, sample_weight=sw)
    assert abs(f.result() - float(k.result())) < 1e-6


def test_a_keras_auc_config_reads_as_is():
    from fastlstm import metrics as fmet
    k = keras.metrics.AUC(curve="PR", thresholds=[0.2, 0.6], label_weights=[1.0, 2.0],
                          name="ka")
    f = fmet.get({"class_name": "AUC", "config": k.get_config()})
    assert (f.name, f.curve, f.thresholds) == ("ka", "PR", pytest.approx(list(k.thresholds)))
    assert list(f.label_weights) == [1.0, 2.0]


def test_fit_and_evaluate_with_auc_match_keras():
    from fastlstm import metrics as fmet
    hf, hk, x, y = _fit_classifier_like_keras(
        ["auc", keras.metrics.AUC(curve="PR", name="pr", summation_method="minoring")],
        ["auc", fmet.AUC(curve="PR", name="pr", summation_method="minoring")])
    assert set(hf.history) == set(hk.history) == {"loss", "auc", "pr", "val_loss", "val_auc",
                                                  "val_pr"}
    for key in ("loss", "auc", "pr", "val_auc", "val_pr"):
        np.testing.assert_allclose(hf.history[key], hk.history[key], atol=1e-6, err_msg=key)
    # from_logits, named "AUC", in evaluate
    km = keras.Sequential([keras.Input((5, 2)), keras.layers.LSTM(4), keras.layers.Dense(1)])
    fmodel = fm.Sequential([fl.Input((5, 2)), fl.LSTM(4), fl.Dense(1)])
    fmodel.set_weights(km.get_weights())
    km.compile("sgd", keras.losses.BinaryCrossentropy(from_logits=True),
               metrics=["AUC", keras.metrics.AUC(from_logits=True, name="logit_auc")])
    fmodel.compile("sgd", "binary_crossentropy",
                   metrics=["AUC", fmet.AUC(from_logits=True, name="logit_auc")])
    rk = km.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    rf = fmodel.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    for key in ("AUC", "logit_auc"):
        assert abs(rf[key] - rk[key]) < 1e-6, key


def test_auc_on_a_masked_return_sequences_model_matches_keras():
    # Keras 3 applies a model's output mask to its mean metrics only (reduction_metrics): its
    # AUC, Precision and Recall count the masked steps too, and so do fastlstm's
    from fastlstm import metrics as fmet
    rng = np.random.default_rng(3)
    B, T = 24, 6
    x = rng.standard_normal((B, T, 2)).astype("float32")
    for b, L in enumerate(rng.integers(1, T + 1, B)):
        x[b, L:] = 0
    y = (rng.random((B, T, 1)) > 0.5).astype("float32")
    km = keras.Sequential([keras.Input((T, 2)), keras.layers.Masking(0.0),
                           keras.layers.LSTM(4, return_sequences=True),
                           keras.layers.TimeDistributed(
                               keras.layers.Dense(1, activation="sigmoid"))])
    fmodel = fm.Sequential([fl.Masking(0.0, input_shape=(T, 2)),
                            fl.LSTM(4, return_sequences=True),
                            fl.TimeDistributed(fl.Dense(1, activation="sigmoid"))])
    fmodel.set_weights(km.get_weights())
    km.compile("sgd", "binary_crossentropy",
               metrics=["auc", keras.metrics.AUC(curve="PR", name="pr"), "precision", "recall",
                        "accuracy"])
    fmodel.compile("sgd", "binary_crossentropy",
                   metrics=["auc", fmet.AUC(curve="PR", name="pr"), "precision", "recall",
                            "accuracy"])
    hk = km.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
    hf = fmodel.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_split=0.25)
    for key in ("loss", "auc", "pr", "val_auc", "val_pr", "precision", "recall", "accuracy",
                "val_precision", "val_recall", "val_accuracy"):
        np.testing.assert_allclose(hf.history[key], hk.history[key], atol=1e-6, err_msg=key)
    # evaluate: the AUC of every step, masked or not (with the mask it would differ)
    p = fmodel.predict(x, verbose=0)
    every, masked = fmet.AUC(), fmet.AUC()
    every.update_state(y, p)
    masked.update_state(y, p, sample_weight=(x != 0).any(-1).astype("float32"))
    rf = fmodel.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    rk = km.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert abs(rf["auc"] - rk["auc"]) < 1e-6 and abs(rf["auc"] - every.result()) < 1e-9
    assert abs(masked.result() - rk["auc"]) > 1e-3


def test_keras_schedules_match_and_keras_schedule_object_is_accepted():
    from fastlstm.optimizers.schedules import (CosineDecay, ExponentialDecay,  # the import form
                                               InverseTimeDecay, PiecewiseConstantDecay)
    ks = keras.optimizers.schedules
    pairs = [(ExponentialDecay(0.1, 3, 0.5), ks.ExponentialDecay(0.1, 3, 0.5)),
             (ExponentialDecay(0.1, 3, 0.5, staircase=True),
              ks.ExponentialDecay(0.1, 3, 0.5, staircase=True)),
             (InverseTimeDecay(0.1, 2, 0.5), ks.InverseTimeDecay(0.1, 2, 0.5)),
             (PiecewiseConstantDecay([2, 5], [0.1, 0.05, 0.01]),
              ks.PiecewiseConstantDecay([2, 5], [0.1, 0.05, 0.01])),
             (CosineDecay(0.1, 6, alpha=0.1), ks.CosineDecay(0.1, 6, alpha=0.1)),
             (CosineDecay(0.0, 6, warmup_target=0.1, warmup_steps=3),
              ks.CosineDecay(0.0, 6, warmup_target=0.1, warmup_steps=3))]
    for f, k in pairs:
        for step in range(12):
            assert abs(f(step) - float(k(step))) < 1e-7 * max(1.0, float(k(step))) + 1e-9, \
                (type(f).__name__, step)
    # a Keras schedule (it returns 0-d torch tensors) works in a fastlstm optimizer
    opt = fo.SGD(learning_rate=ks.ExponentialDecay(0.1, 3, 0.5))
    assert abs(opt.learning_rate - 0.1) < 1e-7


def test_fit_with_exponential_decay_matches_keras_and_survives_saving(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 4, 2)).astype("float32")
    y = x[:, :, 1].mean(1, keepdims=True)
    km = keras.Sequential([keras.Input((4, 2)), keras.layers.LSTM(3), keras.layers.Dense(1)])
    fmodel = fm.Sequential([fl.Input((4, 2)), fl.LSTM(3), fl.Dense(1)])
    fmodel.set_weights(km.get_weights())
    km.compile(keras.optimizers.RMSprop(keras.optimizers.schedules.ExponentialDecay(0.05, 2, 0.7)),
               "mse")
    fmodel.compile(fo.RMSprop(fo.schedules.ExponentialDecay(0.05, 2, 0.7)), "mse")
    hk = km.fit(x, y, batch_size=10, epochs=3, shuffle=False, verbose=0)
    hf = fmodel.fit(x, y, batch_size=10, epochs=3, shuffle=False, verbose=0)
    np.testing.assert_allclose(hf.history["loss"], hk.history["loss"], rtol=1e-5)
    path = str(tmp_path / "m.keras")
    fmodel.save(path)
    loaded = fm.load_model(path)
    assert isinstance(loaded.optimizer._learning_rate, fo.schedules.ExponentialDecay)
    hk = km.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
    hf = loaded.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(hf.history["loss"], hk.history["loss"], rtol=1e-5)
    # a Keras optimizer config holding a schedule reads as is
    o = fo.get(keras.optimizers.serialize(km.optimizer))
    assert isinstance(o._learning_rate, fo.schedules.ExponentialDecay)


def test_ported_imports_pydataset_top_level_names():
    import fastlstm
    from fastlstm.utils import PyDataset, Sequence
    assert Sequence is PyDataset
    assert fastlstm.Sequential is fm.Sequential and fastlstm.Input is fl.Input
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 3, 2)).astype("float32")
    y = x[:, :, 0].sum(1, keepdims=True)

    def make(base):
        class DS(base):
            def __init__(self, **kw):
                super().__init__(**kw)
                self.ends = 0

            def __len__(self):
                return 4

            def __getitem__(self, i):
                return x[5 * i:5 * i + 5], y[5 * i:5 * i + 5]

            def on_epoch_end(self):
                self.ends += 1
        return DS(workers=1, use_multiprocessing=False)

    km = keras.Sequential([keras.Input((3, 2)), keras.layers.LSTM(3), keras.layers.Dense(1)])
    fmodel = fastlstm.Sequential([fastlstm.Input((3, 2)), fl.LSTM(3), fl.Dense(1)])
    fmodel.set_weights(km.get_weights())
    km.compile("adam", "mse")
    fmodel.compile("adam", "mse")
    kd, fd = make(keras.utils.PyDataset), make(PyDataset)
    hk = km.fit(kd, epochs=2, shuffle=False, verbose=0)
    hf = fmodel.fit(fd, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(hf.history["loss"], hk.history["loss"], rtol=1e-5)
    assert fd.ends == 2 and fd.num_batches == 4 and fd.workers == 1


# --------------------------------------------------------------------------- RepeatVector / pooling

def _same_as_keras_from_its_config(km, x, y, loss, names):
    """fastlstm's Sequential.from_config(km.get_config()) with km's weights: predictions,
    the loss of one train_on_batch (SGD) and the weights after it, against Keras's
    (the relative errors, for the report)."""
    rng = np.random.default_rng(2)
    km.set_weights([rng.standard_normal(a.shape).astype(np.float32) * 0.5
                    for a in km.get_weights()])
    om = fm.Sequential.from_config(km.get_config())
    assert [type(layer).__name__ for layer in om.layers] == names
    om.set_weights([np.asarray(w) for w in km.get_weights()])
    errors = {"predict": rel(om.predict(x, verbose=0), km.predict(x, verbose=0))}
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    om.compile(optimizer=fo.SGD(0.1), loss=loss)
    k_loss = float(km.train_on_batch(x, y))
    errors["loss"] = abs(float(om.train_on_batch(x, y)) - k_loss) / abs(k_loss)
    errors["weights"] = max(rel(a, b) for a, b in zip(om.get_weights(), km.get_weights()))
    assert all(e <= TOL for e in errors.values()), errors
    return errors


def test_lstm_autoencoder_with_repeat_vector_matches_keras():
    T, I = 6, 3
    x = np.random.default_rng(3).standard_normal((5, T, I)).astype(np.float32)
    km = keras.Sequential([keras.Input((T, I)), keras.layers.LSTM(5),
                           keras.layers.RepeatVector(T),
                           keras.layers.LSTM(4, return_sequences=True),
                           keras.layers.TimeDistributed(keras.layers.Dense(I))])
    print(_same_as_keras_from_its_config(km, x, x, "mse", ["LSTM", "RepeatVector", "LSTM",
                                                           "TimeDistributed"]))


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_masked_embedding_lstm_global_average_pooling_classifier_matches_keras(padding):
    rng = np.random.default_rng(4)
    T = 7
    ids = rng.integers(1, 12, (5, T))
    for b, n in enumerate([7, 4, 1, 2, 5]):
        if padding == "post":
            ids[b, n:] = 0
        else:
            ids[b, :T - n] = 0
    km = keras.Sequential([keras.Input((T,)), keras.layers.Embedding(12, 4, mask_zero=True),
                           keras.layers.LSTM(5, return_sequences=True),
                           keras.layers.GlobalAveragePooling1D(),
                           keras.layers.Dense(3, activation="softmax")])
    print(_same_as_keras_from_its_config(km, ids, rng.integers(0, 3, 5),
                                         "sparse_categorical_crossentropy",
                                         ["Embedding", "LSTM", "GlobalAveragePooling1D",
                                          "Dense"]))


@pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")
def test_global_max_pooling_ignores_the_mask_as_keras():
    # Keras 3.15: GlobalMaxPooling1D does not support masking (it warns, takes the maximum over
    # every step, padded ones included, and drops the mask); pre padding, where the LSTM's
    # padded outputs are zeros, makes that visible
    rng = np.random.default_rng(5)
    T = 6
    ids = rng.integers(1, 10, (4, T))
    for b, n in enumerate([6, 3, 1, 4]):
        ids[b, :T - n] = 0
    km = keras.Sequential([keras.Input((T,)), keras.layers.Embedding(10, 4, mask_zero=True),
                           keras.layers.LSTM(5, return_sequences=True),
                           keras.layers.GlobalMaxPooling1D(),
                           keras.layers.Dense(1)])
    print(_same_as_keras_from_its_config(km, ids, rng.standard_normal((4, 1)).astype(np.float32),
                                         "mse", ["Embedding", "LSTM", "GlobalMaxPooling1D",
                                                 "Dense"]))


def test_keepdims_pooling_and_masking_layer_match_keras():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    x[1, 4:] = 0
    x[2, 1:] = 0
    km = keras.Sequential([keras.Input((6, 3)), keras.layers.Masking(0.0),
                           keras.layers.LSTM(5, return_sequences=True),
                           keras.layers.GlobalAveragePooling1D(keepdims=True),
                           keras.layers.Flatten(), keras.layers.Dense(2)])
    print(_same_as_keras_from_its_config(km, x, rng.standard_normal((4, 2)).astype(np.float32),
                                         "mse", ["Masking", "LSTM", "GlobalAveragePooling1D",
                                                 "Flatten", "Dense"]))
