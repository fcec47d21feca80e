"""Weight conversion between fastlstm (= Keras 3), PyTorch and ONNX layouts.

Everything here works on NumPy arrays and returns NumPy arrays; PyTorch tensors are
accepted wherever an array is (they are read with ``.detach().cpu().numpy()``).  Neither
torch nor onnx is needed to import or use this module.

Layouts (gate blocks along the 4H axis)::

    fastlstm / Keras  kernel (I, 4H)     recurrent_kernel (H, 4H)  bias (4H,)         i, f, g, o
    PyTorch nn.LSTM   weight_ih (4H, I)  weight_hh (4H, H)         bias_ih + bias_hh  i, f, g, o
    ONNX LSTM         W [D, 4H, I]       R [D, 4H, H]              B [D, 8H] = Wb, Rb i, o, f, c

Single LSTMs::

    kernel, recurrent_kernel, bias = torch_to_fastlstm(weight_ih, weight_hh, bias_ih, bias_hh)
    weight_ih, weight_hh, bias_ih, bias_hh = fastlstm_to_torch(kernel, recurrent_kernel, bias)
    W, R, B = fastlstm_to_onnx([(kernel, recurrent_kernel, bias)])          # D = 1 or 2
    [(kernel, recurrent_kernel, bias), ...] = onnx_to_fastlstm(W, R, B)

Whole models::

    load_torch_state_dict(model, torch_module.state_dict(), lstm_prefix="lstm.",
                          linear_prefix="fc.", embedding_prefix=None)
    state = torch_state_dict_from_sequential(model, lstm_prefix="lstm.", linear_prefix="fc.")
    load_keras_weights(model, keras_model.get_weights())

How a PyTorch model maps onto a fastlstm ``Sequential``
-------------------------------------------------------
The model's LSTM and Bidirectional layers, in order, are the layers 0, 1, ... of the
``nn.LSTM`` at ``lstm_prefix``: an ``LSTM`` layer takes ``weight_ih_l{k}``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``; a ``Bidirectional`` layer takes
those for its forward layer and the ``..._l{k}_reverse`` ones for its backward layer.
The model's Dense layers (also inside TimeDistributed) take ``{linear_prefix}weight``
(out, in) -> kernel (in, out) and ``{linear_prefix}bias``; an Embedding takes
``{embedding_prefix}weight``.  The two computations are then equal (up to float rounding)
for these pairings (``x`` batch-major; with ``batch_first=False`` transpose first):

* ``out, (h_n, c_n) = lstm(x)`` with a unidirectional ``lstm`` of any ``num_layers``:
  ``out`` == a stack of ``LSTM(H, return_sequences=True)`` layers; ``out[:, -1]`` ==
  ``h_n[-1]`` == the same stack whose last LSTM has ``return_sequences=False``.
* bidirectional: ``out`` == ``Bidirectional(LSTM(H, return_sequences=True))`` layers
  (merge_mode ``"concat"``, the default: PyTorch concatenates [forward, reverse] at every
  step, and its reverse output is in the original time order, as Bidirectional's is).
  For the last layer, ``torch.cat([h_n[-2], h_n[-1]], dim=1)`` (the final state of each
  direction) == ``Bidirectional(LSTM(H))`` with ``return_sequences=False``.
  **Not** ``out[:, -1]``: its reverse half is the reverse direction's state after one
  step (it has only seen the last input), which no fastlstm layer returns.
* ``fc(...)`` on either of those == a following ``Dense`` (its activation applied after,
  e.g. ``Dense(n, activation="softmax")`` == ``softmax(fc(...), dim=-1)``).
* packed sequences (``pack_padded_sequence`` of right-padded inputs with their lengths):
  ``h_n`` == the fastlstm model fed the same padded inputs with a mask (``Masking`` or
  ``Embedding(mask_zero=True)``) that marks the padding.  The padded steps of a packed
  ``out`` are 0, which is what ``Bidirectional(..., return_sequences=True)`` gives, but
  a plain ``LSTM(return_sequences=True)`` repeats its last valid output there (Keras).
* ``nn.LSTM(dropout=p)`` (between layers, training only) == ``Dropout(p)`` layers between
  the recurrent layers, or nothing at inference.

PyTorch's ``proj_size`` has no fastlstm equivalent (NotImplementedError).  Loading into
(or exporting from) a model whose LSTMs use other activations than tanh and sigmoid,
``go_backwards=True`` outside Bidirectional, or a Bidirectional ``merge_mode`` other than
"concat" works but warns (UserWarning): no ``nn.LSTM`` computes what such a model does;
exporting such a model (``torch_state_dict_from_sequential``) is refused (ValueError).
"""

import collections
import collections.abc
import re
import warnings

import numpy as np

from . import _device

__all__ = [
    "torch_to_fastlstm", "fastlstm_to_torch", "fastlstm_to_onnx", "onnx_to_fastlstm",
    "load_torch_state_dict", "torch_state_dict_from_sequential", "load_keras_weights",
    "LoadResult",
]

# fastlstm (i, f, g, o) -> ONNX (i, o, f, c) and back, as block indices.
_TO_ONNX = (0, 3, 1, 2)
_FROM_ONNX = (0, 2, 3, 1)


# --------------------------------------------------------------------------- helpers

def _shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _to_numpy(value, name):
    """``value`` as a NumPy array of a floating dtype (torch tensors are read off)."""
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        t = value.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":   # NumPy has no bfloat16
            t = t.float()
        value = t.numpy()
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    return arr


def _blocks(a, order, axis):
    """Reorder the four gate blocks of ``a`` along ``axis``."""
    parts = np.split(a, 4, axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


def _expect(arr, name, shape, what):
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {what} = {_shape_str(shape)}, "
                         f"got {_shape_str(arr.shape)}")


def _check_lstm_triplet(kernel, recurrent_kernel, bias, where=""):
    """Validate a fastlstm (kernel, recurrent_kernel, bias) and return them as arrays."""
    rk = _to_numpy(recurrent_kernel, f"{where}recurrent_kernel")
    if rk.ndim != 2 or rk.shape[0] < 1 or rk.shape[1] != 4 * rk.shape[0]:
        raise ValueError(f"{where}recurrent_kernel: expected shape (H, 4H) with H >= 1, got "
                         f"{_shape_str(rk.shape)}")
    H = rk.shape[0]
    k = _to_numpy(kernel, f"{where}kernel")
    if k.ndim != 2 or k.shape[1] != 4 * H or k.shape[0] < 1:
        raise ValueError(f"{where}kernel: expected shape (I, 4H) = (I, {4 * H}) with I >= 1 "
                         f"(H = {H} from recurrent_kernel), got {_shape_str(k.shape)}")
    b = None
    if bias is not None:
        b = _to_numpy(bias, f"{where}bias")
        _expect(b, f"{where}bias", (4 * H,), "(4H,)")
    return k, rk, b


# --------------------------------------------------------------------------- single LSTMs

def torch_to_fastlstm(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """PyTorch LSTM weights -> fastlstm's ``(kernel, recurrent_kernel, bias)``.

    weight_ih (4H, I), weight_hh (4H, H), bias_ih and bias_hh (4H,) or None (a missing
    one counts as zeros).  Returns kernel = weight_ihᵀ (I, 4H), recurrent_kernel =
    weight_hhᵀ (H, 4H) and bias = bias_ih + bias_hh (4H,), or None when both are None.
    PyTorch's gate order (i, f, g, o) is fastlstm's.  The arrays keep their dtype.
    """
    w_ih = _to_numpy(weight_ih, "weight_ih")
    w_hh = _to_numpy(weight_hh, "weight_hh")
    if w_hh.ndim != 2 or w_hh.shape[1] < 1 or w_hh.shape[0] != 4 * w_hh.shape[1]:
        raise ValueError(f"weight_hh: expected shape (4H, H) with H >= 1, got "
                         f"{_shape_str(w_hh.shape)}")
    H = w_hh.shape[1]
    if w_ih.ndim != 2 or w_ih.shape[0] != 4 * H or w_ih.shape[1] < 1:
        raise ValueError(f"weight_ih: expected shape (4H, I) = ({4 * H}, I) with I >= 1 "
                         f"(H = {H} from weight_hh), got {_shape_str(w_ih.shape)}")
    biases = []
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None:
            b = _to_numpy(b, name)
            _expect(b, name, (4 * H,), "(4H,)")
            biases.append(b)
    bias = None
    if biases:
        bias = biases[0].copy() if len(biases) == 1 else biases[0] + biases[1]
    return np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), bias


def fastlstm_to_torch(kernel, recurrent_kernel, bias=None):
    """fastlstm's ``(kernel, recurrent_kernel, bias)`` -> PyTorch's
    ``(weight_ih, weight_hh, bias_ih, bias_hh)``.

    weight_ih = kernelᵀ (4H, I), weight_hh = recurrent_kernelᵀ (4H, H), bias_ih = bias,
    bias_hh = zeros (PyTorch adds the two); both biases are None when ``bias`` is None.
    """
    k, rk, b = _check_lstm_triplet(kernel, recurrent_kernel, bias)
    w_ih = np.ascontiguousarray(k.T)
    w_hh = np.ascontiguousarray(rk.T)
    if b is None:
        return w_ih, w_hh, None, None
    return w_ih, w_hh, b.copy(), np.zeros_like(b)


def fastlstm_to_onnx(directions):
    """ONNX LSTM weights ``(W, R, B)`` from a list of one or two fastlstm weight triples.

    ``directions``: ``[(kernel, recurrent_kernel, bias)]`` (forward or reverse alone) or
    ``[forward, reverse]`` (``direction="bidirectional"``); bias may be None (zeros).
    Returns W [D, 4H, I], R [D, 4H, H] and B [D, 8H] (the input bias, then zeros for the
    recurrent bias), gate blocks reordered to ONNX's i, o, f, c, in the kernels' dtype.
    """
    if isinstance(directions, tuple) and len(directions) == 3 and \
            not isinstance(directions[0], (tuple, list)):
        raise TypeError("directions: expected a list of (kernel, recurrent_kernel, bias) "
                        "tuples, e.g. [(kernel, recurrent_kernel, bias)]; got one tuple of "
                        "arrays")
    try:
        directions = list(directions)
    except TypeError:
        raise TypeError(f"directions: expected a list of 1 or 2 (kernel, recurrent_kernel, "
                        f"bias) tuples, got {type(directions).__name__}") from None
    if len(directions) not in (1, 2):
        raise ValueError(f"directions: expected 1 or 2 (kernel, recurrent_kernel, bias) "
                         f"tuples, got {len(directions)}")
    Ws, Rs, Bs = [], [], []
    shape = None
    for d, triple in enumerate(directions):
        try:
            kernel, rk, bias = triple
        except (TypeError, ValueError):
            raise ValueError(f"directions[{d}]: expected a (kernel, recurrent_kernel, bias) "
                             f"tuple") from None
        k, rk, b = _check_lstm_triplet(kernel, rk, bias, where=f"directions[{d}]: ")
        if shape is not None and k.shape != shape:
            raise ValueError(f"directions[{d}]: kernel shape {_shape_str(k.shape)} differs "
                             f"from directions[0]'s {_shape_str(shape)}; both directions of "
                             "an ONNX LSTM have the same input size and hidden size")
        shape = k.shape
        H = rk.shape[0]
        Ws.append(_blocks(k.T, _TO_ONNX, axis=0))
        Rs.append(_blocks(rk.T, _TO_ONNX, axis=0).astype(k.dtype, copy=False))
        wb = np.zeros(4 * H, k.dtype) if b is None else _blocks(b, _TO_ONNX, axis=0)
        Bs.append(np.concatenate([wb.astype(k.dtype), np.zeros(4 * H, k.dtype)]))
    return (np.ascontiguousarray(np.stack(Ws)), np.ascontiguousarray(np.stack(Rs)),
            np.ascontiguousarray(np.stack(Bs)))


def onnx_to_fastlstm(W, R, B=None):
    """ONNX LSTM weights -> a list (one per direction) of fastlstm
    ``(kernel, recurrent_kernel, bias)``.

    W [D, 4H, I], R [D, 4H, H], B [D, 8H] or None; the bias is B's two halves summed
    (None when B is None).  Gate blocks go from ONNX's i, o, f, c to i, f, g, o.
    """
    W = _to_numpy(W, "W")
    R = _to_numpy(R, "R")
    if R.ndim != 3 or R.shape[0] not in (1, 2) or R.shape[2] < 1 or \
            R.shape[1] != 4 * R.shape[2]:
        raise ValueError(f"R: expected shape [D, 4H, H] with D in (1, 2) and H >= 1, got "
                         f"{_shape_str(R.shape)}")
    D, _, H = R.shape
    if W.ndim != 3 or W.shape[:2] != (D, 4 * H) or W.shape[2] < 1:
        raise ValueError(f"W: expected shape [D, 4H, I] = [{D}, {4 * H}, I] with I >= 1 (D, H "
                         f"from R), got {_shape_str(W.shape)}")
    if B is not None:
        B = _to_numpy(B, "B")
        _expect(B, "B", (D, 8 * H), "[D, 8H]")
    out = []
    for d in range(D):
        kernel = np.ascontiguousarray(_blocks(W[d], _FROM_ONNX, axis=0).T)
        rk = np.ascontiguousarray(_blocks(R[d], _FROM_ONNX, axis=0).T)
        bias = None
        if B is not None:
            bias = np.ascontiguousarray(_blocks(B[d, :4 * H] + B[d, 4 * H:], _FROM_ONNX, axis=0))
        out.append((kernel, rk, bias))
    return out


# --------------------------------------------------------------------------- models

LoadResult = collections.namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])
LoadResult.__doc__ = ("What load_torch_state_dict(strict=False) skipped: the model keys "
                      "the state dict lacks and the state dict keys nothing used.")


def _layers_module():
    from . import layers
    return layers


def _require_sequential(model, what):
    from .models import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"{what}: expected a fastlstm.models.Sequential, got "
                        f"{type(model).__name__}")
    if not model.built:
        raise ValueError(f"{what}: model {model.name!r} is not built yet; give the first "
                         "layer an input_shape (or start with Input(shape=...)), or call "
                         "model.build((None, timesteps, features))")


def _prefixes(value, name, allow_none):
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name}: expected a string prefix such as 'lstm.', got None")
    if isinstance(value, str):
        return [value]
    try:
        out = list(value)
    except TypeError:
        raise TypeError(f"{name}: expected a string or a list of strings, got "
                        f"{type(value).__name__}") from None
    if not out or not all(isinstance(p, str) for p in out):
        raise TypeError(f"{name}: expected a string or a non-empty list of strings, got "
                        f"{value!r}")
    return out


def _model_groups(model):
    """The model's weighted layers sorted into recurrent, dense and embedding lists.

    Each entry is (top-level layer, list of the LSTM/Dense/Embedding layers holding the
    weights).  Raises for a weighted layer of any other kind.
    """
    L = _layers_module()
    rec, dense, emb = [], [], []
    for layer in model.layers:
        if isinstance(layer, L.Bidirectional):
            rec.append((layer, [layer.forward_layer, layer.backward_layer]))
        elif isinstance(layer, L.LSTM):
            rec.append((layer, [layer]))
        elif isinstance(layer, L.Dense):
            dense.append((layer, [layer]))
        elif isinstance(layer, L.TimeDistributed) and isinstance(layer.layer, L.Dense):
            dense.append((layer, [layer.layer]))
        elif isinstance(layer, L.Embedding):
            emb.append((layer, [layer]))
        elif layer.weights:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has weights that "
                             "have no PyTorch counterpart here (only LSTM, Bidirectional, "
                             "Dense, TimeDistributed(Dense) and Embedding are mapped)")
    return rec, dense, emb


def _warn_unlike_torch(rec, what):
    """Warn when a recurrent layer computes something no nn.LSTM does (its weights still map):
    activations other than tanh and sigmoid, a unidirectional go_backwards, or a
    Bidirectional merge other than "concat". (Loading only: export refuses such layers.)"""
    odd = []
    for layer, subs in rec:
        if getattr(layer, "merge_mode", "concat") != "concat":
            odd.append(f"{layer.name!r}: merge_mode={layer.merge_mode!r} (PyTorch concatenates)")
        for sub in subs:
            for attr, torch_name in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
                name = getattr(getattr(sub, attr), "name", None)
                if name != torch_name:
                    odd.append(f"{sub.name!r}: {attr}={name or getattr(sub, attr)!r} (PyTorch "
                               f"uses {torch_name})")
        if len(subs) == 1 and subs[0].go_backwards:
            odd.append(f"{layer.name!r}: go_backwards=True (nn.LSTM's reverse direction exists "
                       "only with bidirectional=True)")
    if odd:
        warnings.warn(f"{what}: the weights map, but these layers compute something no "
                      f"torch.nn.LSTM does, so the two models will not agree: {'; '.join(odd)}",
                      UserWarning, stacklevel=3)


def _assign_simple(groups, value, name, kind):
    """Pair Dense/Embedding layers with their prefixes (one prefix per layer).

    A single string prefix maps to nothing when the model has no such layer (the keys
    under it are then unexpected, if the state dict has any)."""
    prefixes = _prefixes(value, name, allow_none=True)
    if prefixes is None or (isinstance(value, str) and not groups):
        return []
    if len(prefixes) != len(groups):
        names = ", ".join(repr(g[0].name) for g in groups) or "none"
        raise ValueError(f"{name}: the model has {len(groups)} {kind} layer(s) ({names}) but "
                         f"{name} names {len(prefixes)} ({', '.join(map(repr, prefixes))}); "
                         f"give one prefix per {kind} layer, in order, or None to leave them "
                         "unchanged")
    return list(zip(groups, prefixes))


_LSTM_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def _torch_layer_count(keys, prefix):
    ks = [int(m.group(2)) for key in keys if key.startswith(prefix)
          for m in [_LSTM_KEY.fullmatch(key[len(prefix):])] if m]
    return max(ks) + 1 if ks else 0


class _Plan:
    """The (model weight <- state dict keys) pairs a load is made of."""

    def __init__(self):
        self.entries = []    # (sublayer, weight index, keys, torch shapes, combine)

    def add(self, layer, index, keys, shapes, combine):
        self.entries.append((layer, index, keys, shapes, combine))


def _lstm_entries(plan, lstm, prefix, k, suffix):
    H = lstm.units
    I = lstm.kernel.shape[0]
    tag = f"l{k}{suffix}"
    plan.add(lstm, 0, [f"{prefix}weight_ih_{tag}"], [(4 * H, I)], lambda a: a.T)
    plan.add(lstm, 1, [f"{prefix}weight_hh_{tag}"], [(4 * H, H)], lambda a: a.T)
    if lstm.use_bias:
        plan.add(lstm, 2, [f"{prefix}bias_ih_{tag}", f"{prefix}bias_hh_{tag}"],
                 [(4 * H,), (4 * H,)], lambda a, b: a + b)


def _build_plan(model, keys, lstm_prefix, linear_prefix, embedding_prefix):
    L = _layers_module()
    rec, dense, emb = _model_groups(model)
    plan = _Plan()
    lstm_prefixes = _prefixes(lstm_prefix, "lstm_prefix", allow_none=False)
    # Each prefix is one nn.LSTM with as many layers as the state dict holds for it; the
    # last prefix takes whatever recurrent layers remain (missing keys name what lacks).
    pos = 0
    for p_i, prefix in enumerate(lstm_prefixes):
        if p_i == len(lstm_prefixes) - 1:
            n = len(rec) - pos
        else:
            n = max(_torch_layer_count(keys, prefix), 1)
        for k in range(n):
            if pos >= len(rec):
                break
            layer, subs = rec[pos]
            pos += 1
            if isinstance(layer, L.Bidirectional):
                _lstm_entries(plan, subs[0], prefix, k, "")
                _lstm_entries(plan, subs[1], prefix, k, "_reverse")
            else:
                _lstm_entries(plan, subs[0], prefix, k, "")
    for (layer, subs), prefix in _assign_simple(
            dense, linear_prefix, "linear_prefix", "Dense"):
        d = subs[0]
        plan.add(d, 0, [f"{prefix}weight"], [(d.units, d.kernel.shape[0])], lambda a: a.T)
        if d.use_bias:
            plan.add(d, 1, [f"{prefix}bias"], [(d.units,)], lambda a: a)
    for (layer, subs), prefix in _assign_simple(
            emb, embedding_prefix, "embedding_prefix", "Embedding"):
        e = subs[0]
        plan.add(e, 0, [f"{prefix}weight"], [(e.input_dim, e.output_dim)], lambda a: a)
    return plan, lstm_prefixes


def load_torch_state_dict(model, state_dict, lstm_prefix="lstm.", linear_prefix="fc.",
                          embedding_prefix=None, strict=True):
    """Load a PyTorch ``state_dict`` (nn.LSTM + nn.Linear [+ nn.Embedding]) into a built
    fastlstm ``Sequential``.

    * ``lstm_prefix``: the ``nn.LSTM``'s key prefix (``"lstm."`` for ``self.lstm``), or a
      list of them for several ``nn.LSTM`` modules used one after the other.  The model's
      LSTM and Bidirectional layers, in order, take the layers 0, 1, ... of the first
      nn.LSTM (as many as the state dict holds), then of the next; the last prefix takes
      the rest.  A Bidirectional layer takes ``..._l{k}`` for its forward layer and
      ``..._l{k}_reverse`` for its backward layer.  kernel = weight_ihᵀ, recurrent_kernel
      = weight_hhᵀ, bias = bias_ih + bias_hh.
    * ``linear_prefix``: one prefix per Dense layer (bare or in TimeDistributed), in order
      (a string when there is one); ``weight`` (out, in) -> kernel (in, out), ``bias``.
      None leaves the Dense layers unchanged.
    * ``embedding_prefix``: likewise for Embedding layers (``weight`` -> embeddings);
      None (the default) leaves them unchanged.

    As ``torch.nn.Module.load_state_dict`` does, ``strict=True`` refuses missing keys
    (model weights the dict lacks) and unexpected keys (dict entries nothing used);
    arrays of the wrong shape are always refused.  Every problem is listed in one
    ValueError, with expected and got shapes in PyTorch's layout, and nothing is changed
    unless the whole load succeeds.  With ``strict=False`` the weights whose keys are
    missing keep their values.  Values are cast to the model's dtype.  Returns a
    ``LoadResult(missing_keys, unexpected_keys)``.  See the module docstring for which
    PyTorch computations the loaded model then reproduces.
    """
    _require_sequential(model, "load_torch_state_dict")
    if not isinstance(state_dict, collections.abc.Mapping):
        raise TypeError(f"state_dict: expected a mapping of names to tensors/arrays, got "
                        f"{type(state_dict).__name__}")
    keys = [k for k in state_dict]
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        raise TypeError(f"state_dict: keys must be strings, got {bad[0]!r}")
    strict = bool(strict)
    plan, lstm_prefixes = _build_plan(model, keys, lstm_prefix, linear_prefix,
                                      embedding_prefix)
    proj = [k for k in keys for p in lstm_prefixes if k.startswith(p)
            and (m := _LSTM_KEY.fullmatch(k[len(p):])) and m.group(1) == "weight_hr"]
    if proj:
        raise NotImplementedError(f"load_torch_state_dict: {', '.join(map(repr, proj))}: "
                                  "PyTorch LSTMs with proj_size > 0 have no fastlstm "
                                  "equivalent")

    missing, wrong, used = [], [], set()
    values = []                                  # (layer, index, new value) to apply
    for layer, index, entry_keys, shapes, combine in plan.entries:
        arrays = []
        for key, shape in zip(entry_keys, shapes):
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            try:
                arr = _to_numpy(state_dict[key], key)
            except TypeError as e:
                wrong.append(str(e))
                continue
            if arr.shape != shape:
                wrong.append(f"{key}: expected shape {_shape_str(shape)} (layer "
                             f"{layer.name!r} {layer.weight_names[index]} "
                             f"{_shape_str(layer.weights[index].shape)}), got "
                             f"{_shape_str(arr.shape)}")
                continue
            arrays.append(arr.astype(np.float64))
        if len(arrays) == len(entry_keys):
            values.append((layer, index, combine(*arrays)))
    unexpected = [k for k in keys if k not in used]

    problems = []
    if strict and missing:
        problems.append("missing keys: " + ", ".join(map(repr, missing)))
    if strict and unexpected:
        problems.append("unexpected keys: " + ", ".join(map(repr, unexpected)))
    if wrong:
        problems.append("wrong shapes:\n    " + "\n    ".join(wrong))
    if problems:
        raise ValueError(f"load_torch_state_dict: could not load the state dict into model "
                         f"{model.name!r}:\n  " + "\n  ".join(problems))
    for layer, index, value in values:
        _device.copy_into(layer.weights[index], value)  # also into a GPU model's arrays
    _warn_unlike_torch(_model_groups(model)[0], "load_torch_state_dict")
    return LoadResult(missing, unexpected)


def torch_state_dict_from_sequential(model, lstm_prefix="lstm.", linear_prefix="fc.",
                                     embedding_prefix=None, tensors=False):
    """A PyTorch state dict (key -> array) for the model's weights; the inverse of
    load_torch_state_dict for models that have a PyTorch equivalent.

    With a string ``lstm_prefix`` the model's LSTM/Bidirectional layers must form one
    ``nn.LSTM``: the same number of units and directions and the same use_bias for
    every layer, default activations, each layer after the first fed the previous one's
    concatenated output (``merge_mode="concat"``), no go_backwards outside a standard
    Bidirectional.  A list gives one prefix per recurrent layer (each a one-layer
    nn.LSTM).  ``linear_prefix``/``embedding_prefix``: one prefix per Dense/Embedding
    layer (None: leave them out).  bias_hh is zeros (PyTorch adds the two biases).
    ``tensors=True`` returns torch tensors (needs torch), ready for ``load_state_dict``.
    """
    _require_sequential(model, "torch_state_dict_from_sequential")
    rec, dense, emb = _model_groups(model)
    out = collections.OrderedDict()
    prefixes = _prefixes(lstm_prefix, "lstm_prefix", allow_none=False)
    if len(prefixes) > 1 and len(prefixes) != len(rec):
        raise ValueError(f"lstm_prefix: a list must name one prefix per LSTM/Bidirectional "
                         f"layer; the model has {len(rec)}, got {len(prefixes)}")

    def check(layer, lstm, backwards):
        if not lstm.uses_fused_kernels:
            raise ValueError(f"layer {layer.name!r}: activation {lstm.activation.name!r} / "
                             f"recurrent_activation {lstm.recurrent_activation.name!r}: "
                             "PyTorch's LSTM uses tanh and sigmoid only")
        if lstm.go_backwards != backwards:
            raise ValueError(f"layer {layer.name!r}: go_backwards={lstm.go_backwards} has no "
                             "PyTorch equivalent here (PyTorch's reverse direction exists "
                             "only in a bidirectional LSTM, as Bidirectional's backward "
                             "layer)")

    first = None
    for pos, (layer, subs) in enumerate(rec):
        if len(prefixes) == 1:
            prefix, k = prefixes[0], pos
        else:
            prefix, k = prefixes[pos], 0
        D = len(subs)
        check(layer, subs[0], False)
        if D == 2:
            check(layer, subs[1], True)
            if layer.merge_mode != "concat":
                raise ValueError(f"layer {layer.name!r}: merge_mode={layer.merge_mode!r} has no "
                                 "PyTorch equivalent (a bidirectional nn.LSTM concatenates "
                                 "its two directions)")
            if subs[1].units != subs[0].units or subs[1].use_bias != subs[0].use_bias:
                raise ValueError(f"layer {layer.name!r}: the backward layer's units/use_bias "
                                 "differ from the forward layer's; PyTorch's two directions "
                                 "share them")
        sig = (D, subs[0].units, subs[0].use_bias)
        if len(prefixes) == 1:
            if first is None:
                first = sig
            elif sig != first:
                raise ValueError(
                    f"layer {layer.name!r}: (directions, units, use_bias) = {sig} differs from "
                    f"the first recurrent layer's {first}; one nn.LSTM needs them equal (give "
                    "a list of lstm_prefix, one per layer, for separate nn.LSTM modules)")
            if pos > 0 and subs[0].kernel.shape[0] != D * subs[0].units:
                raise ValueError(
                    f"layer {layer.name!r}: input size {subs[0].kernel.shape[0]} is not "
                    f"{D} * {subs[0].units}; in one nn.LSTM each layer takes the previous "
                    "layer's output (Bidirectional with merge_mode='concat')")
        for sub, suffix in zip(subs, ("", "_reverse")):
            w_ih, w_hh, b_ih, b_hh = fastlstm_to_torch(
                _device.to_host(sub.kernel), _device.to_host(sub.recurrent_kernel),
                None if sub.bias is None else _device.to_host(sub.bias))
            tag = f"l{k}{suffix}"
            out[f"{prefix}weight_ih_{tag}"] = w_ih
            out[f"{prefix}weight_hh_{tag}"] = w_hh
            if b_ih is not None:
                out[f"{prefix}bias_ih_{tag}"] = b_ih
                out[f"{prefix}bias_hh_{tag}"] = b_hh
    for (layer, subs), prefix in _assign_simple(
            dense, linear_prefix, "linear_prefix", "Dense"):
        d = subs[0]
        out[f"{prefix}weight"] = np.ascontiguousarray(_device.to_host(d.kernel).T)
        if d.use_bias:
            out[f"{prefix}bias"] = _device.to_numpy_copy(d.bias)
    for (layer, subs), prefix in _assign_simple(
            emb, embedding_prefix, "embedding_prefix", "Embedding"):
        out[f"{prefix}weight"] = _device.to_numpy_copy(subs[0].embeddings)
    if tensors:
        import torch
        out = collections.OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v)))
                                      for k, v in out.items())
    return out


def load_keras_weights(model, weights):
    """``model.set_weights(weights)`` for a Keras model's ``get_weights()`` list (or the
    Keras model itself), checking every array first.

    Keras 3 lists the weights layer by layer in fastlstm's order (LSTM: kernel,
    recurrent_kernel, bias; Bidirectional: the forward layer's, then the backward
    layer's; Dense: kernel, bias; Embedding: embeddings).  A wrong count or shape raises
    a ValueError naming the layer, the weight and both shapes; nothing is changed then.
    """
    _require_sequential(model, "load_keras_weights")
    if hasattr(weights, "get_weights") and callable(weights.get_weights):
        weights = weights.get_weights()
    if isinstance(weights, np.ndarray):
        raise TypeError("weights: expected a list of arrays (Keras's get_weights()), got "
                        "one array")
    weights = [w.detach().cpu().numpy() if hasattr(w, "detach") else np.asarray(w)
               for w in weights]
    slots = [(layer, name, w) for layer in model.layers
             for name, w in zip(layer._all_weight_names(), layer.weights)]
    if len(weights) != len(slots):
        listing = ", ".join(f"{layer.name}/{name} {_shape_str(w.shape)}"
                            for layer, name, w in slots) or "none"
        raise ValueError(f"load_keras_weights: model {model.name!r} has {len(slots)} weight "
                         f"arrays, got {len(weights)}. Expected, in order: {listing}")
    for i, ((layer, name, w), value) in enumerate(zip(slots, weights)):
        if value.dtype.kind not in "fiu":
            raise TypeError(f"load_keras_weights: weights[{i}] (layer {layer.name!r} "
                            f"{name}): expected a numeric array, got dtype {value.dtype}")
        if value.shape != w.shape:
            hint = ""
            if value.ndim == 2 and value.shape[::-1] == w.shape:
                hint = (" (transposed: a PyTorch-layout weight? use "
                        "fastlstm.convert.load_torch_state_dict)")
            raise ValueError(f"load_keras_weights: weights[{i}] (layer {layer.name!r} "
                             f"{name}): expected shape {_shape_str(w.shape)}, got "
                             f"{_shape_str(value.shape)}{hint}")
    model.set_weights(weights)
