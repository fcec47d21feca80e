"""Edge numerics of the CPU kernels' sigmoid / tanh (csrc/cpu/simd.h), on every CPU path.

Both tests fail on the code before the simd.h fix described with them:
* tanh(x) = (1 - e) / (1 + e), e = exp(-2x), cancels for small |x| (tanh(1e-8) = 0 in float32,
  relative error ~1e-3 at 2e-5), which the LSTM's outputs inherit when pre-activations or
  cell states are small;
* sigmoid(z) for z below -88 (float32) / -709 (float64) is 1 / (1 + exp(clamped)) > 0 instead
  of 0, so the backward's s * (1 - s) is ~1e-39 / ~1e-308 instead of 0 and, multiplied by a
  huge kernel or input, gives O(1) gradients where the exact ones are 0.
"""

import numpy as np
import pytest

from fastlstm import ops, reference

DTYPES = [np.float32, np.float64]


def _gates(z, dtype):
    """The CPU forward's saved gates for pre-activations z (one per batch row, every unit)."""
    H = 16
    x = np.asarray(z, dtype)[None, :, None]
    y, h_n, c_n, saved = ops.lstm_forward(x, np.ones((1, 4 * H), dtype), np.zeros((H, 4 * H), dtype),
                                          backend="cpu")
    gates = saved.payload[0][0]
    return gates[:, 0], gates[:, 2 * H]  # sigmoid(z), tanh(z)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_tanh_small_arguments_relative_accuracy(isa, dtype):
    tiny = np.finfo(dtype).tiny
    z = np.logspace(np.log10(tiny), 0, 4001).astype(dtype)
    z = np.concatenate([z, -z])
    _, t = _gates(z, dtype)
    exact = np.tanh(z.astype(np.longdouble))
    rel = np.abs(t.astype(np.longdouble) - exact) / np.abs(exact)
    assert rel.max() <= 8 * np.finfo(dtype).eps, f"max relative error {float(rel.max()):.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_small_inputs_match_reference(isa, dtype, rel_err):
    # Keras-like initial weights (bias 0) and inputs of scale 1e-3: small pre-activations.
    rng = np.random.default_rng(5)
    T, B, I, H = 6, 3, 8, 16
    x = (rng.standard_normal((T, B, I)) * 1e-3).astype(dtype)
    K = (rng.standard_normal((I, 4 * H)) / np.sqrt(I)).astype(dtype)
    R = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(dtype)
    y, h_n, c_n, _ = ops.lstm_forward(x, K, R, backend="cpu")
    ry, rh, rc, _ = reference.lstm_forward(*(a.astype(np.float64) for a in (x, K, R)))
    tol = 2e-6 if dtype == np.float32 else 1e-12
    for name, a, b in (("y", y, ry), ("h_n", h_n, rh), ("c_n", c_n, rc)):
        assert rel_err(a, b) <= tol, f"{name}: {rel_err(a, b):.3g}"


@pytest.mark.parametrize("dtype, v", [(np.float32, 3e38), (np.float64, 1.7e308)], ids=["f32", "f64"])
def test_saturated_sigmoid_has_zero_gradient(isa, dtype, v):
    s, _ = _gates(np.array([-1e4, -np.inf]), dtype)
    assert (s == 0).all(), s
    H = 4
    x = np.full((1, 1, 1), v, dtype)
    K = np.zeros((1, 4 * H), dtype)
    K[0, :H] = -v                 # z_i = -v * v = -inf: input gate exactly 0
    K[0, 2 * H:3 * H] = 1 / v     # z_g = 1
    y, h_n, c_n, saved = ops.lstm_forward(x, K, np.zeros((H, 4 * H), dtype), backend="cpu")
    dx, dh0, dc0, dk, dr, db = ops.lstm_backward(saved, np.ones((1, 1, H), dtype))
    assert np.all(dk[0, :H] == 0), dk[0, :H]
    assert np.all(dx == 0), dx
