"""Bad inputs to fastlstm.ops raise ValueError (shapes, values) or TypeError (dtypes,
object types) whose message names the offending argument -- never a crash, never a
silently wrong result.  Also a few direct calls into fastlstm._core with bad shapes.
"""

import numpy as np
import pytest

from fastlstm import ops

T, B, I, H = 4, 3, 5, 2
G = 4 * H
BACKENDS = ["cpu", "numpy"]


def _valid(dtype=np.float64):
    rng = np.random.default_rng(0)
    r = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(dtype)  # noqa: E731
    return dict(x=r(T, B, I), kernel=r(I, G), recurrent_kernel=r(H, G), bias=r(G),
                h0=r(B, H), c0=r(B, H), lengths=np.array([4, 0, 2]), reverse=False)


def _with(**changes):
    """A mutation of the valid arguments: each value is a function of the valid dict."""
    def build():
        kw = _valid()
        for name, fn in changes.items():
            kw[name] = fn(kw)
        return kw
    return build


# Argument names as whole words: "kernel" must not match inside "recurrent_kernel".
X, KERNEL, RK, BIAS = r"\bx\b", r"(?<!recurrent_)\bkernel\b", r"\brecurrent_kernel\b", r"\bbias\b"
H0, C0, LENGTHS = r"\bh0\b", r"\bc0\b", r"\blengths\b"
f32, f16 = np.float32, np.float16

FORWARD_ERRORS = {
    # wrong number of dimensions
    "x_ndim2": (_with(x=lambda k: k["x"][0]), ValueError, X),
    "x_ndim4": (_with(x=lambda k: k["x"][..., None]), ValueError, X),
    "kernel_ndim1": (_with(kernel=lambda k: k["kernel"].ravel()), ValueError, KERNEL),
    "kernel_ndim3": (_with(kernel=lambda k: k["kernel"][None]), ValueError, KERNEL),
    "recurrent_kernel_ndim1": (_with(recurrent_kernel=lambda k: k["recurrent_kernel"].ravel()),
                               ValueError, RK),
    "recurrent_kernel_ndim3": (_with(recurrent_kernel=lambda k: k["recurrent_kernel"][None]),
                               ValueError, RK),
    "bias_ndim2": (_with(bias=lambda k: k["bias"][None]), ValueError, BIAS),
    "bias_ndim0": (_with(bias=lambda k: k["bias"][0]), ValueError, BIAS),
    "h0_ndim1": (_with(h0=lambda k: k["h0"][0]), ValueError, H0),
    "h0_ndim3": (_with(h0=lambda k: k["h0"][None]), ValueError, H0),
    "c0_ndim1": (_with(c0=lambda k: k["c0"][0]), ValueError, C0),
    "c0_ndim3": (_with(c0=lambda k: k["c0"][None]), ValueError, C0),
    # mismatched sizes
    "kernel_rows_not_I": (_with(kernel=lambda k: np.zeros((I + 1, G))), ValueError, KERNEL),
    "kernel_cols_not_4H": (_with(kernel=lambda k: np.zeros((I, G + 4))), ValueError, "kernel"),
    "kernel_cols_not_multiple_of_4": (_with(kernel=lambda k: np.zeros((I, G + 1))), ValueError,
                                      "kernel"),
    "recurrent_kernel_cols_not_4H": (_with(recurrent_kernel=lambda k: np.zeros((H, G + 4))),
                                     ValueError, RK),
    "recurrent_kernel_not_square_gates": (_with(recurrent_kernel=lambda k: np.zeros((H + 1, G))),
                                          ValueError, "kernel"),
    "bias_too_long": (_with(bias=lambda k: np.zeros(G + 1)), ValueError, BIAS),
    "bias_is_H": (_with(bias=lambda k: np.zeros(H)), ValueError, BIAS),
    "h0_wrong_B": (_with(h0=lambda k: np.zeros((B + 1, H))), ValueError, H0),
    "h0_wrong_H": (_with(h0=lambda k: np.zeros((B, H + 1))), ValueError, H0),
    "h0_transposed": (_with(h0=lambda k: np.zeros((H, B))), ValueError, H0),
    "c0_wrong_B": (_with(c0=lambda k: np.zeros((B - 1, H))), ValueError, C0),
    "c0_wrong_H": (_with(c0=lambda k: np.zeros((B, H + 1))), ValueError, C0),
    # dtypes
    "x_f32_kernel_f64": (_with(x=lambda k: k["x"].astype(f32)), TypeError, rf"{X}|{KERNEL}"),
    "kernel_f32": (_with(kernel=lambda k: k["kernel"].astype(f32)), TypeError, KERNEL),
    "recurrent_kernel_f32": (_with(recurrent_kernel=lambda k: k["recurrent_kernel"].astype(f32)),
                             TypeError, RK),
    "bias_f32": (_with(bias=lambda k: k["bias"].astype(f32)), TypeError, BIAS),
    "h0_f32": (_with(h0=lambda k: k["h0"].astype(f32)), TypeError, H0),
    "c0_f32": (_with(c0=lambda k: k["c0"].astype(f32)), TypeError, C0),
    "all_int": (_with(**{n: (lambda k, n=n: np.ones(k[n].shape, dtype=np.int64))
                         for n in ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0")}),
                TypeError, X),
    "kernel_int": (_with(kernel=lambda k: np.ones((I, G), dtype=np.int32)), TypeError, KERNEL),
    "all_float16": (_with(**{n: (lambda k, n=n: k[n].astype(f16))
                             for n in ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0")}),
                    TypeError, X),
    "x_complex": (_with(x=lambda k: k["x"].astype(np.complex128)), TypeError, X),
    "x_bool": (_with(x=lambda k: k["x"] > 0), TypeError, X),
    # lengths
    "lengths_negative": (_with(lengths=lambda k: np.array([4, -1, 2])), ValueError, LENGTHS),
    "lengths_above_T": (_with(lengths=lambda k: np.array([4, T + 1, 2])), ValueError, LENGTHS),
    "lengths_2d": (_with(lengths=lambda k: np.array([[4], [0], [2]])), ValueError, LENGTHS),
    "lengths_wrong_B": (_with(lengths=lambda k: np.array([4, 0, 2, 1])), ValueError, LENGTHS),
    "lengths_scalar": (_with(lengths=lambda k: np.array(3)), ValueError, LENGTHS),
    "lengths_float": (_with(lengths=lambda k: np.array([4.0, 0.0, 2.0])), TypeError, LENGTHS),
    "lengths_huge": (_with(lengths=lambda k: np.array([4, 2**40, 2])), ValueError, LENGTHS),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(FORWARD_ERRORS))
def test_forward_rejects(name, backend):
    build, exc, match = FORWARD_ERRORS[name]
    kw = build()
    with pytest.raises(exc, match=match):
        ops.lstm_forward(**kw, backend=backend)


@pytest.mark.parametrize("backend", ["gpu", "CUDA", "", "numpy "])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match="backend"):
        ops.lstm_forward(**_valid(), backend=backend)


def test_errors_leave_no_state_behind():
    # after a run of failures a valid call still works and gives the reference answer
    for name, (build, exc, _) in FORWARD_ERRORS.items():
        with pytest.raises(exc):
            ops.lstm_forward(**build(), backend="cpu")
    kw = _valid()
    y, h_n, c_n, saved = ops.lstm_forward(**kw, backend="cpu")
    ry, rh, rc, _ = ops.lstm_forward(**kw, backend="numpy")
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- backward

def _saved(backend, dtype=np.float64, training=True, bias=True):
    kw = _valid(dtype)
    if not bias:
        kw["bias"] = None
    return ops.lstm_forward(**kw, training=training, backend=backend)[3]


def _grads(dtype=np.float64):
    rng = np.random.default_rng(1)
    return dict(dy=rng.standard_normal((T, B, H)).astype(dtype),
                dh_n=rng.standard_normal((B, H)).astype(dtype),
                dc_n=rng.standard_normal((B, H)).astype(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_saved_none(backend):
    saved = _saved(backend, training=False)
    assert saved is None
    with pytest.raises(ValueError, match="training"):
        ops.lstm_backward(saved, **_grads())


@pytest.mark.parametrize("saved", ["abc", (1, 2, 3), {"x": 1}, np.zeros(3), 0],
                         ids=["str", "tuple", "dict", "ndarray", "int"])
def test_backward_saved_wrong_type(saved):
    with pytest.raises(TypeError, match="saved"):
        ops.lstm_backward(saved, **_grads())


BACKWARD_ERRORS = {
    "dy_wrong_H": (dict(dy=np.zeros((T, B, H + 1))), ValueError, r"\bdy\b"),
    "dy_wrong_T": (dict(dy=np.zeros((T + 1, B, H))), ValueError, r"\bdy\b"),
    "dy_wrong_B": (dict(dy=np.zeros((T, B + 1, H))), ValueError, r"\bdy\b"),
    "dy_ndim2": (dict(dy=np.zeros((T * B, H))), ValueError, r"\bdy\b"),
    "dh_n_wrong_H": (dict(dh_n=np.zeros((B, H + 1))), ValueError, r"\bdh_n\b"),
    "dh_n_wrong_B": (dict(dh_n=np.zeros((B + 1, H))), ValueError, r"\bdh_n\b"),
    "dh_n_ndim1": (dict(dh_n=np.zeros(B * H)), ValueError, r"\bdh_n\b"),
    "dc_n_wrong_H": (dict(dc_n=np.zeros((B, H - 1))), ValueError, r"\bdc_n\b"),
    "dc_n_ndim3": (dict(dc_n=np.zeros((1, B, H))), ValueError, r"\bdc_n\b"),
    "dy_f32": (dict(dy=np.zeros((T, B, H), np.float32)), TypeError, r"\bdy\b"),
    "dy_int": (dict(dy=np.zeros((T, B, H), np.int64)), TypeError, r"\bdy\b"),
    "dy_f16": (dict(dy=np.zeros((T, B, H), np.float16)), TypeError, r"\bdy\b"),
    "dh_n_f32": (dict(dh_n=np.zeros((B, H), np.float32)), TypeError, r"\bdh_n\b"),
    "dc_n_int": (dict(dc_n=np.zeros((B, H), np.int32)), TypeError, r"\bdc_n\b"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(BACKWARD_ERRORS))
def test_backward_rejects(name, backend):
    changes, exc, match = BACKWARD_ERRORS[name]
    saved = _saved(backend)
    grads = {**_grads(), **changes}
    with pytest.raises(exc, match=match):
        ops.lstm_backward(saved, **grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_f64_grads_into_f32_saved(backend):
    saved = _saved(backend, dtype=np.float32)
    with pytest.raises(TypeError, match=r"\bdy\b"):
        ops.lstm_backward(saved, **_grads(np.float64))
    # and the matching dtype works
    dx = ops.lstm_backward(saved, **_grads(np.float32))[0]
    assert dx.dtype == np.float32 and np.isfinite(dx).all()


# --------------------------------------------------------------------------- fastlstm._core

def _core_args(dtype=np.float64):
    kw = _valid(dtype)
    return [kw["x"], kw["kernel"], kw["recurrent_kernel"], kw["bias"], kw["h0"], kw["c0"],
            kw["lengths"].astype(np.int64), False, True]


# Positional argument index of _core.forward(x, kernel, recurrent_kernel, bias, h0, c0,
# lengths, reverse, training), replacement value, exception, message pattern.
CORE_FORWARD_ERRORS = {
    "x_2d": (0, np.zeros((T, B)), ValueError, X),
    "x_list": (0, [[[0.0] * I] * B] * T, (TypeError, ValueError), X),
    "x_int": (0, np.zeros((T, B, I), np.int64), TypeError, X),
    "kernel_rows": (1, np.zeros((I + 1, G)), ValueError, KERNEL),
    "kernel_f32": (1, np.zeros((I, G), np.float32), TypeError, KERNEL),
    "kernel_fortran": (1, np.asfortranarray(np.zeros((I, G))), ValueError, KERNEL),
    "recurrent_kernel_1d": (2, np.zeros(H * G), ValueError, RK),
    "recurrent_kernel_cols": (2, np.zeros((H, G + 1)), ValueError, RK),
    "bias_short": (3, np.zeros(G - 1), ValueError, BIAS),
    "h0_wrong": (4, np.zeros((B + 1, H)), ValueError, H0),
    "c0_strided": (5, np.zeros((B, 2 * H))[:, ::2], ValueError, C0),
    "lengths_int32": (6, np.array([4, 0, 2], np.int32), TypeError, LENGTHS),
    "lengths_out_of_range": (6, np.array([4, 0, T + 1]), ValueError, LENGTHS),
    "lengths_negative": (6, np.array([-5, 0, 2]), ValueError, LENGTHS),
    "lengths_wrong_B": (6, np.array([4, 0]), ValueError, LENGTHS),
}


@pytest.mark.parametrize("name", list(CORE_FORWARD_ERRORS))
def test_core_forward_rejects(name):
    from fastlstm import _core
    index, value, exc, match = CORE_FORWARD_ERRORS[name]
    args = _core_args()
    args[index] = value
    with pytest.raises(exc, match=match):
        _core.forward(*args)


def _core_backward_args():
    from fastlstm import _core
    fwd = _core_args()
    y, h_n, c_n, gates, cells = _core.forward(*fwd)
    x, kernel, rk, bias, h0, c0, lengths, reverse, _ = fwd
    g = _grads()
    return [x, kernel, rk, True, h0, c0, lengths, reverse, gates, cells, g["dy"], g["dh_n"], g["dc_n"]]


# _core.backward(x, kernel, recurrent_kernel, has_bias, h0, c0, lengths, reverse, gates,
# cells, dy, dh_n, dc_n)
CORE_BACKWARD_ERRORS = {
    "gates_none": (8, None, TypeError, r"\bgates\b"),
    "gates_short": (8, np.zeros((T, B, G - 1)), ValueError, r"\bgates\b"),
    "cells_wrong_T": (9, np.zeros((T - 1, B, H)), ValueError, r"\bcells\b"),
    "cells_f32": (9, np.zeros((T, B, H), np.float32), TypeError, r"\bcells\b"),
    "dy_wrong": (10, np.zeros((T, B, H + 1)), ValueError, r"\bdy\b"),
    "dh_n_wrong": (11, np.zeros((B, H + 1)), ValueError, r"\bdh_n\b"),
    "dc_n_f32": (12, np.zeros((B, H), np.float32), TypeError, r"\bdc_n\b"),
    "kernel_wrong": (1, np.zeros((I, G + 4)), ValueError, KERNEL),
    "lengths_out_of_range": (6, np.array([4, 0, T + 3]), ValueError, LENGTHS),
}


@pytest.mark.parametrize("name", list(CORE_BACKWARD_ERRORS))
def test_core_backward_rejects(name):
    from fastlstm import _core
    index, value, exc, match = CORE_BACKWARD_ERRORS[name]
    args = _core_backward_args()
    args[index] = value
    with pytest.raises(exc, match=match):
        _core.backward(*args)


def test_core_valid_call_works():
    # the argument lists above are valid as they stand, so each failure is the mutation's
    from fastlstm import _core
    args = _core_backward_args()
    dx, dh0, dc0, dk, dr, db = _core.backward(*args)
    assert dx.shape == (T, B, I) and db.shape == (G,)
    assert np.isfinite(dx).all() and np.isfinite(dk).all()
    assert np.all(dx[:, 1] == 0)  # lengths[1] == 0


def test_core_set_isa_and_threads_reject_bad():
    from fastlstm import _core
    with pytest.raises(ValueError, match=r"\bn\b"):
        _core.set_num_threads(0)
    with pytest.raises(ValueError, match="sse9"):
        _core.set_isa("sse9")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_lengths_list_for_an_empty_batch(backend):
    """lengths=[] (NumPy reads it as float64) for a batch of 0, as a list comprehension over an
    empty batch gives: fastlstm.reference accepts it, so the checked API must too."""
    x = np.zeros((3, 0, I))
    kw = _valid()
    y, h_n, c_n, saved = ops.lstm_forward(x, kw["kernel"], kw["recurrent_kernel"], lengths=[],
                                          backend=backend)
    assert y.shape == (3, 0, H) and h_n.shape == (0, H)
    assert ops.lstm_backward(saved, np.zeros_like(y))[0].shape == x.shape
    with pytest.raises(TypeError, match="lengths"):   # a float array for a real batch still fails
        ops.lstm_forward(np.zeros((3, 1, I)), kw["kernel"], kw["recurrent_kernel"], lengths=[1.0])
