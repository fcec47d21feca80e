"""Export a fastlstm ``Sequential`` model to ONNX (needs the ``onnx`` package).

    import fastlstm.onnx
    fastlstm.onnx.export(model, "model.onnx")            # returns the onnx.ModelProto too

    import onnxruntime as ort
    sess = ort.InferenceSession("model.onnx")
    y = sess.run(["output"], {"input": x.astype("float32")})[0]    # == model.predict(x)

The graph has one input, ``"input"``: float32 (batch, time, features), or int64 token
ids (batch, time) when the first layer is an Embedding (feed int64: onnxruntime does
not cast), and one output, ``"output"``.
The batch axis is dynamic, and so is the time axis unless the model has a Flatten
layer (then it is the built length).  Only float32 models are exported (a float64
model raises ValueError: onnxruntime's LSTM is float-only; rebuild the model in
float32 and copy the weights with set_weights).

Layers:

* ``Input``; ``Dropout`` (the identity at inference); ``Flatten``; ``Activation``;
* ``RepeatVector`` (Unsqueeze + Expand: its time axis is the fixed ``n``);
* ``GlobalAveragePooling1D`` (ReduceMean; with a mask, the sum of the unmasked steps
  (Where + ReduceSum) over their count, NaN for a row with none, as the layer) and
  ``GlobalMaxPooling1D`` (ReduceMax over every step: it ignores masks, as Keras's), with
  ``keepdims`` either way;
* ``Dense`` (MatMul + Add + activation), also inside ``TimeDistributed`` (as are
  Activation, Dropout and Flatten);
* ``Embedding`` (Gather; ``mask_zero=True`` makes the mask ``ids != 0`` in the graph);
* ``Masking`` (zeroes the masked steps; the mask is ``any(x != mask_value)`` per step);
* ``LSTM`` with the default activations (tanh, sigmoid), any ``return_sequences``,
  ``go_backwards``, ``use_bias``, stacked; dropout/recurrent_dropout are inference
  no-ops; ``stateful=True`` is refused (the graph has no state to carry over);
* ``Bidirectional(LSTM(...))`` with merge_mode concat, sum, ave or mul: one ONNX LSTM
  node with direction="bidirectional" for the standard wrapper, two single-direction
  nodes otherwise (go_backwards on the wrapped layer, a custom backward_layer).

Activations (Dense and Activation): linear, sigmoid, tanh, relu, softmax (last axis),
elu, selu, softplus, softsign, exponential, silu.  Anything else raises
NotImplementedError naming the layer and its class.

Each LSTM is the standard ONNX ``LSTM`` operator, time-major (layout=0, Transposes
around it), with the weights from ``fastlstm.convert.fastlstm_to_onnx``.  Keras's
semantics, which fastlstm follows, are reproduced in the graph:

* ``go_backwards``: the reverse direction's outputs, read in reversed time order;
* ``return_sequences=False``: the final state ``Y_h``;
* masks: the LSTM gets ``sequence_lens`` = the number of unmasked steps.  fastlstm
  accepts masks whose unmasked steps form one contiguous run (right- or left-padded
  sequences); the graph moves each run to the start of the time axis before the LSTM
  and back after it (GatherElements), so both paddings give model.predict's outputs.
  With ``return_sequences=True`` the steps after the run repeat the last valid output
  (Keras), computed in the graph as fastlstm does; inside Bidirectional they are 0.
  Inputs whose masks fastlstm would reject (gaps in a row) give unspecified outputs
  instead of an error.
* Embedding: onnxruntime's Gather refuses ids >= input_dim as fastlstm does, but takes
  negative ids (counting from the end) where fastlstm raises.
"""

import numbers
import os

import numpy as np

from . import _device, activations, convert, layers as L


def _host(weights):
    """A layer's weight array as NumPy (copied from the GPU for a model built there)."""
    return None if weights is None else _device.to_host(weights)

__all__ = ["export"]

_MIN_OPSET = 13           # Squeeze/Unsqueeze/ReduceSum take axes as inputs from 13 on
_SELU = (activations.SELU_ALPHA, activations.SELU_SCALE)


def _require_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError('fastlstm.onnx needs the onnx package: pip install "fastlstm[onnx]" '
                          '(or pip install onnx)') from e
    return onnx


class _Graph:
    """Collects nodes and initializers, with unique names."""

    def __init__(self, onnx, opset):
        self.onnx = onnx
        self.helper = onnx.helper
        self.opset = opset
        self.nodes = []
        self.initializers = []
        self._used = set()
        self._consts = {}

    def name(self, base):
        base = base.replace(":", "_")
        name, n = base, 0
        while name in self._used:
            n += 1
            name = f"{base}_{n}"
        self._used.add(name)
        return name

    def init(self, array, base):
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, value, dtype):
        """A shared small constant initializer."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(arr, f"const_{arr.dtype.name}")
        return self._consts[key]

    def op(self, op_type, inputs, base=None, n_out=1, **attrs):
        outs = [self.name(f"{base or op_type}") for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs,
                                                name=self.name(f"node_{base or op_type}"),
                                                **attrs))
        return outs[0] if n_out == 1 else outs

    # small helpers -----------------------------------------------------------------

    def i64(self, values):
        return self.const(values, np.int64)

    def f32(self, value):
        return self.const(value, np.float32)

    def cast(self, x, to):
        return self.op("Cast", [x], to=to)

    def unsqueeze(self, x, axes):
        return self.op("Unsqueeze", [x, self.i64(axes)])

    def squeeze(self, x, axes):
        return self.op("Squeeze", [x, self.i64(axes)])

    def transpose(self, x, perm):
        return self.op("Transpose", [x], perm=list(perm))

    def reverse_time(self, x):
        return self.op("Slice", [x, self.i64([-1]), self.i64([np.iinfo(np.int64).min]),
                                 self.i64([1]), self.i64([-1])], base="reverse_time")

    def reduce(self, op_type, x, axes, keepdims=0):
        """ReduceSum/ReduceMean/ReduceMax over ``axes``: ReduceSum takes the axes as an input
        from opset 13 on, the others from opset 18 on (an attribute before)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.i64(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def take(self, x, index, axis):
        """x[..., index, ...] along axis (the axis removed)."""
        return self.op("Gather", [x, self.i64(index)], axis=axis)


class _MaskInfo:
    """What an LSTM needs from a (batch, time) mask, computed once per mask."""

    def __init__(self, g, mask):
        onnx = g.onnx
        F32 = onnx.TensorProto.FLOAT
        self.mask_f = g.cast(mask, F32)                                        # (B, T)
        lens_f = g.op("ReduceSum", [self.mask_f, g.i64([1])], keepdims=0)     # (B,)
        self.lens = g.cast(lens_f, onnx.TensorProto.INT32)
        # first unmasked step (0 for an all-masked row, whose length is 0 anyway)
        start = g.op("ArgMax", [self.mask_f], axis=1, keepdims=1)             # (B, 1) int64
        T = g.op("Gather", [g.op("Shape", [mask]), g.i64([1])])               # (1,)
        T_scalar = g.squeeze(T, [0])
        steps = g.unsqueeze(g.op("Range", [g.i64(0), T_scalar, g.i64(1)]), [0])   # (1, T)
        # x_shifted[b, t] = x[b, (t + start) % T]: the run starts at step 0
        self.shift = g.op("Mod", [g.op("Add", [steps, start]), T], base="shift_index")
        # y[b, s] = y_shifted[b, (s - start) % T]: back to the original positions
        self.unshift = g.op("Mod", [g.op("Add", [g.op("Sub", [steps, start]), T]), T],
                            base="unshift_index")
        self._after = {}

    def gather_time(self, g, x, index):
        """x (B, T, C) permuted along time by index (B, T)."""
        full = g.op("Expand", [g.unsqueeze(index, [2]), g.op("Shape", [x])])
        return g.op("GatherElements", [x, full], axis=1)

    def after(self, g, reversed_time):
        """Steps after the last unmasked one, as fastlstm computes them (bool (B, T))."""
        if reversed_time not in self._after:
            m = g.reverse_time(self.mask_f) if reversed_time else self.mask_f
            count = g.op("CumSum", [m, g.i64(1)])
            total = g.op("ReduceSum", [m, g.i64([1])], keepdims=1)
            masked = g.op("Equal", [m, g.f32(0.0)])
            at_end = g.op("Equal", [count, total])
            some = g.op("Greater", [total, g.f32(0.0)])
            self._after[reversed_time] = g.op("And", [g.op("And", [masked, at_end]), some],
                                              base="after_run")
        return self._after[reversed_time]


class _Exporter:
    def __init__(self, model, opset):
        self.onnx = _require_onnx()
        self.model = model
        self.g = _Graph(self.onnx, opset)
        self.masks = {}

    # -- errors -------------------------------------------------------------------------

    @staticmethod
    def _unsupported(layer, what):
        raise NotImplementedError(f"fastlstm.onnx.export: layer {layer.name!r} "
                                  f"({type(layer).__name__}): {what}")

    # -- activations --------------------------------------------------------------------

    def activation(self, x, act, layer):
        g = self.g
        name = act.name
        if name == "linear":
            return x
        simple = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu",
                  "softplus": "Softplus", "softsign": "Softsign", "exponential": "Exp"}
        if name in simple:
            return g.op(simple[name], [x])
        if name == "softmax":
            return g.op("Softmax", [x], axis=-1)
        if name == "elu":
            return g.op("Elu", [x], alpha=1.0)
        if name == "selu":
            return g.op("Selu", [x], alpha=_SELU[0], gamma=_SELU[1])
        if name == "silu":
            return g.op("Mul", [x, g.op("Sigmoid", [x])], base="silu")
        self._unsupported(layer, f"activation {name!r} has no ONNX export")

    # -- masks --------------------------------------------------------------------------

    def mask_info(self, mask):
        if mask not in self.masks:
            self.masks[mask] = _MaskInfo(self.g, mask)
        return self.masks[mask]

    # -- LSTM ---------------------------------------------------------------------------

    def _check_lstm(self, outer, lstm):
        if not lstm.uses_fused_kernels:
            self._unsupported(outer, f"LSTM {lstm.name!r} uses activation "
                              f"{lstm.activation.name!r} and recurrent_activation "
                              f"{lstm.recurrent_activation.name!r}; only the defaults "
                              "(tanh, sigmoid) are exported")
        if lstm.stateful:
            self._unsupported(outer, f"LSTM {lstm.name!r} is stateful; an ONNX graph has no "
                              "state to carry between calls (rebuild the model with "
                              "stateful=False and copy the weights with set_weights)")

    def _lstm_node(self, x_tm, sublayers, directions, lens, want_y):
        """One ONNX LSTM over time-major x_tm; returns (Y or None, Y_h)."""
        g = self.g
        W, R, B = convert.fastlstm_to_onnx(
            [(_host(s.kernel), _host(s.recurrent_kernel), _host(s.bias)) for s in sublayers])
        base = sublayers[0].name
        inputs = [x_tm, g.init(W.astype(np.float32), f"{base}/W"),
                  g.init(R.astype(np.float32), f"{base}/R")]
        if any(s.use_bias for s in sublayers) or lens is not None:
            inputs.append(g.init(B.astype(np.float32), f"{base}/B"))
        if lens is not None:
            inputs.append(lens)
        Y_name = g.name(f"{base}/Y") if want_y else ""
        Yh_name = g.name(f"{base}/Y_h")
        g.nodes.append(g.helper.make_node(
            "LSTM", inputs, [Y_name, Yh_name], name=g.name(f"node_{base}"),
            hidden_size=sublayers[0].units, direction=directions))
        return (Y_name or None), Yh_name

    def _prepare_x(self, x, mask):
        """x shifted so each unmasked run starts at step 0, time-major, and the mask's
        _MaskInfo (None without a mask)."""
        info = None
        if mask is not None:
            info = self.mask_info(mask)
            x = info.gather_time(self.g, x, info.shift)
        return self.g.transpose(x, (1, 0, 2)), info

    def single_lstm(self, lstm, x, mask):
        """An LSTM layer's output (batch-major), as LSTM.forward computes it."""
        g = self.g
        x_tm, info = self._prepare_x(x, mask)
        direction = "reverse" if lstm.go_backwards else "forward"
        Y, Y_h = self._lstm_node(x_tm, [lstm], direction, None if info is None else info.lens,
                                 want_y=lstm.return_sequences)
        if not lstm.return_sequences:
            h = g.squeeze(Y_h, [0])
            if info is not None and lstm.zero_output_for_mask:
                # the output of the last step processed (the first with go_backwards): zeros
                # where the mask has that step masked (LSTM.forward, as Keras)
                last = g.op("Gather", [info.mask_f, g.i64(0 if lstm.go_backwards else -1)], axis=1)
                masked = g.unsqueeze(g.op("Equal", [last, g.f32(0.0)]), [1])         # (B, 1)
                h = g.op("Where", [masked, g.f32(0.0), h])
            return h
        y = g.transpose(g.squeeze(Y, [1]), (1, 0, 2))                           # (B, T, H)
        if info is not None:
            y = info.gather_time(g, y, info.unshift)
        if lstm.go_backwards:
            y = g.reverse_time(y)
        if info is not None and not lstm.zero_output_for_mask:
            after = g.unsqueeze(info.after(g, lstm.go_backwards), [2])
            y = g.op("Where", [after, g.unsqueeze(g.squeeze(Y_h, [0]), [1]), y])
        return y

    def merge(self, yf, yb, mode):
        g = self.g
        if mode == "concat":
            return g.op("Concat", [yf, yb], axis=-1)
        if mode == "sum":
            return g.op("Add", [yf, yb])
        if mode == "ave":
            return g.op("Mul", [g.op("Add", [yf, yb]), g.f32(0.5)])
        return g.op("Mul", [yf, yb])

    def bidirectional(self, layer, x, mask):
        g = self.g
        fw, bw = layer.forward_layer, layer.backward_layer
        self._check_lstm(layer, fw)
        self._check_lstm(layer, bw)
        rs = layer.return_sequences
        if not fw.go_backwards and bw.go_backwards and fw.units == bw.units:
            # the standard wrapper: one bidirectional node; its reverse half is already in
            # the original time order, as Bidirectional re-reverses the backward output
            x_tm, info = self._prepare_x(x, mask)
            Y, Y_h = self._lstm_node(x_tm, [fw, bw], "bidirectional",
                                     None if info is None else info.lens, want_y=rs)
            if not rs:
                return self.merge(g.take(Y_h, 0, 0), g.take(Y_h, 1, 0), layer.merge_mode)
            yf = g.transpose(g.take(Y, 0, 1), (1, 0, 2))
            yb = g.transpose(g.take(Y, 1, 1), (1, 0, 2))
            y = self.merge(yf, yb, layer.merge_mode)
            if info is not None:        # zeros at masked steps (Bidirectional forces it)
                y = info.gather_time(g, y, info.unshift)
            return y
        yf = self.single_lstm(fw, x, mask)
        yb = self.single_lstm(bw, x, mask)
        if rs:
            yb = g.reverse_time(yb)
        return self.merge(yf, yb, layer.merge_mode)

    # -- layers -------------------------------------------------------------------------

    def global_pooling(self, layer, x, mask):
        """GlobalAveragePooling1D (the mean of the unmasked steps when a mask arrives, as the
        layer computes it) or GlobalMaxPooling1D (every step: it ignores masks, as Keras's)."""
        g = self.g
        if isinstance(layer, L.GlobalMaxPooling1D):
            y = g.reduce("ReduceMax", x, [1])
        elif mask is None:
            y = g.reduce("ReduceMean", x, [1])
        else:
            keep = g.unsqueeze(mask, [2])                                       # (B, T, 1)
            total = g.reduce("ReduceSum", g.op("Where", [keep, x, g.f32(0.0)]), [1])
            count = g.reduce("ReduceSum", g.cast(mask, g.onnx.TensorProto.FLOAT), [1],
                             keepdims=1)                                        # (B, 1)
            y = g.op("Div", [total, count], base="masked_mean")  # 0 / 0 = NaN, as the layer
        return g.unsqueeze(y, [1]) if layer.keepdims else y

    def elementwise_layer(self, layer, x, outer=None):
        """Dense/Activation/Dropout/Flatten (also inside TimeDistributed); None if not one."""
        g = self.g
        outer = outer or layer
        if isinstance(layer, L.Dropout):
            return x
        if isinstance(layer, L.Activation):
            return self.activation(x, layer.activation, outer)
        if isinstance(layer, L.Dense):
            y = g.op("MatMul", [x, g.init(_host(layer.kernel).astype(np.float32),
                                          f"{layer.name}/kernel")])
            if layer.use_bias:
                y = g.op("Add", [y, g.init(_host(layer.bias).astype(np.float32),
                                           f"{layer.name}/bias")])
            return self.activation(y, layer.activation, outer)
        if isinstance(layer, L.Flatten):
            return g.op("Reshape", [x, g.i64([0, -1])], base="flatten")
        return None

    def run(self):
        onnx = self.onnx
        g = self.g
        model = self.model
        if not model.built:
            raise ValueError(f"fastlstm.onnx.export: model {model.name!r} is not built yet; "
                             "give the first layer an input_shape (or start with "
                             "Input(shape=...)), or call model.build(...)")
        if model.dtype != np.float32:
            raise ValueError(f"fastlstm.onnx.export: model {model.name!r} runs in "
                             f"{model.dtype}; only float32 models are exported (onnxruntime's "
                             "LSTM is float-only). Build a float32 copy and "
                             "set_weights(model.get_weights()) into it")
        layers = [layer for layer in model.layers if not isinstance(layer, L.InputLayer)]
        in_shape = tuple(model.input_shape)
        ids = bool(layers) and isinstance(layers[0], L.Embedding)
        has_flatten = any(isinstance(layer, L.Flatten) for layer in layers)
        dynamic_time = len(in_shape) >= (2 if ids else 3) and not has_flatten
        dims = ["batch"]
        for axis, d in enumerate(in_shape[1:], start=1):
            if axis == 1 and dynamic_time:
                dims.append("time")
            else:
                dims.append(d if d is not None else f"dim_{axis}")
        elem = onnx.TensorProto.INT64 if ids else onnx.TensorProto.FLOAT
        graph_input = onnx.helper.make_tensor_value_info("input", elem, dims)
        g._used.add("input")
        g._used.add("output")

        x, mask, shape, has_time = "input", None, in_shape, dynamic_time
        for layer in layers:
            y = self.elementwise_layer(layer, x)
            new_mask = mask if layer.supports_masking else None
            if y is not None:
                if isinstance(layer, L.Flatten):
                    has_time = False
            elif isinstance(layer, L.TimeDistributed):
                if isinstance(layer.layer, L.Flatten):          # (B, T, ...) -> (B, T, n)
                    y = g.op("Reshape", [x, g.i64([0, 0, -1])], base="flatten")
                else:
                    y = self.elementwise_layer(layer.layer, x, outer=layer)
                if y is None:
                    self._unsupported(layer, f"TimeDistributed({type(layer.layer).__name__}) "
                                      "has no ONNX export (supported inside TimeDistributed: "
                                      "Dense, Activation, Dropout, Flatten)")
            elif isinstance(layer, L.Embedding):
                if x != "input":
                    self._unsupported(layer, "an Embedding is exported only as the model's "
                                      "first layer (its input is the int64 token ids)")
                y = g.op("Gather", [g.init(_host(layer.embeddings).astype(np.float32),
                                           f"{layer.name}/embeddings"), x], axis=0)
                new_mask = g.op("Not", [g.op("Equal", [x, g.i64(0)])], base="mask") \
                    if layer.mask_zero else None
            elif isinstance(layer, L.Masking):
                value = g.f32(np.float32(layer.mask_value))
                differs = g.cast(g.op("Not", [g.op("Equal", [x, value])]),
                                 onnx.TensorProto.FLOAT)
                keep = g.op("Greater", [g.op("ReduceSum", [differs, g.i64([-1])], keepdims=1),
                                        g.f32(0.0)])                           # (B, T, 1)
                y = g.op("Mul", [x, g.cast(keep, onnx.TensorProto.FLOAT)])
                new_mask = g.squeeze(keep, [2])
            elif isinstance(layer, L.RepeatVector):            # (B, F) -> (B, n, F)
                y = g.op("Expand", [g.unsqueeze(x, [1]), g.i64([1, layer.n, 1])],
                         base="repeat_vector")
                new_mask, has_time = None, False
            elif isinstance(layer, (L.GlobalAveragePooling1D, L.GlobalMaxPooling1D)):
                y = self.global_pooling(layer, x, mask)
                new_mask, has_time = None, False
            elif isinstance(layer, L.Bidirectional):
                y = self.bidirectional(layer, x, mask)
                new_mask = mask if layer.return_sequences else None
                has_time = has_time and layer.return_sequences
            elif isinstance(layer, L.LSTM):
                self._check_lstm(layer, layer)
                y = self.single_lstm(layer, x, mask)
                new_mask = mask if layer.return_sequences else None
                has_time = has_time and layer.return_sequences
            else:
                self._unsupported(layer, "this layer class has no ONNX export (supported: "
                                  "Input, Embedding, Masking, LSTM, Bidirectional, Dense, "
                                  "TimeDistributed, Dropout, Activation, Flatten, "
                                  "RepeatVector, GlobalAveragePooling1D, "
                                  "GlobalMaxPooling1D)")
            x, mask = y, new_mask
            shape = tuple(layer.compute_output_shape(shape))
        g.nodes.append(onnx.helper.make_node("Identity", [x], ["output"],
                                             name=g.name("node_output")))
        out_dims = ["batch"]
        for axis, d in enumerate(shape[1:], start=1):
            out_dims.append("time" if axis == 1 and has_time else d)
        graph_output = onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT,
                                                          out_dims)
        graph = onnx.helper.make_graph(g.nodes, model.name, [graph_input], [graph_output],
                                       initializer=g.initializers)
        opsets = [onnx.helper.make_opsetid("", g.opset)]
        proto = onnx.helper.make_model(graph, opset_imports=opsets,
                                       producer_name="fastlstm",
                                       producer_version=_version())
        proto.ir_version = onnx.helper.find_min_ir_version_for(opsets)
        return proto


def _version():
    from . import __version__
    return __version__


def export(model, path=None, opset=17):
    """Write ``model`` (a built float32 ``fastlstm.models.Sequential``) to ``path`` as an
    ONNX model, and return the ``onnx.ModelProto`` (``path=None``: only return it).

    ``opset``: the ai.onnx opset version, from 13 to the newest the installed onnx knows.
    Raises ImportError without the onnx package, NotImplementedError for a layer, an
    activation or an LSTM setting that has no export (naming the layer and its class),
    ValueError for an unbuilt or float64 model.  See the module docstring for what is
    exported and how.
    """
    onnx = _require_onnx()
    from .models import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"fastlstm.onnx.export: expected a fastlstm.models.Sequential, got "
                        f"{type(model).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) or \
            not _MIN_OPSET <= int(opset) <= newest:
        raise ValueError(f"opset: expected an integer from {_MIN_OPSET} to {newest} (the "
                         f"newest this onnx knows), got {opset!r}")
    proto = _Exporter(model, int(opset)).run()
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
