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
