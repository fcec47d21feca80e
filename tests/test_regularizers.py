"""fastlstm.regularizers: penalty values against Keras's formulas, gradients against
central finite differences, dtypes, factor validation, the name registry and config
round trips.
"""

import json
import math

import numpy as np
import pytest

from fastlstm import regularizers as R


def fd_grad(f, w, h=1e-5):
    """Central-difference gradient of the scalar f at w (float64), element by element."""
    w = np.array(w, dtype=np.float64)
    g = np.empty_like(w)
    for idx in np.ndindex(w.shape):
        v = w[idx]
        wp, wm = v + h, v - h
        w[idx] = wp
        fp = f(w)
        w[idx] = wm
        fm = f(w)
        w[idx] = v
        g[idx] = (fp - fm) / (wp - wm)
    return g


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


# --------------------------------------------------------------------------- values

def test_values_match_keras_formulas():
    w = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -0.25]])
    l1 = sum(abs(v) for v in w.ravel())
    l2 = sum(v * v for v in w.ravel())
    assert R.L1(0.1)(w) == pytest.approx(0.1 * l1, rel=1e-15)
    assert R.L2(0.3)(w) == pytest.approx(0.3 * l2, rel=1e-15)     # no factor 1/2
    assert R.L1L2(l1=0.1, l2=0.3)(w) == pytest.approx(0.1 * l1 + 0.3 * l2, rel=1e-15)
    # Keras's documented example: L2(2.)(ones((5, 5))) == 50
    assert R.L2(2.0)(np.ones((5, 5), dtype=np.float32)) == 50.0
    for reg in (R.L1(), R.L2(), R.L1L2(0.2, 0.2)):
        v = reg(w.astype(np.float32))
        assert type(v) is float
    assert R.L1(0.0)(w) == 0.0 and R.L1L2()(w) == 0.0
    assert R.L1(0.5)(-w) == R.L1(0.5)(w)


def test_defaults_follow_keras():
    assert R.L1().l1 == 0.01 and R.L2().l2 == 0.01
    assert (R.L1L2().l1, R.L1L2().l2) == (0.0, 0.0)
    # None means the default, as in Keras
    assert R.L1(None).l1 == 0.01 and R.L2(None).l2 == 0.01
    assert R.L1L2(None, 0.5).get_config() == {"l1": 0.0, "l2": 0.5}


def test_value_is_accumulated_in_float64():
    w = np.full(10 ** 6, 0.1, dtype=np.float32)
    want = 1e6 * float(np.float32(0.1)) ** 2
    assert R.L2(1.0)(w) == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------------- gradients

# Tolerance 1e-7 relative: the penalties are piecewise quadratic, so the float64
# central difference (h = 1e-5, away from w = 0 for the L1 kink) is exact up to
# rounding, about eps * |f| / h ~ 1e-10 relative; a wrong factor (a missing 2 on the
# L2 term) gives an error of order 1.
@pytest.mark.parametrize("reg", [R.L1(0.03), R.L2(0.07), R.L1L2(0.02, 0.05)],
                         ids=["L1", "L2", "L1L2"])
def test_gradient_matches_finite_differences(reg):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 5)) * 3.0
    w[np.abs(w) < 1e-3] = 0.5
    g = reg.gradient(w)
    assert g.dtype == np.float64 and g.shape == w.shape
    assert rel_err(g, fd_grad(reg, w)) < 1e-7


def test_gradient_closed_forms_and_dtypes():
    w = np.array([-2.0, 0.0, 3.0], dtype=np.float32)
    g1 = R.L1(0.5).gradient(w)
    assert g1.dtype == np.float32
    np.testing.assert_array_equal(g1, [-0.5, 0.0, 0.5])        # sign(0) = 0
    g2 = R.L2(0.5).gradient(w)
    assert g2.dtype == np.float32
    np.testing.assert_array_equal(g2, [-2.0, 0.0, 3.0])        # 2 * 0.5 * w
    g12 = R.L1L2(0.5, 0.5).gradient(w)
    assert g12.dtype == np.float32
    np.testing.assert_array_equal(g12, g1 + g2)
    assert R.L1L2().gradient(w).dtype == np.float32 and not R.L1L2().gradient(w).any()
    gi = R.L2(1.0).gradient(np.array([1, -2]))
    assert gi.dtype == np.float32
    np.testing.assert_array_equal(gi, [2.0, -4.0])
    assert R.L1(0.1).gradient(np.zeros((2, 3), dtype=np.float64)).dtype == np.float64
    with pytest.raises(TypeError):
        R.L2()(np.array(["x"]))


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("cls, arg", [(R.L1, "l1"), (R.L2, "l2"), (R.L1L2, "l1"),
                                      (R.L1L2, "l2")])
@pytest.mark.parametrize("bad", [-0.1, -1, float("nan"), float("inf"), "0.1", [0.1], True,
                                 np.bool_(True)])
def test_bad_factors_raise_value_error_naming_the_argument(cls, arg, bad):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        cls(**{arg: bad})


def test_numpy_factors_accepted():
    assert R.L1(np.float32(0.25)).l1 == 0.25
    assert R.L2(np.int64(2)).l2 == 2.0
    assert type(R.L2(np.float64(0.5)).get_config()["l2"]) is float


# --------------------------------------------------------------------------- registry

def test_get_names_classes_instances_dicts():
    assert R.get("l1") == R.L1(0.01)
    assert R.get("l2") == R.L2(0.01)
    assert R.get("l1_l2") == R.L1L2(0.01, 0.01)      # Keras's documented string defaults
    assert R.get("l1l2") == R.L1L2(0.01, 0.01)
    assert R.get("L1L2") == R.L1L2()                 # the class's own defaults
    assert R.get("L1") == R.L1() and R.get("L2") == R.L2()
    assert R.get(R.L2) == R.L2()
    inst = R.L1(0.3)
    assert R.get(inst) is inst
    assert R.get(None) is None
    assert R.get({"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}) == R.L1L2(0.1, 0.2)
    assert R.L1(0.1) != R.L2(0.1) and R.L1(0.1) != R.L1(0.2)


def test_get_errors():
    with pytest.raises(ValueError, match="Unknown regularizer 'l3'. Valid names: l1, l1_l2, "
                                         "l1l2, l2"):
        R.get("l3")
    with pytest.raises(ValueError, match="Unknown regularizer class"):
        R.get({"class_name": "L3", "config": {}})
    with pytest.raises(ValueError, match="class_name"):
        R.get({"config": {"l1": 0.1}})
    with pytest.raises(ValueError, match="Invalid config"):
        R.get({"class_name": "L1", "config": {"l2": 0.1}})
    with pytest.raises(ValueError, match="`l2`"):
        R.get({"class_name": "L2", "config": {"l2": -1.0}})
    with pytest.raises(ValueError, match="Could not interpret"):
        R.get(0.01)
    with pytest.raises(ValueError, match="Could not interpret"):
        R.get(lambda w: 0.0)
    with pytest.raises(ValueError):
        R.serialize("l2")


@pytest.mark.parametrize("reg", [R.L1(0.125), R.L2(0.5), R.L1L2(0.01, 0.02), R.L1L2()],
                         ids=repr)
def test_config_round_trip(reg):
    config = reg.get_config()
    assert json.loads(json.dumps(config)) == config
    assert type(reg).from_config(config) == reg
    ser = R.serialize(reg)
    assert ser == {"class_name": type(reg).__name__, "config": config}
    back = R.deserialize(json.loads(json.dumps(ser)))
    assert back == reg
    w = np.linspace(-1.0, 1.0, 7)
    assert back(w) == reg(w)
    assert R.serialize(None) is None
    assert math.isfinite(reg(w))


def test_keras_lowercase_aliases():
    """Keras code writes kernel_regularizer=regularizers.l2(0.01); with the import changed it
    must run (the aliases are the classes, as in Keras 3)."""
    from fastlstm import layers
    assert R.l2(0.5) == R.L2(0.5)
    assert R.l1(0.5) == R.L1(0.5)
    assert R.l1_l2(l1=0.1, l2=0.2) == R.L1L2(0.1, 0.2)
    assert R.l1_l2().get_config() == {"l1": 0.0, "l2": 0.0}
    dense = layers.Dense(2, kernel_regularizer=R.l2(0.01))
    assert dense.get_config()["kernel_regularizer"] == {"class_name": "L2",
                                                        "config": {"l2": 0.01}}
