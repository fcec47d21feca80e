"""fastlstm.onnx.export: the exported graph, run by onnxruntime, gives model.predict's
outputs.

Every model gets random weights (biases included, so a wrong gate order shows), is
exported, checked with onnx.checker (full_check) and run on inputs whose batch sizes and
lengths differ from anything used to build it.  Outputs must match model.predict to
1e-5 relative (||a - b|| / ||b||): both run in float32 and differ only by the order of
their sums and by onnxruntime's own float32 sigmoid/tanh, a few ulps per step (float32's
epsilon is 1.2e-7).
"""

import numpy as np
import pytest

from fastlstm import activations, layers as L
from fastlstm.models import Sequential

TOL = 1e-5


# --------------------------------------------------------------------------- helpers

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import fastlstm.onnx as fo  # noqa: E402


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([(rng.standard_normal(w.shape) * 0.5).astype(np.float32)
                       for w in model.get_weights()])
    return model


def export_and_compare(model, inputs, tmp_path, rel_err, opset=17):
    path = tmp_path / "model.onnx"
    proto = fo.export(model, path, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    loaded = onnx.load(str(path))
    assert [i.name for i in loaded.graph.input] == ["input"]
    assert [o.name for o in loaded.graph.output] == ["output"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in inputs:
        got = sess.run(["output"], {"input": x})[0]
        want = model.predict(x, verbose=0)
        assert got.dtype == np.float32 and got.shape == want.shape
        err = rel_err(got, want)
        assert err <= TOL, (x.shape, err)
    return proto


def floats(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def lstm_nodes(proto):
    return [n for n in proto.graph.node if n.op_type == "LSTM"]


def attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def right_padded(x, lengths, value=0.0):
    x = x.copy()
    for b, n in enumerate(lengths):
        x[b, n:] = value
    return x


def left_padded(x, lengths, value=0.0):
    x = x.copy()
    T = x.shape[1]
    for b, n in enumerate(lengths):
        x[b, :T - n] = value
    return x


# --------------------------------------------------------------------------- unmasked models

I = 3
UNMASKED = {
    "lstm": lambda: [L.LSTM(6)],
    "lstm_sequences_no_bias": lambda: [L.LSTM(5, return_sequences=True, use_bias=False)],
    "stacked": lambda: [L.LSTM(6, return_sequences=True), L.LSTM(5, return_sequences=True),
                        L.LSTM(4)],
    "go_backwards": lambda: [L.LSTM(5, go_backwards=True)],
    "go_backwards_sequences": lambda: [L.LSTM(5, go_backwards=True, return_sequences=True),
                                       L.LSTM(4, return_sequences=True)],
    "bidi_concat_sequences": lambda: [L.Bidirectional(L.LSTM(4, return_sequences=True)),
                                      L.Bidirectional(L.LSTM(3), merge_mode="sum")],
    "bidi_ave_mul": lambda: [L.Bidirectional(L.LSTM(4, return_sequences=True),
                                             merge_mode="ave"),
                             L.Bidirectional(L.LSTM(3, return_sequences=True),
                                             merge_mode="mul")],
    "bidi_custom_backward": lambda: [L.Bidirectional(
        L.LSTM(4, return_sequences=True),
        backward_layer=L.LSTM(2, return_sequences=True, go_backwards=True, use_bias=False))],
    "time_distributed_dense": lambda: [L.LSTM(6, return_sequences=True), L.Dropout(0.3),
                                       L.TimeDistributed(L.Dense(3, activation="softmax")),
                                       L.TimeDistributed(L.Dropout(0.2)),
                                       L.TimeDistributed(L.Activation("tanh"))],
    "dense_on_sequences": lambda: [L.Dense(4, activation="relu"), L.LSTM(5), L.Dropout(0.5),
                                   L.Dense(3, use_bias=False), L.Activation("sigmoid")],
    "global_pooling": lambda: [L.LSTM(5, return_sequences=True),
                               L.GlobalAveragePooling1D(keepdims=True),
                               L.LSTM(4, return_sequences=True), L.GlobalMaxPooling1D(),
                               L.Dense(2)],
}


@pytest.mark.parametrize("name", sorted(UNMASKED))
def test_unmasked_models(name, tmp_path, rel_err):
    model = randomize(Sequential([L.Input(shape=(None, I))] + UNMASKED[name]()))
    xs = floats(1, (7, 6, I), (2, 11, I), (1, 1, I))
    proto = export_and_compare(model, xs, tmp_path, rel_err)
    inp = proto.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.shape.dim] == ["batch", "time", I]


def test_bidirectional_is_one_node_when_standard(tmp_path, rel_err):
    model = randomize(Sequential([L.Input(shape=(None, I)),
                                  L.Bidirectional(L.LSTM(4, return_sequences=True)),
                                  L.LSTM(3, go_backwards=True)]))
    proto = fo.export(model)
    nodes = lstm_nodes(proto)
    assert [attr(n, "direction") for n in nodes] == [b"bidirectional", b"reverse"]
    assert [attr(n, "hidden_size") for n in nodes] == [4, 3]
    custom = randomize(Sequential([L.Input(shape=(None, I)), *UNMASKED["bidi_custom_backward"]()]))
    assert [attr(n, "direction") for n in lstm_nodes(fo.export(custom))] == \
        [b"forward", b"reverse"]


@pytest.mark.parametrize("opset", [13, 17, 20])
def test_opsets(opset, tmp_path, rel_err):
    model = randomize(Sequential([L.Input(shape=(None, I)), L.Masking(),
                                  L.Bidirectional(L.LSTM(4, return_sequences=True)),
                                  L.LSTM(3, return_sequences=True),
                                  L.TimeDistributed(L.Dense(2, activation="softmax"))]))
    x, = floats(2, (5, 8, I))
    proto = export_and_compare(model, [right_padded(x, [8, 3, 5, 1, 0])], tmp_path, rel_err,
                               opset=opset)
    assert proto.opset_import[0].version == opset


@pytest.mark.parametrize("act", ["linear", "sigmoid", "tanh", "relu", "softmax", "elu", "selu",
                                 "softplus", "softsign", "exponential", "silu"])
def test_dense_activations(act, tmp_path, rel_err):
    model = randomize(Sequential([L.Input(shape=(None, I)), L.LSTM(5, return_sequences=True),
                                  L.Dense(4, activation=act), L.Activation(act)]), seed=3)
    export_and_compare(model, floats(3, (6, 5, I)), tmp_path, rel_err)


def test_flatten_fixes_the_time_axis(tmp_path, rel_err):
    T = 6
    model = randomize(Sequential([L.Input(shape=(T, I)), L.LSTM(4, return_sequences=True),
                                  L.Flatten(), L.Dense(2, activation="softmax")]))
    proto = export_and_compare(model, floats(4, (9, T, I), (1, T, I)), tmp_path, rel_err)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", T, I]
    out = proto.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == ["batch", 2]


def test_time_distributed_flatten_on_rank4_inputs(tmp_path, rel_err):
    model = randomize(Sequential([L.Input(shape=(None, 2, 3)), L.TimeDistributed(L.Flatten()),
                                  L.LSTM(4, return_sequences=True)]))
    proto = export_and_compare(model, floats(5, (3, 7, 2, 3), (4, 2, 2, 3)), tmp_path, rel_err)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "time", 2, 3]


# --------------------------------------------------------------------------- masked models

LENGTHS = [9, 4, 1, 0, 7, 9]

MASKED = {
    "lstm": lambda: [L.LSTM(5)],
    "lstm_sequences_repeat_last": lambda: [L.LSTM(5, return_sequences=True)],
    "stacked_sequences": lambda: [L.LSTM(5, return_sequences=True),
                                  L.TimeDistributed(L.Dense(4, activation="tanh")),
                                  L.LSTM(3, return_sequences=True)],
    "go_backwards_sequences": lambda: [L.LSTM(5, return_sequences=True, go_backwards=True)],
    "go_backwards_final": lambda: [L.LSTM(5, go_backwards=True)],
    "zero_output_for_mask": lambda: [L.LSTM(5, return_sequences=True,
                                            zero_output_for_mask=True)],
    # (the last processed step's output: zeros for rows masked there, as Keras)
    "zero_output_for_mask_final": lambda: [L.LSTM(5, zero_output_for_mask=True)],
    "zero_output_for_mask_backwards_final": lambda: [L.LSTM(5, zero_output_for_mask=True,
                                                            go_backwards=True)],
    "bidi_sequences": lambda: [L.Bidirectional(L.LSTM(4, return_sequences=True)),
                               L.Bidirectional(L.LSTM(3), merge_mode="ave")],
    "bidi_fallback_sequences": lambda: [L.Bidirectional(        # forward layer runs backwards
        L.LSTM(4, return_sequences=True, go_backwards=True),
        backward_layer=L.LSTM(4, return_sequences=True), merge_mode="mul")],
    "bidi_sum_final": lambda: [L.Bidirectional(L.LSTM(4), merge_mode="sum"),
                               L.Dense(2, activation="softmax")],
    # (GlobalMaxPooling1D ignores the mask, as Keras's: every step, padded ones included)
    "global_max_pooling": lambda: [L.LSTM(5, return_sequences=True),
                                   L.GlobalMaxPooling1D(keepdims=True)],
}


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("name", sorted(MASKED))
def test_masking_models(name, padding, tmp_path, rel_err):
    model = randomize(Sequential([L.Input(shape=(None, I)), L.Masking()] + MASKED[name]()),
                      seed=5)
    pad = right_padded if padding == "post" else left_padded
    x, x2 = floats(6, (6, 9, I), (3, 4, I))
    xs = [pad(x, LENGTHS), pad(x2, [4, 0, 2]), x2]
    export_and_compare(model, xs, tmp_path, rel_err)


def test_masking_with_another_mask_value(tmp_path, rel_err):
    model = randomize(Sequential([L.Input(shape=(None, I)), L.Masking(mask_value=-1.5),
                                  L.LSTM(4, return_sequences=True), L.LSTM(3)]))
    x, = floats(7, (6, 9, I))
    x = right_padded(x, LENGTHS, value=-1.5)
    x[0, 2, 0] = -1.5                       # one feature equal to the value does not mask
    export_and_compare(model, [x], tmp_path, rel_err)


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_embedding_mask_zero_classifier(padding, bidirectional, tmp_path, rel_err):
    V, T = 30, 10
    lstm = L.LSTM(6)
    model = Sequential([L.Embedding(V, 5, mask_zero=True),
                        L.Bidirectional(lstm) if bidirectional else lstm,
                        L.Dropout(0.2), L.Dense(4, activation="softmax")])
    model.build((None, T))
    randomize(model, seed=8)
    rng = np.random.default_rng(8)
    ids = rng.integers(1, V, (7, T))
    for b, n in enumerate([10, 3, 1, 0, 6, 9, 2]):
        if padding == "post":
            ids[b, n:] = 0
        else:
            ids[b, :T - n] = 0
    proto = export_and_compare(model, [ids, rng.integers(1, V, (2, 13))], tmp_path, rel_err)
    inp = proto.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param or d.dim_value for d in inp.shape.dim] == ["batch", "time"]


def test_embedding_without_mask_sequences(tmp_path, rel_err):
    model = randomize(Sequential([L.Input(shape=(None,), dtype="float32"),
                                  L.Embedding(12, 4), L.LSTM(3, return_sequences=True)]))
    ids = np.random.default_rng(9).integers(0, 12, (5, 6))
    export_and_compare(model, [ids], tmp_path, rel_err)


# --------------------------------------------------------------------------- RepeatVector / pooling

@pytest.mark.parametrize("opset", [13, 17, 18])      # ReduceMean/Max take axes as inputs from 18
def test_lstm_autoencoder_with_repeat_vector(opset, tmp_path, rel_err):
    T = 6
    model = randomize(Sequential([L.Input(shape=(None, I)), L.LSTM(5), L.RepeatVector(T),
                                  L.LSTM(4, return_sequences=True),
                                  L.TimeDistributed(L.Dense(I))]), seed=10)
    proto = export_and_compare(model, floats(10, (5, 9, I), (1, 2, I)), tmp_path, rel_err,
                               opset=opset)
    out = proto.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == ["batch", T, I]   # the fixed n
    assert "Expand" in {n.op_type for n in proto.graph.node}


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("padding", ["post", "pre"])
def test_masked_global_average_pooling(padding, opset, tmp_path, rel_err):
    V, T = 20, 8
    model = Sequential([L.Embedding(V, 5, mask_zero=True), L.LSTM(6, return_sequences=True),
                        L.GlobalAveragePooling1D(), L.Dense(3, activation="softmax")])
    model.build((None, T))
    randomize(model, seed=11)
    rng = np.random.default_rng(11)
    ids = rng.integers(1, V, (6, T))
    for b, n in enumerate([8, 3, 1, 6, 2, 7]):
        if padding == "post":
            ids[b, n:] = 0
        else:
            ids[b, :T - n] = 0
    export_and_compare(model, [ids, rng.integers(1, V, (2, 11))], tmp_path, rel_err, opset=opset)
    # a row with no unmasked step: NaN in both (0 / 0, as Keras); the other rows match
    masked = Sequential([L.Input(shape=(None, I)), L.Masking(), L.LSTM(4, return_sequences=True),
                         L.GlobalAveragePooling1D(keepdims=True)])
    randomize(masked, seed=12)
    x = (right_padded if padding == "post" else left_padded)(floats(12, (4, 5, I))[0], [5, 0, 2, 3])
    path = tmp_path / "masked.onnx"
    fo.export(masked, path, opset=opset)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["output"], {"input": x})[0]
    want = masked.predict(x, verbose=0)
    assert np.isnan(got[1]).all() and np.isnan(want[1]).all()
    keep = [0, 2, 3]
    assert rel_err(got[keep], want[keep]) <= TOL


# --------------------------------------------------------------------------- errors

class _Scale(L.Layer):
    def forward(self, x, training=False, mask=None):
        return x * 2


class _Cube(activations.Activation):
    name = "cube"

    def _forward(self, x):
        return x ** 3


def _model(*layers):
    return Sequential([L.Input(shape=(None, I))] + list(layers))


def test_unsupported_layers_and_settings():
    with pytest.raises(NotImplementedError, match=r"layer 'scale' \(_Scale\): this layer class "
                                                  r"has no ONNX export"):
        fo.export(_model(L.LSTM(2, return_sequences=True), _Scale(name="scale")))
    with pytest.raises(NotImplementedError, match=r"layer 'relu_lstm' \(LSTM\): LSTM "
                                                  r"'relu_lstm' uses activation 'relu' and "
                                                  r"recurrent_activation 'sigmoid'; only the "
                                                  r"defaults"):
        fo.export(_model(L.LSTM(2, activation="relu", name="relu_lstm")))
    with pytest.raises(NotImplementedError, match=r"layer 'bi' \(Bidirectional\): LSTM 'forward_in' "
                                                  r"uses activation 'tanh' and "
                                                  r"recurrent_activation 'softsign'"):
        fo.export(_model(L.Bidirectional(L.LSTM(2, recurrent_activation="softsign",
                                                name="in"), name="bi")))
    with pytest.raises(NotImplementedError, match=r"layer 'd' \(Dense\): activation 'cube' has "
                                                  r"no ONNX export"):
        fo.export(_model(L.LSTM(2), L.Dense(2, activation=_Cube(), name="d")))
    with pytest.raises(NotImplementedError, match=r"layer 'td' \(TimeDistributed\): "
                                                  r"TimeDistributed\(LSTM\) has no ONNX export"):
        fo.export(Sequential([L.Input(shape=(None, 2, I)),
                              L.TimeDistributed(L.LSTM(2), name="td")]))
    with pytest.raises(NotImplementedError, match=r"layer 'tdp' \(TimeDistributed\): "
                                                  r"TimeDistributed\(GlobalMaxPooling1D\) has no"):
        fo.export(Sequential([L.Input(shape=(None, 2, I)),
                              L.TimeDistributed(L.GlobalMaxPooling1D(), name="tdp")]))
    with pytest.raises(NotImplementedError, match=r"layer 'emb' \(Embedding\): an Embedding "
                                                  r"is exported only as the model's first"):
        fo.export(Sequential([L.Input(shape=(5,)), L.Dense(4), L.Embedding(3, 2, name="emb")]))
    stateful = Sequential([L.Input(batch_shape=(2, None, I)),
                           L.LSTM(2, stateful=True, name="st")])
    with pytest.raises(NotImplementedError, match=r"layer 'st' \(LSTM\): LSTM 'st' is stateful"):
        fo.export(stateful)


def test_export_argument_errors():
    with pytest.raises(ValueError, match=r"runs in float64; only float32 models are exported"):
        fo.export(Sequential([L.Input(shape=(None, I)), L.LSTM(2)], dtype="float64"))
    with pytest.raises(ValueError, match="is not built yet"):
        fo.export(Sequential([L.LSTM(2)]))
    with pytest.raises(TypeError, match="expected a fastlstm.models.Sequential, got LSTM"):
        fo.export(L.LSTM(2))
    model = _model(L.LSTM(2))
    for bad in (12, 10 ** 4, "17", 17.0, True):
        with pytest.raises(ValueError, match=r"opset: expected an integer from 13 to \d+"):
            fo.export(model, opset=bad)


def test_export_returns_the_proto_and_writes_the_file(tmp_path):
    model = randomize(_model(L.LSTM(2)))
    proto = fo.export(model)
    assert proto.producer_name == "fastlstm"
    assert not list(tmp_path.iterdir())
    path = tmp_path / "m.onnx"
    again = fo.export(model, str(path))
    assert onnx.load(str(path)).SerializeToString() == again.SerializeToString()
    assert proto.SerializeToString() == again.SerializeToString()


@pytest.mark.parametrize("opset", [13, 18])      # ReduceMean/ReduceMax: axes an input from 18
@pytest.mark.parametrize("keepdims", [False, True])
def test_unmasked_global_pooling_at_every_reduce_form(opset, keepdims, tmp_path, rel_err):
    for pooling in (L.GlobalAveragePooling1D, L.GlobalMaxPooling1D):
        model = randomize(Sequential([L.Input(shape=(None, I)), L.LSTM(4, return_sequences=True),
                                     pooling(keepdims=keepdims)]), seed=13)
        export_and_compare(model, floats(13, (3, 5, I), (1, 2, I)), tmp_path, rel_err,
                           opset=opset)
