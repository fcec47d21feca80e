"""Measure the matrix-product ceiling of this machine with NumPy.

An LSTM step is dominated by two matrix products, so the GFLOP/s of a large
square matmul in the BLAS NumPy uses is a practical upper bound for the
benchmark's "% ceiling" column. Prints GFLOP/s (best of a few runs) at sizes
1024, 2048 and 4096, and which BLAS NumPy uses.

    python bench/ceiling.py                   # float32
    python bench/ceiling.py --float64         # float64 too
    python bench/ceiling.py --json out.json   # also write the numbers

The JSON's "ceiling_gflops" is the best float32 figure over the sizes; pass it to
``python -m fastlstm.bench --ceiling``. Needs NumPy and an installed fastlstm (threadpoolctl,
when installed, gives a more precise BLAS description).
"""

import argparse
import contextlib
import datetime
import io
import json
import os
import sys
import time

import numpy as np

from fastlstm.bench import cpu_model

SIZES = (1024, 2048, 4096)


def matmul_gflops(n, dtype, repeats):
    """Best GFLOP/s of an n x n @ n x n product over `repeats` timed runs after one warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


def blas_description():
    """Which BLAS NumPy calls, and with how many threads, as a list of dicts."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [numpy_build_blas()]
    pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture", "filepath")
    return [{key: pool.get(key) for key in keys} for pool in pools] or [numpy_build_blas()]


def numpy_build_blas():
    """The BLAS NumPy was built against, from numpy.show_config (no thread count)."""
    try:
        config = np.show_config(mode="dicts")  # NumPy >= 1.25
        blas = config["Build Dependencies"]["blas"]
        return {key: blas.get(key) for key in ("name", "version", "openblas configuration")
                if key in blas}
    except (TypeError, KeyError):
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            np.show_config()
        return {"show_config": text.getvalue()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--float64", action="store_true", help="also measure float64")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="comma-separated matrix sizes (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size (best is kept)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    options = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in options.sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        parser.error("--sizes: expected comma-separated positive integers, got %r" % options.sizes)
    if options.repeats < 1:  # (no timed run: a best time of inf, a ceiling of 0 GFLOP/s)
        parser.error("--repeats: expected a positive integer, got %d" % options.repeats)
    if options.json and not os.path.isdir(os.path.dirname(os.path.abspath(options.json))):
        parser.error("--json: cannot write %r (no such folder)" % options.json)
    dtypes = ["float32"] + (["float64"] if options.float64 else [])

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
        "blas": blas_description(),
        "openblas_env": {key: os.environ.get(key) for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }
    print("machine: %s, %s cores; numpy %s" % (info["cpu"], info["cores"], info["numpy"]))
    for pool in info["blas"]:
        print("blas: " + ", ".join("%s=%s" % item for item in pool.items() if item[1] is not None))
    set_env = {k: v for k, v in info["openblas_env"].items() if v is not None}
    print("OpenBLAS environment: %s" % (set_env or "none set"))

    results = {}
    for dtype in dtypes:
        results[dtype] = {}
        for n in sizes:
            gflops = matmul_gflops(n, dtype, options.repeats)
            results[dtype][str(n)] = gflops
            print("%-8s %5d x %-5d %8.1f GFLOP/s" % (dtype, n, n, gflops), flush=True)
    info["gflops"] = results
    info["ceiling_gflops"] = max(results["float32"].values())
    print("ceiling (best float32): %.1f GFLOP/s" % info["ceiling_gflops"])

    if options.json:
        with open(options.json, "w") as f:
            json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
