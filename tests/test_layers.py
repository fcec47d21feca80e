"""Layers: Keras layouts and initialisation, LSTM semantics (masks, go_backwards, state),
and every backward pass against central finite differences in float64.

Tolerances: the finite-difference checks run in float64 with step 1e-6 on O(1) values,
whose truncation error is O(step^2) ~ 1e-12 and rounding error ~ 1e-16/1e-6 = 1e-10 per
entry; 1e-6 relative on the whole gradient leaves a wide margin above both while still
failing for any wrong term (those give errors of order 1e-1). Forward comparisons between
two float64 paths use 1e-12 (the same arithmetic, possibly summed in another order).
"""

import re

import numpy as np
import pytest

from fastlstm import layers, models, reference

TOL_FD = 1e-6


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb else float(np.linalg.norm(a))


def keras_reference(x, kernel, rk, bias, mask=None, go_backwards=False,
                    return_sequences=True, zero_output=False, h0=None, c0=None):
    """Keras's masked LSTM written out step by step in float64 (batch-major)."""
    x = np.asarray(x, np.float64)
    B, T, _ = x.shape
    H = rk.shape[0]
    m = np.ones((B, T), bool) if mask is None else np.asarray(mask, bool)
    if go_backwards:
        x, m = x[:, ::-1], m[:, ::-1]
    h = np.zeros((B, H)) if h0 is None else h0.astype(np.float64)
    c = np.zeros((B, H)) if c0 is None else c0.astype(np.float64)
    prev_out = np.zeros((B, H))
    outs = []
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for t in range(T):
        z = x[:, t] @ kernel + h @ rk + (0 if bias is None else bias)
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        mt = m[:, t:t + 1]
        h = np.where(mt, h_new, h)
        c = np.where(mt, c_new, c)
        out = np.where(mt, h_new, 0.0 if zero_output else prev_out)
        prev_out = out
        outs.append(out)
    seq = np.stack(outs, axis=1)
    return (seq if return_sequences else h), h, c


def random_weights(layer, rng, scale=0.5):
    layer.set_weights([rng.standard_normal(w.shape) * scale for w in layer.get_weights()])


# --------------------------------------------------------------------------- init / layout

def test_lstm_weights_layout_and_keras_initialisation():
    layer = layers.LSTM(8)
    layer(np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32))
    k, r, b = layer.get_weights()
    assert (k.shape, r.shape, b.shape) == ((5, 32), (8, 32), (32,))
    assert k.dtype == np.float32
    assert layer.weight_names == ["kernel", "recurrent_kernel", "bias"]
    # unit_forget_bias: the forget block (second of i, f, c, o) starts at 1, the rest at 0
    np.testing.assert_array_equal(b, np.r_[np.zeros(8), np.ones(8), np.zeros(16)])
    # orthogonal over the whole (u, 4u) matrix: orthonormal rows
    np.testing.assert_allclose(r @ r.T, np.eye(8), atol=1e-5)
    limit = np.sqrt(6.0 / (5 + 32))            # glorot_uniform
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.5 * limit


def test_lstm_no_forget_bias_and_no_bias():
    layer = layers.LSTM(4, unit_forget_bias=False, bias_initializer="ones")
    layer.build((None, 3, 2))
    np.testing.assert_array_equal(layer.bias, np.ones(16))
    nob = layers.LSTM(4, use_bias=False)
    nob(np.ones((1, 2, 3), np.float32))
    assert len(nob.get_weights()) == 2


def test_dense_and_embedding_layouts():
    d = layers.Dense(3)
    d(np.ones((2, 4), np.float32))
    assert [w.shape for w in d.get_weights()] == [(4, 3), (3,)]
    e = layers.Embedding(10, 6)
    out = e(np.array([[1, 2, 0]]))
    assert out.shape == (1, 3, 6) and e.get_weights()[0].shape == (10, 6)
    np.testing.assert_array_equal(out[0, 0], e.embeddings[1])


# --------------------------------------------------------------------------- LSTM semantics

@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("padding", [None, "post", "pre"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_lstm_matches_keras_semantics(go_backwards, padding, return_sequences):
    rng = np.random.default_rng(1)
    B, T, I, H = 4, 7, 3, 5
    x = rng.standard_normal((B, T, I))
    mask = None
    if padding is not None:
        lengths = np.array([7, 4, 1, 0])
        mask = np.zeros((B, T), bool)
        for b, L in enumerate(lengths):
            if padding == "post":
                mask[b, :L] = True
            else:
                mask[b, T - L:] = True
    layer = layers.LSTM(H, return_sequences=return_sequences, go_backwards=go_backwards,
                        dtype="float64")
    layer.build((None, T, I))
    random_weights(layer, rng)
    got = layer(x, mask=mask)
    want, _, _ = keras_reference(x, layer.kernel, layer.recurrent_kernel, layer.bias, mask,
                                 go_backwards, return_sequences)
    assert rel_err(got, want) <= 1e-12


def test_lstm_return_state_and_initial_state():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 4))
    layer = layers.LSTM(6, return_state=True, dtype="float64")
    layer.build((None, 5, 4))
    random_weights(layer, rng)
    h0, c0 = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    out, h, c = layer(x, initial_state=[h0, c0])
    _, wh, wc = keras_reference(x, layer.kernel, layer.recurrent_kernel, layer.bias,
                                h0=h0, c0=c0)
    assert rel_err(h, wh) <= 1e-12 and rel_err(c, wc) <= 1e-12
    np.testing.assert_array_equal(out, h)


def test_stateful_lstm_carries_state_between_calls():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 3))
    full = layers.LSTM(4, dtype="float64")
    full.build((None, 8, 3))
    random_weights(full, rng)
    st = layers.LSTM(4, stateful=True, batch_input_shape=(2, 4, 3), dtype="float64")
    st.build((2, 4, 3))
    st.set_weights(full.get_weights())
    st(x[:, :4])
    second = st(x[:, 4:])
    assert rel_err(second, full(x)) <= 1e-12
    st.reset_states()
    assert rel_err(st(x[:, :4]), full(x[:, :4])) <= 1e-12
    with pytest.raises(ValueError, match=r"incompatible.*\(2, 4, 3\)"):
        st(x[:1, :4])


def test_mask_with_gaps_is_rejected():
    layer = layers.LSTM(2)
    mask = np.array([[True, False, True]])
    with pytest.raises(ValueError, match="contiguous"):
        layer(np.ones((1, 3, 2), np.float32), mask=mask)


def test_masking_layer_feeds_lengths_to_lstm():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 2))
    x[1, 4:] = 0.0
    x[2, 1:] = 0.0
    m = models.Sequential([layers.Masking(0.0, input_shape=(6, 2)), layers.LSTM(3)],
                          dtype="float64")
    lstm = m.layers[1]
    got = m.predict(x, verbose=0)
    mask = np.any(x != 0, axis=-1)
    want, _, _ = keras_reference(x, lstm.kernel, lstm.recurrent_kernel, lstm.bias, mask,
                                 return_sequences=False)
    assert rel_err(got, want) <= 1e-12


def test_bidirectional_matches_two_directions():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 3))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    bi = layers.Bidirectional(layers.LSTM(4, return_sequences=True, dtype="float64"))
    bi.build((None, 5, 3))
    assert bi.count_params() == 2 * (3 * 16 + 4 * 16 + 16)
    f, b = bi.forward_layer, bi.backward_layer
    assert b.go_backwards and not f.go_backwards
    got = bi(x, mask=mask)
    yf, _, _ = keras_reference(x, f.kernel, f.recurrent_kernel, f.bias, mask,
                               zero_output=True)
    yb, _, _ = keras_reference(x, b.kernel, b.recurrent_kernel, b.bias, mask,
                               go_backwards=True, zero_output=True)
    want = np.concatenate([yf, yb[:, ::-1]], axis=-1)
    assert rel_err(got, want) <= 1e-12


def test_generic_path_equals_fused_kernels():
    """The NumPy step loop (other activations, recurrent dropout) agrees with the fused
    kernels on the default activations, forward and backward."""
    from fastlstm import ops
    rng = np.random.default_rng(6)
    T, B, I, H = 6, 3, 4, 5
    x = rng.standard_normal((T, B, I))
    k, r = rng.standard_normal((I, 4 * H)) * 0.4, rng.standard_normal((H, 4 * H)) * 0.4
    bias = rng.standard_normal(4 * H) * 0.3
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    lengths = np.array([6, 3, 0])
    dy, dh, dc = (rng.standard_normal(s) for s in ((T, B, H), (B, H), (B, H)))
    from fastlstm import activations
    for reverse in (False, True):
        y1, h1, c1, s1 = ops.lstm_forward(x, k, r, bias, h0, c0, lengths, reverse)
        y2, h2, c2, s2 = layers._Generic.forward(x, k, r, bias, h0, c0, lengths, reverse,
                                                 activations.get("tanh"),
                                                 activations.get("sigmoid"), None)
        for a, b in ((y1, y2), (h1, h2), (c1, c2)):
            assert rel_err(b, a) <= 1e-12
        g1 = ops.lstm_backward(s1, dy, dh, dc)
        g2 = layers._Generic.backward(s2, dy, dh, dc)
        for a, b in zip(g1, g2):
            assert rel_err(b, a) <= 1e-12


def test_nondefault_activation_takes_numpy_path():
    layer = layers.LSTM(3, activation="relu")
    layer(np.ones((1, 2, 2), np.float32))
    assert layer.last_path == "numpy"
    d = layers.LSTM(3)
    d(np.ones((1, 2, 2), np.float32))
    assert d.last_path == "fused"
    rd = layers.LSTM(3, recurrent_dropout=0.5)
    rd(np.ones((1, 2, 2), np.float32), training=True)
    assert rd.last_path == "numpy"
    rd(np.ones((1, 2, 2), np.float32), training=False)
    assert rd.last_path == "fused"


# --------------------------------------------------------------------------- gradients

def _fd_check(model, x, y, seed_layers=(), x_perturb=None):
    """Backprop gradients of every weight and of a float input vs central differences."""
    loss = model.loss

    def reseed():
        for layer in seed_layers:
            layer._rng = np.random.default_rng(layer.seed)

    def value(xx):
        reseed()
        yp = model._forward(xx, training=True)
        return loss(y, yp, model._batch_weights(None, yp)[0]) + model._regularization()

    reseed()
    yp = model._forward(x, training=True)
    _, dy = loss.value_and_gradient(y, yp, model._batch_weights(None, yp)[0])
    # input gradient through the first layer
    dx = None
    grads = []
    for layer in reversed(model.layers):
        dy = layer.backward(dy)
        dx = dy
        if dy is None:
            break
    for layer in model.layers:
        for g, rg in zip(layer.grads, layer.regularization_grads()):
            grads.append(g if rg is None else g + rg)
    eps = 1e-6
    for w, g in zip(model.weights, grads):
        num = np.zeros_like(w)
        it = np.nditer(w, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = w[i]
            w[i] = old + eps
            up = value(x)
            w[i] = old - eps
            down = value(x)
            w[i] = old
            num[i] = (up - down) / (2 * eps)
        assert rel_err(g, num) <= TOL_FD, (w.shape, rel_err(g, num))
    if dx is not None and x.dtype.kind == "f":
        # x_perturb: the entries that may be moved (moving a masked entry changes the mask)
        sel = np.ones(x.shape, bool) if x_perturb is None else x_perturb
        num = np.zeros_like(x)
        it = np.nditer(x, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            if not sel[i]:
                continue
            old = x[i]
            x[i] = old + eps
            up = value(x)
            x[i] = old - eps
            down = value(x)
            x[i] = old
            num[i] = (up - down) / (2 * eps)
        assert rel_err(np.where(sel, dx, 0), num) <= TOL_FD


def _small_weights(model, rng):
    model.set_weights([rng.standard_normal(w.shape) * 0.5 for w in model.get_weights()])


@pytest.mark.parametrize("go_backwards", [False, True])
def test_fd_stacked_lstm_dense_float64(go_backwards):
    rng = np.random.default_rng(10)
    m = models.Sequential([
        layers.LSTM(4, return_sequences=True, input_shape=(5, 3), go_backwards=go_backwards),
        layers.LSTM(3, kernel_regularizer="l2", recurrent_regularizer="l1"),
        layers.Dense(2, activation="tanh"),
    ], dtype="float64")
    m.compile(loss="mse", optimizer="sgd")
    _small_weights(m, rng)
    _fd_check(m, rng.standard_normal((3, 5, 3)), rng.standard_normal((3, 2)))


def test_fd_embedding_mask_bidirectional_timedistributed_softmax():
    rng = np.random.default_rng(11)
    m = models.Sequential([
        layers.Embedding(7, 3, mask_zero=True, input_shape=(6,)),
        layers.Bidirectional(layers.LSTM(3, return_sequences=True)),
        layers.TimeDistributed(layers.Dense(4, activation="softmax")),
    ], dtype="float64")
    m.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    _small_weights(m, rng)
    x = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 1, 2, 3], [0, 0, 2, 2, 5, 1]])
    y = rng.integers(0, 4, size=(3, 6))
    _fd_check(m, x, y)


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_fd_masked_sequences_output(padding):
    rng = np.random.default_rng(12)
    m = models.Sequential([
        layers.Masking(0.0, input_shape=(6, 2)),
        layers.LSTM(3, return_sequences=True),
        layers.LSTM(2, go_backwards=True),
        layers.Dense(1, activation="sigmoid"),
    ], dtype="float64")
    m.compile(loss="binary_crossentropy", optimizer="sgd")
    m.set_weights([rng.standard_normal(w.shape) for w in m.get_weights()])
    x = rng.standard_normal((3, 6, 2))
    if padding == "post":
        x[0, 4:] = 0
        x[1, 1:] = 0
    else:
        x[0, :2] = 0
        x[2, :5] = 0
    unmasked = np.any(x != 0, axis=-1, keepdims=True) & np.ones(x.shape, bool)
    _fd_check(m, x, rng.integers(0, 2, (3, 1)).astype(float), x_perturb=unmasked)


def test_fd_generic_path_relu_recurrent_dropout_and_dropout():
    rng = np.random.default_rng(13)
    lstm = layers.LSTM(4, activation="relu", recurrent_activation="sigmoid",
                       recurrent_dropout=0.3, dropout=0.25, seed=5, return_sequences=True)
    drop = layers.Dropout(0.2, seed=9)
    m = models.Sequential([layers.Input((5, 3)), lstm, drop, layers.Flatten(),
                           layers.Dense(2, activation="softmax")], dtype="float64")
    m.compile(loss="categorical_crossentropy", optimizer="sgd")
    _small_weights(m, rng)
    y = np.eye(2)[rng.integers(0, 2, 4)]
    _fd_check(m, rng.standard_normal((4, 5, 3)), y, seed_layers=(lstm, drop))
    assert lstm.last_path == "numpy"


def test_fd_dense_activations():
    rng = np.random.default_rng(14)
    for act in ("sigmoid", "tanh", "relu", "linear", "softmax"):
        m = models.Sequential([layers.Dense(3, activation=act, input_shape=(4,)),
                               layers.Dense(2)], dtype="float64")
        m.compile(loss="huber", optimizer="sgd")
        _small_weights(m, rng)
        _fd_check(m, rng.standard_normal((5, 4)), rng.standard_normal((5, 2)))


def test_fd_stateful_lstm_single_batch():
    rng = np.random.default_rng(15)
    m = models.Sequential([layers.LSTM(3, stateful=True, batch_input_shape=(2, 4, 2)),
                           layers.Dense(1)], dtype="float64")
    m.compile(loss="mae", optimizer="sgd")
    _small_weights(m, rng)
    lstm = m.layers[0]
    lstm.reset_states([rng.standard_normal((2, 3)), rng.standard_normal((2, 3))])
    saved = [s.copy() for s in lstm.states]

    # each evaluation must start from the same carried state
    x, y = rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 1))
    orig = m._forward

    def forward(xx, training):
        lstm.states = [s.copy() for s in saved]
        return orig(xx, training)
    m._forward = forward
    _fd_check(m, x, y)


# --------------------------------------------------------------------------- errors

def test_layer_argument_errors():
    with pytest.raises(ValueError, match="units"):
        layers.LSTM(0)
    with pytest.raises(TypeError, match="units"):
        layers.Dense("3")
    with pytest.raises(ValueError, match="dropout"):
        layers.LSTM(3, dropout=1.5)
    with pytest.raises(ValueError, match="sigmod"):
        layers.Dense(3, activation="sigmod")
    with pytest.raises(TypeError, match="unexpected keyword"):
        layers.LSTM(3, nonsense=True)
    # Keras arguments fastlstm does not implement: accepted at their default, refused by name
    # otherwise
    layers.LSTM(3, use_cudnn="auto", kernel_constraint=None, recurrent_constraint=None,
                bias_constraint=None, activity_regularizer=None)
    layers.LSTM(3, use_cudnn=False)
    layers.Dense(3, kernel_constraint=None, bias_constraint=None, activity_regularizer=None)
    layers.Embedding(5, 2, embeddings_constraint=None)
    with pytest.raises(NotImplementedError, match="kernel_constraint"):
        layers.LSTM(3, kernel_constraint="non_neg")
    with pytest.raises(NotImplementedError, match="activity_regularizer"):
        layers.Dense(3, activity_regularizer="l2")
    with pytest.raises(ValueError, match="use_cudnn"):
        layers.LSTM(3, use_cudnn=1)
    with pytest.raises(ValueError, match="merge_mode"):
        layers.Bidirectional(layers.LSTM(2), merge_mode="max")
    with pytest.raises(TypeError, match="Bidirectional wraps an LSTM"):
        layers.Bidirectional(layers.Dense(2))


def test_layer_input_errors():
    lstm = layers.LSTM(3, input_shape=(4, 2))
    with pytest.raises(ValueError, match="rank 3"):
        lstm(np.ones((4, 2), np.float32))
    lstm(np.ones((1, 4, 2), np.float32))
    with pytest.raises(ValueError, match="incompatible"):
        lstm(np.ones((1, 4, 5), np.float32))
    emb = layers.Embedding(5, 2)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        emb(np.array([[1, 5]]))
    with pytest.raises(ValueError, match="integer"):
        emb(np.array([[1.5]]))
    with pytest.raises(RuntimeError, match="backward"):
        layers.Dense(2).backward(np.ones((1, 2)))


def test_weights_set_checks_shapes():
    d = layers.Dense(2)
    d(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"'kernel'.*\(3, 2\)"):
        d.set_weights([np.ones((2, 2)), np.ones(2)])
    with pytest.raises(ValueError, match="expects 2 weight arrays"):
        d.set_weights([np.ones((3, 2))])
    before = d.kernel
    d.set_weights([np.full((3, 2), 7.0), np.zeros(2)])
    assert d.kernel is before and np.all(d.kernel == 7.0)


def test_config_round_trip():
    for layer in (layers.LSTM(3, dropout=0.1, go_backwards=True, kernel_regularizer="l2"),
                  layers.Dense(2, activation="softmax"), layers.Embedding(4, 2, mask_zero=True),
                  layers.Bidirectional(layers.LSTM(2, return_sequences=True), merge_mode="sum"),
                  layers.TimeDistributed(layers.Dense(3)), layers.Dropout(0.3),
                  layers.Masking(-1.0)):
        again = layers.deserialize(layers.serialize(layer))
        assert type(again) is type(layer)
        assert again.get_config() == layer.get_config()


def test_a_sequence_with_no_valid_step_outputs_zero_from_a_nonzero_state():
    # Keras: the last output of a fully masked sequence is zero, even when the initial (or
    # carried) state is not; the returned state stays that state. No gradient reaches it
    # through the zero output.
    rng = np.random.default_rng(21)
    lstm = layers.LSTM(3, return_state=True, dtype="float64")
    x = rng.standard_normal((3, 4, 2))
    mask = np.ones((3, 4), bool)
    mask[1] = False
    h0, c0 = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    lstm._ensure_built((None, 4, 2))
    out, h, c = lstm.forward(x, training=True, mask=mask, initial_state=[h0, c0])
    np.testing.assert_array_equal(out[1], np.zeros(3))
    np.testing.assert_array_equal(h[1], h0[1])
    np.testing.assert_array_equal(c[1], c0[1])
    assert np.all(out[[0, 2]] != 0)
    lstm.backward([np.ones_like(out), None, None])
    dh0, _ = lstm.initial_state_grads
    np.testing.assert_array_equal(dh0[1], np.zeros(3))
    assert np.all(dh0[[0, 2]] != 0)
    # the same row of return_sequences=True ends in zero too (they agree)
    seq = layers.LSTM(3, return_sequences=True, dtype="float64")
    seq._ensure_built((None, 4, 2))
    seq.set_weights(lstm.get_weights())
    np.testing.assert_array_equal(seq.forward(x, mask=mask, initial_state=[h0, c0])[1, -1], np.zeros(3))
    # stateful: a carried state, then a call where one sequence is all padding
    st = layers.LSTM(3, stateful=True, dtype="float64")
    st(x)
    carried = st.states[0].copy()
    y = st(rng.standard_normal((3, 4, 2)), mask=mask)
    np.testing.assert_array_equal(y[1], np.zeros(3))
    np.testing.assert_array_equal(st.states[0][1], carried[1])


def test_bidirectional_wraps_copies_and_checks_directions_as_keras():
    lstm = layers.LSTM(4, return_sequences=True, name="enc")
    bi = layers.Bidirectional(lstm)
    assert bi.forward_layer is not lstm and bi.forward_layer.name == "forward_enc"
    assert bi.backward_layer.name == "backward_enc" and bi.backward_layer.go_backwards
    assert lstm.zero_output_for_mask is False            # the given layer is left alone
    with pytest.raises(ValueError, match="different `go_backwards`"):
        layers.Bidirectional(layers.LSTM(3, go_backwards=True))
    with pytest.raises(ValueError, match="different `go_backwards`"):
        layers.Bidirectional(layers.LSTM(3), backward_layer=layers.LSTM(3, name="b"))
    with pytest.raises(ValueError, match="stateful"):
        layers.Bidirectional(layers.LSTM(3, stateful=True),
                             backward_layer=layers.LSTM(3, go_backwards=True, name="b"))
    # a forward layer that runs backwards with a custom forward-in-time backward layer is valid
    layers.Bidirectional(layers.LSTM(3, go_backwards=True), backward_layer=layers.LSTM(3, name="b"))


def test_dropout_noise_shape_must_fit_the_input():
    x = np.ones((4, 5, 6))
    drop = layers.Dropout(0.5, noise_shape=(None, 1, None), seed=1)
    y = drop.forward(x, training=True)
    assert np.all((y == y[:, :1]))                     # one mask along the time axis
    for bad in ((4, 5, 6, 1), (None, 2, None)):
        with pytest.raises(ValueError, match="noise_shape"):
            layers.Dropout(0.5, noise_shape=bad).forward(x, training=True)


def test_recurrent_dropout_draws_one_mask_per_gate_as_keras():
    # Keras 3's LSTM cell with recurrent_dropout > 0 multiplies h_{t-1} by four independent
    # masks, one per gate. One unit, one step, h0 = c0 = 1, no input: every gate's
    # pre-activation is 0 or 2 * rk[k] (rate 0.5), 16 equally likely outcomes.
    B, rk = 20000, np.array([[0.3, 0.7, 1.1, 1.9]])
    lstm = layers.LSTM(1, recurrent_dropout=0.5, seed=3, dtype="float64")
    lstm._ensure_built((None, 1, 1))
    lstm.set_weights([np.zeros((1, 4)), rk, np.zeros(4)])
    ones = np.ones((B, 1))
    y = lstm.forward(np.zeros((B, 1, 1)), training=True, initial_state=[ones, ones])[:, 0]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    outcomes = []
    for bits in np.ndindex(2, 2, 2, 2):
        zi, zf, zg, zo = (2 * rk[0] * np.array(bits))
        outcomes.append(sig(zo) * np.tanh(sig(zf) * 1 + sig(zi) * np.tanh(zg)))
    # 12 distinct values (with g's mask off, tanh(0) = 0 hides i's); a mask shared by the
    # gates gives 2
    assert set(np.round(np.unique(y), 9)) == set(np.round(outcomes, 9))
    assert len(set(np.round(outcomes, 9))) == 12
    assert abs(y.mean() - np.mean(outcomes)) < 4 * y.std() / np.sqrt(B)
    # input dropout alongside it: four masks too (x * mask_k feeds gate k)
    lstm = layers.LSTM(1, dropout=0.5, recurrent_dropout=0.5, seed=4, dtype="float64")
    lstm._ensure_built((None, 1, 1))
    lstm.set_weights([np.array([[0.5, 0.9, 1.3, 1.7]]), np.zeros((1, 4)), np.zeros(4)])
    y = lstm.forward(np.ones((B, 1, 1)), training=True)[:, 0]
    assert len(np.unique(np.round(y, 12))) > 2            # (one shared mask: 2 values)


def test_reset_states_checks_the_given_states():
    lstm = layers.LSTM(4, stateful=True)
    lstm.build((2, 5, 3))
    with pytest.raises(ValueError, match=r"state h must have shape \(batch, units\) = \(2, 4\)"):
        lstm.reset_states([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match=r"state c must have shape"):
        lstm.reset_states([np.zeros((2, 4)), np.zeros((1, 4))])
    with pytest.raises(ValueError, match=r"expects \[h, c\], got 3 arrays"):
        lstm.reset_states([np.zeros((2, 4))] * 3)
    assert lstm.states is None                    # a refused call leaves the layer as it was
    lstm.reset_states([np.ones((2, 4)), np.zeros((2, 4))])
    assert lstm(np.zeros((2, 5, 3), np.float32)).shape == (2, 4)


def test_dropout_noise_shape_is_checked_when_made():
    with pytest.raises(TypeError, match="noise_shape"):
        layers.Dropout(0.5, noise_shape=5)
    with pytest.raises(TypeError, match="noise_shape"):
        layers.Dropout(0.5, noise_shape="ab")
    with pytest.raises(ValueError, match="noise_shape"):
        layers.Dropout(0.5, noise_shape=(None, 0, 3))
    assert layers.Dropout(0.5, noise_shape=[None, 1, 3]).noise_shape == (None, 1, 3)


def test_set_weights_refuses_complex_arrays():
    dense = layers.Dense(2)
    dense.build((None, 3))
    with pytest.raises(TypeError, match="real numeric"):
        dense.set_weights([np.full((3, 2), 1 + 5j), np.zeros(2)])


def test_lstm_refuses_inputs_without_features():
    with pytest.raises(ValueError, match=r"'zf' \(LSTM\) needs a known feature axis of size >= 1"):
        layers.LSTM(4, name="zf")(np.zeros((2, 3, 0), np.float32))


def test_bidirectional_reset_states_resets_both_directions():
    # as Keras 3's Bidirectional.reset_states: a stateful pair forgets its carried states
    bi = layers.Bidirectional(layers.LSTM(3, stateful=True))
    x = np.random.default_rng(7).standard_normal((2, 4, 5)).astype(np.float32)
    first = bi(x)
    assert not np.allclose(bi(x), first)                 # the carried states changed the result
    assert all(layer.states is not None for layer in (bi.forward_layer, bi.backward_layer))
    bi.reset_states()
    assert all(layer.states is None for layer in (bi.forward_layer, bi.backward_layer))
    np.testing.assert_array_equal(bi(x), first)
    bi.reset_state()                                     # (Keras's other spelling)
    np.testing.assert_array_equal(bi(x), first)
    with pytest.raises(AttributeError, match="not stateful"):   # as Keras 3 and LSTM.reset_states
        layers.Bidirectional(layers.LSTM(3)).reset_states()


# --------------------------------------------------------------------------- precision

def test_lstm_precision_argument_checks_config_and_cpu_fallback():
    # fastlstm's own LSTM argument precision: checked at construction, kept by get_config only
    # when not "fp32" (so Keras-format configs stay Keras's), by Bidirectional's copies and by
    # saved models; on the CPU (no tensor cores) the layer computes as with "fp32", bitwise.
    with pytest.raises(ValueError, match=r"precision: expected one of .*got 'fp16'"):
        layers.LSTM(3, precision="fp16")
    with pytest.raises(ValueError, match=r"precision='bf16' needs the fused kernels.*'relu'"):
        layers.LSTM(3, activation="relu", precision="bf16")
    with pytest.raises(ValueError, match=r"precision='tf32' needs the fused kernels, and recurrent_dropout"):
        layers.LSTM(3, recurrent_dropout=0.2, precision="tf32")
    assert "precision" not in layers.LSTM(3).get_config()
    lstm = layers.LSTM(3, precision="tf32x3", return_sequences=True)
    assert lstm.get_config()["precision"] == "tf32x3"
    assert layers.LSTM.from_config(lstm.get_config()).precision == "tf32x3"
    bi = layers.Bidirectional(layers.LSTM(3, precision="bf16"))
    assert bi.forward_layer.precision == bi.backward_layer.precision == "bf16"

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 5)).astype(np.float32)
    predictions = []
    for precision in ("fp32", "tf32"):
        m = models.Sequential([layers.LSTM(7, precision=precision, return_sequences=True, input_shape=(6, 5)),
                               layers.Bidirectional(layers.LSTM(2, precision=precision))])
        m.compile(loss="mse", optimizer="sgd")
        if predictions:
            m.set_weights(weights)
        weights = m.get_weights()
        predictions.append(m.predict(x, verbose=0))
    np.testing.assert_array_equal(predictions[0], predictions[1])
    with pytest.raises(ValueError, match=r"Layer 'deep' \(LSTM\): precision='tf32' takes a float32 layer.*float64"):
        models.Sequential([layers.LSTM(2, precision="tf32", name="deep", input_shape=(6, 5))],
                          dtype="float64").predict(x, verbose=0)


def test_keras_dtype_policies_and_arguments_written_by_keras_get_config():
    # Keras 3 writes a layer's dtype as a serialized DTypePolicy; read as its dtype name
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float64"},
              "registered_name": None}
    assert layers.Dense(2, dtype=policy).dtype == np.float64
    assert layers.LSTM(2, dtype={"class_name": "FloatDTypePolicy",
                                 "config": {"name": "float32"}}).dtype == np.float32
    assert layers.InputLayer(shape=(3, 2), dtype=policy).get_config()["dtype"] == "float64"
    with pytest.raises(ValueError, match="dtype: mixed-precision policy 'mixed_float16'"):
        layers.Dense(2, dtype={"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}})
    # any other dict: an error naming the argument (NumPy read it as a record layout and said
    # "entry not a 2- or 3- tuple")
    for bad in ({"name": "float32"}, {"class_name": "DTypePolicy", "config": "float32"}):
        with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64'"):
            layers.Dense(2, dtype=bad)
    with pytest.raises(ValueError, match="dtype: expected 'float32' or 'float64'"):
        layers.Dense(2, dtype=[("a", "f4")])  # a record dtype
    with pytest.raises(ValueError, match="dtype: expected 'float32' or 'float64', got float16"):
        layers.Dense(2, dtype={"class_name": "DTypePolicy", "config": {"name": "float16"}})
    # arguments Keras's get_config writes, accepted at their defaults and refused by name otherwise
    layers.Dense(2, quantization_config=None)
    with pytest.raises(NotImplementedError, match="quantization_config"):
        layers.Dense(2, quantization_config={"mode": "int8"})
    assert layers.Flatten(data_format="channels_last")(np.ones((2, 3, 4))).shape == (2, 12)
    with pytest.raises(NotImplementedError, match="data_format='channels_first'"):
        layers.Flatten(data_format="channels_first")
    layers.InputLayer(shape=(3, 2), optional=False, ragged=False, sparse=False)
    for key in ("optional", "ragged", "sparse"):
        with pytest.raises(NotImplementedError, match=f"{key}=True"):
            layers.InputLayer(shape=(3, 2), **{key: True})


@pytest.mark.parametrize("activation", ["tanh", "relu"])   # fused kernels and the NumPy path
def test_mask_of_another_batch_size_is_refused_by_name(activation):
    """A mask whose batch axis does not match the input's was silently ignored when all True,
    and otherwise failed with an error about `lengths` (an argument the caller never gave) or
    a raw NumPy broadcasting error."""
    x = np.ones((2, 4, 3), np.float32)
    lstm = layers.LSTM(5, activation=activation, return_sequences=True)
    lstm(x)
    for mask in (np.ones((3, 4), bool), np.ones((1, 4), bool),
                 np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], bool)):
        with pytest.raises(ValueError, match=r"mask must have shape \(batch, timesteps\) = \(2, 4\)"):
            lstm(x, mask=mask)
    bi = layers.Bidirectional(layers.LSTM(2, activation=activation))
    with pytest.raises(ValueError, match=r"mask must have shape"):
        bi(x, mask=np.ones((3, 4), bool))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_lstm_backward_checks_the_gradient_shapes(activation, return_sequences):
    """On the NumPy path a dy of batch 1 was broadcast over the batch (silently wrong
    gradients); on the fused path wrong shapes gave raw NumPy errors or named the time-major
    internals."""
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    lstm = layers.LSTM(5, activation=activation, return_sequences=return_sequences,
                       dtype="float64")
    lstm(x, training=True)
    good = (2, 3, 5) if return_sequences else (2, 5)
    bad = [(1, 3, 5), (3, 5), (5,)] if return_sequences else [(1, 5), (5,), (2, 3, 5)]
    for shape in bad:
        with pytest.raises(ValueError, match="gradient of the output must have shape"):
            lstm.backward(np.ones(shape))
    assert lstm.backward(np.ones(good)).shape == x.shape
    stated = layers.LSTM(5, activation=activation, return_state=True, dtype="float64")
    stated(x, training=True)
    with pytest.raises(ValueError, match="returned state c must have shape"):
        stated.backward([np.ones((2, 5)), np.ones((2, 5)), np.ones((1, 5))])
    assert stated.backward([None, np.ones((2, 5)), None]).shape == x.shape


def test_flatten_an_empty_batch():
    flat = layers.Flatten()
    y = flat(np.ones((0, 3, 4), np.float32))
    assert y.shape == (0, 12)
    assert flat.backward(np.ones((0, 12), np.float32)).shape == (0, 3, 4)
    assert flat(np.ones((2, 3, 4), np.float32)).shape == (2, 12)


# --------------------------------------------------------------------------- RepeatVector / pooling

def test_repeat_vector_and_global_pooling_forward_match_numpy():
    rng = np.random.default_rng(20)
    x2 = rng.standard_normal((3, 4)).astype(np.float32)
    rv = layers.RepeatVector(5)
    y = rv(x2)
    assert y.shape == (3, 5, 4) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, np.stack([x2] * 5, axis=1))
    assert rv.compute_output_shape((None, 4)) == (None, 5, 4)
    assert rv.compute_mask(x2, np.ones(3, bool)) is None

    x = rng.standard_normal((3, 6, 4))
    mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], bool)
    for keepdims in (False, True):
        avg = layers.GlobalAveragePooling1D(keepdims=keepdims, dtype="float64")
        mx = layers.GlobalMaxPooling1D(keepdims=keepdims, dtype="float64")
        shape = (3, 1, 4) if keepdims else (3, 4)
        assert avg.compute_output_shape((None, 6, 4)) == ((None, 1, 4) if keepdims else (None, 4))
        np.testing.assert_allclose(avg(x), x.mean(axis=1, keepdims=keepdims), rtol=1e-12)
        np.testing.assert_array_equal(mx(x), x.max(axis=1, keepdims=keepdims))
        # the mean of the unmasked steps; the maximum ignores the mask (as Keras 3's)
        want = np.stack([x[b, mask[b]].mean(axis=0) for b in range(3)]).reshape(shape)
        np.testing.assert_allclose(avg(x, mask=mask), want, rtol=1e-12)
        np.testing.assert_array_equal(mx(x, mask=mask), x.max(axis=1, keepdims=keepdims))
        for layer in (avg, mx):
            assert layer.compute_mask(x, mask) is None       # the time axis is gone
    # masked steps do not reach the mean even when they hold inf / NaN (Keras: where, not *)
    bad = x.copy()
    bad[0, 4], bad[1, 0] = np.inf, np.nan
    np.testing.assert_allclose(layers.GlobalAveragePooling1D(dtype="float64")(bad, mask=mask),
                               avg(x, mask=mask)[:, 0], rtol=1e-12)
    # a row with no unmasked step: 0 / 0 = NaN, as Keras (no warning)
    none_in_row_2 = np.r_[mask[:2], [[0] * 6]].astype(bool)
    out = layers.GlobalAveragePooling1D(dtype="float64")(x, mask=none_in_row_2)
    assert np.isnan(out[2]).all() and np.isfinite(out[:2]).all()


def test_global_pooling_in_a_model_passes_no_mask_and_needs_no_mask():
    m = models.Sequential([layers.Embedding(9, 3, mask_zero=True, input_shape=(5,)),
                           layers.LSTM(4, return_sequences=True),
                           layers.GlobalAveragePooling1D(), layers.Dense(2)])
    assert m.output_shape == (None, 2)
    m.predict(np.array([[1, 2, 0, 0, 0], [3, 4, 5, 6, 7]]), verbose=0)
    assert m._output_mask is None
    # Keras's default names (the digit stays with the capital after it)
    assert re.fullmatch(r"global_average_pooling1d(_\d+)?", layers.GlobalAveragePooling1D().name)
    assert re.fullmatch(r"global_max_pooling1d(_\d+)?", layers.GlobalMaxPooling1D().name)
    assert re.fullmatch(r"repeat_vector(_\d+)?", layers.RepeatVector(2).name)
    assert layers.GlobalMaxPool1D is layers.GlobalMaxPooling1D
    assert layers.GlobalAvgPool1D is layers.GlobalAveragePooling1D


def test_fd_lstm_autoencoder_repeat_vector_float64():
    rng = np.random.default_rng(21)
    m = models.Sequential([layers.LSTM(4, input_shape=(5, 3)), layers.RepeatVector(5),
                           layers.LSTM(3, return_sequences=True),
                           layers.TimeDistributed(layers.Dense(3))], dtype="float64")
    m.compile(loss="mse", optimizer="sgd")
    _small_weights(m, rng)
    x = rng.standard_normal((3, 5, 3))
    _fd_check(m, x, x.copy())


@pytest.mark.parametrize("keepdims", [False, True])
def test_fd_global_average_and_max_pooling_float64(keepdims):
    rng = np.random.default_rng(22)
    for pool in (layers.GlobalAveragePooling1D, layers.GlobalMaxPooling1D):
        m = models.Sequential([layers.LSTM(4, return_sequences=True, input_shape=(6, 3)),
                               pool(keepdims=keepdims), layers.Flatten(),
                               layers.Dense(2, activation="tanh")], dtype="float64")
        m.compile(loss="mse", optimizer="sgd")
        _small_weights(m, rng)
        _fd_check(m, rng.standard_normal((3, 6, 3)), rng.standard_normal((3, 2)))


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_fd_masked_global_average_pooling_float64(padding):
    rng = np.random.default_rng(23)
    m = models.Sequential([layers.Masking(0.0, input_shape=(6, 2)),
                           layers.LSTM(3, return_sequences=True),
                           layers.GlobalAveragePooling1D(),
                           layers.Dense(1, activation="sigmoid")], dtype="float64")
    m.compile(loss="binary_crossentropy", optimizer="sgd")
    m.set_weights([rng.standard_normal(w.shape) for w in m.get_weights()])
    x = rng.standard_normal((3, 6, 2))
    if padding == "post":
        x[0, 4:], x[1, 1:] = 0, 0
    else:
        x[0, :2], x[2, :5] = 0, 0
    unmasked = np.any(x != 0, axis=-1, keepdims=True) & np.ones(x.shape, bool)
    _fd_check(m, x, rng.integers(0, 2, (3, 1)).astype(float), x_perturb=unmasked)
    # Embedding(mask_zero) in front: the embedding rows of padded steps get no gradient
    e = models.Sequential([layers.Embedding(7, 3, mask_zero=True, input_shape=(5,)),
                           layers.LSTM(3, return_sequences=True),
                           layers.GlobalAveragePooling1D(), layers.Dense(2, activation="softmax")],
                          dtype="float64")
    e.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    _small_weights(e, rng)
    _fd_check(e, np.array([[1, 2, 3, 0, 0], [4, 5, 6, 1, 2], [0, 0, 0, 2, 5]]), np.array([0, 1, 1]))


def test_global_max_pooling_shares_the_gradient_between_tied_steps():
    x = np.array([[[1.0, 2.0], [3.0, 2.0], [3.0, 0.0]]])
    mx = layers.GlobalMaxPooling1D(dtype="float64")
    np.testing.assert_array_equal(mx(x), [[3.0, 2.0]])
    dx = mx.backward(np.array([[1.0, 4.0]]))
    np.testing.assert_array_equal(dx, [[[0.0, 2.0], [0.5, 2.0], [0.5, 0.0]]])
    avg = layers.GlobalAveragePooling1D(dtype="float64")
    avg(x, mask=np.array([[True, True, False]]))
    np.testing.assert_array_equal(avg.backward(np.array([[1.0, 4.0]])),
                                  [[[0.5, 2.0], [0.5, 2.0], [0.0, 0.0]]])
    avg(x)
    np.testing.assert_allclose(avg.backward(np.array([[3.0, 6.0]])), [[[1.0, 2.0]] * 3])
    rv = layers.RepeatVector(3, dtype="float64")
    rv(x[:, 0])
    np.testing.assert_array_equal(rv.backward(np.arange(6.0).reshape(1, 3, 2)), [[6.0, 9.0]])


def test_repeat_vector_and_pooling_argument_and_input_errors():
    with pytest.raises(ValueError, match="n: expected a positive integer, got 0"):
        layers.RepeatVector(0)
    for bad in (2.0, True, "3"):
        with pytest.raises(TypeError, match="n: expected a positive integer"):
            layers.RepeatVector(bad)
    for pool in (layers.GlobalAveragePooling1D, layers.GlobalMaxPooling1D):
        with pytest.raises(TypeError, match="keepdims: expected True or False"):
            pool(keepdims="yes")
        with pytest.raises(NotImplementedError, match="data_format='channels_first'"):
            pool(data_format="channels_first")
        with pytest.raises(ValueError, match="data_format: expected 'channels_last'"):
            pool(data_format="nwc")
        pool(data_format="channels_last")
        with pytest.raises(ValueError, match=r"rank 3 \(batch, steps, features\)"):
            pool()(np.ones((2, 3), np.float32))
        with pytest.raises(RuntimeError, match="backward"):
            pool().backward(np.ones((2, 3)))
        layer = pool()
        layer(np.ones((2, 5, 3), np.float32))
        with pytest.raises(ValueError, match=r"gradient of the output must have shape "
                                             r"\(batch, features\) = \(2, 3\)"):
            layer.backward(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"rank 2 \(batch, features\)"):
        layers.RepeatVector(2)(np.ones((2, 3, 4), np.float32))
    rv = layers.RepeatVector(2)
    rv(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, n, features\) = \(4, 2, 3\)"):
        rv.backward(np.ones((4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"mask must have shape \(batch, steps\) = \(2, 5\)"):
        layers.GlobalAveragePooling1D()(np.ones((2, 5, 3), np.float32), mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="no steps to take the maximum over"):
        layers.GlobalMaxPooling1D()(np.ones((2, 0, 3), np.float32))
    assert layers.GlobalAveragePooling1D()(np.ones((0, 4, 3), np.float32)).shape == (0, 3)
    assert layers.GlobalMaxPooling1D()(np.ones((0, 4, 3), np.float32)).shape == (0, 3)


def test_repeat_vector_and_pooling_configs():
    for layer in (layers.RepeatVector(4), layers.GlobalAveragePooling1D(keepdims=True),
                  layers.GlobalMaxPooling1D()):
        again = layers.deserialize(layers.serialize(layer))
        assert type(again) is type(layer)
        assert again.get_config() == layer.get_config()
    assert layers.RepeatVector(4).get_config()["n"] == 4
    cfg = layers.GlobalMaxPooling1D().get_config()
    assert (cfg["data_format"], cfg["keepdims"]) == ("channels_last", False)
    # Keras's own config, its dtype policy included
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float64"},
              "registered_name": None}
    gap = layers.deserialize({"class_name": "GlobalAveragePooling1D", "config": {
        "name": "gap", "trainable": True, "dtype": policy, "data_format": "channels_last",
        "keepdims": False}})
    assert gap.dtype == np.float64 and gap.name == "gap"
    assert type(layers.deserialize({"class_name": "GlobalMaxPool1D", "config": {}})) is \
        layers.GlobalMaxPooling1D


def test_a_model_with_repeat_vector_and_pooling_trains_saves_and_loads(tmp_path):
    m = models.Sequential([layers.Input((6, 3)), layers.LSTM(4), layers.RepeatVector(6),
                           layers.LSTM(3, return_sequences=True),
                           layers.GlobalMaxPooling1D(keepdims=True),
                           layers.GlobalAveragePooling1D(), layers.Dense(2)])
    m.compile(loss="mse", optimizer="adam")
    x = np.random.default_rng(24).standard_normal((5, 6, 3)).astype(np.float32)
    m.fit(x, np.zeros((5, 2), np.float32), epochs=2, verbose=0)
    m.save(tmp_path / "m.keras")
    again = models.load_model(tmp_path / "m.keras")
    assert [type(layer).__name__ for layer in again.layers] == [
        "LSTM", "RepeatVector", "LSTM", "GlobalMaxPooling1D", "GlobalAveragePooling1D", "Dense"]
    np.testing.assert_array_equal(again.predict(x, verbose=0), m.predict(x, verbose=0))
