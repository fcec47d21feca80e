"""Where the CPU kernels run their threads: fastlstm's own pool, or the team of an OpenMP
runtime already loaded in the process (fastlstm.set_cpu_pool, FASTLSTM_POOL; bench/NOTES.md 48).

Each test runs in a fresh interpreter, so that which runtime is loaded (libgomp through ctypes,
or PyTorch's when the system has none) is under the test's control and not left to the order
in which other test modules imported torch. Outputs are poisoned (NaN) before every kernel.
"""

import json

import pytest

import fastlstm

# Loads an OpenMP runtime into the interpreter: the system's libgomp, else PyTorch's.
# Prints NO_OPENMP and exits when there is neither.
_LOAD_OPENMP = """
import ctypes, ctypes.util, sys
name = ctypes.util.find_library("gomp")
if name is not None:
    ctypes.CDLL(name)
else:
    try:
        import torch
    except ImportError:
        print("NO_OPENMP")
        sys.exit(0)
"""

# Random inputs (never zero), forward (training and inference) and backward on one pool.
_CASES = """
import json, numpy as np, fastlstm
from fastlstm import _core, ops
_core.set_poison(True)
_core.set_backoff(False)   # n threads asked for, n threads run (no back-off to one on a busy machine)

def case(T, B, I, H, dtype, lengths=None, reverse=False, seed=0):
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(I + H)
    f = lambda a: np.ascontiguousarray(a, dtype=dtype)
    fwd = dict(x=f(rng.standard_normal((T, B, I))), kernel=f(rng.standard_normal((I, 4 * H)) * s),
               recurrent_kernel=f(rng.standard_normal((H, 4 * H)) * s),
               bias=f(rng.standard_normal(4 * H) * 0.5), h0=f(rng.standard_normal((B, H)) * 0.5),
               c0=f(rng.standard_normal((B, H))),
               lengths=None if lengths is None else np.asarray(lengths, np.int64), reverse=reverse)
    bwd = dict(dy=f(rng.standard_normal((T, B, H))), dh_n=f(rng.standard_normal((B, H))),
               dc_n=f(rng.standard_normal((B, H))))
    return fwd, bwd

def run(fwd, bwd):
    y, h_n, c_n, saved = ops.lstm_forward(**fwd, backend="cpu")
    grads = ops.lstm_backward(saved, **bwd)
    inference = ops.lstm_forward(**fwd, training=False, backend="cpu")[:3]
    return [y, h_n, c_n, *grads, *inference]

# the kernels' different thread splits: units (per-step barriers), rows (small H), one row
# (dot-product backward), lengths with reverse, chunked products (T * B >= 2 x 4096 rows)
SHAPES = [dict(T=5, B=16, I=33, H=64, lengths=[5, 0, 1, 3] * 4, reverse=True),
          dict(T=4, B=24, I=7, H=40), dict(T=6, B=3, I=9, H=300), dict(T=3, B=1, I=8, H=100),
          dict(T=270, B=32, I=6, H=20, lengths=[270 - 7 * b for b in range(32)])]
"""


def _skip_without_openmp(out):
    assert out.returncode == 0, out.stderr[-3000:]
    if "NO_OPENMP" in out.stdout:
        pytest.skip("no OpenMP runtime on this machine (neither a system libgomp nor torch)")


def test_openmp_team_gives_the_own_pools_bits(run_python):
    # Every ISA, both dtypes, 2 and 3 threads: the kernels on the OpenMP runtime's team give
    # bitwise the results of the own pool (and of one thread), and cpu_info says which ran.
    code = _LOAD_OPENMP + _CASES + """
checked = 0
info = fastlstm.cpu_info()
isas = [n for n in info["compiled"] if n in info["supported"]]
assert info["openmp_runtime"] is not None and "omp" in info["openmp_runtime"], info
assert info["pool_choice"] == "auto" and info["pool"] == "none", info
for isa in isas:
    _core.set_isa(isa)
    for dtype in (np.float32, np.float64):
        for shape in SHAPES:
            fwd, bwd = case(dtype=dtype, **shape)
            fastlstm.set_num_threads(1)
            one = run(fwd, bwd)
            for n in (2, 3):
                fastlstm.set_num_threads(n)
                results = {}
                for pool in ("own", "auto"):
                    fastlstm.set_cpu_pool(pool)
                    results[pool] = run(fwd, bwd)
                    used = fastlstm.cpu_info()["pool"]
                    assert used == ("own" if pool == "own" else "openmp"), (isa, shape, n, pool, used)
                for k, (a, b, c) in enumerate(zip(results["auto"], results["own"], one)):
                    assert np.isfinite(a).all(), (isa, dtype, shape, n, k)
                    assert np.array_equal(a, b) and np.array_equal(a, c), (isa, dtype, shape, n, k)
                checked += 1
print(json.dumps({"checked": checked, "expected": len(isas) * 2 * len(SHAPES) * 2}))
"""
    out = run_python(code, timeout=600, FASTLSTM_POOL=None)
    _skip_without_openmp(out)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["checked"] == result["expected"] >= 20, result


def test_openmp_results_match_the_reference(run_python):
    # Not only the same bits as the own pool: the right answer (float64 reference).
    code = _LOAD_OPENMP + _CASES + """
from fastlstm import reference
fastlstm.set_num_threads(2)
worst = 0.0
for shape in SHAPES:
    fwd, bwd = case(dtype=np.float32, **shape)
    got = run(fwd, bwd)
    assert fastlstm.cpu_info()["pool"] == "openmp"
    f64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v)
           for k, v in fwd.items()}
    ry, rh, rc, saved = reference.lstm_forward(**f64)
    want = [ry, rh, rc, *reference.lstm_backward(saved, **{k: v.astype(np.float64) for k, v in bwd.items()})]
    for a, b in zip(got, want):
        err = np.linalg.norm((a.astype(np.float64) - b).ravel()) / np.linalg.norm(b.ravel())
        worst = max(worst, err)
print(json.dumps({"worst": worst}))
"""
    out = run_python(code, timeout=300, FASTLSTM_POOL=None)
    _skip_without_openmp(out)
    # float32 kernels against float64: the README's 2e-6 for outputs, gradients summed over
    # up to T*B = 8640 rows a little more
    assert json.loads(out.stdout.strip().splitlines()[-1])["worst"] <= 5e-6


def test_pool_own_from_the_environment(run_python):
    # FASTLSTM_POOL=own: the own pool even with a runtime loaded (which cpu_info still names).
    code = _LOAD_OPENMP + _CASES + """
fastlstm.set_num_threads(2)
run(*case(dtype=np.float32, **SHAPES[0]))
info = fastlstm.cpu_info()
print(json.dumps([info["pool_choice"], info["pool"], info["openmp_runtime"] is not None]))
"""
    out = run_python(code, FASTLSTM_POOL="own")
    _skip_without_openmp(out)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["own", "own", True]


def test_without_a_runtime_the_own_pool_runs(run_python):
    code = _CASES + """
fastlstm.set_num_threads(2)
run(*case(dtype=np.float32, **SHAPES[0]))
info = fastlstm.cpu_info()
print(json.dumps([info["pool"], info["openmp_runtime"]]))
"""
    out = run_python(code, FASTLSTM_POOL=None)
    assert out.returncode == 0, out.stderr[-3000:]
    pool, runtime = json.loads(out.stdout.strip().splitlines()[-1])
    # (numpy alone loads no OpenMP runtime in a pip install; a build that does gets the team)
    assert pool == ("own" if runtime is None else "openmp"), (pool, runtime)


@pytest.mark.parametrize("limit, threads", [("1", 2), ("2", 3)])
def test_short_team_falls_back_to_the_own_pool(limit, threads, run_python):
    # OMP_THREAD_LIMIT below the threads asked for: the runtime's team is short. No thread may
    # enter the kernel then (its barriers count them all; with a limit of 2 the team's worker
    # must not enter either, or it would wait at a barrier for a third thread and
    # GOMP_parallel would never return): the own pool runs the call instead, with the same
    # results, and the runtime is not tried again.
    code = _LOAD_OPENMP + _CASES + f"""
fwd, bwd = case(dtype=np.float64, **SHAPES[0])
fastlstm.set_num_threads(1)
one = run(fwd, bwd)
fastlstm.set_num_threads({threads})
many = run(fwd, bwd)
first = fastlstm.cpu_info()["pool"]
run(fwd, bwd)
assert all(np.array_equal(a, b) for a, b in zip(one, many))
seen = [first, fastlstm.cpu_info()["pool"], fastlstm.cpu_info()["pool_fallback"]]
fastlstm.set_cpu_pool("auto")                     # tries the runtime again: short again
seen.append(fastlstm.cpu_info()["pool_fallback"])
assert all(np.array_equal(a, b) for a, b in zip(one, run(fwd, bwd)))
seen += [fastlstm.cpu_info()["pool"], fastlstm.cpu_info()["pool_fallback"]]
print(json.dumps(seen))
"""
    out = run_python(code, timeout=120, FASTLSTM_POOL=None, OMP_THREAD_LIMIT=limit)
    _skip_without_openmp(out)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        "own", "own", "short team", None, "own", "short team"]


def test_forked_child_runs_on_the_own_pool(run_python):
    # After fork() the parent's OpenMP threads do not exist in the child: the child must not
    # hand its work to that runtime (it could wait forever), and computes the same bits.
    code = _LOAD_OPENMP + _CASES + """
import os
fastlstm.set_num_threads(2)
fwd, bwd = case(dtype=np.float32, **SHAPES[0])
parent = run(fwd, bwd)
assert fastlstm.cpu_info()["pool"] == "openmp"
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    import signal
    signal.alarm(90)   # a child stuck in the runtime ends itself (not left spinning)
    try:
        child = run(fwd, bwd)
        same = all(np.array_equal(a, b) for a, b in zip(child, parent))
        fastlstm.set_cpu_pool("auto")              # (does not bring the runtime back)
        again = run(fwd, bwd)
        same = same and all(np.array_equal(a, b) for a, b in zip(again, parent))
        info = fastlstm.cpu_info()
        os.write(w, json.dumps([same, info["pool"], info["pool_fallback"]]).encode())
    finally:
        os._exit(0)
os.close(w)
os.waitpid(pid, 0)
print(os.read(r, 1000).decode())
"""
    out = run_python(code, timeout=120, FASTLSTM_POOL=None)
    _skip_without_openmp(out)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, "own", "forked"]


@pytest.mark.parametrize("bad", ["OWN", "openmp", "1", "auto,own"])
def test_bad_pool_in_the_environment(bad, run_python):
    out = run_python("import fastlstm", FASTLSTM_POOL=bad)
    assert out.returncode != 0
    assert "FASTLSTM_POOL" in out.stderr and repr(bad) in out.stderr, out.stderr[-500:]


@pytest.mark.parametrize("bad, error", [("OWN", ValueError), ("", ValueError), ("openmp", ValueError),
                                        (None, TypeError), (1, TypeError), (b"own", TypeError)])
def test_set_cpu_pool_rejects(bad, error):
    before = fastlstm.cpu_info()["pool_choice"]
    with pytest.raises(error, match="name: expected"):
        fastlstm.set_cpu_pool(bad)
    assert fastlstm.cpu_info()["pool_choice"] == before


def test_set_cpu_pool_round_trip():
    before = fastlstm.cpu_info()["pool_choice"]
    try:
        for name in ("own", "auto", "own"):
            fastlstm.set_cpu_pool(name)
            assert fastlstm.cpu_info()["pool_choice"] == name
    finally:
        fastlstm.set_cpu_pool(before)


def test_runtime_loaded_after_the_first_call(run_python):
    # The first call finds no runtime and runs on the own pool; one loaded later is found
    # (dl_iterate_phdr's load count changed) and used from the next call on.
    code = _CASES + """
fastlstm.set_num_threads(2)
fwd, bwd = case(dtype=np.float32, **SHAPES[1])
before = run(fwd, bwd)
first = [fastlstm.cpu_info()["pool"], fastlstm.cpu_info()["openmp_runtime"]]
if first[1] is not None:
    print("NO_OPENMP")   # (a runtime was there from the start: nothing to test)
    raise SystemExit(0)
""" + _LOAD_OPENMP + """
after = run(fwd, bwd)
assert all(np.array_equal(a, b) for a, b in zip(before, after))
print(json.dumps([first[0], fastlstm.cpu_info()["pool"]]))
"""
    out = run_python(code, timeout=120, FASTLSTM_POOL=None)
    _skip_without_openmp(out)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["own", "openmp"]


def test_torchs_runtime_is_chosen_among_several(run_python):
    # scikit-learn's wheel brings its own libgomp (libgomp-<hash>.so, another soname): imported
    # before torch, it is loaded first. The kernels must run on the runtime torch's code calls
    # (whose workers spin after torch ops), not on a second team competing with it.
    code = """
import sys
try:
    import sklearn.cluster, torch
except ImportError:
    print("NO_OPENMP"); sys.exit(0)
import json, numpy as np, fastlstm
from fastlstm import _core, ops
torch.ones(100000).sum()
fastlstm.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 8, 5)).astype(np.float32)
k = rng.standard_normal((5, 64)).astype(np.float32) * 0.3
r = rng.standard_normal((16, 64)).astype(np.float32) * 0.3
ops.lstm_forward(x, k, r, training=False, backend="cpu")
maps = {l.split()[-1] for l in open("/proc/self/maps") if "libgomp" in l}
print(json.dumps([fastlstm.cpu_info()["openmp_runtime"], fastlstm.cpu_info()["pool"], len(maps)]))
"""
    out = run_python(code, timeout=120, FASTLSTM_POOL=None)
    _skip_without_openmp(out)
    runtime, pool, nmapped = json.loads(out.stdout.strip().splitlines()[-1])
    if nmapped < 2:
        pytest.skip("scikit-learn and torch share one libgomp here")
    assert pool == "openmp" and "torch" in runtime, runtime


def test_unpickled_arrays_are_accepted():
    # multiprocessing (spawn) and DataLoader workers hand over unpickled arrays, whose dtype is
    # an equal but distinct object: "expected dtype float32 or float64, got float32" before.
    import pickle

    import numpy as np
    from fastlstm import ops
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype(np.float32) for s in ((3, 2, 4), (4, 32), (8, 32))]
    want = ops.lstm_forward(*args, training=False, backend="cpu")[0]
    got = ops.lstm_forward(*[pickle.loads(pickle.dumps(a)) for a in args], training=False,
                           backend="cpu")[0]
    assert np.array_equal(got, want)


def test_nested_call_falls_back_for_that_call_only(run_python):
    # A call from inside a parallel region of the same runtime (here: a ctypes callback run by
    # GOMP_parallel on two threads). Nesting off (the default): each nested call gets a team of
    # one and runs on the own pool, with the right bits; calls at the top level keep the runtime.
    code = """
import ctypes, ctypes.util, json, sys
name = ctypes.util.find_library("gomp")
if name is None:
    print("NO_OPENMP"); sys.exit(0)
gomp = ctypes.CDLL(name)
""" + _CASES + """
fastlstm.set_num_threads(2)
fwd, bwd = case(dtype=np.float64, **SHAPES[0])
top = run(fwd, bwd)
assert fastlstm.cpu_info()["pool"] == "openmp"
nested = []

@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def body(_):
    out = run(fwd, bwd)
    nested.append([all(np.array_equal(a, b) for a, b in zip(out, top)), fastlstm.cpu_info()["pool"]])

gomp.GOMP_parallel(body, None, 2, 0)
again = run(fwd, bwd)
assert all(np.array_equal(a, b) for a, b in zip(again, top))
print(json.dumps([sorted(nested), fastlstm.cpu_info()["pool"]]))
"""
    out = run_python(code, timeout=120, FASTLSTM_POOL=None, OMP_MAX_ACTIVE_LEVELS=None,
                     OMP_NESTED=None)
    _skip_without_openmp(out)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[[True, "own"], [True, "own"]], "openmp"]
