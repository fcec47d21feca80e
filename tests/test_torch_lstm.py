"""fastlstm.torch.LSTM against torch.nn.LSTM: parameters, outputs, gradients, DDP.

Every comparison loads torch.nn.LSTM's state dict into fastlstm.torch.LSTM and checks
outputs and gradients (input, h_0, c_0, every parameter) to a relative error of 1e-10 in
float64 and 1e-5 in float32 (||a - b|| / ||b||), over layers 1-2, bidirectional,
batch_first, bias on/off, hx given or not, padded / packed (unsorted lengths with ties,
and enforce_sorted) / unbatched input.
"""

import importlib.util
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastlstm  # noqa: E402
import fastlstm.torch as ftorch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _np(t):
    return t.detach().cpu().numpy()


@pytest.fixture
def native_torch_lstm(monkeypatch):
    """Run torch.nn.LSTM on ATen's native CPU kernels instead of oneDNN (mkldnn).

    torch 2.13 sends float32 CPU LSTMs to oneDNN, which takes ~0.3 s per call at these
    tiny sizes; the native kernels compute the same LSTM in ~2 ms.
    """
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


def _pair(dtype, seed=0, **kwargs):
    """(torch.nn.LSTM, fastlstm.torch.LSTM) with the same weights."""
    torch.manual_seed(seed)
    ref = nn.LSTM(dtype=dtype, **kwargs)
    ours = ftorch.LSTM(dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


# --------------------------------------------------------------------------- import

def _run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def test_fastlstm_imports_without_torch():
    proc = _run_python("import sys\nimport fastlstm\nassert 'torch' not in sys.modules, "
                       "sorted(m for m in sys.modules if m.startswith('torch'))\nprint('ok')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_fastlstm_torch_without_torch_raises_clear_import_error():
    code = ("import sys\nsys.modules['torch'] = None  # as if PyTorch were not installed\n"
            "import fastlstm\n"
            "try:\n    import fastlstm.torch\nexcept ImportError as e:\n    print(e)\n"
            "else:\n    print('no error')\n")
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "fastlstm[torch]"' in proc.stdout, proc.stdout


def test_module_imports_real_torch():
    assert ftorch.torch is torch
    assert ftorch.LSTM.__mro__[1] is torch.nn.Module
    assert "fastlstm.torch" in sys.modules


# --------------------------------------------------------------------------- construction

MODULE_CONFIGS = [
    dict(input_size=3, hidden_size=4),
    dict(input_size=3, hidden_size=4, num_layers=2),
    dict(input_size=3, hidden_size=4, num_layers=3, bidirectional=True),
    dict(input_size=2, hidden_size=5, num_layers=2, bias=False, batch_first=True,
         bidirectional=True, dropout=0.25),
]


@pytest.mark.parametrize("kwargs", MODULE_CONFIGS)
def test_parameters_match_torch(kwargs):
    ref = nn.LSTM(**kwargs)
    ours = ftorch.LSTM(**kwargs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours) == repr(ref)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "mode"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert [[p.shape for p in ws] for ws in ours.all_weights] == \
        [[p.shape for p in ws] for ws in ref.all_weights]
    ours.flatten_parameters()  # a no-op, present for torch code that calls it


@pytest.mark.parametrize("kwargs", MODULE_CONFIGS)
def test_state_dict_round_trip(kwargs):
    ref = nn.LSTM(**kwargs)
    ours = ftorch.LSTM(**kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    for (n, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), n
    back = nn.LSTM(**kwargs)
    back.load_state_dict(ours.state_dict(), strict=True)
    for (n, a), b in zip(back.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("kwargs", MODULE_CONFIGS)
def test_initialisation_like_torch(kwargs):
    torch.manual_seed(123)
    ref = nn.LSTM(**kwargs)
    torch.manual_seed(123)
    ours = ftorch.LSTM(**kwargs)
    bound = 1.0 / np.sqrt(kwargs["hidden_size"])
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert a.abs().max() <= bound, n
        assert a.std() > 0.3 * bound, n      # U(-k, k) has std k/sqrt(3) ~ 0.58 k
        assert torch.equal(a, b), n          # same RNG draws in the same order


def test_dtype_and_device_arguments():
    m = ftorch.LSTM(3, 4, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in m.parameters())
    assert m.double().weight_ih_l0.dtype == torch.float64
    assert m.float().weight_ih_l0.dtype == torch.float32
    with pytest.raises(TypeError, match="float32 or torch.float64"):
        ftorch.LSTM(3, 4, dtype=torch.float16)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(input_size=3, hidden_size=4.0), TypeError, "hidden_size should be of type int"),
    (dict(input_size=3, hidden_size=0), ValueError, "hidden_size must be greater than zero"),
    (dict(input_size=3.5, hidden_size=4), TypeError, "input_size should be of type int"),
    (dict(input_size=0, hidden_size=4), ValueError, "input_size must be greater than zero"),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError, "num_layers must be greater"),
    (dict(input_size=3, hidden_size=4, num_layers=1.0), TypeError, "num_layers should be"),
    (dict(input_size=3, hidden_size=4, num_layers=True), TypeError, "num_layers should be"),
    (dict(input_size=3, hidden_size=4, dropout=1.5), ValueError, r"dropout should be a number"),
    (dict(input_size=3, hidden_size=4, dropout=-0.1), ValueError, r"dropout should be a number"),
    (dict(input_size=3, hidden_size=4, dropout=True), ValueError, r"dropout should be a number"),
    (dict(input_size=3, hidden_size=4, dropout="0.5"), ValueError, r"dropout should be a number"),
    (dict(input_size=3, hidden_size=4, proj_size=-1), ValueError, "proj_size should be"),
    (dict(input_size=3, hidden_size=4, proj_size=4), ValueError, "smaller than hidden_size"),
    (dict(input_size=3, hidden_size=4, proj_size=2), NotImplementedError, "proj_size > 0"),
    (dict(input_size=3, hidden_size=4, bidirectional="yes"), TypeError, "bidirectional"),
    (dict(input_size=3, hidden_size=4, batch_first=None), TypeError, "batch_first"),
    (dict(input_size=3, hidden_size=4, precision="fp16"), ValueError,
     r"precision: expected one of \('fp32', 'tf32', 'bf16', 'tf32x3'\), got 'fp16'"),
    (dict(input_size=3, hidden_size=4, precision=None), ValueError, "precision: expected one of"),
])
def test_constructor_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ftorch.LSTM(**kwargs)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        ftorch.LSTM(3, 4, dropout=0.3)


# --------------------------------------------------------------------------- forward/backward

T_, B_, I_, H_ = 6, 4, 3, 5
UNSORTED_LENGTHS = [4, 6, 1, 6]     # unsorted, with a tie
SORTED_LENGTHS = [6, 6, 4, 1]


def _make_inputs(mode, batch_first, num_states, dtype, seed=1):
    """Leaf tensors (x, h0, c0) for a mode: padded / packed / packed_sorted / unbatched."""
    g = torch.Generator().manual_seed(seed)
    if mode == "unbatched":
        x = torch.randn(T_, I_, generator=g, dtype=dtype)
        state_shape = (num_states, H_)
    else:
        x = torch.randn((B_, T_, I_) if batch_first else (T_, B_, I_), generator=g, dtype=dtype)
        state_shape = (num_states, B_, H_)
    h0 = torch.randn(state_shape, generator=g, dtype=dtype) * 0.5
    c0 = torch.randn(state_shape, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, h0, c0)]


def _model_input(x, mode, batch_first):
    if mode == "packed":
        return pack_padded_sequence(x, torch.tensor(UNSORTED_LENGTHS), batch_first=batch_first,
                                    enforce_sorted=False)
    if mode == "packed_sorted":
        return pack_padded_sequence(x, torch.tensor(SORTED_LENGTHS), batch_first=batch_first)
    return x


def _run(model, x, h0, c0, mode, batch_first, use_hx):
    inp = _model_input(x, mode, batch_first)
    out, (h_n, c_n) = model(inp, (h0, c0) if use_hx else None)
    if mode.startswith("packed"):
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out, name), getattr(inp, name)
            assert (a is None and b is None) or torch.equal(a, b)
        out = out.data
    return out, h_n, c_n


FWD_CONFIGS = list(itertools.product(
    (1, 2),                                           # num_layers
    (False, True),                                    # bidirectional
    ("padded", "packed", "packed_sorted", "unbatched"),
    (False, True),                                    # batch_first
    (True, False),                                    # bias
    (True, False),                                    # hx given
))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("num_layers, bidirectional, mode, batch_first, bias, use_hx", FWD_CONFIGS)
def test_matches_torch_lstm(num_layers, bidirectional, mode, batch_first, bias, use_hx,
                            dtype_name, rel_err, native_torch_lstm):
    _compare_with_torch(num_layers, bidirectional, mode, batch_first, bias, use_hx,
                        DTYPES[dtype_name], rel_err)


@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_matches_torch_lstm_default_cpu_path(mode, rel_err):
    """Also against torch's default float32 CPU path (oneDNN in torch 2.13)."""
    _compare_with_torch(2, True, mode, True, True, True, torch.float32, rel_err)


def _compare_with_torch(num_layers, bidirectional, mode, batch_first, bias, use_hx, dtype,
                        rel_err):
    tol = TOL[dtype]
    ref, ours = _pair(dtype, input_size=I_, hidden_size=H_, num_layers=num_layers, bias=bias,
                      batch_first=batch_first, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    leaves = _make_inputs(mode, batch_first, D * num_layers, dtype)
    results = []
    for model in (ours, ref):
        outs = _run(model, *leaves, mode, batch_first, use_hx)
        g = torch.Generator().manual_seed(7)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=dtype)).sum() for o in outs)
        wrt = [leaves[0]] + (leaves[1:] if use_hx else []) + list(model.parameters())
        grads = torch.autograd.grad(loss, wrt)
        results.append((outs, grads))
    (o_ours, g_ours), (o_ref, g_ref) = results
    for name, a, b in zip(("output", "h_n", "c_n"), o_ours, o_ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel_err(_np(a), _np(b)) <= tol, name
    names = ["x"] + (["h0", "c0"] if use_hx else []) + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g_ours, g_ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel_err(_np(a), _np(b)) <= tol, f"grad {name}: {rel_err(_np(a), _np(b))}"


def test_packed_hidden_state_in_original_batch_order(rel_err):
    """h_n of a packed batch equals h at each sequence's own last step, original order."""
    ours = ftorch.LSTM(I_, H_, dtype=torch.float64)
    x = torch.randn(T_, B_, I_, dtype=torch.float64)
    out, (h_n, _) = ours(_model_input(x, "packed", False))
    for b, n in enumerate(UNSORTED_LENGTHS):
        _, (h_b, _) = ours(x[:n, b])
        assert rel_err(_np(h_n[0, b]), _np(h_b[0])) <= 1e-12


def test_module_training_matches_torch(rel_err):
    """A few SGD steps with the same start give the same weights as torch.nn.LSTM."""
    ref, ours = _pair(torch.float64, input_size=I_, hidden_size=H_, num_layers=2,
                      bidirectional=True, batch_first=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B_, T_, I_, generator=g, dtype=torch.float64)
    y = torch.randn(B_, T_, 2 * H_, generator=g, dtype=torch.float64)
    for model in (ref, ours):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(4):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x)[0], y).backward()
            opt.step()
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert rel_err(_np(a), _np(b)) <= 1e-10, n


# --------------------------------------------------------------------------- gradcheck

GRADCHECK_CASES = [
    # (num_layers, bidirectional, mode, batch_first, bias, use_hx)
    (1, False, "padded", False, True, True),
    (1, False, "padded", True, True, False),
    (2, True, "padded", False, True, True),
    (1, True, "packed", False, True, True),
    (2, False, "packed", True, False, True),
    (2, True, "packed_sorted", False, True, False),
    (1, True, "unbatched", False, True, True),
]


@pytest.mark.parametrize("num_layers, bidirectional, mode, batch_first, bias, use_hx",
                         GRADCHECK_CASES)
def test_gradcheck(num_layers, bidirectional, mode, batch_first, bias, use_hx):
    model = ftorch.LSTM(I_, 3, num_layers=num_layers, bias=bias, batch_first=batch_first,
                        bidirectional=bidirectional, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    D = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(5)
    if mode == "unbatched":
        x = torch.randn(T_, I_, generator=g, dtype=torch.float64)
        state_shape = (D * num_layers, 3)
    else:
        x = torch.randn((B_, T_, I_) if batch_first else (T_, B_, I_), generator=g,
                        dtype=torch.float64)
        state_shape = (D * num_layers, B_, 3)
    h0 = torch.randn(state_shape, generator=g, dtype=torch.float64) * 0.5
    c0 = torch.randn(state_shape, generator=g, dtype=torch.float64)
    inputs = [x] + ([h0, c0] if use_hx else []) + params
    inputs = [t.detach().clone().requires_grad_() for t in inputs]

    def f(*args):
        x = args[0]
        hx = tuple(args[1:3]) if use_hx else None
        ps = args[3:] if use_hx else args[1:]
        inp = _model_input(x, mode, batch_first)
        out, (h_n, c_n) = torch.func.functional_call(model, dict(zip(names, ps)), (inp, hx))
        return (out.data if isinstance(out, PackedSequence) else out), h_n, c_n

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------- dropout

def test_dropout_eval_matches_torch(rel_err):
    ref, ours = _pair(torch.float64, input_size=I_, hidden_size=H_, num_layers=3, dropout=0.5,
                      bidirectional=True)
    ref.eval()
    ours.eval()
    x = torch.randn(T_, B_, I_, dtype=torch.float64)
    (o, (h, c)), (o_ref, (h_ref, c_ref)) = ours(x), ref(x)
    for a, b in ((o, o_ref), (h, h_ref), (c, c_ref)):
        assert rel_err(_np(a), _np(b)) <= 1e-10


def _layers_of(model):
    """Single-layer fastlstm LSTMs holding each layer's weights of `model`."""
    D = 2 if model.bidirectional else 1
    layers = []
    for k in range(model.num_layers):
        layer = ftorch.LSTM(model.input_size if k == 0 else D * model.hidden_size,
                            model.hidden_size, bidirectional=model.bidirectional,
                            dtype=model.weight_ih_l0.dtype)
        layer.load_state_dict({n.replace(f"_l{k}", "_l0"): p
                               for n, p in model.state_dict().items() if f"_l{k}" in n})
        layers.append(layer)
    return layers


def test_dropout_training_is_dropout_between_layers(rel_err):
    """Training output == layers composed with F.dropout between them (not after the last)."""
    p = 0.4
    model = ftorch.LSTM(I_, H_, num_layers=3, dropout=p, bidirectional=True,
                        dtype=torch.float64)
    layers = _layers_of(model)
    x = torch.randn(T_, B_, I_, dtype=torch.float64, requires_grad=True)

    torch.manual_seed(11)
    out, (h_n, c_n) = model(x)
    torch.manual_seed(11)
    y, hs, cs = x, [], []
    for k, layer in enumerate(layers):
        y, (h, c) = layer(y)
        hs.append(h)
        cs.append(c)
        if k < len(layers) - 1:
            y = torch.nn.functional.dropout(y, p, training=True)
    assert rel_err(_np(out), _np(y)) <= 1e-14
    assert rel_err(_np(h_n), _np(torch.cat(hs))) <= 1e-14
    assert rel_err(_np(c_n), _np(torch.cat(cs))) <= 1e-14
    gx_model, = torch.autograd.grad(out.sum(), x)
    gx_layers, = torch.autograd.grad(y.sum(), x)
    assert rel_err(_np(gx_model), _np(gx_layers)) <= 1e-12

    model.eval()
    eval_out = model(x)[0]
    assert rel_err(_np(out), _np(eval_out)) > 1e-3        # dropout changed the output
    model.train()
    torch.manual_seed(12)
    assert rel_err(_np(model(x)[0]), _np(out)) > 1e-3      # a new mask each call


def test_dropout_one_zeroes_the_next_layers_input(rel_err):
    model = ftorch.LSTM(I_, H_, num_layers=2, dropout=1.0, dtype=torch.float64)
    layers = _layers_of(model)
    x = torch.randn(T_, B_, I_, dtype=torch.float64)
    out = model(x)[0]
    expected = layers[1](torch.zeros(T_, B_, H_, dtype=torch.float64))[0]
    assert rel_err(_np(out), _np(expected)) <= 1e-14


def test_dropout_statistics_like_torch():
    """In training mode the output spreads around the eval output as torch.nn.LSTM's does
    (independent masks: different seeds; 98k elements, the two RMS agree to ~1.5%)."""
    ref, ours = _pair(torch.float64, input_size=I_, hidden_size=16, num_layers=2, dropout=0.3)
    x = torch.randn(T_, 256, I_, dtype=torch.float64)
    with torch.no_grad():
        spread = []
        for seed, model in enumerate((ref, ours)):
            model.eval()
            base = model(x)[0]
            model.train()
            torch.manual_seed(100 + seed)
            diffs = [(model(x)[0] - base) for _ in range(4)]
            spread.append(torch.stack(diffs).pow(2).mean().sqrt().item())
    assert spread[1] > 0
    assert abs(spread[0] - spread[1]) <= 0.05 * spread[0], spread


def test_dropout_training_matches_torch_with_same_seed(rel_err):
    """Padded input: with the same RNG state, training output and gradients equal
    torch.nn.LSTM's, since both draw one dropout mask over each inner layer's (T, B, D*H)
    output (true of torch 2.13's native CPU LSTM; a torch that draws its masks differently
    would fail this test while the statistical one above still holds)."""
    ref, ours = _pair(torch.float64, input_size=I_, hidden_size=H_, num_layers=3, dropout=0.4,
                      bidirectional=True)
    x = torch.randn(T_, B_, I_, dtype=torch.float64, requires_grad=True)
    results = []
    for model in (ours, ref):
        torch.manual_seed(21)
        out, (h_n, c_n) = model(x)
        grads = torch.autograd.grad(out.pow(2).sum() + h_n.sum() + c_n.sum(),
                                    [x] + list(model.parameters()))
        results.append([out, h_n, c_n, *grads])
    for a, b in zip(*results):
        assert rel_err(_np(a), _np(b)) <= 1e-10


# --------------------------------------------------------------------------- misc behaviour

def test_dtypes_of_outputs_and_gradients():
    for dtype in (torch.float32, torch.float64):
        m = ftorch.LSTM(I_, H_, num_layers=2, dtype=dtype)
        x = torch.randn(T_, B_, I_, dtype=dtype, requires_grad=True)
        out, (h, c) = m(x)
        assert out.dtype == h.dtype == c.dtype == dtype
        (out.sum() + h.sum() + c.sum()).backward()
        assert x.grad.dtype == dtype
        assert all(p.grad.dtype == dtype and p.grad.shape == p.shape for p in m.parameters())
        assert all(p.grad.is_contiguous() for p in m.parameters())
        assert m.bias_ih_l0.grad is not m.bias_hh_l0.grad
        assert torch.equal(m.bias_ih_l0.grad, m.bias_hh_l0.grad)


@pytest.mark.parametrize("packed", [False, True])
def test_autocast_runs_in_the_weights_dtype(packed, rel_err):
    """Under torch.autocast (AMP) torch.nn.LSTM takes the bfloat16/float16 activations of
    autocast regions; the module casts them (and hx) to its weights' dtype and computes there,
    with gradients reaching the layers before it."""
    torch.manual_seed(3)
    lin = nn.Linear(I_, I_)
    m = ftorch.LSTM(I_, H_, num_layers=2, bidirectional=True)
    x = torch.randn(T_, B_, I_)
    hx = (torch.randn(4, B_, H_), torch.randn(4, B_, H_))
    lengths = torch.tensor([6, 2, 6, 1])

    def run(cast):
        lin.zero_grad()
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = lin(x)
            h = tuple(t.bfloat16() for t in hx)
        assert y.dtype == torch.bfloat16
        if cast:         # the reference: the same activations cast by hand, outside autocast
            y, h = y.float(), tuple(t.float() for t in h)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not cast):
            inp = pack_padded_sequence(y, lengths, enforce_sorted=False) if packed else y
            out, (h_n, c_n) = m(inp, h)
        out = out.data if packed else out
        assert out.dtype == h_n.dtype == c_n.dtype == torch.float32
        (out.pow(2).sum() + h_n.sum() + c_n.sum()).backward()
        return [out, h_n, c_n, lin.weight.grad] + [p.grad for p in m.parameters()]

    got, want = run(cast=False), run(cast=True)
    for a, b in zip(got, want):
        assert rel_err(_np(a.float()), _np(b.float())) <= 1e-5


def test_autocast_casts_only_half_precision():
    # a float64 input to a float32 module is refused under autocast as outside it (torch
    # refuses it too): only the float16/bfloat16 activations of autocast regions are cast
    m = ftorch.LSTM(I_, H_)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match=r"input dtype \(torch.float64\) does not match"):
            m(torch.randn(T_, B_, I_, dtype=torch.float64))
        assert m(torch.randn(T_, B_, I_).half())[0].dtype == torch.float32


def test_dtype_errors_suggest_only_dtypes_the_module_takes():
    m = ftorch.LSTM(I_, H_)
    with pytest.raises(ValueError, match=r"input dtype \(torch.bfloat16\) does not match the "
                                         r"weight dtype \(torch.float32\). Convert the tensor: "
                                         r"\.to\(torch.float32\) \(fastlstm.torch.LSTM computes "
                                         r"in float32 or float64 only\)$"):
        m(torch.randn(T_, B_, I_).bfloat16())
    with pytest.raises(ValueError, match=r"or the model: model.to\(torch.float64\)$"):
        m(torch.randn(T_, B_, I_, dtype=torch.float64))


def test_no_grad_and_inference_mode(rel_err):
    m = ftorch.LSTM(I_, H_, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T_, B_, I_, dtype=torch.float64)
    out, (h, c) = m(x)
    assert out.requires_grad
    with torch.no_grad():
        out2, (h2, c2) = m(x)
    with torch.inference_mode():
        out3, _ = m(x)
    assert not out2.requires_grad and out2.grad_fn is None
    assert rel_err(_np(out2), _np(out)) == 0.0
    assert rel_err(_np(out3), _np(out)) == 0.0


# --------------------------------------------------------------------------- cache_weights

def _packed_calls(monkeypatch):
    """Record the `packed` argument of every ops.lstm_forward call."""
    seen = []
    real = fastlstm.ops.lstm_forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("packed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fastlstm.ops, "lstm_forward", spy)
    return seen


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cache_weights_matches_and_follows_tracked_changes(dtype, native_torch_lstm, monkeypatch, rel_err):
    # With cache_weights() on, inference calls reuse converted + packed weights, refreshed
    # whenever a weight changes in place through a tracked operation or is replaced.
    dt = DTYPES[dtype]
    ref, ours = _pair(dt, seed=3, input_size=I_, hidden_size=H_, num_layers=2, bidirectional=True)
    assert ours.cache_weights() is ours
    seen = _packed_calls(monkeypatch)
    x = torch.randn(T_, B_, I_, dtype=dt)

    def check():
        with torch.no_grad():
            a, (h, c) = ours(x)
            b, (hr, cr) = ref(x)
        for u, v in ((a, b), (h, hr), (c, cr)):
            assert rel_err(_np(u), _np(v)) <= TOL[dt]
        return a

    first = check()
    assert len(seen) == 4 and all(p is not None for p in seen)     # 2 layers x 2 directions
    assert torch.equal(check(), first)
    assert seen[4] is seen[0]                                       # the same packed weights
    for model in (ours, ref):                                       # an optimizer step
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        model(x)[0].square().sum().backward()
        opt.step()
    check()
    assert seen[-4] is not seen[0]
    for model in (ours, ref):    # a fused step: changes the parameters, not their versions
        opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
        model(x)[0].sum().backward()
        versions = [p._version for p in model.parameters()]
        opt.step()
        assert [p._version for p in model.parameters()] == versions
    before = seen[-1]
    check()
    assert seen[-1] is not before
    ours.load_state_dict(ref.state_dict())                          # load_state_dict (copy_)
    with torch.no_grad():
        for model in (ours, ref):
            model.bias_hh_l1_reverse.mul_(-1)                       # in place under no_grad
    check()
    for model in (ours, ref):                                       # a replaced parameter
        model.weight_hh_l0 = nn.Parameter(model.weight_hh_l0.detach() * 0.5)
    check()
    for model in (ours, ref):                                       # through .data: not seen
        model.weight_ih_l0.data.mul_(1.5)
    ours.cache_weights()                                            # ... until asked again
    check()


def test_cache_weights_off_and_training_unaffected(monkeypatch, rel_err):
    ref, ours = _pair(torch.float64, seed=4, input_size=I_, hidden_size=H_)
    seen = _packed_calls(monkeypatch)
    x = torch.randn(T_, B_, I_, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        ours(x)
    assert seen == [None]                                           # off by default
    ours.cache_weights()
    out = ours(x)[0]                                                # needs grad: autograd path
    out.sum().backward()
    assert seen[-1] is None and out.requires_grad
    ref_out = ref(x.detach().requires_grad_())[0]
    assert rel_err(_np(out), _np(ref_out)) <= TOL[torch.float64]
    ours.cache_weights(False)
    with torch.no_grad():
        ours(x)
    assert seen[-1] is None
    with pytest.raises(TypeError, match="enabled"):
        ours.cache_weights("yes")


def test_cache_weights_with_inference_tensors(monkeypatch, rel_err):
    # A module built and loaded under inference_mode has inference tensors as weights: no
    # version counter to see changes by, so calls convert them each time (no cache, no error),
    # and a change made in place there is seen by the next call.
    seen = _packed_calls(monkeypatch)
    x = torch.randn(T_, B_, I_, dtype=torch.float64)
    with torch.inference_mode():
        ref = torch.nn.LSTM(I_, H_, dtype=torch.float64)
        ours = ftorch.LSTM(I_, H_, dtype=torch.float64).cache_weights()
        ours.load_state_dict(ref.state_dict())
        assert ours.weight_ih_l0.is_inference()
        for _ in range(2):
            assert rel_err(_np(ours(x)[0]), _np(ref(x)[0])) <= TOL[torch.float64]
        for model in (ours, ref):
            model.weight_hh_l0.mul_(0.5)
        assert rel_err(_np(ours(x)[0]), _np(ref(x)[0])) <= TOL[torch.float64]
    assert seen == [None, None, None] and ours._weight_cache == {}


def test_cache_weights_survives_copy_and_pickle(monkeypatch):
    import copy
    import io
    _, ours = _pair(torch.float32, seed=5, input_size=I_, hidden_size=H_)
    ours.cache_weights()
    x = torch.randn(T_, B_, I_)
    with torch.no_grad():
        y = ours(x)[0]
    twin = copy.deepcopy(ours)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for m in (twin, loaded):
        assert m._weight_cache == {}                                # caching on, nothing cached
        with torch.no_grad():
            assert torch.equal(m(x)[0], y)


@pytest.mark.parametrize("shape", [(1024, 256), (33, 7), (1, 40), (40, 1), (0, 5), (31, 0),
                                   (16, 16), (8, 8), (4, 4), (17, 33), (65, 129), (300, 257),
                                   (256, 1024)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_core_transpose(shape, dtype, isa, num_threads):
    # The vector transpose that moves weights between torch's and fastlstm's layouts, on every
    # instruction set: shapes of whole tiles (16 x 16 floats on AVX-512, 8 x 8 on AVX2, ...),
    # partial tiles at either edge, and some (300 x 257 and up) large enough for two threads.
    # Outputs are poisoned (conftest), so an element left unwritten fails the comparison.
    from fastlstm import _core
    num_threads(2)
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    t = _core.transpose(a)
    assert t.dtype == dtype and t.flags.c_contiguous and t.shape == shape[::-1]
    np.testing.assert_array_equal(t, a.T)


def test_core_transpose_errors():
    from fastlstm import _core
    with pytest.raises(ValueError, match="a: expected a 2-D array"):
        _core.transpose(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="a: expected dtype float32 or float64"):
        _core.transpose(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="a: expected a C-contiguous array"):
        _core.transpose(np.zeros((2, 3), np.float32).T)


def test_time_major_contiguous_input_is_not_copied(monkeypatch):
    seen = []
    real = fastlstm.ops.lstm_forward

    def spy(x, *args, **kwargs):
        seen.append(x)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(fastlstm.ops, "lstm_forward", spy)
    m = ftorch.LSTM(I_, H_, dtype=torch.float32)
    x = torch.randn(T_, B_, I_, requires_grad=True)
    m(x)[0].sum().backward()
    with torch.no_grad():
        m(x)
    assert len(seen) == 2
    for arr in seen:
        assert np.shares_memory(arr, x.detach().numpy())


def test_backward_twice_with_retain_graph():
    m = ftorch.LSTM(I_, H_, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T_, B_, I_, dtype=torch.float64, requires_grad=True)
    out = m(x)[0].sum()
    out.backward(retain_graph=True)
    first = x.grad.clone()
    out.backward()
    assert torch.allclose(x.grad, 2 * first, rtol=1e-14, atol=0)


def test_double_backward_raises():
    """A gradient penalty through the LSTM fails loudly instead of dropping its term."""
    m = ftorch.LSTM(I_, H_, dtype=torch.float64)
    x = torch.randn(T_, B_, I_, dtype=torch.float64, requires_grad=True)
    loss = m(x)[0].pow(2).sum()
    gx, = torch.autograd.grad(loss, x, create_graph=True)
    assert gx.requires_grad
    with pytest.raises(RuntimeError, match="does not support double backward"):
        (loss + gx.pow(2).sum()).backward()
    # create_graph=True is fine as long as the LSTM's gradient is not differentiated again
    gx2, = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    assert torch.allclose(gx2.detach(), gx.detach(), rtol=1e-14, atol=0)


def test_inplace_change_of_saved_input_is_detected():
    m = ftorch.LSTM(I_, H_, dtype=torch.float64)
    x = torch.randn(T_, B_, I_, dtype=torch.float64)
    out = m(x)[0].sum()
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_empty_batch_like_torch():
    ref, ours = _pair(torch.float32, input_size=I_, hidden_size=H_, num_layers=2)
    x = torch.randn(T_, 0, I_)
    a, (h, c) = ours(x)
    b, (h_ref, _) = ref(x)
    assert a.shape == b.shape and h.shape == h_ref.shape


# --------------------------------------------------------------------------- errors

def _err_cases():
    m = ftorch.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    z = torch.zeros
    return [
        (m, (torch.randn(5, 2, 3, 1),), ValueError, "Expected input to be 2D or 3D, got 4D"),
        (m, (torch.randn(5, 2, 6),), RuntimeError, "Expected 3, got 6"),
        (m, (torch.randn(0, 2, 3),), RuntimeError, "sequence length to be larger than 0"),
        (m, (x, (z(2, 2, 5), z(2, 2, 4))), RuntimeError,
         r"Expected hidden\[0\] size \(2, 2, 4\), got \[2, 2, 5\]"),
        (m, (x, (z(2, 2, 4), z(2, 3, 4))), RuntimeError, r"Expected hidden\[1\] size"),
        (m, (x, (z(2, 4), z(2, 4))), RuntimeError, "For batched 3-D input, hx and cx should"),
        (m, (torch.randn(5, 3), (z(2, 1, 4), z(2, 1, 4))), RuntimeError,
         "For unbatched 2-D input"),
        (m, (x, z(2, 2, 4)), TypeError, r"hx: expected a tuple \(h_0, c_0\)"),
        (m, (x, (z(2, 2, 4),)), TypeError, r"hx: expected a tuple \(h_0, c_0\)"),
        (m, (x.double(),), ValueError, r"input dtype \(torch.float64\) does not match"),
        (m, (torch.ones(5, 2, 3, dtype=torch.int64),), ValueError, "does not match"),
        (m, (x, (z(2, 2, 4, dtype=torch.float64), z(2, 2, 4))), ValueError,
         r"hx\[0\] \(h_0\) dtype"),
        (m, (x.numpy(),), TypeError, "expected a torch.Tensor"),
        (m, (pack_padded_sequence(torch.randn(5, 2, 6), torch.tensor([5, 3])),), RuntimeError,
         "Expected 3, got 6"),
        (m, (PackedSequence(torch.randn(5, 3), torch.tensor([3, 1])),), ValueError,
         "data has 5 rows but batch_sizes sum to 4"),
        (m, (PackedSequence(torch.randn(4, 3), torch.tensor([1, 3])),), ValueError,
         "non-increasing"),
        (ftorch.LSTM(3, 4).to(torch.float16), (torch.randn(5, 2, 3).half(),), TypeError,
         "supports float32 and float64 weights"),
        (ftorch.LSTM(3, 4, device="meta"), (x,), RuntimeError,
         "runs on the CPU or a CUDA device, but parameter weight_ih_l0 is on meta"),
        (ftorch.LSTM(3, 4), (x.to("meta"),), RuntimeError,
         "Input and parameter tensors are not at the same device, found input tensor at meta and "
         "parameter tensor at cpu"),
        (ftorch.LSTM(3, 4), (x, (z(1, 2, 4).to("meta"), z(1, 2, 4))), RuntimeError,
         r"found hx\[0\] \(h_0\) tensor at meta and parameter tensor at cpu"),
        (ftorch.LSTM(3, 4), (PackedSequence(torch.randn(4, 3).to("meta"), torch.tensor([2, 2])),),
         RuntimeError, r"found input \(PackedSequence.data\) tensor at meta"),
        (_split_devices(), (x,), RuntimeError,
         "parameter weight_hh_l0 is on meta, but weight_ih_l0 is on cpu; all parameters must "
         "be on one device"),
        (ftorch.LSTM(3, 4, precision="bf16", dtype=torch.float64), (x.double(),), ValueError,
         r"precision='bf16' takes float32 weights .*got torch.float64"),
    ]


def _split_devices():
    m = ftorch.LSTM(3, 4)
    m.weight_hh_l0 = nn.Parameter(m.weight_hh_l0.detach().to("meta"))
    return m


@pytest.mark.parametrize("index", range(len(_err_cases())))
def test_forward_errors(index):
    model, args, exc, match = _err_cases()[index]
    with pytest.raises(exc, match=match):
        model(*args)


# --------------------------------------------------------------------------- distributed

def _loopback_interface():
    for _, name in socket.if_nameindex():
        if name.startswith("lo"):
            return name
    pytest.skip("no loopback network interface found")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo over loopback on Linux")
def test_ddp_two_processes_match_full_batch_training(tmp_path, rel_err):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    worker_path = Path(__file__).with_name("_ddp_worker.py")
    spec = importlib.util.spec_from_file_location("_fastlstm_ddp_worker", worker_path)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)

    dtype, steps, lr = torch.float64, 4, 0.3
    torch.manual_seed(0)
    model = worker.build_model(dtype)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, T_, 3, generator=g, dtype=dtype)
    y = torch.randn(8, 1, generator=g, dtype=dtype)
    torch.save({"state": initial, "x": x, "y": y, "steps": steps, "lr": lr},
               tmp_path / "setup.pt")

    env = dict(os.environ, GLOO_SOCKET_IFNAME=_loopback_interface(), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(worker_path), str(rank), "2", str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for rank in range(2)]
    deadline = time.monotonic() + 120
    logs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            logs.append(out.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        pytest.fail("DDP workers did not finish within 120 s (hung?)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{log}"

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    model.load_state_dict(initial)
    losses = worker.train(model, x, y, steps, lr)
    single = model.state_dict()
    assert losses[-1] < losses[0]
    for name, w in single.items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        assert rel_err(_np(ranks[0]["state"][name]), _np(w)) <= 1e-6, name
        assert not torch.equal(w, initial[name]), name          # training moved every weight
    # each rank's loss is the mean over its half; their average is the full-batch loss
    for step in range(steps):
        mean_loss = (ranks[0]["losses"][step] + ranks[1]["losses"][step]) / 2
        assert abs(mean_loss - losses[step]) <= 1e-6 * abs(losses[step])


def test_module_pickled_before_precision_existed_has_repr_and_runs():
    # a module saved (torch.save / pickle) before the precision argument existed has no
    # "precision" in its __dict__: repr, forward and deepcopy still work, as fp32
    import copy
    import pickle
    m = ftorch.LSTM(3, 4)
    del m.__dict__["precision"]
    old = pickle.loads(pickle.dumps(m))
    assert repr(old) == "LSTM(3, 4)" and old.precision == "fp32"
    assert copy.deepcopy(old)(torch.randn(2, 1, 3))[0].shape == (2, 1, 4)


@pytest.mark.parametrize("precision", ["tf32", "bf16", "tf32x3"])
def test_precision_on_the_cpu_computes_as_fp32(precision, native_torch_lstm):
    # no tensor cores on the CPU: a module with a tensor-core precision (trained so on the GPU,
    # then moved with .cpu()) gives the fp32 module's outputs and gradients, bitwise
    results = []
    for p in ("fp32", precision):
        torch.manual_seed(4)
        m = ftorch.LSTM(3, 5, num_layers=2, bidirectional=True, precision=p)
        x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(5), requires_grad=True)
        out, (h, c) = m(x)
        (out.sum() + h.square().sum()).backward()
        with torch.no_grad():
            m.cache_weights()
            inference = m(x)[0]
        results.append([out, h, c, x.grad, inference] + [q.grad for q in m.parameters()])
    assert "precision" in repr(m) and precision in repr(m)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_torch_compile_runs_it_with_graph_breaks(rel_err):
    # torch.compile (dynamo; the "eager" backend keeps the test fast, inductor behaves alike: the
    # same outputs were seen) cannot trace into fastlstm's kernels: the module's forward is
    # marked torch.compiler.disable, so dynamo calls it as it is (no tracing into its Python,
    # no warning about fastlstm's pybind builtins) and still compiles the layers around it:
    # outputs and input gradients match torch.nn.LSTM's
    import warnings

    class Net(torch.nn.Module):
        def __init__(self, lstm):
            super().__init__()
            self.lstm = lstm
            self.head = nn.Linear(2 * H_, 3)

        def forward(self, x):
            y, _ = self.lstm(torch.tanh(x))
            return self.head(y[:, -1])

    torch.manual_seed(0)
    ref = Net(nn.LSTM(I_, H_, num_layers=2, bidirectional=True, batch_first=True))
    ours = Net(ftorch.LSTM(I_, H_, num_layers=2, bidirectional=True, batch_first=True))
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(B_, T_, I_, requires_grad=True)
    results = []
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    try:
        for model in (torch.compile(ours, backend=backend), ref):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = model(x)
            assert not [w for w in caught if "Dynamo" in str(w.message)], \
                [str(w.message)[:200] for w in caught]
            (g,) = torch.autograd.grad(out.square().sum(), [x])
            results.append((out.detach().numpy(), g.numpy()))
    finally:
        torch._dynamo.reset()
    # the code around the LSTM was compiled (tanh before it, the head after it), and no graph
    # holds a piece of the LSTM's own forward
    code = "\n".join(gm.code for gm in graphs)
    assert "tanh" in code and "linear" in code, code
    assert "transpose" not in code and "contiguous" not in code, code
    for a, b in zip(*results):
        assert rel_err(a, b) <= TOL[torch.float32]


def test_backward_skips_dx_of_an_input_without_grad(monkeypatch):
    # The first layer's input is data (no requires_grad): its dx product is skipped
    # (ops.lstm_backward(need_dx=False)); the second layer's input is the first's output and
    # gets one. The gradients still match torch.nn.LSTM.
    calls = []
    real = ftorch.ops.lstm_backward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("need_dx", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(ftorch.ops, "lstm_backward", spy)
    ref, ours = _pair(torch.float64, input_size=5, hidden_size=7, num_layers=2, batch_first=True)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    for requires_grad in (False, True):
        calls.clear()
        xs = [x.clone().requires_grad_(requires_grad) for _ in range(2)]
        outs = [m(xi)[0] for m, xi in zip((ref, ours), xs)]
        w = torch.randn_like(outs[0])
        for m, out in zip((ref, ours), outs):
            m.zero_grad()
            (out * w).sum().backward()
        assert sorted(calls) == ([False, True] if not requires_grad else [True, True])
        for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
            err = (p.grad - q.grad).norm() / p.grad.norm()
            assert err <= TOL[torch.float64], name
        if requires_grad:
            assert (xs[0].grad - xs[1].grad).norm() / xs[0].grad.norm() <= TOL[torch.float64]
        else:
            assert xs[1].grad is None


@pytest.mark.parametrize("which", ["one", "all"])
def test_parametrized_weights(which):
    # torch.nn.utils.parametrize moves a weight into a submodule (parametrizations.<name>.original):
    # the module still runs on the parametrized values and trains the originals, as torch.nn.LSTM
    from torch.nn.utils import parametrize

    class Half(nn.Module):
        def forward(self, w):
            return w * 0.5

    ref, ours = _pair(torch.float64, input_size=3, hidden_size=4)
    names = ["weight_hh_l0"] if which == "one" else [n for n, _ in ref.named_parameters()]
    for m in (ref, ours):
        for name in names:
            parametrize.register_parametrization(m, name, Half())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    outs = [m(x)[0] for m in (ref, ours)]
    assert (outs[0] - outs[1]).norm() / outs[0].norm() <= TOL[torch.float64]
    for out in outs:
        out.sum().backward()
    g = [m.parametrizations.weight_hh_l0.original.grad for m in (ref, ours)]
    assert (g[0] - g[1]).norm() / g[0].norm() <= TOL[torch.float64]
