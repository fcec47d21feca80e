"""fastlstm.metrics.TopKCategoricalAccuracy / SparseTopKCategoricalAccuracy: hand-computed
results (ties, NaN, k at least the number of classes, out-of-range ids, sample weights,
3-D predictions, from_sorted_ids), names, configs and argument errors, the output mask in a
model, and Keras 3 itself on random inputs where keras is importable.

Tolerances: hand-computed results are ratios of a few small integers or weights, summed in
float64: 1e-12. Keras keeps its running total and count in float32 variables, so its result
differs from the float64 one by float32 rounding: 1e-6 absolute (the results lie in [0, 1]).
"""

import numpy as np
import pytest

from fastlstm import losses, metrics

TopK, SparseTopK = metrics.TopKCategoricalAccuracy, metrics.SparseTopKCategoricalAccuracy


def _approx(v):
    return pytest.approx(v, rel=1e-12, abs=1e-12)


def _sparse_and_onehot(ids, y_pred, k, sample_weight=None):
    """The sparse and the categorical metric's result on the same targets."""
    ids = np.asarray(ids)
    out = []
    for m, t in ((SparseTopK(k), ids), (TopK(k), np.eye(y_pred.shape[-1])[ids])):
        m.update_state(t, y_pred, sample_weight=sample_weight)
        out.append(m.result())
    return out


# --------------------------------------------------------------------------- hand-computed

def test_hand_computed_two_updates_reset_and_keras_docstring_examples():
    y_pred = np.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0.0]])
    # Keras's docstring examples: k=1 -> 0.5; weights (0.7, 0.3) -> 0.3
    for m, t in ((SparseTopK(k=1), np.array([2, 1])), (TopK(k=1), np.eye(3)[[2, 1]])):
        m.update_state(t, y_pred)
        assert m.result() == _approx(0.5)
        m.reset_state()
        assert m.result() == 0.0
        m.update_state(t, y_pred, sample_weight=np.array([0.7, 0.3]))
        assert m.result() == _approx(0.3)
    # k=2: class 2 (0.8) is second in row 0, class 1 first in row 1; a second batch adds up
    m = SparseTopK(k=2)
    m.update_state(np.array([2, 1]), y_pred)
    assert m.result() == _approx(1.0)
    m.update_state(np.array([0, 2, 0]), np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2],
                                                 [0.1, 0.2, 0.3]]))          # in, out, out
    assert m.result() == _approx(3 / 5)


def test_ties_with_the_kth_largest_score_count_as_in():
    # in_top_k semantics: in when fewer than k scores are strictly above the target's
    y_pred = np.array([[0.1, 0.5, 0.5, 0.5],     # three-way tie for first place
                       [0.4, 0.3, 0.3, 0.0],     # tie for second place
                       [0.2, 0.2, 0.2, 0.2],     # all tied
                       [0.4, 0.3, 0.3, 0.0]])
    ids = [3, 2, 0, 3]
    # k=1: row 0 in (nothing above 0.5), row 1 out (0.4 above), row 2 in, row 3 out
    assert _sparse_and_onehot(ids, y_pred, 1) == [_approx(2 / 4)] * 2
    # k=2: rows 0, 1, 2 in (one score above 0.3 in row 1); row 3 out (three above 0.0)
    assert _sparse_and_onehot(ids, y_pred, 2) == [_approx(3 / 4)] * 2
    assert _sparse_and_onehot(ids, y_pred, 3) == [_approx(3 / 4)] * 2
    assert _sparse_and_onehot(ids, y_pred, 4) == [_approx(1.0)] * 2


def test_k_at_least_the_number_of_classes_counts_every_target():
    rng = np.random.default_rng(11)
    y_pred = rng.random((6, 3))
    ids = rng.integers(0, 3, 6)
    for k in (3, 4, 5, 100):         # (Keras's default k=5 with 3 classes)
        assert _sparse_and_onehot(ids, y_pred, k) == [_approx(1.0)] * 2
    assert SparseTopK().k == 5 and TopK().k == 5


def test_nan_scores_and_out_of_range_ids():
    nan = np.nan
    y_pred = np.array([[nan, 0.5, 0.2, 0.1],     # the NaN counts above the target's 0.5
                       [0.4, nan, 0.3, 0.0],     # the target's own score is NaN: never in
                       [nan, nan, 0.3, 0.9]])    # target 0.3: two NaN and 0.9 above it
    ids = [1, 1, 2]
    expected = {1: 0.0, 2: 1 / 3, 3: 1 / 3, 4: 2 / 3, 10: 2 / 3}
    for k, want in expected.items():
        assert _sparse_and_onehot(ids, y_pred, k) == [_approx(want)] * 2, k
    # ids outside [0, classes) (e.g. a "void" label -1 or 255) are never in, even for k >= C;
    # float ids are truncated towards 0 as Keras's int cast (-0.5 -> 0, 1.7 -> 1)
    y_pred = np.array([[0.1, 0.2, 0.7]] * 6)
    m = SparseTopK(k=3)
    m.update_state(np.array([-1, 3, 255, 2, 0, 1]), y_pred)
    assert m.result() == _approx(3 / 6)
    m = SparseTopK(k=2)
    m.update_state(np.array([-0.5, 1.7, 2.2, np.nan, np.inf, -1.0]), y_pred)
    assert m.result() == _approx(2 / 6)             # 0 out, 1 in, 2 in, the rest out


def test_sequences_per_step_weights_and_trailing_axis_of_one():
    # (batch=2, time=3, classes=4) as from a return_sequences model
    y_pred = np.array([[[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]],
                       [[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.3, 0.3, 0.2, 0.2]]])
    ids = np.array([[2, 3, 1], [0, 0, 2]])
    # k=2 in: [[yes, no, yes], [yes, no, no]]
    for t in (ids, ids[..., None]):
        m = SparseTopK(k=2)
        m.update_state(t, y_pred)
        assert m.result() == _approx(3 / 6)
    w = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 4.0]])
    assert _sparse_and_onehot(ids, y_pred, 2, w) == [_approx(4.5 / 10.5)] * 2
    # per-sequence weights: each sequence's mean over its steps, weighted
    assert _sparse_and_onehot(ids, y_pred, 2, np.array([3.0, 1.0])) == \
        [_approx((3 * 2 / 3 + 1 / 3) / 4)] * 2


def test_soft_targets_use_their_first_argmax():
    y_pred = np.array([[0.1, 0.5, 0.5, 0.5], [0.4, 0.3, 0.3, 0.0]])
    m = TopK(k=1)
    m.update_state(np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]), y_pred)
    assert m.result() == _approx(0.5)          # class 0 in row 0 (out), class 0 in row 1 (in)


def test_from_sorted_ids():
    # Keras's docstring example, then duplicates among the first k and N < k
    m = SparseTopK(k=1, from_sorted_ids=True)
    m.update_state(np.array([2, 1]), np.array([[1, 0, 3], [1, 2, 3]]))
    assert m.result() == _approx(0.5)
    m = SparseTopK(k=2, from_sorted_ids=True)
    m.update_state(np.array([2, 1, 5]), np.array([[1, 0, 2], [1, 1, 3], [5, 5, 5]]))
    assert m.result() == _approx(2 / 3)
    m = SparseTopK(k=5, from_sorted_ids=True)
    m.update_state(np.array([[3], [4]]), np.array([[0, 3], [1, 2]]),
                   sample_weight=np.array([1.0, 3.0]))
    assert m.result() == _approx(1 / 4)


def test_names_aliases_configs_and_registry():
    for name, cls in (("top_k_categorical_accuracy", TopK),
                      ("sparse_top_k_categorical_accuracy", SparseTopK)):
        m = metrics.get(name)
        assert type(m) is cls and m.name == name and m.k == 5
        assert cls().name == name
        assert type(metrics.get(cls.__name__)) is cls
        assert cls.__name__ in metrics.__all__
    m = SparseTopK(k=3, name="top3", from_sorted_ids=True)
    cfg = m.get_config()
    assert cfg == {"name": "top3", "k": 3, "from_sorted_ids": True}
    assert SparseTopK(k=2).get_config() == {"name": "sparse_top_k_categorical_accuracy", "k": 2}
    assert TopK(k=np.int64(2), name="t").get_config() == {"name": "t", "k": 2}
    r = metrics.get({"class_name": "SparseTopKCategoricalAccuracy", "config": cfg})
    assert type(r) is SparseTopK and r.get_config() == cfg and r is not m
    # Keras's own configs carry a dtype: accepted (and ignored)
    keras_cfg = {"name": "top_k_categorical_accuracy", "dtype": "float32", "k": 2}
    assert metrics.get({"class_name": "TopKCategoricalAccuracy", "config": keras_cfg}).k == 2
    assert "k=3" in repr(m)


@pytest.mark.parametrize("bad", [0, -1, 2.5, 5.0, True, "3", None, [2]])
def test_bad_k_is_refused_naming_the_argument(bad):
    for cls in (TopK, SparseTopK):
        with pytest.raises(ValueError, match="`k` must be a positive integer"):
            cls(k=bad)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        TopK().update_state(np.eye(3)[[0, 1]], np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"y_pred.shape\[:-1\]"):
        SparseTopK().update_state(np.array([0, 1, 2]), np.ones((2, 4)))
    with pytest.raises(ValueError, match="class axis"):
        SparseTopK().update_state(np.array(1), np.array(0.5))
    with pytest.raises(ValueError, match="at least one class"):
        SparseTopK().update_state(np.array([0, 1]), np.ones((2, 0)))
    with pytest.raises(ValueError, match="sample_weight"):
        SparseTopK().update_state(np.array([0, 1]), np.ones((2, 4)),
                                  sample_weight=np.ones(3))


def test_in_a_masked_sequence_model_fit_evaluate_and_save(tmp_path):
    # as the other mean metrics: the mean over the valid steps, however the batches fall
    from fastlstm import layers, models
    rng = np.random.default_rng(4)
    N, T, V, C = 12, 6, 5, 6
    x = np.zeros((N, T), np.int64)
    for i, n in enumerate(rng.integers(1, T + 1, N)):
        x[i, :n] = rng.integers(1, V, n)
    y = rng.integers(0, C, (N, T))
    m = models.Sequential([layers.Embedding(V, 4, mask_zero=True, input_shape=(T,)),
                           layers.LSTM(3, return_sequences=True),
                           layers.Dense(C, activation="softmax")], dtype="float64")
    m.compile("sgd", "sparse_categorical_crossentropy",
              metrics=["sparse_top_k_categorical_accuracy", SparseTopK(k=2, name="top2")])
    hist = m.fit(x, y, batch_size=5, epochs=1, verbose=0).history
    assert set(hist) == {"loss", "sparse_top_k_categorical_accuracy", "top2"}
    p = m.predict(x, verbose=0)
    valid = x != 0
    above = (p > np.take_along_axis(p, y[..., None], -1)).sum(-1)
    for bs in (12, 5, 1):
        res = m.evaluate(x, y, batch_size=bs, verbose=0, return_dict=True)
        assert res["sparse_top_k_categorical_accuracy"] == \
            _approx(np.sum((above < 5) & valid) / valid.sum()), bs
        assert res["top2"] == _approx(np.sum((above < 2) & valid) / valid.sum()), bs
    path = str(tmp_path / "m.keras")
    m.save(path)
    loaded = models.load_model(path)
    assert [type(t) for t in loaded.compiled_metrics] == [SparseTopK, SparseTopK]
    assert loaded.compiled_metrics[1].get_config() == {"name": "top2", "k": 2}
    assert loaded.evaluate(x, y, batch_size=5, verbose=0, return_dict=True) == \
        pytest.approx(m.evaluate(x, y, batch_size=5, verbose=0, return_dict=True), abs=1e-12)
    # one-hot targets with the categorical metric in the same model
    m.compile("sgd", "categorical_crossentropy", metrics=[TopK(k=2)])
    res = m.evaluate(x, np.eye(C)[y], batch_size=5, verbose=0, return_dict=True)
    assert res["top_k_categorical_accuracy"] == \
        _approx(np.sum((above < 2) & valid) / valid.sum())


def test_the_accuracy_resolution_is_unchanged():
    # adding the top-k names must not change what 'accuracy' resolves to
    assert type(metrics.get("accuracy", loss=losses.SparseCategoricalCrossentropy())) is \
        metrics.SparseCategoricalAccuracy


# --------------------------------------------------------------------------- against Keras

def _keras():
    keras = pytest.importorskip("keras")
    return keras


def _random_case(rng, trial):
    """Scores with many ties (quantised to quarters) in every other case, 2-D or 3-D."""
    C = int(rng.integers(2, 9))
    shape = [(16, C), (4, 6, C)][trial % 2]
    if trial % 3:
        y_pred = (rng.integers(0, 4, shape) / 4).astype(np.float32)
    else:
        y_pred = rng.random(shape).astype(np.float32)
    ids = rng.integers(0, C, shape[:-1])
    sw = rng.uniform(0.0, 2.0, shape[:-1]) if trial % 4 < 2 else None
    return C, y_pred, ids, sw


def test_matches_keras_on_random_inputs_with_ties_weights_and_sequences():
    keras = _keras()
    rng = np.random.default_rng(2024)
    worst = 0.0
    for trial in range(120):
        C, y_pred, ids, sw = _random_case(rng, trial)
        k = int(rng.integers(1, C + 1))
        pairs = ((SparseTopK(k), keras.metrics.SparseTopKCategoricalAccuracy(k), ids),
                 (TopK(k), keras.metrics.TopKCategoricalAccuracy(k), np.eye(C)[ids]),
                 (SparseTopK(k), keras.metrics.SparseTopKCategoricalAccuracy(k), ids[..., None]))
        for ours, theirs, t in pairs:
            for sl in (slice(None), slice(0, 3)):       # two batches
                w = None if sw is None else sw[sl]
                ours.update_state(t[sl], y_pred[sl], sample_weight=w)
                theirs.update_state(t[sl], y_pred[sl], sample_weight=w)
            diff = abs(ours.result() - float(theirs.result()))
            worst = max(worst, diff)
            assert diff < 1e-6, (trial, type(ours).__name__, k, C)
    assert worst < 1e-6


def test_k_above_the_class_count_matches_keras_at_k_equal_to_it():
    # Keras's torch backend raises for k > classes (torch.topk); its other backends count
    # every target in, which is what k == classes gives on the torch backend too
    keras = _keras()
    rng = np.random.default_rng(5)
    for trial in range(20):
        C, y_pred, ids, sw = _random_case(rng, trial)
        theirs = keras.metrics.SparseTopKCategoricalAccuracy(C)
        theirs.update_state(ids, y_pred, sample_weight=sw)
        for k in (C + 1, 2 * C + 3):
            ours = SparseTopK(k)
            ours.update_state(ids, y_pred, sample_weight=sw)
            assert abs(ours.result() - float(theirs.result())) < 1e-6


def test_float64_scores_are_compared_in_float64_as_keras_does():
    # 0.3000000000001 and 0.30000001 are equal in float32: Keras keeps float64 predictions
    keras = _keras()
    y_pred = np.array([[0.3000000000001, 0.30000001], [0.30000001, 0.3000000000001]])
    ours, theirs = SparseTopK(k=1), keras.metrics.SparseTopKCategoricalAccuracy(k=1)
    for m in (ours, theirs):
        m.update_state(np.array([0, 0]), y_pred)
    assert ours.result() == _approx(0.5)
    assert abs(ours.result() - float(theirs.result())) < 1e-6


def test_nan_scores_match_keras_torch_backend():
    keras = _keras()
    if keras.backend.backend() != "torch":
        pytest.skip("NaN ordering is the torch backend's (torch.topk puts NaN first)")
    rng = np.random.default_rng(9)
    for trial in range(30):
        C, y_pred, ids, _ = _random_case(rng, trial)
        y_pred[rng.random(y_pred.shape) < 0.2] = np.nan
        for k in range(1, C + 1):
            ours, theirs = SparseTopK(k), keras.metrics.SparseTopKCategoricalAccuracy(k)
            ours.update_state(ids, y_pred)
            theirs.update_state(ids, y_pred)
            assert abs(ours.result() - float(theirs.result())) < 1e-6, (trial, k)


def test_from_sorted_ids_and_configs_match_keras():
    keras = _keras()
    rng = np.random.default_rng(6)
    for trial in range(20):
        n = int(rng.integers(1, 6))
        y_pred = rng.integers(0, 8, (10, n))
        ids = rng.integers(0, 8, 10)
        k = int(rng.integers(1, 7))
        ours = SparseTopK(k, from_sorted_ids=True)
        theirs = keras.metrics.SparseTopKCategoricalAccuracy(k, from_sorted_ids=True)
        ours.update_state(ids, y_pred)
        theirs.update_state(ids, y_pred)
        assert abs(ours.result() - float(theirs.result())) < 1e-6
    for ours, theirs in ((TopK(3, name="t"), keras.metrics.TopKCategoricalAccuracy(3, name="t")),
                         (SparseTopK(2, from_sorted_ids=True),
                          keras.metrics.SparseTopKCategoricalAccuracy(2, from_sorted_ids=True))):
        kcfg = theirs.get_config()
        assert {key: v for key, v in kcfg.items() if key != "dtype"} == ours.get_config()
        assert type(ours).from_config(kcfg).get_config() == ours.get_config()
