"""fastlstm.activations: values against closed forms written here, the backward
vector-Jacobian products against central finite differences (on fresh random inputs,
large magnitudes included, with warnings as errors), dtype handling, and the
name registry (get / serialize / deserialize) with its errors.
"""

import math
import warnings

import numpy as np
import pytest

from fastlstm import activations

REQUIRED = ["linear", "sigmoid", "tanh", "relu", "softmax"]
ALL = REQUIRED + ["elu", "selu", "softplus", "softsign", "exponential", "silu"]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# --------------------------------------------------------------------------- references
# Scalar float64 formulas from the definitions, independent of the module.

def _sig(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


SCALAR_REF = {
    "linear": lambda v: v,
    "sigmoid": _sig,
    "tanh": math.tanh,
    "relu": lambda v: max(v, 0.0),
    "elu": lambda v: v if v > 0 else math.expm1(v),
    "selu": lambda v: SELU_SCALE * (v if v > 0 else SELU_ALPHA * math.expm1(v)),
    "softplus": lambda v: max(v, 0.0) + math.log1p(math.exp(-abs(v))),
    "softsign": lambda v: v / (1.0 + abs(v)),
    "exponential": math.exp,
    "silu": lambda v: v * _sig(v),
}


def ref_apply(name, x):
    x = np.asarray(x, dtype=np.float64)
    if name == "softmax":
        out = np.empty_like(x)
        for idx in np.ndindex(x.shape[:-1]):
            row = [float(v) for v in x[idx]]
            m = max(row)
            e = [math.exp(v - m) for v in row]
            s = sum(e)
            out[idx] = [v / s for v in e]
        return out
    f = SCALAR_REF[name]
    return np.vectorize(f, otypes=[np.float64])(x)


def fd_vjp(f, x, dy, h=1e-5):
    """Central-difference gradient of L(x) = sum(dy * f(x)), one element at a time.

    The step actually taken is (x + h) - (x - h) as rounded in float64, not 2h, so
    that the rounding of x + h at |x| ~ 50 does not bias the quotient.
    """
    x = np.array(x, dtype=np.float64)
    g = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        v = x[idx]
        xp, xm = v + h, v - h
        x[idx] = xp
        fp = float(np.sum(dy * f(x)))
        x[idx] = xm
        fm = float(np.sum(dy * f(x)))
        x[idx] = v
        g[idx] = (fp - fm) / (xp - xm)
    return g


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def fresh_rng():
    """A generator with fresh entropy; its seed is returned for failure messages."""
    seed = int(np.random.SeedSequence().entropy % (2 ** 63))
    return np.random.default_rng(seed), seed


def away_from_kinks(x, eps=1e-3):
    """Moves values with |x| < eps (relu/elu/selu kinks at 0) out to +-eps or beyond,
    so a finite-difference step of 1e-5 never straddles the kink."""
    x = np.array(x, dtype=np.float64)
    small = np.abs(x) < eps
    x[small] = np.where(x[small] < 0, -eps, eps) * 2
    return x


# --------------------------------------------------------------------------- values

@pytest.mark.parametrize("name", ALL)
def test_values_match_closed_forms(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 7)) * 3.0
    x[0, :4] = [-50.0, 50.0, -30.0, 30.0]
    want = ref_apply(name, x)
    fn = getattr(activations, name)
    got = fn(x)
    assert got.dtype == np.float64 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)
    # the object gives the same values as the function
    np.testing.assert_array_equal(activations.get(name)(x), got)


def test_specific_values():
    assert activations.sigmoid(np.array(0.0)) == 0.5
    np.testing.assert_array_equal(activations.relu(np.array([-2.0, 0.0, 3.0])), [0.0, 0.0, 3.0])
    np.testing.assert_allclose(activations.softmax(np.array([0.0, math.log(3.0)])), [0.25, 0.75],
                               rtol=1e-15)
    np.testing.assert_array_equal(activations.linear(np.array([1.5, -2.0])), [1.5, -2.0])
    assert activations.tanh(np.array(0.5)) == pytest.approx(math.tanh(0.5), rel=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_inputs_are_finite_without_warnings(dtype):
    x = np.array([-1e4, -1000.0, -100.0, -50.0, 0.0, 50.0, 100.0, 1000.0, 1e4], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = activations.sigmoid(x)
        assert s[0] == 0.0 and s[-1] == 1.0 and s[4] == 0.5
        assert np.all(np.diff(s) >= 0)
        sm = activations.softmax(np.stack([x, -x]))
        np.testing.assert_allclose(sm.sum(axis=-1), 1.0, rtol=1e-6)
        assert sm[0, -1] == 1.0 and sm[1, 0] == 1.0
        sp = activations.softplus(x)
        assert sp[0] == 0.0 and sp[-1] == x[-1]
        for name in ["tanh", "relu", "elu", "selu", "softsign", "silu", "linear"]:
            assert np.all(np.isfinite(activations.get(name)(x))), name
        # exp really overflows: inf, but silently
        assert np.isinf(activations.exponential(x)[-1])


def test_softmax_axis_and_shift_invariance():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5))
    for axis in (0, 1, -1):
        y = activations.softmax(x, axis=axis)
        np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-14)
        np.testing.assert_allclose(activations.softmax(x + 1000.0, axis=axis), y, rtol=1e-12)
    np.testing.assert_array_equal(activations.softmax(x), activations.softmax(x, axis=-1))
    with pytest.raises(ValueError, match="at least one axis"):
        activations.softmax(np.float64(1.0))


# --------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("name", ALL)
def test_float32_preserved_and_accurate(name):
    rng = np.random.default_rng(3)
    x64 = rng.standard_normal((5, 6)) * 4.0
    x32 = x64.astype(np.float32)
    act = activations.get(name)
    y32 = act(x32)
    assert y32.dtype == np.float32
    # float32 arithmetic on float32-rounded inputs: a few ulps (2**-24 ~ 6e-8)
    assert rel_err(y32, ref_apply(name, x32.astype(np.float64))) < 1e-6
    dy32 = rng.standard_normal((5, 6)).astype(np.float32)
    dx32 = act.backward(x32, y32, dy32)
    assert dx32.dtype == np.float32
    dx64 = act.backward(x32.astype(np.float64), None, dy32.astype(np.float64))
    assert rel_err(dx32, dx64) < 1e-5


def test_float16_and_integer_inputs():
    x16 = np.array([-3.0, -0.5, 0.0, 2.0, 20.0], dtype=np.float16)
    y16 = activations.sigmoid(x16)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16.astype(np.float64), ref_apply("sigmoid", x16), rtol=1e-3)
    xi = np.array([-2, 0, 3])
    for name in ALL:
        y = activations.get(name)(xi)
        assert y.dtype == np.float32, name
    np.testing.assert_array_equal(activations.relu(xi), np.array([0, 0, 3], dtype=np.float32))
    with pytest.raises(TypeError):
        activations.tanh(np.array(["a"]))


def test_linear_returns_a_new_array():
    x = np.arange(4.0)
    y = activations.linear(x)
    y[0] = 99.0
    assert x[0] == 0.0


# --------------------------------------------------------------------------- backward

# Tolerance 1e-7 on ||dx - fd|| / ||fd|| in float64: the central difference with
# h = 1e-5 has a truncation error of about h**2 * |f'''| / 6 ~ 2e-11 relative (also
# for exp(50), where f''' = f') and a rounding error of about eps * sum|dy * f(x)| / h,
# which with entries |x| up to 50 reaches ~2e-9 (the worst seen over 300 fresh draws
# per case).  1e-7 keeps a factor ~50 above that, while a wrong derivative term gives
# errors of order 1e-2 or more.
FD_TOL = 1e-7


def _fd_inputs(rng, scale):
    """(4, 6) inputs.  "moderate": N(0, 2^2).  "large": rows 0-1 moderate, rows 2-3
    with half of their entries uniform in [-50, 50] (and exactly -50 and 50).

    Where sigmoid, tanh or softmax saturate (|x| >~ 20) the true derivative is below
    1e-17 and both the analytic value (from y, which rounds to 0 or 1) and the finite
    difference are rounding noise of that size, so a relative error over saturated
    entries alone is meaningless.  The moderate rows keep ||fd|| of order 1 (and give
    softmax, whose every row with a large logit is saturated, unsaturated rows), so
    the norm-wise comparison checks the large entries in absolute terms.
    """
    x = rng.standard_normal((4, 6)) * 2.0
    if scale == "large":
        big = rng.uniform(-50.0, 50.0, (2, 6))
        pick = rng.permutation(12)[:6]
        x[2:].flat[pick] = big.flat[pick]
        x[2, 0], x[3, 0] = -50.0, 50.0
    return away_from_kinks(x)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("scale", ["moderate", "large"])
def test_backward_matches_finite_differences(name, scale):
    rng, seed = fresh_rng()
    x = _fd_inputs(rng, scale)
    dy = rng.standard_normal(x.shape)
    act = activations.get(name)
    y = act(x)
    dx = act.backward(x, y, dy)
    assert dx.shape == x.shape and dx.dtype == np.float64
    assert np.all(np.isfinite(dx))
    fd = fd_vjp(act, x, dy)
    err = rel_err(dx, fd)
    assert err < FD_TOL, f"{name}: relative error {err:.3e} (input seed {seed})"
    # y=None recomputes the output and gives the same result
    np.testing.assert_array_equal(act.backward(x, None, dy), dx)


def test_softmax_backward_formula_and_large_logits():
    rng, seed = fresh_rng()
    x = rng.uniform(-50.0, 50.0, (4, 5))
    dy = rng.standard_normal((4, 5))
    act = activations.get("softmax")
    y = act(x)
    want = y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
    np.testing.assert_allclose(act.backward(x, y, dy), want, rtol=1e-15, atol=1e-300)
    # the softmax Jacobian maps the all-ones direction to zero: each row of dx sums to 0
    np.testing.assert_allclose(act.backward(x, y, dy).sum(axis=-1), 0.0, atol=1e-12)


def test_relu_derivative_at_zero_is_zero():
    act = activations.get("relu")
    x = np.array([-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(act.backward(x, act(x), np.ones(3)), [0.0, 0.0, 1.0])


def test_backward_without_x():
    rng = np.random.default_rng(4)
    x = away_from_kinks(rng.standard_normal((2, 5)))
    dy = rng.standard_normal((2, 5))
    for name in ["linear", "sigmoid", "tanh", "relu", "softmax", "elu", "selu", "exponential"]:
        act = activations.get(name)
        y = act(x)
        np.testing.assert_allclose(act.backward(None, y, dy), act.backward(x, y, dy),
                                   rtol=1e-15, atol=1e-300, err_msg=name)
    for name in ["softplus", "softsign", "silu"]:
        act = activations.get(name)
        with pytest.raises(ValueError, match="needs the input x"):
            act.backward(None, act(x), dy)
    with pytest.raises(ValueError, match="needs the input x"):
        activations.get("tanh").backward(None, None, dy)


def test_backward_shape_mismatch():
    act = activations.get("tanh")
    with pytest.raises(ValueError, match="shape"):
        act.backward(np.zeros(3), None, np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        act.backward(np.zeros(3), np.zeros(2), np.zeros(3))


# --------------------------------------------------------------------------- registry

def test_get_names_and_objects():
    for name in ALL:
        act = activations.get(name)
        assert isinstance(act, activations.Activation)
        assert act.name == name
        assert activations.serialize(act) == name
        assert activations.deserialize(name) is act
        assert activations.get(act) is act
    assert activations.get(None).name == "linear"
    assert activations.get("swish").name == "silu"
    assert activations.serialize("swish") == "silu"
    assert activations.get("tanh") == activations.get("tanh")
    assert activations.get("tanh") != activations.get("sigmoid")
    assert activations.swish is activations.silu


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        activations.get("sigmod")
    msg = str(e.value)
    assert msg.startswith("Unknown activation 'sigmod'. Valid names: ")
    listed = msg.split("Valid names: ")[1].split(", ")
    assert listed == sorted(listed)
    for name in REQUIRED:
        assert name in listed
    with pytest.raises(ValueError, match="Valid names"):
        activations.deserialize("Tanh")   # names are case-sensitive, as in Keras
    with pytest.raises(ValueError, match="Valid names"):
        activations.deserialize(3)


def test_custom_callables_and_wrong_types_are_refused():
    with pytest.raises(ValueError, match="custom function"):
        activations.get(np.tanh)
    with pytest.raises(ValueError, match="custom function"):
        activations.get(lambda v: v)
    for bad in (3, 1.5, ["tanh"], {"name": "tanh"}):
        with pytest.raises(ValueError, match="Valid names"):
            activations.get(bad)
    with pytest.raises(ValueError):
        activations.serialize(np.tanh)


def test_the_modules_own_functions_stand_for_their_activations():
    """Keras code passes activation=keras.activations.relu; with the import changed it passes
    fastlstm.activations.relu, a plain function of this module, which must be accepted."""
    from fastlstm import layers
    for fn, name in ((activations.relu, "relu"), (activations.tanh, "tanh"),
                     (activations.sigmoid, "sigmoid"), (activations.softmax, "softmax"),
                     (activations.linear, "linear"), (activations.swish, "silu"),
                     (activations.elu, "elu"), (activations.selu, "selu"),
                     (activations.softplus, "softplus"), (activations.softsign, "softsign"),
                     (activations.exponential, "exponential")):
        assert activations.get(fn) is activations.get(name)
        assert activations.serialize(fn) == name
    dense = layers.Dense(3, activation=activations.relu)
    assert dense.get_config()["activation"] == "relu"
    lstm = layers.LSTM(2, activation=activations.tanh, recurrent_activation=activations.sigmoid)
    assert lstm.uses_fused_kernels
