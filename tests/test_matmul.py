"""The kernels' own matrix product (_core.matmul), which the model's Dense layers use on the
CPU instead of NumPy's BLAS (bench/NOTES.md 50): against a float64 product, over every ISA,
both dtypes, strided views, a bias, empty and degenerate shapes; the same bits for any thread
count; clear errors. Outputs are poisoned (NaN) before the product runs (conftest)."""

import numpy as np
import pytest

import fastlstm
from fastlstm import _core, layers

# float32: K up to 300 terms summed in float32 (the same order of error as BLAS's); float64:
# the same in float64
TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-14}

SHAPES = [(3, 4, 5), (64, 256, 10), (200, 300, 257), (1, 1, 1), (1, 700, 3), (37, 5, 1)]


def _views(a, b):
    """(name, a, b): C order, Fortran order, transposed views, a strided slice."""
    yield "c", a, b
    yield "f", np.asfortranarray(a), np.asfortranarray(b)
    yield "t", np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T
    wide = np.zeros((a.shape[0], 2 * a.shape[1] + 1), a.dtype)
    wide[:, 1::2] = a
    yield "slice", wide[:, 1::2], b


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("M, K, N", SHAPES)
def test_matmul_matches_float64(isa, M, K, N, dtype, rel_err):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    want = a.astype(np.float64) @ b.astype(np.float64)
    for name, av, bv in _views(a, b):
        got = _core.matmul(av, bv)
        assert got.shape == (M, N) and got.dtype == dtype and got.flags.c_contiguous, name
        assert np.isfinite(got).all(), name
        assert rel_err(got, want) <= TOL[np.dtype(dtype)], name
        with_bias = _core.matmul(av, bv, bias)
        assert rel_err(with_bias, want + bias) <= TOL[np.dtype(dtype)], name
    # reversed views (negative strides)
    assert rel_err(_core.matmul(a, b[:, ::-1]), want[:, ::-1]) <= TOL[np.dtype(dtype)]
    assert rel_err(_core.matmul(a[::-1], b), want[::-1]) <= TOL[np.dtype(dtype)]
    assert rel_err(_core.matmul(a[:, ::-1], b[::-1]), want) <= TOL[np.dtype(dtype)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_matmul_same_bits_for_any_thread_count(isa, dtype, num_threads):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((300, 200)).astype(dtype)
    b = rng.standard_normal((200, 130)).astype(dtype)
    bias = rng.standard_normal(130).astype(dtype)
    results = []
    for n in (1, 2, 3):
        num_threads(n)
        results.append((_core.matmul(a, b, bias), _core.matmul(a.T.copy().T, b)))
    for r in results[1:]:
        for x, y in zip(r, results[0]):
            assert np.array_equal(x, y)


def test_matmul_empty_and_degenerate():
    rng = np.random.default_rng(1)
    bias = rng.standard_normal(4).astype(np.float32)
    assert _core.matmul(np.ones((0, 3), np.float32), np.ones((3, 4), np.float32)).shape == (0, 4)
    assert _core.matmul(np.ones((2, 3), np.float32), np.ones((3, 0), np.float32)).shape == (2, 0)
    # K = 0: the empty sum, plus the bias
    z = _core.matmul(np.ones((2, 0), np.float32), np.ones((0, 4), np.float32))
    assert np.array_equal(z, np.zeros((2, 4), np.float32))
    zb = _core.matmul(np.ones((2, 0), np.float32), np.ones((0, 4), np.float32), bias)
    assert np.array_equal(zb, np.broadcast_to(bias, (2, 4)))


def test_matmul_errors():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="a: expected a 2-D array"):
        _core.matmul(np.ones(3, np.float32), a)
    with pytest.raises(ValueError, match="b: expected a 2-D array"):
        _core.matmul(a, [[1.0]])
    with pytest.raises(ValueError, match="b: expected 3 rows"):
        _core.matmul(a, np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="b: expected dtype float32"):
        _core.matmul(a, np.ones((3, 2), np.float64))
    with pytest.raises(TypeError, match="a: expected dtype float32 or float64"):
        _core.matmul(np.ones((2, 3), np.int64), np.ones((3, 2), np.int64))
    with pytest.raises(ValueError, match="bias: expected shape"):
        _core.matmul(a, np.ones((3, 2), np.float32), np.ones(3, np.float32))
    base = np.zeros(64, np.uint8)[:48].view(np.float32)
    odd = np.lib.stride_tricks.as_strided(base, (2, 3), (12, 6))   # 6 bytes: not whole floats
    with pytest.raises(ValueError, match="a: expected strides of whole elements"):
        _core.matmul(odd, np.ones((3, 2), np.float32))


def test_dense_uses_the_kernels_product(monkeypatch, rel_err):
    # Dense's forward, weight gradient and input gradient on NumPy arrays all go through
    # _core.matmul (not NumPy's BLAS), with the float64 values as reference.
    calls = []
    real = _core.matmul

    def spy(a, b, bias=None):
        calls.append((a.shape, b.shape, bias is not None))
        return real(a, b, bias)

    monkeypatch.setattr(layers._core, "matmul", spy)
    rng = np.random.default_rng(2)
    dense = layers.Dense(7, activation="tanh", bias_initializer="random_normal")
    dense.build((None, 4, 6))
    x = rng.standard_normal((5, 4, 6)).astype(np.float32)
    y = dense.forward(x, training=True)
    assert calls == [((20, 6), (6, 7), True)]
    k, bias = (w.astype(np.float64) for w in dense.get_weights())
    z = x.astype(np.float64) @ k + bias
    assert rel_err(y, np.tanh(z)) <= 2e-6
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = dense.backward(dy)
    assert [c[:2] for c in calls[1:]] == [((6, 20), (20, 7)), ((20, 7), (7, 6))]
    dz = dy.astype(np.float64) * (1 - np.tanh(z) ** 2)
    assert rel_err(dense.grads[0], x.reshape(-1, 6).astype(np.float64).T @ dz.reshape(-1, 7)) <= 2e-6
    assert rel_err(dx, dz @ k.T) <= 2e-6


def test_dense_empty_batch_and_field_strides():
    # A batch of 0 rows: the weight gradient's product x.T . dz over no rows is zeros (as
    # NumPy's product gave; a.reshape(-1, 0) was refused). A field of a packed structured
    # array (row strides of no whole number of floats) is copied, not refused.
    dense = layers.Dense(3, bias_initializer="random_normal")
    dense.build((None, 4))
    y = dense.forward(np.zeros((0, 4), np.float32), training=True)
    assert y.shape == (0, 3)
    dx = dense.backward(np.zeros((0, 3), np.float32))
    assert dx.shape == (0, 4)
    assert np.array_equal(dense.grads[0], np.zeros((4, 3), np.float32))
    assert np.array_equal(dense.grads[1], np.zeros(3, np.float32))
    rec = np.zeros(5, dtype=[("a", "f4", (4,)), ("b", "u1")])
    rec["a"] = np.arange(20).reshape(5, 4)
    x = rec["a"]
    assert x.strides[0] % x.itemsize
    k, b = dense.get_weights()
    np.testing.assert_allclose(dense.forward(x), np.ascontiguousarray(x) @ k + b, rtol=1e-6)
