"""fastlstm.metrics: hand-computed results over several update_state calls, reset,
sample weights, names, and the loss-dependent resolution of 'accuracy'.
"""

import numpy as np
import pytest

from fastlstm import losses, metrics


def test_binary_accuracy_two_updates_and_reset():
    m = metrics.BinaryAccuracy()
    assert m.name == "binary_accuracy"
    assert m.result() == 0.0
    # right, right, wrong, wrong  (0.5 is not above the threshold -> predicts 0)
    m.update_state(np.array([[1.0], [0.0], [1.0], [1.0]]),
                   np.array([[0.9], [0.2], [0.4], [0.5]]))
    assert m.result() == pytest.approx(2 / 4)
    m.update_state(np.array([[1.0], [1.0]]), np.array([[0.7], [0.51]]))  # both right
    assert m.result() == pytest.approx(4 / 6)
    m.reset_state()
    assert m.result() == 0.0
    m.update_state(np.array([[0.0]]), np.array([[0.9]]))
    assert m.result() == 0.0
    m.update_state(np.array([[0.0]]), np.array([[0.1]]))
    assert m.result() == pytest.approx(0.5)


def test_binary_accuracy_threshold_and_multilabel():
    m = metrics.BinaryAccuracy(threshold=0.8)
    # per element: [T, F, T] [T, T, F]  with threshold 0.8
    m.update_state(np.array([[1, 0, 0], [1, 1, 0]]),
                   np.array([[0.9, 0.85, 0.7], [0.95, 0.81, 0.99]]))
    assert m.result() == pytest.approx(4 / 6)
    assert m.get_config()["threshold"] == 0.8


def test_binary_accuracy_sample_weight():
    m = metrics.BinaryAccuracy()
    y_true = np.array([[1.0], [0.0], [1.0], [0.0]])
    y_pred = np.array([[0.9], [0.2], [0.4], [0.6]])          # right, right, wrong, wrong
    m.update_state(y_true, y_pred, sample_weight=np.array([1.0, 2.0, 3.0, 4.0]))
    assert m.result() == pytest.approx(3 / 10)
    m.update_state(np.array([[1.0]]), np.array([[0.9]]), sample_weight=np.array([5.0]))
    assert m.result() == pytest.approx(8 / 15)
    m.update_state(np.array([[0.0]]), np.array([[0.9]]), sample_weight=np.array([0.0]))
    assert m.result() == pytest.approx(8 / 15)             # weight 0 masks it out


def test_binary_accuracy_y_true_without_trailing_axis():
    m = metrics.BinaryAccuracy()
    m.update_state(np.array([1, 0, 1]), np.array([[0.9], [0.8], [0.7]]))
    assert m.result() == pytest.approx(2 / 3)


def test_categorical_accuracy():
    m = metrics.CategoricalAccuracy()
    assert m.name == "categorical_accuracy"
    y_true = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    m.update_state(y_true, np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]))
    assert m.result() == pytest.approx(2 / 3)
    m.update_state(np.array([[0, 0, 1]]), np.array([[0.5, 0.2, 0.3]]))
    assert m.result() == pytest.approx(2 / 4)
    m.reset_state()
    m.update_state(y_true, np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]),
                   sample_weight=np.array([1.0, 3.0, 0.5]))
    assert m.result() == pytest.approx(1.5 / 4.5)


def test_sparse_categorical_accuracy():
    m = metrics.SparseCategoricalAccuracy()
    assert m.name == "sparse_categorical_accuracy"
    y_pred = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    m.update_state(np.array([1, 0, 2]), y_pred)
    assert m.result() == pytest.approx(2 / 3)
    m.update_state(np.array([[0], [1]]), np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]]))
    assert m.result() == pytest.approx(3 / 5)
    m.reset_state()
    m.update_state(np.array([1, 0, 2]), y_pred, sample_weight=np.array([2.0, 1.0, 1.0]))
    assert m.result() == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        m.update_state(np.array([[0, 1, 0]] * 3), y_pred)


def test_sequence_accuracy_with_per_step_weights():
    # (batch=2, time=2, classes=2); weights per step
    y_pred = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.3, 0.7]]])
    ids = np.array([[0, 0], [1, 1]])                       # right, wrong / wrong, right
    w = np.array([[1.0, 3.0], [2.0, 4.0]])
    m = metrics.SparseCategoricalAccuracy()
    m.update_state(ids, y_pred, sample_weight=w)
    assert m.result() == pytest.approx((1.0 + 4.0) / 10.0)
    m.reset_state()
    m.update_state(ids, y_pred)
    assert m.result() == pytest.approx(2 / 4)


def test_mean_absolute_and_squared_error():
    y_true = np.array([[0.0, 1.0], [2.0, 2.0]])
    y_pred = np.array([[1.0, 1.0], [0.0, 5.0]])            # errors (1, 0), (-2, 3)
    mae, mse = metrics.MeanAbsoluteError(), metrics.MeanSquaredError()
    assert (mae.name, mse.name) == ("mean_absolute_error", "mean_squared_error")
    mae.update_state(y_true, y_pred)
    mse.update_state(y_true, y_pred)
    assert mae.result() == pytest.approx((0.5 + 2.5) / 2)
    assert mse.result() == pytest.approx((0.5 + 6.5) / 2)
    mae.update_state(np.array([[0.0, 0.0]]), np.array([[4.0, 0.0]]))
    mse.update_state(np.array([[0.0, 0.0]]), np.array([[4.0, 0.0]]))
    assert mae.result() == pytest.approx((0.5 + 2.5 + 2.0) / 3)
    assert mse.result() == pytest.approx((0.5 + 6.5 + 8.0) / 3)
    mae.reset_state()
    mse.reset_state()
    assert mae.result() == 0.0 and mse.result() == 0.0
    mae.update_state(y_true, y_pred, sample_weight=np.array([3.0, 1.0]))
    mse.update_state(y_true, y_pred, sample_weight=np.array([3.0, 1.0]))
    assert mae.result() == pytest.approx((3 * 0.5 + 2.5) / 4)
    assert mse.result() == pytest.approx((3 * 0.5 + 6.5) / 4)
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        mae.update_state(y_true, np.zeros((2, 3)))


def test_mean():
    m = metrics.Mean()
    assert m.name == "mean"
    m.update_state(np.array([1.0, 2.0, 3.0]))
    assert m.result() == pytest.approx(2.0)
    m.update_state(4.0)                                     # a scalar (a batch loss)
    assert m.result() == pytest.approx(2.5)
    m.reset_state()
    assert m.result() == 0.0
    m.update_state(np.array([1.0, 3.0]), sample_weight=np.array([1.0, 3.0]))
    assert m.result() == pytest.approx(10.0 / 4.0)
    m.update_state(np.array([10.0]), sample_weight=np.array([0.0]))
    assert m.result() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="sample_weight"):
        m.update_state(np.array([1.0, 2.0]), sample_weight=np.array([1.0, 2.0, 3.0]))


# --------------------------------------------------------------------------- get

@pytest.mark.parametrize("loss, cls", [
    ("binary_crossentropy", metrics.BinaryAccuracy),
    (losses.BinaryCrossentropy(from_logits=True), metrics.BinaryAccuracy),
    ("categorical_crossentropy", metrics.CategoricalAccuracy),
    (losses.CategoricalCrossentropy(from_logits=True), metrics.CategoricalAccuracy),
    ("sparse_categorical_crossentropy", metrics.SparseCategoricalAccuracy),
    (losses.SparseCategoricalCrossentropy(), metrics.SparseCategoricalAccuracy),
    ("mse", metrics.BinaryAccuracy),
    ("huber", metrics.BinaryAccuracy),
    (None, metrics.BinaryAccuracy),
])
def test_accuracy_resolution(loss, cls):
    m = metrics.get("accuracy", loss=loss)
    assert type(m) is cls
    assert m.name == "accuracy"
    m2 = metrics.get("acc", loss=loss)
    assert type(m2) is cls and m2.name == "acc"            # Keras names it as given


def test_accuracy_resolution_behaves():
    m = metrics.get("accuracy", loss="sparse_categorical_crossentropy")
    m.update_state(np.array([2, 0]), np.array([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1]]))
    assert m.result() == pytest.approx(0.5)


@pytest.mark.parametrize("name, cls", [
    ("mae", metrics.MeanAbsoluteError), ("mean_absolute_error", metrics.MeanAbsoluteError),
    ("mse", metrics.MeanSquaredError), ("mean_squared_error", metrics.MeanSquaredError),
    ("binary_accuracy", metrics.BinaryAccuracy),
    ("categorical_accuracy", metrics.CategoricalAccuracy),
    ("sparse_categorical_accuracy", metrics.SparseCategoricalAccuracy),
    ("mean", metrics.Mean),
    ("top_k_categorical_accuracy", metrics.TopKCategoricalAccuracy),
    ("sparse_top_k_categorical_accuracy", metrics.SparseTopKCategoricalAccuracy),
])
def test_get_by_name(name, cls):
    m = metrics.get(name)
    assert type(m) is cls
    assert m.name == name                                   # history key = the string


def test_get_fresh_instance_and_passthrough():
    a, b = metrics.get("mae"), metrics.get("mae")
    assert a is not b
    a.update_state(np.array([[1.0]]), np.array([[3.0]]))
    assert b.result() == 0.0 and a.result() == pytest.approx(2.0)
    inst = metrics.BinaryAccuracy(threshold=0.3)
    assert metrics.get(inst) is inst
    assert metrics.get(None) is None
    r = metrics.get({"class_name": "BinaryAccuracy", "config": inst.get_config()})
    assert type(r) is metrics.BinaryAccuracy and r.threshold == 0.3 and r is not inst


def test_get_unknown():
    with pytest.raises(ValueError, match="accuracy"):
        metrics.get("f1_score_of_doom")
    with pytest.raises(ValueError):
        metrics.get(3.5)
    with pytest.raises(ValueError):
        metrics.get("accuracy", loss="not_a_loss")


@pytest.mark.parametrize("bad", [None, "high", True, np.nan, -np.inf, [0.5]])
def test_binary_accuracy_threshold_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match="`threshold` must be a finite number"):
        metrics.BinaryAccuracy(threshold=bad)
    assert metrics.BinaryAccuracy(threshold=np.float32(0.25)).threshold == 0.25


def test_precision_recall_counts_names_and_configs():
    y_true = np.array([1, 0, 1, 1, 0, 0], np.float32)
    y_pred = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.5], np.float32)   # 0.5 is not > 0.5
    p, r = metrics.get("precision"), metrics.get("recall")
    assert (type(p), p.name, type(r), r.name) == (metrics.Precision, "precision",
                                                  metrics.Recall, "recall")
    p.update_state(y_true, y_pred)
    r.update_state(y_true, y_pred)
    assert p.result() == pytest.approx(2 / 3) and r.result() == pytest.approx(2 / 3)
    w = np.array([1, 0, 1, 1, 1, 1], np.float32)     # drops the false positive
    p.reset_state()
    p.update_state(y_true, y_pred, sample_weight=w)
    assert p.result() == pytest.approx(1.0)
    assert metrics.Precision().result() == 0.0     # nothing counted yet
    m = metrics.get({"class_name": "Recall",
                     "config": metrics.Recall(thresholds=0.3, name="r3").get_config()})
    assert (type(m), m.name, m.thresholds) == (metrics.Recall, "r3", 0.3)
    with pytest.raises(NotImplementedError, match="top_k"):
        metrics.Precision(top_k=2)
    with pytest.raises(NotImplementedError, match="one threshold"):
        metrics.Recall(thresholds=[0.3, 0.6])
    with pytest.raises(ValueError):
        metrics.Precision(thresholds=1.5)


# --------------------------------------------------------------------------- AUC

def _auc(y_true, y_pred, sample_weight=None, **kw):
    m = metrics.AUC(**kw)
    m.update_state(np.asarray(y_true, np.float32), np.asarray(y_pred, np.float32),
                   sample_weight=sample_weight)
    return m.result()


@pytest.mark.parametrize("summation_method", ["interpolation", "minoring", "majoring"])
def test_auc_perfect_reversed_and_constant_classifiers(summation_method):
    y = [0, 0, 1, 1]
    kw = dict(summation_method=summation_method)
    assert _auc(y, [0.1, 0.2, 0.8, 0.9], **kw) == pytest.approx(1.0)   # perfect
    assert _auc(y, [0.9, 0.8, 0.2, 0.1], **kw) == pytest.approx(0.0)   # reversed
    # PR: precision 1 wherever something is predicted positive; on the last step (recall 0.5
    # to 0) minoring takes the 0 precision of the last threshold (no positives), as Keras does
    pr = {"interpolation": 1.0, "minoring": 0.5, "majoring": 1.0}[summation_method]
    assert _auc(y, [0.1, 0.2, 0.8, 0.9], curve="PR", **kw) == pytest.approx(pr)
    # one prediction for all: ROC from (0, 0) to (1, 1) in one step
    expected = {"interpolation": 0.5, "minoring": 0.0, "majoring": 1.0}[summation_method]
    assert _auc(y, [0.5] * 4, **kw) == pytest.approx(expected)


def test_auc_hand_computed_three_thresholds():
    # thresholds -1e-7, 0.5, 1+1e-7: tp = [2, 1, 0], fp = [2, 0, 0], fn = [0, 1, 2],
    # tn = [0, 2, 2]; recall [1, .5, 0], fp rate [1, 0, 0]: (1 + .5) / 2 * 1 = 0.75
    m = metrics.AUC(num_thresholds=3)
    m.update_state([0, 0, 1, 1], [0, 0.5, 0.3, 0.9])
    np.testing.assert_array_equal(m.true_positives, [2, 1, 0])
    np.testing.assert_array_equal(m.false_positives, [2, 0, 0])
    np.testing.assert_array_equal(m.false_negatives, [0, 1, 2])
    np.testing.assert_array_equal(m.true_negatives, [0, 2, 2])
    assert m.result() == pytest.approx(0.75)
    # minoring / majoring: heights min / max of the recalls: 0.5, 1
    assert _auc([0, 0, 1, 1], [0, 0.5, 0.3, 0.9], num_thresholds=3,
                summation_method="minoring") == pytest.approx(0.5)
    assert _auc([0, 0, 1, 1], [0, 0.5, 0.3, 0.9], num_thresholds=3,
                summation_method="majoring") == pytest.approx(1.0)
    # zero weights drop the two middle elements: a perfect ranking
    m.reset_state()
    assert m.result() == 0.0
    m.update_state([0, 0, 1, 1], [0, 0.5, 0.3, 0.9], sample_weight=[1, 0, 0, 1])
    assert m.result() == pytest.approx(1.0)
    # PR, minoring: precision at the three thresholds [0.5, 1, 0] against recall [1, .5, 0]:
    # 0.5 * min(.5, 1) + 0.5 * min(1, 0) = 0.25
    assert _auc([0, 0, 1, 1], [0, 0.5, 0.3, 0.9], num_thresholds=3, curve="PR",
                summation_method="minoring") == pytest.approx(0.25)


def test_auc_batches_add_up_and_explicit_thresholds_and_logits():
    rng = np.random.default_rng(0)
    yt = (rng.random(60) > 0.5).astype(np.float32)
    yp = rng.random(60).astype(np.float32)
    whole = _auc(yt, yp)
    m = metrics.AUC()
    for i in range(0, 60, 25):
        m.update_state(yt[i:i + 25], yp[i:i + 25])
    assert m.result() == pytest.approx(whole, abs=1e-12)
    # explicit thresholds (sorted; the end points added), not evenly spaced
    m = metrics.AUC(thresholds=[0.7, 0.2])
    assert m.thresholds == pytest.approx([-1e-7, 0.2, 0.7, 1 + 1e-7])
    assert m.num_thresholds == 4
    m.update_state([0, 1, 0, 1], [0.1, 0.3, 0.5, 0.9])
    np.testing.assert_array_equal(m.true_positives, [2, 2, 1, 0])
    np.testing.assert_array_equal(m.false_positives, [2, 1, 0, 0])
    # from_logits: the sigmoid of the logits, which keeps the ranking
    logits = rng.standard_normal(60).astype(np.float32) * 3
    assert _auc(yt, logits, from_logits=True) == pytest.approx(
        _auc(yt, 1 / (1 + np.exp(-logits.astype(np.float64)))), abs=1e-6)


def test_auc_names_configs_and_errors():
    for name in ("AUC", "auc"):
        m = metrics.get(name)
        assert type(m) is metrics.AUC and m.name == name
    assert metrics.AUC().name == "auc"
    m = metrics.AUC(curve="pr", summation_method="Majoring", thresholds=[0.4, 0.1],
                    from_logits=True, name="pr", label_weights=[1, 2])
    cfg = m.get_config()
    assert cfg == {"name": "pr", "num_thresholds": 4, "curve": "PR",
                   "summation_method": "majoring", "multi_label": False, "num_labels": None,
                   "label_weights": [1.0, 2.0], "from_logits": True,
                   "thresholds": pytest.approx([0.1, 0.4])}
    import json
    json.dumps(cfg, allow_nan=False)                       # plain JSON
    again = metrics.get({"class_name": "AUC", "config": cfg})
    assert again.get_config() == cfg and again.thresholds == m.thresholds
    assert "thresholds" not in metrics.AUC(num_thresholds=50).get_config()
    # a Keras config (with its dtype) reads as is
    k = metrics.AUC.from_config({"name": "auc_1", "dtype": "float32", "num_thresholds": 10,
                                 "curve": "ROC", "summation_method": "minoring",
                                 "multi_label": False, "num_labels": None,
                                 "label_weights": None, "from_logits": False})
    assert (k.num_thresholds, k.summation_method) == (10, "minoring")
    with pytest.raises(ValueError, match="curve"):
        metrics.AUC(curve="F1")
    with pytest.raises(ValueError, match="summation"):
        metrics.AUC(summation_method="trapezoid")
    with pytest.raises(ValueError, match="num_thresholds"):
        metrics.AUC(num_thresholds=1)
    with pytest.raises(ValueError, match="num_labels"):
        metrics.AUC(num_labels=3)
    with pytest.raises(ValueError, match="thresholds"):
        metrics.AUC(thresholds=[0.5, np.nan])
    with pytest.raises(ValueError, match="shapes do not match"):
        metrics.AUC().update_state(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="rank 2"):
        metrics.AUC(multi_label=True).update_state(np.zeros(4), np.zeros(4))


def test_auc_multi_label_averages_the_labels():
    rng = np.random.default_rng(1)
    yt = (rng.random((30, 3)) > 0.5).astype(np.float32)
    yp = rng.random((30, 3)).astype(np.float32)
    per_label = [_auc(yt[:, j], yp[:, j]) for j in range(3)]
    m = metrics.AUC(multi_label=True)
    assert m.result() == 0.0 and m.true_positives is None     # built by the first batch
    m.update_state(yt, yp)
    assert m.true_positives.shape == (200, 3)
    assert m.result() == pytest.approx(np.mean(per_label), abs=1e-12)
    m = metrics.AUC(multi_label=True, label_weights=[1, 0, 3])
    m.update_state(yt, yp)
    assert m.result() == pytest.approx((per_label[0] + 3 * per_label[2]) / 4, abs=1e-12)
    with pytest.raises(ValueError, match="labels"):
        m.update_state(yt[:, :2], yp[:, :2])


def test_auc_in_fit_evaluate_and_saved_with_the_model(tmp_path):
    import json
    import zipfile
    from fastlstm import layers, models
    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 4, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.float32)
    m = models.Sequential([layers.Input((4, 2)), layers.LSTM(3),
                           layers.Dense(1, activation="sigmoid")])
    m.compile("sgd", "binary_crossentropy",
              metrics=["auc", metrics.AUC(curve="PR", thresholds=[0.3, 0.6], name="pr")])
    hist = m.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_split=0.25).history
    assert set(hist) == {"loss", "auc", "pr", "val_loss", "val_auc", "val_pr"}
    res = m.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)
    expect = _auc(y, m.predict(x, verbose=0))
    assert res["auc"] == pytest.approx(expect, abs=1e-9)
    path = str(tmp_path / "m.keras")
    m.save(path)
    with zipfile.ZipFile(path) as zf:
        index = json.loads(zf.read("fastlstm.json"))
    assert index["compile_config"]["metrics"][1]["config"]["thresholds"] == \
        pytest.approx([0.3, 0.6])
    loaded = models.load_model(path)
    pr = loaded.compiled_metrics[1]
    assert type(pr) is metrics.AUC and pr.curve == "PR" and pr.thresholds == \
        m.compiled_metrics[1].thresholds
    assert loaded.evaluate(x, y, batch_size=5, verbose=0, return_dict=True) == \
        pytest.approx(res, abs=1e-9)


# --------------------------------------------------------------------------- review additions

def test_precision_recall_count_every_nonzero_label_as_positive():
    # as Keras (y_true cast to bool): 2, -1 and 0.5 are positive labels, not only 1
    y_true = np.array([2.0, -1.0, 0.5, 0.0])
    y_pred = np.array([0.9, 0.1, 0.9, 0.9])
    p, r = metrics.Precision(), metrics.Recall()
    p.update_state(y_true, y_pred)
    r.update_state(y_true, y_pred)
    assert p.result() == pytest.approx(2 / 3) and r.result() == pytest.approx(2 / 3)


def test_precision_recall_take_keras_dtype_and_check_class_id():
    cfg = {"name": "p", "dtype": "float32", "thresholds": None, "top_k": None, "class_id": 1}
    assert metrics.get({"class_name": "Precision", "config": cfg}).class_id == 1
    assert metrics.Recall(dtype="float32").thresholds == 0.5
    m = metrics.Precision(class_id=3)
    with pytest.raises(ValueError, match="class_id"):
        m.update_state(np.eye(3)[[0, 1]], np.full((2, 3), 0.6))


def test_auc_nan_predictions_and_predictions_equal_to_a_threshold():
    # a NaN prediction is below every threshold (a negative prediction everywhere)
    m = metrics.AUC(num_thresholds=3)
    m.update_state([1.0, 0.0], [np.nan, 0.2])
    assert m.true_positives.tolist() == [0.0, 0.0, 0.0]
    assert m.false_negatives.tolist() == [1.0, 1.0, 1.0]
    # explicit thresholds: positive only strictly above (0.4 is not above 0.4)
    m = metrics.AUC(thresholds=[0.4])
    m.update_state([1.0, 0.0], [0.4, 0.41])
    assert m.true_positives.tolist() == [1.0, 0.0, 0.0]
    assert m.false_positives.tolist() == [1.0, 1.0, 0.0]


def test_auc_config_with_huge_num_thresholds_is_refused():
    with pytest.raises(ValueError, match="num_thresholds"):
        metrics.get({"class_name": "AUC", "config": {"num_thresholds": 10 ** 9}})
    assert metrics.AUC.from_config({"num_thresholds": 7}).num_thresholds == 7
