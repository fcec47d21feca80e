"""fastlstm.initializers: constant values, the statistics of the random initializers
on large matrices (bounds, means and variances, with tolerances derived from the
sample size), orthogonality, Keras's fan rules, seeded and global-seed
reproducibility, the name registry, config round trips and argument errors.
"""

import json
import math

import numpy as np
import pytest

from fastlstm import _random
from fastlstm import initializers as I

TRUNC = 0.87962566103423978   # stddev of a unit normal truncated to [-2, 2]

# Large sample for the statistics: n = 300 * 800 = 240000 values.
BIG = (300, 800)
N = BIG[0] * BIG[1]


@pytest.fixture
def restore_global_rng(monkeypatch):
    """Lets a test re-seed the package-wide generator; the old one is put back after."""
    monkeypatch.setattr(_random, "_global", _random._global)


def _check_variance(values, target, kurtosis):
    """The sample variance of ``values`` is within 6 standard errors of ``target``.

    For n i.i.d. values with variance s2 and kurtosis k (E[w**4] / s2**2), the sample
    variance has a standard error of about s2 * sqrt((k - 1) / n).  With n = 240000
    that is 0.18% for a uniform (k = 1.8), 0.29% for a normal (k = 3) and 0.23% for
    a normal truncated at 2 sigma (k ~ 2.36); six of them (about 1.1-1.7%) is a bound
    a correct initializer exceeds with probability ~1e-9, while a wrong fan or a
    missing truncation correction (a 29% error) is far outside it.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    tol = 6.0 * math.sqrt((kurtosis - 1.0) / n)
    var = float(np.mean(values ** 2))   # mean is 0 by construction
    assert abs(var / target - 1.0) < tol, f"variance {var:.6g} vs target {target:.6g}"
    # mean within 6 standard errors of 0
    assert abs(float(np.mean(values))) < 6.0 * math.sqrt(target / n)


KURT_UNIFORM = 1.8
KURT_NORMAL = 3.0
# Kurtosis of a unit normal truncated to [-a, a], a = 2, Z = P(|z| < 2) = 0.9545:
# E[z^2] = 1 - 2 a phi(a) / Z = 0.7737 (its square root is TRUNC) and
# E[z^4] = 3 E[z^2] - 2 a^3 phi(a) / Z = 1.4162, so the kurtosis is 1.4162 / 0.7737^2
# = 2.37; 2.5 is used, which only widens the tolerance.
KURT_TRUNC = 2.5


# --------------------------------------------------------------------------- constants

def test_zeros_ones_constant():
    z = I.Zeros()((2, 3))
    assert z.dtype == np.float32 and z.shape == (2, 3) and not z.any()
    o = I.Ones()((4,), dtype="float64")
    assert o.dtype == np.float64 and np.all(o == 1.0)
    c = I.Constant(2.5)((3, 2), dtype=np.float64)
    assert c.dtype == np.float64 and np.all(c == 2.5)
    ci = I.Constant(7)((2,), dtype="int32")
    assert ci.dtype == np.int32 and np.all(ci == 7)
    assert I.Constant(np.float32(1.5)).get_config() == {"value": 1.5}
    assert I.Zeros()(()).shape == ()
    assert I.Ones()(5).shape == (5,)
    for bad in ("a", [1.0, 2.0], None, True):
        with pytest.raises(ValueError, match="value"):
            I.Constant(bad)


def test_identity():
    np.testing.assert_array_equal(I.Identity()((3, 3)), np.eye(3, dtype=np.float32))
    w = I.Identity(gain=2.0)((2, 4), dtype="float64")
    assert w.dtype == np.float64
    np.testing.assert_array_equal(w, 2.0 * np.eye(2, 4))
    with pytest.raises(ValueError, match="shape"):
        I.Identity()((2, 2, 2))


def test_compute_fans():
    assert I.compute_fans((5, 7)) == (5, 7)
    assert I.compute_fans((6,)) == (6, 6)
    assert I.compute_fans(()) == (1, 1)
    assert I.compute_fans((3, 3, 4, 8)) == (36, 72)   # receptive field 9
    assert I.compute_fans((2, 4, 8)) == (8, 16)


# --------------------------------------------------------------------------- statistics

def test_glorot_uniform_bound_and_variance():
    w = I.GlorotUniform(seed=1)(BIG, dtype="float64")
    fan_in, fan_out = BIG
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.max(np.abs(w)) <= limit
    assert np.max(np.abs(w)) > 0.999 * limit          # the whole range is used
    _check_variance(w, limit ** 2 / 3.0, KURT_UNIFORM)  # = 2 / (fan_in + fan_out)
    w32 = I.GlorotUniform(seed=1)(BIG)
    assert w32.dtype == np.float32
    assert np.max(np.abs(w32)) <= np.float32(limit)


@pytest.mark.parametrize("cls, scale, mode, uniform", [
    (I.GlorotUniform, 1.0, "fan_avg", True),
    (I.GlorotNormal, 1.0, "fan_avg", False),
    (I.HeUniform, 2.0, "fan_in", True),
    (I.HeNormal, 2.0, "fan_in", False),
    (I.LecunUniform, 1.0, "fan_in", True),
    (I.LecunNormal, 1.0, "fan_in", False),
])
def test_variance_scaling_presets(cls, scale, mode, uniform):
    fan_in, fan_out = BIG
    n = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
    target = scale / n
    w = cls(seed=2)(BIG, dtype="float64")
    if uniform:
        limit = math.sqrt(3.0 * target)
        assert np.max(np.abs(w)) <= limit
        _check_variance(w, target, KURT_UNIFORM)
    else:
        # truncated at 2 standard deviations of the *untruncated* normal
        assert np.max(np.abs(w)) <= 2.0 * math.sqrt(target) / TRUNC
        _check_variance(w, target, KURT_TRUNC)
    # a preset is VarianceScaling with those arguments
    vs = I.VarianceScaling(scale=scale, mode=mode,
                           distribution="uniform" if uniform else "truncated_normal", seed=2)
    np.testing.assert_array_equal(vs(BIG, dtype="float64"), w)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "untruncated_normal", "uniform"])
def test_variance_scaling_modes_and_distributions(mode, distribution):
    shape = (40, 30, 200)                 # 3-D: receptive field 40
    fan_in, fan_out = 40 * 30, 40 * 200
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
    target = 3.0 / n
    w = I.VarianceScaling(scale=3.0, mode=mode, distribution=distribution, seed=3)(
        shape, dtype="float64")
    assert w.shape == shape
    kurt = {"truncated_normal": KURT_TRUNC, "untruncated_normal": KURT_NORMAL,
            "uniform": KURT_UNIFORM}[distribution]
    _check_variance(w, target, kurt)
    if distribution == "truncated_normal":
        assert np.max(np.abs(w)) <= 2.0 * math.sqrt(target) / TRUNC
    elif distribution == "untruncated_normal":
        assert np.max(np.abs(w)) > 2.0 * math.sqrt(target) / TRUNC  # really untruncated
    else:
        assert np.max(np.abs(w)) <= math.sqrt(3.0 * target)


def test_variance_scaling_normal_alias_and_small_fans():
    vs = I.VarianceScaling(distribution="normal", seed=0)
    assert vs.distribution == "truncated_normal"
    # a fan of 0 counts as 1 (no division by zero)
    assert I.VarianceScaling(mode="fan_out")((5, 0)).shape == (5, 0)
    assert I.GlorotUniform()(()).shape == ()


def test_random_normal_uniform_truncated():
    w = I.RandomNormal(mean=1.0, stddev=0.5, seed=4)(BIG, dtype="float64")
    _check_variance(w - 1.0, 0.25, KURT_NORMAL)
    u = I.RandomUniform(minval=-0.3, maxval=0.7, seed=4)(BIG, dtype="float64")
    assert u.min() >= -0.3 and u.max() < 0.7
    assert u.min() < -0.299 and u.max() > 0.699
    _check_variance(u - 0.2, 0.5 ** 2 / 3.0, KURT_UNIFORM)
    t = I.TruncatedNormal(mean=-1.0, stddev=0.2, seed=4)(BIG, dtype="float64")
    assert t.min() >= -1.4 and t.max() <= -0.6
    _check_variance(t + 1.0, (0.2 * TRUNC) ** 2, KURT_TRUNC)
    # defaults (Keras): stddev 0.05, uniform in [-0.05, 0.05)
    assert np.max(np.abs(I.TruncatedNormal()((100, 100)))) <= 0.1
    assert np.max(np.abs(I.RandomUniform()((100, 100)))) <= 0.05
    # a zero stddev or an empty range is a constant
    np.testing.assert_array_equal(I.RandomNormal(mean=3.0, stddev=0.0)((2, 2)), 3.0)
    np.testing.assert_array_equal(I.RandomUniform(1.0, 1.0)((2, 2)), 1.0)


# --------------------------------------------------------------------------- orthogonal

@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (6, 6), (64, 256), (2, 3, 5)])
def test_orthogonal_is_orthogonal(shape):
    w = I.Orthogonal(seed=5)(shape)
    assert w.shape == shape and w.dtype == np.float32
    m = w.reshape(-1, shape[-1]).astype(np.float64)
    rows, cols = m.shape
    gram = m.T @ m if rows >= cols else m @ m.T
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-5)


def test_orthogonal_gain_and_distribution():
    w = I.Orthogonal(gain=3.0, seed=6)((5, 5), dtype="float64")
    np.testing.assert_allclose(w.T @ w, 9.0 * np.eye(5), atol=1e-12)
    # The sign correction (columns of Q times sign(diag(R))) makes Q uniform (Haar).
    # LAPACK's Householder QR returns R with a diagonal of sign opposite to the
    # pivot column's leading entry, so without the correction w[0, 0] would always be
    # negative.  Check that, over many draws, the diagonal of w takes both signs about
    # equally often.
    rng_draws = np.array([np.diag(I.Orthogonal()((4, 4), dtype="float64")) for _ in range(400)])
    frac_pos = float(np.mean(rng_draws > 0))
    assert 0.42 < frac_pos < 0.58   # 1600 signs: standard error 1.25%
    with pytest.raises(ValueError, match="rank >= 2"):
        I.Orthogonal()((5,))
    assert I.Orthogonal()((0, 3)).shape == (0, 3)


# --------------------------------------------------------------------------- randomness

RANDOM_CLASSES = [I.RandomNormal, I.RandomUniform, I.TruncatedNormal, I.VarianceScaling,
                  I.GlorotUniform, I.GlorotNormal, I.HeNormal, I.HeUniform, I.LecunNormal,
                  I.LecunUniform, I.Orthogonal]


@pytest.mark.parametrize("cls", RANDOM_CLASSES)
def test_seeded_initializer_repeats_itself(cls):
    init = cls(seed=42)
    a = init((8, 5))
    np.testing.assert_array_equal(init((8, 5)), a)          # same instance, next call
    np.testing.assert_array_equal(cls(seed=42)((8, 5)), a)  # another instance
    assert not np.array_equal(cls(seed=43)((8, 5)), a)
    # float64 gives the same draw, float32 is its rounding
    np.testing.assert_array_equal(init((8, 5), dtype="float64").astype(np.float32), a)


@pytest.mark.parametrize("cls", RANDOM_CLASSES)
def test_unseeded_uses_global_generator(cls, restore_global_rng):
    init = cls()
    assert not np.array_equal(init((8, 5)), init((8, 5)))   # new values on each call
    _random.set_seed(123)
    first = [init((8, 5)), cls()((3, 4))]
    _random.set_seed(123)
    again = [init((8, 5)), cls()((3, 4))]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    _random.set_seed(124)
    assert not np.array_equal(init((8, 5)), first[0])


def test_seeded_does_not_touch_global_generator(restore_global_rng):
    _random.set_seed(7)
    expected = I.RandomNormal()((10,))
    _random.set_seed(7)
    I.GlorotUniform(seed=1)((50, 50))       # must not advance the global generator
    np.testing.assert_array_equal(I.RandomNormal()((10,)), expected)


# --------------------------------------------------------------------------- registry

NAMES = {
    "zeros": I.Zeros, "ones": I.Ones, "constant": I.Constant, "identity": I.Identity,
    "random_normal": I.RandomNormal, "random_uniform": I.RandomUniform,
    "truncated_normal": I.TruncatedNormal, "variance_scaling": I.VarianceScaling,
    "glorot_uniform": I.GlorotUniform, "glorot_normal": I.GlorotNormal,
    "he_normal": I.HeNormal, "he_uniform": I.HeUniform, "lecun_normal": I.LecunNormal,
    "lecun_uniform": I.LecunUniform, "orthogonal": I.Orthogonal,
    "uniform": I.RandomUniform, "normal": I.RandomNormal, "one": I.Ones, "zero": I.Zeros,
}


def test_get_by_name_class_instance_and_dict():
    for name, cls in NAMES.items():
        assert type(I.get(name)) is cls, name
        assert type(I.get(cls.__name__)) is cls
        assert type(I.get(cls)) is cls
    assert type(I.get("OrthogonalInitializer")) is I.Orthogonal
    inst = I.HeNormal(seed=3)
    assert I.get(inst) is inst
    assert I.get(None) is None
    got = I.get({"class_name": "RandomNormal", "config": {"mean": 1.0, "stddev": 2.0,
                                                          "seed": 9}})
    assert isinstance(got, I.RandomNormal) and (got.mean, got.stddev, got.seed) == (1.0, 2.0, 9)
    assert isinstance(I.get({"class_name": "Zeros"}), I.Zeros)


def test_get_errors_list_valid_names():
    with pytest.raises(ValueError, match="Unknown initializer 'glorot_unifrom'. Valid names: "
                                         ".*glorot_uniform.*orthogonal"):
        I.get("glorot_unifrom")
    with pytest.raises(ValueError, match="Unknown initializer"):
        I.get({"class_name": "Nope", "config": {}})
    with pytest.raises(ValueError, match="class_name"):
        I.get({"config": {}})
    with pytest.raises(ValueError, match="Valid names"):
        I.get(3.0)
    with pytest.raises(ValueError, match="Invalid config"):
        I.get({"class_name": "Zeros", "config": {"bogus": 1}})
    with pytest.raises(ValueError):
        I.serialize("zeros")


@pytest.mark.parametrize("init", [
    I.Zeros(), I.Ones(), I.Constant(0.25), I.Identity(gain=0.5),
    I.RandomNormal(mean=0.1, stddev=0.2, seed=1), I.RandomUniform(-1.0, 2.0, seed=2),
    I.TruncatedNormal(mean=-0.5, stddev=0.3, seed=3),
    I.VarianceScaling(scale=2.5, mode="fan_out", distribution="uniform", seed=4),
    I.GlorotUniform(seed=5), I.GlorotNormal(), I.HeNormal(seed=6), I.HeUniform(),
    I.LecunNormal(seed=7), I.LecunUniform(), I.Orthogonal(gain=1.5, seed=8),
], ids=lambda i: type(i).__name__)
def test_config_round_trip(init):
    config = init.get_config()
    assert json.loads(json.dumps(config)) == config
    clone = type(init).from_config(config)
    assert clone.get_config() == config
    ser = I.serialize(init)
    assert ser == {"class_name": type(init).__name__, "config": config}
    back = I.get(json.loads(json.dumps(ser)))
    assert type(back) is type(init) and back.get_config() == config
    if getattr(init, "seed", None) is not None or not isinstance(init, I.RandomInitializer):
        np.testing.assert_array_equal(back((6, 6)), init((6, 6)))


def test_keras_config_keys():
    assert I.GlorotUniform(seed=3).get_config() == {"seed": 3}
    assert I.VarianceScaling().get_config() == {
        "scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal", "seed": None}
    assert I.RandomUniform().get_config() == {"minval": -0.05, "maxval": 0.05, "seed": None}
    assert I.Orthogonal().get_config() == {"gain": 1.0, "seed": None}


# --------------------------------------------------------------------------- errors

def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="stddev"):
        I.RandomNormal(stddev=-1.0)
    with pytest.raises(ValueError, match="stddev"):
        I.TruncatedNormal(stddev=-0.1)
    with pytest.raises(ValueError, match="mean"):
        I.RandomNormal(mean=float("nan"))
    with pytest.raises(ValueError, match="minval"):
        I.RandomUniform(minval=1.0, maxval=0.0)
    for scale in (0.0, -1.0):
        with pytest.raises(ValueError, match="scale"):
            I.VarianceScaling(scale=scale)
    with pytest.raises(ValueError, match="scale"):
        I.VarianceScaling(scale="big")
    with pytest.raises(ValueError, match="mode"):
        I.VarianceScaling(mode="fan_middle")
    with pytest.raises(ValueError, match="distribution"):
        I.VarianceScaling(distribution="cauchy")
    with pytest.raises(ValueError, match="gain"):
        I.Orthogonal(gain=None)
    with pytest.raises(ValueError, match="seed"):
        I.GlorotUniform(seed=-1)
    with pytest.raises(TypeError, match="seed"):
        I.GlorotUniform(seed="abc")


def test_shape_and_dtype_errors():
    for shape in [(3, -1), (2.5, 3), "ab", (True, 2), None]:
        with pytest.raises(ValueError, match="shape"):
            I.GlorotUniform()(shape)
        with pytest.raises(ValueError, match="shape"):
            I.Zeros()(shape)
    with pytest.raises(ValueError, match="dtype"):
        I.RandomNormal()((2, 2), dtype="int32")
    with pytest.raises(ValueError, match="dtype"):
        I.Zeros()((2, 2), dtype="not_a_dtype")
    assert I.HeNormal()((np.int64(3), 4), dtype=np.float64).shape == (3, 4)


# --------------------------------------------------------------------------- Keras 3.15's axes

def test_fans_along_given_axes():
    # Both axes lists given: the products of the sizes along them (negative axes from the end);
    # one list alone leaves Keras's default rule, as Keras does.
    assert I.compute_fans((3, 5, 7), [0, 1], [-1]) == (15, 7)
    assert I.compute_fans((3, 5, 7), [2], [0, 1]) == (7, 15)
    assert I.compute_fans((3, 5, 7), (0,), (1, 2)) == (3, 35)
    assert I.compute_fans((3, 5, 7), [0, 1], None) == I.compute_fans((3, 5, 7)) == (15, 21)
    with pytest.raises(ValueError, match=r"input_axes.*axis 3.*\(3, 5, 7\)"):
        I.compute_fans((3, 5, 7), [3], [0])
    with pytest.raises(TypeError, match="output_axes"):
        I.compute_fans((3, 5), [0], "1")
    with pytest.raises(TypeError, match="input_axes"):
        I.GlorotUniform(input_axes=[0.5])


def test_variance_scaling_draws_with_the_fans_of_its_axes():
    # uniform: limit sqrt(3 scale / fan); fan_out along axes (0, 1) of (40, 50, 3) is 2000, against
    # 150 by the default rule, so the values' range tells which fan was used.
    init = I.VarianceScaling(scale=2.0, mode="fan_out", distribution="uniform", seed=3,
                             input_axes=[2], output_axes=[0, 1])
    w = init((40, 50, 3))
    limit = np.sqrt(3 * 2.0 / 2000)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert I.VarianceScaling(scale=2.0, mode="fan_out", distribution="uniform", seed=3)(
        (40, 50, 3)).max() > 2 * limit
    config = init.get_config()
    assert config["input_axes"] == [2] and config["output_axes"] == [0, 1]
    back = I.get(json.loads(json.dumps(I.serialize(init))))
    np.testing.assert_array_equal(back((40, 50, 3)), w)
    preset = I.HeUniform(seed=1, input_axes=[0], output_axes=[1])
    assert preset.get_config() == {"seed": 1, "input_axes": [0], "output_axes": [1]}
    # Keras 3.15 writes the axes as None when unset: read, and left out again
    assert I.get({"class_name": "GlorotUniform",
                  "config": {"seed": None, "input_axes": None, "output_axes": None}}
                 ).get_config() == {"seed": None}


def test_keras_lowercase_aliases():
    """keras.initializers.he_normal(seed=1) etc. are the classes under snake_case names."""
    from fastlstm import initializers as fi
    for name, cls in fi._NAMES.items():
        if hasattr(fi, name):
            assert getattr(fi, name) is cls, name
    for name in ("zeros", "ones", "constant", "identity", "random_normal", "random_uniform",
                 "truncated_normal", "variance_scaling", "orthogonal", "glorot_uniform",
                 "glorot_normal", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform"):
        assert getattr(fi, name) is fi._NAMES[name], name
    ns = {}
    exec("from fastlstm.initializers import *", ns)       # exported, as regularizers' l1/l2
    assert ns["he_normal"] is fi.HeNormal and ns["zeros"] is fi.Zeros
    a = fi.he_normal(seed=1)((3, 4))
    assert np.array_equal(a, fi.HeNormal(seed=1)((3, 4)))
