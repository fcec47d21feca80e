"""CPU path selection (cpu_info, _core.set_isa, FASTLSTM_ISA) and thread-count independence."""

import textwrap

import numpy as np
import pytest

import fastlstm
from fastlstm import _core, ops

KNOWN_ISAS = ["scalar", "avx2", "avx512"]


def _cpu_flags():
    """The processor's feature flags from /proc/cpuinfo, or None where unavailable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- cpu_info

def test_cpu_info_contents():
    info = fastlstm.cpu_info()
    assert set(info) >= {"compiled", "supported", "isa", "num_threads"}
    assert isinstance(info["compiled"], list) and isinstance(info["supported"], list)
    assert "scalar" in info["compiled"]
    assert set(info["compiled"]) <= set(KNOWN_ISAS)
    assert set(info["supported"]) <= set(KNOWN_ISAS)
    assert "scalar" in info["supported"]
    assert info["isa"] in info["compiled"] and info["isa"] in info["supported"]
    assert info["isa"] == _core.get_isa()
    assert isinstance(info["num_threads"], int) and info["num_threads"] >= 1
    assert info["num_threads"] == fastlstm.get_num_threads()


def test_default_isa_is_best_available(run_python):
    # The import-time choice (no FASTLSTM_ISA) is the best compiled-and-supported path.
    info = fastlstm.cpu_info()
    available = [n for n in KNOWN_ISAS if n in info["compiled"] and n in info["supported"]]
    out = run_python("import fastlstm; print(fastlstm.cpu_info()['isa'])", FASTLSTM_ISA=None)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == available[-1]


def test_supported_matches_cpu_flags():
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    info = fastlstm.cpu_info()
    if "avx2" in info["supported"]:
        assert {"avx2", "fma"} <= flags
    if "avx512" in info["supported"]:
        assert "avx512f" in flags
    if "avx2" in info["compiled"] and {"avx2", "fma", "avx"} <= flags:
        assert "avx2" in info["supported"]


def test_set_isa_round_trip(isa):
    # the isa fixture switched to this path; cpu_info and get_isa agree
    assert _core.get_isa() == isa
    assert fastlstm.cpu_info()["isa"] == isa


def test_set_isa_unknown_name():
    before = _core.get_isa()
    with pytest.raises(ValueError, match="sse9"):
        _core.set_isa("sse9")
    assert _core.get_isa() == before


def test_set_isa_unsupported():
    info = fastlstm.cpu_info()
    missing = [n for n in KNOWN_ISAS if not (n in info["compiled"] and n in info["supported"])]
    if not missing:
        pytest.skip("every ISA is compiled in and supported on this machine")
    before = _core.get_isa()
    with pytest.raises(RuntimeError, match=missing[0]):
        _core.set_isa(missing[0])
    assert _core.get_isa() == before


# --------------------------------------------------------------------------- FASTLSTM_ISA

# Imports fastlstm, prints the ISA in use and runs one small forward/backward on it.
_USE = """
    import numpy as np
    import fastlstm
    from fastlstm import ops
    x = np.ones((2, 1, 3)); k = np.full((3, 8), 0.1); r = np.full((2, 8), 0.1)
    y, h, c, s = ops.lstm_forward(x, k, r, backend="cpu")
    g = ops.lstm_backward(s, y)
    assert np.isfinite(y).all() and y[1, 0, 0] != 0
    print(fastlstm.cpu_info()["isa"])
"""


def test_env_scalar(run_python):
    out = run_python(_USE, FASTLSTM_ISA="scalar")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "scalar"


@pytest.mark.parametrize("name", KNOWN_ISAS)
def test_env_each_isa(name, run_python):
    info = fastlstm.cpu_info()
    out = run_python(_USE, FASTLSTM_ISA=name)
    if name in info["compiled"] and name in info["supported"]:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == name
    else:
        # forcing a path this build/processor cannot run fails clearly, never runs anyway
        assert out.returncode != 0, f"FASTLSTM_ISA={name} ran on a machine without it: {out.stdout}"
        assert "FASTLSTM_ISA" in out.stderr, out.stderr
        assert "ImportError" in out.stderr or "RuntimeError" in out.stderr, out.stderr


def test_env_avx512_without_avx512(run_python):
    info = fastlstm.cpu_info()
    if "avx512" in info["supported"] and "avx512" in info["compiled"]:
        pytest.skip("this machine runs avx512")
    out = run_python(_USE, FASTLSTM_ISA="avx512")
    assert out.returncode != 0
    assert "FASTLSTM_ISA" in out.stderr and "avx512" in out.stderr, out.stderr


@pytest.mark.parametrize("value", ["sse9", "avx3"])
def test_env_unknown_value(value, run_python):
    out = run_python(_CATCH.format(use=textwrap.indent(textwrap.dedent(_USE), "    ")), FASTLSTM_ISA=value)
    assert out.returncode == 3, f"FASTLSTM_ISA={value!r}: rc {out.returncode}\n{out.stdout}{out.stderr}"
    kind, _, message = out.stdout.strip().splitlines()[-1].partition(": ")
    assert "FASTLSTM_ISA" in message and value in message, message
    # the contract: ImportError or RuntimeError
    assert kind in ("ImportError", "RuntimeError"), f"{kind}: {message}"


# Runs _USE and reports the exception it raised as "TypeName: message" with exit code 3.
_CATCH = """
import sys
try:
{use}
except Exception as e:
    print(f"{{type(e).__name__}}: {{e}}")
    sys.exit(3)
"""


# --------------------------------------------------------------------------- threads

def test_num_threads_api(num_threads):
    for n in (1, 2, 3):
        num_threads(n)
        assert fastlstm.cpu_info()["num_threads"] == n


@pytest.mark.parametrize("bad", [0, -1, 1025, 100000, 2**32 + 1])
def test_num_threads_rejects_bad(bad, num_threads):
    before = fastlstm.get_num_threads()
    with pytest.raises(ValueError, match=r"\bn\b"):
        fastlstm.set_num_threads(bad)
    assert fastlstm.get_num_threads() == before


@pytest.mark.parametrize("bad", [2.5, "2", True, None])
def test_num_threads_rejects_non_integers(bad, num_threads):
    before = fastlstm.get_num_threads()
    with pytest.raises(TypeError, match=r"\bn\b"):
        fastlstm.set_num_threads(bad)
    assert fastlstm.get_num_threads() == before


def test_num_threads_accepts_numpy_integers(num_threads):
    fastlstm.set_num_threads(np.int64(1))
    assert fastlstm.get_num_threads() == 1


THREAD_CASES = {
    # big enough in B and H that 2 threads have work to split
    "B16_I33_H64_len_rev": dict(T=5, B=16, I=33, H=64, lengths=[5, 0, 1, 3] * 4, reverse=True),
    "B7_I5_H17": dict(T=4, B=7, I=5, H=17),
    "B1_H100_nobias": dict(T=3, B=1, I=8, H=100, bias=False, h0=False),
    # chunked backward and inference (>= 2 chunks of 4096 rows): the same chunks for any count
    "T260_B32_chunked": dict(T=260, B=32, I=6, H=20, lengths=[260 - 7 * b for b in range(32)]),
    # small H with B >= 2 tiles: the threads split the rows, not the units (NOTES 31); tiles of
    # 6, 6, 1 rows, a partial group of unit blocks, lengths and reverse
    "split_B13_I9_H40_len_rev": dict(T=7, B=13, I=9, H=40, lengths=[7, 0, 3, 7, 1, 6, 2, 7, 5, 4, 7, 3, 1],
                                     reverse=True),
    # split rows with chunked inference (x gathered: lengths and reverse) and chunked backward
    "split_T300_B30_chunked_rev": dict(T=300, B=30, I=5, H=24, lengths=[300 - 9 * b for b in range(30)],
                                       reverse=True),
    # the largest H that splits the rows; float64 has 16 unit blocks of 8 (4 whole groups)
    "split_B24_H128": dict(T=6, B=24, I=7, H=128, h0=False),
    # split rows with lengths in random order: the forward runs the rows longest first, tiles
    # dealt to the threads (NOTES 39); a last tile of 2 rows (its own arithmetic) shows any
    # tile whose rows differ from one thread's
    "split_B32_H96_len_random": dict(T=9, B=32, I=6, H=96,
                                     lengths=[(5 * b + 3) % 10 for b in range(32)]),
    # a thread's share of the packed weights above 1 MiB with several row tiles: the forward
    # step prefetches the next unit block (NOTES 33), with stolen blocks and lengths
    "prefetch_B14_I8_H512_len": dict(T=3, B=14, I=8, H=512, lengths=[3, 0, 1, 2, 3, 3, 1, 2, 3, 0, 3, 2, 1, 3]),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(THREAD_CASES))
def test_thread_count_bitwise_identical(isa, name, dtype, make_case, num_threads, rel_err):
    case = make_case(dtype=dtype, seed=21, **THREAD_CASES[name])
    results = {}
    for n in (1, 2, 3):
        num_threads(n)
        y, h_n, c_n, saved = ops.lstm_forward(**case.fwd, backend="cpu")
        grads = ops.lstm_backward(saved, **case.bwd)
        fwd = dict(case.fwd, lengths=None)
        inference = ops.lstm_forward(**fwd, training=False, backend="cpu")[:3]
        results[n] = (y, h_n, c_n) + tuple(grads) + tuple(inference)
    for n in (2, 3):
        for k, (a, b) in enumerate(zip(results[n], results[1])):
            if b is None:
                assert a is None
                continue
            assert np.isfinite(b).all()
            assert np.array_equal(a, b), (
                f"output {k} differs between 1 and {n} threads (rel err {rel_err(a, b):.3g})")
    # and it is the right answer
    from fastlstm import reference
    c64 = case.as_float64()
    ry, rh, rc, rs = reference.lstm_forward(**c64.fwd)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    assert rel_err(results[1][0], ry) <= tol


@pytest.mark.parametrize("T, B, H", [(20, 32, 64), (2, 12, 17), (1, 30, 128)])
def test_packed_weights_with_split_rows(isa, T, B, H, make_case, num_threads):
    # Prepacked weights are read by every thread when the rows are split (small H): the same
    # bits for any thread count, and the same as without packing.
    case = make_case(T, B, 7, H, np.float32, seed=23)
    packed = ops.pack_weights(case.fwd["kernel"], case.fwd["recurrent_kernel"])
    results = {}
    for n in (1, 2, 3):
        num_threads(n)
        results[n] = [ops.lstm_forward(**case.fwd, training=training, packed=packed, backend="cpu")[0]
                      for training in (False, True)]
    plain = ops.lstm_forward(**case.fwd, training=False, backend="cpu")[0]
    assert np.isfinite(plain).all()
    for n in (1, 2, 3):
        for got in results[n]:
            assert np.array_equal(got, plain), f"{n} threads"


def test_thread_count_change_between_forward_and_backward(isa, make_case, num_threads):
    case = make_case(5, 8, 6, 17, np.float64, seed=22, lengths=[5, 0, 1, 3, 5, 2, 4, 5])
    num_threads(1)
    *_, saved = ops.lstm_forward(**case.fwd, backend="cpu")
    g1 = ops.lstm_backward(saved, **case.bwd)
    num_threads(2)
    g2 = ops.lstm_backward(saved, **case.bwd)
    for a, b in zip(g1, g2):
        assert np.array_equal(a, b)


def test_docstrings_name_only_existing_top_level_functions():
    # pack_weights's docstring once pointed at fastlstm.get_isa(), which does not exist.
    import re
    for module in (fastlstm, ops):
        for name in dir(module):
            doc = getattr(getattr(module, name), "__doc__", None) or ""
            for ref in re.findall(r"\bfastlstm\.([A-Za-z_]\w*)\(", doc):
                assert hasattr(fastlstm, ref), f"{module.__name__}.{name}: fastlstm.{ref}()"


_THREADS = """
import os, sys
if len(sys.argv) > 1:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})   # one core, as taskset -c would
import fastlstm
print(fastlstm.get_num_threads())
"""


def test_default_thread_count_from_the_environment(run_python):
    # FASTLSTM_NUM_THREADS, else OMP_NUM_THREADS (as PyTorch and OpenMP code take it), else the
    # cores this process may run on (its CPU affinity), read at import
    import os

    def threads(affinity=False, **env):
        code = _THREADS if not affinity else _THREADS.replace("len(sys.argv) > 1", "True")
        out = run_python(code, **{"FASTLSTM_NUM_THREADS": None, "OMP_NUM_THREADS": None, **env})
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().splitlines()[-1])

    cores = len(os.sched_getaffinity(0))
    assert threads() == cores
    assert threads(OMP_NUM_THREADS="3") == 3
    assert threads(OMP_NUM_THREADS="3,2") == 3                  # nested levels: the first
    assert threads(OMP_NUM_THREADS="lots") == cores              # not a count: ignored
    assert threads(OMP_NUM_THREADS="\u00b2") == cores            # isdigit() but not int()
    assert threads(FASTLSTM_NUM_THREADS="5", OMP_NUM_THREADS="3") == 5
    assert threads(FASTLSTM_NUM_THREADS=" ") == cores
    assert threads(affinity=True) == 1
    for bad in ("0", "-2", "two", "1025"):
        out = run_python(_THREADS, FASTLSTM_NUM_THREADS=bad)
        assert out.returncode != 0 and "FASTLSTM_NUM_THREADS" in out.stderr and repr(bad) in out.stderr, \
            (bad, out.stderr[-300:])
