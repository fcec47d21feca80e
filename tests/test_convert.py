"""fastlstm.convert: weight layouts of PyTorch, ONNX and Keras, and loading whole models.

The numerical comparisons against torch.nn.LSTM run both libraries in float32 on the
same weights and inputs and require a relative error ||a - b|| / ||b|| of at most 1e-5:
the two compute the same formulas in float32 but sum the matrix products in different
orders (and PyTorch adds its two biases separately), so they differ by float32 rounding,
a few ulps per step (float32's epsilon is 1.2e-7) that grow slowly with the sequence.
"""

import importlib
import re
import sys
import warnings

import numpy as np
import pytest

import fastlstm

from fastlstm import convert, layers as L, ops
from fastlstm.models import Sequential

TOL = 1e-5


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- dependencies

def test_modules_import_without_onnx_and_torch(monkeypatch):
    for name in ("onnx", "onnxruntime", "torch"):
        monkeypatch.setitem(sys.modules, name, None)         # "import onnx" now fails
    for name in ("onnx", "convert"):
        monkeypatch.delitem(sys.modules, f"fastlstm.{name}", raising=False)
        monkeypatch.setattr(fastlstm, name, getattr(fastlstm, name, None), raising=False)
    fo = importlib.import_module("fastlstm.onnx")
    conv = importlib.import_module("fastlstm.convert")
    assert callable(fo.export) and callable(conv.load_torch_state_dict)
    model = Sequential([L.Input(shape=(None, 2)), L.LSTM(3)])
    with pytest.raises(ImportError, match=r'pip install "fastlstm\[onnx\]"'):
        fo.export(model, None)
    with pytest.raises(ImportError):
        conv.torch_state_dict_from_sequential(model, tensors=True)
    # the NumPy conversions need neither
    W, R, B = conv.fastlstm_to_onnx([(np.zeros((2, 12), np.float32),
                                      np.zeros((3, 12), np.float32), None)])
    assert W.shape == (1, 12, 2) and R.shape == (1, 12, 3) and B.shape == (1, 24)


# --------------------------------------------------------------------------- single LSTMs

def test_torch_round_trip_and_layout():
    rng = np.random.default_rng(0)
    I, H = 3, 5
    w_ih, w_hh = rand(rng, 4 * H, I), rand(rng, 4 * H, H)
    b_ih, b_hh = rand(rng, 4 * H), rand(rng, 4 * H)
    k, rk, b = convert.torch_to_fastlstm(w_ih, w_hh, b_ih, b_hh)
    assert k.shape == (I, 4 * H) and rk.shape == (H, 4 * H) and b.shape == (4 * H,)
    np.testing.assert_array_equal(k, w_ih.T)
    np.testing.assert_array_equal(rk, w_hh.T)
    np.testing.assert_array_equal(b, b_ih + b_hh)
    assert k.flags.c_contiguous and rk.flags.c_contiguous
    assert k.dtype == np.float32 and b.dtype == np.float32

    w_ih2, w_hh2, b_ih2, b_hh2 = convert.fastlstm_to_torch(k, rk, b)
    np.testing.assert_array_equal(w_ih2, w_ih)
    np.testing.assert_array_equal(w_hh2, w_hh)
    np.testing.assert_array_equal(b_ih2, b)
    np.testing.assert_array_equal(b_hh2, np.zeros(4 * H, np.float32))
    # and back: the bias sum is what matters
    k3, rk3, b3 = convert.torch_to_fastlstm(w_ih2, w_hh2, b_ih2, b_hh2)
    np.testing.assert_array_equal(k3, k)
    np.testing.assert_array_equal(rk3, rk)
    np.testing.assert_array_equal(b3, b)


def test_torch_conversion_without_or_with_one_bias():
    rng = np.random.default_rng(1)
    w_ih, w_hh = rand(rng, 8, 3), rand(rng, 8, 2)
    assert convert.torch_to_fastlstm(w_ih, w_hh)[2] is None
    b = rand(rng, 8)
    np.testing.assert_array_equal(convert.torch_to_fastlstm(w_ih, w_hh, b)[2], b)
    np.testing.assert_array_equal(convert.torch_to_fastlstm(w_ih, w_hh, None, b)[2], b)
    out = convert.fastlstm_to_torch(w_ih.T, w_hh.T)
    assert out[2] is None and out[3] is None


def test_onnx_gate_order_and_round_trip():
    I, H = 2, 3
    # block j of every fastlstm weight holds the value j (i=0, f=1, g=2, o=3)
    gates = np.repeat(np.arange(4, dtype=np.float32), H)                   # (4H,)
    kernel = np.tile(gates, (I, 1))
    rk = np.tile(gates, (H, 1)) + 10
    bias = gates + 20
    W, R, B = convert.fastlstm_to_onnx([(kernel, rk, bias)])
    assert W.shape == (1, 4 * H, I) and R.shape == (1, 4 * H, H) and B.shape == (1, 8 * H)
    # ONNX order i, o, f, c = fastlstm blocks 0, 3, 1, 2
    order = np.repeat([0, 3, 1, 2], H).astype(np.float32)
    np.testing.assert_array_equal(W[0, :, 0], order)
    np.testing.assert_array_equal(R[0, :, 0], order + 10)
    np.testing.assert_array_equal(B[0, :4 * H], order + 20)
    np.testing.assert_array_equal(B[0, 4 * H:], np.zeros(4 * H))
    (k2, rk2, b2), = convert.onnx_to_fastlstm(W, R, B)
    np.testing.assert_array_equal(k2, kernel)
    np.testing.assert_array_equal(rk2, rk)
    np.testing.assert_array_equal(b2, bias)


def test_onnx_two_directions_without_bias_and_split_bias():
    rng = np.random.default_rng(2)
    I, H = 4, 3
    fw = (rand(rng, I, 4 * H), rand(rng, H, 4 * H), rand(rng, 4 * H))
    bw = (rand(rng, I, 4 * H), rand(rng, H, 4 * H), None)
    W, R, B = convert.fastlstm_to_onnx([fw, bw])
    assert W.shape == (2, 4 * H, I) and R.shape == (2, 4 * H, H) and B.shape == (2, 8 * H)
    np.testing.assert_array_equal(B[1], np.zeros(8 * H))
    back = convert.onnx_to_fastlstm(W, R, B)
    assert len(back) == 2
    for got, want in zip(back, [fw, bw]):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(back[0][2], fw[2])
    np.testing.assert_array_equal(back[1][2], np.zeros(4 * H))
    assert all(t[2] is None for t in convert.onnx_to_fastlstm(W, R))
    # an ONNX bias split over Wb and Rb sums into ours
    B2 = B.copy()
    B2[0, :4 * H] -= 1.0
    B2[0, 4 * H:] += 1.0
    np.testing.assert_allclose(convert.onnx_to_fastlstm(W, R, B2)[0][2], fw[2], atol=1e-6)


def test_conversion_errors():
    rng = np.random.default_rng(3)
    w_ih, w_hh = rand(rng, 8, 3), rand(rng, 8, 2)
    with pytest.raises(ValueError, match=r"weight_hh: expected shape \(4H, H\) with H >= 1, "
                                         r"got \(8, 3\)"):
        convert.torch_to_fastlstm(w_ih, rand(rng, 8, 3))
    with pytest.raises(ValueError, match=r"weight_ih: expected shape \(4H, I\) = \(8, I\) "
                                         r".*got \(12, 3\)"):
        convert.torch_to_fastlstm(rand(rng, 12, 3), w_hh)
    with pytest.raises(ValueError, match=r"bias_ih: expected shape \(4H,\) = \(8,\), got \(4,\)"):
        convert.torch_to_fastlstm(w_ih, w_hh, rand(rng, 4), rand(rng, 8))
    with pytest.raises(ValueError, match=r"bias_hh: expected shape \(4H,\) = \(8,\), "
                                         r"got \(8, 1\)"):
        convert.torch_to_fastlstm(w_ih, w_hh, rand(rng, 8), rand(rng, 8, 1))
    with pytest.raises(TypeError, match="weight_ih: expected a floating-point array, got "
                                        "dtype int64"):
        convert.torch_to_fastlstm(np.ones((8, 3), np.int64), w_hh)

    with pytest.raises(ValueError, match=r"recurrent_kernel: expected shape \(H, 4H\) with "
                                         r"H >= 1, got \(2, 6\)"):
        convert.fastlstm_to_torch(w_ih.T, rand(rng, 2, 6))
    with pytest.raises(ValueError, match=r"kernel: expected shape \(I, 4H\) = \(I, 8\) .*"
                                         r"got \(3, 6\)"):
        convert.fastlstm_to_torch(rand(rng, 3, 6), w_hh.T)
    with pytest.raises(ValueError, match=r"bias: expected shape \(4H,\) = \(8,\), got \(6,\)"):
        convert.fastlstm_to_torch(w_ih.T, w_hh.T, rand(rng, 6))

    triple = (w_ih.T, w_hh.T, None)
    with pytest.raises(TypeError, match="got one tuple of arrays"):
        convert.fastlstm_to_onnx(triple)
    with pytest.raises(TypeError, match="directions: expected a list"):
        convert.fastlstm_to_onnx(5)
    with pytest.raises(ValueError, match="expected 1 or 2 .* got 3"):
        convert.fastlstm_to_onnx([triple] * 3)
    with pytest.raises(ValueError, match="expected 1 or 2 .* got 0"):
        convert.fastlstm_to_onnx([])
    with pytest.raises(ValueError, match=r"directions\[1\]: expected a \(kernel, "
                                         r"recurrent_kernel, bias\) tuple"):
        convert.fastlstm_to_onnx([triple, (w_ih.T, w_hh.T)])
    with pytest.raises(ValueError, match=r"directions\[1\]: kernel shape \(4, 8\) differs "
                                         r"from directions\[0\]'s \(3, 8\)"):
        convert.fastlstm_to_onnx([triple, (rand(rng, 4, 8), w_hh.T, None)])
    with pytest.raises(ValueError, match=r"directions\[0\]: bias: expected shape"):
        convert.fastlstm_to_onnx([(w_ih.T, w_hh.T, rand(rng, 5))])

    W, R, B = convert.fastlstm_to_onnx([triple])
    with pytest.raises(ValueError, match=r"R: expected shape \[D, 4H, H\] .* got \(8, 2\)"):
        convert.onnx_to_fastlstm(W, R[0], B)
    with pytest.raises(ValueError, match=r"R: expected shape .* got \(3, 8, 2\)"):
        convert.onnx_to_fastlstm(W, np.concatenate([R] * 3), B)
    with pytest.raises(ValueError, match=r"W: expected shape \[D, 4H, I\] = \[1, 8, I\] .* "
                                         r"got \(2, 8, 3\)"):
        convert.onnx_to_fastlstm(np.concatenate([W, W]), R, B)
    with pytest.raises(ValueError, match=r"B: expected shape \[D, 8H\] = \(1, 16\), "
                                         r"got \(1, 8\)"):
        convert.onnx_to_fastlstm(W, R, B[:, :8])


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    lstm = torch.nn.LSTM(3, 4)
    k, rk, b = convert.torch_to_fastlstm(lstm.weight_ih_l0, lstm.weight_hh_l0,
                                         lstm.bias_ih_l0, lstm.bias_hh_l0)
    assert isinstance(k, np.ndarray) and k.shape == (3, 16)
    np.testing.assert_array_equal(rk, lstm.weight_hh_l0.detach().numpy().T)
    np.testing.assert_allclose(b, (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy(),
                               rtol=1e-6)
    W, R, B = convert.fastlstm_to_onnx([(torch.from_numpy(k), torch.from_numpy(rk),
                                         torch.from_numpy(b))])
    assert W.shape == (1, 16, 3)
    # bfloat16 has no NumPy dtype: it is read as float32
    k16, _, _ = convert.torch_to_fastlstm(lstm.weight_ih_l0.to(torch.bfloat16),
                                          lstm.weight_hh_l0.to(torch.bfloat16))
    assert k16.dtype == np.float32


# --------------------------------------------------------------------------- against PyTorch

def _torch_lstm(torch, I, H, num_layers, bidirectional, bias, batch_first, seed):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional,
                         bias=bias, batch_first=batch_first)
    with torch.no_grad():           # larger than PyTorch's U(-1/sqrt(H), 1/sqrt(H)) init,
        for p in lstm.parameters():  # so that the gates are not all near 0.5
            p.mul_(2.0)
    return lstm.eval()


def test_single_layer_against_torch_with_ops_lstm_forward():
    torch = pytest.importorskip("torch")
    T, B, I, H = 9, 4, 3, 6
    lstm = _torch_lstm(torch, I, H, 1, False, True, False, seed=0)
    rng = np.random.default_rng(0)
    x = rand(rng, T, B, I)
    h0, c0 = rand(rng, 1, B, H), rand(rng, 1, B, H)
    with torch.no_grad():
        out, (h_n, c_n) = lstm(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    k, rk, b = convert.torch_to_fastlstm(lstm.weight_ih_l0, lstm.weight_hh_l0,
                                         lstm.bias_ih_l0, lstm.bias_hh_l0)
    y, hn, cn, _ = ops.lstm_forward(x, k, rk, b, h0[0], c0[0], training=False)
    assert rel(y, out.numpy()) <= TOL
    assert rel(hn, h_n[0].numpy()) <= TOL
    assert rel(cn, c_n[0].numpy()) <= TOL


CONFIGS = [
    # num_layers, bidirectional, bias, batch_first
    (1, False, True, True),
    (2, False, True, False),
    (2, False, False, True),
    (1, True, True, True),
    (2, True, True, False),
    (2, True, False, True),
]


def _fastlstm_stack(num_layers, bidirectional, bias, H, I, last_sequences, head=None):
    model = Sequential([L.Input(shape=(None, I))])
    for k in range(num_layers):
        rs = last_sequences or k < num_layers - 1
        lstm = L.LSTM(H, use_bias=bias, return_sequences=rs)
        model.add(L.Bidirectional(lstm) if bidirectional else lstm)
    if head is not None:
        model.add(head)
    return model


@pytest.mark.parametrize("num_layers,bidirectional,bias,batch_first", CONFIGS)
def test_sequential_matches_torch(num_layers, bidirectional, bias, batch_first):
    torch = pytest.importorskip("torch")
    B, T, I, H, n_out = 5, 8, 4, 6, 3
    lstm = _torch_lstm(torch, I, H, num_layers, bidirectional, bias, batch_first, seed=1)
    D = 2 if bidirectional else 1
    fc = torch.nn.Linear(D * H, n_out)
    state = {**{f"lstm.{k}": v for k, v in lstm.state_dict().items()},
             **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
    rng = np.random.default_rng(2)
    x = rand(rng, B, T, I)
    xt = torch.from_numpy(x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2)))
    with torch.no_grad():
        out, (h_n, _) = lstm(xt)
        if not batch_first:
            out = out.transpose(0, 1)
        # the final state of each direction of the last layer
        last = torch.cat([h_n[-2], h_n[-1]], dim=1) if bidirectional else h_n[-1]
        head = fc(last).numpy()
        out = out.numpy()
    if not bidirectional:
        np.testing.assert_allclose(out[:, -1], h_n[-1].numpy())  # the same thing

    seq = _fastlstm_stack(num_layers, bidirectional, bias, H, I, last_sequences=True)
    res = convert.load_torch_state_dict(seq, lstm.state_dict(), lstm_prefix="",
                                        linear_prefix=None)
    assert res == convert.LoadResult([], [])
    assert rel(seq.predict(x, verbose=0), out) <= TOL

    clf = _fastlstm_stack(num_layers, bidirectional, bias, H, I, last_sequences=False,
                          head=L.Dense(n_out))
    convert.load_torch_state_dict(clf, state, lstm_prefix="lstm.", linear_prefix="fc.")
    assert rel(clf.predict(x, verbose=0), head) <= TOL

    # and back to PyTorch: the same numbers, loadable with strict=True
    back = convert.torch_state_dict_from_sequential(clf, tensors=True)
    lstm2 = torch.nn.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional,
                          bias=bias, batch_first=batch_first)
    fc2 = torch.nn.Linear(D * H, n_out)
    lstm2.load_state_dict({k[5:]: v for k, v in back.items() if k.startswith("lstm.")})
    fc2.load_state_dict({k[3:]: v for k, v in back.items() if k.startswith("fc.")})
    with torch.no_grad():
        out2, (h2, _) = lstm2(xt)
        last2 = torch.cat([h2[-2], h2[-1]], dim=1) if bidirectional else h2[-1]
        assert rel(fc2(last2).numpy(), head) <= TOL


def test_bidirectional_last_step_output_is_not_the_final_states():
    """Documents why torch's out[:, -1] is not Bidirectional(return_sequences=False)."""
    torch = pytest.importorskip("torch")
    B, T, I, H = 3, 6, 2, 4
    lstm = _torch_lstm(torch, I, H, 1, True, True, True, seed=3)
    x = rand(np.random.default_rng(3), B, T, I)
    with torch.no_grad():
        out, (h_n, _) = lstm(torch.from_numpy(x))
    model = Sequential([L.Input(shape=(T, I)), L.Bidirectional(L.LSTM(H))])
    convert.load_torch_state_dict(model, lstm.state_dict(), lstm_prefix="", linear_prefix=None)
    y = model.predict(x, verbose=0)
    assert rel(y, torch.cat([h_n[0], h_n[1]], dim=1).numpy()) <= TOL
    np.testing.assert_allclose(y[:, :H], out[:, -1, :H].numpy(), rtol=1e-5, atol=1e-6)
    assert rel(y[:, H:], out[:, -1, H:].numpy()) > 1e-2        # the reverse half differs
    assert rel(y[:, H:], out[:, 0, H:].numpy()) <= TOL          # it is the reverse's step 0


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_sequences_match_masked_models(bidirectional):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    B, T, V, E, H = 5, 7, 20, 3, 4
    torch.manual_seed(4)
    emb = torch.nn.Embedding(V, E, padding_idx=0)
    lstm = _torch_lstm(torch, E, H, 2, bidirectional, True, True, seed=4)
    fc = torch.nn.Linear((2 if bidirectional else 1) * H, 2)
    state = {**{f"embedding.{k}": v for k, v in emb.state_dict().items()},
             **{f"encoder.{k}": v for k, v in lstm.state_dict().items()},
             **{f"head.{k}": v for k, v in fc.state_dict().items()}}
    rng = np.random.default_rng(4)
    lengths = np.array([7, 3, 5, 1, 6])
    ids = rng.integers(1, V, (B, T))
    ids[np.arange(T)[None, :] >= lengths[:, None]] = 0          # right-padded
    with torch.no_grad():
        packed = pack_padded_sequence(emb(torch.from_numpy(ids)), torch.from_numpy(lengths),
                                      batch_first=True, enforce_sorted=False)
        out_p, (h_n, _) = lstm(packed)
        out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=T)
        last = torch.cat([h_n[-2], h_n[-1]], dim=1) if bidirectional else h_n[-1]
        want = torch.softmax(fc(last), dim=-1).numpy()
        out = out.numpy()

    def wrap(layer):
        return L.Bidirectional(layer) if bidirectional else layer
    model = Sequential([L.Embedding(V, E, mask_zero=True),
                        wrap(L.LSTM(H, return_sequences=True)), wrap(L.LSTM(H)),
                        L.Dense(2, activation="softmax")])
    model.build((None, T))
    convert.load_torch_state_dict(model, state, lstm_prefix="encoder.", linear_prefix="head.",
                                  embedding_prefix="embedding.")
    assert rel(model.predict(ids, verbose=0), want) <= TOL

    seq = Sequential([L.Embedding(V, E, mask_zero=True), wrap(L.LSTM(H, return_sequences=True)),
                      wrap(L.LSTM(H, return_sequences=True))])
    seq.build((None, T))
    convert.load_torch_state_dict(seq, state, lstm_prefix="encoder.", linear_prefix=None,
                                  embedding_prefix="embedding.", strict=False)
    y = seq.predict(ids, verbose=0)
    if bidirectional:     # zeros past each length, like the packed output
        assert rel(y, out) <= TOL
    else:                 # a plain LSTM repeats its last valid output there (Keras)
        valid = np.arange(T)[None, :] < lengths[:, None]
        assert rel(y[valid], out[valid]) <= TOL
        np.testing.assert_array_equal(y[~valid], np.repeat(y[np.arange(B), lengths - 1],
                                                           T - lengths, axis=0))


def test_several_lstm_prefixes_and_dense_lists():
    torch = pytest.importorskip("torch")
    B, T, I, H = 3, 5, 2, 4
    l1 = _torch_lstm(torch, I, H, 2, False, True, True, seed=5)
    l2 = _torch_lstm(torch, H, 3, 1, True, True, True, seed=6)
    fc1, fc2 = torch.nn.Linear(6, 5), torch.nn.Linear(5, 2)
    state = {}
    for prefix, mod in (("a.", l1), ("b.", l2), ("fc1.", fc1), ("fc2.", fc2)):
        state.update({prefix + k: v for k, v in mod.state_dict().items()})
    x = rand(np.random.default_rng(5), B, T, I)
    with torch.no_grad():
        y1, _ = l1(torch.from_numpy(x))
        _, (h_n, _) = l2(y1)
        want = fc2(torch.relu(fc1(torch.cat([h_n[0], h_n[1]], dim=1)))).numpy()
    model = Sequential([L.Input(shape=(None, I)), L.LSTM(H, return_sequences=True),
                        L.Dropout(0.5), L.LSTM(H, return_sequences=True),
                        L.Bidirectional(L.LSTM(3)), L.Dense(5, activation="relu"),
                        L.Dense(2)])
    convert.load_torch_state_dict(model, state, lstm_prefix=["a.", "b."],
                                  linear_prefix=["fc1.", "fc2."])
    assert rel(model.predict(x, verbose=0), want) <= TOL

    back = convert.torch_state_dict_from_sequential(model, lstm_prefix=["a0.", "a1.", "b."],
                                                    linear_prefix=["fc1.", "fc2."])
    assert list(back)[:4] == ["a0.weight_ih_l0", "a0.weight_hh_l0", "a0.bias_ih_l0",
                              "a0.bias_hh_l0"]
    assert "b.weight_ih_l0_reverse" in back and "a1.weight_ih_l0" in back
    np.testing.assert_array_equal(back["a1.weight_ih_l0"], l1.weight_ih_l1.detach().numpy())


def test_time_distributed_dense_and_numpy_state_dict():
    rng = np.random.default_rng(6)
    I, H = 3, 2
    state = {"rnn.weight_ih_l0": rand(rng, 4 * H, I), "rnn.weight_hh_l0": rand(rng, 4 * H, H),
             "rnn.bias_ih_l0": rand(rng, 4 * H), "rnn.bias_hh_l0": rand(rng, 4 * H),
             "out.weight": rand(rng, 1, H), "out.bias": rand(rng, 1)}
    model = Sequential([L.Input(shape=(None, I)), L.LSTM(H, return_sequences=True),
                        L.TimeDistributed(L.Dense(1))], dtype="float64")
    convert.load_torch_state_dict(model, state, lstm_prefix="rnn.", linear_prefix="out.")
    lstm, td = model.layers
    assert lstm.kernel.dtype == np.float64
    np.testing.assert_array_equal(lstm.kernel, state["rnn.weight_ih_l0"].T)
    np.testing.assert_allclose(lstm.bias, state["rnn.bias_ih_l0"].astype(np.float64)
                               + state["rnn.bias_hh_l0"])
    np.testing.assert_array_equal(td.layer.kernel, state["out.weight"].T)
    np.testing.assert_array_equal(td.layer.bias, state["out.bias"])


# --------------------------------------------------------------------------- load errors

def _small_model(bias=True):
    return Sequential([L.Input(shape=(None, 3)),
                       L.Bidirectional(L.LSTM(4, use_bias=bias, return_sequences=True)),
                       L.Bidirectional(L.LSTM(4, use_bias=bias)), L.Dense(2)])


def _state_for(model, **kw):
    return dict(convert.torch_state_dict_from_sequential(model, **kw))


def test_load_errors_list_missing_unexpected_and_wrong_shapes():
    model = _small_model()
    state = _state_for(model)
    before = model.get_weights()
    del state["lstm.bias_hh_l1"]
    del state["fc.bias"]
    state["lstm.weight_ih_l2"] = np.zeros((16, 8), np.float32)
    state["dropout.p"] = np.zeros(1, np.float32)
    state["lstm.weight_hh_l0"] = np.zeros((16, 5), np.float32)
    state["lstm.weight_ih_l1_reverse"] = np.zeros((4, 16), np.float32)
    with pytest.raises(ValueError) as info:
        convert.load_torch_state_dict(model, state)
    msg = str(info.value)
    assert msg.startswith(f"load_torch_state_dict: could not load the state dict into model "
                          f"{model.name!r}:")
    assert "missing keys: 'lstm.bias_hh_l1', 'fc.bias'\n" in msg
    assert "unexpected keys: 'lstm.weight_ih_l2', 'dropout.p'\n" in msg
    bidi0, bidi1 = model.layers[0], model.layers[1]
    assert (f"lstm.weight_hh_l0: expected shape (16, 4) (layer {bidi0.forward_layer.name!r} "
            f"recurrent_kernel (4, 16)), got (16, 5)") in msg
    assert (f"lstm.weight_ih_l1_reverse: expected shape (16, 8) (layer "
            f"{bidi1.backward_layer.name!r} kernel (8, 16)), got (4, 16)") in msg
    for a, b in zip(model.get_weights(), before):      # nothing was changed
        np.testing.assert_array_equal(a, b)

    # strict=False skips missing and unexpected keys, but never wrong shapes
    with pytest.raises(ValueError) as info:
        convert.load_torch_state_dict(model, state, strict=False)
    assert "missing keys" not in str(info.value) and "wrong shapes" in str(info.value)
    state["lstm.weight_hh_l0"] = np.ones((16, 4), np.float32)
    state["lstm.weight_ih_l1_reverse"] = np.ones((16, 8), np.float32)
    res = convert.load_torch_state_dict(model, state, strict=False)
    assert res.missing_keys == ["lstm.bias_hh_l1", "fc.bias"]
    assert res.unexpected_keys == ["lstm.weight_ih_l2", "dropout.p"]
    np.testing.assert_array_equal(bidi0.forward_layer.recurrent_kernel, np.ones((4, 16)))
    np.testing.assert_array_equal(bidi1.backward_layer.kernel, np.ones((8, 16)))
    np.testing.assert_array_equal(bidi1.forward_layer.bias, before[8])   # kept (missing)
    np.testing.assert_array_equal(model.layers[2].bias, before[-1])


def test_load_errors_bias_mismatch_and_other_problems():
    with_bias, without = _small_model(True), _small_model(False)
    with pytest.raises(ValueError, match=r"unexpected keys: 'lstm.bias_ih_l0', "
                                         r"'lstm.bias_hh_l0'"):
        convert.load_torch_state_dict(without, _state_for(with_bias))
    with pytest.raises(ValueError, match=r"missing keys: 'lstm.bias_ih_l0', 'lstm.bias_hh_l0'"):
        convert.load_torch_state_dict(with_bias, _state_for(without))

    model = _small_model()
    state = _state_for(model)
    bad = dict(state)
    bad["fc.weight"] = np.zeros((2, 8), np.int64)
    with pytest.raises(ValueError, match="fc.weight: expected a floating-point array, got "
                                         "dtype int64"):
        convert.load_torch_state_dict(model, bad)
    proj = dict(state, **{"lstm.weight_hr_l0": np.zeros((2, 4), np.float32)})
    with pytest.raises(NotImplementedError, match=r"'lstm.weight_hr_l0': PyTorch LSTMs with "
                                                  r"proj_size > 0 have no fastlstm equivalent"):
        convert.load_torch_state_dict(model, proj)
    with pytest.raises(ValueError, match=r"linear_prefix: the model has 1 Dense layer\(s\) "
                                         r"\('dense.*'\) but linear_prefix names 2"):
        convert.load_torch_state_dict(model, state, linear_prefix=["fc.", "fc2."])
    with pytest.raises(ValueError, match=r"embedding_prefix: the model has 0 Embedding "
                                         r"layer\(s\) \(none\) but embedding_prefix names 1"):
        convert.load_torch_state_dict(model, state, embedding_prefix=["emb."])
    # a single prefix for a layer kind the model lacks maps nothing: its keys are unexpected
    with pytest.raises(ValueError, match=r"unexpected keys: 'emb.weight'$"):
        convert.load_torch_state_dict(model, dict(state, **{"emb.weight": np.zeros((3, 2))}),
                                      embedding_prefix="emb.")
    with pytest.raises(TypeError, match="lstm_prefix: expected a string prefix"):
        convert.load_torch_state_dict(model, state, lstm_prefix=None)
    with pytest.raises(TypeError, match="linear_prefix: expected a string or a non-empty list"):
        convert.load_torch_state_dict(model, state, linear_prefix=[])
    with pytest.raises(TypeError, match="state_dict: expected a mapping"):
        convert.load_torch_state_dict(model, list(state.items()))
    with pytest.raises(TypeError, match="state_dict: keys must be strings, got 3"):
        convert.load_torch_state_dict(model, {3: np.zeros(1)})
    with pytest.raises(TypeError, match="expected a fastlstm.models.Sequential, got LSTM"):
        convert.load_torch_state_dict(L.LSTM(3), state)
    unbuilt = Sequential([L.LSTM(3)])
    with pytest.raises(ValueError, match="is not built yet"):
        convert.load_torch_state_dict(unbuilt, state)
    odd = Sequential([L.Input(shape=(2, 3, 4)), L.TimeDistributed(L.LSTM(2))])
    with pytest.raises(ValueError, match=r"layer 'time_distributed.*' \(TimeDistributed\) has "
                                         r"weights that have no PyTorch counterpart"):
        convert.load_torch_state_dict(odd, {})


def test_export_to_torch_errors():
    def model(*layers, I=3):
        return Sequential([L.Input(shape=(None, I))] + list(layers))
    with pytest.raises(ValueError, match=r"layer 'relu_lstm': activation 'relu' .* PyTorch's "
                                         r"LSTM uses tanh and sigmoid only"):
        convert.torch_state_dict_from_sequential(
            model(L.LSTM(2, activation="relu", name="relu_lstm")))
    with pytest.raises(ValueError, match=r"layer 'back': go_backwards=True has no PyTorch "
                                         r"equivalent"):
        convert.torch_state_dict_from_sequential(model(L.LSTM(2, go_backwards=True,
                                                              name="back")))
    with pytest.raises(ValueError, match=r"differs from the first recurrent layer's "
                                         r"\(1, 2, True\)"):
        convert.torch_state_dict_from_sequential(
            model(L.LSTM(2, return_sequences=True), L.LSTM(3, name="l3")))
    # (a summed Bidirectional was refused only when another recurrent layer followed it)
    with pytest.raises(ValueError, match=r"merge_mode='sum' has no PyTorch equivalent"):
        convert.torch_state_dict_from_sequential(
            model(L.Bidirectional(L.LSTM(2, return_sequences=True), merge_mode="sum"),
                  L.Bidirectional(L.LSTM(2))))
    with pytest.raises(ValueError, match="backward layer's units/use_bias differ"):
        convert.torch_state_dict_from_sequential(
            model(L.Bidirectional(L.LSTM(2), backward_layer=L.LSTM(3, go_backwards=True))))
    with pytest.raises(ValueError, match="lstm_prefix: a list must name one prefix per "
                                         "LSTM/Bidirectional layer; the model has 1, got 2"):
        convert.torch_state_dict_from_sequential(model(L.LSTM(2)), lstm_prefix=["a.", "b."])
    # without prefixes the Dense layers are left out
    out = convert.torch_state_dict_from_sequential(model(L.LSTM(2), L.Dense(1)),
                                                   linear_prefix=None)
    assert list(out) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0",
                         "lstm.bias_hh_l0"]


# --------------------------------------------------------------------------- Keras lists

def test_load_keras_weights_checks_and_loads():
    src = Sequential([L.Input(shape=(None, 3)), L.Bidirectional(L.LSTM(4)), L.Dense(2)])
    dst = Sequential([L.Input(shape=(None, 3)), L.Bidirectional(L.LSTM(4)), L.Dense(2)])
    weights = src.get_weights()
    convert.load_keras_weights(dst, weights)
    for a, b in zip(dst.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    convert.load_keras_weights(dst, src)          # anything with get_weights()

    bidi = dst.layers[0]
    before = dst.get_weights()
    with pytest.raises(ValueError) as info:
        convert.load_keras_weights(dst, weights[:-1])
    msg = str(info.value)
    assert msg.startswith(f"load_keras_weights: model {dst.name!r} has 8 weight arrays, got 7. "
                          "Expected, in order: ")
    fw = bidi.forward_layer.name
    assert f"{bidi.name}/{fw}/kernel (3, 16), {bidi.name}/{fw}/recurrent_kernel (4, 16)" in msg
    bad = list(weights)
    bad[3] = bad[3].T                                            # backward kernel (16, 3)
    with pytest.raises(ValueError, match=rf"weights\[3\] \(layer {bidi.name!r} "
                                         rf"{bidi.backward_layer.name}/kernel\): expected shape "
                                         r"\(3, 16\), got \(16, 3\) \(transposed: a "
                                         r"PyTorch-layout weight\?"):
        convert.load_keras_weights(dst, bad)
    bad = list(weights)
    bad[7] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"weights\[7\] .*bias\): expected shape \(2,\), "
                                         r"got \(3,\)$"):
        convert.load_keras_weights(dst, bad)
    bad[7] = np.array(["a", "b"])
    with pytest.raises(TypeError, match=r"weights\[7\] .* expected a numeric array"):
        convert.load_keras_weights(dst, bad)
    with pytest.raises(TypeError, match="expected a list of arrays"):
        convert.load_keras_weights(dst, weights[0])
    for a, b in zip(dst.get_weights(), before):                  # nothing was changed
        np.testing.assert_array_equal(a, b)


# Keras 3.15's Variable.__array__ triggers NumPy 2's copy-keyword DeprecationWarning.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_load_keras_weights_from_keras_itself():
    keras = pytest.importorskip("keras")        # needs KERAS_BACKEND=torch (or tensorflow)
    B, T, I = 4, 6, 3
    km = keras.Sequential([keras.Input((T, I)),
                           keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True)),
                           keras.layers.LSTM(4, use_bias=False),
                           keras.layers.Dense(2, activation="softmax")])
    x = rand(np.random.default_rng(7), B, T, I)
    want = np.asarray(km.predict(x, verbose=0))
    model = Sequential([L.Input(shape=(T, I)),
                        L.Bidirectional(L.LSTM(5, return_sequences=True)),
                        L.LSTM(4, use_bias=False), L.Dense(2, activation="softmax")])
    convert.load_keras_weights(model, [np.asarray(w) for w in km.get_weights()])
    assert rel(model.predict(x, verbose=0), want) <= TOL


def test_onnx_weights_share_the_kernels_dtype():
    # ONNX's LSTM takes W, R and B of one type: a float64 recurrent_kernel is cast to the
    # kernel's float32, as the bias is (the docstring: "in the kernels' dtype").
    rng = np.random.default_rng(3)
    k, rk, b = rand(rng, 3, 8), rand(rng, 2, 8, dtype=np.float64), rand(rng, 8, dtype=np.float64)
    W, R, B = convert.fastlstm_to_onnx([(k, rk, b)])
    assert W.dtype == R.dtype == B.dtype == np.float32
    (k2, rk2, b2), = convert.onnx_to_fastlstm(W, R, B)
    np.testing.assert_array_equal(rk2, rk.astype(np.float32))
    np.testing.assert_array_equal(b2, b.astype(np.float32))


@pytest.mark.parametrize("layer, message", [
    (L.LSTM(2, activation="relu"), "activation='relu' (PyTorch uses tanh)"),
    (L.LSTM(2, recurrent_activation="softsign"),
     "recurrent_activation='softsign' (PyTorch uses sigmoid)"),
    (L.LSTM(2, go_backwards=True), "go_backwards=True"),
    (L.Bidirectional(L.LSTM(2), merge_mode="sum"), "merge_mode='sum' (PyTorch concatenates)"),
])
def test_weights_of_a_computation_unlike_torch_load_with_a_warning(layer, message):
    # The weights map, but no nn.LSTM computes what this layer does: loading used to succeed
    # silently, leaving two models that disagree (exporting such a model is refused)
    model = Sequential([L.Input(shape=(None, 3)), layer])
    twin = Sequential([L.Input(shape=(None, 3)),
                       L.Bidirectional(L.LSTM(2)) if isinstance(layer, L.Bidirectional)
                       else L.LSTM(2)])
    state = _state_for(twin)
    with pytest.warns(UserWarning, match="load_torch_state_dict: .*" + re.escape(message)):
        convert.load_torch_state_dict(model, state, linear_prefix=None)
    np.testing.assert_array_equal(model.get_weights()[0], twin.get_weights()[0])   # loaded
    if isinstance(layer, L.Bidirectional):
        with pytest.raises(ValueError, match="merge_mode='sum' has no PyTorch equivalent"):
            _state_for(model)


def test_weights_of_a_torch_computation_load_without_a_warning():
    model = _small_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert.load_torch_state_dict(model, _state_for(model))
