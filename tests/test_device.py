"""The model API's device: fastlstm.set_device / get_device, models on "cpu" and "cuda".

Three groups:

* Always: argument errors, the error when CUDA cannot run here, FASTLSTM_DEVICE, ``import
  fastlstm`` without importing CuPy, models recording and keeping their device.
* Fake device (no GPU needed): CuPy replaced by ``fakecupy`` below, a stand-in backed by NumPy
  whose arrays refuse what CuPy's refuse (implicit conversion to NumPy, arithmetic with NumPy
  arrays) and also every ``numpy.*`` function called on them (CuPy would dispatch those; the
  model API must use the device's module ``xp``); the LSTM kernels behind ``backend="cuda"``
  are the CPU kernels run on the fake arrays' data. Models train, evaluate and predict on it
  and must give the CPU model's numbers, read back at most one small array per batch and
  keep their weights on the device.
* GPU (marker ``cuda``): the same comparisons with real CuPy on a real GPU; skipped with the
  reason when CUDA or CuPy is not usable.

What the fake device cannot catch (it is NumPy underneath):

* functions, keyword arguments or dtypes CuPy lacks or treats differently (the fake passes
  them to NumPy: ``astype(copy=False)``, ``sum(dtype=)``, ``out=``, type promotion with NumPy
  scalars), and CuPy's own indexing rules (the fake refuses NumPy index arrays, which CuPy
  would upload silently; it is stricter there);
* the real ``fastlstm.cuda`` runners (CuPy pointers, streams, device selection) and the CUDA
  kernels' numerics, which the fake replaces by the CPU kernels;
* synchronisations CuPy makes inside its own functions (boolean indexing, ``nonzero``), and
  asynchronous errors, memory use and speed.
"""

import functools
import json
import operator
import os
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

import fastlstm
from fastlstm import _device, callbacks, layers, models, ops, optimizers, utils
from fastlstm import cuda as fcuda

SEED = 1234


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def restore_device():
    """Put the device setting back as it was after the test."""
    saved = dict(_device._state)
    saved["devices"] = dict(saved["devices"])
    try:
        yield
    finally:
        _device._state.clear()
        _device._state.update(saved)


def _run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=120)


# --------------------------------------------------------------------------- always

def test_set_device_rejects_bad_names(restore_device):
    for bad in ("gpu", "CUDA", "", None, 0, ["cpu"]):
        with pytest.raises(ValueError, match=r"name: expected one of 'auto', 'cpu', 'cuda'"):
            fastlstm.set_device(bad)
    assert fastlstm.get_device() in ("cpu", "cuda")


def test_set_device_cpu_and_auto(restore_device):
    fastlstm.set_device("cpu")
    assert fastlstm.get_device() == "cpu"
    fastlstm.set_device("auto")
    expected = "cuda" if _device.cuda_unavailable_reason() is None else "cpu"
    assert fastlstm.get_device() == expected


@pytest.mark.skipif(fastlstm.cuda_available(), reason="CUDA is available here")
def test_set_device_cuda_without_cuda_names_the_reason(restore_device):
    fastlstm.set_device("cpu")
    reason = fastlstm.cuda_info()["reason"]
    assert reason
    with pytest.raises(RuntimeError, match="CUDA device is not available") as info:
        fastlstm.set_device("cuda")
    assert reason in str(info.value)
    assert fastlstm.get_device() == "cpu"           # the setting did not change
    fastlstm.set_device("auto")
    assert fastlstm.get_device() == "cpu"


def test_set_device_cuda_without_cupy_gives_the_install_hint(restore_device, monkeypatch):
    def no_cupy():
        raise ImportError("No module named 'cupy'")
    monkeypatch.setattr(fcuda, "available", lambda: True)
    monkeypatch.setattr(_device, "_gpu_module", no_cupy)
    with pytest.raises(RuntimeError, match=r'CuPy.*pip install "fastlstm\[cuda\]"'):
        fastlstm.set_device("cuda")
    fastlstm.set_device("auto")
    assert fastlstm.get_device() == "cpu"           # auto falls back to the CPU


def test_fastlstm_device_environment_variable():
    code = ("import fastlstm\n"
            "print(fastlstm.get_device())\n")
    r = _run_python(code, FASTLSTM_DEVICE="cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "cpu"
    r = _run_python(code, FASTLSTM_DEVICE=" CPU ")     # case and spaces do not matter
    assert r.returncode == 0 and r.stdout.strip() == "cpu", r.stderr
    r = _run_python(code, FASTLSTM_DEVICE="")           # empty: auto
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("cuda" if _device.cuda_unavailable_reason() is None else "cpu")
    r = _run_python(code, FASTLSTM_DEVICE="gpu")
    assert r.returncode != 0
    assert "ValueError: FASTLSTM_DEVICE: expected one of auto, cpu, cuda, got 'gpu'" in r.stderr
    # set_device overrides the environment
    r = _run_python("import fastlstm\nfastlstm.set_device('cpu')\nprint(fastlstm.get_device())",
                    FASTLSTM_DEVICE="cuda")
    assert r.returncode == 0 and r.stdout.strip() == "cpu", r.stderr


@pytest.mark.skipif(fastlstm.cuda_available(), reason="CUDA is available here")
def test_fastlstm_device_cuda_without_cuda_fails_when_used():
    code = ("import fastlstm\n"
            "from fastlstm import layers, models\n"
            "print('imported')\n"
            "try:\n"
            "    fastlstm.get_device()\n"
            "except RuntimeError as e:\n"
            "    print('get_device:', e)\n"
            "try:\n"
            "    models.Sequential([layers.Dense(2, input_shape=(3,))])\n"
            "except RuntimeError as e:\n"
            "    print('build:', e)\n")
    r = _run_python(code, FASTLSTM_DEVICE="cuda")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "imported"
    reason = fastlstm.cuda_info()["reason"]
    for prefix, line in zip(("get_device: ", "build: "), lines[1:]):
        assert line.startswith(prefix + "FASTLSTM_DEVICE=cuda asks for the CUDA device")
        assert reason in line


def test_import_fastlstm_does_not_import_cupy():
    code = ("import sys, fastlstm\n"
            "assert 'cupy' not in sys.modules, 'import fastlstm imported cupy'\n"
            "fastlstm.set_device('cpu')\n"
            "import numpy as np\n"
            "from fastlstm import layers, models\n"
            "m = models.Sequential([layers.LSTM(3, input_shape=(4, 2)), layers.Dense(1)])\n"
            "m.compile(loss='mse', optimizer='adam')\n"
            "m.fit(np.ones((4, 4, 2)), np.ones((4, 1)), verbose=0)\n"
            "m.predict(np.ones((2, 4, 2)), verbose=0)\n"
            "assert 'cupy' not in sys.modules, 'a model on the CPU imported cupy'\n"
            "print('ok', fastlstm.get_device())\n")
    r = _run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_models_record_their_device_on_cpu(restore_device):
    fastlstm.set_device("cpu")
    m = models.Sequential()
    assert m.device is None
    m.add(layers.LSTM(3, input_shape=(4, 2)))
    m.add(layers.Dense(1))
    assert m.device == "cpu"
    assert all(layer.device == "cpu" for layer in m.layers)
    assert all(isinstance(w, np.ndarray) for w in m.weights)
    m.compile(loss="mse", optimizer="adam")
    x, y = np.ones((4, 4, 2)), np.ones((4, 1))
    h = m.fit(x, y, epochs=2, verbose=0)
    assert all(type(v) is float for vs in h.history.values() for v in vs)
    assert isinstance(m.predict(x, verbose=0), np.ndarray)
    assert isinstance(m(x), np.ndarray)
    standalone = layers.Dense(2)
    standalone(np.ones((1, 3), np.float32))
    assert standalone.device == "cpu"


# --------------------------------------------------------------------------- the fake device

class FakeArray:
    """An array "on the fake device": NumPy data that, like a CuPy array, cannot become a
    NumPy array implicitly and cannot meet one in arithmetic. ``get()`` (or
    ``fakecupy.asnumpy``) copies it to the host; every read back is counted."""

    __slots__ = ("_a",)
    __array_ufunc__ = None          # NumPy's operators and ufuncs give up on it
    __hash__ = None

    def __init__(self, data):
        assert isinstance(data, np.ndarray)
        self._a = data

    # what CuPy refuses
    def __array__(self, *args, **kwargs):
        raise TypeError("fake device array: implicit conversion to a NumPy array is not "
                        "allowed; use .get() or the device module's asnumpy()")

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"fake device array: numpy.{func.__name__} called on it; use the "
                        "array module of the model's device (xp) instead")

    # reads back (allowed, as CuPy allows them, but counted)
    def get(self):
        fakecupy.stats["reads"] += 1
        return self._a.copy()

    def item(self):
        fakecupy.stats["reads"] += 1
        return self._a.item()

    def tolist(self):
        fakecupy.stats["reads"] += 1
        return self._a.tolist()

    def __bool__(self):
        fakecupy.stats["reads"] += 1
        return bool(self._a)

    def __float__(self):
        fakecupy.stats["reads"] += 1
        return float(self._a)

    def __int__(self):
        fakecupy.stats["reads"] += 1
        return int(self._a)

    # attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    T = property(lambda self: FakeArray(self._a.T))

    @property
    def flags(self):                # CuPy's flags have no "writeable"
        return types.SimpleNamespace(c_contiguous=self._a.flags.c_contiguous,
                                     f_contiguous=self._a.flags.f_contiguous,
                                     owndata=self._a.flags.owndata)

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"FakeArray({self._a!r})"

    # indexing
    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = _operand(value)

    # methods
    def astype(self, dtype, copy=True):
        return FakeArray(self._a.astype(dtype, copy=copy))

    def copy(self):
        return FakeArray(self._a.copy())

    def reshape(self, *shape):
        return FakeArray(self._a.reshape(*shape))

    def transpose(self, *axes):
        return FakeArray(self._a.transpose(*axes))

    def ravel(self):
        return FakeArray(self._a.ravel())

    def __getattr__(self, name):
        reductions = ("sum", "mean", "max", "min", "any", "all", "argmax", "cumsum", "prod")
        if name in reductions:
            method = getattr(self._a, name)
            return lambda *args, **kwargs: _wrap(method(*args, **kwargs))
        raise AttributeError(name)


def _operand(value):
    """An operand of a fake array's arithmetic: fake arrays and scalars, never NumPy arrays
    (CuPy raises TypeError for those, to avoid hidden transfers)."""
    if isinstance(value, FakeArray):
        return value._a
    if isinstance(value, (bool, int, float, np.generic)):
        return value
    raise TypeError(f"fake device array: unsupported operand of type {type(value).__name__} "
                    "(a NumPy array must be moved to the device explicitly)")


def _index(key):
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, FakeArray):
        return key._a
    if isinstance(key, np.ndarray):
        raise TypeError("fake device array: indexed with a NumPy array; upload the index "
                        "first (CuPy would copy it to the device behind your back)")
    return key


def _wrap(result):
    if isinstance(result, tuple):
        return tuple(_wrap(r) for r in result)
    if isinstance(result, np.generic):      # CuPy gives 0-d arrays, not NumPy scalars
        return FakeArray(np.asarray(result))
    if isinstance(result, np.ndarray):
        return FakeArray(result)
    return result


def _binary(op, reflected=False):
    def method(self, other):
        b = _operand(other)
        return _wrap(op(b, self._a) if reflected else op(self._a, b))
    return method


def _inplace(op):
    def method(self, other):
        op(self._a, _operand(other))
        return self
    return method


for _name, _op in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("pow", operator.pow),
                   ("matmul", operator.matmul), ("and", operator.and_), ("or", operator.or_),
                   ("xor", operator.xor), ("mod", operator.mod), ("floordiv", operator.floordiv)):
    setattr(FakeArray, f"__{_name}__", _binary(_op))
    setattr(FakeArray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(FakeArray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(FakeArray, f"__{_name}__", _binary(getattr(operator, _name)))
FakeArray.__neg__ = lambda self: FakeArray(-self._a)
FakeArray.__abs__ = lambda self: FakeArray(abs(self._a))
FakeArray.__invert__ = lambda self: FakeArray(~self._a)


def _fake_function(np_func):
    """A module function taking fake arrays (and scalars, shapes, dtypes), never NumPy arrays."""
    def unwrap(arg):
        if isinstance(arg, (list, tuple)) and any(isinstance(a, (FakeArray, np.ndarray))
                                                  for a in arg):
            return type(arg)(unwrap(a) for a in arg)
        if isinstance(arg, np.ndarray):
            raise TypeError(f"fakecupy.{np_func.__name__}: got a NumPy array; move it to the "
                            "device first")
        return arg._a if isinstance(arg, FakeArray) else arg

    @functools.wraps(np_func)
    def function(*args, **kwargs):
        args = [unwrap(a) for a in args]
        kwargs = {k: unwrap(v) for k, v in kwargs.items()}
        return _wrap(np_func(*args, **kwargs))
    return function


def _fake_asarray(a, dtype=None):
    if isinstance(a, FakeArray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    fakecupy.stats["uploads"] += 1            # an explicit upload, as cupy.asarray does
    return FakeArray(np.array(a, dtype=dtype))


def _fake_array(a, dtype=None, copy=True):
    if isinstance(a, FakeArray):
        return FakeArray(np.array(a._a, dtype=dtype, copy=copy))
    return _fake_asarray(a, dtype)


def _fake_ascontiguousarray(a, dtype=None):
    a = _fake_asarray(a, dtype)
    return FakeArray(np.ascontiguousarray(a._a))


def _fake_asnumpy(a):
    if isinstance(a, FakeArray):
        return a.get()
    return np.asarray(a)


def _fake_scatter_add(a, slices, value):   # cupyx.scatter_add (fastlstm does not use it)
    np.add.at(a._a, _index(slices), _operand(value))


# The functions of the module are only ones CuPy has too.
_FUNCTIONS = ("zeros", "ones", "empty", "full", "zeros_like", "ones_like", "empty_like",
              "full_like", "arange", "eye", "where", "maximum", "minimum", "exp", "log",
              "log1p", "expm1", "tanh", "sqrt", "square", "abs", "absolute", "sign", "clip",
              "rint", "isfinite", "isnan", "logical_and", "logical_or", "logical_not", "sum",
              "mean", "max", "min", "any", "all", "argmax", "argsort", "cumsum", "prod",
              "concatenate", "stack", "broadcast_to", "dot", "matmul", "transpose", "reshape",
              "take_along_axis")

fakecupy = types.ModuleType("fakecupy", "A NumPy-backed stand-in for CuPy (tests only).")
fakecupy.__dict__.update({name: _fake_function(getattr(np, name)) for name in _FUNCTIONS})
fakecupy.__dict__.update(
    ndarray=FakeArray, asarray=_fake_asarray, array=_fake_array,
    ascontiguousarray=_fake_ascontiguousarray, asnumpy=_fake_asnumpy, dtype=np.dtype,
    float32=np.float32, float64=np.float64, int32=np.int32, int64=np.int64, intp=np.intp,
    bool_=np.bool_, stats={"reads": 0, "uploads": 0},
    cupyx=types.SimpleNamespace(scatter_add=_fake_scatter_add))


def _host(a):
    """The data of a fake array without counting a read (for the test's own checks)."""
    return a._a if isinstance(a, FakeArray) else np.asarray(a)


def _fake_forward(normalize, raw, names, precision="fp32"):
    """fastlstm.cuda.forward for the fake device: ops' checks with the fake module, then the
    CPU kernels on the arrays' data; the outputs are fake arrays. The precision asked for is
    recorded in PRECISIONS_SEEN (the CPU kernels compute in fp32 whatever it is)."""
    PRECISIONS_SEEN.append(("forward", precision))
    for k, v in raw.items():
        if k == "lengths":
            assert v is None or isinstance(v, np.ndarray), "lengths must be on the host"
        else:
            assert v is None or isinstance(v, FakeArray), \
                f"{k}: expected a device array, got {type(v)}"
    args = normalize(fakecupy, raw)
    host = {k: (None if args[k] is None else args[k]._a) for k in names}
    y, h_n, c_n, saved = ops.lstm_forward(**host, lengths=args["lengths"],
                                          reverse=args["reverse"], training=args["training"],
                                          backend="cpu")
    outs = (FakeArray(y), FakeArray(h_n), FakeArray(c_n))
    if saved is None:
        return outs, None
    fields = dict(dtype=saved.dtype, dims=saved.dims, has_bias=saved.has_bias,
                  reverse=saved.reverse, payload=saved, precision=precision,
                  **{k: args[k] for k in names}, lengths=args["lengths"])
    return outs, fields


PRECISIONS_SEEN = []


def _fake_backward(saved, normalize, raw):
    PRECISIONS_SEEN.append(("backward", saved.precision))
    for k, v in raw.items():
        assert v is None or isinstance(v, FakeArray), \
            f"{k}: expected a device array, got {type(v)}"
    g = normalize(fakecupy, raw)
    outs = ops.lstm_backward(saved.payload, *(None if g[k] is None else g[k]._a
                                              for k in ("dy", "dh_n", "dc_n")))
    return tuple(None if o is None else FakeArray(o) for o in outs)


@pytest.fixture
def fake_gpu(monkeypatch, restore_device):
    """CuPy replaced by fakecupy and the CUDA runners by the CPU kernels; "cuda" selected."""
    monkeypatch.setattr(fcuda, "available", lambda: True)
    monkeypatch.setattr(fcuda, "require", lambda: None)
    monkeypatch.setattr(fcuda, "forward", _fake_forward)
    monkeypatch.setattr(fcuda, "backward", _fake_backward)
    previous = _device._set_gpu_module(fakecupy)
    fakecupy.stats.update(reads=0, uploads=0)
    try:
        fastlstm.set_device("cuda")
        yield fakecupy
    finally:
        _device._set_gpu_module(previous)


# -- the double itself catches what CuPy catches

def test_fake_array_refuses_what_cupy_refuses():
    a = fakecupy.asarray(np.arange(6.0).reshape(2, 3))
    h = np.ones((2, 3))
    with pytest.raises(TypeError, match="implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError):
        a + h
    with pytest.raises(TypeError):
        h + a
    with pytest.raises(TypeError):
        h * a
    with pytest.raises(TypeError):
        np.exp(a)
    with pytest.raises(TypeError, match="numpy.sum"):
        np.sum(a)
    with pytest.raises(TypeError, match="NumPy array"):
        fakecupy.maximum(a, h)
    with pytest.raises(TypeError, match="index"):
        a[np.array([0, 1])]
    with pytest.raises(TypeError):
        a[0] = np.ones(3)
    # what CuPy allows: scalars (also NumPy scalars), explicit copies, reads of size-1 arrays
    b = a * np.float32(2) + 1.0
    assert isinstance(b, FakeArray) and isinstance(a.sum(), FakeArray)
    assert fakecupy.asnumpy(b).tolist() == [[1, 3, 5], [7, 9, 11]]
    assert float(a.sum()) == 15.0


def test_device_helpers_on_the_fake_module(fake_gpu):
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        # index_add_rows (np.add.at) with repeated indices, against NumPy
        index = rng.integers(0, 7, size=40)
        values = rng.standard_normal((40, 3)).astype(dtype)
        expected = np.zeros((7, 3), dtype)
        np.add.at(expected, index, values)
        got = fakecupy.zeros((7, 3), dtype)
        _device.index_add_rows(got, fakecupy.asarray(index), fakecupy.asarray(values))
        tol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(_host(got), expected, rtol=tol, atol=tol)
    x = rng.standard_normal((3, 5, 2))
    index = rng.integers(0, 5, size=(3, 5))
    got = _device.take_along_time(fakecupy.asarray(x), fakecupy.asarray(index))
    np.testing.assert_array_equal(_host(got), np.take_along_axis(x, index[:, :, None], axis=1))
    ids = rng.integers(0, 4, size=(2, 3))
    np.testing.assert_array_equal(_host(_device.one_hot(fakecupy.asarray(ids), 4, np.float32)),
                                  np.eye(4, dtype=np.float32)[ids])
    fake_gpu.stats["reads"] = 0
    values = [1.5, np.float32(2.0), fakecupy.asarray(3.0), fakecupy.asarray([4.0]),
              fakecupy.asarray(np.array(True))]
    assert _device.read_scalars(values) == [1.5, 2.0, 3.0, 4.0, 1.0]
    assert fake_gpu.stats["reads"] == 1          # one transfer for all device values


# -- models on the fake device against the same models on the CPU

def _seq_data(rng, n, T, F):
    return rng.standard_normal((n, T, F))


def _scenario_lstm_dense():
    rng = np.random.default_rng(1)
    x = _seq_data(rng, 24, 5, 3)
    y = rng.standard_normal((24, 2))

    def build():
        m = models.Sequential([layers.LSTM(4, input_shape=(5, 3)), layers.Dense(2)],
                              dtype="float64")
        m.compile(loss="mse", optimizer=optimizers.Adam(0.01), metrics=["mae"])
        return m
    return build, x, y, dict(validation_split=0.25)


def _scenario_embedding_mask():
    rng = np.random.default_rng(2)
    seqs = [rng.integers(1, 12, size=rng.integers(1, 7)) for _ in range(20)]
    x = utils.pad_sequences(seqs, maxlen=6, padding="post")
    y = rng.integers(0, 2, size=(20, 1)).astype(np.float64)

    def build():
        m = models.Sequential([layers.Embedding(12, 3, mask_zero=True, input_length=6),
                               layers.LSTM(5),
                               layers.Dense(1, activation="sigmoid")], dtype="float64")
        m.compile(loss="binary_crossentropy",
                  optimizer=optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                  metrics=["accuracy"])
        return m
    return build, x, y, dict(sample_weight=rng.uniform(0.5, 2.0, size=20))


def _scenario_bidirectional_sequences():
    rng = np.random.default_rng(3)
    seqs = [rng.standard_normal((rng.integers(2, 7), 2)) for _ in range(16)]
    x = utils.pad_sequences(seqs, maxlen=6, dtype="float64", padding="pre")
    y = rng.integers(0, 3, size=(16, 6))

    def build():
        m = models.Sequential([
            layers.Masking(0.0, input_shape=(6, 2)),
            layers.Bidirectional(layers.LSTM(3, return_sequences=True), merge_mode="concat"),
            layers.TimeDistributed(layers.Dense(3, activation="softmax"))], dtype="float64")
        m.compile(loss="sparse_categorical_crossentropy",
                  optimizer=optimizers.Adam(0.01, clipnorm=0.5), metrics=["accuracy"])
        return m
    return build, x, y, dict()


def _scenario_dropout_generic_regularized():
    rng = np.random.default_rng(4)
    x = _seq_data(rng, 20, 4, 3)
    y = utils.to_categorical(rng.integers(0, 3, size=20), 3).astype(np.float64)

    def build():
        m = models.Sequential([
            layers.LSTM(4, activation="relu", dropout=0.25, recurrent_dropout=0.25,
                        return_sequences=True, go_backwards=True,
                        kernel_regularizer="l2", input_shape=(4, 3)),
            layers.Dropout(0.3),
            layers.LSTM(3, bias_regularizer="l1"),
            layers.Dense(3, activation="softmax")], dtype="float64")
        m.compile(loss="categorical_crossentropy",
                  optimizer=optimizers.RMSprop(0.01, global_clipnorm=1.0),
                  metrics=["accuracy", "mse"])
        return m
    return build, x, y, dict(class_weight={0: 1.0, 1: 2.0, 2: 0.5})


def _scenario_float32_huber():
    rng = np.random.default_rng(5)
    x = _seq_data(rng, 16, 6, 2).astype(np.float32)
    y = rng.standard_normal((16, 6, 1)).astype(np.float32)

    def build():
        m = models.Sequential([layers.LSTM(4, return_sequences=True, input_shape=(6, 2)),
                               layers.TimeDistributed(layers.Dense(1)),
                               layers.Activation("tanh")])
        m.compile(loss="huber", optimizer=optimizers.SGD(0.05, clipvalue=0.5),
                  metrics=["mae"])
        return m
    return build, x, y, dict()


SCENARIOS = {
    "lstm_dense_adam_mse": _scenario_lstm_dense,
    "embedding_mask_sgd_bce": _scenario_embedding_mask,
    "masking_bidirectional_timedistributed_sparse": _scenario_bidirectional_sequences,
    "dropout_generic_path_regularizers": _scenario_dropout_generic_regularized,
    "float32_huber_clipvalue": _scenario_float32_huber,
}
EPOCHS, BATCH = 2, 8


def _run(device, build, x, y, fit_kwargs, on_device=None):
    """Build (seeded), fit, evaluate and predict on ``device``; returns everything the
    comparison needs. ``on_device(model, stage)`` may check the model between stages."""
    fastlstm.set_device(device)
    utils.set_random_seed(SEED)
    model = build()
    w0 = model.get_weights()
    if on_device:
        on_device(model, "built")
    hist = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, **fit_kwargs)
    if on_device:
        on_device(model, "fit")
    ev = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    if on_device:
        on_device(model, "evaluate")
    pred = model.predict(x, batch_size=BATCH, verbose=0)
    if on_device:
        on_device(model, "predict")
    return dict(model=model, w0=w0, history=hist.history, evaluate=ev, predict=pred,
                weights=model.get_weights())


def _tolerance(model):
    # The fake device runs NumPy and the CPU kernels, like the CPU model; results differ only
    # by summation order (the Embedding gradient's segmented sum, the metrics' device sums):
    # a few units in the last place. float64 models: 1e-11; float32: 2e-5.
    return 1e-11 if model.dtype == np.float64 else 2e-5


def _compare(cpu, dev, rtol):
    for a, b in zip(cpu["w0"], dev["w0"]):
        np.testing.assert_array_equal(a, b)            # the same initial weights
    assert cpu["history"].keys() == dev["history"].keys()
    for key in cpu["history"]:
        np.testing.assert_allclose(dev["history"][key], cpu["history"][key], rtol=rtol,
                                   atol=rtol, err_msg=key)
    assert cpu["evaluate"].keys() == dev["evaluate"].keys()
    for key in cpu["evaluate"]:
        np.testing.assert_allclose(dev["evaluate"][key], cpu["evaluate"][key], rtol=rtol,
                                   atol=rtol, err_msg=key)
    np.testing.assert_allclose(dev["predict"], cpu["predict"], rtol=rtol, atol=rtol)
    for a, b in zip(cpu["weights"], dev["weights"]):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fake_device_matches_cpu(name, fake_gpu):
    build, x, y, fit_kwargs = SCENARIOS[name]()
    cpu = _run("cpu", build, x, y, fit_kwargs)
    assert cpu["model"].device == "cpu"
    assert all(isinstance(w, np.ndarray) for w in cpu["model"].weights)

    n = len(x)
    val = fit_kwargs.get("validation_split", 0.0)
    n_train = int(n * (1 - val))
    batches = {"fit": EPOCHS * (-(-n_train // BATCH) + (-(-(n - n_train) // BATCH) if val else 0)),
               "evaluate": -(-n // BATCH), "predict": -(-n // BATCH)}

    def on_device(model, stage):
        assert model.device == "cuda"
        assert all(layer.device == "cuda" for layer in model.layers)
        assert all(isinstance(w, FakeArray) for w in model.weights), stage
        if model.optimizer.built:
            assert all(isinstance(a, FakeArray) for arrays in model.optimizer._slots.values()
                       for a in arrays), stage
        if stage != "built":
            # at most one read back per batch (the loss, the metrics' sums, whether the
            # gradients are finite; predict: the outputs); get_weights() reads each weight
            assert fake_gpu.stats["reads"] <= batches[stage], (stage, fake_gpu.stats)
        fake_gpu.stats["reads"] = 0

    dev = _run("cuda", build, x, y, fit_kwargs, on_device)
    assert isinstance(dev["predict"], np.ndarray)
    assert all(type(v) is float for vs in dev["history"].values() for v in vs)
    assert all(type(v) is float for v in dev["evaluate"].values())
    _compare(cpu, dev, _tolerance(cpu["model"]))


def test_fake_device_passes_the_lstm_precision(fake_gpu):
    # LSTM(precision="tf32") on the "cuda" device asks fastlstm.cuda for tf32 in every forward
    # and backward (the CPU model computes fp32: LSTM docstring); plain LSTMs ask for fp32
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 5, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)

    def build():
        m = models.Sequential([layers.LSTM(4, precision="tf32", return_sequences=True, input_shape=(5, 3)),
                               layers.LSTM(2)])
        m.compile(loss="mse", optimizer=optimizers.SGD(0.1))
        return m
    cpu = _run("cpu", build, x, y, {})
    PRECISIONS_SEEN.clear()
    dev = _run("cuda", build, x, y, {})
    # fit: 2 epochs x 1 batch x 2 layers of forward and backward; evaluate, predict: forwards
    assert PRECISIONS_SEEN[:4] == [("forward", "tf32"), ("forward", "fp32"),
                                   ("backward", "fp32"), ("backward", "tf32")], PRECISIONS_SEEN
    assert sorted(set(PRECISIONS_SEEN)) == [("backward", "fp32"), ("backward", "tf32"),
                                            ("forward", "fp32"), ("forward", "tf32")]
    assert PRECISIONS_SEEN.count(("forward", "tf32")) == PRECISIONS_SEEN.count(("forward", "fp32")) == 4
    _compare(cpu, dev, _tolerance(cpu["model"]))


def test_fake_device_train_on_batch_call_and_standalone_layers(fake_gpu):
    build, x, y, _ = _scenario_lstm_dense()
    fastlstm.set_device("cpu")
    utils.set_random_seed(SEED)
    cpu = build()
    fastlstm.set_device("cuda")
    utils.set_random_seed(SEED)
    dev = build()
    for m in (cpu, dev):
        logs = m.train_on_batch(x[:8], y[:8], return_dict=True)
        assert set(logs) == {"loss", "mae"} and all(type(v) is float for v in logs.values())
        m.test_on_batch(x[8:16], y[8:16])
    np.testing.assert_allclose(dev.predict_on_batch(x), cpu.predict_on_batch(x), rtol=1e-12)
    out = dev(x[:3])                                  # model(x): an array of the device
    assert isinstance(out, FakeArray)
    np.testing.assert_allclose(_host(out), cpu(x[:3]), rtol=1e-12)
    # the inputs may already be on the device
    np.testing.assert_allclose(dev.predict(fakecupy.asarray(x), verbose=0),
                               cpu.predict(x, verbose=0), rtol=1e-12)
    # a layer on its own binds to the current device and returns its arrays
    lstm = layers.LSTM(3, return_sequences=True, return_state=True)
    outs = lstm(x[:2].astype(np.float32), training=True)
    assert lstm.device == "cuda" and all(isinstance(o, FakeArray) for o in outs)
    dx = lstm.backward([fakecupy.ones((2, 5, 3), np.float32), None, None])
    assert isinstance(dx, FakeArray) and all(isinstance(g, FakeArray) for g in lstm.grads)


def test_model_keeps_its_device_and_layers_cannot_move(fake_gpu):
    fastlstm.set_device("cpu")
    dense = layers.Dense(2)
    dense.build((None, 3))
    assert dense.device == "cpu"
    fastlstm.set_device("cuda")
    m = models.Sequential([layers.Dense(2, input_shape=(4,))])
    assert m.device == "cuda"
    fastlstm.set_device("cpu")
    m.add(layers.Dense(1))                             # added later: on the model's device
    assert m.device == "cuda" and m.layers[1].device == "cuda"
    with pytest.raises(ValueError, match="built on device 'cpu' and cannot run on 'cuda'"):
        m.add(dense)


def test_weights_and_optimizer_state_cross_devices(fake_gpu, tmp_path):
    build, x, y, _ = _scenario_lstm_dense()
    dev = build()
    dev.fit(x, y, epochs=1, batch_size=8, verbose=0)
    weights = dev.get_weights()
    assert all(isinstance(w, np.ndarray) for w in weights)
    state = dev.optimizer.get_state()
    assert all(isinstance(a, np.ndarray) for k, v in state.items() if k != "iterations"
               for a in v)
    path = tmp_path / "m.keras"
    dev.save(path)
    with zipfile.ZipFile(path) as zf:                  # plain JSON and .npy on disk
        index = json.loads(zf.read("fastlstm.json"))
        assert all(n.endswith(".npy") for n in zf.namelist() if n != "fastlstm.json")
    assert index["optimizer_state"]["iterations"] == 3

    # loaded on the fake GPU: the same model, the optimizer state moved to the device
    again = models.load_model(path)
    assert again.device == "cuda" and all(isinstance(w, FakeArray) for w in again.weights)
    np.testing.assert_array_equal(again.predict(x, verbose=0), dev.predict(x, verbose=0))
    # loaded on the CPU (as on a machine without a GPU): the same numbers
    fastlstm.set_device("cpu")
    cpu = models.load_model(path)
    assert cpu.device == "cpu" and all(isinstance(w, np.ndarray) for w in cpu.weights)
    np.testing.assert_allclose(cpu.predict(x, verbose=0), dev.predict(x, verbose=0), rtol=1e-12)
    # one more step on each continues identically from the restored slots
    again.fit(x[:8], y[:8], epochs=1, batch_size=8, shuffle=False, verbose=0)
    cpu.fit(x[:8], y[:8], epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert all(isinstance(a, FakeArray) for arrays in again.optimizer._slots.values()
               for a in arrays)
    for a, b in zip(cpu.get_weights(), again.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
    # set_weights takes NumPy arrays into the device model
    again.set_weights(weights)
    for a, b in zip(again.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


def test_fake_device_callbacks_and_nan_stop(fake_gpu, tmp_path):
    build, x, y, _ = _scenario_lstm_dense()
    m = build()
    es = callbacks.EarlyStopping(monitor="loss", patience=0, restore_best_weights=True)
    ckpt = callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="loss")
    m.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[es, ckpt])
    assert all(isinstance(w, FakeArray) for w in m.weights)
    assert (tmp_path / "best.keras").exists()
    # a NaN loss stops fit and the batch's update is not applied, as on the CPU
    bad = x.copy()
    bad[3, 2, 1] = np.nan
    before = m.get_weights()
    with pytest.warns(RuntimeWarning, match="became nan"):
        h = m.fit(bad, y, epochs=2, batch_size=24, shuffle=False, verbose=0)
    assert np.isnan(h.history["loss"][-1])
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- real GPU

def _gpu_skip_reason():
    why = _device.cuda_unavailable_reason()
    return f"the CUDA device is not usable here: {why}" if why else ""


gpu = pytest.mark.skipif(_device.cuda_unavailable_reason() is not None,
                         reason=_gpu_skip_reason() or "CUDA device usable")

# Against the CPU: the GPU kernels and CuPy's reductions sum in other orders than the CPU
# code, so float64 models agree to rounding amplified by a few training steps (1e-8, with
# the float64 reference's 1e-12 per kernel call); the float32 model (SGD, no Adam, whose
# first steps amplify sign noise of tiny gradients) to 1e-3.
GPU_RTOL = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 1e-3}


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_gpu_model_matches_cpu(name, restore_device):
    cp = _device._gpu_module()
    build, x, y, fit_kwargs = SCENARIOS[name]()
    cpu = _run("cpu", build, x, y, fit_kwargs)

    def on_device(model, stage):
        assert model.device == "cuda"
        assert all(isinstance(w, cp.ndarray) for w in model.weights), stage
        if model.optimizer.built:
            assert all(isinstance(a, cp.ndarray) for arrays in model.optimizer._slots.values()
                       for a in arrays), stage

    dev = _run("cuda", build, x, y, fit_kwargs, on_device)
    assert isinstance(dev["predict"], np.ndarray)
    assert all(type(v) is float for vs in dev["history"].values() for v in vs)
    assert all(layer.last_path in ("fused", "numpy") for layer in dev["model"].layers
               if isinstance(layer, layers.LSTM))
    _compare(cpu, dev, GPU_RTOL[cpu["model"].dtype])


@pytest.mark.cuda
@gpu
def test_gpu_training_is_deterministic(restore_device):
    build, x, y, fit_kwargs = _scenario_embedding_mask()
    first = _run("cuda", build, x, y, fit_kwargs)
    second = _run("cuda", build, x, y, fit_kwargs)
    for a, b in zip(first["weights"], second["weights"]):
        np.testing.assert_array_equal(a, b)
    assert first["history"] == second["history"]


@pytest.mark.cuda
@gpu
def test_gpu_save_load_and_cupy_inputs(restore_device, tmp_path):
    cp = _device._gpu_module()
    build, x, y, _ = _scenario_lstm_dense()
    fastlstm.set_device("cuda")
    m = build()
    m.fit(cp.asarray(x), cp.asarray(y), epochs=1, batch_size=8, verbose=0)
    pred = m.predict(x, verbose=0)
    assert isinstance(pred, np.ndarray)
    np.testing.assert_array_equal(m.predict(cp.asarray(x), verbose=0), pred)
    assert isinstance(m(x[:2]), cp.ndarray)
    m.save(tmp_path / "m.keras")
    fastlstm.set_device("cpu")
    cpu = models.load_model(tmp_path / "m.keras")
    assert cpu.device == "cpu"
    np.testing.assert_allclose(cpu.predict(x, verbose=0), pred, rtol=1e-10)
    fastlstm.set_device("cuda")
    again = models.load_model(tmp_path / "m.keras")
    again.fit(x, y, epochs=1, batch_size=8, verbose=0)     # slots restored onto the GPU
    assert all(isinstance(a, cp.ndarray) for arrays in again.optimizer._slots.values()
               for a in arrays)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_gpu_lstm_precision_on_tensor_cores(precision, restore_device):
    # LSTM(precision=...) on the GPU: the tensor-core products ran (cuda_info's description),
    # and the model's predictions and one SGD step's weights are within the precision's error of
    # the same model on the CPU (which computes fp32): tf32 rounds operands to 10 bits (~5e-4
    # relative per product), bf16 to 7 bits (~4e-3); over a few steps and two layers, 1e-2 / 5e-2
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 6, 8)).astype(np.float32)
    y = rng.standard_normal((16, 4)).astype(np.float32)

    def build():
        m = models.Sequential([layers.LSTM(32, precision=precision, return_sequences=True, input_shape=(6, 8)),
                               layers.LSTM(4, precision=precision)])
        m.compile(loss="mse", optimizer=optimizers.SGD(0.05))
        return m
    cpu = _run("cpu", build, x, y, {})
    dev = _run("cuda", build, x, y, {})
    assert f"{precision} tensor cores" in fcuda.info()["last_forward"], fcuda.info()["last_forward"]
    tol = {"tf32": 1e-2, "bf16": 5e-2}[precision]
    err = np.linalg.norm(dev["predict"] - cpu["predict"]) / np.linalg.norm(cpu["predict"])
    assert 0 < err <= tol, err  # (0: the tensor cores did round)
    for a, b in zip(cpu["weights"], dev["weights"]):
        assert np.linalg.norm(b - a) <= tol * np.linalg.norm(a)


def test_gpu_tests_skip_here_with_a_reason():
    """The GPU tests above are marked and skip with the reason where CUDA cannot run."""
    if _device.cuda_unavailable_reason() is None:
        pytest.skip("CUDA is usable here: the GPU tests run")
    assert gpu.kwargs["reason"].startswith("the CUDA device is not usable here: ")
    assert gpu.args == (True,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("D", [1, 7, 16, 33])                  # tails and whole vectors
def test_index_add_rows_on_numpy_is_add_at_bit_for_bit(dtype, D, isa, monkeypatch):
    # NumPy arrays take the kernels' one-pass loop (_core.index_add_rows), every ISA: the same
    # sums in numpy.add.at's order, so the same bits, with repeated and negative indices
    from fastlstm import _core
    calls = []
    real = _core.index_add_rows
    monkeypatch.setattr(_core, "index_add_rows", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(D)
    start = rng.standard_normal((9, D)).astype(dtype)
    index = rng.integers(-9, 9, size=200).astype(np.int32)       # (converted to int64)
    values = (rng.standard_normal((200, D)) * 10.0 ** rng.integers(-6, 6, (200, 1))).astype(dtype)
    expected = start.copy()
    np.add.at(expected, index, values)
    got = start.copy()
    _device.index_add_rows(got, index, values)
    assert calls == [1]
    np.testing.assert_array_equal(got, expected)
    # a layout the kernel does not take (a strided view) still gets numpy.add.at
    wide = np.zeros((9, 2 * D), dtype)
    got_view = wide[:, ::2]
    got_view[...] = start
    _device.index_add_rows(got_view, index, values)
    assert calls == [1]
    np.testing.assert_array_equal(got_view, expected)


def test_index_add_rows_kernel_errors():
    from fastlstm import _core
    target = np.zeros((4, 3), np.float32)
    values = np.ones((2, 3), np.float32)
    with pytest.raises(IndexError, match="index 4 is out of bounds for axis 0 with size 4"):
        _core.index_add_rows(target, np.array([0, 4]), values)
    with pytest.raises(IndexError, match="index -5 is out of bounds"):
        _core.index_add_rows(target, np.array([-5, 0]), values)
    np.testing.assert_array_equal(target, 0)                 # checked before any row changed
    with pytest.raises(TypeError, match="values: expected dtype float32, got float64"):
        _core.index_add_rows(target, np.array([0, 1]), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"values: expected shape \(2, 3\), got \(2, 2\)"):
        _core.index_add_rows(target, np.array([0, 1]), np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="target and values: expected arrays that do not overlap"):
        _core.index_add_rows(target, np.array([0, 1]), target[:2])
    frozen = np.zeros((4, 3), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="target: expected a writeable array"):
        _core.index_add_rows(frozen, np.array([0, 1]), values)
    with pytest.raises(TypeError, match="index: expected dtype int64"):
        _core.index_add_rows(target, np.array([0.0, 1.0]), values)
