"""Shared fixtures for the fastlstm tests.

* ``poison`` (autouse): turns on the extension's output poisoning, so every array the
  C++ core allocates starts as NaN and an element a kernel forgets to write fails
  the comparison against the reference.  A no-op when the extension is not built
  (the pure-NumPy reference tests still run then).
* ``isa``: any test that takes an ``isa`` argument is parametrized over every CPU
  path that is both compiled in and runnable here, and runs with that path selected
  (the previous one is restored afterwards).
* ``rel_err`` / ``make_case``: the comparison metric and a random-input factory,
  handed out as fixtures so the test modules do not import this file.
* ``run_python``: runs code in a fresh interpreter that imports this same fastlstm, with
  chosen environment variables (for what fastlstm reads at import).

FASTLSTM_DEVICE defaults to "cpu" here (set before fastlstm is imported), and KERAS_BACKEND to
"torch" where torch is installed: see below.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
import types

import numpy as np
import pytest

# The model API runs on the GPU by default where one is usable ("auto"). The tests written
# for NumPy arrays pin it to the CPU; tests/test_device.py chooses its devices itself.
os.environ.setdefault("FASTLSTM_DEVICE", "cpu")
# The Keras comparisons (tests/test_keras_compat.py, test_convert.py) are written for Keras 3
# on its torch backend: where torch is installed and no backend was chosen, that one (Keras's
# own default, tensorflow, is not installed by any extra, and keras fails to import without it).
if "KERAS_BACKEND" not in os.environ:
    import importlib.util
    if importlib.util.find_spec("torch") is not None:
        os.environ["KERAS_BACKEND"] = "torch"


# --------------------------------------------------------------------------- helpers

def rel_err(a, b):
    """Relative error ||a - b|| / ||b|| (Frobenius norm, computed in float64).

    When b is exactly zero the relative error is undefined; then a must be exactly
    zero too (returns 0.0) or the result is inf.  NaN anywhere in a gives NaN, which
    fails every ``<= tol`` comparison.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape mismatch {a.shape} vs {b.shape}"
    nb = np.linalg.norm(b.ravel())
    na_b = np.linalg.norm((a - b).ravel())
    if nb == 0.0:
        if np.isnan(a).any():
            return float("nan")
        return 0.0 if not np.any(a) else float("inf")
    return float(na_b / nb)


def make_case(T, B, I, H, dtype=np.float64, *, seed=0, bias=True, h0=True, c0=True,
              lengths=None, reverse=False, dy=True, dh_n=True, dc_n=True):
    """Random LSTM inputs, never zeros.

    Weights are scaled by 1/sqrt(I + H) so the pre-activations are O(1) and the gates
    are not saturated (saturated gates would hide errors in the derivative terms).
    Everything is drawn in float64 and rounded to ``dtype``; ``case.as_float64()``
    gives the same (rounded) values in float64 for the reference.

    Returns a namespace with ``fwd`` (keyword arguments of lstm_forward) and ``bwd``
    (keyword arguments dy, dh_n, dc_n of lstm_backward).
    """
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(I + H)
    cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    fwd = dict(
        x=cast(rng.standard_normal((T, B, I))),
        kernel=cast(rng.standard_normal((I, 4 * H)) * scale),
        recurrent_kernel=cast(rng.standard_normal((H, 4 * H)) * scale),
        bias=cast(rng.standard_normal(4 * H) * 0.5) if bias else None,
        h0=cast(rng.standard_normal((B, H)) * 0.5) if h0 else None,
        c0=cast(rng.standard_normal((B, H))) if c0 else None,
        lengths=None if lengths is None else np.asarray(lengths, dtype=np.int64),
        reverse=reverse,
    )
    bwd = dict(
        dy=cast(rng.standard_normal((T, B, H))) if dy else None,
        dh_n=cast(rng.standard_normal((B, H))) if dh_n else None,
        dc_n=cast(rng.standard_normal((B, H))) if dc_n else None,
    )
    if lengths is not None:
        assert fwd["lengths"].shape == (B,)
    case = types.SimpleNamespace(T=T, B=B, I=I, H=H, dtype=np.dtype(dtype), fwd=fwd, bwd=bwd)

    def as_float64():
        up = lambda a: a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a  # noqa: E731
        return types.SimpleNamespace(
            T=T, B=B, I=I, H=H, dtype=np.dtype(np.float64),
            fwd={k: up(v) for k, v in fwd.items()},
            bwd={k: up(v) for k, v in bwd.items()})

    case.as_float64 = as_float64
    return case


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def run_python():
    """Returns run(code, timeout=120, **variables): code run by a fresh interpreter that imports
    this same fastlstm, with each environment variable set (or removed when None); the
    subprocess.CompletedProcess, output as text."""
    import fastlstm
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastlstm.__file__)))

    def run(code, timeout=120, **variables):
        env = dict(os.environ)
        for name, value in variables.items():
            env.pop(name, None)
            if value is not None:
                env[name] = value
        env["PYTHONPATH"] = os.pathsep.join(
            [pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout,
                              cwd=tempfile.gettempdir())

    return run


def _core_or_none():
    try:
        from fastlstm import _core
    except ImportError:
        return None
    return _core


@pytest.fixture(autouse=True)
def poison():
    """Fill every output the extension allocates with NaN before the kernel runs."""
    core = _core_or_none()
    if core is None:
        yield False
        return
    core.set_poison(True)
    try:
        yield True
    finally:
        core.set_poison(False)


def available_isas():
    """ISA names compiled into this build and runnable on this processor."""
    import fastlstm
    info = fastlstm.cpu_info()
    return [name for name in info["compiled"] if name in info["supported"]]


def pytest_generate_tests(metafunc):
    if "isa" in metafunc.fixturenames:
        isas = available_isas()
        assert isas, "no runnable ISA reported by fastlstm.cpu_info()"
        metafunc.parametrize("isa", isas, indirect=True)


@pytest.fixture
def isa(request):
    """Select the CPU kernel path request.param for the test, restore the old one after."""
    import fastlstm
    from fastlstm import _core
    previous = _core.get_isa()
    _core.set_isa(request.param)
    try:
        assert _core.get_isa() == request.param
        assert fastlstm.cpu_info()["isa"] == request.param
        yield request.param
    finally:
        _core.set_isa(previous)


@pytest.fixture
def num_threads():
    """Returns a setter for fastlstm's thread count; restores the old count afterwards."""
    import fastlstm
    from fastlstm import _core
    previous = fastlstm.get_num_threads()

    def set_(n):
        fastlstm.set_num_threads(n)
        assert fastlstm.get_num_threads() == n
        assert _core.threads_for_next_run() == n

    # n threads asked for, n threads run: no back-off to one thread after calls that found the
    # threads short of cores (a busy machine, or more threads than cores)
    _core.set_backoff(False)
    try:
        yield set_
    finally:
        _core.set_backoff(True)
        fastlstm.set_num_threads(previous)


@pytest.fixture(name="rel_err")
def _rel_err_fixture():
    return rel_err


@pytest.fixture(name="make_case")
def _make_case_fixture():
    return make_case
