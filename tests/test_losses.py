"""fastlstm.losses: values against straightforward float64 formulas written here,
gradients against central finite differences, numerical stability for huge logits,
errors, the name registry and config round trips; torch cross-checks when torch is
importable.
"""

import math
import warnings

import numpy as np
import pytest

from fastlstm import losses

EPS = 1e-7


# --------------------------------------------------------------------------- references
# Straightforward float64 formulas, element by element, independent of the module.

def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _reduce_ref(per_sample, w):
    """sum_b per_sample[b] * w[b] / number of per-sample losses."""
    per_sample = np.asarray(per_sample, dtype=np.float64)
    if w is None:
        w = np.ones_like(per_sample)
    w = np.broadcast_to(np.asarray(w, dtype=np.float64), per_sample.shape)
    total = 0.0
    for idx in np.ndindex(per_sample.shape):
        total += per_sample[idx] * w[idx]
    return total / per_sample.size


def _per_last_axis(y_true, y_pred, elem):
    """Mean over the last axis of elem(t, p), as an array of shape y_pred.shape[:-1]."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    out = np.zeros(y_pred.shape[:-1])
    n = y_pred.shape[-1]
    for idx in np.ndindex(out.shape):
        out[idx] = sum(elem(float(y_true[idx + (k,)]), float(y_pred[idx + (k,)]))
                       for k in range(n)) / n
    return out


def ref_mse(t, p, w=None):
    return _reduce_ref(_per_last_axis(t, p, lambda a, b: (a - b) ** 2), w)


def ref_mae(t, p, w=None):
    return _reduce_ref(_per_last_axis(t, p, lambda a, b: abs(a - b)), w)


def ref_huber(t, p, w=None, delta=1.0):
    def elem(a, b):
        e = abs(b - a)
        return 0.5 * e * e if e <= delta else delta * e - 0.5 * delta * delta
    return _reduce_ref(_per_last_axis(t, p, elem), w)


def ref_bce(t, p, w=None, from_logits=False):
    def elem(a, b):
        q = _sigmoid(b) if from_logits else min(max(b, EPS), 1 - EPS)
        return -(a * math.log(q) + (1 - a) * math.log(1 - q))
    return _reduce_ref(_per_last_axis(t, p, elem), w)


def ref_cce(t, p, w=None, from_logits=False):
    t = np.asarray(t, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    per = np.zeros(p.shape[:-1])
    for idx in np.ndindex(per.shape):
        row = [float(v) for v in p[idx]]
        if from_logits:
            ex = [math.exp(v) for v in row]
            q = [v / sum(ex) for v in ex]
        else:
            s = sum(row)
            q = [min(max(v / s, EPS), 1 - EPS) for v in row]
        per[idx] = -sum(float(t[idx + (k,)]) * math.log(q[k]) for k in range(len(row)))
    return _reduce_ref(per, w)


def ref_sparse(ids, p, w=None, from_logits=False):
    p = np.asarray(p, dtype=np.float64)
    ids = np.asarray(ids).reshape(p.shape[:-1])
    t = np.zeros_like(p)
    for idx in np.ndindex(ids.shape):
        t[idx + (int(ids[idx]),)] = 1.0
    return ref_cce(t, p, w, from_logits)


def fd_grad(f, x, h=1e-6):
    """Central finite differences of scalar f at float64 x."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- inputs

RNG = np.random.default_rng(1234)
B, C = 5, 4


def _probs(shape, rng=RNG):
    return rng.uniform(0.05, 0.95, shape)


def _onehot(ids, c):
    return np.eye(c)[ids]


def _case(kind, shape=(B, C), rng=None):
    """(loss, y_true, y_pred, reference(t, p, w)) with y_pred away from clips/kinks."""
    rng = rng or np.random.default_rng(7)
    lead = shape[:-1]
    if kind == "mse":
        return losses.MeanSquaredError(), rng.normal(size=shape), rng.normal(size=shape), ref_mse
    if kind == "mae":
        t = rng.normal(size=shape)
        off = rng.uniform(0.1, 1.0, shape) * rng.choice([-1, 1], shape)
        return losses.MeanAbsoluteError(), t, t + off, ref_mae
    if kind == "huber":
        t = rng.normal(size=shape)
        # |error| in [0.1, 0.8] or [1.2, 3]: both branches, away from the delta kink
        mag = np.where(rng.random(shape) < 0.5, rng.uniform(0.1, 0.8, shape),
                       rng.uniform(1.2, 3.0, shape))
        return losses.Huber(), t, t + mag * rng.choice([-1, 1], shape), ref_huber
    if kind == "bce":
        return (losses.BinaryCrossentropy(), rng.integers(0, 2, shape).astype(float),
                _probs(shape, rng), ref_bce)
    if kind == "bce_soft":  # soft targets
        return losses.BinaryCrossentropy(), rng.random(shape), _probs(shape, rng), ref_bce
    if kind == "bce_logits":
        return (losses.BinaryCrossentropy(from_logits=True),
                rng.integers(0, 2, shape).astype(float), rng.normal(size=shape) * 3,
                lambda t, p, w=None: ref_bce(t, p, w, from_logits=True))
    if kind == "cce":
        p = rng.uniform(0.1, 1.0, shape)
        p /= p.sum(-1, keepdims=True)
        return (losses.CategoricalCrossentropy(), _onehot(rng.integers(0, shape[-1], lead),
                                                          shape[-1]), p, ref_cce)
    if kind == "cce_unnormalized":  # Keras rescales each row to sum to 1
        return (losses.CategoricalCrossentropy(), _onehot(rng.integers(0, shape[-1], lead),
                                                          shape[-1]),
                rng.uniform(0.1, 2.0, shape), ref_cce)
    if kind == "cce_logits":
        return (losses.CategoricalCrossentropy(from_logits=True),
                _onehot(rng.integers(0, shape[-1], lead), shape[-1]),
                rng.normal(size=shape) * 3,
                lambda t, p, w=None: ref_cce(t, p, w, from_logits=True))
    if kind == "cce_soft_logits":  # soft targets that do not sum to 1
        return (losses.CategoricalCrossentropy(from_logits=True), rng.random(shape),
                rng.normal(size=shape) * 3,
                lambda t, p, w=None: ref_cce(t, p, w, from_logits=True))
    if kind == "sparse":
        p = rng.uniform(0.1, 1.0, shape)
        p /= p.sum(-1, keepdims=True)
        return (losses.SparseCategoricalCrossentropy(), rng.integers(0, shape[-1], lead),
                p, ref_sparse)
    if kind == "sparse_logits":
        return (losses.SparseCategoricalCrossentropy(from_logits=True),
                rng.integers(0, shape[-1], lead), rng.normal(size=shape) * 3,
                lambda t, p, w=None: ref_sparse(t, p, w, from_logits=True))
    raise AssertionError(kind)


KINDS = ["mse", "mae", "huber", "bce", "bce_soft", "bce_logits", "cce", "cce_unnormalized",
         "cce_logits", "cce_soft_logits", "sparse", "sparse_logits"]


# --------------------------------------------------------------------------- values

@pytest.mark.parametrize("shape", [(B, C), (3, 4, C)], ids=["2d", "3d"])
@pytest.mark.parametrize("kind", KINDS)
def test_value_matches_reference(kind, shape):
    loss, t, p, ref = _case(kind, shape)
    got = loss(t, p)
    assert isinstance(got, float)
    assert got == pytest.approx(ref(t, p), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_value_with_sample_weight(kind):
    loss, t, p, ref = _case(kind)
    w = np.array([0.5, 2.0, 0.0, 1.0, 3.0])
    expected = ref(t, p, w)
    assert loss(t, p, sample_weight=w) == pytest.approx(expected, rel=1e-12)
    # (batch, 1) weights are the same thing; all-ones weights give the plain mean
    assert loss(t, p, sample_weight=w[:, None]) == pytest.approx(expected, rel=1e-12)
    assert loss(t, p, sample_weight=np.ones(B)) == pytest.approx(ref(t, p), rel=1e-12)
    # divided by the number of samples, not by the sum of the weights
    assert expected != pytest.approx(ref(t, p, w / w.sum()), rel=1e-6)


@pytest.mark.parametrize("kind", ["mse", "bce_logits", "sparse_logits"])
def test_sample_weight_per_timestep(kind):
    loss, t, p, ref = _case(kind, (3, 4, C))
    w_b = np.array([1.0, 0.0, 2.5])                  # per sequence: every step weighed
    w_bt = np.random.default_rng(3).random((3, 4))   # per step
    assert loss(t, p, sample_weight=w_b) == pytest.approx(ref(t, p, w_b[:, None]), rel=1e-12)
    assert loss(t, p, sample_weight=w_bt) == pytest.approx(ref(t, p, w_bt), rel=1e-12)


def test_huber_delta():
    t = np.array([[0.0, 0.0, 0.0]])
    p = np.array([[0.5, -2.0, 4.0]])
    # delta=1: 0.125, 2 - 0.5, 4 - 0.5 ; delta=3: 0.125, 2, 12 - 4.5
    assert losses.Huber()(t, p) == pytest.approx((0.125 + 1.5 + 3.5) / 3, rel=1e-14)
    assert losses.Huber(delta=3.0)(t, p) == pytest.approx((0.125 + 2.0 + 7.5) / 3, rel=1e-14)
    assert losses.Huber(delta=3.0)(t, p) == pytest.approx(ref_huber(t, p, delta=3.0))
    with pytest.raises(ValueError, match="delta"):
        losses.Huber(delta=-1.0)


def test_bce_clipping_at_0_and_1():
    loss = losses.BinaryCrossentropy()
    t = np.array([[1.0, 0.0, 1.0, 0.0]])
    p = np.array([[0.0, 1.0, 1.0, 0.0]])
    # two maximally wrong (-log(1e-7)) and two right (-log(1 - 1e-7)) predictions
    expected = (2 * -math.log(EPS) + 2 * -math.log(1 - EPS)) / 4
    assert loss(t, p) == pytest.approx(expected, rel=1e-9)
    assert loss(t, p) == pytest.approx(ref_bce(t, p), rel=1e-12)
    g = loss.gradient(t, p)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g, 0.0)           # the clip is active everywhere
    # outside [0, 1] too: clipped, value finite, zero gradient
    p2 = np.array([[-0.5, 1.5, 0.3, 0.7]])
    assert loss(t, p2) == pytest.approx(ref_bce(t, p2), rel=1e-12)
    g2 = loss.gradient(t, p2)
    assert g2[0, 0] == 0.0 and g2[0, 1] == 0.0
    assert g2[0, 2] != 0.0 and g2[0, 3] != 0.0


def test_cce_clipping_at_0():
    loss = losses.CategoricalCrossentropy()
    t = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    p = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    expected = (-math.log(EPS) + -math.log(1 - EPS)) / 2
    assert loss(t, p) == pytest.approx(expected, rel=1e-9)
    assert np.all(np.isfinite(loss.gradient(t, p)))
    sparse = losses.SparseCategoricalCrossentropy()
    assert sparse(np.array([1, 0]), p) == pytest.approx(expected, rel=1e-9)


def test_y_true_trailing_axis_of_one_is_accepted():
    p = _probs((B, 1))
    t = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    loss = losses.BinaryCrossentropy()
    assert loss(t, p) == pytest.approx(ref_bce(t[:, None], p), rel=1e-12)
    assert loss.gradient(t, p).shape == (B, 1)


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", [(B, C), (2, 3, C)], ids=["2d", "3d"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_finite_differences(kind, shape, weighted):
    loss, t, p, _ = _case(kind, shape, rng=np.random.default_rng(11))
    w = np.random.default_rng(5).uniform(0.2, 2.0, shape[:1]) if weighted else None
    g = loss.gradient(t, p, sample_weight=w)
    assert g.shape == p.shape and g.dtype == np.float64
    num = fd_grad(lambda x: loss(t, x, sample_weight=w), p)
    assert rel(g, num) < 1e-6
    value, g2 = loss.value_and_gradient(t, p, sample_weight=w)
    assert value == loss(t, p, sample_weight=w)
    np.testing.assert_array_equal(g2, g)


def test_mae_gradient_is_sign_over_n():
    t = np.array([[0.0, 0.0], [1.0, 1.0]])
    p = np.array([[2.0, -1.0], [0.0, 3.0]])
    g = losses.MeanAbsoluteError().gradient(t, p)
    np.testing.assert_allclose(g, np.array([[1, -1], [-1, 1]]) / 4.0, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_dtypes(kind, dtype):
    loss, t, p, ref = _case(kind)
    p_d = p.astype(dtype)
    g = loss.gradient(t, p_d)
    assert g.dtype == dtype and g.shape == p.shape
    g64 = loss.gradient(t, p_d.astype(np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert rel(g, g64) < tol
    assert loss(t, p_d) == pytest.approx(ref(t, p_d.astype(np.float64)), rel=tol)


# --------------------------------------------------------------------------- stability

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_logits_stable(dtype):
    loss = losses.BinaryCrossentropy(from_logits=True)
    x = np.array([[1000.0, -1000.0, 1000.0, -1000.0]], dtype=dtype)
    t = np.array([[0.0, 1.0, 1.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            v = loss(t, x)
            g = loss.gradient(t, x)
    assert v == pytest.approx(2000.0 / 4, rel=1e-6)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, np.array([[1.0, -1.0, 0.0, 0.0]]) / 4, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sparse", [False, True])
def test_cce_logits_stable(dtype, sparse):
    x = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]], dtype=dtype)
    ids = np.array([1, 1])
    loss = (losses.SparseCategoricalCrossentropy(from_logits=True) if sparse
            else losses.CategoricalCrossentropy(from_logits=True))
    t = ids if sparse else _onehot(ids, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            v = loss(t, x)
            g = loss.gradient(t, x)
    # row 0: 2000; row 1: log(1 + exp(-1)) (+ exp(-2000) ~ 0)
    assert v == pytest.approx((2000.0 + math.log1p(math.exp(-1.0))) / 2, rel=1e-6)
    assert np.all(np.isfinite(g))
    s1 = 1 / (1 + math.exp(-1.0))  # softmax of 1000 vs 999
    expected = np.array([[1.0, -1.0, 0.0], [0.0, s1 - 1.0, 1 - s1]]) / 2
    np.testing.assert_allclose(g, expected, atol=1e-6)


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kind", ["mse", "mae", "huber", "bce", "cce"])
def test_shape_mismatch(kind):
    loss, _, _, _ = _case(kind)
    t = np.zeros((4, 3))
    p = np.full((4, 2), 0.5)
    for fn in (loss, loss.gradient):
        with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
            fn(t, p)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        loss(np.zeros((3, 4)), np.full((4, 3), 0.5))


def test_bad_sample_weight():
    loss = losses.MeanSquaredError()
    with pytest.raises(ValueError, match="sample_weight"):
        loss(np.zeros((4, 3)), np.ones((4, 3)), sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="sample_weight"):
        loss.gradient(np.zeros((4, 3)), np.ones((4, 3)), sample_weight=np.ones((4, 2)))


def test_sparse_ids_shapes_and_range():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    x = np.random.default_rng(0).normal(size=(4, 3))
    ids = np.array([0, 2, 1, 2])
    assert loss(ids[:, None], x) == pytest.approx(loss(ids, x), rel=0)
    assert loss(ids.astype(np.float64), x) == pytest.approx(loss(ids, x), rel=0)
    for bad in ([0, 3, 1, 2], [0, -1, 1, 2]):
        for fn in (loss, loss.gradient):
            with pytest.raises(ValueError, match="class id"):
                fn(np.array(bad), x)
    with pytest.raises(ValueError, match="integer"):
        loss(np.array([0.0, 1.5, 1.0, 2.0]), x)
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        loss(np.zeros((4, 3), dtype=int), x)          # one-hot given to the sparse loss
    with pytest.raises(ValueError, match=r"\(5,\)"):
        loss(np.zeros(5, dtype=int), x)


# --------------------------------------------------------------------------- registry

NAMES = {
    "binary_crossentropy": losses.BinaryCrossentropy,
    "categorical_crossentropy": losses.CategoricalCrossentropy,
    "sparse_categorical_crossentropy": losses.SparseCategoricalCrossentropy,
    "mean_squared_error": losses.MeanSquaredError,
    "mse": losses.MeanSquaredError,
    "MSE": losses.MeanSquaredError,
    "mean_absolute_error": losses.MeanAbsoluteError,
    "mae": losses.MeanAbsoluteError,
    "huber": losses.Huber,
    "huber_loss": losses.Huber,
    "BinaryCrossentropy": losses.BinaryCrossentropy,
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_get_by_name(name):
    obj = losses.get(name)
    assert type(obj) is NAMES[name]
    if hasattr(obj, "from_logits"):
        assert obj.from_logits is False


def test_get_instance_none_and_unknown():
    inst = losses.Huber(delta=2.0)
    assert losses.get(inst) is inst
    assert losses.get(None) is None
    with pytest.raises(ValueError, match="binary_crossentropy.*huber"):
        losses.get("hinge")
    with pytest.raises(ValueError):
        losses.get(42)
    with pytest.raises(ValueError):
        losses.get({"class_name": "Nope", "config": {}})


@pytest.mark.parametrize("loss", [
    losses.BinaryCrossentropy(from_logits=True), losses.BinaryCrossentropy(),
    losses.CategoricalCrossentropy(from_logits=True),
    losses.SparseCategoricalCrossentropy(from_logits=True, name="my_sparse"),
    losses.MeanSquaredError(), losses.MeanAbsoluteError(), losses.Huber(delta=0.25),
], ids=repr)
def test_config_round_trip(loss):
    cfg = loss.get_config()
    for restored in (losses.get({"class_name": type(loss).__name__, "config": cfg}),
                     losses.get(losses.serialize(loss)), type(loss).from_config(cfg)):
        assert type(restored) is type(loss)
        assert restored is not loss
        assert restored.get_config() == cfg
    if loss.name != "my_sparse":          # a bare config resolves through its name
        assert losses.get(dict(cfg)).get_config() == cfg
    assert losses.get(losses.serialize(loss)) == loss


def test_config_keeps_parameters():
    assert losses.get(losses.serialize(losses.Huber(delta=0.25))).delta == 0.25
    r = losses.get(losses.serialize(losses.BinaryCrossentropy(from_logits=True)))
    assert r.from_logits is True
    x = np.array([[3.0]])
    assert r(np.array([[1.0]]), x) == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-12)


# --------------------------------------------------------------------------- torch

def test_torch_bce_with_logits():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    loss, t, x, _ = _case("bce_logits", (6, 3), rng=np.random.default_rng(21))
    x = x * 10                                          # include large logits
    w = np.random.default_rng(2).uniform(0, 2, 6)
    xt = torch.tensor(x, requires_grad=True)
    ref = F.binary_cross_entropy_with_logits(xt, torch.tensor(t),
                                             weight=torch.tensor(w)[:, None])
    ref.backward()
    assert loss(t, x, sample_weight=w) == pytest.approx(ref.item(), rel=1e-12)
    assert rel(loss.gradient(t, x, sample_weight=w), xt.grad.numpy()) < 1e-12


@pytest.mark.parametrize("sparse", [False, True])
def test_torch_cross_entropy(sparse):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(22)
    x = rng.normal(size=(7, 5)) * 20
    ids = rng.integers(0, 5, 7)
    w = rng.uniform(0, 2, 7)
    xt = torch.tensor(x, requires_grad=True)
    ref = (F.cross_entropy(xt, torch.tensor(ids), reduction="none")
           * torch.tensor(w)).mean()
    ref.backward()
    if sparse:
        loss, t = losses.SparseCategoricalCrossentropy(from_logits=True), ids
    else:
        loss, t = losses.CategoricalCrossentropy(from_logits=True), _onehot(ids, 5)
    assert loss(t, x, sample_weight=w) == pytest.approx(ref.item(), rel=1e-12)
    assert rel(loss.gradient(t, x, sample_weight=w), xt.grad.numpy()) < 1e-12


@pytest.mark.parametrize("dtype,big", [(np.float32, 3e38), (np.float64, 1e308)])
def test_categorical_from_logits_finite_for_any_finite_logits(dtype, big):
    # a logit gap above the largest float: log_softmax gives -inf for the small logit, and a
    # zero target times it must add 0 (not NaN); the loss is 0 where the target's logit wins
    x = np.array([[big, -big], [-big, big]], dtype)
    t = np.array([[1.0, 0.0], [0.0, 1.0]], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cce = losses.CategoricalCrossentropy(from_logits=True)(t, x)
        scce = losses.SparseCategoricalCrossentropy(from_logits=True)(np.array([0, 1]), x)
    assert cce == 0.0 and scce == 0.0
    # the target's logit loses by 2 big: the true loss 2 big is above the largest float, so
    # it saturates, to the largest float or (averaged in the same dtype) inf, not NaN
    with np.errstate(over="ignore"):
        wrong = losses.CategoricalCrossentropy(from_logits=True)(t[::-1].copy(), x)
    assert wrong >= float(np.finfo(dtype).max) / 2


@pytest.mark.parametrize("bad", [None, "1", True, np.nan, np.inf, -0.5, [1.0]])
def test_huber_delta_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match="`delta` must be a finite number >= 0"):
        losses.Huber(delta=bad)


def test_label_smoothing_smooths_targets_and_round_trips():
    rng = np.random.default_rng(0)
    t = (rng.random((6, 2)) > 0.5).astype(np.float64)
    p = rng.random((6, 2))
    ls = losses.BinaryCrossentropy(label_smoothing=0.2)
    ref = losses.BinaryCrossentropy()
    smoothed = t * 0.8 + 0.1
    assert math.isclose(ls(t, p), ref(smoothed, p), rel_tol=1e-12)
    np.testing.assert_allclose(ls.gradient(t, p), ref.gradient(smoothed, p), rtol=1e-12)
    c = np.eye(3)[[0, 2, 1, 1]]
    q = rng.random((4, 3))
    cls = losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.3)
    cref = losses.CategoricalCrossentropy(from_logits=True)
    assert math.isclose(cls(c, q), cref(c * 0.7 + 0.1, q), rel_tol=1e-12)
    np.testing.assert_allclose(cls.gradient(c, q), cref.gradient(c * 0.7 + 0.1, q), rtol=1e-12)
    for loss in (ls, cls):
        again = losses.get(losses.serialize(loss))
        assert again == loss and again.label_smoothing == loss.label_smoothing
    assert "label_smoothing" not in losses.BinaryCrossentropy().get_config()
    for bad in (-0.1, 1.5, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="label_smoothing"):
            losses.BinaryCrossentropy(label_smoothing=bad)
    with pytest.raises(TypeError):      # as in Keras: sparse labels are not smoothed
        losses.SparseCategoricalCrossentropy(label_smoothing=0.1)


# --------------------------------------------------------------------------- ignore_class
# Keras 3's SparseCategoricalCrossentropy(ignore_class=...): entries whose label is the
# ignored class have a loss of 0 and no gradient and are left out of the mean (the weighted
# sum over the others divided by their number). Tolerances: hand-computed values are exact
# up to float64 rounding of a few logs (1e-12); the float64 finite differences use h = 1e-6
# on smooth functions (truncation ~h^2, cancellation ~1e-16 / h: 1e-7 relative); torch's own
# float64 cross entropy agrees to rounding (1e-12); Keras reduces in float32 whatever the
# inputs' dtype (about 1e-7 relative seen), so 1e-5 relative there.

IGNORED = [-1, 255, 2]          # below, above and inside [0, classes) for 4 or more classes


def _ignore_case(rng, shape, ignore, from_logits):
    x = rng.normal(size=shape) * 3 if from_logits else rng.uniform(0.05, 1.0, shape)
    ids = rng.integers(0, shape[-1], shape[:-1])
    ids[rng.random(shape[:-1]) < 0.35] = ignore
    ids.flat[0] = 0 if ignore != 0 else 1                # at least one entry counts
    return x, ids


def test_ignore_class_hand_computed_logits():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    x = np.array([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]])
    ids = np.array([0, 1, -1])
    # log 2 and log 4 over the 2 entries that count (not over 3)
    value, g = loss.value_and_gradient(ids, x)
    assert value == pytest.approx(1.5 * math.log(2.0), rel=1e-12)
    np.testing.assert_allclose(g, [[-0.25, 0.25], [0.375, -0.375], [0.0, 0.0]], atol=1e-15)
    assert g[2].tolist() == [0.0, 0.0]
    # weights multiply the losses; the divisor stays the number of entries that count
    value, g = loss.value_and_gradient(ids, x, sample_weight=np.array([2.0, 1.0, 7.0]))
    assert value == pytest.approx((2 * math.log(2.0) + math.log(4.0)) / 2, rel=1e-12)
    np.testing.assert_allclose(g, [[-0.5, 0.5], [0.375, -0.375], [0.0, 0.0]], atol=1e-15)
    # without ignore_class the same labels are out of range
    with pytest.raises(ValueError, match="class id -1"):
        losses.SparseCategoricalCrossentropy(from_logits=True)(ids, x)


def test_ignore_class_hand_computed_probabilities_with_a_zero_row():
    # the ignored row is all zeros (0 / 0 when rescaled): no warning, no NaN
    loss = losses.SparseCategoricalCrossentropy(ignore_class=255)
    p = np.array([[0.25, 0.75], [0.5, 0.5], [0.0, 0.0]])
    ids = np.array([[1], [0], [255]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, g = loss.value_and_gradient(ids, p)
    assert value == pytest.approx((-math.log(0.75) + math.log(2.0)) / 2, rel=1e-12)
    np.testing.assert_allclose(g, [[0.5, -1 / 6], [-0.5, 0.5], [0.0, 0.0]], atol=1e-15)


def test_ignore_class_every_entry_ignored_gives_zero():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    x = np.random.default_rng(0).normal(size=(3, 4, 5))
    value, g = loss.value_and_gradient(np.full((3, 4), -1), x, sample_weight=np.ones(3))
    assert value == 0.0 and not np.any(g)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("ignore", IGNORED)
def test_ignore_class_equals_the_plain_loss_on_the_entries_that_count(from_logits, ignore):
    # 3-D (batch, time, classes) with per-step weights: the value and the gradient are the
    # plain loss's on the entries that count alone; the ignored entries get no gradient
    rng = np.random.default_rng(abs(ignore) + 3 * from_logits)
    x, ids = _ignore_case(rng, (4, 5, 6), ignore, from_logits)
    w = rng.uniform(0.2, 2.0, (4, 5))
    keep = ids != ignore
    ours = losses.SparseCategoricalCrossentropy(from_logits=from_logits, ignore_class=ignore)
    plain = losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    value, g = ours.value_and_gradient(ids, x, sample_weight=w)
    want, gwant = plain.value_and_gradient(ids[keep], x[keep], sample_weight=w[keep])
    assert value == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(g[keep], gwant, rtol=1e-12, atol=1e-15)
    assert not np.any(g[~keep])
    # per-sequence weights (batch,) weigh every step of a sequence
    value = ours(ids, x, sample_weight=w[:, 0])
    want = plain(ids[keep], x[keep], sample_weight=np.broadcast_to(w[:, :1], keep.shape)[keep])
    assert value == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("from_logits", [True, False])
def test_ignore_class_gradient_finite_differences(from_logits):
    rng = np.random.default_rng(41)
    x, ids = _ignore_case(rng, (3, 4, 5), -1, from_logits)
    w = rng.uniform(0.2, 2.0, (3, 4))
    loss = losses.SparseCategoricalCrossentropy(from_logits=from_logits, ignore_class=-1)
    g = loss.gradient(ids, x, sample_weight=w)
    fd = fd_grad(lambda v: loss(ids, v, sample_weight=w), x)
    assert rel(g, fd) < 1e-7
    assert not np.any(g[ids == -1]) and not np.any(fd[ids == -1])


def test_ignore_class_non_finite_predictions_of_ignored_entries_do_not_matter():
    rng = np.random.default_rng(5)
    for from_logits in (True, False):
        x, ids = _ignore_case(rng, (6, 3), -1, from_logits)
        ids[1] = ids[4] = -1
        loss = losses.SparseCategoricalCrossentropy(from_logits=from_logits, ignore_class=-1)
        want, gwant = loss.value_and_gradient(ids, x)
        bad = x.copy()
        bad[1] = [np.nan, np.inf, -np.inf]
        bad[4] = 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            value, g = loss.value_and_gradient(ids, bad)
        assert value == want
        np.testing.assert_array_equal(g, gwant)


def test_ignore_class_float32_and_label_checks():
    rng = np.random.default_rng(6)
    x, ids = _ignore_case(rng, (5, 4), 255, True)
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    v32, g32 = loss.value_and_gradient(ids, x.astype(np.float32))
    v64, g64 = loss.value_and_gradient(ids, x)
    assert g32.dtype == np.float32
    assert v32 == pytest.approx(v64, rel=1e-6)            # float32 arithmetic
    np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=1e-7)
    # ids may be floats; labels other than the ignored one are still checked
    assert loss(ids.astype(np.float64), x) == pytest.approx(v64, rel=1e-12)
    for bad in (-1, 4):
        wrong = ids.copy()
        wrong[2] = bad
        for fn in (loss, loss.gradient):
            with pytest.raises(ValueError, match=f"class id {bad} .*ignore_class=255"):
                fn(wrong, x)
    with pytest.raises(ValueError, match="integer"):
        loss(np.array([0.0, 1.5, 255.0, 2.0, 1.0]), x)


@pytest.mark.parametrize("bad", [1.5, "255", True, [1], np.float64(2.0)])
def test_ignore_class_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match="`ignore_class` must be an integer or None"):
        losses.SparseCategoricalCrossentropy(ignore_class=bad)
    # (Keras's argument order: a name given second by position is refused, not ignored)
    with pytest.raises(ValueError, match="ignore_class"):
        losses.SparseCategoricalCrossentropy(True, "my_loss")


def test_ignore_class_config_round_trip_and_old_configs():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=np.int64(-1),
                                                name="scce")
    cfg = loss.get_config()
    assert cfg == {"name": "scce", "from_logits": True, "ignore_class": -1}
    assert type(cfg["ignore_class"]) is int                     # JSON-serialisable
    for restored in (losses.get(losses.serialize(loss)),
                     losses.SparseCategoricalCrossentropy.from_config(cfg)):
        assert restored == loss and restored.ignore_class == -1
    assert losses.SparseCategoricalCrossentropy(ignore_class=-1) != \
        losses.SparseCategoricalCrossentropy()
    # without ignore_class the config is what it was, and configs without the key load
    assert "ignore_class" not in losses.SparseCategoricalCrossentropy().get_config()
    old = {"class_name": "SparseCategoricalCrossentropy",
           "config": {"name": "sparse_categorical_crossentropy", "from_logits": False}}
    assert losses.get(old).ignore_class is None
    assert losses.get("sparse_categorical_crossentropy").ignore_class is None
    # Keras's config spells it out as None
    assert losses.SparseCategoricalCrossentropy.from_config(
        {"name": "s", "from_logits": True, "ignore_class": None}).ignore_class is None


def _ignore_model(rng, ignore, N=10, T=5, C=4):
    from fastlstm import layers, models
    x = rng.standard_normal((N, T, 3))
    y = rng.integers(0, C, (N, T))
    y[rng.random((N, T)) < 0.3] = ignore
    m = models.Sequential([layers.Input((T, 3)), layers.LSTM(4, return_sequences=True),
                           layers.Dense(C)], dtype="float64")
    m.compile("sgd", losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore))
    p = m.predict(x, verbose=0)
    keep = y != ignore
    want = losses.SparseCategoricalCrossentropy(from_logits=True)(y[keep], p[keep])
    return m, x, y, want


def test_ignore_class_in_a_sequence_model_and_saved_with_it(tmp_path):
    from fastlstm import models
    m, x, y, want = _ignore_model(np.random.default_rng(8), 2)
    assert m.evaluate(x, y, batch_size=10, verbose=0) == pytest.approx(want, rel=1e-12)
    m.fit(x, y, batch_size=5, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    m.save(path)
    loaded = models.load_model(path)
    assert loaded.loss == m.loss and loaded.loss.ignore_class == 2
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(m.evaluate(x, y, verbose=0),
                                                             rel=1e-12)


def test_mask_argument_leaves_out_entries_as_keras_output_masks_do():
    # _value / _value_and_gradient(mask=...): a model's output mask combined with the loss's
    # own ignored entries (Keras: the mean over the entries that both keep)
    rng = np.random.default_rng(9)
    x, ids = _ignore_case(rng, (4, 6, 5), -1, True)
    mask = rng.random((4, 6)) < 0.7
    mask[0, 0] = True
    w = rng.uniform(0.2, 2.0, (4, 6))
    keep = mask & (ids != -1)
    ours = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    plain = losses.SparseCategoricalCrossentropy(from_logits=True)
    value, g = ours._value_and_gradient(ids, x, w, mask=mask)
    want, gwant = plain.value_and_gradient(ids[keep], x[keep], sample_weight=w[keep])
    assert float(value) == pytest.approx(want, rel=1e-12)
    assert float(ours._value(ids, x, w, mask=mask.astype(np.float64))) == \
        pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(g[keep], gwant, rtol=1e-12, atol=1e-15)
    assert not np.any(g[~keep])
    # any loss: the same as the mask folded into the weights (what the models did so far)
    mse = losses.MeanSquaredError()
    t = rng.normal(size=x.shape)
    folded = w * mask * mask.size / mask.sum()
    assert float(mse._value(t, x, w, mask=mask)) == pytest.approx(mse(t, x, folded), rel=1e-12)
    with pytest.raises(ValueError, match="mask"):
        ours._value(ids, x, mask=np.ones((4, 5)))


def test_ignore_class_torch_cross_entropy_ignore_index():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(10)
    for ignore in IGNORED:
        x, ids = _ignore_case(rng, (9, 6), ignore, True)
        x = x * 5
        w = rng.uniform(0.2, 2.0, 9)
        xt = torch.tensor(x, requires_grad=True)
        per = F.cross_entropy(xt, torch.tensor(ids), ignore_index=ignore, reduction="none")
        ref = (per * torch.tensor(w)).sum() / int((ids != ignore).sum())
        ref.backward()
        loss = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore)
        assert loss(ids, x, sample_weight=w) == pytest.approx(ref.item(), rel=1e-12)
        assert rel(loss.gradient(ids, x, sample_weight=w), xt.grad.numpy()) < 1e-12


def _keras_scce(keras, torch, ids, x, w, from_logits, ignore, mask=None):
    """Keras's value and its gradient (torch autograd through Keras) for float64 x."""
    from keras.src import backend
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits,
                                                      ignore_class=ignore)
    xt = torch.tensor(x, requires_grad=True)
    pred = xt * 1.0
    if mask is not None:
        backend.set_keras_mask(pred, torch.tensor(mask))
    value = loss(torch.tensor(ids), pred, sample_weight=None if w is None else torch.tensor(w))
    value.backward()
    return value.item(), xt.grad.numpy()


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("shape", [(12, 5), (4, 6, 5)], ids=["2d", "3d"])
def test_ignore_class_matches_keras(from_logits, shape):
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("the gradient is taken with torch autograd through Keras")
    rng = np.random.default_rng(11 + len(shape) + 2 * from_logits)
    for ignore in IGNORED + [None]:
        for weighted in (False, True):
            x, ids = _ignore_case(rng, shape, -1 if ignore is None else ignore, from_logits)
            if ignore is None:
                ids[ids == -1] = 1
            # (Keras needs weights of the per-sample loss shape once it masks)
            w = rng.uniform(0.2, 2.0, shape[:-1]) if weighted else None
            want, gwant = _keras_scce(keras, torch, ids, x, w, from_logits, ignore)
            loss = losses.SparseCategoricalCrossentropy(from_logits=from_logits,
                                                        ignore_class=ignore)
            value, g = loss.value_and_gradient(ids, x, sample_weight=w)
            assert value == pytest.approx(want, rel=1e-5), (ignore, weighted)
            assert rel(g, gwant) < 1e-5, (ignore, weighted)
            if ignore is not None:
                assert not np.any(g[ids == ignore])
    # a model's output mask (Keras: the loss's mask and the output mask together)
    x, ids = _ignore_case(rng, (4, 6, 5), -1, from_logits)
    mask = rng.random((4, 6)) < 0.7
    w = rng.uniform(0.2, 2.0, (4, 6))
    want, gwant = _keras_scce(keras, torch, ids, x, w, from_logits, -1, mask)
    loss = losses.SparseCategoricalCrossentropy(from_logits=from_logits, ignore_class=-1)
    value, g = loss._value_and_gradient(ids, x, w, mask=mask)
    assert float(value) == pytest.approx(want, rel=1e-5)
    assert rel(g, gwant) < 1e-5


@pytest.mark.parametrize("ignore", [-1, 255])
def test_ignore_class_outside_the_classes_in_a_model(ignore):
    m, x, y, want = _ignore_model(np.random.default_rng(13), ignore)
    assert m.evaluate(x, y, batch_size=10, verbose=0) == pytest.approx(want, rel=1e-12)
    m.fit(x, y, batch_size=5, epochs=1, verbose=0)


def test_ignore_class_with_an_output_mask_in_a_model_follows_keras():
    # Keras: the weighted sum over the steps both unmasked and not ignored, divided by
    # their number
    from fastlstm import layers, models
    rng = np.random.default_rng(12)
    N, T, V, C = 8, 6, 5, 4
    x = np.zeros((N, T), np.int64)
    for i, n in enumerate(rng.integers(1, T + 1, N)):
        x[i, :n] = rng.integers(1, V, n)
    y = rng.integers(0, C - 1, (N, T))
    y[rng.random((N, T)) < 0.3] = C - 1          # (in range: see the test above)
    m = models.Sequential([layers.Embedding(V, 4, mask_zero=True, input_shape=(T,)),
                           layers.LSTM(3, return_sequences=True),
                           layers.Dense(C, activation="softmax")], dtype="float64")
    m.compile("sgd", losses.SparseCategoricalCrossentropy(ignore_class=C - 1))
    p = m.predict(x, verbose=0)
    keep = (x != 0) & (y != C - 1)
    want = losses.SparseCategoricalCrossentropy()(y[keep], p[keep])
    assert m.evaluate(x, y, batch_size=N, verbose=0) == pytest.approx(want, rel=1e-9)
